"""/healthz against a real Prosody: each reason it gives, said so that the operator can fix it.
(The admin API's reasons, ejabberd's, are in test_ejabberd_api.py.)"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from component import config
from component.app import Application
from tests.integration.conftest import eventually, write_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from pathlib import Path

    from tests.harness.prosody import ServerFactory
    from tests.harness.webapp import FakeWebApp

    Health = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]  # GET /healthz

pytestmark = pytest.mark.integration


@pytest.fixture(name="start_component")
async def fixture_start_component(
    webapp: FakeWebApp, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Health]]]:
    """Start the component in-process against a server; returns how to ask its /healthz."""
    apps: list[Application] = []
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def start(target: Any, /, **overrides: Mapping[str, object]) -> Health:
            path = write_config(tmp_path / f"c{len(apps)}.toml", target, webapp, **overrides)
            app = Application(config.load(path, environ={}))
            apps.append(app)
            await app.start()

            async def health() -> tuple[int, dict[str, Any]]:
                async with http.get(f"http://127.0.0.1:{app.http_port}/healthz") as response:
                    return response.status, await response.json()

            return health

        yield start
        for app in apps:
            await app.stop()


async def reasons_become(health: Health, wanted: Callable[[list[str]], bool]) -> None:
    """Until /healthz answers 503 with reasons that are ``wanted``; the last seen on failure."""
    reasons: list[str] = []

    async def said() -> bool:
        nonlocal reasons
        status, body = await health()
        reasons = body["reasons"]
        return status == 503 and wanted(reasons)

    try:
        await eventually(said)
    except TimeoutError:
        pytest.fail(f"/healthz's reasons stayed {reasons}")


async def test_health_says_the_link_is_down_and_recovers(
    prosody_factory: ServerFactory, start_component: Callable[..., Awaitable[Health]]
) -> None:
    """Server stopped: the link's address first (the grants went with it); back: 200."""
    server = await prosody_factory(delegate_roster=True)
    health = await start_component(server)
    await eventually(lambda: _ok(health))
    await server.stop()
    link = f"not connected to the XMPP server at 127.0.0.1:{server.component_port}"
    await reasons_become(health, lambda reasons: reasons[0] == link)
    await server.start()
    await eventually(lambda: _ok(health), within=15)


async def test_health_says_which_roster_privilege_is_missing(
    prosody_factory: ServerFactory, start_component: Callable[..., Awaitable[Health]]
) -> None:
    """A server granting only roster "get": the grant to fix, and where."""
    server = await prosody_factory(delegate_roster=True, roster_privilege="get")
    health = await start_component(server)
    wanted = [
        (
            'roster privilege is "get": grant roster = "both" to roster.example.test in the '
            "server's privileged_entities"
        )
    ]
    await reasons_become(health, wanted.__eq__)


async def test_health_says_the_delegation_is_missing(
    prosody_factory: ServerFactory, start_component: Callable[..., Awaitable[Health]]
) -> None:
    """delegate_roster = true with a server that does not delegate: both ways to fix it."""
    server = await prosody_factory(delegate_roster=False)
    health = await start_component(server, server={"delegate_roster": True})
    wanted = [
        (
            "the server does not delegate jabber:iq:roster to us: add the delegations line to "
            "the VirtualHost, or set server.delegate_roster = false"
        )
    ]
    await reasons_become(health, wanted.__eq__)


async def _ok(health: Health) -> bool:
    status, body = await health()
    return status == 200 and body["reasons"] == []
