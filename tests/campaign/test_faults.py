"""Faults against the real servers while a refresh of many users is under way (issue 8).

Every fault lands at a known point: once the web app has served more fetches than there are
sync slots, so that some users are done, a slot's worth are part way and the rest not begun.
Afterwards every stored roster is the one before the refresh, the web app's new one, or part
way between them with no contact lost (population.state); the refresh's caller was told which
users failed; and the next refresh brings every roster to the web app's truth.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.campaign.conftest import BIG, SMALL_TARGETS, scale
from tests.campaign.population import (
    Population,
    Roster,
    State,
    describe,
    register,
    state,
    stored_rosters,
    unregister,
)
from tests.harness.component import ComponentProcess
from tests.harness.ejabberd import EjabberdServer
from tests.harness.prosody import free_ports
from tests.harness.proxy import TcpProxy
from tests.integration.conftest import (
    DOMAIN,
    PASSWORD,
    READY_TIMEOUT,
    TARGETS,
    TOKEN,
    ejabberd_only,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.campaign.figures import Figures
    from tests.harness.webapp import Mode
    from tests.integration.conftest import System

pytestmark = [pytest.mark.campaign, pytest.mark.integration]

USERS = scale(24, 150)
#: Fewer on ejabberd in the big run: every first read asks process_rosteritems, which scans
#: the rosters of all users (seconds per call at the full size on a busy machine), and each
#: account deleted afterwards costs a second or more.
EJABBERD_USERS = scale(24, 60)
CONTACTS = scale(8, 24)
#: sync.concurrency: few slots in the small run, so that few users are enough for a fault to
#: find some done, a slot's worth part way and others not begun; the default in the big one.
SYNC_SLOTS = scale(4, 16)
#: webapp.circuit_cooldown: once the web app is back, how soon the component asks it again.
CIRCUIT_COOLDOWN = 0.5
#: The longest a refresh may take, faults included, before it counts as hung.
REFRESH_LIMIT = scale(60, 600)
#: The web app's faults end before the server's store: one server is enough for them.
WEB_APP_TARGETS = SMALL_TARGETS if BIG else SMALL_TARGETS[:1]

#: A frozen server costs sync.xmpp_timeout per wave of syncs: one server in the small run.
FREEZE_TARGETS = tuple(t.id for t in TARGETS) if BIG else SMALL_TARGETS[:1]


@dataclass
class Crowd:
    """The population on a running system, and what the web app says at ``generation``."""

    system: System
    population: Population
    figures: Figures
    generation: int = 0
    url: str = ""  # the component's; the in-process one's unless set
    faults: int = 0  # injected so far

    @property
    def users(self) -> list[str]:
        return self.population.users

    def base_url(self) -> str:
        return self.url or self.system.url

    async def refresh(self) -> tuple[int, dict[str, Any]]:
        """POST every user's name to the refresh endpoint; the status and the answer."""
        async with (
            asyncio.timeout(REFRESH_LIMIT),
            self.system.http.post(
                f"{self.base_url()}/roster_admin/refresh",
                json=self.users,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=aiohttp.ClientTimeout(total=None),
            ) as response,
        ):
            return response.status, await response.json()

    def next_generation(self) -> None:
        self.generation += 1
        self.population.publish(self.system.webapp, self.generation)

    def fault_point(self, fetches: int | None = None) -> int:
        """The web app's request count at which to inject a fault into the next refresh:
        after ``fetches`` of its fetches, by default a quarter of the users beyond the slots."""
        if fetches is None:
            fetches = SYNC_SLOTS + len(self.users) // 4
        return len(self.system.webapp.requests) + fetches

    async def stored(self) -> dict[str, Roster]:
        return await stored_rosters(self.system.server, self.users)

    async def converge(self) -> None:
        """Refresh everyone: all succeed and every stored roster is the web app's."""
        status, body = await self.refresh()
        assert (status, body["updated"], body["failed"]) == (200, len(self.users), [])
        stored = await self.stored()
        wrong = [u for u in self.users if stored[u] != self.expected(u, self.generation)]
        assert not wrong, f"{len(wrong)} rosters are not the web app's: {wrong[:5]}"
        if self.faults:
            self.figures.add("rosters converged after the fault", len(self.users))

    def expected(self, user: str, generation: int) -> Roster:
        return self.population.expected(user, generation)

    async def check_after_fault(
        self, failed: set[str] | None, *, durable: bool = True
    ) -> dict[State, int]:
        """Every stored roster is before, after or part way with no contact lost; users the
        refresh reported done (all but ``failed``; None: no answer came) have the new one,
        unless the server was not ``durable`` (it lost writes it had acknowledged)."""
        stored = await self.stored()
        states: dict[State, int] = dict.fromkeys(State, 0)
        for user in self.users:
            before, after = (
                self.expected(user, self.generation - 1),
                self.expected(user, self.generation),
            )
            found = state(stored[user], before, after)
            states[found] += 1
            assert found is not State.BROKEN, f"{user}: {describe(stored[user], before, after)}"
            if failed is not None and user not in failed and found is not State.AFTER:
                assert not durable, f"{user} reported updated, but its roster is {found}"
                self.figures.add("users whose acknowledged writes the server lost")
        self.faults += 1
        self.figures.add("faults injected")
        self.figures.add("users checked after the fault", len(self.users))
        self.figures.add("rosters found part way", states[State.BETWEEN])
        if failed is not None:
            self.figures.add("failures reported", len(failed))
        return states


def reported_failures(status: int, body: dict[str, Any], users: int) -> set[str]:
    """The users the refresh's answer says failed, once its counts are checked to agree."""
    failed = set(body["failed"])
    assert body["errors"] == len(failed) == len(body["failed"])
    assert body["updated"] + body["errors"] == users
    assert status == (502 if failed and not body["updated"] else 200)
    return failed


@pytest.fixture(name="component_options")
def fixture_component_options() -> dict[str, dict[str, object]]:
    # The default xmpp_timeout, not the tests' 5 s: ejabberd's process_rosteritems (in every
    # read) slows with the rosters of all users, past 5 s in the big run on a busy machine.
    return {
        "sync": {"concurrency": SYNC_SLOTS, "xmpp_timeout": 10},
        "webapp": {"circuit_cooldown": CIRCUIT_COOLDOWN},
    }


@pytest.fixture(name="crowd")
async def fixture_crowd(system: System, figures: Figures) -> AsyncIterator[Crowd]:
    """The population registered, its rosters at generation 0 in the server."""
    size = EJABBERD_USERS if system.target.kind == "ejabberd" else USERS
    population = Population(size, CONTACTS, DOMAIN)
    await register(system.server, population.users, PASSWORD)
    crowd = Crowd(system, population, figures)
    try:
        population.publish(system.webapp, 0)
        await crowd.converge()
        yield crowd
    finally:
        if system.server.running:
            await unregister(system.server, population.users)


async def wait_ready(system: System) -> None:
    assert system.app is not None
    async with asyncio.timeout(READY_TIMEOUT):
        await system.app.readiness.wait_ready()


@pytest.mark.campaign_targets(*WEB_APP_TARGETS)
@pytest.mark.parametrize("fault", ["down", "slow", "error", "truncated", "cut_json"])
async def test_web_app_failing_mid_refresh(crowd: Crowd, fault: Mode) -> None:
    """The web app fails part way: exactly the users it answered get their new roster and
    the others keep theirs untouched, and the answer names the others."""
    webapp = crowd.system.webapp
    webapp.slow = 1.5  # the client gives up after 1 s
    crowd.next_generation()
    began = len(webapp.requests)
    refresh = asyncio.ensure_future(crowd.refresh())
    # A slot's worth of users left to fail: a slow web app costs each two timeouts.
    await webapp.wait_requests(crowd.fault_point(len(crowd.users) - SYNC_SLOTS))
    await webapp.set_mode(fault)
    status, body = await refresh
    failed = reported_failures(status, body, len(crowd.users))
    answered = {r.username for r in webapp.requests[began:] if r.answer == "ok"}
    assert failed == set(crowd.users) - answered
    assert failed, "the fault came too late"
    await webapp.set_mode("ok")
    await asyncio.sleep(CIRCUIT_COOLDOWN)  # the circuit may have opened: it probes after this
    states = await crowd.check_after_fault(failed)
    # A failed fetch changes nothing at all.
    assert states[State.AFTER] == len(answered)
    assert states[State.BEFORE] == len(failed)
    await crowd.converge()


async def test_xmpp_server_killed_mid_refresh(crowd: Crowd) -> None:
    """SIGKILL of the XMPP server part way: the refresh still answers, naming who failed;
    after the restart the next refresh repairs everyone, also what the server lost."""
    system = crowd.system
    crowd.next_generation()
    refresh = asyncio.ensure_future(crowd.refresh())
    await system.webapp.wait_requests(crowd.fault_point())
    await system.kill_server()
    status, body = await refresh
    failed = reported_failures(status, body, len(crowd.users))
    assert failed, "the fault came too late"
    await system.start_server()
    await wait_ready(system)
    # ejabberd's Mnesia may lose the last writes it acknowledged before the crash.
    await crowd.check_after_fault(failed, durable=system.target.kind == "prosody")
    await crowd.converge()


@pytest.mark.campaign_targets(*FREEZE_TARGETS)
async def test_xmpp_server_frozen_mid_refresh(
    crowd: Crowd, component_options: dict[str, dict[str, object]]
) -> None:
    """The XMPP server stops answering part way (SIGSTOP: its connections stay open): the
    refresh still answers once the answers are overdue, naming who failed; when the server
    runs again, with what it was sent meanwhile, the next refresh repairs everyone."""
    system = crowd.system
    # Every sync under way waits out sync.xmpp_timeout: a short one keeps the test short.
    await system.stop_component()
    timeout = scale(2, 10)  # the big run's ejabberd needs the default after the thaw
    options = {**component_options, "sync": {**component_options["sync"], "xmpp_timeout": timeout}}
    write_config(system.config_path, system.server, system.webapp, **options)
    await system.start_component()
    crowd.next_generation()
    refresh = asyncio.ensure_future(crowd.refresh())
    # A slot's worth of users left: each wave of syncs waits out the timeout.
    await system.webapp.wait_requests(crowd.fault_point(len(crowd.users) - SYNC_SLOTS))
    os.kill(system.server.pid, signal.SIGSTOP)
    try:
        status, body = await refresh
    finally:
        os.kill(system.server.pid, signal.SIGCONT)
    failed = reported_failures(status, body, len(crowd.users))
    assert failed, "the fault came too late"
    await wait_ready(system)
    await crowd.check_after_fault(failed)
    await crowd.converge()


async def test_component_killed_mid_refresh(
    crowd: Crowd, tmp_path: Path, component_options: dict[str, dict[str, object]]
) -> None:
    """SIGKILL of the component's process part way: the caller loses its connection, no
    roster loses a contact, and the restarted component's first refresh repairs everyone."""
    system = crowd.system
    await system.stop_component()
    (port,) = free_ports(1)
    options: dict[str, dict[str, object]] = {**component_options, "listener": {"port": port}}
    config = write_config(tmp_path / "process.toml", system.server, system.webapp, **options)
    component = ComponentProcess(config, tmp_path / "component.log", port)
    await component.start()
    crowd.url = component.url
    try:
        crowd.next_generation()
        refresh = asyncio.ensure_future(crowd.refresh())
        await system.webapp.wait_requests(crowd.fault_point())
        await component.kill()
        with pytest.raises(aiohttp.ClientError):
            await refresh
        await crowd.check_after_fault(None)
        await component.start()
        await crowd.converge()
    finally:
        await component.stop()


@ejabberd_only
async def test_admin_api_unreachable_mid_refresh(
    crowd: Crowd, component_options: dict[str, dict[str, object]]
) -> None:
    """ejabberd's admin API cut off part way (connections reset, new ones refused): the
    refresh names who failed; once it is back, the next refresh repairs everyone."""
    system = crowd.system
    assert isinstance(system.server, EjabberdServer)
    proxy = TcpProxy(system.server.api_port)
    await proxy.start()
    try:
        # The component reaches the API only through the proxy.
        await system.stop_component()
        api_url = f"http://127.0.0.1:{proxy.port}/api"
        options: dict[str, dict[str, object]] = {
            **component_options,
            "server": {"api_url": api_url},
        }
        write_config(system.config_path, system.server, system.webapp, **options)
        await system.start_component()
        crowd.next_generation()
        refresh = asyncio.ensure_future(crowd.refresh())
        await system.webapp.wait_requests(crowd.fault_point())
        await proxy.cut()
        status, body = await refresh
        failed = reported_failures(status, body, len(crowd.users))
        assert failed, "the fault came too late"
        await proxy.start()
        await wait_ready(system)
        await crowd.check_after_fault(failed)
        await crowd.converge()
    finally:
        await proxy.cut()
