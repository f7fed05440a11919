"""Roster pushes to clients, while the server delegates rosters to us.

The server then sends none itself (it never saw the clients' roster requests). The shipped
Prosody module sends a user's pushes to their clients for one request of ours, as the server
sends its own; without it (an older module, another server) each push goes to each client as
a privileged IQ (XEP-0356 ``iq`` permission), relayed both ways.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import TYPE_CHECKING

import structlog
from slixmpp.jid import JID

from component import stanzas
from component.errors import IqRefusedError, IqUnansweredError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from xml.etree import ElementTree as ET

    from component.roster import RosterDiff
    from component.xmpp.delegation import DelegatedRosters
    from component.xmpp.grants import Grants
    from component.xmpp.link import Stream
    from component.xmpp.presence import OnlineUsers

log = structlog.get_logger(__name__)

# Error conditions meaning a client's session is gone (not that the server had a hiccup).
_SESSION_GONE = frozenset({"service-unavailable", "recipient-unavailable", "item-not-found"})
# What the server answers a push request no module of it handles.
_NOT_SUPPORTED = frozenset({"service-unavailable", "feature-not-implemented"})
# Push requests in flight at once: a refresh of many online users must not queue thousands
# of them at the server ahead of everything else.
_PUSHES_IN_FLIGHT = 64


class RosterPusher:
    """Sends each user's clients their roster pushes strictly in order, one sender per user."""

    def __init__(
        self,
        link: Stream,
        grants: Grants,
        online: OnlineUsers,
        delegation: DelegatedRosters,
    ) -> None:
        self._link = link
        self._grants = grants
        self._online = online
        self._delegation = delegation
        self._slots = asyncio.Semaphore(_PUSHES_IN_FLIGHT)
        # bare JID -> (clients, pushes) batches not yet sent; one sender task per user while
        # non-empty.
        self._queues: dict[str, deque[tuple[list[str], list[ET.Element]]]] = {}
        self._senders: set[asyncio.Task[None]] = set()
        # Until the server says it has no module to send them (then again once it has
        # advertised its grants anew: after a reconnect, maybe to an updated server).
        self._module_pushes = True
        grants.on_change(self._retry_module)

    def push(self, user: str, changes: RosterDiff, version: str) -> None:
        """Queue pushes for ``changes`` to every session of ``user`` we answered.

        The server pushes our writes itself to the sessions it answered (all of them when it
        does not delegate rosters to us).
        ``version`` is the roster's version (XEP-0237) once all of them are applied: the last
        push carries it, each earlier one a version of its own derived from it (opaque to the
        client, which gets the whole roster if it ever comes back with one of those).
        """
        if not self._delegation.active:
            return
        resources = self._online.answered_resources(user)
        if not resources:
            return
        count = len(changes.upserts) + len(changes.removals)
        versions = [f"{version}-{n}" for n in range(1, count)] + [version]
        payloads = [
            stanzas.roster_query({c.jid: c}, ver)
            for c, ver in zip(changes.upserts, versions, strict=False)
        ]
        payloads += [
            stanzas.roster_removal(jid, ver)
            for jid, ver in zip(changes.removals, versions[len(payloads) :], strict=True)
        ]
        queue = self._queues.get(user)
        if queue is not None:
            queue.append((resources, payloads))  # its sender is running and will get to them
            return
        self._queues[user] = queue = deque([(resources, payloads)])
        task = asyncio.ensure_future(self._send_all(user, queue))
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)

    async def wait_idle(self) -> None:
        """Return once every queued push has been sent (or failed)."""
        while self._senders:
            await asyncio.gather(*self._senders, return_exceptions=True)

    async def stop(self) -> None:
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)

    def _retry_module(self) -> None:
        self._module_pushes = True

    async def _send_all(self, user: str, queue: deque[tuple[list[str], list[ET.Element]]]) -> None:
        """Send a user's batches in order: a later change must land last."""
        try:
            while queue:
                resources, payloads = queue.popleft()
                if not (self._module_pushes and await self._by_module(user, resources, payloads)):
                    await self._privileged(user, resources, payloads)
        finally:
            del self._queues[user]

    async def _by_module(self, user: str, resources: list[str], payloads: list[ET.Element]) -> bool:
        """Through the shipped module; False when the server has none to take them."""
        username, _, domain = user.partition("@")
        request = stanzas.push_request(username, resources, payloads)
        try:
            async with self._slots:
                result = await self._link.send_iq(domain, "set", request)
        except IqRefusedError as exc:
            if exc.condition not in _NOT_SUPPORTED:
                log.info("roster.push_failed", user=user, error=str(exc))
                return True
            if self._module_pushes:
                self._module_pushes = False
                log.warning(
                    "roster.module_push_unsupported",
                    error=str(exc),
                    hint="update mod_roster_admin_presence (deploy/prosody/) on the server: "
                    "until then every push costs a privileged IQ per client",
                )
            return False
        except IqUnansweredError as exc:
            log.info("roster.push_failed", user=user, error=str(exc))
            return True
        for resource in stanzas.parse_push_result(result):
            self._online.forget(JID(resource))
        return True

    async def _privileged(
        self, user: str, resources: Sequence[str], payloads: list[ET.Element]
    ) -> None:
        if not self._grants.privileges.can_send_iq(stanzas.ROSTER_NS, "set"):
            log.warning(
                "roster.push_skipped",
                user=user,
                why="no iq privilege for jabber:iq:roster",
                hint='grant iq = { ["jabber:iq:roster"] = "both" } so clients get pushes',
            )
            return
        await asyncio.gather(*(self._to_client(user, r, payloads) for r in resources))

    async def _to_client(self, user: str, resource: str, payloads: list[ET.Element]) -> None:
        """One client's pushes, in order, each a privileged IQ."""
        for payload in payloads:
            wrapped = stanzas.privileged_iq(user, resource, uuid.uuid4().hex, payload)
            try:
                async with self._slots:
                    await self._link.send_iq(user, "set", wrapped)
            except IqRefusedError as exc:
                log.info("roster.push_failed", resource=resource, error=str(exc))
                if exc.condition in _SESSION_GONE:
                    # We missed its unavailable presence: stop pushing to it.
                    self._online.forget(JID(resource))
                    return
            except IqUnansweredError as exc:
                log.info("roster.push_failed", resource=resource, error=str(exc))
