"""Load: many refresh requests at once, naming overlapping users, through the real listener,
sync core and web-app client: right counts, bounded memory, bounded concurrency towards the
web app (sync.concurrency) and the server (sync.write_window)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import tracemalloc
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from component.roster import Contact
from tests.campaign.conftest import scale
from tests.campaign.rig import DOMAIN, REFRESH, running_rig

if TYPE_CHECKING:
    from tests.campaign.figures import Figures
    from tests.harness.webapp import Handler

pytestmark = pytest.mark.campaign

REQUESTS = scale(100, 1_000)
POOL = scale(200, 2_000)  # users the requests draw from: each is named about 5 times
PER_REQUEST = 10
CONTACTS = 5
CONCURRENCY = 16
WRITE_WINDOW = 64
# Generous: what 1,000 requests of 10 users really take is printed in the figures.
MEMORY_BOUND_MIB = 200


def contacts_of(user: str) -> dict[str, Contact]:
    """The roster the web app holds for ``user``: the next users of the pool."""
    n = int(user.removeprefix("u"))
    jids = [f"u{(n + i) % POOL}@{DOMAIN}" for i in range(1, CONTACTS + 1)]
    return {jid: Contact(jid, jid.upper(), frozenset({"Load"})) for jid in jids}


def slow_answer(user: str) -> Handler:
    """The user's roster after a moment, so that requests overlap at the web app."""

    async def answer(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.002)
        roster = {
            c.jid: {"name": c.name, "groups": sorted(c.groups)} for c in contacts_of(user).values()
        }
        return web.json_response(roster)

    return answer


async def test_many_refreshes_at_once(figures: Figures) -> None:
    """1,000 requests of 10 users at once (100 in the small run): each gets its users
    counted, every roster ends right, and the web app and the server never see more at once
    than the configured bounds."""
    rng = random.Random(8)  # noqa: S311 -- the same users every run, not a secret
    bodies = [rng.sample(range(POOL), PER_REQUEST) for _ in range(REQUESTS)]
    # The web app shares this process's event loop with everything else here: a timeout
    # fit for a web app of its own would fire for the loop's own queue.
    settings = {"timeout": 60.0}
    async with running_rig(
        webapp=settings, concurrency=CONCURRENCY, write_window=WRITE_WINDOW
    ) as rig:
        rig.store.write_delay = 0.001
        for n in range(POOL):
            rig.webapp.handlers[f"u{n}"] = slow_answer(f"u{n}")
        tracemalloc.start()
        began = time.perf_counter()
        try:
            replies = await asyncio.gather(
                *(
                    rig.post(REFRESH, json.dumps([f"u{n}" for n in body]).encode())
                    for body in bodies
                )
            )
            took = time.perf_counter() - began
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        figures.set("requests at once", REQUESTS)
        figures.set("user refreshes", REQUESTS * PER_REQUEST)
        figures.set("answered in (s)", round(took, 2))
        figures.set("web app requests", len(rig.webapp.requests))
        figures.set("web app peak in flight", rig.webapp.peak_in_flight)
        figures.set("server writes peak in flight", rig.store.peak_in_flight)
        figures.set("server requests peak in flight", rig.store.peak_requests)
        figures.set("peak Python memory (MiB)", round(peak / 2**20, 1))

        assert all(status == 200 for status, _ in replies)
        assert all((r["updated"], r["errors"]) == (PER_REQUEST, 0) for _, r in replies)
        named = {n for body in bodies for n in body}
        assert all(rig.stored(f"u{n}") == contacts_of(f"u{n}") for n in named)
        assert rig.webapp.peak_in_flight <= CONCURRENCY
        assert rig.store.peak_in_flight <= WRITE_WINDOW
        assert rig.store.peak_requests <= CONCURRENCY + WRITE_WINDOW
        assert peak < MEMORY_BOUND_MIB * 2**20
