"""Sync orchestration: make the server's copy of a user's roster equal the web app's.

The only module that knows the whole flow: fetch -> read the server's copy -> diff -> apply.
Each user has at most one sync in flight; the number of syncs at once is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

import structlog

from component import metrics
from component.errors import (
    FetchError,
    ItemRefusedError,
    RosterFormatError,
    StoreError,
    StoreUnavailableError,
    UnknownUserError,
    WebAppDownError,
)
from component.roster import (
    Contact,
    RosterDiff,
    diff,
    diff_known,
    digest,
    parse_webapp_roster,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from structlog.typing import FilteringBoundLogger as BoundLogger

    from component.roster import ParsedRoster, Roster
    from component.store import RosterStore

log = structlog.get_logger(__name__)

_STOPPING = "not done: the component is stopping"


class Fetcher(Protocol):
    async def fetch_if_changed(
        self, username: str, owner: str, *, unless: bytes | None
    ) -> ParsedRoster | None: ...


@dataclass(frozen=True, slots=True)
class SyncResult:
    """How one sync of one user ended."""

    username: str
    ok: bool
    roster: Roster | None = None  # what the server now stores, when known
    error: str | None = None
    version: str | None = None  # the roster's version (XEP-0237), with the roster


@dataclass(slots=True)
class _Outcome:
    ticket: int  # when the sync began, on the same counter as requests
    finished: float
    ok: bool
    # Kept only while other callers wait on this user; then dropped to save memory.
    result: SyncResult | None


@dataclass(frozen=True, slots=True)
class _Supplied:
    """A roster the web app sent inline (bulk endpoint), as decoded, and its fingerprint."""

    data: object
    source: bytes


def _fingerprint(data: object) -> bytes:
    """A fingerprint of decoded JSON, to tell a roster sent again unchanged (b"": none)."""
    try:
        encoded = json.dumps(data, separators=(",", ":")).encode()
    # From JSON it always encodes, unless nested nearly as deep as the decoder allowed.
    except (TypeError, ValueError, RecursionError):
        return b""
    return hashlib.blake2b(encoded, digest_size=16).digest()


@dataclass(slots=True)
class _UserLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiters: int = 0


@dataclass(frozen=True, slots=True)
class _Known:
    """What the server holds for a user, as far as we know: what we applied last.

    Each item as a hash, not the contact itself, so 10,000 rosters cost megabytes, not tens
    of them; contact JIDs are interned, since users mostly list each other.
    """

    digest: bytes
    items: dict[str, int]  # contact JID -> hash(Contact) as stored
    source: bytes  # the fingerprint of the web app's answer it came from (ParsedRoster.source)

    @classmethod
    def of(cls, roster: Roster, roster_digest: bytes, source: bytes) -> _Known:
        items = {sys.intern(jid): hash(c) for jid, c in roster.items()}
        return cls(roster_digest, items, source)

    def subscription(self, jid: str) -> str:
        """A stored contact's subscription: all we know is that each is a "both" one."""
        return "both" if jid in self.items else "none"


@dataclass(slots=True)
class _Applied:
    """What a sync has written so far: pushes go out for this even if the sync fails."""

    upserts: list[Contact] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)
    cleared: list[str] = field(default_factory=list)  # pending inbound requests dropped
    read: Roster = field(default_factory=dict)  # the server's copy, when it was read first

    def diff(self) -> RosterDiff:
        return RosterDiff(tuple(self.upserts), tuple(self.removals))


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
        write_window: int = 128,
        on_change: Callable[[str, RosterDiff, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetcher = fetcher
        self._store = store
        self._domain = domain
        self._max_age = max_age
        self._on_change = on_change
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        # Requests to the server in flight across all syncs (reads and writes): the server
        # takes many at once far faster than one by one, up to a point (SERVERS.md: Prosody
        # peaks at 64-128).
        self._writes = asyncio.Semaphore(write_window)
        # username -> the roster last brought into the server. A roster the web app sends
        # unchanged then costs no server request, a changed one only its writes; drift behind
        # our back is the reconciliation's to find (it always reads).
        self._applied: dict[str, _Known] = {}
        self._forgotten: set[str] = set()  # forgotten while a sync of theirs ran
        self._background_slots = asyncio.Semaphore(max(1, concurrency // 2))
        self._locks: dict[str, _UserLock] = {}
        # Users synced within max_age, oldest first (pruned as new outcomes arrive).
        self._last: OrderedDict[str, _Outcome] = OrderedDict()
        self._tickets = itertools.count()
        # Shutdown: once stopping, no sync starts and fetches in flight are cut short (nothing
        # is written before a fetch ends); writes in flight finish, so that no roster is left
        # half-written.
        self._stopping = False
        self._fetches: set[asyncio.Task[ParsedRoster | None]] = set()
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def user_jid(self, username: str) -> str:
        return f"{username}@{self._domain}"

    async def refresh(self, username: str) -> SyncResult:
        """Sync with a roster fetched after this call began (the web app said it changed).

        The result carries no roster when the web app's answer is the one last applied.
        """
        return await self._sync(username, max_age=None, roster_needed=False)

    async def apply(self, username: str, data: object) -> SyncResult:
        """Sync with a roster the web app sent itself (bulk endpoint), checked exactly like a
        fetched one: one that is not a roster fails this user and changes nothing. One sent
        exactly as last applied is recognized by its fingerprint, without being checked."""
        supplied = _Supplied(data, _fingerprint(data))
        return await self._sync(username, max_age=None, supplied=supplied, roster_needed=False)

    async def reconcile(self, username: str) -> SyncResult:
        """Sync now to repair drift: a roster changed behind the web app's back.

        Whatever it has to change is logged as ``roster.repaired``, item by item.
        """
        return await self._sync(username, max_age=None, repair=True, roster_needed=False)

    async def ensure_fresh(
        self, username: str, *, background: bool = False, roster_needed: bool = True
    ) -> SyncResult:
        """Sync unless a successful sync finished less than ``max_age`` seconds ago.

        The result carries the roster (to answer a user with) unless not ``roster_needed``
        or a background sync.

        Background syncs (users coming online: after a reconnect, every online user at once)
        get at most half the slots, so that refreshes and users waiting for their roster are
        never stuck behind them. They queue before taking the user's turn, so a user's own
        roster request does not wait behind that queue either.
        """
        if not background:
            return await self._sync(username, max_age=self._max_age, roster_needed=roster_needed)
        async with self._background_slots:
            return await self._sync(username, max_age=self._max_age, roster_needed=False)

    def stop(self) -> None:
        """Start no more syncs (each fails as not done) and cut fetches in flight short."""
        self._stopping = True
        for fetch in list(self._fetches):
            fetch.cancel()

    async def wait_idle(self) -> None:
        """Until no sync runs: after ``stop()``, until the writes in flight are done."""
        await self._idle.wait()

    def forget(self, username: str) -> None:
        """Drop what we believe the server holds for the user (a check found it differs):
        the next sync reads the server instead of trusting what we applied last."""
        self._applied.pop(username, None)
        if username in self._locks:
            # A sync of theirs running now must not record what it believes afterwards.
            self._forgotten.add(username)

    def forget_all(self) -> None:
        """Drop what we believe the server holds for every user: the link to the server broke,
        and a server that restarts may have lost writes it had acknowledged (ejabberd's Mnesia
        does when killed). Syncs still running do not record theirs either: they record into
        the dict replaced here, which nothing reads any more."""
        self._applied = {}
        # Nor is a sync from before the break fresh: rosters may have changed while refreshes
        # got 503, and the server may have lost it; each user's next login syncs again.
        self._last.clear()

    async def current_roster(self, username: str) -> Roster:
        """The roster the server holds for the user now. Raises StoreError."""
        return (await self._store.read(self.user_jid(username))).contacts

    async def _sync(
        self,
        username: str,
        *,
        max_age: float | None,
        roster_needed: bool,
        repair: bool = False,
        supplied: _Supplied | None = None,
    ) -> SyncResult:
        requested = next(self._tickets)
        entry = self._locks.setdefault(username, _UserLock())
        entry.waiters += 1
        try:
            async with entry.lock:
                last = self._last.get(username)
                # A sync that began after we were asked saw every change we were told about
                # (unless we were handed the roster: then that one is the truth to apply).
                if (
                    supplied is None
                    and last is not None
                    and last.ticket > requested
                    and last.result is not None
                ):
                    return last.result
                if (
                    max_age is not None
                    and last is not None
                    and last.ok
                    and self._clock() - last.finished <= max_age
                ):
                    return SyncResult(username, ok=True)
                started = next(self._tickets)
                self._running += 1
                self._idle.clear()
                try:
                    result = await self._run(
                        username, repair=repair, supplied=supplied, roster_needed=roster_needed
                    )
                finally:
                    self._running -= 1
                    if not self._running:
                        self._idle.set()
                self._remember(username, _Outcome(started, self._clock(), result.ok, result))
                return result
        finally:
            entry.waiters -= 1
            if entry.waiters == 0:
                del self._locks[username]
                if (outcome := self._last.get(username)) is not None:
                    outcome.result = None

    def _record(
        self, username: str, known: _Known, memory: dict[str, _Known] | None = None
    ) -> None:
        """What the server now holds for the user, unless it was forgotten meanwhile."""
        if username in self._forgotten:
            self._forgotten.discard(username)
            return
        (self._applied if memory is None else memory)[username] = known

    def _remember(self, username: str, outcome: _Outcome) -> None:
        self._last[username] = outcome
        self._last.move_to_end(username)
        horizon = outcome.finished - self._max_age
        while self._last:
            oldest, first = next(iter(self._last.items()))
            if first.finished >= horizon or oldest in self._locks:
                break
            del self._last[oldest]

    async def _run(
        self, username: str, *, repair: bool, supplied: _Supplied | None, roster_needed: bool
    ) -> SyncResult:
        user = self.user_jid(username)
        bound = log.bind(user=user)
        began = time.perf_counter()
        known = None if repair else self._applied.get(username)
        # The web app's answer byte for byte as last applied: nothing to decode or compare,
        # unless the caller needs the roster itself (to answer a user's roster request).
        unless = None if known is None or roster_needed else known.source
        try:
            # A slot covers the fetch alone: the server's part (read, writes) runs outside it,
            # bounded by the write window, so the next user's fetch overlaps this one's writes
            # instead of waiting for them (each stage alone left the other idle).
            async with self._slots:
                if self._stopping:
                    return SyncResult(username, ok=False, error=_STOPPING)
                parsed = await self._wanted(username, supplied, unless)
                if parsed is None and self._applied.get(username) is not known:
                    # forget_all() (or forget()) during the fetch made what we knew void: the
                    # server must be read and compared with the roster itself.
                    parsed = await self._wanted(username, supplied, None)
        except FetchError as exc:
            metrics.SYNCS.labels(result="fetch_failed").inc()
            # While the web app is down its circuit says so once, not once per user.
            quiet = isinstance(exc, WebAppDownError)
            (bound.debug if quiet else bound.warning)("sync.fetch_failed", reason=exc.reason)
            return SyncResult(username, ok=False, error=f"fetch failed: {exc.reason}")
        except RosterFormatError as exc:
            metrics.SYNCS.labels(result="fetch_failed").inc()
            bound.warning("sync.bad_roster", reason=str(exc))
            return SyncResult(username, ok=False, error=f"not a roster: {exc}")
        if parsed is None:
            metrics.SYNCS.labels(result="unchanged").inc()
            bound.debug("sync.unchanged", same_answer=True)
            return SyncResult(username, ok=True)
        return await self._converge(username, parsed, repair=repair, began=began)

    async def _converge(
        self, username: str, parsed: ParsedRoster, *, repair: bool, began: float
    ) -> SyncResult:
        """Bring the server's copy to ``parsed``: nothing to do when that is what we applied
        last; read it first when we do not know what it holds."""
        user = self.user_jid(username)
        bound = log.bind(user=user)
        # Again: forget_all() (or forget()) during the fetch made what we knew void.
        known = None if repair else self._applied.get(username)
        wanted = digest(parsed.roster)
        if known is not None and known.digest == wanted:
            metrics.SYNCS.labels(result="unchanged").inc()
            bound.debug("sync.unchanged", contacts=len(parsed.roster))
            if parsed.source:
                # The same roster written differently (key order...): the next such answer
                # is recognized without decoding.
                self._record(username, dataclasses.replace(known, source=parsed.source))
            return SyncResult(username, ok=True, roster=parsed.roster, version=wanted.hex())
        memory = self._applied  # where to record the outcome (see forget_all)
        # Until this sync succeeds, what the server holds is not known.
        memory.pop(username, None)
        applied = _Applied()
        failure: StoreError | None = None
        try:
            await self._write(user, parsed.roster, known, applied)
        except StoreError as exc:
            failure = exc
        now: Roster = parsed.roster
        if applied.rejected:
            now = {jid: c for jid, c in now.items() if jid not in applied.rejected}
            wanted = digest(now)
        # What was written is told to clients even when the sync failed half-way.
        if applied.upserts or applied.removals:
            if self._on_change is not None:
                # After a failure the roster's version is unknown: a fresh one makes a client
                # that comes back with it get the whole roster.
                ver = wanted.hex() if failure is None else uuid.uuid4().hex
                self._on_change(user, applied.diff(), ver)
            was = known.subscription if known is not None else partial(_subscription, applied.read)
            await self._announce(user, was, applied)
        if repair and (applied.upserts or applied.removals or applied.cleared):
            _log_repair(bound, applied)
        if failure is not None:
            metrics.SYNCS.labels(result="store_failed").inc()
            _log_store_failure(bound, failure)
            return SyncResult(username, ok=False, error=f"server store: {failure}")
        applied_now = _Known.of(now, wanted, parsed.source)
        self._record(username, applied_now, memory)
        metrics.SYNCS.labels(result="ok").inc()
        metrics.ITEMS_WRITTEN.inc(len(applied.upserts))
        metrics.ITEMS_REMOVED.inc(len(applied.removals))
        bound.info(
            "sync.done",
            contacts=len(parsed.roster),
            upserts=len(applied.upserts),
            removals=len(applied.removals),
            cleared=len(applied.cleared),
            rejected=len(applied.rejected),
            warnings=len(parsed.warnings),
            read=known is None,
            duration_ms=round((time.perf_counter() - began) * 1000, 1),
        )
        return SyncResult(username, ok=True, roster=now, version=applied_now.digest.hex())

    async def _write(
        self, user: str, roster: Roster, known: _Known | None, applied: _Applied
    ) -> None:
        """Write what differs from ``roster``, into ``applied`` as it goes through: only the
        changes from ``known``, else what differs from the server's copy, read first."""
        if known is not None:
            # What we applied last is what the server holds (drift is the reconciliation's
            # to find): only the changes cost requests.
            await self._apply(user, diff_known(known.items, roster), applied)
            return
        # Within the write window like every request to the server: syncs past their fetch
        # hold no slot, and the window is what bounds them.
        async with self._writes:
            stored = await self._store.read(user)
        applied.read = stored.contacts
        await self._apply(user, diff(stored.contacts, roster), applied)
        if stored.pending_in:
            # The web app decides every subscription: no request is left waiting.
            async with self._writes:
                await self._store.clear_pending(user, sorted(stored.pending_in))
            applied.cleared.extend(sorted(stored.pending_in))

    async def _wanted(
        self, username: str, supplied: _Supplied | None, unless: bytes | None
    ) -> ParsedRoster | None:
        """The roster the web app wants, or None when its answer is the one fingerprinted as
        ``unless``. Raises FetchError, or RosterFormatError for a roster sent inline."""
        user = self.user_jid(username)
        if supplied is None:
            return await self._fetch(username, user, unless)
        if supplied.source and supplied.source == unless:
            return None
        parsed = parse_webapp_roster(supplied.data, user)
        for warning in parsed.warnings:
            log.warning("webapp.roster_warning", username=username, warning=warning)
        return dataclasses.replace(parsed, source=supplied.source)

    async def _fetch(self, username: str, user: str, unless: bytes | None) -> ParsedRoster | None:
        # Its own task, so that stop() can cut it short without cancelling the caller.
        fetch = asyncio.ensure_future(self._fetcher.fetch_if_changed(username, user, unless=unless))
        self._fetches.add(fetch)
        fetch.add_done_callback(self._fetches.discard)
        try:
            with metrics.FETCH_SECONDS.time():
                return await fetch
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not fetch.cancelled() or (current is not None and current.cancelling()):
                fetch.cancel()  # the caller was cancelled: its fetch goes with it
                raise
            raise FetchError(username, _STOPPING) from None

    async def _announce(self, user: str, was: Callable[[str], str], applied: _Applied) -> None:
        """Live presence for contacts whose presence relationship began or ended (``was``: a
        contact's subscription before the sync)."""
        added = [
            c.jid for c in applied.upserts if c.subscription == "both" and was(c.jid) != "both"
        ]
        removed = [jid for jid in applied.removals if was(jid) != "none"]
        if not (added or removed):
            return
        try:
            async with self._writes:
                await self._store.announce(user, added, removed)
        except StoreError as exc:
            # The rosters are right; only presence lags until the users next send theirs.
            log.warning("sync.announce_failed", user=user, error=str(exc))

    async def _apply(self, user: str, changes: RosterDiff, applied: _Applied) -> None:
        """Write every change, many at once (each item is its own request), then record what
        went through in the diff's order. A refused item is skipped; any other failure is
        raised once every write has finished, so that what did go through is still known."""

        async def remove(jid: str) -> None:
            async with self._writes:
                await self._store.remove(user, jid)

        async def write(contact: Contact) -> None:
            async with self._writes:
                await self._store.write(user, contact)

        # Removals and upserts touch different contacts: one round trip for all of them.
        outcomes = await asyncio.gather(
            *(remove(jid) for jid in changes.removals),
            *(write(contact) for contact in changes.upserts),
            return_exceptions=True,
        )
        removed, written = outcomes[: len(changes.removals)], outcomes[len(changes.removals) :]
        failure: BaseException | None = None
        for jid, outcome in zip(changes.removals, removed, strict=True):
            if outcome is None:
                applied.removals.append(jid)
            else:
                failure = failure or outcome
        for contact, outcome in zip(changes.upserts, written, strict=True):
            if outcome is None:
                applied.upserts.append(contact)
            elif isinstance(outcome, ItemRefusedError):
                log.warning(
                    "sync.item_rejected", user=user, contact=contact.jid, error=str(outcome)
                )
                applied.rejected.add(contact.jid)
            else:
                failure = failure or outcome
        if failure is not None:
            raise failure


def _log_store_failure(bound: BoundLogger, exc: StoreError) -> None:
    if isinstance(exc, UnknownUserError):
        bound.warning("sync.store_failed", error=str(exc), hint="is the user registered?")
    elif isinstance(exc, StoreUnavailableError):
        bound.warning("sync.store_failed", error=str(exc))
    else:
        bound.error("sync.store_failed", error=str(exc))


def _subscription(roster: Roster, jid: str) -> str:
    contact = roster.get(jid)
    return "none" if contact is None else contact.subscription


def _describe(contact: Contact | None) -> dict[str, object] | None:
    if contact is None:
        return None
    return {
        "subscription": contact.subscription,
        "ask": contact.ask,
        "name": contact.name,
        "groups": sorted(contact.groups),
    }


def _log_repair(bound: BoundLogger, applied: _Applied) -> None:
    """One event per repaired user, with each item as it was and as it is now."""
    before = applied.read
    items = [
        {"jid": c.jid, "was": _describe(before.get(c.jid)), "now": _describe(c)}
        for c in applied.upserts
    ]
    items += [
        {"jid": jid, "was": _describe(before.get(jid)), "now": None} for jid in applied.removals
    ]
    items += [{"jid": jid, "was": "pending request", "now": None} for jid in applied.cleared]
    bound.warning("roster.repaired", items=items)
