"""Shared fixtures: real Prosody and ejabberd servers (both builds of each) for integration
tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.harness.prosody import BUILD_NAMES, ProsodyBuild, ProsodyError, ProsodyServer
from tests.harness.prosody import require_build as _require_build

# The ejabberd fixtures (one shared server per build, fresh accounts per test); the check
# that no secret reaches the component's logs; pytester, to test that check.
pytest_plugins = ("tests.integration.ejabberd_fixtures", "tests.harness.log_secrets", "pytester")

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Generator
    from pathlib import Path

    from tests.harness.prosody import ServerFactory


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the test item, so fixtures can see a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(params=BUILD_NAMES, ids=[f"prosody-{name}" for name in BUILD_NAMES])
def prosody_build(request: pytest.FixtureRequest) -> ProsodyBuild:
    """Each supported Prosody build in turn; a missing one fails (never skips) the test."""
    try:
        return _require_build(request.param)
    except ProsodyError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture
async def prosody_factory(
    prosody_build: ProsodyBuild, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ServerFactory]:
    """Start servers of the current build: ``await prosody_factory(delegate_roster=False)``.

    Every server is stopped at teardown; when the test failed, the tail of each server's log
    is printed (pytest shows it with the failure).
    """
    servers: list[ProsodyServer] = []

    async def start(**options: Any) -> ProsodyServer:
        server = ProsodyServer(prosody_build, tmp_path / f"prosody-{len(servers)}", **options)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for server in servers:
            print(f"\n{server!r}\n{server.log_tail(80)}")  # noqa: T201 - shown on failure


@pytest.fixture
async def prosody(prosody_factory: ServerFactory) -> ProsodyServer:
    """A running server with the shipped configuration, roster delegated to the component."""
    return await prosody_factory(delegate_roster=True)


@pytest.fixture
async def prosody_no_delegation(prosody_factory: ServerFactory) -> ProsodyServer:
    """A running server in the non-delegated mode (Prosody answers roster GETs itself)."""
    return await prosody_factory(delegate_roster=False)
