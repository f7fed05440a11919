"""The whole system for end-to-end tests: a real Prosody, the fake web app, the component
(in-process, on the same event loop) and real clients."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from component import config
from component.app import Application
from tests.harness.component import write_component_config
from tests.harness.webapp import FakeWebApp
from tests.harness.xmpp_client import TestClient, connected_client

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from tests.harness.prosody import ProsodyServer, ServerFactory


DOMAIN = "example.test"
PASSWORD = "pw"
TOKEN = "refresh-token"
USERS = ("alice", "bob", "carol", "dave")
READY_TIMEOUT = 15.0


def jid(user: str) -> str:
    return f"{user}@{DOMAIN}"


def item(name: str | None = None, groups: list[str] | None = None) -> dict[str, Any]:
    """A roster item as the test client reports it: every contact is subscription both."""
    return {"name": name, "groups": sorted(groups or []), "subscription": "both"}


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    """Poll until ``check`` holds: for state that settles through asynchronous work."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


@dataclass
class System:
    """Everything a test talks to, with helpers for the common moves."""

    server: ProsodyServer
    webapp: FakeWebApp
    config_path: Path
    http: aiohttp.ClientSession
    app: Application | None = None
    expected: dict[str, Any] = field(default_factory=dict)

    @property
    def delegated(self) -> bool:
        return self.server.delegate_roster

    @property
    def url(self) -> str:
        assert self.app is not None
        return f"http://127.0.0.1:{self.app.http_port}"

    async def start_component(self, *, wait: bool = True) -> Application:
        self.app = Application(config.load(self.config_path, environ={}))
        await self.app.start()
        if not wait:
            return self.app
        async with asyncio.timeout(READY_TIMEOUT):
            await self.app.readiness.wait_ready()
        return self.app

    async def stop_component(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    def client(self, user: str) -> AbstractAsyncContextManager[TestClient]:
        return connected_client(jid(user), PASSWORD, self.server.c2s_port)

    async def refresh(
        self, body: str | list[str], token: str = TOKEN
    ) -> tuple[int, dict[str, Any]]:
        """POST /roster_admin/refresh; a list is sent as JSON."""
        kwargs: dict[str, Any] = {"json": body} if isinstance(body, list) else {"data": body}
        async with self.http.post(
            f"{self.url}/roster_admin/refresh",
            headers={"Authorization": f"Bearer {token}"},
            **kwargs,
        ) as response:
            return response.status, await response.json()

    async def logged_in_roster(self, client: TestClient) -> dict[str, object]:
        """The roster a client ends up with after logging in and sending initial presence.

        Delegated: the first roster request is already the web app's roster. Otherwise the
        server answers from its store, and the login sync corrects it with pushes until the
        roster is ``expected``.
        """
        roster = await client.get_roster()
        await client.send_presence()
        if not self.delegated:

            async def settled() -> bool:
                nonlocal roster
                roster = await client.get_roster()
                return dict(roster) == self.expected

            await eventually(settled)
        return dict(roster)

    def set_roster(self, user: str, roster: Mapping[str, object] | list[object]) -> None:
        self.webapp.rosters[user] = list(roster) if isinstance(roster, list) else dict(roster)


@pytest.fixture(params=[True, False], ids=["delegated", "server-answers"])
def delegate_roster(request: pytest.FixtureRequest) -> bool:
    """Both ways of running: roster requests delegated to the component, or not."""
    return bool(request.param)


@pytest.fixture(name="webapp")
async def fixture_webapp() -> AsyncIterator[FakeWebApp]:
    async with FakeWebApp() as webapp:
        yield webapp


def write_config(
    path: Path, server: ProsodyServer, webapp: FakeWebApp, /, **overrides: Mapping[str, object]
) -> Path:
    """The component's config for tests (quick timeouts, debug logs, reconciliation off);
    ``overrides`` change single keys: ``sync={"reconcile_interval": 2}``."""
    sections: dict[str, dict[str, object]] = {
        "component": {"reconnect_max_delay": 1},
        "webapp": {"timeout": 1, "attempts": 2},
        "listener": {"token": TOKEN},
        "sync": {"max_age": 0, "xmpp_timeout": 5, "answer_timeout": 5, "reconcile_interval": 0},
        "log": {"format": "console", "level": "debug"},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return write_component_config(path, server, webapp.url_template, **sections)


@pytest.fixture(name="system")
async def fixture_system(
    prosody_factory: ServerFactory,
    webapp: FakeWebApp,
    delegate_roster: bool,
    tmp_path: Path,
) -> AsyncIterator[System]:
    """Prosody (in the given mode) with users registered, the web app and a ready component."""
    server = await prosody_factory(delegate_roster=delegate_roster)
    await asyncio.gather(*(server.register(user, PASSWORD) for user in USERS))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        system = System(server, webapp, write_config(tmp_path / "c.toml", server, webapp), http)
        await system.start_component()
        try:
            yield system
        finally:
            with contextlib.suppress(Exception):
                await system.stop_component()
