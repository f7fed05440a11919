"""The server's roster store: where each user's roster lives inside the XMPP server.

One interface, one implementation per mechanism: ``privileged`` (XEP-0356 privileged roster
IQs, for Prosody) and ``ejabberd`` (ejabberd's admin API, where privileged writes are broken). Above
this interface nothing knows which server it talks to: a store reports its readiness and its
failures in the neutral words of component.errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from component.roster import Contact, StoredRoster


class RosterStore(Protocol):
    """Reads and writes one user's roster in the server. ``user`` is a bare JID.

    Every method raises StoreError or one of its kinds: ItemRefusedError (only ``write``),
    UnknownUserError, StoreUnavailableError.
    """

    def problem(self) -> str | None:
        """What keeps the store from working now, said so an operator can fix it; or None."""
        ...

    async def open(self) -> None:
        """Start what the store needs of its own (connections, checks) before it is used."""
        ...

    async def close(self) -> None:
        """Release what open() started."""
        ...

    async def read(self, user: str) -> StoredRoster:
        """The roster as the server stores it, pending inbound requests included."""
        ...

    async def write(self, user: str, contact: Contact) -> None:
        """Add or replace one item (name, groups, subscription)."""
        ...

    async def remove(self, user: str, jid: str) -> None:
        """Remove one item; an item that is already gone is not an error."""
        ...

    async def clear_pending(self, user: str, jids: Sequence[str]) -> None:
        """Drop pending inbound subscription requests from ``jids``."""
        ...

    async def announce(self, user: str, added: Sequence[str], removed: Sequence[str]) -> None:
        """Make presence flow now between ``user`` and contacts that were just added or removed.

        Written rosters only govern presence sent from then on: online users see a new
        contact's current presence, or a removed one going away, only through this (or
        through the writes themselves, where the store's writes do it: then nothing more).
        """
        ...
