"""The whole system for end-to-end tests: a real server (Prosody 0.12 or 13, delegated or not;
ejabberd 23.01 or 24.12), the fake web app, the component (in-process, on the same event loop)
and real clients.

Tests that ask for ``system`` run once per target (``TARGETS``); ``@delegated_only`` keeps a
test to the targets whose roster requests are delegated to the component, ``@ejabberd_only``
to the ejabberd ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import pytest

from component import config
from component.app import Application
from tests.harness import ejabberd, prosody
from tests.harness.component import write_component_config
from tests.harness.webapp import FakeWebApp
from tests.harness.xmpp_client import TestClient, connected_client

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from tests.harness.component import ComponentTarget
    from tests.integration.ejabberd_fixtures import SharedServers


DOMAIN = "example.test"
PASSWORD = "pw"
# Random, so that tests/harness/log_secrets.py can look for them in the component's logs.
TOKEN = secrets.token_urlsafe(24)
WEBAPP_TOKEN = secrets.token_urlsafe(24)
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


@dataclass(frozen=True)
class Target:
    """One server build, and mode, that the end-to-end tests run against."""

    kind: Literal["prosody", "ejabberd"]
    build: str
    delegated: bool

    @property
    def id(self) -> str:
        mode = "delegated" if self.delegated else "server-answers"
        return f"{self.kind}-{self.build}-{mode}"


TARGETS = (
    *(Target("prosody", b, delegated) for b in prosody.BUILD_NAMES for delegated in (True, False)),
    # Never delegated: ejabberd drops its roster handler when a delegated component leaves.
    *(Target("ejabberd", b, delegated=False) for b in ejabberd.BUILD_NAMES),
)
delegated_only = pytest.mark.delegated_only
ejabberd_only = pytest.mark.ejabberd_only


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" not in metafunc.fixturenames:
        return
    targets = list(TARGETS)
    if metafunc.definition.get_closest_marker("delegated_only") is not None:
        targets = [t for t in targets if t.delegated]
    if metafunc.definition.get_closest_marker("ejabberd_only") is not None:
        targets = [t for t in targets if t.kind == "ejabberd"]
    metafunc.parametrize("target", targets, ids=[t.id for t in targets])


Server = prosody.ProsodyServer | ejabberd.EjabberdServer


@dataclass
class System:
    """Everything a test talks to, with helpers for the common moves."""

    target: Target
    server: Server
    webapp: FakeWebApp
    config_path: Path
    http: aiohttp.ClientSession
    app: Application | None = None
    expected: dict[str, Any] = field(default_factory=dict)

    @property
    def delegated(self) -> bool:
        return self.target.delegated

    async def stop_server(self) -> None:
        if isinstance(self.server, prosody.ProsodyServer):
            await self.server.stop()
        else:
            await asyncio.to_thread(self.server.stop)

    async def kill_server(self) -> None:
        """SIGKILL the server, as a crash would: start_server() brings it back."""
        if isinstance(self.server, prosody.ProsodyServer):
            await self.server.kill()
        else:
            self.server.kill()

    async def start_server(self) -> None:
        """Start the stopped server again, with its users and rosters."""
        if isinstance(self.server, prosody.ProsodyServer):
            await self.server.start()
        else:
            # On this thread: the VM is tied to the thread that starts it (kill with parent).
            self.server.start()

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


@pytest.fixture(name="webapp")
async def fixture_webapp() -> AsyncIterator[FakeWebApp]:
    async with FakeWebApp() as webapp:
        yield webapp


def write_config(
    path: Path, server: ComponentTarget, webapp: FakeWebApp, /, **overrides: Mapping[str, object]
) -> Path:
    """The component's config for tests (quick timeouts, debug logs, reconciliation off);
    ``overrides`` change single keys: ``sync={"reconcile_interval": 2}``."""
    sections: dict[str, dict[str, object]] = {
        "component": {"reconnect_max_delay": 1},
        "webapp": {"timeout": 1, "attempts": 2, "token": WEBAPP_TOKEN},
        "listener": {"token": TOKEN},
        "sync": {"max_age": 0, "xmpp_timeout": 5, "answer_timeout": 5, "reconcile_interval": 0},
        "log": {"format": "console", "level": "debug"},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return write_component_config(path, server, webapp.url_template, **sections)


@contextlib.asynccontextmanager
async def running_server(
    target: Target, workdir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Server]:
    """The target's server with USERS registered (and nothing else left from other tests)."""
    if target.kind == "prosody":
        marker = request.node.get_closest_marker("prosody_test_modules")
        server = prosody.ProsodyServer(
            prosody.require_build(target.build),
            workdir,
            delegate_roster=target.delegated,
            test_modules=marker.args if marker is not None else (),
        )
        await server.start()
        try:
            await asyncio.gather(*(server.register(user, PASSWORD) for user in USERS))
            yield server
        finally:
            await server.stop()
            if failed(request):
                print(f"\n{server!r}\n{server.log_tail(80)}")  # noqa: T201 - shown on failure
        return
    shared: SharedServers = request.getfixturevalue("ejabberd_servers")
    server_ = shared.get(ejabberd.require_build(target.build))
    since = server_.log_size()
    # The server is shared by the session: accounts (and with them rosters) start afresh.
    for user in USERS:
        with contextlib.suppress(ejabberd.EjabberdApiError):
            await server_.unregister(user)
        await server_.register(user, PASSWORD)
    try:
        yield server_
    finally:
        if not server_.running:
            server_.start()
        if failed(request):
            print(f"\n{server_!r}\n{server_.log_since(since)[-30_000:]}")  # noqa: T201


def failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)  # set by tests/conftest.py
    return report is not None and bool(report.failed)


@pytest.fixture(name="component_options")
def fixture_component_options() -> dict[str, dict[str, object]]:
    """Config keys that differ from write_config's for ``system``'s component, by section:
    override this fixture to change them for a module or directory."""
    return {}


@pytest.fixture(name="system")
async def fixture_system(
    target: Target,
    webapp: FakeWebApp,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    component_options: dict[str, dict[str, object]],
) -> AsyncIterator[System]:
    """The target's server with users registered, the web app and a ready component."""
    async with (
        running_server(target, tmp_path / "server", request) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        config_path = write_config(tmp_path / "c.toml", server, webapp, **component_options)
        system = System(target, server, webapp, config_path, http)
        await system.start_component()
        try:
            yield system
        finally:
            with contextlib.suppress(Exception):
                await system.stop_component()
