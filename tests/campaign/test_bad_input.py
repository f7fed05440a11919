"""Bad input from the web app's side: a clear 4xx or a counted error, never a 500, never a
hang, never a roster changed by bad data (README, "The refresh endpoint")."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from component.roster import Contact
from tests.campaign.rig import DOMAIN, REFRESH, ROSTERS, Rig
from tests.campaign.strategies import (
    body_of,
    hostile_bytes,
    json_values,
    plain_usernames,
    rosters,
    usernames,
)

if TYPE_CHECKING:
    from tests.campaign.figures import Figures

pytestmark = pytest.mark.campaign

# Every answer comes within this, however bad the input (far above what any case needs).
ANSWER_WITHIN = 30.0
KEEP = {"keep@example.test": Contact("keep@example.test", "Keep", frozenset({"Old"}))}
KEEP_DATA = {"keep@example.test": {"name": "Keep", "groups": ["Old"]}}


async def answer(rig: Rig, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async with asyncio.timeout(ANSWER_WITHIN):
        status, reply = await rig.post(path, body)
    assert status in {200, 400, 413, 502}, (status, reply)
    if status == 400:
        assert reply["status"] == "error"
        assert reply["message"]
    return status, reply


async def seed(rig: Rig, users: list[str]) -> tuple[int, int]:
    """Give each user a stored roster (through the sync core, which then knows it); the
    store's reads and writes so far."""
    for user in users:
        assert (await rig.syncer.apply(user, KEEP_DATA)).ok
    return rig.store.reads, rig.store.writes


def assert_path_stays_in_its_segment(rig: Rig) -> None:
    """Whatever the username, the web app saw one path segment under /contacts/."""
    for request in rig.webapp.requests:
        segment = request.raw_path.removeprefix("/contacts/")
        assert request.raw_path.startswith("/contacts/")
        assert not set("/?#") & set(segment), request.raw_path
        assert segment not in {".", ".."}
        assert urllib.parse.unquote(segment) == request.username


@given(body=hostile_bytes | json_values.map(body_of))
async def test_refresh_bodies_that_are_not_usernames_change_nothing(
    rig: Rig, figures: Figures, body: bytes
) -> None:
    """Not JSON, invalid UTF-8, deep nesting, wrong types: 400 (or counts), nothing changed."""
    figures.add("cases")
    rig.webapp.requests.clear()
    before = await seed(rig, ["alice"])
    status, reply = await answer(rig, REFRESH, body)
    if status == 400:
        assert rig.webapp.requests == []
        assert (rig.store.reads, rig.store.writes) == before
    else:
        assert reply["updated"] + reply["errors"] == len(rig.webapp.requests)
    assert_path_stays_in_its_segment(rig)


@given(names=st.lists(usernames, max_size=12))
async def test_refresh_of_any_usernames_is_refused_or_counted(
    rig: Rig, figures: Figures, names: list[str]
) -> None:
    """Duplicates, `/ ? # % ..`, unicode: 400 with nothing done, or each distinct user synced
    once, in its own path segment."""
    figures.add("cases")
    rig.webapp.requests.clear()
    before = await seed(rig, ["alice"])
    status, reply = await answer(rig, REFRESH, body_of(names))
    if status == 400:
        assert rig.webapp.requests == []
        assert (rig.store.reads, rig.store.writes) == before
        return
    fetched = [r.username for r in rig.webapp.requests]
    assert len(fetched) == len(set(fetched)) == reply["updated"]
    assert (status, reply["errors"]) == (200, 0)
    assert_path_stays_in_its_segment(rig)


@given(names=st.lists(plain_usernames, max_size=12))
async def test_refresh_of_plain_usernames_syncs_each_once(
    rig: Rig, figures: Figures, names: list[str]
) -> None:
    """Valid, repeated usernames: each is fetched once and counted once."""
    figures.add("cases")
    rig.webapp.requests.clear()
    status, reply = await answer(rig, REFRESH, body_of(names))
    assert status == 200
    assert sorted(r.username for r in rig.webapp.requests) == sorted(set(names))
    assert (reply["updated"], reply["errors"]) == (len(set(names)), 0)


@st.composite
def bulk_bodies(draw: st.DrawFn) -> tuple[dict[str, object], dict[str, dict[str, Contact] | None]]:
    """A bulk body of distinct plain users; per user the roster to store (None: not a roster,
    the user fails and keeps the roster it had)."""
    users = draw(st.lists(plain_usernames, unique=True, max_size=6))
    body: dict[str, object] = {}
    expected: dict[str, dict[str, Contact] | None] = {}
    for user in users:
        if draw(st.booleans()):
            case = draw(rosters(f"{user}@{DOMAIN}"))
            body[user], expected[user] = case.data, case.expected
        else:
            value = draw(json_values)
            body[user] = value
            expected[user] = {} if value in ([], {}) else None
            if isinstance(value, dict) and value:
                # Arbitrary keys and values: which survive is the parser's to say; only that
                # nothing fails, or it fails as a whole, is checked.
                expected[user] = {"?": Contact("?")}
    return body, expected


@given(case=bulk_bodies())
async def test_bulk_rosters_store_only_what_is_valid(
    rig: Rig, figures: Figures, case: tuple[dict[str, object], dict[str, Any]]
) -> None:
    """Each user's roster: bad keys, the user's own JID and wrong-typed entries are skipped; a
    value that is not a roster fails that user alone, whose stored roster stays as it was."""
    figures.add("cases")
    body, expected = case
    await seed(rig, list(body))
    status, reply = await answer(rig, ROSTERS, body_of(body))
    failed = sorted(user for user, roster in expected.items() if roster is None)
    assert status == (502 if failed and len(failed) == len(body) else 200), reply
    assert reply["failed"] == failed
    for user, roster in expected.items():
        if roster is None:
            assert rig.stored(user) == KEEP
        elif "?" not in roster:
            assert rig.stored(user) == roster


@given(body=hostile_bytes | json_values.map(body_of) | st.lists(usernames).map(body_of))
async def test_bulk_bodies_that_are_not_rosters_by_user_change_nothing(
    rig: Rig, figures: Figures, body: bytes
) -> None:
    """Not an object of usernames: 400 and nothing read or written."""
    figures.add("cases")
    rig.webapp.requests.clear()
    before = await seed(rig, ["alice"])
    status, _ = await answer(rig, ROSTERS, body)
    if status == 400:
        assert (rig.store.reads, rig.store.writes) == before
    assert rig.webapp.requests == []


@given(size=st.integers(1, 4_000_000))
async def test_huge_bodies_are_refused_before_parsing(
    rig: Rig, figures: Figures, size: int
) -> None:
    """Over the limit: 413, nothing done; under it, an ordinary answer."""
    figures.add("cases")
    rig.webapp.requests.clear()
    body = json.dumps(["a" * size]).encode()
    status, _ = await answer(rig, REFRESH, body)
    limit = 1_048_576
    assert (status == 413) == (len(body) > limit)
    if status == 413:
        assert rig.webapp.requests == []
