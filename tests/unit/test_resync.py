"""The pass after the XMPP link comes back: each user online once, few at a time, spread."""

from __future__ import annotations

import asyncio

import pytest

from component.resync import Resync

SPREAD = 0.4


class Syncs:
    """Records each sync's start (loop time) and how many ran at once."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.running = 0
        self.peak = 0
        self.ready = True
        self.duration = 0.08

    async def __call__(self, username: str) -> None:
        assert username not in self.started, f"{username} synced twice"
        self.started[username] = asyncio.get_running_loop().time()
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.duration)
        finally:
            self.running -= 1


@pytest.fixture(name="syncs")
def fixture_syncs() -> Syncs:
    return Syncs()


@pytest.fixture(name="resync")
def fixture_resync(syncs: Syncs) -> Resync:
    return Resync(syncs, spread=SPREAD, slots=2)


async def test_users_online_at_recovery_are_synced_once_spread_and_bounded(
    syncs: Syncs, resync: Resync
) -> None:
    """Collected while the link was down: one sync each (a presence twice counts once), at
    most `slots` at once, the starts spread over the period."""
    users = [f"u{i}" for i in range(8)]
    for user in [*users, "u0", "u3"]:
        assert resync.offer(user)
    began = asyncio.get_running_loop().time()
    await resync.run(lambda: syncs.ready)
    assert sorted(syncs.started) == users
    assert syncs.peak <= 2
    starts = sorted(t - began for t in syncs.started.values())
    assert starts[0] < SPREAD / 2  # at once (bound loose for a busy machine)
    assert starts[-1] >= SPREAD * 7 / 8 * 0.9


async def test_users_coming_online_during_the_pass_join_it(syncs: Syncs, resync: Resync) -> None:
    """Clients logging back in while the pass runs are paced with the rest; once the window
    has closed, a login is no longer the pass's."""
    resync.offer("early")
    run = asyncio.create_task(resync.run(lambda: syncs.ready))
    await asyncio.sleep(SPREAD / 2)
    assert resync.offer("late")
    await run
    assert sorted(syncs.started) == ["early", "late"]
    assert not resync.offer("after")


async def test_users_synced_by_their_own_request_are_left_out(syncs: Syncs, resync: Resync) -> None:
    """A user whose roster request already synced them after the link came back."""
    resync.offer("alice")
    resync.offer("bob")
    resync.synced("bob")
    resync.offer("bob")  # the presence that follows the roster request
    await resync.run(lambda: syncs.ready)
    assert list(syncs.started) == ["alice"]


async def test_a_link_lost_again_stops_the_pass_and_the_next_one_starts_afresh(
    syncs: Syncs, resync: Resync
) -> None:
    """No sync starts once not ready; after hold() the users come again with their presence."""
    for user in ("a", "b", "c", "d"):
        resync.offer(user)
    run = asyncio.create_task(resync.run(lambda: syncs.ready))
    await asyncio.sleep(SPREAD / 3)
    syncs.ready = False
    resync.hold()
    await run
    first = set(syncs.started)
    assert first < {"a", "b", "c", "d"}

    syncs.ready = True
    syncs.started.clear()
    resync.offer("c")
    await resync.run(lambda: syncs.ready)
    assert list(syncs.started) == ["c"]


async def test_a_link_lost_and_back_while_the_last_syncs_finish_gets_its_pass(
    syncs: Syncs, resync: Resync
) -> None:
    """Ready again before the pass has ended: the users of the new recovery are still synced."""
    syncs.duration = 2 * SPREAD
    resync.offer("a")
    run = asyncio.create_task(resync.run(lambda: syncs.ready))
    await asyncio.sleep(1.25 * SPREAD)  # the window has closed; a's sync is finishing
    assert not resync.offer("late")
    resync.hold()
    assert resync.offer("b")
    await run
    assert sorted(syncs.started) == ["a", "b"]
