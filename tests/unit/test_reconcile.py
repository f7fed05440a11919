"""Periodic reconciliation: every online user once per interval, spread out, few at a time."""

from __future__ import annotations

import asyncio

import pytest

from component.reconcile import Reconciler
from component.sync import SyncResult

INTERVAL = 0.4


class Users:
    """Who is online, changeable by the test."""

    def __init__(self, *names: str) -> None:
        self.online = set(names)
        self.ready = True

    def online_users(self, since: float | None = None) -> list[str]:
        del since
        return list(self.online)

    def is_online(self, username: str, since: float | None = None) -> bool:
        del since
        return username in self.online


class RecordingSyncer:
    """Records when each reconciliation starts and how many run at once."""

    def __init__(self, duration: float = 0.0) -> None:
        self.started: list[tuple[str, float]] = []
        self.running = 0
        self.peak = 0
        self.duration = duration
        self.fail = False

    async def reconcile(self, username: str) -> SyncResult:
        self.started.append((username, asyncio.get_running_loop().time()))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.duration)
            if self.fail:
                raise RuntimeError("a bug")
        finally:
            self.running -= 1
        return SyncResult(username, ok=True)


async def run_for(reconciler: Reconciler, seconds: float) -> None:
    task = asyncio.create_task(reconciler.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_each_online_user_is_reconciled_once_per_interval() -> None:
    """After one interval, a pass syncs every online user once, starts spread evenly."""
    syncer, users = RecordingSyncer(), Users("a", "b", "c", "d")
    await run_for(Reconciler(syncer, users, users, interval=INTERVAL, slots=2), INTERVAL * 1.9)
    assert [name for name, _ in syncer.started] == ["a", "b", "c", "d"]
    # Delays only push starts later: the n-th never comes before n quarters of the interval.
    first = syncer.started[0][1]
    for index, (_, at) in enumerate(syncer.started):
        assert at - first >= index * INTERVAL / 4 - 0.001


async def test_reconciliation_takes_at_most_its_slots() -> None:
    """Slow syncs never run more than `slots` at once."""
    syncer, users = RecordingSyncer(duration=INTERVAL), Users(*"abcdefgh")
    await run_for(Reconciler(syncer, users, users, interval=INTERVAL / 4, slots=2), INTERVAL * 2)
    assert syncer.peak == 2
    assert len(syncer.started) >= 4


async def test_users_gone_offline_or_a_lost_link_are_skipped() -> None:
    """No sync for a user who left before their turn, nor while the link is down."""
    users = Users("a", "b", "c", "d")

    class Leaving(RecordingSyncer):
        async def reconcile(self, username: str) -> SyncResult:
            if username == "a":
                users.online.discard("c")
            if username == "b":
                users.ready = False
            return await super().reconcile(username)

    syncer = Leaving()
    await run_for(Reconciler(syncer, users, users, interval=INTERVAL / 2, slots=1), INTERVAL * 2)
    assert [name for name, _ in syncer.started] == ["a", "b"]


async def test_a_failing_sync_does_not_stop_reconciliation() -> None:
    """A bug in one user's sync is logged; the pass and the next ones go on."""
    syncer, users = RecordingSyncer(), Users("a", "b")
    syncer.fail = True
    await run_for(Reconciler(syncer, users, users, interval=INTERVAL / 2, slots=1), INTERVAL * 1.9)
    assert len(syncer.started) >= 4
