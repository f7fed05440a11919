"""The server's roster store: where each user's roster lives inside the XMPP server.

One interface, one implementation per mechanism. Prosody takes XEP-0356 privileged roster
IQs; servers whose privileged writes are broken get an implementation of their own.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal, Protocol

import structlog

from component import stanzas
from component.errors import StoreError
from component.roster import StoredRoster

if TYPE_CHECKING:
    from collections.abc import Sequence
    from xml.etree import ElementTree as ET

    from component.roster import Contact

log = structlog.get_logger(__name__)

IqType = Literal["get", "set"]
# What a server answers for a request no module of it handles.
_NOT_SUPPORTED = frozenset({"service-unavailable", "feature-not-implemented"})


class RosterStore(Protocol):
    """Reads and writes one user's roster in the server. ``user`` is a bare JID."""

    async def read(self, user: str) -> StoredRoster:
        """The roster as the server stores it, pending inbound requests included.

        Raises StoreError.
        """
        ...

    async def write(self, user: str, contact: Contact) -> None:
        """Add or replace one item (name, groups, subscription). Raises StoreError."""
        ...

    async def remove(self, user: str, jid: str) -> None:
        """Remove one item; an item that is already gone is not an error. Raises StoreError."""
        ...

    async def announce(self, user: str, added: Sequence[str], removed: Sequence[str]) -> None:
        """Make presence flow now between ``user`` and contacts that were just added or removed.

        Written rosters only govern presence sent from then on: online users see a new
        contact's current presence, or a removed one going away, only through this. Raises
        StoreError.
        """
        ...

    async def clear_pending(self, user: str, jids: Sequence[str]) -> None:
        """Drop pending inbound subscription requests from ``jids``. Raises StoreError."""
        ...


class IqSender(Protocol):
    """Sends an IQ from the component and waits for its result (the XMPP adapter does this)."""

    async def send_iq(self, to: str, iq_type: IqType, payload: ET.Element) -> ET.Element:
        """Send and return the result stanza; raise StoreError on error, timeout or no link."""
        ...


class PrivilegedRosterStore:
    """XEP-0356 roster access: roster IQs sent from our domain to the user's bare JID.

    One item per IQ: Prosody answers a multi-item set with one result per item, all with
    the same id, which no IQ tracker can pair up.
    """

    def __init__(self, sender: IqSender) -> None:
        self._sender = sender
        # Said once, not at every sync, until the module answers again.
        self._module_missing = False

    async def read(self, user: str) -> StoredRoster:
        roster, pending = await asyncio.gather(
            self._sender.send_iq(user, "get", stanzas.roster_query()), self._read_pending(user)
        )
        contacts = stanzas.parse_roster_query(roster.find(f"{{{stanzas.ROSTER_NS}}}query"))
        return StoredRoster(contacts, pending)

    async def _read_pending(self, user: str) -> frozenset[str]:
        # Pending inbound requests are in no roster query: the shipped module reports them.
        username, _, domain = user.partition("@")
        try:
            result = await self._sender.send_iq(domain, "get", stanzas.pending_request(username))
        except StoreError as exc:
            if exc.condition not in _NOT_SUPPORTED:
                raise
            if not self._module_missing:
                self._module_missing = True
                log.error(  # noqa: TRY400 -- an expected answer, its traceback says nothing
                    "store.presence_module_missing",
                    error=str(exc),
                    hint="load mod_roster_admin_presence (deploy/prosody/) on the server: "
                    "without it there is no live presence and no pending request repair",
                )
            return frozenset()
        self._module_missing = False
        return stanzas.parse_pending(result)

    async def write(self, user: str, contact: Contact) -> None:
        await self._sender.send_iq(user, "set", stanzas.roster_query({contact.jid: contact}))

    async def remove(self, user: str, jid: str) -> None:
        try:
            await self._sender.send_iq(user, "set", stanzas.roster_removal(jid))
        except StoreError as exc:
            if exc.condition != "item-not-found":
                raise

    async def clear_pending(self, user: str, jids: Sequence[str]) -> None:
        username, _, domain = user.partition("@")
        await self._sender.send_iq(domain, "set", stanzas.pending_request(username, jids))

    async def announce(self, user: str, added: Sequence[str], removed: Sequence[str]) -> None:
        # XEP-0356 cannot send presence for users: the shipped mod_roster_admin_presence does,
        # asked by an IQ to the users' host.
        username, _, domain = user.partition("@")
        await self._sender.send_iq(domain, "set", stanzas.presence_update(username, added, removed))
