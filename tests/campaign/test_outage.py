"""Fail fast when the web app is clearly down: a refresh of every user answers in seconds,
each user counted as an error, no roster touched; the component notices by itself when the
web app is back (the circuit breaker, component/breaker.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import pytest
import stamina

from tests.campaign.conftest import scale
from tests.campaign.rig import REFRESH, running_rig

if TYPE_CHECKING:
    from tests.campaign.figures import Figures
    from tests.harness.webapp import Mode

pytestmark = pytest.mark.campaign

USERS = scale(1_000, 10_000)
TIMEOUT = 2.0  # the web app's per-request timeout here (10 s by default)
# While a probe is out, fetches wait for it: a refresh that fails fast within one cooldown
# (the default is 5 s) is not held up by probes.
COOLDOWN = 2.0
# Far above what is needed (one timeout, one backoff wait): a slow machine must not fail it.
ANSWER_BOUND = 60.0


@pytest.mark.parametrize("outage", ["down", "hang"], ids=["refused", "black-holed"])
async def test_a_refresh_of_every_user_during_an_outage_answers_in_seconds(
    figures: Figures, outage: Mode
) -> None:
    """Every user is an error saying the web app is down, stored rosters are untouched, and
    once the web app answers again the next refresh works, without a restart."""
    settings = {"timeout": TIMEOUT, "attempts": 3, "circuit_cooldown": COOLDOWN}
    async with running_rig(webapp=settings) as rig:
        names = [f"user{i}" for i in range(USERS)]
        keep = {"keep@example.test": {"name": "Keep"}}
        assert (await rig.syncer.apply("user0", keep)).ok
        before = rig.stored("user0")
        await rig.webapp.set_mode(outage)
        # Real backoff waits between attempts: they are part of the time to answer.
        with stamina.set_testing(False):
            began = time.perf_counter()
            status, reply = await rig.post(REFRESH, json.dumps(names).encode())
            took = time.perf_counter() - began
            single = await rig.get(f"{REFRESH}/user1")
        figures.set("users", USERS)
        figures.set("web app timeout (s)", TIMEOUT)
        figures.set("answered in (s)", round(took, 2))
        figures.set("web app requests", len(rig.webapp.requests))
        assert took < ANSWER_BOUND
        assert (status, reply["updated"], reply["errors"]) == (502, 0, USERS)
        assert single[0] == 502
        assert str(single[1]["message"]).startswith("fetch failed: web app down")
        assert rig.stored("user0") == before
        # Requests that went out before the circuit opened, and their retries: a handful.
        assert len(rig.webapp.requests) < 100

        await rig.webapp.set_mode("ok")
        began = time.perf_counter()
        await asyncio.sleep(COOLDOWN)
        status, reply = await rig.post(REFRESH, json.dumps(names[:50]).encode())
        figures.set("recovered after (s)", round(time.perf_counter() - began, 2))
        assert (status, reply["updated"], reply["errors"]) == (200, 50, 0)
