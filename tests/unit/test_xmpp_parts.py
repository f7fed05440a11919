"""The XMPP parts, each on its own: grants, online users, delegated answers, pushes.

A fake link stands in for the stream: it hands the parts' handlers the stanzas a server
would send and records the IQs they send.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

import pytest
from slixmpp import Message, Presence
from slixmpp.jid import JID

from component import stanzas
from component.errors import IqRefusedError
from component.roster import Contact, RosterDiff, version
from component.xmpp.delegation import DelegatedRosters
from component.xmpp.grants import Grants
from component.xmpp.presence import OnlineUsers
from component.xmpp.pushes import RosterPusher

if TYPE_CHECKING:
    from collections.abc import Callable

    from component.roster import Roster

DOMAIN = "example.test"
COMPONENT = "roster.example.test"
ALICE = "alice@example.test"
STREAM = "jabber:component:accept"
PRIVILEGES = (
    "<privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='both'/>"
    "<perm access='presence' type='roster'/><perm access='iq'>"
    "<namespace ns='jabber:iq:roster' type='both'/></perm></privilege>"
)
DELEGATION = (
    "<delegation xmlns='urn:xmpp:delegation:2'>"
    "<delegated namespace='jabber:iq:roster'/></delegation>"
)


class FakeLink:
    """The component stream, without a server: handlers by name, IQs recorded."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Any], None]] = {}
        self.listeners: list[Callable[[bool], None]] = []
        self.features: list[tuple[str, str]] = []
        self.sent: list[tuple[str, str, ET.Element]] = []
        self.refuse: dict[str, str] = {}  # inner 'to' -> condition to answer with
        self.gate: asyncio.Event | None = None
        # The shipped module's pushes: None answers as a server without it does.
        self.gone: set[str] | None = set()
        self.unsupported = 0  # push requests answered so (not in sent)
        self.holds = 0  # requests to hold roster requests (not in sent)
        self.hold_refused = False
        self.messages: list[tuple[str, ET.Element]] = []  # sent: (to, payload)

    def handle(self, name: str, path: str, callback: Callable[[Any], None]) -> None:
        del path
        self.handlers[name] = callback

    def on_state(self, listener: Callable[[bool], None]) -> None:
        self.listeners.append(listener)

    def add_disco_feature(self, feature: str, node: str) -> None:
        self.features.append((feature, node))

    def set_connected(self, connected: bool) -> None:
        for listener in self.listeners:
            listener(connected)

    def send_message(self, to: str, payload: ET.Element) -> None:
        self.messages.append((to, payload))

    async def send_iq(self, to: str, iq_type: str, payload: ET.Element) -> ET.Element:
        if self.gate is not None:
            await self.gate.wait()
        if payload.tag == f"{{{stanzas.PRESENCE_UPDATE_NS}}}hold":
            assert payload.find(f"{{{stanzas.PRESENCE_UPDATE_NS}}}batches") is not None
            self.holds += 1
            if self.hold_refused:
                raise IqRefusedError("no module", "feature-not-implemented")
            return ET.Element("iq", {"type": "result"})
        if payload.tag == f"{{{stanzas.PRESENCE_UPDATE_NS}}}push":
            if self.gone is None:
                self.unsupported += 1
                raise IqRefusedError("no module", "service-unavailable")
            self.sent.append((to, iq_type, payload))
            answer = ET.Element("iq", {"type": "result"})
            push = ET.SubElement(answer, payload.tag, {"user": payload.get("user", "")})
            for session in payload.iter(f"{{{stanzas.PRESENCE_UPDATE_NS}}}session"):
                if session.get("jid") in self.gone:
                    ET.SubElement(push, f"{{{stanzas.PRESENCE_UPDATE_NS}}}gone", session.attrib)
            return answer
        self.sent.append((to, iq_type, payload))
        inner = payload.find(f"{{{stanzas.CLIENT_NS}}}iq")
        target = "" if inner is None else inner.get("to", "")
        if target in self.refuse:
            raise IqRefusedError("refused", self.refuse[target])
        return ET.Element("iq", {"type": "result"})


def message(sender: str, body: str) -> Message:
    text = f"<message xmlns='{STREAM}' from='{sender}'>{body}</message>"
    return Message(xml=ET.fromstring(text))  # type: ignore[no-untyped-call]  # noqa: S314 -- ours


def presence(sender: str, kind: str | None = None) -> Presence:
    attrs = f" type='{kind}'" if kind else ""
    text = f"<presence xmlns='{STREAM}' from='{sender}'{attrs}/>"
    return Presence(xml=ET.fromstring(text))  # noqa: S314 -- written here


@pytest.fixture(name="link")
def fixture_link() -> FakeLink:
    return FakeLink()


@pytest.fixture(name="grants")
def fixture_grants(link: FakeLink) -> Grants:
    return Grants(link, DOMAIN)


@pytest.fixture(name="available")
def fixture_available() -> list[str]:
    return []


@pytest.fixture(name="online")
def fixture_online(link: FakeLink, available: list[str]) -> OnlineUsers:
    return OnlineUsers(link, DOMAIN, available.append)


# --- grants --------------------------------------------------------------------------------


def test_grants_are_read_from_the_servers_advertisements(link: FakeLink, grants: Grants) -> None:
    """Privileges and delegations are taken as they arrive, each change told to listeners."""
    changes: list[None] = []
    grants.on_change(lambda: changes.append(None))
    link.handlers["advertisements"](message(DOMAIN, DELEGATION))
    link.handlers["advertisements"](message(DOMAIN, PRIVILEGES))
    assert grants.privileges_known
    assert grants.privileges.can_write_rosters()
    assert grants.privileges.can_send_iq(stanzas.ROSTER_NS, "set")
    assert grants.delegated == {stanzas.ROSTER_NS}
    assert len(changes) == 2


def test_advertisements_from_another_host_are_ignored(link: FakeLink, grants: Grants) -> None:
    """Only the host whose users we manage grants us anything."""
    link.handlers["advertisements"](message("other.test", PRIVILEGES))
    link.handlers["advertisements"](message(f"mallory@{DOMAIN}/x", DELEGATION))
    assert not grants.privileges_known
    assert grants.delegated == frozenset()


def test_grants_end_with_the_stream(link: FakeLink, grants: Grants) -> None:
    """After a disconnect nothing is assumed granted until the server says so again."""
    link.handlers["advertisements"](message(DOMAIN, PRIVILEGES + DELEGATION))
    link.set_connected(False)
    assert not grants.privileges_known
    assert not grants.privileges.can_read_rosters()
    assert grants.delegated == frozenset()


# --- online users --------------------------------------------------------------------------


def test_users_coming_online_are_tracked_and_reported(
    link: FakeLink, online: OnlineUsers, available: list[str]
) -> None:
    """Available presence adds a resource and reports the user; unavailable removes it."""
    handle = link.handlers["user presence"]
    handle(presence(f"{ALICE}/phone"))
    handle(presence(f"{ALICE}/laptop"))
    handle(presence(f"bob@{DOMAIN}/x", "unavailable"))
    assert online.online_users() == ["alice"]
    assert online.resources(ALICE) == [f"{ALICE}/laptop", f"{ALICE}/phone"]
    assert available == ["alice", "alice"]
    handle(presence(f"{ALICE}/phone", "unavailable"))
    handle(presence(f"{ALICE}/laptop", "unavailable"))
    assert not online.is_online("alice")


@pytest.mark.parametrize("sender", ["alice@other.test/r", ALICE, DOMAIN, f"{DOMAIN}/r", COMPONENT])
def test_presence_not_from_a_users_session_is_ignored(
    link: FakeLink, online: OnlineUsers, available: list[str], sender: str
) -> None:
    """Other domains, bare JIDs and the server itself are nobody's session."""
    link.handlers["user presence"](presence(sender))
    assert online.online_users() == []
    assert available == []


def test_users_who_seemed_to_leave_are_still_found_for_a_while(
    link: FakeLink, online: OnlineUsers
) -> None:
    """An unavailable copy may only mean a subscription changed: asked with ``since``, the
    user still counts until that moment is past."""
    link.handlers["user presence"](presence(f"{ALICE}/phone"))
    link.handlers["user presence"](presence(f"{ALICE}/phone", "unavailable"))
    assert online.online_users() == []
    before = time.monotonic() - 60
    assert online.online_users(since=before) == ["alice"]
    assert online.is_online("alice", since=before)
    assert not online.is_online("alice", since=time.monotonic() + 1)
    assert online.online_users(since=time.monotonic() + 1) == []
    assert online.online_users(since=before) == []  # forgotten once nobody looked back


def test_who_is_online_is_forgotten_with_the_stream(link: FakeLink, online: OnlineUsers) -> None:
    """The server replays every session's presence on reconnect, so nothing stale stays."""
    link.handlers["user presence"](presence(f"{ALICE}/phone"))
    link.set_connected(False)
    assert online.online_users() == []


# --- delegated answers ---------------------------------------------------------------------


def delegated_get(sender: str = f"{ALICE}/phone") -> stanzas.DelegatedRequest:
    return stanzas.DelegatedRequest(sender, None, "get", "r1", stanzas.roster_query())


def no_contacts(_username: str) -> Roster:
    return {}


def make_delegation(
    link: FakeLink,
    grants: Grants,
    online: OnlineUsers,
    provider: Callable[[str], Roster],
    *,
    max_bytes: int = 100_000,
    expected: bool = True,
) -> DelegatedRosters:
    async def roster_for(username: str) -> tuple[Roster, str]:
        await asyncio.sleep(0)
        roster = provider(username)
        return roster, version(roster)

    async def sync_for(username: str) -> None:
        await asyncio.sleep(0)
        provider(username)

    return DelegatedRosters(
        link,
        grants,
        online,
        domain=DOMAIN,
        roster_provider=roster_for,
        sync_provider=sync_for,
        max_stanza_bytes=max_bytes,
        expected=expected,
    )


def inner_answer(answer: ET.Element) -> ET.Element:
    inner = answer.find(f"{{{stanzas.FORWARD_NS}}}forwarded/{{{stanzas.CLIENT_NS}}}iq")
    assert inner is not None
    return inner


async def test_a_users_roster_request_is_answered_with_their_roster(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """The answer carries the provider's roster, and the asking client gets later pushes."""
    delegation = make_delegation(link, grants, online, lambda _: {"bob@x": Contact("bob@x")})
    inner = inner_answer(await delegation._answer(delegated_get()))
    assert (inner.get("type"), inner.get("to")) == ("result", f"{ALICE}/phone")
    assert list(stanzas.parse_roster_query(inner[0])) == ["bob@x"]
    assert online.answered_resources(ALICE) == [f"{ALICE}/phone"]
    assert [node for _, node in link.features] == list(
        stanzas.delegation_disco_nodes(stanzas.ROSTER_NS)
    )


async def test_a_roster_too_large_is_refused_not_sent(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """Over max_stanza_bytes the user gets resource-constraint instead of losing the link."""
    big = {f"c{i}@x": Contact(f"c{i}@x", "n" * 50) for i in range(100)}
    delegation = make_delegation(link, grants, online, lambda _: big, max_bytes=2_000)
    inner = inner_answer(await delegation._answer(delegated_get()))
    assert stanzas.error_condition(inner) == "resource-constraint"


async def test_a_failing_provider_still_answers(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """Whatever goes wrong, the user gets an error answer rather than silence."""

    def broken(_: str) -> Roster:
        raise RuntimeError("bug")

    inner = inner_answer(
        await make_delegation(link, grants, online, broken)._answer(delegated_get())
    )
    assert stanzas.error_condition(inner) == "internal-server-error"


async def test_delegation_is_a_condition_only_when_expected(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """Expected and missing: a reason naming the fix; not expected: no condition at all."""
    expected = make_delegation(link, grants, online, no_contacts)
    unexpected = make_delegation(link, grants, online, no_contacts, expected=False)
    assert "delegate_roster" in (expected.problem() or "")
    assert unexpected.problem() is None
    link.handlers["advertisements"](message(DOMAIN, DELEGATION))
    assert expected.problem() is None
    assert unexpected.active


# --- pushes --------------------------------------------------------------------------------


@pytest.fixture(name="pusher")
async def fixture_pusher(link: FakeLink, grants: Grants, online: OnlineUsers) -> RosterPusher:
    delegation = make_delegation(link, grants, online, no_contacts)
    link.handlers["advertisements"](message(DOMAIN, PRIVILEGES + DELEGATION))
    return RosterPusher(link, grants, online, delegation)


def pushed(link: FakeLink) -> list[tuple[str, str]]:
    """(client, contact JID or "-jid" for a removal) for each push sent, in order, whether
    through the module (a request per batch) or as privileged IQs (one per push)."""
    module_ns = stanzas.PRESENCE_UPDATE_NS
    result = []
    for _, _, payload in link.sent:
        if payload.tag == f"{{{module_ns}}}push":
            clients = [s.get("jid", "") for s in payload.iter(f"{{{module_ns}}}session")]
            queries = payload.findall(f"{{{stanzas.ROSTER_NS}}}query")
            result += [(client, _mark(query[0])) for client in clients for query in queries]
        else:
            inner = payload[0]
            result.append((inner.get("to", ""), _mark(inner[0][0])))
    return result


def _mark(item: ET.Element) -> str:
    return ("-" if item.get("subscription") == "remove" else "") + item.get("jid", "")


def pushed_queries(link: FakeLink) -> list[ET.Element]:
    """Every pushed roster query, in order (each once, however many clients it went to)."""
    return [q for _, _, p in link.sent for q in p.iter(f"{{{stanzas.ROSTER_NS}}}query")]


@pytest.mark.parametrize("module", [True, False], ids=["module", "privileged"])
async def test_pushes_reach_every_client_in_order(
    link: FakeLink, online: OnlineUsers, pusher: RosterPusher, module: bool
) -> None:
    """Each resource gets every change; a later change never overtakes an earlier one."""
    if not module:
        link.gone = None
    online.answered_by_us(JID(f"{ALICE}/a"))
    online.answered_by_us(JID(f"{ALICE}/b"))
    link.gate = asyncio.Event()
    pusher.push(ALICE, RosterDiff((Contact("bob@x", "Bob"),), ("carol@x",)), "v9")
    pusher.push(ALICE, RosterDiff((Contact("bob@x", "Robert"),), ()), "v9")
    link.gate.set()
    await pusher.wait_idle()
    for resource in (f"{ALICE}/a", f"{ALICE}/b"):
        assert [j for to, j in pushed(link) if to == resource] == ["bob@x", "-carol@x", "bob@x"]
    names = [q[0].get("name") for q in pushed_queries(link) if q[0].get("subscription") != "remove"]
    assert names[0] == "Bob"
    assert names[-1] == "Robert"


async def test_the_module_sends_a_users_pushes_for_one_request(
    link: FakeLink, online: OnlineUsers, pusher: RosterPusher
) -> None:
    """Two clients, three changes: one request to the users' host, not six privileged IQs."""
    online.answered_by_us(JID(f"{ALICE}/a"))
    online.answered_by_us(JID(f"{ALICE}/b"))
    pusher.push(ALICE, RosterDiff((Contact("bob@x"),), ("carol@x", "dave@x")), "v9")
    await pusher.wait_idle()
    assert [(to, kind) for to, kind, _ in link.sent] == [(DOMAIN, "set")]
    assert link.sent[0][2].get("user") == "alice"
    assert len(pushed(link)) == 6


async def test_without_the_module_pushes_go_one_by_one_until_the_grants_come_again(
    link: FakeLink, online: OnlineUsers, pusher: RosterPusher
) -> None:
    """A server without the module is asked once; after new grants (a reconnect) again."""
    link.gone = None
    online.answered_by_us(JID(f"{ALICE}/a"))
    for _ in range(2):
        pusher.push(ALICE, RosterDiff((Contact("bob@x"),), ()), "v9")
        await pusher.wait_idle()
    assert link.unsupported == 1
    assert [to for to, _ in pushed(link)] == [f"{ALICE}/a", f"{ALICE}/a"]
    link.gone = set()
    link.handlers["advertisements"](message(DOMAIN, PRIVILEGES + DELEGATION))
    pusher.push(ALICE, RosterDiff((Contact("bob@x"),), ()), "v9")
    await pusher.wait_idle()
    assert link.sent[-1][2].tag.endswith("}push")


async def test_no_pushes_without_delegation(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """Not delegated, the server pushes our writes itself: we send nothing."""
    pusher = RosterPusher(link, grants, online, make_delegation(link, grants, online, no_contacts))
    online.answered_by_us(JID(f"{ALICE}/a"))
    pusher.push(ALICE, RosterDiff((Contact("bob@x"),), ()), "v9")
    await pusher.wait_idle()
    assert link.sent == []


@pytest.mark.parametrize("module", [True, False], ids=["module", "privileged"])
async def test_a_client_that_is_gone_gets_no_more_pushes(
    link: FakeLink, online: OnlineUsers, pusher: RosterPusher, module: bool
) -> None:
    """A session the server says is gone is forgotten, so later changes are not sent to it."""
    online.answered_by_us(JID(f"{ALICE}/gone"))
    if module:
        link.gone = {f"{ALICE}/gone"}
    else:
        link.gone = None
        link.refuse[f"{ALICE}/gone"] = "service-unavailable"
    pusher.push(ALICE, RosterDiff((Contact("bob@x"), Contact("carol@x")), ()), "v9")
    await pusher.wait_idle()
    assert len(link.sent) == 1
    assert online.answered_resources(ALICE) == []


async def test_roster_versions_spare_an_unchanged_roster(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """XEP-0237: answers carry the roster's version; a client holding it gets an empty result."""
    roster = {"bob@x": Contact("bob@x", "Bob")}
    delegation = make_delegation(link, grants, online, lambda _: roster)
    full = inner_answer(await delegation._answer(delegated_get()))
    assert full[0].get("ver") == version(roster)
    held = stanzas.DelegatedRequest(
        f"{ALICE}/phone", None, "get", "r2", stanzas.roster_query(ver=version(roster))
    )
    empty = inner_answer(await delegation._answer(held))
    assert (empty.get("type"), len(empty)) == ("result", 0)
    stale = stanzas.DelegatedRequest(
        f"{ALICE}/phone", None, "get", "r3", stanzas.roster_query(ver="old")
    )
    assert list(stanzas.parse_roster_query(inner_answer(await delegation._answer(stale))[0]))


async def test_the_last_push_carries_the_new_version(
    link: FakeLink, online: OnlineUsers, pusher: RosterPusher
) -> None:
    """Every push has a version of its own; the last one the roster's version after all."""
    online.answered_by_us(JID(f"{ALICE}/a"))
    pusher.push(ALICE, RosterDiff((Contact("bob@x"),), ("carol@x", "dave@x")), "v9")
    await pusher.wait_idle()
    versions = [query.get("ver") for query in pushed_queries(link)]
    assert versions[-1] == "v9"
    assert len(set(versions)) == 3


# --- roster requests held by the server's module -------------------------------------------


def sync_batch(*users: tuple[str, str, str], sender: str = DOMAIN) -> Message:
    """The module's message naming held requests: (ref, user, session) each."""
    entries = "".join(
        f"<user ref='{ref}' name='{user}' session='{session}'/>" for ref, user, session in users
    )
    return message(sender, f"<sync xmlns='{stanzas.PRESENCE_UPDATE_NS}'>{entries}</sync>")


def told_synced(link: FakeLink) -> list[list[tuple[str | None, str | None]]]:
    """What we told the server, message by message: (ref, error condition) for each user."""
    told = []
    for to, payload in link.messages:
        assert (to, payload.tag) == (DOMAIN, f"{{{stanzas.PRESENCE_UPDATE_NS}}}synced")
        told.append([(user.get("ref"), user.get("error")) for user in payload])
    return told


async def settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_server_is_asked_once_per_connection_to_hold_roster_requests(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """Asked when it delegates rosters to us; asked again after the link came back."""
    delegation = make_delegation(link, grants, online, no_contacts)
    link.handlers["advertisements"](message(DOMAIN, PRIVILEGES))
    await asyncio.sleep(0)
    assert (link.holds, delegation.held) == (0, False)
    for _ in range(2):
        link.handlers["advertisements"](message(DOMAIN, PRIVILEGES + DELEGATION))
        await asyncio.sleep(0)
    assert (link.holds, delegation.held) == (1, True)
    link.set_connected(False)
    assert not delegation.held
    link.handlers["advertisements"](message(DOMAIN, DELEGATION))
    await asyncio.sleep(0)
    assert (link.holds, delegation.held) == (2, True)


async def test_a_server_without_the_module_keeps_delegating(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """An older module refuses to hold: we answer roster requests ourselves."""
    link.hold_refused = True
    delegation = make_delegation(link, grants, online, no_contacts)
    link.handlers["advertisements"](message(DOMAIN, DELEGATION))
    await asyncio.sleep(0)
    assert (link.holds, delegation.held) == (1, False)


async def test_held_requests_sync_their_users_and_the_server_is_told_in_one_message(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """Each user named is synced; those synced together are told together. A session of
    that name we answered before is no longer ours to push to (the server answers it)."""
    synced: list[str] = []
    delegation = make_delegation(link, grants, online, lambda user: _recorded(synced, user))
    online.answered_by_us(JID(f"{ALICE}/phone"))
    online.answered_by_us(JID(f"{ALICE}/laptop"))
    batch = sync_batch(("r1", "alice", f"{ALICE}/phone"), ("r2", "bob", "bob@example.test/x"))
    link.handlers["held roster requests"](batch)
    await settled()
    assert sorted(synced) == ["alice", "bob"]
    assert told_synced(link) == [[("r1", None), ("r2", None)]]
    assert online.answered_resources(ALICE) == [f"{ALICE}/laptop"]
    await delegation.stop()


@pytest.mark.parametrize(
    "case",
    [
        (("r1", "bob", f"{ALICE}/x"), [[("r1", "bad-request")]]),
        (("r1", "alice", "@@"), [[("r1", "bad-request")]]),
        (("r1", "", f"{ALICE}/x"), [[("r1", "bad-request")]]),
        (("", "alice", f"{ALICE}/x"), []),
    ],
    ids=["another-users-session", "bad-jid", "no-user", "no-ref"],
)
async def test_a_malformed_held_request_syncs_nobody_and_is_refused_if_it_can_be(
    link: FakeLink,
    grants: Grants,
    online: OnlineUsers,
    case: tuple[tuple[str, str, str], list[list[tuple[str, str]]]],
) -> None:
    """The server hears why at once (unless no ref says which request it was)."""
    entry, told = case
    synced: list[str] = []
    make_delegation(link, grants, online, lambda user: _recorded(synced, user))
    link.handlers["held roster requests"](sync_batch(entry))
    await settled()
    assert (synced, told_synced(link)) == ([], told)


async def test_held_requests_named_by_anyone_but_the_server_are_ignored(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """A user could message us too: nothing is synced, nothing said."""
    synced: list[str] = []
    make_delegation(link, grants, online, lambda user: _recorded(synced, user))
    batch = sync_batch(("r1", "alice", f"{ALICE}/phone"), sender=f"{ALICE}/phone")
    link.handlers["held roster requests"](batch)
    await settled()
    assert (synced, link.messages) == ([], [])


async def test_a_held_request_cut_short_is_refused_at_once(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """Stopping while a sync runs: the server hears it failed before we go."""
    started = asyncio.Event()

    def cancelled(_user: str) -> Roster:
        started.set()
        raise asyncio.CancelledError

    make_delegation(link, grants, online, cancelled)
    link.handlers["held roster requests"](sync_batch(("r1", "alice", f"{ALICE}/phone")))
    await started.wait()
    await settled()
    assert told_synced(link) == [[("r1", "internal-server-error")]]


async def test_many_held_requests_are_told_in_bounded_messages(
    link: FakeLink, grants: Grants, online: OnlineUsers
) -> None:
    """However many finish together, each message names at most 256."""
    make_delegation(link, grants, online, no_contacts)
    users = [(f"r{n}", f"u{n}", f"u{n}@example.test/x") for n in range(600)]
    link.handlers["held roster requests"](sync_batch(*users))
    await settled()
    told = told_synced(link)
    assert [len(batch) for batch in told] == [256, 256, 88]
    assert sorted(str(ref) for batch in told for ref, _ in batch) == sorted(r for r, _, _ in users)


async def test_pushes_go_only_to_sessions_we_answered(
    link: FakeLink, online: OnlineUsers, pusher: RosterPusher
) -> None:
    """A session that is merely online, or that the server answered, gets the server's
    pushes, not ours: one source of pushes per session."""
    link.handlers["user presence"](presence(f"{ALICE}/online"))
    online.answered_by_us(JID(f"{ALICE}/ours"))
    online.answered_by_us(JID(f"{ALICE}/held"))
    online.answered_by_server(JID(f"{ALICE}/held"))
    pusher.push(ALICE, RosterDiff((Contact("bob@x"),), ()), "v9")
    await pusher.wait_idle()
    assert pushed(link) == [(f"{ALICE}/ours", "bob@x")]


def _recorded(synced: list[str], username: str) -> Roster:
    """A provider's answer (no contacts) that records who was asked for."""
    synced.append(username)
    return {}
