"""XML for the XEPs we speak: roster queries, XEP-0356 privileges, XEP-0355 delegation.

Pure functions over ElementTree elements, so that every shape can be tested without a stream.
We read raw XML rather than slixmpp stanza objects because the interesting payloads are
``jabber:client`` stanzas nested inside a component stream, which slixmpp's stanza classes
(bound to ``jabber:component:accept``) do not recognise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

from component.roster import Contact, Roster

if TYPE_CHECKING:
    from collections.abc import Iterable

ROSTER_NS = "jabber:iq:roster"
CLIENT_NS = "jabber:client"
FORWARD_NS = "urn:xmpp:forward:0"
STANZA_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
PRIVILEGE_NS = ("urn:xmpp:privilege:2", "urn:xmpp:privilege:1")
DELEGATION_NS = "urn:xmpp:delegation:2"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
# Our own request to deploy/prosody/mod_roster_admin_presence.lua (see presence_update).
PRESENCE_UPDATE_NS = "urn:http-roster-admin:presence:0"

SUBSCRIPTIONS = frozenset({"none", "to", "from", "both"})


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


# --- roster queries (RFC 6121 section 2) ---------------------------------------------------


def roster_query(contacts: Roster | None = None, ver: str | None = None) -> ET.Element:
    """A ``<query xmlns='jabber:iq:roster'>`` listing ``contacts`` (empty for a GET), with the
    roster version (XEP-0237) when given."""
    query = ET.Element(_q(ROSTER_NS, "query"), {} if ver is None else {"ver": ver})
    for contact in sorted((contacts or {}).values(), key=lambda c: c.jid):
        query.append(roster_item(contact))
    return query


def roster_item(contact: Contact) -> ET.Element:
    """One ``<item/>`` carrying everything the server should store for ``contact``."""
    item = ET.Element(
        _q(ROSTER_NS, "item"), {"jid": contact.jid, "subscription": contact.subscription}
    )
    if contact.name:
        item.set("name", contact.name)
    for group in sorted(contact.groups):
        ET.SubElement(item, _q(ROSTER_NS, "group")).text = group
    return item


def size_bound(element: ET.Element) -> int:
    """At least the bytes ``element`` takes serialized, found without serializing it.

    Every character is counted at its worst (an entity like ``&quot;``, six bytes), every tag
    with its namespace declaration: far cheaper than a serialization, exact enough to know
    that a roster is nowhere near a size limit.
    """
    tag = element.tag
    size = 2 * len(tag) + 16 + 6 * len(element.text or "") + 6 * len(element.tail or "")
    for name, value in element.attrib.items():
        size += len(name) + 4 + 6 * len(value)
    for child in element:
        size += size_bound(child)
    return size


def roster_removal(jid: str, ver: str | None = None) -> ET.Element:
    """A roster query removing ``jid`` (a push carries the version it leads to)."""
    query = ET.Element(_q(ROSTER_NS, "query"), {} if ver is None else {"ver": ver})
    query.append(removal_item(jid))
    return query


def presence_update(username: str, added: Iterable[str], removed: Iterable[str]) -> ET.Element:
    """Ask the server to make presence flow live for contacts added to or removed from a roster.

    Prosody exchanges no presence when a privileged roster SET makes two online users
    contacts, or removes one: the shipped module sends each side's current presence (or
    ``unavailable``) on the request of the component, and of no one else.
    """
    update = ET.Element(_q(PRESENCE_UPDATE_NS, "update"), {"user": username})
    for tag, jids in (("added", added), ("removed", removed)):
        for jid in jids:
            ET.SubElement(update, _q(PRESENCE_UPDATE_NS, tag), {"jid": jid})
    return update


def pending_request(username: str, jids: Iterable[str] = ()) -> ET.Element:
    """Read (no ``jids``, in a GET) or clear (in a SET) a user's pending inbound requests.

    Also answered by mod_roster_admin_presence: a roster query does not show them.
    """
    pending = ET.Element(_q(PRESENCE_UPDATE_NS, "pending"), {"user": username})
    for jid in sorted(jids):
        ET.SubElement(pending, _q(PRESENCE_UPDATE_NS, "item"), {"jid": jid})
    return pending


def parse_pending(result: ET.Element) -> frozenset[str]:
    """The JIDs in the answer to a pending_request GET."""
    return _module_jids(result, "pending", "item")


def _module_jids(result: ET.Element, answer: str, child: str) -> frozenset[str]:
    """The ``jid`` of each ``child`` in the module's ``answer`` element of ``result``."""
    found = result.find(_q(PRESENCE_UPDATE_NS, answer))
    if found is None:
        return frozenset()
    return frozenset(
        jid for item in found.iter(_q(PRESENCE_UPDATE_NS, child)) if (jid := item.get("jid"))
    )


def push_request(
    username: str, sessions: Iterable[str], queries: Iterable[ET.Element]
) -> ET.Element:
    """Ask the shipped module to push ``queries`` (one item each, in order) to the user's
    ``sessions`` (full JIDs), as the server pushes its own changes: one request instead of a
    privileged IQ per push and client, each relayed both ways."""
    push = ET.Element(_q(PRESENCE_UPDATE_NS, "push"), {"user": username})
    for session in sessions:
        ET.SubElement(push, _q(PRESENCE_UPDATE_NS, "session"), {"jid": session})
    push.extend(queries)
    return push


def parse_push_result(result: ET.Element) -> frozenset[str]:
    """The sessions the module found gone, from its answer to a push_request."""
    return _module_jids(result, "push", "gone")


def hold_request() -> ET.Element:
    """Ask the shipped module to hold users' roster requests while we sync the user, then
    answer them itself from its store (instead of delegating them to us); ``<batches/>``:
    it tells us of them, and we it of the users synced, several to a message."""
    hold = ET.Element(_q(PRESENCE_UPDATE_NS, "hold"))
    ET.SubElement(hold, _q(PRESENCE_UPDATE_NS, "batches"))
    return hold


@dataclass(frozen=True, slots=True)
class HeldRequest:
    """A user's roster request the module holds until we say the user is synced (by ref)."""

    ref: str
    username: str
    session: str


def parse_sync_batch(message: ET.Element) -> tuple[list[HeldRequest], list[str]]:
    """The held requests a module's ``<sync>`` message tells us of, and the refs of those
    malformed (no user or session): an entry without a ref cannot be answered and is left
    out of both."""
    held: list[HeldRequest] = []
    malformed: list[str] = []
    batch = message.find(_q(PRESENCE_UPDATE_NS, "sync"))
    for user in () if batch is None else batch.iter(_q(PRESENCE_UPDATE_NS, "user")):
        ref, username, session = user.get("ref"), user.get("name"), user.get("session")
        if not ref:
            continue
        if username and session:
            held.append(HeldRequest(ref, username, session))
        else:
            malformed.append(ref)
    return held, malformed


def synced_answer(outcomes: Iterable[tuple[str, str | None]]) -> ET.Element:
    """Tell the module which held requests' users are synced: (ref, None), or could not be
    (ref, the error condition); it then answers them from its store."""
    synced = ET.Element(_q(PRESENCE_UPDATE_NS, "synced"))
    for ref, condition in outcomes:
        attrs = {"ref": ref} if condition is None else {"ref": ref, "error": condition}
        ET.SubElement(synced, _q(PRESENCE_UPDATE_NS, "user"), attrs)
    return synced


def roster_write(username: str, items: Iterable[ET.Element]) -> ET.Element:
    """Ask the shipped module to write a user's roster ``items`` (``roster_item`` elements, or
    removals) and save the roster once: a privileged SET carries one item, and Prosody saves
    the user's whole roster for each."""
    write = ET.Element(_q(PRESENCE_UPDATE_NS, "write"), {"user": username})
    ET.SubElement(write, _q(ROSTER_NS, "query")).extend(items)
    return write


def removal_item(jid: str) -> ET.Element:
    """The ``<item/>`` that removes ``jid`` from a roster."""
    return ET.Element(_q(ROSTER_NS, "item"), {"jid": jid, "subscription": "remove"})


def parse_write_result(result: ET.Element) -> dict[str, str]:
    """The items the module would not write, from its answer to a roster_write: JID as sent
    -> why."""
    found = result.find(_q(PRESENCE_UPDATE_NS, "write"))
    if found is None:
        return {}
    return {
        jid: refused.text or "refused"
        for refused in found.iter(_q(PRESENCE_UPDATE_NS, "refused"))
        if (jid := refused.get("jid"))
    }


def roster_read(username: str) -> ET.Element:
    """Ask the shipped module for a user's roster items and pending inbound requests in one
    answer (a privileged GET shows no pending requests)."""
    return ET.Element(_q(PRESENCE_UPDATE_NS, "roster"), {"user": username})


def parse_roster_read(result: ET.Element) -> tuple[dict[str, Contact], frozenset[str]]:
    """The contacts and the pending requests in the module's answer to a roster_read."""
    found = result.find(_q(PRESENCE_UPDATE_NS, "roster"))
    if found is None:
        return {}, frozenset()
    return parse_roster_query(found.find(_q(ROSTER_NS, "query"))), _module_jids(
        found, "pending", "item"
    )


def parse_roster_query(query: ET.Element | None) -> dict[str, Contact]:
    """The contacts in a server's roster result, keyed by JID, as the server stores them."""
    contacts: dict[str, Contact] = {}
    if query is None:
        return contacts
    for item in query.iter(_q(ROSTER_NS, "item")):
        jid = item.get("jid")
        if not jid:
            continue
        subscription = item.get("subscription", "none")
        contacts[jid] = Contact(
            jid=jid,
            name=item.get("name") or None,
            groups=frozenset(g.text for g in item.iter(_q(ROSTER_NS, "group")) if g.text),
            subscription=subscription if subscription in SUBSCRIPTIONS else "none",
            ask=item.get("ask") == "subscribe",
        )
    return contacts


def error_condition(stanza: ET.Element) -> str:
    """The defined condition of an error stanza, read from the raw XML.

    slixmpp misreads errors addressed to components, so callers read them here; any
    namespace is accepted for the ``<error/>`` element itself.
    """
    for child in stanza:
        if child.tag.rpartition("}")[2] != "error":
            continue
        for condition in child:
            if condition.tag.startswith(f"{{{STANZA_ERROR_NS}}}") and not condition.tag.endswith(
                "}text"
            ):
                return condition.tag.rpartition("}")[2]
    return "undefined-condition"


# --- XEP-0356: privileged entity -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Privileges:
    """What the server has granted us for one of its hosts."""

    roster: str = "none"
    message: str = "none"
    presence: str = "none"
    iq: dict[str, str] = field(default_factory=dict)

    def can_read_rosters(self) -> bool:
        return self.roster in {"get", "both"}

    def can_write_rosters(self) -> bool:
        return self.roster in {"set", "both"}

    def can_send_iq(self, namespace: str, iq_type: str) -> bool:
        return self.iq.get(namespace) in {iq_type, "both"}


def find_privilege(message: ET.Element) -> ET.Element | None:
    """The ``<privilege/>`` advertisement in a message, in either namespace version."""
    for ns in PRIVILEGE_NS:
        found = message.find(_q(ns, "privilege"))
        if found is not None:
            return found
    return None


def parse_privileges(privilege: ET.Element) -> Privileges:
    """Read a privilege advertisement.

    Prosody 0.12 nests several ``<namespace/>`` elements inside each other, so they are
    collected from the whole subtree rather than from direct children.
    """
    ns = privilege.tag.partition("}")[0].lstrip("{")
    values: dict[str, str] = {}
    iq: dict[str, str] = {}
    for perm in privilege.iter(_q(ns, "perm")):
        access = perm.get("access", "")
        if access == "iq":
            for namespace in perm.iter(_q(ns, "namespace")):
                if namespace.get("ns"):
                    iq[namespace.get("ns", "")] = namespace.get("type", "none")
        elif access in {"roster", "message", "presence"}:
            values[access] = perm.get("type", "none")
    return Privileges(iq=iq, **values)


def privileged_iq(user: str, inner_to: str, iq_id: str, payload: ET.Element) -> ET.Element:
    """XEP-0356 v2 ``<privileged_iq/>``: a ``set`` the server sends as ``user`` to ``inner_to``."""
    wrapper = ET.Element(_q(PRIVILEGE_NS[0], "privileged_iq"))
    inner = ET.SubElement(
        wrapper,
        _q(CLIENT_NS, "iq"),
        {"type": "set", "id": iq_id, "from": user, "to": inner_to},
    )
    inner.append(payload)
    return wrapper


# --- XEP-0355: namespace delegation --------------------------------------------------------


def delegated_namespaces(message: ET.Element) -> frozenset[str] | None:
    """Namespaces a delegation advertisement hands us, or None if this is not one."""
    delegation = message.find(_q(DELEGATION_NS, "delegation"))
    if delegation is None:
        return None
    return frozenset(
        d.get("namespace", "") for d in delegation.iter(_q(DELEGATION_NS, "delegated"))
    )


def delegation_disco_nodes(namespace: str) -> tuple[str, str]:
    """The disco#info nodes the server asks the managing entity about for ``namespace``."""
    return (f"{DELEGATION_NS}::{namespace}", f"{DELEGATION_NS}:bare:{namespace}")


@dataclass(frozen=True, slots=True)
class DelegatedRequest:
    """A user's IQ that the server forwarded to us (XEP-0355)."""

    sender: str  # the user's full JID
    to: str | None  # where the user addressed it (None: their own account)
    type: str  # get or set
    id: str
    payload: ET.Element | None

    @property
    def namespace(self) -> str:
        if self.payload is None:
            return ""
        return self.payload.tag.partition("}")[0].lstrip("{")


def parse_delegated(outer: ET.Element) -> DelegatedRequest | None:
    """The forwarded client IQ inside a delegation IQ, or None if malformed."""
    delegation = outer.find(_q(DELEGATION_NS, "delegation"))
    forwarded = None if delegation is None else delegation.find(_q(FORWARD_NS, "forwarded"))
    inner = None if forwarded is None else forwarded.find(_q(CLIENT_NS, "iq"))
    if inner is None:
        return None
    sender, iq_type, iq_id = inner.get("from"), inner.get("type"), inner.get("id")
    if not sender or iq_type not in {"get", "set"} or iq_id is None:
        return None
    payload = next(iter(inner), None)
    return DelegatedRequest(sender, inner.get("to"), iq_type, iq_id, payload)


def delegated_result(request: DelegatedRequest, payload: ET.Element | None) -> ET.Element:
    """The ``<delegation/>`` child of our answer: the result the server hands to the user."""
    return _delegated_answer(request, "result", payload)


def delegated_error(request: DelegatedRequest, error_type: str, condition: str) -> ET.Element:
    """The ``<delegation/>`` child of our answer: an error the server hands to the user."""
    error = ET.Element(_q(CLIENT_NS, "error"), {"type": error_type})
    ET.SubElement(error, _q(STANZA_ERROR_NS, condition))
    return _delegated_answer(request, "error", error)


def _delegated_answer(
    request: DelegatedRequest, iq_type: str, child: ET.Element | None
) -> ET.Element:
    delegation = ET.Element(_q(DELEGATION_NS, "delegation"))
    forwarded = ET.SubElement(delegation, _q(FORWARD_NS, "forwarded"))
    # Prosody checks that the inner answer goes back to the original sender with its id.
    inner = ET.SubElement(
        forwarded, _q(CLIENT_NS, "iq"), {"type": iq_type, "id": request.id, "to": request.sender}
    )
    if child is not None:
        inner.append(child)
    return delegation
