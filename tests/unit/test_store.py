"""The XEP-0356 roster store: what it sends to the server and how it reads the answers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

import pytest
from structlog.testing import capture_logs

from component import stanzas
from component.errors import (
    IqRefusedError,
    IqUnansweredError,
    ItemRefusedError,
    StoreError,
    StoreUnavailableError,
    UnknownUserError,
)
from component.roster import Contact, StoredRoster
from component.store.privileged import IqType, PrivilegedRosterStore

if TYPE_CHECKING:
    from collections.abc import Callable

ALICE = "alice@example.test"
NO_MODULE = IqRefusedError("no", "service-unavailable")


class RecordingSender:
    """Stands in for the XMPP link: records IQs, answers with a canned result or error.

    Requests to the host (the presence module's) have their own answer.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, ET.Element]] = []
        self.result = ET.Element("iq", {"type": "result"})
        self.host_result = ET.Element("iq", {"type": "result"})
        self.error: Exception | None = None
        self.host_error: Exception | None = None
        # Requests to the host an older module does not know (by element name).
        self.unknown_to_module: set[str] = set()

    async def send_iq(self, to: str, iq_type: IqType, payload: ET.Element) -> ET.Element:
        self.sent.append((to, iq_type, payload))
        to_host = "@" not in to
        if to_host and payload.tag.rpartition("}")[2] in self.unknown_to_module:
            raise NO_MODULE
        error = self.host_error if to_host else self.error
        if error is not None:
            raise error
        return self.host_result if to_host else self.result


class FakeGrants:
    """The privileges the server advertised."""

    def __init__(self) -> None:
        self.privileges = stanzas.Privileges(roster="both")
        self.privileges_known = True
        self.listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def advertise_again(self) -> None:
        for listener in self.listeners:
            listener()


@pytest.fixture(name="grants")
def fixture_grants() -> FakeGrants:
    return FakeGrants()


@pytest.fixture(name="sender")
def fixture_sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture(name="store")
def fixture_store(sender: RecordingSender, grants: FakeGrants) -> PrivilegedRosterStore:
    return PrivilegedRosterStore(sender, grants, "roster.example.test")


def module_roster(items: dict[str, Contact], pending: list[str]) -> ET.Element:
    """The module's answer to a roster read."""
    answer = ET.Element("iq", {"type": "result"})
    roster = ET.SubElement(answer, f"{{{stanzas.PRESENCE_UPDATE_NS}}}roster", {"user": "alice"})
    query = stanzas.roster_query(items)
    for item in query:
        if items[item.get("jid", "")].ask:
            item.set("ask", "subscribe")
    roster.append(query)
    listed = ET.SubElement(roster, f"{{{stanzas.PRESENCE_UPDATE_NS}}}pending")
    for jid in pending:
        ET.SubElement(listed, f"{{{stanzas.PRESENCE_UPDATE_NS}}}item", {"jid": jid})
    return answer


async def test_read_is_one_request_to_the_module(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Items (ask included) and pending requests come in one answer from the users' host."""
    bob = Contact("bob@x", "Bob", frozenset({"G"}), "to", ask=True)
    sender.host_result = module_roster({"bob@x": bob}, ["eve@y"])
    assert await store.read(ALICE) == StoredRoster({"bob@x": bob}, frozenset({"eve@y"}))
    [(to, iq_type, payload)] = sender.sent
    assert (to, iq_type, payload.get("user"), len(payload)) == ("example.test", "get", "alice", 0)


async def test_a_module_read_of_an_unknown_user_is_said_so(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """item-not-found from the module: no such user."""
    sender.host_error = IqRefusedError("x", "item-not-found")
    with pytest.raises(UnknownUserError):
        await store.read(ALICE)


async def test_without_module_reads_a_roster_get_goes_to_the_users_bare_jid(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """An older module: an empty privileged roster query, the server's items parsed."""
    sender.unknown_to_module = {"roster"}
    sender.result.append(stanzas.roster_query({"bob@x": Contact("bob@x", "Bob")}))
    assert await store.read(ALICE) == StoredRoster({"bob@x": Contact("bob@x", "Bob")})
    (to, iq_type, payload) = sender.sent[1]
    assert (to, iq_type, len(payload)) == (ALICE, "get", 0)


async def test_without_module_reads_pending_requests_are_asked_for_apart(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Pending inbound requests, which a roster query does not show, come from the module."""
    sender.unknown_to_module = {"roster"}
    sender.host_result.append(stanzas.pending_request("alice", ["eve@y", "mallory@z"]))
    assert (await store.read(ALICE)).pending_in == {"eve@y", "mallory@z"}
    (to, iq_type, payload) = sender.sent[2]
    assert (to, iq_type, payload.get("user"), len(payload)) == ("example.test", "get", "alice", 0)


async def test_a_missing_module_is_said_once_and_reads_go_on(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Without the presence module, rosters still sync; the operator is told once what to load."""
    sender.host_error = IqRefusedError("no", "service-unavailable")
    with capture_logs() as logs:
        assert (await store.read(ALICE)).pending_in == frozenset()
        assert (await store.read(ALICE)).pending_in == frozenset()
    [missing] = [e for e in logs if e["event"] == "store.presence_module_missing"]
    assert "mod_roster_admin_presence" in missing["hint"]


async def test_other_pending_read_errors_fail_the_read(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """A timeout or refusal reading pending requests is a store failure like any other."""
    sender.host_error = IqUnansweredError("slow")
    with pytest.raises(StoreUnavailableError):
        await store.read(ALICE)


async def test_clear_pending_names_the_requests_to_drop(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Clearing is one set to the host listing exactly the JIDs to drop."""
    await store.clear_pending(ALICE, ["mallory@z", "eve@y"])
    [(to, iq_type, payload)] = sender.sent
    assert (to, iq_type, payload.get("user")) == ("example.test", "set", "alice")
    assert [item.get("jid") for item in payload] == ["eve@y", "mallory@z"]


async def test_without_the_module_write_sends_exactly_one_item(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """One item per privileged IQ: Prosody answers multi-item sets with several same-id
    results."""
    sender.host_error = NO_MODULE
    await store.write(ALICE, Contact("bob@x", "Bob", frozenset({"G"})))
    [_, (to, iq_type, payload)] = sender.sent
    assert to == ALICE
    assert iq_type == "set"
    assert stanzas.parse_roster_query(payload) == {
        "bob@x": Contact("bob@x", "Bob", frozenset({"G"}))
    }


async def test_removing_an_item_already_gone_is_fine(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """item-not-found on a privileged removal means the roster already is as wanted."""
    sender.host_error = NO_MODULE
    sender.error = IqRefusedError("gone", "item-not-found")
    await store.remove(ALICE, "bob@x")
    (item,) = sender.sent[1][2]
    assert item.attrib == {"jid": "bob@x", "subscription": "remove"}


async def test_other_removal_errors_are_raised(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Any other refusal of a privileged removal is a store failure."""
    sender.host_error = NO_MODULE
    sender.error = IqRefusedError("no", "forbidden")
    with pytest.raises(StoreError):
        await store.remove(ALICE, "bob@x")


async def test_announce_asks_the_users_host_for_presence(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Presence for added and removed contacts is one request to the host, naming the user."""
    await store.announce(ALICE, ["bob@example.test"], ["carol@remote.test"])
    [(to, iq_type, payload)] = sender.sent
    assert (to, iq_type) == ("example.test", "set")
    assert payload.tag == f"{{{stanzas.PRESENCE_UPDATE_NS}}}update"
    assert payload.get("user") == "alice"
    assert [(child.tag.rpartition("}")[2], child.get("jid")) for child in payload] == [
        ("added", "bob@example.test"),
        ("removed", "carol@remote.test"),
    ]


@pytest.mark.parametrize(
    ("presence", "online", "asked"),
    [
        ("roster", False, False),
        ("managed_entity", False, False),
        ("roster", True, True),
        # Without the presence privilege we do not know who is online: always ask.
        ("none", False, True),
    ],
)
async def test_announce_skips_users_known_to_be_offline(
    sender: RecordingSender, grants: FakeGrants, presence: str, online: bool, asked: bool
) -> None:
    """The module sends nothing for a user without sessions: we do not ask it then, as long
    as the server tells us every user's presence."""
    grants.privileges = stanzas.Privileges(roster="both", presence=presence)
    seen: list[str] = []

    def is_online(user: str) -> bool:
        seen.append(user)
        return online

    store = PrivilegedRosterStore(sender, grants, "roster.example.test", online=is_online)
    await store.announce(ALICE, ["bob@example.test"], [])
    assert bool(sender.sent) is asked
    assert seen in ([ALICE], [])


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (IqRefusedError("x", "not-allowed"), ItemRefusedError),
        (IqRefusedError("x", "jid-malformed"), ItemRefusedError),
        (IqRefusedError("x", "service-unavailable"), UnknownUserError),
        (IqRefusedError("x", "forbidden"), StoreError),
        (IqUnansweredError("x"), StoreUnavailableError),
    ],
)
async def test_write_failures_are_told_in_neutral_words(
    store: PrivilegedRosterStore, sender: RecordingSender, error: Exception, kind: type
) -> None:
    """XMPP error conditions of privileged SETs become the store's own kinds, which sync
    understands."""
    sender.host_error = NO_MODULE
    sender.error = error
    with pytest.raises(StoreError) as raised:
        await store.write(ALICE, Contact("bob@x"))
    assert type(raised.value) is kind


def test_ready_once_roster_privileges_are_granted(
    store: PrivilegedRosterStore, grants: FakeGrants
) -> None:
    """The store works with roster "both"; before the advertisement or with less, it says why."""
    assert store.problem() is None
    grants.privileges = stanzas.Privileges(roster="get")
    problem = store.problem()
    assert problem is not None
    assert 'roster = "both"' in problem
    assert "roster.example.test" in problem
    grants.privileges_known = False
    assert "advertisement" in (store.problem() or "")


# --- writes through the module ----------------------------------------------------------------


def write_answer(**refused: str) -> ET.Element:
    """The module's answer to a roster write, refusing the given JIDs (``bob_x`` = bob@x)."""
    answer = ET.Element("iq", {"type": "result"})
    write = ET.SubElement(answer, f"{{{stanzas.PRESENCE_UPDATE_NS}}}write", {"user": "alice"})
    for jid, why in refused.items():
        element = ET.SubElement(write, f"{{{stanzas.PRESENCE_UPDATE_NS}}}refused")
        element.set("jid", jid.replace("_", "@"))
        element.text = why
    return answer


def written_items(payload: ET.Element) -> list[tuple[str | None, str | None]]:
    assert payload.tag == f"{{{stanzas.PRESENCE_UPDATE_NS}}}write"
    [query] = payload
    return [(item.get("jid"), item.get("subscription")) for item in query]


async def test_a_users_writes_of_one_turn_go_in_one_request_to_the_host(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Items set and removed together are one write request naming the user, in order."""
    sender.host_result = write_answer()
    await asyncio.gather(
        store.write(ALICE, Contact("bob@x", "Bob", frozenset({"G"}))),
        store.remove(ALICE, "dave@x"),
        store.write(ALICE, Contact("carol@x")),
    )
    [(to, iq_type, payload)] = sender.sent
    assert (to, iq_type, payload.get("user")) == ("example.test", "set", "alice")
    assert written_items(payload) == [("bob@x", "both"), ("dave@x", "remove"), ("carol@x", "both")]
    assert stanzas.parse_roster_query(payload[0])["bob@x"] == Contact(
        "bob@x", "Bob", frozenset({"G"})
    )


async def test_each_user_and_each_turn_has_its_own_request(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Another user's items go separately, and so do items written after the answer."""
    sender.host_result = write_answer()
    await asyncio.gather(
        store.write(ALICE, Contact("bob@x")), store.write("carol@example.test", Contact("bob@x"))
    )
    await store.write(ALICE, Contact("dave@x"))
    assert [(p.get("user"), written_items(p)) for _, _, p in sender.sent] == [
        ("alice", [("bob@x", "both")]),
        ("carol", [("bob@x", "both")]),
        ("alice", [("dave@x", "both")]),
    ]


async def test_a_users_items_are_split_below_the_stanza_size_limit(
    sender: RecordingSender, grants: FakeGrants
) -> None:
    """Over the server's stanza limit it would close our stream: each request stays below,
    and every item goes out once, in order."""
    limit = 10_000
    store = PrivilegedRosterStore(sender, grants, "roster.example.test", max_stanza_bytes=limit)
    sender.host_result = write_answer()
    contacts = [Contact(f"c{i}@x", "n" * 200) for i in range(60)]
    await asyncio.gather(*(store.write(ALICE, c) for c in contacts))
    assert len(sender.sent) > 1
    assert all(len(ET.tostring(p, encoding="unicode").encode()) < limit for _, _, p in sender.sent)
    jids = [jid for _, _, p in sender.sent for jid, _ in written_items(p)]
    assert jids == [c.jid for c in contacts]


async def test_an_item_over_the_stanza_size_limit_is_refused_alone(
    sender: RecordingSender, grants: FakeGrants
) -> None:
    """It is never sent; the user's other items are written."""
    store = PrivilegedRosterStore(sender, grants, "roster.example.test", max_stanza_bytes=10_000)
    sender.host_result = write_answer()
    outcomes = await asyncio.gather(
        store.write(ALICE, Contact("huge@x", "n" * 20_000)),
        store.write(ALICE, Contact("bob@x")),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], ItemRefusedError)
    assert "stanza size limit" in str(outcomes[0])
    assert outcomes[1] is None
    assert [written_items(p) for _, _, p in sender.sent] == [[("bob@x", "both")]]


async def test_a_refused_item_fails_alone(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """The module names what it did not write: that write is refused, the others went in; a
    refused removal is a store failure (the item may still be there)."""
    sender.host_result = write_answer(bob_x="not a bare JID", dave_x="not a bare JID")
    bob, carol, dave = await asyncio.gather(
        store.write(ALICE, Contact("bob@x")),
        store.write(ALICE, Contact("carol@x")),
        store.remove(ALICE, "dave@x"),
        return_exceptions=True,
    )
    assert isinstance(bob, ItemRefusedError)
    assert "not a bare JID" in str(bob)
    assert carol is None
    assert type(dave) is StoreError
    assert len(sender.sent) == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (IqRefusedError("x", "item-not-found"), UnknownUserError),
        (IqRefusedError("x", "forbidden"), StoreError),
        (IqRefusedError("x", "internal-server-error"), StoreError),
        (IqUnansweredError("x"), StoreUnavailableError),
    ],
)
async def test_a_failed_write_request_fails_every_item_in_it(
    store: PrivilegedRosterStore, sender: RecordingSender, error: Exception, kind: type
) -> None:
    """Nothing of the request was written: each writer hears it in the store's words."""
    sender.host_error = error
    outcomes = await asyncio.gather(
        store.write(ALICE, Contact("bob@x")), store.remove(ALICE, "carol@x"), return_exceptions=True
    )
    assert [type(outcome) for outcome in outcomes] == [kind, kind]
    assert len(sender.sent) == 1


async def test_a_cancelled_writer_leaves_the_others_their_answer(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Cancelling one write (shutdown) neither cancels the request nor the other writes."""
    sender.host_result = write_answer()
    first = asyncio.ensure_future(store.write(ALICE, Contact("bob@x")))
    second = asyncio.ensure_future(store.write(ALICE, Contact("carol@x")))
    await asyncio.sleep(0)
    first.cancel()
    await second
    assert first.cancelled()
    [(_, _, payload)] = sender.sent
    assert written_items(payload) == [("bob@x", "both"), ("carol@x", "both")]


async def test_without_module_writes_each_item_is_a_privileged_set_until_new_grants(
    store: PrivilegedRosterStore, sender: RecordingSender, grants: FakeGrants
) -> None:
    """An older module (or none): warned once, every item then a privileged SET to the user;
    once the server advertises its grants again (reconnect), the module is tried again, for
    reads too."""
    sender.host_error = NO_MODULE
    with capture_logs() as logs:
        await asyncio.gather(store.write(ALICE, Contact("bob@x")), store.remove(ALICE, "carol@x"))
        await store.write(ALICE, Contact("dave@x"))
    assert [to for to, _, _ in sender.sent] == ["example.test", ALICE, ALICE, ALICE]
    [warning] = [e for e in logs if e["event"] == "store.module_outdated"]
    assert "mod_roster_admin_presence" in warning["hint"]

    sender.sent.clear()
    sender.host_error = None
    sender.host_result = write_answer()
    grants.advertise_again()
    await store.write(ALICE, Contact("erin@x"))
    assert [to for to, _, _ in sender.sent] == ["example.test"]
    sender.host_result = module_roster({}, [])
    await store.read(ALICE)
    assert [to for to, _, _ in sender.sent] == ["example.test", "example.test"]


async def test_after_module_writes_presence_needs_no_request(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """The module sent the presence with the writes; after privileged writes (an older
    module) the update request goes out as before."""
    sender.host_result = write_answer()
    await store.write(ALICE, Contact("bob@x"))
    await store.announce(ALICE, ["bob@x"], [])
    assert len(sender.sent) == 1

    sender.sent.clear()
    sender.unknown_to_module = {"write"}
    await store.write(ALICE, Contact("carol@x"))
    await store.announce(ALICE, ["carol@x"], [])
    assert [p.tag.rpartition("}")[2] for _, _, p in sender.sent] == ["write", "query", "update"]
