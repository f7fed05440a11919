"""Prosody's rosters, through the shipped module or XEP-0356 privileged roster IQs.

Reads and writes go to the shipped Prosody module, mod_roster_admin_presence, as IQs to the
users' host: a read brings the items and the pending inbound requests (which no roster query
shows); the items of one user written in the same turn of the loop travel together, are saved
once (a privileged SET carries one item, and Prosody saves the whole roster for each) and
bring the presence the change implies. A server without the current module gets privileged
roster IQs to the user's bare JID, item by item, and separate requests for pending requests
and presence.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol
from xml.etree import ElementTree as ET

import structlog

from component import stanzas
from component.errors import (
    IqRefusedError,
    IqUnansweredError,
    ItemRefusedError,
    StoreError,
    StoreUnavailableError,
    UnknownUserError,
)
from component.roster import StoredRoster

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from component.roster import Contact

log = structlog.get_logger(__name__)

IqType = Literal["get", "set"]
# The server refused one item (e.g. a JID it will not store) but would take the others.
_ITEM_REFUSALS = frozenset({"not-allowed", "bad-request", "jid-malformed", "not-acceptable"})
# Presence privileges under which the server sends us every user's presence (XEP-0356).
_PRESENCE_OF_ALL = frozenset({"managed_entity", "roster"})
# What a server answers for a request no module of it handles (on a user's JID: no user).
_NOT_SUPPORTED = frozenset({"service-unavailable", "feature-not-implemented"})
# Bytes of a write request around its items (iq, write and query elements), at most.
_REQUEST_OVERHEAD = 1024


class IqSender(Protocol):
    """Sends an IQ from the component and waits for its result (the XMPP link does this)."""

    async def send_iq(self, to: str, iq_type: IqType, payload: ET.Element) -> ET.Element:
        """Send and return the result; IqRefusedError on an error, IqUnansweredError else."""
        ...


class Granted(Protocol):
    """The XEP-0356 privileges the server advertised."""

    privileges: stanzas.Privileges
    privileges_known: bool

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the server advertises its grants anew."""
        ...


@dataclass
class _Batch:
    """One user's items to write in one request to the module: JID -> its item (removals
    included), and the answer every writer waits for: the refused JIDs, or None when the
    server has no module to take them."""

    items: dict[str, ET.Element] = field(default_factory=dict)
    size: int = 0  # at least the items' serialized bytes (stanzas.size_bound)
    answer: asyncio.Future[dict[str, str] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class PrivilegedRosterStore:
    """Prosody's rosters: through the shipped module, or XEP-0356 without it.

    Privileged SETs carry one item each (Prosody answers a multi-item set with one result per
    item, all with the same id, which no IQ tracker can pair up), and Prosody saves the whole
    roster for each: the module takes a user's items in one request and saves once.
    """

    def __init__(
        self,
        sender: IqSender,
        grants: Granted,
        component_jid: str,
        *,
        online: Callable[[str], bool] | None = None,
        max_stanza_bytes: int = 500_000,
    ) -> None:
        self._sender = sender
        # Over the server's stanza size limit it would close our whole stream: a batch stays
        # below it, less room for the request around the items.
        self._batch_bytes = max_stanza_bytes - _REQUEST_OVERHEAD
        self._grants = grants
        self._component_jid = component_jid
        # Whether a user (bare JID) has a session, as the server's presence tells us.
        self._online = online
        # Said once, not at every sync, until the module answers again.
        self._module_missing = False
        # Reads and writes through the module, until the server says it has none that takes
        # them (then again once it has advertised its grants anew: after a reconnect, maybe
        # to an updated server).
        self._module_current = True
        self._batches: dict[str, _Batch] = {}  # user -> items gathered in this turn
        # Users whose last writes went through the module, which sent their presence too.
        self._announced: set[str] = set()
        self._senders: set[asyncio.Task[None]] = set()
        grants.on_change(self._retry_module)

    def problem(self) -> str | None:
        if not self._grants.privileges_known:
            return "waiting for the server's privilege advertisement (XEP-0356)"
        granted = self._grants.privileges
        if granted.can_read_rosters() and granted.can_write_rosters():
            return None
        return (
            f'roster privilege is "{granted.roster}": grant roster = "both" to '
            f"{self._component_jid} in the server's privileged_entities"
        )

    async def open(self) -> None:
        """Nothing of its own: it speaks through the XMPP link."""

    async def close(self) -> None:
        """Nothing to release."""

    async def read(self, user: str) -> StoredRoster:
        if self._module_current:
            stored = await self._read_by_module(user)
            if stored is not None:
                return stored
        roster, pending = await asyncio.gather(
            self._iq(user, "get", stanzas.roster_query()), self._read_pending(user)
        )
        contacts = stanzas.parse_roster_query(roster.find(f"{{{stanzas.ROSTER_NS}}}query"))
        return StoredRoster(contacts, pending)

    async def _read_by_module(self, user: str) -> StoredRoster | None:
        """Items and pending requests in one request; None when the server has no module that
        answers it."""
        username, _, domain = user.partition("@")
        try:
            result = await self._sender.send_iq(domain, "get", stanzas.roster_read(username))
        except IqRefusedError as exc:
            if exc.condition in _NOT_SUPPORTED:
                self._module_outdated(exc)
                return None
            raise _module_error(user, exc) from None
        except IqUnansweredError as exc:
            raise StoreUnavailableError(str(exc)) from None
        self._module_missing = False
        contacts, pending = stanzas.parse_roster_read(result)
        return StoredRoster(contacts, pending)

    async def write(self, user: str, contact: Contact) -> None:
        item = stanzas.roster_item(contact)
        if not self._fits(item):
            raise ItemRefusedError(
                f"{contact.jid}: larger than the server's stanza size limit "
                "(server.max_stanza_bytes)"
            )
        if self._module_current:
            refused = await self._batched(user, contact.jid, item)
            if refused is not None:
                if contact.jid in refused:
                    raise ItemRefusedError(f"{contact.jid}: {refused[contact.jid]}")
                return
        self._announced.discard(user)
        try:
            await self._sender.send_iq(user, "set", stanzas.roster_query({contact.jid: contact}))
        except IqRefusedError as exc:
            if exc.condition in _ITEM_REFUSALS:
                raise ItemRefusedError(str(exc)) from None
            raise _store_error(user, exc) from None
        except IqUnansweredError as exc:
            raise StoreUnavailableError(str(exc)) from None

    async def remove(self, user: str, jid: str) -> None:
        if self._module_current:
            refused = await self._batched(user, jid, stanzas.removal_item(jid))
            if refused is not None:
                if jid in refused:
                    raise StoreError(f"the server would not remove {jid}: {refused[jid]}")
                return
        self._announced.discard(user)
        try:
            await self._sender.send_iq(user, "set", stanzas.roster_removal(jid))
        except IqRefusedError as exc:
            if exc.condition != "item-not-found":
                raise _store_error(user, exc) from None
        except IqUnansweredError as exc:
            raise StoreUnavailableError(str(exc)) from None

    def _fits(self, item: ET.Element) -> bool:
        """Whether a request carrying this item alone stays below the stanza size limit."""
        if stanzas.size_bound(item) <= self._batch_bytes:
            return True
        return len(ET.tostring(item, encoding="unicode").encode()) <= self._batch_bytes

    async def _batched(self, user: str, jid: str, item: ET.Element) -> dict[str, str] | None:
        """Written with the user's other items of this turn (as many as stay below the
        stanza size limit): the refused JIDs, or None when the server has no module to take
        them (then each goes as a privileged SET)."""
        size = stanzas.size_bound(item)
        batch = self._batches.get(user)
        if batch is not None and batch.size + size > self._batch_bytes:
            self._send_batch(user, batch)  # full: this item starts the next one
            batch = None
        if batch is None:
            self._batches[user] = batch = _Batch()
            # After the writers woken in this turn have added theirs.
            asyncio.get_running_loop().call_soon(self._send_batch, user, batch)
        batch.items[jid] = item
        batch.size += size
        # Shielded: a writer cancelled (we are stopping) must not cancel the others' answer;
        # the request goes out and its writes finish anyway.
        return await asyncio.shield(batch.answer)

    def _send_batch(self, user: str, batch: _Batch) -> None:
        if self._batches.get(user) is not batch:
            return  # sent already, once full
        del self._batches[user]
        task = asyncio.ensure_future(self._write_batch(user, batch))
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)

    async def _write_batch(self, user: str, batch: _Batch) -> None:
        username, _, domain = user.partition("@")
        request = stanzas.roster_write(username, batch.items.values())
        try:
            result = await self._sender.send_iq(domain, "set", request)
        except IqRefusedError as exc:
            if exc.condition in _NOT_SUPPORTED:
                self._module_outdated(exc)
                batch.answer.set_result(None)
            else:
                _fail(batch.answer, _module_error(user, exc))
        except IqUnansweredError as exc:
            _fail(batch.answer, StoreUnavailableError(str(exc)))
        except BaseException as exc:  # cancelled, or a bug: every writer must hear of it
            _fail(batch.answer, StoreUnavailableError(f"roster write not sent: {exc!r}"))
            raise
        else:
            self._announced.add(user)
            batch.answer.set_result(stanzas.parse_write_result(result))

    def _module_outdated(self, exc: IqRefusedError) -> None:
        if self._module_current:
            self._module_current = False
            log.warning(
                "store.module_outdated",
                error=str(exc),
                hint="load the current mod_roster_admin_presence (deploy/prosody/) on the "
                "server: until then each roster item written costs a privileged SET and a "
                "save of the roster, and each read two requests",
            )

    def _retry_module(self) -> None:
        self._module_current = True

    async def clear_pending(self, user: str, jids: Sequence[str]) -> None:
        username, _, domain = user.partition("@")
        await self._iq(domain, "set", stanzas.pending_request(username, jids))

    async def announce(self, user: str, added: Sequence[str], removed: Sequence[str]) -> None:
        # XEP-0356 cannot send presence for users: the shipped module does, asked by an IQ,
        # or along with the writes it made.
        if user in self._announced:
            self._announced.discard(user)
            return
        if self._known_offline(user):
            # The module would send nothing either (an initial sync's users mostly): the
            # request alone cost the server as much as a write per user.
            return
        username, _, domain = user.partition("@")
        await self._iq(domain, "set", stanzas.presence_update(username, added, removed))

    def _known_offline(self, user: str) -> bool:
        """No session of the user is available, as far as the server's presence tells us: it
        sends every user's (the presence privilege), and the presence of one who has just
        logged in ahead of the answers to our writes, as the stream is in order."""
        if self._online is None or self._grants.privileges.presence not in _PRESENCE_OF_ALL:
            return False
        return not self._online(user)

    async def _read_pending(self, user: str) -> frozenset[str]:
        # Pending inbound requests are in no roster query: the shipped module reports them.
        username, _, domain = user.partition("@")
        try:
            result = await self._sender.send_iq(domain, "get", stanzas.pending_request(username))
        except IqRefusedError as exc:
            if exc.condition not in _NOT_SUPPORTED:
                raise _store_error(user, exc) from None
            if not self._module_missing:
                self._module_missing = True
                log.error(  # noqa: TRY400 -- an expected answer, its traceback says nothing
                    "store.presence_module_missing",
                    error=str(exc),
                    hint="load mod_roster_admin_presence (deploy/prosody/) on the server: "
                    "without it there is no live presence and no pending request repair",
                )
            return frozenset()
        except IqUnansweredError as exc:
            raise StoreUnavailableError(str(exc)) from None
        self._module_missing = False
        return stanzas.parse_pending(result)

    async def _iq(self, to: str, iq_type: IqType, payload: ET.Element) -> ET.Element:
        try:
            return await self._sender.send_iq(to, iq_type, payload)
        except IqRefusedError as exc:
            raise _store_error(to, exc) from None
        except IqUnansweredError as exc:
            raise StoreUnavailableError(str(exc)) from None


def _fail(answer: asyncio.Future[dict[str, str] | None], error: StoreError) -> None:
    answer.set_exception(error)
    # Retrieved here too: when every writer was cancelled nobody else would.
    answer.add_done_callback(lambda done: done.exception())


def _module_error(user: str, exc: IqRefusedError) -> StoreError:
    """The module answers item-not-found for a user without an account."""
    if exc.condition == "item-not-found":
        return UnknownUserError(f"{exc} (no such user?)")
    return _store_error(user.partition("@")[2], exc)


def _store_error(to: str, exc: IqRefusedError) -> StoreError:
    """The neutral kind of a refusal: sync must not need to know XMPP's conditions."""
    if "@" in to and exc.condition in _NOT_SUPPORTED:
        # What Prosody answers for a user it does not know.
        return UnknownUserError(f"{exc} (no such user?)")
    if exc.condition in _NOT_SUPPORTED:
        return StoreError(f"{exc}: is mod_roster_admin_presence loaded on the server?")
    return StoreError(str(exc))
