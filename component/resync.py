"""After the XMPP link comes back: re-sync the users online, once each, paced.

While the link is down, refreshes get 503 (and web apps written for mod_http_roster_admin do
not retry), so rosters may have changed unseen. When the link is back, the server replays
every online user's presence at once and clients that lost their session log in again: one
sync per presence as it arrives would be a storm of requests on the web app. So from the
moment the link goes down (and at start) until ``spread`` seconds after the service is ready
again, users coming online are collected into one pass instead. The pass refreshes each of them
once, at most ``slots`` at a time, consecutive starts ``spread / n`` seconds apart at least,
``n`` the users known so far: users who come online together are spread over the period
(and users who come online during the pass join it). Users synced otherwise since
the link came back (their own roster request) are left out. Outside the window, a login is
synced at once, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = structlog.get_logger(__name__)


class Resync:
    """Collects users coming online during recovery and syncs them in one paced pass."""

    def __init__(
        self, sync: Callable[[str], Awaitable[object]], *, spread: float, slots: int
    ) -> None:
        self._sync = sync
        self._spread = spread
        self._slots = slots
        self._collecting = True  # the first connection replays every presence too
        self._queue: dict[str, None] = {}  # users waiting for the pass, in arrival order
        self._synced: set[str] = set()  # users synced since the link came back
        self._arrived = asyncio.Event()

    def hold(self) -> None:
        """The link is down: users coming online wait for the next pass (the server replays
        the online users' presence when the link is back, so the queue starts afresh)."""
        self._collecting = True
        self._queue.clear()
        self._synced.clear()

    def offer(self, username: str) -> bool:
        """Take a user coming online into the pass; False outside the recovery window."""
        if not self._collecting:
            return False
        if username not in self._synced:
            self._queue[username] = None
            self._arrived.set()
        return True

    def synced(self, username: str) -> None:
        """The user was synced by other means since the link came back: no pass for them."""
        if self._collecting:
            self._synced.add(username)
            self._queue.pop(username, None)

    async def run(self, ready: Callable[[], bool]) -> None:
        """A pass, from the moment the service is ready; it ends early if ``ready()`` stops
        holding (the next ready starts another), and goes round again if the link was lost
        and is back while its last syncs were finishing."""
        while True:
            await self._pass(ready)
            if not (ready() and self._collecting):
                return

    async def _pass(self, ready: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._spread
        last: float | None = None  # when the latest sync started
        slots = asyncio.Semaphore(self._slots)
        running: set[asyncio.Task[None]] = set()
        started = 0
        while ready() and (self._queue or loop.time() < deadline):
            if not self._queue:
                # Wait for someone to come online, until the window closes.
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._arrived.wait()
                continue
            username = next(iter(self._queue))
            # Starts at least spread/n apart, n the users known so far: those who come online
            # together (a replay, clients logging back in) are spread over the period.
            if last is not None:
                gap = self._spread / (started + len(self._queue))
                await asyncio.sleep(max(0.0, last + gap - loop.time()))
            await slots.acquire()
            # Meanwhile the link may have gone, or the user been synced by a roster request.
            if not ready() or username not in self._queue:
                slots.release()
                continue
            del self._queue[username]
            self._synced.add(username)
            task = asyncio.create_task(self._one(username, slots))
            running.add(task)
            task.add_done_callback(running.discard)
            started += 1
            last = loop.time()
        if ready():
            self._collecting = False
        if running:
            await asyncio.gather(*running)
        log.info("resync.done", users=started, complete=ready())

    async def _one(self, username: str, slots: asyncio.Semaphore) -> None:
        # A failed sync is logged by the sync itself; the user's next login tries again.
        try:
            await self._sync(username)
        except Exception:  # one user's bug must not end the pass for the others
            log.exception("resync.failed", username=username)
        finally:
            slots.release()
