"""The test harness and the shipped Prosody configuration (deploy/prosody/), on both builds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.harness.prosody import (
    DEPLOY_CONFIG,
    DEPLOY_DIR,
    ProsodyBuild,
    ProsodyError,
    ProsodyServer,
    StoredRoster,
    render_deploy_config,
    require_build,
)
from tests.harness.xmpp_client import (
    SUBSCRIPTION_TYPES,
    StanzaError,
    TestClient,
    TestComponent,
    connected_client,
    connected_component,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from tests.harness.prosody import ServerFactory


PASSWORD = "secret-pw"
REFUSAL = "Contacts are managed by the web application"
MODES = pytest.mark.parametrize("delegate_roster", [True, False], ids=["delegated", "plain"])
#: subscribe last: an unsubscribe sent after it would cancel the pending request it leaves.
SUBSCRIPTION_KINDS = sorted(SUBSCRIPTION_TYPES, reverse=True)


def client(server: ProsodyServer, jid: str) -> AbstractAsyncContextManager[TestClient]:
    return connected_client(jid, PASSWORD, server.c2s_port)


def component(server: ProsodyServer) -> AbstractAsyncContextManager[TestComponent]:
    return connected_component(server.component_jid, server.component_secret, server.component_port)


async def users(server: ProsodyServer, *names: str) -> list[str]:
    return [await server.register(name, PASSWORD) for name in names]


# --- without servers ----------------------------------------------------------------------


def test_missing_build_fails_with_bootstrap_hint(tmp_path: Path) -> None:
    """A build that is not installed is reported with the command that installs it."""
    with pytest.raises(ProsodyError, match="run scripts/bootstrap"):
        require_build("13", servers_dir=tmp_path)


def test_non_delegated_config_drops_delegation_and_adds_roster_rule() -> None:
    """The non-delegated rendering edits exactly what the shipped file tells operators to."""
    names = {"domain": "d.test", "component_jid": "c.d.test", "component_secret": "s3"}
    delegated = render_deploy_config(**names, delegate_roster=True)
    plain = render_deploy_config(**names, delegate_roster=False)
    rules = f'"{DEPLOY_DIR}/block_roster_sets.pfw";'
    assert 'delegations = { ["jabber:iq:roster"] = { jid = "c.d.test" } }' in delegated
    assert f"-- {rules}" in delegated
    assert "delegations =" not in plain
    assert f"\n        {rules}" in plain
    for text in (delegated, plain):
        assert 'VirtualHost "d.test"' in text
        assert 'Component "c.d.test"' in text
        assert 'component_secret = "s3"' in text
        assert "example.org" not in text
    assert (DEPLOY_DIR / DEPLOY_CONFIG).is_file()


# --- with servers -------------------------------------------------------------------------


@pytest.mark.integration
@MODES
async def test_shipped_config_passes_prosodyctl_check(
    prosody_build: ProsodyBuild, tmp_path: Path, delegate_roster: bool
) -> None:
    """prosodyctl check config finds no problem in the shipped snippet, in either mode."""
    server = ProsodyServer(prosody_build, tmp_path, delegate_roster=delegate_roster)
    server.write_config()
    output = await server.prosodyctl("check", "config")
    assert "All checks passed" in output
    assert str(server.deploy_config_path) in output


@pytest.mark.integration
async def test_server_answers_empty_roster_without_delegation(
    prosody_no_delegation: ProsodyServer,
) -> None:
    """A registered user logs in and gets an empty roster from the server itself."""
    server = prosody_no_delegation
    (alice,) = await users(server, "alice")
    async with client(server, alice) as c:
        assert c.bare == alice
        assert await c.get_roster() == {}


@pytest.mark.integration
async def test_delegated_roster_request_fails_while_component_is_away(
    prosody: ProsodyServer,
) -> None:
    """Under delegation, with no component connected, roster requests get service-unavailable."""
    (alice,) = await users(prosody, "alice")
    async with client(prosody, alice) as c:
        with pytest.raises(StanzaError) as exc:
            await c.get_roster()
        assert exc.value.condition == "service-unavailable"


@pytest.mark.integration
@MODES
async def test_subscription_stanzas_to_a_stranger_are_refused_and_change_no_roster(
    prosody_factory: ServerFactory, delegate_roster: bool
) -> None:
    """Each subscription stanza to a non-contact is bounced with not-allowed; none is stored."""
    server = await prosody_factory(delegate_roster=delegate_roster)
    alice, carol = await users(server, "alice", "carol")
    async with component(server) as comp, client(server, alice) as a, client(server, carol) as c:
        await a.send_presence()
        await c.send_presence()
        for kind in SUBSCRIPTION_KINDS:
            a.errors.clear()
            await a.send_subscription(carol, kind)
            bounced = await a.wait_for_error()
            assert bounced.kind == "presence"
            assert bounced.sender == carol
            assert bounced.error is not None
            assert (bounced.error.condition, bounced.error.text) == ("not-allowed", REFUSAL)
        # A marker message sent after them arrives; they never did.
        await a.send_message(carol, "after")
        await c.wait_for_message(lambda m: m.body == "after")
        assert not [p for p in c.presences.items if p.type in SUBSCRIPTION_TYPES]
        assert await comp.get_roster_of(alice) == {}
        assert await comp.get_roster_of(carol) == {}
        if not delegate_roster:
            assert await a.get_roster() == {}
        assert not a.pushes.items
    # Neither a pending request for carol (offered to her at every login) nor an "ask".
    for user in ("alice", "carol"):
        assert await server.stored_roster(user) == StoredRoster({}, frozenset(), frozenset())


@pytest.mark.integration
@MODES
async def test_subscription_stanzas_to_a_contact_are_refused_while_presence_and_messages_pass(
    prosody_factory: ServerFactory, delegate_roster: bool
) -> None:
    """Subscription stanzas to a contact are refused; ordinary presence and messages flow."""
    server = await prosody_factory(delegate_roster=delegate_roster)
    alice, bob = await users(server, "alice", "bob")
    async with component(server) as comp:
        await comp.set_roster_item_of(alice, bob, "Bob", ["Friends"])
        await comp.set_roster_item_of(bob, alice, "Alice")
        before = {alice: await comp.get_roster_of(alice), bob: await comp.get_roster_of(bob)}
        assert before[alice][bob]["subscription"] == "both"
        async with client(server, alice) as a, client(server, bob) as b:
            await b.send_presence()
            await a.send_presence()
            await b.wait_for_presence(lambda p: p.sender == a.jid and p.type == "available")
            for kind in SUBSCRIPTION_KINDS:
                a.errors.clear()
                await a.send_subscription(bob, kind)
                bounced = await a.wait_for_error()
                assert bounced.error is not None
                assert bounced.error.condition == "not-allowed"
            await a.send_message(bob, "still friends")
            await b.wait_for_message(lambda m: m.body == "still friends" and m.sender == a.jid)
            assert not [p for p in b.presences.items if p.type in SUBSCRIPTION_TYPES]
            await a.send_presence(presence_type="unavailable")
            await b.wait_for_presence(lambda p: p.sender == a.jid and p.type == "unavailable")
        assert {
            alice: await comp.get_roster_of(alice),
            bob: await comp.get_roster_of(bob),
        } == before
    for user, contact in (("alice", bob), ("bob", alice)):
        stored = StoredRoster({contact: "both"}, frozenset(), frozenset())
        assert await server.stored_roster(user) == stored


@pytest.mark.integration
async def test_contact_on_one_side_only_gets_no_error_at_login(
    prosody_no_delegation: ProsodyServer,
) -> None:
    """Prosody's own "unsubscribed" answer to a one-sided contact's probe is dropped silently."""
    server = prosody_no_delegation
    alice, bob = await users(server, "alice", "bob")
    async with component(server) as comp:
        await comp.set_roster_item_of(alice, bob, "Bob")  # bob's roster does not list alice
        async with client(server, bob) as b:
            await b.send_presence()
            async with client(server, alice) as a:
                # Probes bob, who is not subscribed to alice: the server answers in his name.
                await a.send_presence()
                await a.send_message(bob, "after")
                await b.wait_for_message(lambda m: m.body == "after")
                assert not b.errors.items
                assert not a.errors.items
                assert not [p for p in a.presences.items if p.type in SUBSCRIPTION_TYPES]
        assert await comp.get_roster_of(alice) == {
            bob: {"name": "Bob", "groups": [], "subscription": "both"}
        }
        assert await comp.get_roster_of(bob) == {}


@pytest.mark.integration
async def test_roster_set_is_refused_without_delegation(
    prosody_no_delegation: ProsodyServer,
) -> None:
    """Users' own roster SETs are refused with not-allowed; the component's are not."""
    server = prosody_no_delegation
    alice, bob = await users(server, "alice", "bob")
    async with component(server) as comp, client(server, alice) as a:
        attempts: list[Callable[[], Awaitable[None]]] = [
            lambda: a.set_roster_item("mallory@example.test", "Mallory", ["Evil"]),
            lambda: a.set_roster_item("mallory@example.test", "Mallory", to=alice),
            lambda: a.remove_roster_item(bob),
        ]
        for attempt in attempts:
            with pytest.raises(StanzaError) as exc:
                await attempt()
            assert (exc.value.condition, exc.value.text) == ("not-allowed", REFUSAL)
        assert await a.get_roster() == {}

        await comp.set_roster_item_of(alice, bob, "Bob", ["Work", "Friends"])
        expected = {bob: {"name": "Bob", "groups": ["Friends", "Work"], "subscription": "both"}}
        push = await a.wait_for_push(lambda p: bob in p.items)
        assert push.accepted
        assert push.items == expected
        assert await a.get_roster() == expected

        with pytest.raises(StanzaError) as exc:
            await a.remove_roster_item(bob)
        assert exc.value.condition == "not-allowed"
        assert await comp.get_roster_of(alice) == expected


@pytest.mark.integration
async def test_roster_get_of_another_user_is_forbidden_without_delegation(
    prosody_no_delegation: ProsodyServer,
) -> None:
    """A user cannot read another user's roster by addressing a GET to their bare JID."""
    server = prosody_no_delegation
    alice, bob = await users(server, "alice", "bob")
    async with component(server) as comp:
        await comp.set_roster_item_of(alice, "secret-friend@example.test")
    async with client(server, bob) as b:
        with pytest.raises(StanzaError) as exc:
            await b.get_roster_of(alice)
        assert exc.value.condition == "forbidden"


@pytest.mark.integration
async def test_restart_keeps_users_and_rosters(prosody_no_delegation: ProsodyServer) -> None:
    """restart() comes back on the same ports with the same accounts and rosters."""
    server = prosody_no_delegation
    alice, bob = await users(server, "alice", "bob")
    async with component(server) as comp:
        await comp.set_roster_item_of(alice, bob, "Bob")
    port = server.c2s_port
    await server.restart()
    assert server.c2s_port == port
    async with client(server, alice) as a:
        assert await a.get_roster() == {bob: {"name": "Bob", "groups": [], "subscription": "both"}}
