"""The XML shapes we send and read: roster queries, XEP-0356 and XEP-0355."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest

from component import stanzas
from component.roster import Contact

ROSTER = "{jabber:iq:roster}"


def xml(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 -- test input written here


def test_roster_item_carries_name_groups_and_subscription() -> None:
    """An item holds everything the server should store, groups in a stable order."""
    item = stanzas.roster_item(
        Contact("marie@example.com", name="Marie", groups=frozenset({"Team", "Friends"}))
    )
    assert item.tag == f"{ROSTER}item"
    assert item.attrib == {"jid": "marie@example.com", "subscription": "both", "name": "Marie"}
    assert [g.text for g in item] == ["Friends", "Team"]


def test_roster_item_without_name_has_no_name_attribute() -> None:
    """A contact without a display name is written without one."""
    assert "name" not in stanzas.roster_item(Contact("a@example.com")).attrib


def test_roster_removal_asks_to_remove_the_jid() -> None:
    """A removal is one item with subscription='remove'."""
    (item,) = stanzas.roster_removal("gone@example.com")
    assert item.attrib == {"jid": "gone@example.com", "subscription": "remove"}


def test_parse_roster_query_reads_what_the_server_stores() -> None:
    """Name, groups, subscription and a pending ask are all read back."""
    query = xml(
        "<query xmlns='jabber:iq:roster'>"
        "<item jid='a@x' name='A' subscription='to' ask='subscribe'><group>G</group></item>"
        "<item jid='b@x'/><item name='no jid'/>"
        "<item jid='c@x' subscription='weird'/></query>"
    )
    assert stanzas.parse_roster_query(query) == {
        "a@x": Contact("a@x", "A", frozenset({"G"}), "to", ask=True),
        "b@x": Contact("b@x", subscription="none"),
        "c@x": Contact("c@x", subscription="none"),
    }


def test_parse_roster_query_of_nothing_is_empty() -> None:
    """A result without a query is an empty roster."""
    assert stanzas.parse_roster_query(None) == {}


def test_roster_round_trip() -> None:
    """What we write is what we read."""
    contacts = {
        "a@x": Contact("a@x", "A", frozenset({"G1", "G2"})),
        "b@x": Contact("b@x"),
    }
    assert stanzas.parse_roster_query(stanzas.roster_query(contacts)) == contacts


@pytest.mark.parametrize(
    ("stanza", "condition"),
    [
        (
            (
                "<iq xmlns='jabber:component:accept' type='error'><error type='cancel'>"
                "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>x</text></error></iq>"
            ),
            "item-not-found",
        ),
        (
            (
                "<iq type='error'><query xmlns='jabber:iq:roster'/><error type='auth'>"
                "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>x</text>"
                "<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            ),
            "forbidden",
        ),
        ("<iq type='error'/>", "undefined-condition"),
    ],
)
def test_error_condition_is_read_from_raw_xml(stanza: str, condition: str) -> None:
    """The defined condition is found whatever the error element's namespace."""
    assert stanzas.error_condition(xml(stanza)) == condition


PRIVILEGE_13 = (
    "<message xmlns='jabber:component:accept' from='example.test'>"
    "<privilege xmlns='urn:xmpp:privilege:2'>"
    "<perm access='roster' type='both'/><perm access='message' type='outgoing'/>"
    "<perm access='presence' type='roster'/>"
    "<perm access='iq'><namespace ns='jabber:iq:roster' type='both'/>"
    "<namespace ns='urn:x' type='get'/></perm>"
    "</privilege></message>"
)
# Prosody 0.12 does not close <namespace/> elements: each nests inside the previous one.
PRIVILEGE_012 = (
    "<message xmlns='jabber:component:accept' from='example.test'>"
    "<privilege xmlns='urn:xmpp:privilege:2'>"
    "<perm access='roster' type='both'/><perm access='presence' type='roster'/>"
    "<perm access='iq'><namespace ns='jabber:iq:roster' type='both'>"
    "<namespace ns='urn:x' type='get'/></namespace></perm>"
    "</privilege></message>"
)


@pytest.mark.parametrize("message", [PRIVILEGE_13, PRIVILEGE_012], ids=["13", "0.12"])
def test_privileges_are_parsed_on_both_prosody_versions(message: str) -> None:
    """Roster, presence and every IQ namespace are read, nested or not."""
    privilege = stanzas.find_privilege(xml(message))
    assert privilege is not None
    granted = stanzas.parse_privileges(privilege)
    assert granted.roster == "both"
    assert granted.presence == "roster"
    assert granted.iq == {"jabber:iq:roster": "both", "urn:x": "get"}
    assert granted.can_read_rosters()
    assert granted.can_write_rosters()
    assert granted.can_send_iq("jabber:iq:roster", "set")
    assert not granted.can_send_iq("urn:x", "set")


def test_privilege_version_1_is_understood() -> None:
    """ejabberd 23.01 advertises urn:xmpp:privilege:1."""
    message = xml(
        "<message><privilege xmlns='urn:xmpp:privilege:1'>"
        "<perm access='roster' type='get'/></privilege></message>"
    )
    privilege = stanzas.find_privilege(message)
    assert privilege is not None
    granted = stanzas.parse_privileges(privilege)
    assert granted.can_read_rosters()
    assert not granted.can_write_rosters()


def test_empty_privilege_grants_nothing() -> None:
    """An empty advertisement means no rights at all."""
    granted = stanzas.parse_privileges(xml("<privilege xmlns='urn:xmpp:privilege:2'/>"))
    assert granted == stanzas.Privileges()
    assert not granted.can_read_rosters()


def test_message_without_privilege_is_not_an_advertisement() -> None:
    """Ordinary messages are not mistaken for privilege advertisements."""
    assert stanzas.find_privilege(xml("<message><body>hi</body></message>")) is None


def test_privileged_iq_wraps_a_client_iq_from_the_user() -> None:
    """XEP-0356 v2: the wrapped IQ is a jabber:client set from the user to the resource."""
    wrapper = stanzas.privileged_iq(
        "alice@example.test", "alice@example.test/phone", "p1", stanzas.roster_removal("x@y")
    )
    assert wrapper.tag == "{urn:xmpp:privilege:2}privileged_iq"
    (inner,) = wrapper
    assert inner.tag == "{jabber:client}iq"
    assert inner.attrib == {
        "type": "set",
        "id": "p1",
        "from": "alice@example.test",
        "to": "alice@example.test/phone",
    }
    assert inner[0].tag == f"{ROSTER}query"


def test_push_request_lists_the_sessions_then_the_pushes_in_order() -> None:
    """The module's push request: the user, each client, then each one-item query as given."""
    queries = [
        stanzas.roster_query({"bob@x": Contact("bob@x")}, "v1"),
        stanzas.roster_removal("c@x", "v2"),
    ]
    request = stanzas.push_request("alice", ["alice@x/a", "alice@x/b"], queries)
    ns = stanzas.PRESENCE_UPDATE_NS
    assert (request.tag, request.get("user")) == (f"{{{ns}}}push", "alice")
    assert [s.get("jid") for s in request.findall(f"{{{ns}}}session")] == ["alice@x/a", "alice@x/b"]
    assert [q.get("ver") for q in request.findall(f"{{{stanzas.ROSTER_NS}}}query")] == ["v1", "v2"]


def test_push_result_names_the_sessions_gone() -> None:
    ns = stanzas.PRESENCE_UPDATE_NS
    result = xml(
        f"<iq type='result'><push xmlns='{ns}' user='alice'><gone jid='alice@x/a'/></push></iq>"
    )
    assert stanzas.parse_push_result(result) == {"alice@x/a"}
    assert stanzas.parse_push_result(xml("<iq type='result'/>")) == frozenset()


def test_delegation_advertisement_lists_namespaces() -> None:
    """The namespaces the server delegates to us are read from its message."""
    message = xml(
        "<message><delegation xmlns='urn:xmpp:delegation:2'>"
        "<delegated namespace='jabber:iq:roster'/></delegation></message>"
    )
    assert stanzas.delegated_namespaces(message) == frozenset({"jabber:iq:roster"})
    assert stanzas.delegated_namespaces(xml("<message/>")) is None


def test_delegation_disco_nodes() -> None:
    """The server asks about these two nodes for a delegated namespace."""
    assert stanzas.delegation_disco_nodes("jabber:iq:roster") == (
        "urn:xmpp:delegation:2::jabber:iq:roster",
        "urn:xmpp:delegation:2:bare:jabber:iq:roster",
    )


def delegated(inner: str) -> ET.Element:
    return xml(
        "<iq xmlns='jabber:component:accept' type='set' id='d1' from='example.test'>"
        "<delegation xmlns='urn:xmpp:delegation:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        f"{inner}</forwarded></delegation></iq>"
    )


def test_delegated_roster_get_is_parsed() -> None:
    """The forwarded client IQ gives sender, target, type, id and payload namespace."""
    request = stanzas.parse_delegated(
        delegated(
            "<iq xmlns='jabber:client' from='alice@example.test/res' type='get' id='X'>"
            "<query xmlns='jabber:iq:roster'/></iq>"
        )
    )
    assert request is not None
    assert (request.sender, request.to, request.type, request.id) == (
        "alice@example.test/res",
        None,
        "get",
        "X",
    )
    assert request.namespace == "jabber:iq:roster"


def test_delegated_request_to_another_user_keeps_its_target() -> None:
    """A request addressed to someone else's JID is visible as such."""
    request = stanzas.parse_delegated(
        delegated(
            "<iq xmlns='jabber:client' from='bob@example.test/r' to='alice@example.test'"
            " type='get' id='Y'><query xmlns='jabber:iq:roster'/></iq>"
        )
    )
    assert request is not None
    assert request.to == "alice@example.test"


@pytest.mark.parametrize(
    "inner",
    [
        "",
        "<iq xmlns='jabber:client' type='get' id='X'/>",
        "<iq xmlns='jabber:client' from='a@b/c' type='result' id='X'/>",
        "<iq xmlns='jabber:client' from='a@b/c' type='get'/>",
        "<message xmlns='jabber:client' from='a@b/c'/>",
    ],
    ids=["empty", "no-from", "result", "no-id", "not-iq"],
)
def test_malformed_delegations_are_rejected(inner: str) -> None:
    """Anything but a client get/set with sender and id is not a delegated request."""
    assert stanzas.parse_delegated(delegated(inner)) is None


@pytest.fixture(name="request_")
def fixture_request() -> stanzas.DelegatedRequest:
    return stanzas.DelegatedRequest("alice@example.test/res", None, "get", "X", None)


def test_delegated_result_goes_back_to_the_sender(request_: stanzas.DelegatedRequest) -> None:
    """The inner result has the original id and is addressed to the original sender."""
    answer = stanzas.delegated_result(request_, stanzas.roster_query())
    inner = answer.find("{urn:xmpp:forward:0}forwarded/{jabber:client}iq")
    assert inner is not None
    assert inner.attrib == {"type": "result", "id": "X", "to": "alice@example.test/res"}
    assert [child.tag for child in inner] == [f"{ROSTER}query"]


def test_delegated_error_carries_the_condition(request_: stanzas.DelegatedRequest) -> None:
    """A refusal is an inner error IQ with the given type and condition."""
    answer = stanzas.delegated_error(request_, "cancel", "not-allowed")
    inner = answer.find("{urn:xmpp:forward:0}forwarded/{jabber:client}iq")
    assert inner is not None
    assert inner.get("type") == "error"
    assert stanzas.error_condition(inner) == "not-allowed"
    error = inner.find("{jabber:client}error")
    assert error is not None
    assert error.get("type") == "cancel"


@pytest.mark.parametrize(
    "contact",
    [
        Contact("bob@example.test"),
        Contact("bob@example.test", name="\"&<>'", groups=frozenset({"&&&", '""'})),
        Contact("bob@example.test", name="Ünïcødé 🎉", groups=frozenset({"日本"})),
    ],
)
def test_the_size_bound_is_never_below_the_serialized_size(contact: Contact) -> None:
    query = stanzas.roster_query({contact.jid: contact}, "v1")
    assert stanzas.size_bound(query) >= len(ET.tostring(query, encoding="unicode").encode())
