"""The server's roster store in memory: a fake RosterStore for tests without a server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from component.errors import StoreError
from component.roster import Contact, StoredRoster

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


class MemoryStore:
    """The server's roster store, in memory, counting requests and how many were at once."""

    def __init__(self) -> None:
        self.rosters: dict[str, dict[str, Contact]] = {}
        self.writes = 0
        self.fail_writes_after: int | None = None
        self.refused: dict[str, StoreError] = {}  # contact JID -> what the server answers
        # (user, added, removed) for each presence announcement; fails when set.
        self.announced: list[tuple[str, list[str], list[str]]] = []
        self.announce_error: StoreError | None = None
        self.pending: dict[str, frozenset[str]] = {}  # user -> pending inbound requests
        self.reads = 0
        self.in_flight = 0  # writes and removals
        self.peak_in_flight = 0
        self.requests_in_flight = 0  # every request: reads, writes, announcements...
        self.peak_requests = 0
        self.write_delay = 0.0

    def problem(self) -> str | None:
        return None

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @contextlib.contextmanager
    def _request(self, *, write: bool = False) -> Iterator[None]:
        self.requests_in_flight += 1
        self.peak_requests = max(self.peak_requests, self.requests_in_flight)
        self.in_flight += write
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.requests_in_flight -= 1
            self.in_flight -= write

    async def read(self, user: str) -> StoredRoster:
        with self._request():
            await asyncio.sleep(0)
        self.reads += 1
        return StoredRoster(dict(self.rosters.get(user, {})), self.pending.get(user, frozenset()))

    async def clear_pending(self, user: str, jids: Sequence[str]) -> None:
        self.pending[user] = self.pending.get(user, frozenset()) - set(jids)

    async def write(self, user: str, contact: Contact) -> None:
        with self._request(write=True):
            await asyncio.sleep(self.write_delay)
        if self.fail_writes_after is not None and self.writes >= self.fail_writes_after:
            raise StoreError("server said no")
        if contact.jid in self.refused:
            raise self.refused[contact.jid]
        self.writes += 1
        self.rosters.setdefault(user, {})[contact.jid] = contact

    async def remove(self, user: str, jid: str) -> None:
        with self._request(write=True):
            await asyncio.sleep(0)
        self.writes += 1
        self.rosters.get(user, {}).pop(jid, None)

    async def announce(self, user: str, added: Sequence[str], removed: Sequence[str]) -> None:
        if self.announce_error is not None:
            raise self.announce_error
        self.announced.append((user, list(added), list(removed)))
