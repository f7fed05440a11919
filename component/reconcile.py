"""Periodic reconciliation: re-sync every online user, so that drift does not last.

Whatever changes a roster behind the web app's back (an admin's edit, a stanza the server's
rules let through) is put back at the user's next sync; online users may not have one for
hours, so each of them is re-synced once per interval. The passes are spread evenly over the
interval and take only a few sync slots, so that refreshes and logins are never starved.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from component.sync import SyncResult

log = structlog.get_logger(__name__)


class Reconcilable(Protocol):
    async def reconcile(self, username: str) -> SyncResult: ...


class OnlineUsers(Protocol):
    """Who is online, as the XMPP link reports it (and who was, after ``since``)."""

    def online_users(self, since: float | None = None) -> list[str]: ...

    def is_online(self, username: str, since: float | None = None) -> bool: ...


class Ready(Protocol):
    @property
    def ready(self) -> bool: ...


class Reconciler:
    """Runs passes over the online users, one every ``interval`` seconds."""

    def __init__(
        self,
        syncer: Reconcilable,
        users: OnlineUsers,
        readiness: Ready,
        *,
        interval: float,
        slots: int,
    ) -> None:
        self._syncer = syncer
        self._users = users
        self._readiness = readiness
        self._interval = interval
        self._slots = slots

    async def run(self) -> None:
        """Pass after pass until cancelled; the first starts one interval after the start,
        since every user coming online is synced then anyway."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            began = loop.time()
            # Also those who seemed to leave during the last interval: a server may report a
            # subscription change as a user going offline, and that is just when drift appears.
            since = time.monotonic() - self._interval
            users = sorted(self._users.online_users(since)) if self._readiness.ready else []
            if users:
                await self._pass(users, since)
                log.info(
                    "reconcile.done",
                    users=len(users),
                    duration_s=round(loop.time() - began, 1),
                )

    async def _pass(self, users: list[str], since: float) -> None:
        """Sync each user once, starts spaced evenly over one interval, few at a time."""
        loop = asyncio.get_running_loop()
        spacing = self._interval / len(users)
        began = loop.time()
        slots = asyncio.Semaphore(self._slots)
        tasks: set[asyncio.Task[None]] = set()
        try:
            for index, username in enumerate(users):
                await asyncio.sleep(max(0.0, began + index * spacing - loop.time()))
                await slots.acquire()
                # Gone offline or link lost while we waited: the next login syncs them.
                if not (self._readiness.ready and self._users.is_online(username, since)):
                    slots.release()
                    continue
                task = asyncio.create_task(self._one(username, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _one(self, username: str, slots: asyncio.Semaphore) -> None:
        # A failed sync is logged by the sync itself; the next pass tries again.
        try:
            await self._syncer.reconcile(username)
        except Exception:  # a bug in one user's sync must not end reconciliation for all
            log.exception("reconcile.failed", username=username)
        finally:
            slots.release()
