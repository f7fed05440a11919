"""End to end on real Prosody 0.12 and 13, in both modes: the web app owns every roster."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

import pytest
from structlog.testing import capture_logs

from component import stanzas
from tests.harness.xmpp_client import StanzaError, parse_roster_query
from tests.integration.conftest import (
    TOKEN,
    System,
    delegated_only,
    eventually,
    item,
    jid,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tests.harness.xmpp_client import RosterPush

pytestmark = pytest.mark.integration
DISCO_INFO = "http://jabber.org/protocol/disco#info"

ALICE_ROSTER = {
    jid("bob"): {"name": "Bob", "groups": ["Friends", "Team"]},
    jid("carol"): {"name": "Carol"},
}

ALICE_EXPECTED = {
    jid("bob"): item("Bob", ["Friends", "Team"]),
    jid("carol"): item("Carol"),
}


@pytest.fixture(name="alice_roster")
def fixture_alice_roster(system: System) -> System:
    system.set_roster("alice", ALICE_ROSTER)
    system.expected = ALICE_EXPECTED
    return system


async def test_login_roster_equals_the_web_app(alice_roster: System) -> None:
    """A user's roster after login is the web app's: names, groups, subscription both."""
    system = alice_roster
    async with system.client("alice") as alice:
        if system.delegated:
            assert await alice.get_roster() == ALICE_EXPECTED
        else:
            assert await system.logged_in_roster(alice) == ALICE_EXPECTED
    assert system.webapp.requests[0].raw_path == "/contacts/alice"


async def test_refresh_changes_are_pushed_to_online_clients(alice_roster: System) -> None:
    """Adds, removals, renames and regroups reach an online client as roster pushes."""
    system = alice_roster
    async with system.client("alice") as alice:
        await system.logged_in_roster(alice)
        alice.pushes.clear()
        system.set_roster(
            "alice",
            {
                jid("bob"): {"name": "Robert", "groups": ["Team"]},
                jid("dave"): {"name": "Dave", "groups": ["New"]},
            },
        )
        status, body = await system.refresh(["alice"])
        assert (status, body["status"], body["updated"], body["errors"]) == (200, "ok", 1, 0)

        await alice.wait_for_push(lambda p: p.items.get(jid("dave")) == item("Dave", ["New"]))
        await alice.wait_for_push(
            lambda p: p.items.get(jid("carol"), {}).get("subscription") == "remove"
        )
        await alice.wait_for_push(lambda p: p.items.get(jid("bob")) == item("Robert", ["Team"]))
        assert await alice.get_roster() == {
            jid("bob"): item("Robert", ["Team"]),
            jid("dave"): item("Dave", ["New"]),
        }


def removed(pushes: list[RosterPush]) -> set[str]:
    """The contacts that roster pushes removed."""
    return {c for push in pushes for c, e in push.items.items() if e["subscription"] == "remove"}


async def test_an_empty_array_empties_the_roster_and_pushes_the_removals(
    alice_roster: System,
) -> None:
    """A web app answering exactly [] (PHP's empty map) means no contacts: all are removed."""
    system = alice_roster
    async with system.client("alice") as alice:
        await system.logged_in_roster(alice)
        alice.pushes.clear()
        system.set_roster("alice", [])
        status, body = await system.refresh(["alice"])
        assert (status, body["updated"], body["errors"]) == (200, 1, 0)
        await eventually(lambda: removed(alice.pushes.items) == set(ALICE_EXPECTED))
        assert await alice.get_roster() == {}


async def test_rosters_sent_inline_reach_online_clients_without_a_fetch(
    alice_roster: System,
) -> None:
    """POST /roster_admin/rosters: the web app sends the rosters; same pushes, no callback."""
    system = alice_roster
    async with system.client("alice") as alice:
        await system.logged_in_roster(alice)
        alice.pushes.clear()
        truth: dict[str, dict[str, object] | list[object]] = {
            "alice": {jid("dave"): {"name": "Dave"}},
            "bob": [],
        }
        for user, roster in truth.items():
            system.set_roster(user, roster)
        async with system.http.post(
            f"{system.url}/roster_admin/rosters",
            json=truth,
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            assert (response.status, (await response.json())["updated"]) == (200, 2)
        # bob is offline and never logged in: only the bulk body can have brought his roster.
        assert not [r for r in system.webapp.requests if r.username == "bob"]
        await alice.wait_for_push(lambda p: p.items.get(jid("dave")) == item("Dave"))
        await eventually(lambda: removed(alice.pushes.items) == set(ALICE_EXPECTED))
        assert await alice.get_roster() == {jid("dave"): item("Dave")}


async def test_offline_users_are_refreshed_for_their_next_login(alice_roster: System) -> None:
    """A refresh of an offline user is stored by the server and seen at the next login."""
    system = alice_roster
    status, body = await system.refresh(["alice", "bob"])
    assert (status, body["updated"], body["errors"]) == (200, 2, 0)
    # The web app goes down: what alice sees next can only come from the server's store.
    await system.webapp.set_mode("error")
    async with system.client("alice") as alice:
        assert await alice.get_roster() == ALICE_EXPECTED


async def test_roster_changes_from_users_are_refused(alice_roster: System) -> None:
    """Adding, renaming or removing from a client is refused and changes nothing."""
    system = alice_roster
    async with system.client("alice") as alice:
        await system.logged_in_roster(alice)
        for attempt in (
            alice.set_roster_item(jid("mallory"), "Mallory"),
            alice.set_roster_item(jid("bob"), "Not Bob", ["Elsewhere"]),
            alice.remove_roster_item(jid("carol")),
        ):
            with pytest.raises(StanzaError) as refused:
                await attempt
            assert refused.value.condition == "not-allowed"
        assert await alice.get_roster() == ALICE_EXPECTED
    assert system.app is not None
    stored = await system.app.syncer.current_roster("alice")
    assert sorted(stored) == sorted(ALICE_EXPECTED)


async def test_another_users_roster_cannot_be_read(alice_roster: System) -> None:
    """A roster request addressed to someone else's JID is refused and reveals nothing."""
    system = alice_roster
    await system.refresh(["alice"])
    async with system.client("bob") as bob:
        with pytest.raises(StanzaError) as refused:
            await bob.get_roster_of(jid("alice"))
    assert refused.value.condition in {"forbidden", "service-unavailable", "not-allowed"}
    assert "carol" not in refused.value.xml


@pytest.mark.parametrize("failure", ["error", "garbage", "not_object", "hang", "down"])
async def test_web_app_failure_keeps_the_last_good_roster(
    alice_roster: System, failure: str
) -> None:
    """Web app down or talking nonsense: refresh reports errors promptly, rosters stay."""
    system = alice_roster
    assert (await system.refresh(["alice"]))[1]["updated"] == 1
    await system.webapp.set_mode(failure)  # type: ignore[arg-type]
    began = time.monotonic()
    status, body = await system.refresh(["alice"])
    assert (status, body["status"], body["updated"], body["errors"]) == (502, "error", 0, 1)
    assert body["failed"] == ["alice"]
    # Two attempts of at most 1 s each, plus the backoff between them.
    assert time.monotonic() - began < 6
    async with system.client("alice") as alice:
        assert await alice.get_roster() == ALICE_EXPECTED


async def test_refresh_endpoint_contract(system: System) -> None:
    """[] answers zero counts; malformed bodies get 400; a wrong token gets 401."""
    assert await system.refresh([]) == (
        200,
        {"status": "ok", "message": "roster update complete", "updated": 0, "errors": 0,
         "failed": []},
    )  # fmt: skip
    for body in ("{", '{"alice": true}', "[1, 2]"):
        status, answer = await system.refresh(body)
        assert (status, answer["status"]) == (400, "error")
    status, _ = await system.refresh(["alice"], token="wrong")
    assert status == 401
    assert system.webapp.requests == []


async def test_refresh_gets_503_while_the_xmpp_link_is_down(alice_roster: System) -> None:
    """Server gone: refresh answers 503 and does nothing; back again: the component recovers."""
    system = alice_roster
    assert system.app is not None
    await system.stop_server()
    app = system.app
    await eventually(lambda: not app.readiness.ready)
    status, body = await system.refresh(["alice"])
    assert (status, body["status"]) == (503, "error")
    assert system.webapp.requests == []
    await system.start_server()
    async with asyncio.timeout(15):
        await app.readiness.wait_ready()
    status, body = await system.refresh(["alice"])
    assert (status, body["updated"]) == (200, 1)


async def test_what_clients_see_while_the_component_is_down(alice_roster: System) -> None:
    """Delegated: roster requests fail while the component is down. Otherwise: the server's
    stored roster is served as if nothing happened."""
    system = alice_roster
    await system.refresh(["alice"])
    await system.stop_component()
    async with system.client("alice") as alice:
        if system.delegated:
            with pytest.raises(StanzaError) as failed:
                await alice.get_roster()
            assert failed.value.condition == "service-unavailable"
        else:
            assert await alice.get_roster() == ALICE_EXPECTED
    await system.start_component()
    async with system.client("alice") as alice:
        assert await alice.get_roster() == ALICE_EXPECTED


async def test_user_coming_online_is_synced(alice_roster: System) -> None:
    """A roster that changed in the web app without a refresh is corrected at login."""
    system = alice_roster
    await system.refresh(["alice"])
    system.set_roster("alice", {jid("dave"): {"name": "Dave"}})
    system.expected = {jid("dave"): item("Dave")}
    async with system.client("alice") as alice:
        assert await system.logged_in_roster(alice) == {jid("dave"): item("Dave")}


async def test_a_user_cannot_forge_a_delegated_request(alice_roster: System) -> None:
    """Only the server may forward requests: bob posing as the server learns nothing."""
    system = alice_roster
    await system.refresh(["alice"])
    forged = ET.fromstring(  # noqa: S314 -- written here
        "<delegation xmlns='urn:xmpp:delegation:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        f"<iq xmlns='jabber:client' type='get' id='x' from='{jid('alice')}/r'>"
        "<query xmlns='jabber:iq:roster'/></iq></forwarded></delegation>"
    )
    async with system.client("bob") as bob:
        with pytest.raises(StanzaError) as refused:
            await bob.send_iq("set", system.server.component_jid, forged)
    assert refused.value.condition == "forbidden"
    assert "carol" not in refused.value.xml


async def test_wrong_component_secret_is_reported_and_never_ready(system: System) -> None:
    """A bad secret: the log says what to check, health says 503, refreshes get 503."""
    await system.stop_component()
    text = system.config_path.read_text()
    system.config_path.write_text(text.replace(system.server.component_secret, "wrong"))
    with capture_logs() as logs:
        app = await system.start_component(wait=False)
        await eventually(lambda: any(e["event"] == "xmpp.stream_error" for e in logs))
        async with system.http.get(f"{system.url}/healthz") as response:
            assert response.status == 503
        assert (await system.refresh(["alice"]))[0] == 503
    error = next(e for e in logs if e["event"] == "xmpp.stream_error")
    assert error["condition"] == "not-authorized"
    assert "component.secret" in error["hint"]
    assert not app.readiness.ready


@delegated_only
async def test_a_user_waiting_for_a_roster_is_answered_when_the_component_stops(
    alice_roster: System,
) -> None:
    """Shutdown answers pending roster requests (last good roster) instead of leaving them."""
    system = alice_roster
    await system.refresh(["alice"])
    await system.webapp.set_mode("hang")
    async with system.client("alice") as alice:
        request = asyncio.create_task(alice.get_roster())
        await eventually(lambda: len(system.webapp.requests) >= 2)  # the login fetch hangs
        began = time.monotonic()
        await system.stop_component()
        assert await request == ALICE_EXPECTED
        assert time.monotonic() - began < 5


@delegated_only
@pytest.mark.prosody_test_modules("test_no_hold")
async def test_a_roster_too_large_for_the_server_is_refused_not_sent(
    alice_roster: System,
) -> None:
    """Answered by the component (a module that does not hold requests): a roster over
    max_stanza_bytes gets an error; the link, and other users, carry on."""
    system = alice_roster
    await system.stop_component()
    write_config(
        system.config_path, system.server, system.webapp, server={"max_stanza_bytes": 20000}
    )
    await system.start_component()
    system.set_roster("alice", {jid(f"c{i}"): {"name": "x" * 100} for i in range(200)})
    system.set_roster("bob", {jid("carol"): {"name": "Carol"}})
    async with system.client("alice") as alice:
        with pytest.raises(StanzaError) as refused:
            await alice.get_roster()
    assert refused.value.condition == "resource-constraint"
    assert system.app is not None
    assert system.app.readiness.ready
    async with system.client("bob") as bob:
        assert await bob.get_roster() == {jid("carol"): item("Carol")}


@delegated_only
async def test_a_held_roster_request_is_answered_by_the_server_once_synced(
    alice_roster: System,
) -> None:
    """With the shipped module the server holds the request while we sync, then answers from
    its store: the web app's roster, the server's own versions (XEP-0237), and each change
    pushed once, by the server alone."""
    system = alice_roster
    app = system.app
    assert app is not None
    await eventually(lambda: app.delegation.held)
    async with system.client("alice") as alice:
        answer = await alice.send_iq("get", alice.bare, stanzas.roster_query())
        query = answer.find(f"{{{stanzas.ROSTER_NS}}}query")
        assert query is not None
        assert parse_roster_query(query) == ALICE_EXPECTED
        assert (query.get("ver") or "").isdigit()  # Prosody's counter, not our digest
        again = await alice.send_iq("get", alice.bare, stanzas.roster_query(ver=query.get("ver")))
        assert len(again) == 0  # the client holds this very roster
        await alice.send_presence()
        system.set_roster("alice", {**ALICE_ROSTER, jid("dave"): {"name": "Dave"}})
        assert (await system.refresh(["alice"]))[0] == 200
        await alice.wait_for_push(lambda p: jid("dave") in p.items)
        await asyncio.sleep(0.5)  # a second push, from us, would come within this
        assert [p for p in alice.pushes.items if jid("dave") in p.items] == [alice.pushes.items[-1]]
        assert all(p.accepted for p in alice.pushes.items)


def apply_pushes(roster: Mapping[str, object], pushes: list[RosterPush]) -> dict[str, object]:
    """A client's view: its roster result with every push after it applied in order."""
    view = dict(roster)
    for push in pushes:
        for contact, entry in push.items.items():
            if entry["subscription"] == "remove":
                view.pop(contact, None)
            else:
                view[contact] = entry
    return view


async def test_quick_successive_changes_leave_clients_in_the_final_state(
    alice_roster: System,
) -> None:
    """Many refreshes in a row: the pushes a client applies in order end at the web app's truth."""
    system = alice_roster
    async with system.client("alice") as alice:
        await system.logged_in_roster(alice)
        await eventually(lambda: len(system.webapp.requests) >= 1)
        start = await alice.get_roster()
        alice.pushes.clear()
        for round_ in range(6):
            roster: dict[str, object] = {jid("bob"): {"name": f"Bob {round_}"}}
            if round_ % 2:
                roster[jid("carol")] = {"name": f"Carol {round_}"}
            system.set_roster("alice", roster)
            await system.refresh(["alice"])
        final = {jid("bob"): item("Bob 5"), jid("carol"): item("Carol 5")}
        await eventually(lambda: apply_pushes(start, alice.pushes.items) == final)
        assert await alice.get_roster() == final


@delegated_only
async def test_the_delegation_disco_nodes_are_answered(system: System) -> None:
    """The nodes the server asks about for disco nesting (XEP-0355) carry the roster feature."""
    async with system.client("alice") as alice:
        for node in stanzas.delegation_disco_nodes(stanzas.ROSTER_NS):
            query = ET.Element(f"{{{DISCO_INFO}}}query", {"node": node})
            result = await alice.send_iq("get", system.server.component_jid, query)
            features = {f.get("var") for f in result.iter(f"{{{DISCO_INFO}}}feature")}
            assert stanzas.ROSTER_NS in features
