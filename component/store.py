"""The server's roster store: where each user's roster lives inside the XMPP server.

One interface, one implementation per mechanism. Prosody takes XEP-0356 privileged roster
IQs; servers whose privileged writes are broken get an implementation of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

from component import stanzas
from component.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from xml.etree import ElementTree as ET

    from component.roster import Contact

IqType = Literal["get", "set"]


class RosterStore(Protocol):
    """Reads and writes one user's roster in the server. ``user`` is a bare JID."""

    async def read(self, user: str) -> dict[str, Contact]:
        """The roster as the server stores it. Raises StoreError."""
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

    async def read(self, user: str) -> dict[str, Contact]:
        result = await self._sender.send_iq(user, "get", stanzas.roster_query())
        return stanzas.parse_roster_query(result.find(f"{{{stanzas.ROSTER_NS}}}query"))

    async def write(self, user: str, contact: Contact) -> None:
        await self._sender.send_iq(user, "set", stanzas.roster_query({contact.jid: contact}))

    async def remove(self, user: str, jid: str) -> None:
        try:
            await self._sender.send_iq(user, "set", stanzas.roster_removal(jid))
        except StoreError as exc:
            if exc.condition != "item-not-found":
                raise

    async def announce(self, user: str, added: Sequence[str], removed: Sequence[str]) -> None:
        # XEP-0356 cannot send presence for users: the shipped mod_roster_admin_presence does,
        # asked by an IQ to the users' host.
        username, _, domain = user.partition("@")
        await self._sender.send_iq(domain, "set", stanzas.presence_update(username, added, removed))
