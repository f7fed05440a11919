"""Roster pushes to clients, while the server delegates rosters to us.

The server then sends none itself (it never saw the clients' roster requests), so we send
them as privileged IQs (XEP-0356 ``iq`` permission) from the user to each of their clients.
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
    from xml.etree import ElementTree as ET

    from component.roster import RosterDiff
    from component.xmpp.delegation import DelegatedRosters
    from component.xmpp.grants import Grants
    from component.xmpp.link import Stream
    from component.xmpp.presence import OnlineUsers

log = structlog.get_logger(__name__)

# Error conditions meaning a client's session is gone (not that the server had a hiccup).
_SESSION_GONE = frozenset({"service-unavailable", "recipient-unavailable", "item-not-found"})
# slixmpp slows down with many IQs in flight (every one is a handler to scan).
_PUSHES_IN_FLIGHT = 64


class RosterPusher:
    """Sends each client its roster pushes strictly in order, one sender per client."""

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
        # full JID -> pushes not yet sent to it; one sender task per JID while non-empty.
        self._queues: dict[str, deque[ET.Element]] = {}
        self._senders: set[asyncio.Task[None]] = set()

    def push(self, user: str, changes: RosterDiff, version: str) -> None:
        """Queue pushes for ``changes`` to every resource of ``user`` we know of.

        Only while the server delegates rosters to us: otherwise it pushes our writes itself.
        ``version`` is the roster's version (XEP-0237) once all of them are applied: the last
        push carries it, each earlier one a version of its own derived from it (opaque to the
        client, which gets the whole roster if it ever comes back with one of those).
        """
        if not self._delegation.active:
            return
        resources = self._online.resources(user)
        if not resources:
            return
        if not self._grants.privileges.can_send_iq(stanzas.ROSTER_NS, "set"):
            log.warning(
                "roster.push_skipped",
                user=user,
                why="no iq privilege for jabber:iq:roster",
                hint='grant iq = { ["jabber:iq:roster"] = "both" } so clients get pushes',
            )
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
        for resource in resources:
            queue = self._queues.get(resource)
            if queue is not None:
                queue.extend(payloads)  # its sender is running and will get to them
                continue
            self._queues[resource] = queue = deque(payloads)
            task = asyncio.ensure_future(self._send_all(user, resource, queue))
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

    async def _send_all(self, user: str, resource: str, queue: deque[ET.Element]) -> None:
        """Send one client its pushes in order: a later change must land last."""
        try:
            while queue:
                payload = queue.popleft()
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
        finally:
            del self._queues[resource]
