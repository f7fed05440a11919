"""Bad answers from the web app: a refresh counts the user as an error and leaves the stored
roster exactly as it was, or stores exactly the valid part of a roster; never a 500, never a
hang (README, "The web app's side")."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from component.roster import Contact
from tests.campaign.rig import DOMAIN, REFRESH, Rig, running_rig
from tests.campaign.strategies import body_of, hostile_bytes, json_values, rosters

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.campaign.figures import Figures

pytestmark = pytest.mark.campaign

USER = "alice"
OWNER = f"{USER}@{DOMAIN}"
TIMEOUT = 0.5
MAX_BYTES = 1_048_576
KEEP = {"keep@example.test": {"name": "Keep"}}
Delivery = Literal["whole", "drip", "slow_drip", "truncated"]
# Unknown: a JSON object of arbitrary keys; which entries survive is the parser's to say.
UNKNOWN: Literal["unknown"] = "unknown"
DELIVERY_FAULTS: tuple[Delivery, ...] = ("drip", "slow_drip", "truncated")


@dataclass(frozen=True)
class Answer:
    """How the web app answers, and what must be stored from it (None: nothing changes)."""

    status: int
    body: bytes
    delivery: Delivery
    expected: dict[str, Contact] | Literal["unknown"] | None

    async def send(self, request: web.Request) -> web.StreamResponse:
        if self.delivery == "whole":
            return web.Response(status=self.status, body=self.body or None)
        response = web.StreamResponse(status=self.status)
        if self.delivery == "truncated":
            response.content_length = len(self.body) + 10
            await response.prepare(request)
            await response.write(self.body[: len(self.body) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        pause = TIMEOUT * 1.5 / 3 if self.delivery == "slow_drip" else 0.001
        await response.prepare(request)
        third = len(self.body) // 3 + 1
        for start in range(0, len(self.body), third):
            await response.write(self.body[start : start + third])
            await asyncio.sleep(pause)
        await response.write_eof()
        return response


def expected_from(body: bytes) -> dict[str, Contact] | Literal["unknown"] | None:
    """A 200 whose body is not a JSON object or exactly [] fails; an object of arbitrary
    keys stores whatever of it is valid."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if data == []:
        return {}
    return UNKNOWN if isinstance(data, dict) else None


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    # Weighted by repetition: slow and huge answers are the costly ones.
    kinds = ["roster"] * 4 + ["garbage"] * 4 + ["status"] * 2 + ["delivery", "huge"]
    kind = draw(st.sampled_from(kinds))
    if kind == "roster":
        case = draw(rosters(OWNER))
        return Answer(200, body_of(case.data), "whole", case.expected)
    if kind == "garbage":
        body = draw(hostile_bytes | json_values.map(body_of))
        return Answer(200, body, "whole", expected_from(body))
    if kind == "status":
        status = draw(
            st.sampled_from(
                [201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 501, 502, 503, 504]
            )
        )
        case = draw(rosters(OWNER))
        body = b"" if status in {204, 304} else body_of(case.data)
        return Answer(status, body, "whole", None)
    case = draw(rosters(OWNER))
    if kind == "delivery":
        delivery = draw(st.sampled_from(DELIVERY_FAULTS))
        ok = delivery == "drip"
        return Answer(200, body_of(case.data), delivery, case.expected if ok else None)
    # Huge: thousands of contacts, over the size limit or not.
    count = draw(st.sampled_from([2_000, 10_000, 30_000]))  # 30,000: over MAX_BYTES
    roster = {f"c{i}@example.test": {"name": f"Contact number {i}"} for i in range(count)}
    body = body_of(roster)
    expected = {jid: Contact(jid, str(v["name"])) for jid, v in roster.items()}
    return Answer(200, body, "whole", expected if len(body) <= MAX_BYTES else None)


@pytest.fixture(name="answer_rig")
async def fixture_answer_rig() -> AsyncIterator[Rig]:
    """One attempt per fetch and a short timeout (slow answers fail fast); the circuit never
    opens, so that each answer is judged alone."""
    settings = {
        "timeout": TIMEOUT,
        "attempts": 1,
        "max_bytes": MAX_BYTES,
        "circuit_failures": 10**9,
    }
    async with running_rig(webapp=settings) as rig:
        yield rig


@given(answer=answers())
async def test_a_bad_answer_changes_nothing_and_is_counted(
    answer_rig: Rig, figures: Figures, answer: Answer
) -> None:
    """Not JSON, not an object, any status but 200, slow, cut short, too large: the user is an
    error and keeps the stored roster; a roster with bad entries stores exactly its valid
    ones (no invalid JID, no self-contact, no wrong-typed value)."""
    figures.add("cases")
    rig = answer_rig
    assert (await rig.syncer.apply(USER, KEEP)).ok
    before = rig.stored(USER)
    rig.webapp.handlers[USER] = answer.send
    async with asyncio.timeout(30):
        status, reply = await rig.post(REFRESH, json.dumps([USER]).encode())
    stored = rig.stored(USER)
    if answer.expected is None:
        assert (status, reply["errors"], reply["failed"]) == (502, 1, [USER])
        assert stored == before
    else:
        assert (status, reply["updated"]) == (200, 1), reply
        if answer.expected != UNKNOWN:
            assert stored == answer.expected
        assert OWNER not in stored
