"""Live presence and drift repair, end to end on real Prosody 0.12 and 13, in both modes.

What mod_http_roster_admin did inside the server and the component must do from outside: a
refresh that makes two online users contacts shows each the other's presence at once, a
removal shows them go away, and a roster changed behind the web app's back is put back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import pytest
from structlog.testing import capture_logs

from tests.harness.prosody import ProsodyServer
from tests.harness.xmpp_client import connected_client
from tests.integration.conftest import PASSWORD, System, eventually, item, jid, write_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence

    from tests.harness.xmpp_client import Received, TestClient

pytestmark = pytest.mark.integration

# "Within 1 s of the refresh reply" (the in-server module sent presence as it changed rosters).
PRESENCE_DELAY = 1.0
RECONCILE_INTERVAL = 2.0


async def presence_from(client: TestClient, sender: str, kind: str, after: float) -> Received:
    """The first presence of ``kind`` from the full JID ``sender`` that arrived after ``after``."""
    return await client.wait_for_presence(
        lambda p: p.sender == sender and p.type == kind and p.at >= after
    )


def echo_of(sender: str, show: str) -> Callable[[Received], bool]:
    return lambda p: p.sender == sender and p.show == show


@contextlib.asynccontextmanager
async def online(system: System) -> AsyncIterator[tuple[TestClient, TestClient, TestClient]]:
    """alice on two resources (away, dnd) and bob (chat), logged in, strangers to each other."""
    system.set_roster("alice", {})
    system.set_roster("bob", {})
    async with (
        system.client("alice") as alice,
        connected_client(f"{jid('alice')}/phone", PASSWORD, system.server.c2s_port) as phone,
        system.client("bob") as bob,
    ):
        for client in (alice, phone, bob):
            await system.logged_in_roster(client)
        for client, show, status in (
            (alice, "away", "at lunch"),
            (phone, "dnd", "driving"),
            (bob, "chat", "hello"),
        ):
            await client.send_presence(show=show, status=status)
            # The server echoes a presence to its sender once it is the session's presence:
            # only then is it what contacts are sent.
            await client.wait_for_presence(echo_of(client.jid, show))
        yield alice, phone, bob


async def refresh_both(system: System, *, befriend: bool) -> tuple[float, float]:
    """The web app makes alice and bob contacts (or strangers, as ``[]``) and says so;
    when the refresh was sent and when it was answered."""
    system.set_roster("alice", {jid("bob"): {"name": "Bob"}} if befriend else [])
    system.set_roster("bob", {jid("alice"): {"name": "Alice"}} if befriend else [])
    began = time.monotonic()
    status, body = await system.refresh(["alice", "bob"])
    assert (status, body["updated"]) == (200, 2)
    return began, time.monotonic()


async def test_new_contacts_see_each_other_online_at_once(system: System) -> None:
    """A refresh making two online users contacts delivers each one's current presence, every
    resource with its show and status, within a second of the reply."""
    async with online(system) as (alice, phone, bob):
        began, replied = await refresh_both(system, befriend=True)
        seen = [
            await presence_from(bob, alice.jid, "available", began),
            await presence_from(bob, phone.jid, "available", began),
            await presence_from(alice, bob.jid, "available", began),
            await presence_from(phone, bob.jid, "available", began),
        ]
        assert [(p.show, p.status) for p in seen] == [
            ("away", "at lunch"),
            ("dnd", "driving"),
            ("chat", "hello"),
            ("chat", "hello"),
        ]
        assert max(p.at for p in seen) - replied < PRESENCE_DELAY


async def test_removed_contacts_see_each_other_go_offline_at_once(system: System) -> None:
    """A refresh removing a contact shows each side the other go unavailable within a second."""
    async with online(system) as (alice, phone, bob):
        await refresh_both(system, befriend=True)
        await presence_from(bob, phone.jid, "available", 0)
        await presence_from(alice, bob.jid, "available", 0)

        began, replied = await refresh_both(system, befriend=False)
        seen = [
            await presence_from(bob, alice.jid, "unavailable", began),
            await presence_from(bob, phone.jid, "unavailable", began),
            await presence_from(alice, bob.jid, "unavailable", began),
            await presence_from(phone, bob.jid, "unavailable", began),
        ]
        assert max(p.at for p in seen) - replied < PRESENCE_DELAY


async def drift_alice(system: System) -> None:
    """Change alice's roster inside the running server, as an admin's edit would: bob's
    subscription degraded, carol removed, a stranger added (with a pending request where the
    server's tools can make one)."""
    server = system.server
    if isinstance(server, ProsodyServer):
        await server.shell(
            'local rm = require "core.rostermanager"; '
            'local r = rm.load_roster("alice", "example.test"); '
            'r["bob@example.test"].subscription = "to"; '
            'r["carol@example.test"] = nil; '
            'r["mallory@example.test"] = '
            '{ subscription = "none", ask = "subscribe", groups = {} }; '
            'return rm.save_roster("alice", "example.test", r)'
        )
    else:
        await server.add_roster_item("alice", jid("bob"), name="Bob", subscription="to")
        await server.remove_roster_item("alice", jid("carol"))
        await server.add_roster_item("alice", "mallory@example.test", subscription="none")


async def test_drift_is_repaired_by_the_periodic_reconciliation(system: System) -> None:
    """A roster edited inside the server while alice is online is put back within the
    reconciliation interval, and the repair is logged item by item."""
    await system.stop_component()
    write_config(
        system.config_path,
        system.server,
        system.webapp,
        sync={"reconcile_interval": RECONCILE_INTERVAL},
    )
    await system.start_component()
    system.set_roster("alice", {jid("bob"): {"name": "Bob"}, jid("carol"): {"name": "Carol"}})
    system.expected = {jid("bob"): item("Bob"), jid("carol"): item("Carol")}
    assert system.app is not None
    syncer = system.app.syncer
    async with system.client("alice") as alice:
        await system.logged_in_roster(alice)
        with capture_logs() as logs:
            await drift_alice(system)
            drifted = time.monotonic()
            assert sorted(await syncer.current_roster("alice")) == [
                jid("bob"),
                "mallory@example.test",
            ]

            async def repaired() -> bool:
                roster = await syncer.current_roster("alice")
                return {c: (v.name, v.subscription, v.ask) for c, v in roster.items()} == {
                    jid("bob"): ("Bob", "both", False),
                    jid("carol"): ("Carol", "both", False),
                }

            await eventually(repaired, within=RECONCILE_INTERVAL * 3)
            delay = time.monotonic() - drifted
            await eventually(lambda: any(e["event"] == "roster.repaired" for e in logs))
        assert delay < RECONCILE_INTERVAL + 1.0
        [event] = [e for e in logs if e["event"] == "roster.repaired"]
        assert event["user"] == jid("alice")
        changed = {entry["jid"]: (entry["was"], entry["now"]) for entry in event["items"]}
        assert set(changed) == {jid("bob"), jid("carol"), "mallory@example.test"}
        assert changed[jid("bob")][0]["subscription"] == "to"
        assert changed[jid("carol")][0] is None
        assert changed["mallory@example.test"][1] is None
        # What the client is served now is the web app's truth again.
        assert await alice.get_roster() == system.expected


async def test_subscription_stanzas_leave_no_trace(system: System) -> None:
    """Users' subscription stanzas never leave a roster changed for long: Prosody's rules block
    them; what ejabberd lets through (bob's unsubscribe degrading "both", a stranger's pending
    request) is put back by the reconciliation, and logged as a repair."""
    await system.stop_component()
    write_config(
        system.config_path,
        system.server,
        system.webapp,
        sync={"reconcile_interval": RECONCILE_INTERVAL},
    )
    await system.start_component()
    assert system.app is not None
    store = system.app.store
    system.set_roster("alice", {jid("bob"): {"name": "Bob"}})
    system.set_roster("bob", {jid("alice"): {"name": "Alice"}})
    assert (await system.refresh(["alice", "bob"]))[1]["updated"] == 2
    async with system.client("alice") as alice, system.client("bob") as bob:
        for client in (alice, bob):
            await client.send_presence()
        async with system.client("dave") as dave:
            with capture_logs() as logs:
                await dave.send_subscription(jid("alice"), "subscribe")
                await bob.send_subscription(jid("alice"), "unsubscribe")
                await bob.send_subscription(jid("alice"), "unsubscribed")
                # A round trip on each sender's stream: the server has taken their stanzas.
                await dave.get_roster()
                await bob.get_roster()
                if system.target.kind == "ejabberd":
                    await eventually(
                        lambda: bool(repaired(logs, "alice")), within=RECONCILE_INTERVAL * 3
                    )
                    [event] = repaired(logs, "alice")
                    assert {entry["jid"] for entry in event["items"]} >= {jid("bob"), jid("dave")}
                else:
                    await asyncio.sleep(RECONCILE_INTERVAL * 1.5)
                    assert not repaired(logs, "alice")
            stored = await store.read(jid("alice"))
            assert not stored.pending_in
            assert {c: (v.subscription, v.ask) for c, v in stored.contacts.items()} == {
                jid("bob"): ("both", False)
            }
    async with system.client("alice") as alice:
        await alice.send_presence()
        # Not offered again at login: the stranger's request is gone for good.
        with pytest.raises(TimeoutError):
            await alice.wait_for_presence(lambda p: p.type == "subscribe", timeout=1.0)


def repaired(logs: Sequence[MutableMapping[str, Any]], user: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "roster.repaired" and e["user"] == jid(user)]
