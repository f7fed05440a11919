"""Checking a user's roster: how the server's copy differs from the web app's, changing nothing.

For operators (``GET /roster_admin/check/<username>``, ``http-roster-admin check``): the same
comparison a sync makes before it writes (roster.diff, plus pending inbound requests, which a
sync drops), told item by item and field by field instead of applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from component.errors import FetchError, StoreError
from component.roster import diff

if TYPE_CHECKING:
    from collections.abc import Callable

    from component.roster import Contact, ParsedRoster, Roster, StoredRoster
    from component.store import RosterStore

ChangeKind = Literal["add", "remove", "update", "pending_request"]
Field = Literal["name", "groups", "subscription", "ask"]
_FIELDS: tuple[Field, ...] = ("name", "groups", "subscription", "ask")


class Fetcher(Protocol):
    async def fetch(self, username: str, owner: str) -> ParsedRoster: ...


@dataclass(frozen=True, slots=True)
class ItemChange:
    """One difference: what a sync would do to one contact of the server's copy."""

    jid: str
    kind: ChangeKind
    was: Contact | None = None  # as the server stores it (None: not in its roster)
    now: Contact | None = None  # as the web app wants it (None: not in its roster)
    fields: tuple[Field, ...] = ()  # for "update": which of the stored fields differ


@dataclass(frozen=True, slots=True)
class CheckResult:
    """How one user's check ended: the differences, or why they are not known."""

    username: str
    changes: tuple[ItemChange, ...] = ()
    contacts: int = 0  # in the web app's roster
    warnings: tuple[str, ...] = ()  # the web app's entries that a sync would skip or adjust
    error: str | None = None

    @property
    def in_sync(self) -> bool:
        return self.error is None and not self.changes


def compare(stored: StoredRoster, desired: Roster) -> tuple[ItemChange, ...]:
    """Every difference between the server's copy and the web app's roster, sorted by JID.

    Exactly what a sync would change: the items roster.diff() rewrites or removes, and the
    pending inbound requests it drops.
    """
    changes = diff(stored.contacts, desired)
    items = [_upsert(stored.contacts.get(contact.jid), contact) for contact in changes.upserts] + [
        ItemChange(jid, "remove", was=stored.contacts[jid]) for jid in changes.removals
    ]
    items += [ItemChange(jid, "pending_request") for jid in stored.pending_in]
    return tuple(sorted(items, key=lambda change: (change.jid, change.kind)))


def _upsert(was: Contact | None, now: Contact) -> ItemChange:
    if was is None:
        return ItemChange(now.jid, "add", now=now)
    fields = tuple(f for f in _FIELDS if getattr(was, f) != getattr(now, f))
    return ItemChange(now.jid, "update", was=was, now=now, fields=fields)


class Checker:
    """Fetches a user's roster and reads the server's copy; writes nothing anywhere."""

    def __init__(
        self,
        fetcher: Fetcher,
        store: RosterStore,
        domain: str,
        *,
        on_drift: Callable[[str], None] | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._store = store
        self._domain = domain
        # Told the usernames whose server copy differs: whatever the sync core believed it
        # holds is then wrong, and the next refresh must read it rather than trust that.
        self._on_drift = on_drift

    async def check(self, username: str) -> CheckResult:
        user = f"{username}@{self._domain}"
        try:
            parsed = await self._fetcher.fetch(username, user)
        except FetchError as exc:
            return CheckResult(username, error=f"fetch failed: {exc.reason}")
        try:
            stored = await self._store.read(user)
        except StoreError as exc:
            return CheckResult(username, error=f"server store: {exc}")
        changes = compare(stored, parsed.roster)
        if changes and self._on_drift is not None:
            self._on_drift(username)
        return CheckResult(
            username, changes=changes, contacts=len(parsed.roster), warnings=parsed.warnings
        )
