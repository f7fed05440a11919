"""Fixtures for tests against real ejabberd servers (both supported builds), as a pytest plugin.

A test asking for any of them runs once per build (ids ejabberd-23.01, ejabberd-24.12). One
server per build serves the whole session (pytest groups the tests by build, so one runs at a
time); tests keep out of each other's way by using fresh accounts (``ejabberd_accounts``).

- ``ejabberd``: the shared running server of the current build (EjabberdServer); when the test
  fails, what the server logged during it is printed.
- ``ejabberd_accounts``: fresh accounts for this test, deleted with their rosters afterwards:
  ``alice = await ejabberd_accounts.new("alice")`` (-> "alice-<n>@example.test");
  ``async with ejabberd_accounts.client(alice) as c:`` logs in (SASL PLAIN).
- ``ejabberd_probe``: a test component connected as the server's probe domain, on its own
  listener, with the component's privileges: it can run next to the component under test
  (which connects as ``ejabberd.component_jid`` on ``ejabberd.component_port``).
- ``ejabberd_factory``: separate servers of the current build with other options, e.g.
  ``ejabberd_factory(api_auth=True)``; stopped when the test ends.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness.ejabberd import (
    BUILD_NAMES,
    EjabberdBuild,
    EjabberdError,
    EjabberdServer,
    require_build,
)
from tests.harness.xmpp_client import connected_client, connected_component

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    from tests.harness.xmpp_client import TestClient, TestComponent

PASSWORD = "pw"
_LOG_SHOWN_ON_FAILURE = 30_000  # characters: the end of what the server logged
_tests = itertools.count(1)


class Accounts:
    """Accounts on a shared server under names no other test uses."""

    def __init__(self, server: EjabberdServer, suffix: str, password: str = PASSWORD) -> None:
        self.server = server
        self.suffix = suffix
        self.password = password
        self.users: list[str] = []

    async def new(self, name: str) -> str:
        """Register "<name>-<suffix>"; returns its bare JID."""
        user = f"{name}-{self.suffix}"
        jid = await self.server.register(user, self.password)
        self.users.append(user)
        return jid

    def client(self, jid: str, **options: Any) -> AbstractAsyncContextManager[TestClient]:
        """A logged-in client (PLAIN: 24.12 refuses SCRAM without TLS) for one of them."""
        return connected_client(jid, self.password, self.server.c2s_port, **options)

    async def remove_all(self) -> None:
        for user in self.users:
            await self.server.unregister(user)
        self.users.clear()


def print_log_on_failure(
    request: pytest.FixtureRequest, server: EjabberdServer, since: int
) -> None:
    report = getattr(request.node, "report_call", None)  # set by tests/conftest.py
    if report is not None and report.failed:
        log = server.log_since(since)[-_LOG_SHOWN_ON_FAILURE:]
        print(f"\n{server!r}\n--- logged during the test ---\n{log}")  # noqa: T201 - shown on failure


@pytest.fixture(
    scope="session", params=BUILD_NAMES, ids=[f"ejabberd-{name}" for name in BUILD_NAMES]
)
def ejabberd_build(request: pytest.FixtureRequest) -> EjabberdBuild:
    """Each supported ejabberd build in turn; a missing one fails (never skips) the test."""
    try:
        return require_build(request.param)
    except EjabberdError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


class SharedServers:
    """One server per build for the whole session, started when first asked for."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self._servers: dict[str, EjabberdServer] = {}

    def get(self, build: EjabberdBuild) -> EjabberdServer:
        """The build's shared server, running (started again if a test stopped it)."""
        server = self._servers.get(build.name)
        if server is None:
            server = EjabberdServer(build, self._tmp_path_factory.mktemp(build.id))
            self._servers[build.name] = server
        if not server.running:
            server.start()
        return server

    def stop_all(self) -> None:
        for server in self._servers.values():
            server.stop()


@pytest.fixture(scope="session")
def ejabberd_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServers]:
    """The session's shared servers, by build (for fixtures that pick the build themselves)."""
    servers = SharedServers(tmp_path_factory)
    yield servers
    servers.stop_all()


@pytest.fixture
def ejabberd(
    ejabberd_build: EjabberdBuild, ejabberd_servers: SharedServers, request: pytest.FixtureRequest
) -> Iterator[EjabberdServer]:
    """The shared server, running (started again if an earlier test stopped it)."""
    server = ejabberd_servers.get(ejabberd_build)
    since = server.log_size()
    yield server
    print_log_on_failure(request, server, since)


@pytest.fixture
async def ejabberd_accounts(ejabberd: EjabberdServer) -> AsyncIterator[Accounts]:
    """Fresh accounts for this test on the shared server; deleted (with rosters) afterwards."""
    accounts = Accounts(ejabberd, str(next(_tests)))
    yield accounts
    await accounts.remove_all()


@pytest.fixture
async def ejabberd_probe(ejabberd: EjabberdServer) -> AsyncIterator[TestComponent]:
    """A test component connected as the probe domain, with the component's privileges."""
    async with connected_component(
        ejabberd.probe_jid, ejabberd.probe_secret, ejabberd.probe_port
    ) as component:
        yield component


@pytest.fixture
def ejabberd_factory(
    ejabberd_build: EjabberdBuild,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., EjabberdServer]]:
    """Start separate servers of this build: ``ejabberd_factory(api_auth=True)``."""
    servers: list[EjabberdServer] = []

    def start(**options: Any) -> EjabberdServer:
        server = EjabberdServer(
            ejabberd_build, tmp_path_factory.mktemp(ejabberd_build.id), **options
        )
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
        print_log_on_failure(request, server, 0)
