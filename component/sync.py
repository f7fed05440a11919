"""Sync orchestration: make the server's copy of a user's roster equal the web app's.

The only module that knows the whole flow: fetch -> read the server's copy -> diff -> apply.
Each user has at most one sync in flight; the number of syncs at once is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

from component import metrics
from component.errors import StoreError
from component.roster import RosterDiff, diff
from component.webapp import FetchError

if TYPE_CHECKING:
    from collections.abc import Callable

    from component.roster import ParsedRoster, Roster
    from component.store import RosterStore

log = structlog.get_logger(__name__)


class Fetcher(Protocol):
    async def fetch(self, username: str, owner: str) -> ParsedRoster: ...


@dataclass(frozen=True, slots=True)
class SyncResult:
    """How one sync of one user ended."""

    username: str
    ok: bool
    roster: Roster | None = None  # what the server now stores, when known
    changes: RosterDiff = field(default_factory=lambda: RosterDiff((), ()))
    error: str | None = None


@dataclass(slots=True)
class _Outcome:
    ticket: int  # when the sync began, on the same counter as requests
    finished: float
    result: SyncResult


@dataclass(slots=True)
class _UserLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiters: int = 0


class Syncer:
    """Brings users' rosters in the server in line with the web app."""

    def __init__(  # noqa: PLR0913 -- the collaborators are the point of this class
        self,
        fetcher: Fetcher,
        store: RosterStore,
        domain: str,
        *,
        concurrency: int,
        max_age: float,
        on_change: Callable[[str, RosterDiff], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetcher = fetcher
        self._store = store
        self._domain = domain
        self._max_age = max_age
        self._on_change = on_change
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._locks: dict[str, _UserLock] = {}
        self._last: dict[str, _Outcome] = {}
        self._tickets = itertools.count()

    def user_jid(self, username: str) -> str:
        return f"{username}@{self._domain}"

    async def refresh(self, username: str) -> SyncResult:
        """Sync with a roster fetched after this call began (the web app said it changed)."""
        return await self._sync(username, max_age=None)

    async def ensure_fresh(self, username: str) -> SyncResult:
        """Sync unless a successful sync finished less than ``max_age`` seconds ago."""
        return await self._sync(username, max_age=self._max_age)

    async def current_roster(self, username: str) -> Roster:
        """The roster the server holds for the user now. Raises StoreError."""
        return await self._store.read(self.user_jid(username))

    async def _sync(self, username: str, *, max_age: float | None) -> SyncResult:
        requested = next(self._tickets)
        entry = self._locks.setdefault(username, _UserLock())
        entry.waiters += 1
        try:
            async with entry.lock:
                last = self._last.get(username)
                # A sync that began after we were asked saw every change we were told about.
                if last is not None and last.ticket > requested:
                    return last.result
                if (
                    max_age is not None
                    and last is not None
                    and last.result.ok
                    and self._clock() - last.finished <= max_age
                ):
                    return SyncResult(username, ok=True)
                started = next(self._tickets)
                async with self._slots:
                    result = await self._run(username)
                self._last[username] = _Outcome(started, self._clock(), result)
                return result
        finally:
            entry.waiters -= 1
            if entry.waiters == 0:
                del self._locks[username]

    async def _run(self, username: str) -> SyncResult:
        user = self.user_jid(username)
        bound = log.bind(user=user)
        began = time.perf_counter()
        try:
            with metrics.FETCH_SECONDS.time():
                parsed = await self._fetcher.fetch(username, user)
        except FetchError as exc:
            metrics.SYNCS.labels(result="fetch_failed").inc()
            bound.warning("sync.fetch_failed", reason=exc.reason)
            return SyncResult(username, ok=False, error=f"fetch failed: {exc.reason}")
        try:
            current = await self._store.read(user)
            changes = diff(current, parsed.roster)
            await self._apply(user, changes)
        except StoreError as exc:
            metrics.SYNCS.labels(result="store_failed").inc()
            bound.error("sync.store_failed", error=str(exc), condition=exc.condition)
            return SyncResult(username, ok=False, error=f"server store: {exc}")
        if changes and self._on_change is not None:
            self._on_change(user, changes)
        metrics.SYNCS.labels(result="ok").inc()
        metrics.ITEMS_WRITTEN.inc(len(changes.upserts))
        metrics.ITEMS_REMOVED.inc(len(changes.removals))
        bound.info(
            "sync.done",
            contacts=len(parsed.roster),
            upserts=len(changes.upserts),
            removals=len(changes.removals),
            warnings=len(parsed.warnings),
            duration_ms=round((time.perf_counter() - began) * 1000, 1),
        )
        return SyncResult(username, ok=True, roster=parsed.roster, changes=changes)

    async def _apply(self, user: str, changes: RosterDiff) -> None:
        for jid in changes.removals:
            await self._store.remove(user, jid)
        for contact in changes.upserts:
            await self._store.write(user, contact)
