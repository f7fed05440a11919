"""What is particular to ejabberd, end to end on real 23.01 and 24.12: the admin API the
component writes through, unreachable or protected by ejabberd's own authentication."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest

from tests.harness.ejabberd import EjabberdServer, require_build
from tests.harness.prosody import free_ports
from tests.integration.conftest import (
    PASSWORD,
    System,
    ejabberd_only,
    eventually,
    item,
    jid,
)
from tests.integration.conftest import write_config as write_test_config

if TYPE_CHECKING:
    from pathlib import Path

    from tests.harness.webapp import FakeWebApp

pytestmark = pytest.mark.integration


async def health(system: System) -> tuple[int, dict[str, object]]:
    async with system.http.get(f"{system.url}/healthz") as response:
        return response.status, await response.json()


@ejabberd_only
async def test_an_unreachable_api_is_said_and_refreshes_wait(system: System) -> None:
    """API down: /healthz says so, refreshes get 503 and touch nothing; back: all works."""
    await system.stop_component()
    (closed,) = free_ports(1)
    right = system.server.server_section()["api_url"]
    write_test_config(
        system.config_path,
        system.server,
        system.webapp,
        server={"api_url": f"http://127.0.0.1:{closed}/api"},
    )
    app = await system.start_component(wait=False)
    await eventually(lambda: any("unreachable" in r for r in app.readiness.reasons))
    status, body = await health(system)
    assert status == 503
    assert f"127.0.0.1:{closed}" in str(body["reasons"])
    assert (await system.refresh(["alice"]))[0] == 503
    assert system.webapp.requests == []

    await system.stop_component()
    write_test_config(system.config_path, system.server, system.webapp, server={"api_url": right})
    await system.start_component()
    system.set_roster("alice", {jid("bob"): {"name": "Bob"}})
    status, body = await system.refresh(["alice"])
    assert (status, body["updated"]) == (200, 1)


@ejabberd_only
async def test_an_api_behind_ejabberds_own_auth(
    system: System, webapp: FakeWebApp, tmp_path: Path
) -> None:
    """With credentials the component writes rosters; with a wrong password it says why."""
    # The shared server's component steps aside; this one talks to a protected server.
    await system.stop_component()
    build = require_build(system.target.build)
    with EjabberdServer(build, tmp_path / "protected", api_auth=True) as server:
        for user in ("alice", "bob"):
            await server.register(user, PASSWORD)
        config_path = write_test_config(tmp_path / "protected.toml", server, webapp)
        protected = System(system.target, server, webapp, config_path, system.http)
        try:
            await protected.start_component()
            protected.set_roster("alice", {jid("bob"): {"name": "Bob", "groups": ["Team"]}})
            assert (await protected.refresh(["alice"]))[1]["updated"] == 1
            async with protected.client("alice") as alice:
                assert await alice.get_roster() == {jid("bob"): item("Bob", ["Team"])}
            await protected.stop_component()

            write_test_config(
                config_path, server, webapp, server={"api_password": secrets.token_urlsafe(24)}
            )
            app = await protected.start_component(wait=False)
            await eventually(lambda: any("HTTP 401" in r for r in app.readiness.reasons))
            status, body = await health(protected)
            assert status == 503
            assert "api_password" in str(body["reasons"])
        finally:
            await protected.stop_component()
