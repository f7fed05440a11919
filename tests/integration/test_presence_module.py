"""deploy/prosody/mod_roster_admin_presence.lua on real Prosody 0.12 and 13: on the component's
request, presence flows between users whose rosters it changed, users' pending inbound
subscription requests are listed and cleared, and roster pushes reach the listed clients."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pytest

from tests.harness.prosody import StoredItem
from tests.harness.xmpp_client import (
    StanzaError,
    connected_client,
    connected_component,
    synced_payload,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

    from tests.harness.prosody import ProsodyServer, ServerFactory
    from tests.harness.xmpp_client import Received, Roster, TestClient, TestComponent

    IqType = Literal["get", "set"]

pytestmark = pytest.mark.integration

NS = "urn:http-roster-admin:presence:0"
ROSTER = "jabber:iq:roster"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
PASSWORD = "pw"
USERS = ("alice", "bob", "carol")
EVE = "eve@remote.example"
_markers = itertools.count()


def update(user: str | None, added: Iterable[str] = (), removed: Iterable[str] = ()) -> ET.Element:
    """The component's request: <update user='…'><added jid='…'/><removed jid='…'/></update>."""
    element = ET.Element(f"{{{NS}}}update", {} if user is None else {"user": user})
    for kind, jids in (("added", added), ("removed", removed)):
        for jid in jids:
            ET.SubElement(element, f"{{{NS}}}{kind}", {"jid": jid})
    return element


def pending(user: str | None, jids: Iterable[str] = ()) -> ET.Element:
    """The component's <pending user='…'><item jid='…'/></pending> (get: without items)."""
    element = ET.Element(f"{{{NS}}}pending", {} if user is None else {"user": user})
    for jid in jids:
        ET.SubElement(element, f"{{{NS}}}item", {"jid": jid})
    return element


def sent_by(sender: str, presence_type: str | None = None) -> Callable[[Received], bool]:
    """Matches a stanza from exactly `sender` (of `presence_type`, when given)."""
    return lambda p: p.sender == sender and presence_type in {None, p.type}


def has_body(body: str) -> Callable[[Received], bool]:
    return lambda m: m.body == body


def presences_from(client: TestClient, bare_jid: str) -> list[Received]:
    return [p for p in client.presences.items if p.sender.partition("/")[0] == bare_jid]


async def settle(*clients: TestClient) -> None:
    """Return once each client has received everything the server sent it before this call.

    A message to one's own full JID comes back through the server after them.
    """
    for client in clients:
        marker = f"marker-{next(_markers)}"
        await client.send_message(client.jid, marker)
        await client.wait_for_message(has_body(marker))


async def start_afresh(*clients: TestClient) -> None:
    """Settle, then forget the presences received so far (e.g. answers to login probes)."""
    await settle(*clients)
    for client in clients:
        client.presences.clear()


@dataclass
class Site:
    """A running server with USERS registered, the bare component connected, and helpers."""

    server: ProsodyServer
    component: TestComponent
    _stack: contextlib.AsyncExitStack

    def jid(self, user: str) -> str:
        return f"{user}@{self.server.domain}"

    async def online(
        self, user: str, resource: str, show: str | None = None, status: str | None = None
    ) -> TestClient:
        """Log in as user/resource and send available presence (closed at teardown)."""
        client = await self._stack.enter_async_context(
            connected_client(f"{self.jid(user)}/{resource}", PASSWORD, self.server.c2s_port)
        )
        await client.send_presence(show=show, status=status)
        # The server reflects it once it is the session's presence.
        await client.wait_for_presence(sent_by(client.jid, "available"))
        return client

    async def set_contacts(self, user_a: str, user_b: str, subscription: str) -> None:
        """Privileged roster SETs of each user in the other's roster ("remove" removes)."""
        a, b = self.jid(user_a), self.jid(user_b)
        await self.component.set_roster_item_of(a, b, subscription=subscription)
        await self.component.set_roster_item_of(b, a, subscription=subscription)

    async def request(self, payload: ET.Element, iq_type: IqType = "set") -> ET.Element:
        """Send the component's iq to the users' host; its answer, or StanzaError."""
        return await self.component.send_iq(iq_type, self.server.domain, payload)

    async def add_pending_in(self, user: str, *requesters: str) -> None:
        """Store requests to subscribe to user, as Prosody does when they arrive (in the live
        roster when user is online), with the server's roster manager."""
        calls = " ".join(
            f'assert(rm.set_contact_pending_in("{user}", "{self.server.domain}", "{requester}"));'
            for requester in requesters
        )
        await self.server.shell(f'local rm = require "core.rostermanager"; {calls}')

    async def pending_of(self, user: str) -> list[str]:
        """The component's get: the JIDs whose requests await user's answer, as listed."""
        answer = await self.request(pending(user), "get")
        [listing] = answer
        assert (listing.tag, listing.get("user")) == (f"{{{NS}}}pending", user)
        assert all(item.tag == f"{{{NS}}}item" for item in listing)
        return [item.get("jid", "") for item in listing]


@pytest.fixture
async def site(prosody_factory: ServerFactory) -> AsyncIterator[Site]:
    server = await prosody_factory(delegate_roster=False)
    for user in USERS:
        await server.register(user, PASSWORD)
    async with contextlib.AsyncExitStack() as stack:
        component = await stack.enter_async_context(
            connected_component(
                server.component_jid, server.component_secret, server.component_port
            )
        )
        yield Site(server, component, stack)


def assert_empty_result(answer: ET.Element) -> None:
    assert answer.get("type") == "result"
    assert len(answer) == 0


async def test_namespace_is_advertised_on_the_host(site: Site) -> None:
    """The host's disco#info lists the module's namespace as a feature."""
    query = ET.Element(f"{{{DISCO_INFO}}}query")
    answer = await site.component.send_iq("get", site.server.domain, query)
    features = {f.get("var") for f in answer.iter(f"{{{DISCO_INFO}}}feature")}
    assert NS in features


async def test_added_contacts_exchange_presence(site: Site) -> None:
    """After a privileged SET, the update makes each side see every resource of the other."""
    phone = await site.online("alice", "phone", "away", "On the phone")
    laptop = await site.online("alice", "laptop", "dnd", "Writing")
    bob = await site.online("bob", "desk", status="Hi")
    alice_jid, bob_jid = site.jid("alice"), site.jid("bob")

    await site.set_contacts("alice", "bob", "both")
    await settle(phone, laptop, bob)
    # What the module is for: Prosody itself exchanges no presence on a privileged SET.
    assert not presences_from(bob, alice_jid)
    assert not presences_from(phone, bob_jid)

    assert_empty_result(await site.request(update("alice", added=[bob_jid])))
    # Alice's sessions' presences go to bob as they are...
    seen_by_bob = {}
    for session in (phone, laptop):
        received = await bob.wait_for_presence(sent_by(session.jid))
        assert received.type == "available"
        seen_by_bob[session.jid] = (received.show, received.status)
    assert seen_by_bob == {phone.jid: ("away", "On the phone"), laptop.jid: ("dnd", "Writing")}
    # ...and the probe brings bob's presence to both of alice's resources.
    for session in (phone, laptop):
        received = await session.wait_for_presence(sent_by(bob.jid))
        assert (received.type, received.show, received.status) == ("available", None, "Hi")

    log = "Presence update for alice@example.test: 1 added, 0 removed; sent for 2 session(s)"
    assert log in site.server.log_text()

    # The component sends the other side's update too: the same presences again.
    await start_afresh(phone, laptop, bob)
    assert_empty_result(await site.request(update("bob", added=[alice_jid])))
    await phone.wait_for_presence(sent_by(bob.jid, "available"))
    await bob.wait_for_presence(sent_by(laptop.jid, "available"))


async def test_removed_contacts_see_each_other_go_offline(site: Site) -> None:
    """After a privileged remove, the update shows each side the other as unavailable."""
    await site.set_contacts("alice", "bob", "both")
    phone = await site.online("alice", "phone")
    laptop = await site.online("alice", "laptop")
    bob = await site.online("bob", "desk")
    alice_jid, bob_jid = site.jid("alice"), site.jid("bob")
    # Contacts before login: Prosody's own probes and broadcasts.
    await bob.wait_for_presence(sent_by(laptop.jid, "available"))
    await phone.wait_for_presence(sent_by(bob.jid, "available"))
    await start_afresh(phone, laptop, bob)

    await site.set_contacts("alice", "bob", "remove")
    await settle(phone, laptop, bob)
    # Prosody sends nothing on a privileged remove either: each still sees the other online.
    assert not presences_from(bob, alice_jid)
    assert not presences_from(phone, bob_jid)

    assert_empty_result(await site.request(update("alice", removed=[bob_jid])))
    for session in (phone, laptop):
        await bob.wait_for_presence(sent_by(session.jid))
        await session.wait_for_presence(sent_by(bob.jid))
    assert {p.type for p in presences_from(bob, alice_jid)} == {"unavailable"}
    assert {p.type for p in presences_from(phone, bob_jid)} == {"unavailable"}

    assert_empty_result(await site.request(update("bob", removed=[alice_jid])))
    await settle(phone, laptop, bob)
    assert {p.type for p in presences_from(bob, alice_jid)} == {"unavailable"}
    assert {p.type for p in presences_from(laptop, bob_jid)} == {"unavailable"}


async def test_remote_contacts_do_not_break_the_update(site: Site) -> None:
    """Remote JIDs (s2s is off here) are handled; a removed one is shown unavailable."""
    await site.set_contacts("alice", "bob", "both")
    alice = await site.online("alice", "phone")
    bob = await site.online("bob", "desk")
    gone = "someone@remote.invalid"
    request = update(
        "alice", added=["new@remote.invalid", site.jid("bob")], removed=[gone, "remote.invalid"]
    )
    assert_empty_result(await site.request(request))
    # The local contact in the same request is served, and alice sees the removed ones leave.
    await bob.wait_for_presence(sent_by(alice.jid, "available"))
    for remote in (gone, "remote.invalid"):
        await alice.wait_for_presence(sent_by(remote, "unavailable"))


async def test_only_the_component_may_ask(site: Site) -> None:
    """A user sending the request gets forbidden, and nothing is sent to anyone."""
    alice = await site.online("alice", "phone")
    bob = await site.online("bob", "desk")
    carol = await site.online("carol", "home")
    with pytest.raises(StanzaError) as refused:
        await bob.send_iq("set", site.server.domain, update("alice", added=[site.jid("carol")]))
    assert (refused.value.condition, refused.value.error_type) == ("forbidden", "auth")
    await settle(alice, bob, carol)
    assert not presences_from(carol, site.jid("alice"))
    assert not presences_from(alice, site.jid("carol"))


async def test_offline_user_gets_a_result_and_nothing_is_sent(site: Site) -> None:
    """For a user without available sessions the answer is a result and no presence goes out."""
    await site.set_contacts("alice", "bob", "both")
    bob = await site.online("bob", "desk")
    await start_afresh(bob)  # bob's login probe found alice offline
    request = update("alice", added=[site.jid("bob")], removed=[site.jid("bob")])
    assert_empty_result(await site.request(request))
    await settle(bob)
    assert not presences_from(bob, site.jid("alice"))


async def test_contacts_offline_here_are_sent_nothing_and_see_it_all_at_login(
    site: Site,
) -> None:
    """No presence is routed to a local contact without available sessions (it would be
    dropped); its login then brings the presences both ways, as Prosody does for rosters."""
    alice = await site.online("alice", "phone", status="Here")
    await site.set_contacts("alice", "bob", "both")
    await site.set_contacts("alice", "carol", "both")
    alice_jid, bob_jid, carol_jid = site.jid("alice"), site.jid("bob"), site.jid("carol")
    request = update("alice", added=[bob_jid, "nobody@example.test"], removed=[carol_jid])
    assert_empty_result(await site.request(request))
    log = site.server.log_text()
    for contact, kind in ((bob_jid, ""), ("nobody@example.test", ""), (carol_jid, "un")):
        assert f"Not sending {kind}available of {alice_jid} to {contact}: offline" in log

    await start_afresh(alice)
    bob = await site.online("bob", "desk")
    received = await bob.wait_for_presence(sent_by(alice.jid, "available"))
    assert received.status == "Here"
    await alice.wait_for_presence(sent_by(bob.jid, "available"))


def malformed_requests(domain: str) -> dict[str, ET.Element]:
    """Requests that must be refused whole; each starts with a valid change for bob."""
    bob = f"bob@{domain}"
    requests = {
        "no user": update(None, added=[bob]),
        "empty user": update("", added=[bob]),
        "user given as a JID": update(f"alice@{domain}", added=[bob]),
    }
    for name, attrs, namespace in [
        ("contact without jid", {}, NS),
        ("full JID", {"jid": f"{bob}/desk"}, NS),
        ("invalid JID", {"jid": f"bob@@{domain}"}, NS),
        ("the user themself", {"jid": f"alice@{domain}"}, NS),
        ("unknown change", {"jid": bob}, "urn:example:other"),
    ]:
        request = update("alice", added=[bob])
        ET.SubElement(request, f"{{{namespace}}}added", attrs)
        requests[name] = request
    requests["unknown element"] = update("alice", added=[bob])
    ET.SubElement(requests["unknown element"], f"{{{NS}}}blocked", {"jid": bob})
    return requests


async def test_malformed_requests_are_refused_whole(site: Site) -> None:
    """Malformed requests get bad-request, and none of their valid changes are carried out."""
    alice = await site.online("alice", "phone")
    bob = await site.online("bob", "desk")
    await site.set_contacts("alice", "bob", "both")
    for name, request in malformed_requests(site.server.domain).items():
        with pytest.raises(StanzaError) as refused:
            await site.request(request)
        assert (refused.value.condition, refused.value.error_type) == ("bad-request", "modify"), (
            name
        )
    await settle(alice, bob)
    assert not presences_from(bob, site.jid("alice"))


async def test_pending_requests_are_cleared_from_an_online_users_live_roster(site: Site) -> None:
    """The get lists an online user's requests sorted; the set clears the listed ones, and a
    session logging in afterwards is offered only the others."""
    await site.online("alice", "phone")
    await site.add_pending_in("alice", "zed@remote.example", EVE, "remote.example")
    assert await site.pending_of("alice") == [EVE, "remote.example", "zed@remote.example"]
    assert site.server.log_text().count("Pending subscription requests to alice@") == 1

    # A JID that is not pending is ignored.
    assert_empty_result(await site.request(pending("alice", [EVE, "nobody@remote.example"])))
    remaining = ["remote.example", "zed@remote.example"]
    assert await site.pending_of("alice") == remaining
    assert (await site.server.stored_roster("alice")).pending_in == set(remaining)
    log = "Cleared 1 pending subscription request(s) to alice@example.test (2 listed)"
    assert log in site.server.log_text()

    # Prosody offers a session the live roster's requests when it sends initial presence.
    laptop = await site.online("alice", "laptop")
    for requester in remaining:
        await laptop.wait_for_presence(sent_by(requester, "subscribe"))
    await settle(laptop)
    assert not [p for p in laptop.presences.items if p.sender == EVE]


async def test_pending_requests_are_cleared_from_an_offline_users_stored_roster(
    site: Site,
) -> None:
    """For an offline user the stored requests are listed and cleared; at login the user is
    offered only the others."""
    await site.add_pending_in("bob", EVE, site.jid("carol"))
    assert await site.pending_of("bob") == [site.jid("carol"), EVE]

    assert_empty_result(await site.request(pending("bob", [site.jid("carol")])))
    assert await site.pending_of("bob") == [EVE]
    assert (await site.server.stored_roster("bob")).pending_in == {EVE}

    bob = await site.online("bob", "desk")
    await bob.wait_for_presence(sent_by(EVE, "subscribe"))
    await settle(bob)
    assert not presences_from(bob, site.jid("carol"))


async def test_no_pending_requests_for_a_user_without_any_or_without_account(site: Site) -> None:
    """Such users get an empty list and a result, and no roster is stored for them."""
    assert await site.pending_of("carol") == []
    assert_empty_result(await site.request(pending("carol", [EVE])))
    assert await site.pending_of("nobody") == []
    assert_empty_result(await site.request(pending("nobody", [EVE])))
    assert not list(site.server.data_dir.rglob("nobody*"))
    log = "Cleared 0 pending subscription request(s) to nobody@example.test (1 listed); no such"
    assert log in site.server.log_text()


async def test_only_the_component_may_see_or_clear_pending_requests(site: Site) -> None:
    """A user asking for or clearing another user's pending requests gets forbidden."""
    await site.add_pending_in("alice", EVE)
    bob = await site.online("bob", "desk")
    requests: list[tuple[IqType, ET.Element]] = [
        ("get", pending("alice")),
        ("set", pending("alice", [EVE])),
    ]
    for iq_type, payload in requests:
        with pytest.raises(StanzaError) as refused:
            await bob.send_iq(iq_type, site.server.domain, payload)
        assert (refused.value.condition, refused.value.error_type) == ("forbidden", "auth")
    assert await site.pending_of("alice") == [EVE]


def malformed_pending_requests(domain: str) -> dict[str, tuple[IqType, ET.Element]]:
    """Gets and sets that must be refused; each set lists EVE, who is pending, first."""
    requests: dict[str, tuple[IqType, ET.Element]] = {
        "get without user": ("get", pending(None)),
        "get with empty user": ("get", pending("")),
        "get with an item": ("get", pending("alice", [EVE])),
        "set without user": ("set", pending(None, [EVE])),
        "set with user given as a JID": ("set", pending(f"alice@{domain}", [EVE])),
    }
    for name, tag, attrs in [
        ("item without jid", f"{{{NS}}}item", {}),
        ("full JID", f"{{{NS}}}item", {"jid": f"{EVE}/phone"}),
        ("invalid JID", f"{{{NS}}}item", {"jid": "eve@@remote.example"}),
        ("item in another namespace", "{urn:example:other}item", {"jid": EVE}),
        ("unknown element", f"{{{NS}}}request", {"jid": EVE}),
    ]:
        request = pending("alice", [EVE])
        ET.SubElement(request, tag, attrs)
        requests[name] = ("set", request)
    return requests


async def test_malformed_pending_requests_are_refused_whole(site: Site) -> None:
    """Malformed gets and sets get bad-request, and nothing is cleared."""
    await site.add_pending_in("alice", EVE)
    for name, (iq_type, request) in malformed_pending_requests(site.server.domain).items():
        with pytest.raises(StanzaError) as refused:
            await site.request(request, iq_type)
        assert (refused.value.condition, refused.value.error_type) == ("bad-request", "modify"), (
            name
        )
    assert await site.pending_of("alice") == [EVE]


# --- roster pushes for delegated clients ----------------------------------------------------


def push(user: str, sessions: Iterable[str], *queries: ET.Element) -> ET.Element:
    """The component's <push user='…'><session jid='…'/><query/>…</push>."""
    element = ET.Element(f"{{{NS}}}push", {"user": user})
    for session in sessions:
        ET.SubElement(element, f"{{{NS}}}session", {"jid": session})
    element.extend(queries)
    return element


def query(ver: str, *items: dict[str, str]) -> ET.Element:
    element = ET.Element(f"{{{ROSTER}}}query", {"ver": ver})
    for item in items:
        ET.SubElement(element, f"{{{ROSTER}}}item", item)
    return element


def versions(client: TestClient) -> list[str]:
    """The ver of each push the client received, in order."""
    found = []
    for received in client.pushes.items:
        pushed = ET.fromstring(received.xml).find(f"{{{ROSTER}}}query")  # noqa: S314 -- our server's
        found.append("" if pushed is None else pushed.get("ver", ""))
    return found


async def test_pushes_reach_each_listed_session_in_order(site: Site) -> None:
    """Every listed session gets every query as a push from the server, in order; an unlisted
    session of the same user gets none, and the answer names no session gone."""
    phone = await site.online("alice", "phone")
    laptop = await site.online("alice", "laptop")
    tablet = await site.online("alice", "tablet")
    bob, carol = site.jid("bob"), site.jid("carol")
    request = push(
        "alice",
        [phone.jid, laptop.jid],
        query("v1", {"jid": bob, "subscription": "both", "name": "Bob"}),
        query("v2", {"jid": carol, "subscription": "remove"}),
    )
    answer = await site.request(request)
    assert answer.get("type") == "result"
    assert [gone.get("jid") for gone in answer.iter(f"{{{NS}}}gone")] == []
    await settle(phone, laptop, tablet)
    for client in (phone, laptop):
        assert all(p.accepted for p in client.pushes.items)
        assert [p.items for p in client.pushes.items] == [
            {bob: {"name": "Bob", "groups": [], "subscription": "both"}},
            {carol: {"name": None, "groups": [], "subscription": "remove"}},
        ]
        assert versions(client) == ["v1", "v2"]
    assert not tablet.pushes.items


async def test_sessions_that_are_gone_are_named_in_the_answer(site: Site) -> None:
    """A listed session that does not exist is sent nothing and named, the others get theirs."""
    phone = await site.online("alice", "phone")
    gone = f"{site.jid('alice')}/gone"
    request = push("alice", [gone, phone.jid], query("v1", {"jid": site.jid("bob")}))
    answer = await site.request(request)
    assert [g.get("jid") for g in answer.iter(f"{{{NS}}}gone")] == [gone]
    await settle(phone)
    assert len(phone.pushes.items) == 1


async def test_only_the_component_may_push(site: Site) -> None:
    """A user asking for pushes to another user's client gets forbidden; nothing is pushed."""
    alice = await site.online("alice", "phone")
    bob = await site.online("bob", "desk")
    request = push("alice", [alice.jid], query("v1", {"jid": site.jid("carol")}))
    with pytest.raises(StanzaError) as refused:
        await bob.send_iq("set", site.server.domain, request)
    assert (refused.value.condition, refused.value.error_type) == ("forbidden", "auth")
    await settle(alice)
    assert not alice.pushes.items


async def test_malformed_push_requests_are_refused_whole(site: Site) -> None:
    """Another user's session, a query of two items or none, an unknown element: bad-request,
    and none of the request's pushes is sent."""
    alice = await site.online("alice", "phone")
    bob = await site.online("bob", "desk")
    carol = {"jid": site.jid("carol")}
    good = query("v1", carol)
    requests = {
        "another user's session": push("alice", [alice.jid, bob.jid], good),
        "a bare JID": push("alice", [site.jid("alice")], good),
        "two items": push("alice", [alice.jid], query("v1", carol, {"jid": site.jid("bob")})),
        "no item": push("alice", [alice.jid], query("v1")),
        "unknown element": push("alice", [alice.jid], good, ET.Element(f"{{{NS}}}blocked")),
        "no user": push("", [alice.jid], good),
    }
    for name, request in requests.items():
        with pytest.raises(StanzaError) as refused:
            await site.request(request)
        assert (refused.value.condition, refused.value.error_type) == ("bad-request", "modify"), (
            name
        )
    await settle(alice, bob)
    assert not alice.pushes.items
    assert not bob.pushes.items


async def test_the_components_stream_is_read_wider_from_its_first_iq(site: Site) -> None:
    """Prosody reads 4 KB of a connection per turn; the component's, once it has sent an iq to
    the host, up to 1 MiB: it carries every user's answers (and only the component's does)."""
    widened = f"Reading up to {1024 * 1024} bytes per turn of the stream of"
    alice = await site.online("alice", "phone")
    with pytest.raises(StanzaError):  # forbidden: not the component
        await alice.send_iq("get", site.server.domain, pending("alice"))
    assert widened not in site.server.log_text()
    await site.pending_of("alice")
    await site.pending_of("bob")
    assert site.server.log_text().count(f"{widened} {site.server.component_jid}") == 1


# --- roster writes ----------------------------------------------------------------------------


def write(
    user: str, *items: dict[str, str], groups: dict[str, list[str]] | None = None
) -> ET.Element:
    """The component's <write user='…'><query xmlns='jabber:iq:roster'><item/>…</query></write>;
    ``groups`` maps an item's JID to its <group> texts."""
    element = ET.Element(f"{{{NS}}}write", {"user": user})
    roster = ET.SubElement(element, f"{{{ROSTER}}}query")
    for item in items:
        child = ET.SubElement(roster, f"{{{ROSTER}}}item", item)
        for group in (groups or {}).get(item.get("jid", ""), []):
            ET.SubElement(child, f"{{{ROSTER}}}group").text = group
    return element


def refusals(answer: ET.Element) -> dict[str, str]:
    [written] = answer
    assert written.tag == f"{{{NS}}}write"
    return {r.get("jid", ""): r.text or "" for r in written.iter(f"{{{NS}}}refused")}


async def test_a_users_items_are_written_in_one_save(site: Site) -> None:
    """Items set and removed by one request are stored exactly as sent, in one save."""
    bob, carol, dave = site.jid("bob"), site.jid("carol"), site.jid("dave")
    first = write(
        "alice",
        {"jid": bob, "name": "Bob", "subscription": "both"},
        {"jid": carol, "subscription": "from"},
        groups={bob: ["Friends", "Work"]},
    )
    assert refusals(await site.request(first)) == {}
    second = write(
        "alice", {"jid": carol, "subscription": "remove"}, {"jid": dave, "subscription": "both"}
    )
    assert refusals(await site.request(second)) == {}

    stored = (await site.server.stored_items(["alice"]))["alice"]
    assert stored == {
        bob: StoredItem("Bob", frozenset({"Friends", "Work"}), "both"),
        dave: StoredItem(None, frozenset(), "both"),
    }
    assert "Wrote 2 item(s) of alice@example.test in one save, refused 0" in site.server.log_text()


async def test_a_written_item_keeps_no_pending_ask(site: Site) -> None:
    """An item with a pending outgoing request becomes exactly what the component wrote."""
    bob = site.jid("bob")
    await site.server.shell(
        'local rm = require "core.rostermanager"; '
        f'assert(rm.set_contact_pending_out("alice", "{site.server.domain}", "{bob}"))'
    )
    assert (await site.server.stored_roster("alice")).asking == {bob}

    await site.request(write("alice", {"jid": bob, "subscription": "both"}))

    stored = await site.server.stored_roster("alice")
    assert (stored.subscriptions, stored.asking) == ({bob: "both"}, frozenset())


async def test_bad_items_are_refused_and_the_others_written(site: Site) -> None:
    """Not a bare JID, the user's own JID, an unknown subscription: each named with why; the
    good item is stored."""
    bob = site.jid("bob")
    request = write(
        "alice",
        {"jid": "a@b@c", "subscription": "both"},
        {"jid": f"{bob}/phone", "subscription": "both"},
        {"jid": site.jid("alice"), "subscription": "both"},
        {"jid": site.jid("carol"), "subscription": "friends"},
        {"jid": bob, "subscription": "both"},
    )
    assert refusals(await site.request(request)) == {
        "a@b@c": "not a bare JID",
        f"{bob}/phone": "not a bare JID",
        site.jid("alice"): "the user's own JID",
        site.jid("carol"): "subscription friends",
    }
    assert (await site.server.stored_roster("alice")).subscriptions == {bob: "both"}


async def test_writing_for_a_user_without_account_stores_nothing(site: Site) -> None:
    """item-not-found, and no roster file appears for the name."""
    with pytest.raises(StanzaError) as refused:
        await site.request(write("nobody", {"jid": site.jid("bob"), "subscription": "both"}))
    assert refused.value.condition == "item-not-found"
    assert (await site.server.stored_roster("nobody")).subscriptions == {}


async def test_only_the_component_may_write(site: Site) -> None:
    """A user writing another user's roster gets forbidden; nothing is stored."""
    bob = await site.online("bob", "desk")
    with pytest.raises(StanzaError) as refused:
        await bob.send_iq(
            "set", site.server.domain, write("alice", {"jid": bob.bare, "subscription": "both"})
        )
    assert (refused.value.condition, refused.value.error_type) == ("forbidden", "auth")
    assert (await site.server.stored_roster("alice")).subscriptions == {}


async def test_malformed_writes_are_refused_whole(site: Site) -> None:
    """No user, no query, two queries, an unknown element: bad-request, nothing stored."""
    good = {"jid": site.jid("bob"), "subscription": "both"}
    no_query = ET.Element(f"{{{NS}}}write", {"user": "alice"})
    two_queries = write("alice", good)
    two_queries.append(write("alice", good)[0])
    unknown = write("alice", good)
    ET.SubElement(unknown[0], f"{{{NS}}}item", good)
    requests = {
        "no user": write("", good),
        "no query": no_query,
        "two queries": two_queries,
        "an item of another namespace": unknown,
    }
    for name, request in requests.items():
        with pytest.raises(StanzaError) as refused:
            await site.request(request)
        assert (refused.value.condition, refused.value.error_type) == ("bad-request", "modify"), (
            name
        )
    assert (await site.server.stored_roster("alice")).subscriptions == {}


async def test_sessions_that_asked_for_the_roster_get_a_push_per_item_each_versioned(
    site: Site,
) -> None:
    """As after one SET per item: a push for each, in order, versions one apart; the live roster
    answers the next roster GET."""
    phone = await site.online("alice", "phone")
    await phone.get_roster()  # now Prosody pushes to it
    quiet = await site.online("alice", "quiet")  # never asked: gets no push
    bob, carol = site.jid("bob"), site.jid("carol")
    await site.request(write("alice", {"jid": carol, "subscription": "both"}))
    await settle(phone)
    phone.pushes.clear()

    request = write(
        "alice",
        {"jid": bob, "name": "Bob", "subscription": "both"},
        {"jid": carol, "subscription": "remove"},
    )
    await site.request(request)
    await settle(phone, quiet)

    assert [p.items for p in phone.pushes.items] == [
        {bob: {"name": "Bob", "groups": [], "subscription": "both"}},
        {carol: {"name": None, "groups": [], "subscription": "remove"}},
    ]
    first, second = (int(v) for v in versions(phone))
    assert second == first + 1
    assert not quiet.pushes.items
    assert set(await phone.get_roster()) == {bob}


# --- roster reads -----------------------------------------------------------------------------


def roster_read(user: str) -> ET.Element:
    return ET.Element(f"{{{NS}}}roster", {"user": user} if user else {})


async def test_a_roster_is_read_with_its_pending_requests_in_one_answer(site: Site) -> None:
    """Every item as stored (name, groups, subscription, ask), and the pending inbound
    requests a roster GET does not show, sorted by JID."""
    bob, carol, dave = site.jid("bob"), site.jid("carol"), site.jid("dave")
    await site.request(
        write(
            "alice",
            {"jid": carol, "subscription": "from"},
            {"jid": bob, "name": "Bob", "subscription": "both"},
            groups={bob: ["Friends", "Work"]},
        )
    )
    await site.server.shell(
        'local rm = require "core.rostermanager"; '
        f'assert(rm.set_contact_pending_out("alice", "{site.server.domain}", "{dave}"))'
    )
    await site.add_pending_in("alice", EVE, "mallory@remote.example")

    [answer] = await site.request(roster_read("alice"), "get")
    assert (answer.tag, answer.get("user")) == (f"{{{NS}}}roster", "alice")
    [query, pending_list] = answer
    assert query.tag == f"{{{ROSTER}}}query"
    items = [
        (
            i.get("jid"),
            i.get("name"),
            i.get("subscription"),
            i.get("ask"),
            sorted(g.text or "" for g in i),
        )
        for i in query
    ]
    assert items == [
        (bob, "Bob", "both", None, ["Friends", "Work"]),
        (carol, None, "from", None, []),
        (dave, None, "none", "subscribe", []),
    ]
    assert pending_list.tag == f"{{{NS}}}pending"
    assert [i.get("jid") for i in pending_list] == [EVE, "mallory@remote.example"]


async def test_reading_a_user_without_account_is_item_not_found(site: Site) -> None:
    with pytest.raises(StanzaError) as refused:
        await site.request(roster_read("nobody"), "get")
    assert refused.value.condition == "item-not-found"


async def test_only_the_component_may_read_rosters(site: Site) -> None:
    """A user reading another user's roster through the module gets forbidden."""
    bob = await site.online("bob", "desk")
    with pytest.raises(StanzaError) as refused:
        await bob.send_iq("get", site.server.domain, roster_read("alice"))
    assert (refused.value.condition, refused.value.error_type) == ("forbidden", "auth")


async def test_malformed_roster_reads_are_refused(site: Site) -> None:
    """No user, or anything inside the request: bad-request."""
    with_child = roster_read("alice")
    ET.SubElement(with_child, f"{{{NS}}}item", {"jid": site.jid("bob")})
    for request in (roster_read(""), with_child):
        with pytest.raises(StanzaError) as refused:
            await site.request(request, "get")
        assert (refused.value.condition, refused.value.error_type) == ("bad-request", "modify")


async def test_a_write_sends_the_presence_its_changes_imply(site: Site) -> None:
    """A contact written as "both" exchanges presence with the user at once; one removed goes
    unavailable both ways; a changed name alone sends nothing."""
    alice = await site.online("alice", "phone", status="Here")
    bob = await site.online("bob", "desk", status="Hi")
    carol = await site.online("carol", "lab")
    await site.request(write("bob", {"jid": alice.bare, "subscription": "both"}))
    await site.request(write("carol", {"jid": alice.bare, "subscription": "both"}))
    await site.request(write("alice", {"jid": carol.bare, "subscription": "both"}))
    await start_afresh(alice, bob, carol)

    await site.request(
        write(
            "alice",
            {"jid": bob.bare, "subscription": "both"},
            {"jid": carol.bare, "subscription": "remove"},
        )
    )
    received = await bob.wait_for_presence(sent_by(alice.jid))
    assert (received.type, received.status) == ("available", "Here")
    assert (await alice.wait_for_presence(sent_by(bob.jid))).status == "Hi"
    await carol.wait_for_presence(sent_by(alice.jid, "unavailable"))
    await alice.wait_for_presence(sent_by(carol.jid, "unavailable"))

    await start_afresh(alice, bob)
    await site.request(write("alice", {"jid": bob.bare, "name": "Bob", "subscription": "both"}))
    await settle(alice, bob)
    assert not presences_from(bob, alice.bare)
    assert not presences_from(alice, bob.bare)


# --- roster requests held until the component has synced the user --------------------------


def hold() -> ET.Element:
    request = ET.Element(f"{{{NS}}}hold")
    ET.SubElement(request, f"{{{NS}}}batches")
    return request


async def held_roster_request(site: Site, user: str) -> tuple[TestClient, asyncio.Task[Roster]]:
    """The component holds roster requests; user logs in and asks for theirs."""
    assert_empty_result(await site.request(hold()))
    client = await site.online(user, "phone")
    return client, asyncio.ensure_future(client.get_roster())


def named(site: Site, request: ET.Element) -> list[ET.Element]:
    """The held requests (<user/>) a sync message from the server names."""
    assert request.get("from") == site.server.domain
    return list(request.iter(f"{{{NS}}}user"))


async def test_a_roster_request_waits_for_the_sync_and_is_answered_from_the_store(
    site: Site,
) -> None:
    """The component is told to sync the user (naming the session); what it writes before
    saying so is in the roster the server then answers with."""
    await site.set_contacts("alice", "bob", "both")
    client, answer = await held_roster_request(site, "alice")
    [user] = named(site, await site.component.sync_requests.wait())
    assert (user.get("name"), user.get("session")) == ("alice", client.jid)
    await asyncio.sleep(0.3)
    assert not answer.done()
    await site.component.set_roster_item_of(site.jid("alice"), site.jid("carol"), "Carol")
    site.component.synced(site.server.domain, [user.get("ref", "")])
    assert set(await answer) == {site.jid("bob"), site.jid("carol")}


async def test_requests_held_together_are_released_by_one_message(site: Site) -> None:
    """Two users asking at once are named (in one message or two); one message saying both
    are synced answers both."""
    assert_empty_result(await site.request(hold()))
    alice, bob = await site.online("alice", "phone"), await site.online("bob", "phone")
    answers = asyncio.gather(alice.get_roster(), bob.get_roster())
    inbox = site.component.sync_requests

    def all_named() -> list[ET.Element]:
        return [user for request in inbox.items for user in named(site, request)]

    await inbox.wait(lambda _: len(all_named()) >= 2)
    users = all_named()
    assert sorted(user.get("name", "") for user in users) == ["alice", "bob"]
    site.component.synced(site.server.domain, [user.get("ref", "") for user in users])
    async with asyncio.timeout(5):
        await answers


async def test_a_failed_sync_serves_the_stored_roster(site: Site) -> None:
    """An error from the component: the user gets the roster the server holds."""
    await site.set_contacts("alice", "bob", "both")
    _, answer = await held_roster_request(site, "alice")
    [user] = named(site, await site.component.sync_requests.wait())
    site.component.synced(site.server.domain, [user.get("ref", "")], "internal-server-error")
    assert set(await answer) == {site.jid("bob")}
    assert "could not sync alice@example.test/phone for a held roster request" in (
        site.server.log_text()
    )


async def test_only_the_component_may_say_who_is_synced(site: Site) -> None:
    """A user's message to the host naming a held request releases nothing."""
    _, answer = await held_roster_request(site, "alice")
    [user] = named(site, await site.component.sync_requests.wait())
    mallory = await site.online("bob", "laptop")
    synced = synced_payload([user.get("ref", "")])
    await mallory.send_message(site.server.domain, synced)
    await asyncio.sleep(0.5)
    assert not answer.done()
    assert "Dropped sync answers from bob@example.test/laptop" in site.server.log_text()
    site.component.synced(site.server.domain, [user.get("ref", "")])
    async with asyncio.timeout(5):
        await answer


async def test_a_component_older_than_batches_is_refused_holds(site: Site) -> None:
    """A plain <hold/> is bad-request (saying to update the component): nothing is held."""
    with pytest.raises(StanzaError) as refused:
        await site.request(ET.Element(f"{{{NS}}}hold"))
    assert refused.value.condition == "bad-request"
    assert "update it" in (refused.value.text or "")
    client = await site.online("alice", "phone")
    async with asyncio.timeout(5):
        await client.get_roster()
    assert site.component.sync_requests.items == []


async def test_held_requests_are_answered_when_the_component_goes(site: Site) -> None:
    """Requests the component will never answer are answered from the store within seconds,
    not after the sync timeout; later ones are no longer held."""
    await site.set_contacts("alice", "bob", "both")
    _, answer = await held_roster_request(site, "alice")
    await site.component.sync_requests.wait()
    await site.component.disconnect()
    async with asyncio.timeout(5):
        assert set(await answer) == {site.jid("bob")}
    assert "Answered 1 held roster request(s) from the store" in site.server.log_text()


async def test_only_the_component_may_ask_for_holds(site: Site) -> None:
    """A user asking the host to hold roster requests is refused; nothing is held."""
    client = await site.online("alice", "phone")
    with pytest.raises(StanzaError) as refused:
        await client.send_iq("set", site.server.domain, hold())
    assert refused.value.condition == "forbidden"
    async with asyncio.timeout(5):
        await client.get_roster()
    assert site.component.sync_requests.items == []


async def test_held_requests_are_answered_when_the_module_is_reloaded(site: Site) -> None:
    """A reload forgets what is held: those requests are answered from the store first."""
    await site.set_contacts("alice", "bob", "both")
    _, answer = await held_roster_request(site, "alice")
    await site.component.sync_requests.wait()
    reload = 'require "core.modulemanager".reload("example.test", "roster_admin_presence")'
    await site.server.shell(reload)
    async with asyncio.timeout(5):
        assert set(await answer) == {site.jid("bob")}
    assert "held roster request(s) from the store: the module was unloaded" in (
        site.server.log_text()
    )


async def set_answered_pause(site: Site, seconds: float) -> None:
    """roster_admin_answered_pause, as an operator would set it (read when the module loads):
    the module is reloaded and the component asks for holds again."""
    await site.server.shell(
        f'require "core.configmanager".set("{site.server.domain}", '
        f'"roster_admin_answered_pause", {seconds}); '
        f'require "core.modulemanager".reload("{site.server.domain}", "roster_admin_presence")'
    )
    assert_empty_result(await site.request(hold()))


async def hold_bob(site: Site) -> tuple[TestClient, asyncio.Future[Roster]]:
    """Carol is online and Bob's roster request is held: Carol, and Bob's answer to come."""
    carol, bob = await site.online("carol", "lab"), await site.online("bob", "phone")
    bob_answer = asyncio.ensure_future(bob.get_roster())
    [user] = named(site, await site.component.sync_requests.wait(lambda r: bool(named(site, r))))
    assert user.get("name") == "bob"
    return carol, bob_answer


async def answered_then_sends(site: Site, user: str, to: TestClient) -> str:
    """user logs in, is answered (Bob still held), then sends a message to `to`: its body."""
    client = await site.online(user, "phone")
    answer = asyncio.ensure_future(client.get_roster())
    inbox = site.component.sync_requests
    [held] = named(site, await inbox.wait(lambda r: named(site, r)[0].get("name") == user))
    site.component.synced(site.server.domain, [held.get("ref", "")])
    async with asyncio.timeout(5):
        await answer
    body = f"{user} once answered"
    await client.send_message(to.jid, body)
    return body


def got(client: TestClient, body: str) -> bool:
    return any(m.body == body for m in client.messages.items)


async def test_a_client_answered_while_others_are_held_is_read_once_they_are_answered(
    site: Site,
) -> None:
    """What Alice sends once answered (as clients send their presence) waits until Bob's
    request, held before hers was answered, is answered too."""
    await set_answered_pause(site, 60)
    carol, bob_answer = await hold_bob(site)
    body = await answered_then_sends(site, "alice", carol)
    await asyncio.sleep(0.5)
    assert not got(carol, body)
    [bob_user] = named(site, site.component.sync_requests.items[0])
    site.component.synced(site.server.domain, [bob_user.get("ref", "")])
    async with asyncio.timeout(5):
        await bob_answer
    await carol.wait_for_message(has_body(body))


async def test_an_answered_client_is_read_again_after_the_pause_limit(site: Site) -> None:
    """Bob's sync never ends: Alice waits roster_admin_answered_pause (1 s), not for Bob; so
    does Dave, answered after that."""
    await site.server.register("dave", PASSWORD)
    assert_empty_result(await site.request(hold()))
    carol, bob_answer = await hold_bob(site)
    for user in ("alice", "dave"):
        body = await answered_then_sends(site, user, carol)
        await asyncio.sleep(0.3)
        assert not got(carol, body)
        await carol.wait_for_message(has_body(body))
    assert not bob_answer.done()


async def stall(site: Site, client: TestClient, sender: TestClient) -> None:
    """client stops reading, and sender sends it messages until the server holds megabytes
    for it that it cannot write out (a client on a stalled link, as the server sees it)."""
    client.stop_reading()
    # server_epoll (0.12 and 13) keeps wanting to write while it has data the socket refused.
    wants_to_write = (
        f'print("stalled=" .. tostring(prosody.full_sessions["{client.jid}"].conn._wantwrite))'
    )

    async def two_megabytes(round_: int) -> None:
        for _ in range(20):
            await sender.send_message(client.jid, "x" * 100_000)
        marker = f"round {round_} routed"
        await sender.send_message(sender.jid, marker)  # read after the 2 MB: all routed
        await sender.wait_for_message(has_body(marker))

    for round_ in range(8):  # the kernel's buffers take up to a few MB
        await two_megabytes(round_)
        await asyncio.sleep(0.3)  # time to write out whatever the socket takes
        if "stalled=true" in await site.server.shell(wants_to_write):
            # Megabytes more, not the few bytes the kernel may yet take (freeing memory in
            # the client's receive queue, it can open the window a little).
            await two_megabytes(round_ + 100)
            return
    raise AssertionError(f"the server wrote out 16 MB to {client.jid}, which reads nothing")


async def answered_unread(
    site: Site, carol: TestClient, bob_answer: asyncio.Future[Roster]
) -> tuple[TestClient, asyncio.Future[Roster]]:
    """Dave's roster request is held too; he stops reading, then he and Bob are answered (Bob
    is, at once): Dave, and his answer, which waits behind data he does not read."""
    await site.server.register("dave", PASSWORD)
    dave = await site.online("dave", "phone")
    dave_answer = asyncio.ensure_future(dave.get_roster(timeout=60))
    inbox = site.component.sync_requests
    [dave_user] = named(site, await inbox.wait(lambda r: named(site, r)[0].get("name") == "dave"))
    await stall(site, dave, carol)
    [bob_user] = named(site, inbox.items[0])
    site.component.synced(site.server.domain, [bob_user.get("ref", ""), dave_user.get("ref", "")])
    async with asyncio.timeout(5):
        await bob_answer
    return dave, dave_answer


async def test_answered_clients_are_read_again_once_every_answer_is_written_out(
    site: Site,
) -> None:
    """Alice, answered while Bob is held, is not read once Bob and Dave are answered either,
    while Dave's answer waits behind data Dave does not read; once Dave reads, she is."""
    await set_answered_pause(site, 60)
    carol, bob_answer = await hold_bob(site)
    body = await answered_then_sends(site, "alice", carol)
    dave, dave_answer = await answered_unread(site, carol, bob_answer)
    await asyncio.sleep(0.5)
    assert not got(carol, body)
    dave.read_again()
    async with asyncio.timeout(30):
        await dave_answer
    await carol.wait_for_message(has_body(body))


async def test_an_answer_never_read_is_waited_for_no_longer_than_the_pause_limit(
    site: Site,
) -> None:
    """Dave stops reading before he is answered: past roster_admin_answered_pause (2 s), the
    next storm's paused clients are read again once all its requests are answered, without
    waiting for Dave's answer to be written out."""
    await set_answered_pause(site, 2)
    carol, bob_answer = await hold_bob(site)
    _, dave_answer = await answered_unread(site, carol, bob_answer)
    await asyncio.sleep(3)

    inbox = site.component.sync_requests
    inbox.clear()
    laptop = await site.online("bob", "laptop")
    laptop_answer = asyncio.ensure_future(laptop.get_roster())
    [held] = named(site, await inbox.wait(lambda r: bool(named(site, r))))
    body = await answered_then_sends(site, "alice", carol)
    site.component.synced(site.server.domain, [held.get("ref", "")])
    async with asyncio.timeout(5):
        await laptop_answer
    await carol.wait_for_message(has_body(body), timeout=1.0)  # not after Alice's 2 s
    assert not dave_answer.done()
    dave_answer.cancel()


async def test_answered_clients_are_read_again_when_the_module_is_reloaded(site: Site) -> None:
    """The module's timers go with it: a paused client is resumed at unload, not left."""
    await set_answered_pause(site, 60)
    carol, bob_answer = await hold_bob(site)
    body = await answered_then_sends(site, "alice", carol)
    await asyncio.sleep(0.3)
    assert not got(carol, body)
    await set_answered_pause(site, 60)
    await carol.wait_for_message(has_body(body))
    async with asyncio.timeout(5):
        await bob_answer  # answered from the store at the reload
