"""After the XMPP server restarts: the users online get the rosters changed meanwhile, and
the web app sees one paced request per user, not a storm."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import USERS, System, eventually, item, jid, write_config

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tests.harness.xmpp_client import TestClient

pytestmark = pytest.mark.integration

SPREAD = 3.0
PAIRS_BEFORE = {"alice": "bob", "bob": "alice", "carol": "dave", "dave": "carol"}
PAIRS_AFTER = {"alice": "carol", "carol": "alice", "bob": "dave", "dave": "bob"}


def set_rosters(system: System, pairs: Mapping[str, str]) -> None:
    for user, contact in pairs.items():
        system.set_roster(user, {jid(contact): {"name": contact.title()}})


async def roster_is(client: TestClient, wanted: Mapping[str, object]) -> bool:
    return dict(await client.get_roster()) == wanted


async def test_after_a_server_restart_online_users_get_rosters_changed_meanwhile(
    system: System,
) -> None:
    """The server restarts while rosters change (refreshes would get 503); as users come
    back online the component re-syncs each once, one at a time, spread over the period."""
    await system.stop_component()
    # Four sync slots: the re-sync gets one. max_age keeps roster requests from fetching.
    write_config(
        system.config_path, system.server, system.webapp,
        sync={"concurrency": 4, "resync_spread": SPREAD, "max_age": 60},
    )  # fmt: skip
    app = await system.start_component()
    set_rosters(system, PAIRS_BEFORE)
    assert (await system.refresh(list(USERS)))[1]["updated"] == len(USERS)

    async with contextlib.AsyncExitStack() as clients:
        for user in USERS:
            client = await clients.enter_async_context(system.client(user))
            await client.send_presence()
        await system.stop_server()
    await eventually(lambda: not app.readiness.ready)
    set_rosters(system, PAIRS_AFTER)
    system.webapp.requests.clear()
    system.webapp.peak_in_flight = 0
    system.webapp.delay = 0.2

    # Clients log back in at once, before or after the component is back: their presence
    # reaches it either way (the server replays it when the component connects).
    await system.start_server()
    async with contextlib.AsyncExitStack() as clients:
        online = await asyncio.gather(
            *(clients.enter_async_context(system.client(user)) for user in USERS)
        )
        await asyncio.gather(*(client.send_presence() for client in online))
        # The pass alone fetches (a roster request would sync a user it has not reached).
        await eventually(lambda: len(system.webapp.requests) == len(USERS), within=SPREAD + 15)
        for user, client in zip(USERS, online, strict=True):
            wanted = {jid(PAIRS_AFTER[user]): item(PAIRS_AFTER[user].title())}
            await eventually(functools.partial(roster_is, client, wanted))

    fetched = sorted(r.username for r in system.webapp.requests)
    assert fetched == sorted(USERS)
    assert system.webapp.peak_in_flight == 1
    times = [r.at for r in system.webapp.requests]
    assert max(times) - min(times) >= SPREAD / 2
