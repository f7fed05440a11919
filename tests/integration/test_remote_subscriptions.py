"""Subscription stanzas from another server, against the shipped rules (both builds).

Our server (example.test, shipped configuration) federates over loopback with a plain server
(other.test) whose users' subscription stanzas leave it unchecked, so any of the four types
can be sent whatever the sender's roster says. Subscriptions are a server-level matter: the
non-delegated mode with the bare test component (privileged roster SET/GET) is enough.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.harness.xmpp_client import (
    SUBSCRIPTION_TYPES,
    TestClient,
    connected_client,
    connected_component,
)

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from tests.harness.prosody import ProsodyServer, ServerFactory


PASSWORD = "secret-pw"
REFUSAL = "Contacts are managed by the web application"


def client(server: ProsodyServer, user: str) -> AbstractAsyncContextManager[TestClient]:
    return connected_client(f"{user}@{server.domain}", PASSWORD, server.c2s_port)


@pytest.fixture
async def local_prosody(prosody_factory: ServerFactory) -> ProsodyServer:
    """Our server: the shipped configuration (non-delegated), server-to-server enabled."""
    return await prosody_factory(delegate_roster=False, s2s=True)


@pytest.fixture
async def remote_prosody(
    prosody_factory: ServerFactory, local_prosody: ProsodyServer
) -> ProsodyServer:
    """Somebody else's server (other.test), federated with local_prosody, that passes on
    every subscription stanza of its users unchecked."""
    remote = await prosody_factory(
        domain="other.test",
        s2s=True,
        shipped_config=False,
        test_modules=["test_raw_subscriptions"],
    )
    local_prosody.federate_with(remote)
    return remote


@pytest.mark.integration
async def test_remote_subscription_stanzas_change_no_roster(
    local_prosody: ProsodyServer, remote_prosody: ProsodyServer
) -> None:
    """A remote user's subscription stanzas reach no client and change no stored roster."""
    local, remote = local_prosody, remote_prosody
    for user in ("alice", "carol"):
        await local.register(user, PASSWORD)
    await remote.register("zed", PASSWORD)
    alice, carol, zed = "alice@example.test", "carol@example.test", "zed@other.test"
    async with connected_component(local.component_jid, local.component_secret,
                                   local.component_port) as comp:  # fmt: skip
        # zed is alice's contact and a stranger to carol.
        await comp.set_roster_item_of(alice, zed, "Zed")
        await comp.set_roster_item_of(alice, carol, "Carol")
        await comp.set_roster_item_of(carol, alice, "Alice")
        before = {user: await comp.get_roster_of(user) for user in (alice, carol)}
        async with (
            client(local, "alice") as a,
            client(local, "carol") as c,
            client(remote, "zed") as z,
        ):
            for ours in (a, c):
                # Having asked for its roster, a client is sent subscription requests, changes
                # and roster pushes: would any get through, it would see them.
                assert await ours.get_roster() == before[ours.bare]
                await ours.send_presence()
            await z.send_presence()
            # The link works both ways: alice's presence reaches zed (her contact).
            await z.wait_for_presence(lambda p: p.sender == a.jid and p.type == "available")

            # subscribe last: an unsubscribe after it would cancel the request it leaves.
            for kind in sorted(SUBSCRIPTION_TYPES, reverse=True):
                for to in (alice, carol):
                    await z.send_subscription(to, kind)
            # What zed sends next travels on the same stream, so it arrives after them.
            for to in (alice, carol):
                await z.send_message(to, "after")
            await z.send_presence(to=alice)
            z.presences.clear()  # alice's next presence to zed is the answer to this probe:
            await z.send_presence(to=alice, presence_type="probe")

            for ours in (a, c):
                await ours.wait_for_message(lambda m: m.sender == z.jid and m.body == "after")
                assert not [p for p in ours.presences.items if p.type in SUBSCRIPTION_TYPES]
                assert not ours.pushes.items
            assert {user: await comp.get_roster_of(user) for user in (alice, carol)} == before

            # Ordinary presence still passes, and so do probes: alice's server answers with her
            # presence, on the same stream as (so after) its answers to the subscription stanzas.
            await a.wait_for_presence(lambda p: p.sender == z.jid and p.type == "available")
            await z.wait_for_presence(lambda p: p.sender == a.jid and p.type == "available")
            # Each subscribe was refused; the other three were dropped silently.
            refusals = [
                (e.sender, e.error.condition, e.error.text) for e in z.errors.items if e.error
            ]
            assert sorted(refusals) == [
                (alice, "not-allowed", REFUSAL),
                (carol, "not-allowed", REFUSAL),
            ]
            assert len(z.errors.items) == 2
    for user, contacts in (("alice", {zed, carol}), ("carol", {alice})):
        stored = await local.stored_roster(user)
        assert stored.subscriptions == dict.fromkeys(contacts, "both")
        assert not stored.asking
        assert not stored.pending_in  # would be offered to the user again at every login
