"""Users' roster requests that the server delegates to us (XEP-0355).

GETs are answered with the web app's roster (through the roster provider the application
hands us); SETs, and anything else a user must not do, are refused.

With the shipped Prosody module, GETs come another way: we ask the module to hold them, it
asks us to sync the user, and once we have answered, the server answers from its store (now
in line) as it does without delegation: the roster crosses our stream only where it changed,
and the server pushes to those sessions itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

import structlog
from slixmpp.jid import JID, InvalidJID

from component import metrics, stanzas
from component.errors import IqRefusedError, IqUnansweredError
from component.xmpp.link import STREAM_NS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from component.roster import Roster
    from component.xmpp.grants import Grants
    from component.xmpp.link import Stream
    from component.xmpp.presence import OnlineUsers

log = structlog.get_logger(__name__)

# How long answers to users' roster requests may take to finish when we stop.
_ANSWER_DRAIN = 5.0
# Synced users per message to the module at most: its refs are 8 characters, so a message
# stays near 10 KB, far below any stanza size limit.
_SYNCED_PER_MESSAGE = 256


class DelegatedRosters:
    """Answers delegated roster requests, and says whether the delegation is in place."""

    def __init__(  # noqa: PLR0913 -- the collaborators and three settings
        self,
        link: Stream,
        grants: Grants,
        online: OnlineUsers,
        *,
        domain: str,
        roster_provider: Callable[[str], Awaitable[tuple[Roster, str]]],
        sync_provider: Callable[[str], Awaitable[None]],
        max_stanza_bytes: int,
        expected: bool,
    ) -> None:
        self._link = link
        self._grants = grants
        self._expected = expected
        self._online = online
        self._domain = domain
        self._roster_provider = roster_provider
        self._sync_provider = sync_provider
        self._max_stanza_bytes = max_stanza_bytes
        self._answers: set[asyncio.Task[None]] = set()
        # The server holds roster requests for us (asked once per connection).
        self._held = False
        self._asking: asyncio.Task[None] | None = None
        for node in stanzas.delegation_disco_nodes(stanzas.ROSTER_NS):
            # The server asks for these nodes to nest our features in its own disco.
            link.add_disco_feature(stanzas.ROSTER_NS, node)
        link.handle(
            "delegated iq",
            f"{{{STREAM_NS}}}iq/{{{stanzas.DELEGATION_NS}}}delegation",
            self._on_delegated,
        )
        # Held requests come and are answered several to a message, as many as were held (or
        # synced) together: an iq and its answer per login cost the server more than the hold.
        self._synced: list[tuple[str, str | None]] = []
        self._tell_synced: asyncio.Handle | None = None
        link.handle(
            "held roster requests",
            f"{{{STREAM_NS}}}message/{{{stanzas.PRESENCE_UPDATE_NS}}}sync",
            self._on_sync_batch,
        )
        grants.on_change(self._check_unexpected)
        grants.on_change(self._ask_hold)

    @property
    def active(self) -> bool:
        """The server hands us users' roster requests (and sends no roster pushes itself)."""
        return stanzas.ROSTER_NS in self._grants.delegated

    def problem(self) -> str | None:
        """Why we cannot serve rosters yet, when delegation is expected; None when in place."""
        if self.active or not self._expected:
            return None
        return (
            "the server does not delegate jabber:iq:roster to us: add the delegations line "
            "to the VirtualHost, or set server.delegate_roster = false"
        )

    def _check_unexpected(self) -> None:
        if self.active and not self._expected:
            # It works (we answer and push), but the operator should know the config is off.
            log.warning(
                "xmpp.delegation_unexpected",
                hint="the server delegates rosters to us: set server.delegate_roster = true",
            )

    @property
    def held(self) -> bool:
        """The server holds users' roster requests while we sync, then answers them itself."""
        return self._held

    def _ask_hold(self) -> None:
        if not self.active:
            self._held = False  # lost with the link, or no longer delegated
            return
        if not self._held and self._asking is None:
            self._asking = asyncio.ensure_future(self._hold())

    async def _hold(self) -> None:
        try:
            await self._link.send_iq(self._domain, "set", stanzas.hold_request())
        except IqRefusedError as exc:
            # An older module (or another server): we answer the requests ourselves.
            log.info("roster.hold_unsupported", error=str(exc))
        except IqUnansweredError as exc:
            log.info("roster.hold_failed", error=str(exc))
        else:
            self._held = self.active
            log.info("roster.requests_held")
        finally:
            self._asking = None

    async def stop(self) -> None:
        """Finish answering users (bounded): an unanswered request leaves a client waiting."""
        if self._asking is not None:
            self._asking.cancel()
        if self._answers:
            await asyncio.wait(self._answers, timeout=_ANSWER_DRAIN)
        for task in self._answers:
            task.cancel()
        await asyncio.gather(*self._answers, return_exceptions=True)

    def _on_delegated(self, iq: Any) -> None:
        if iq["type"] not in {"get", "set"}:
            return  # never answer a result or an error
        self._spawn(self._answer_delegated(iq))

    def _spawn(self, answer: Awaitable[None]) -> None:
        task = asyncio.ensure_future(answer)
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    def _on_sync_batch(self, message: Any) -> None:
        sender = message["from"].full
        if sender != self._domain:
            # The module takes word of synced users from us alone: nothing to answer.
            log.warning("xmpp.sync_request_spoofed", sender=sender)
            metrics.DELEGATED.labels(result="spoofed").inc()
            return
        held, malformed = stanzas.parse_sync_batch(message.xml)
        for ref in malformed:
            log.warning("xmpp.sync_request_malformed", ref=ref, why="no user or session")
            metrics.DELEGATED.labels(result="malformed").inc()
            self._synced_one(ref, "bad-request")
        for request in held:
            self._spawn(self._answer_sync(request))

    async def _answer_sync(self, request: stanzas.HeldRequest) -> None:
        try:
            condition = await self._sync_for(request)
        except BaseException:
            # Cancelled (we are stopping) or a bug: the server answers from its store now,
            # told at once (the loop may not run the batched word any more).
            self._synced_one(request.ref, "internal-server-error")
            self._send_synced()
            raise
        self._synced_one(request.ref, condition)

    async def _sync_for(self, request: stanzas.HeldRequest) -> str | None:
        """Sync the user whose roster request the server holds: None once done (the server
        then answers from its store, so a failed sync serves the last good roster), or the
        error condition to tell the server with."""
        try:
            session = JID(request.session)
        except InvalidJID:
            session = None
        if session is None or session.bare != f"{request.username}@{self._domain}":
            log.warning(
                "xmpp.sync_request_malformed", user=request.username, session=request.session
            )
            metrics.DELEGATED.labels(result="malformed").inc()
            return "bad-request"
        # The server pushes to this session from now on.
        self._online.answered_by_server(session)
        await self._sync_provider(request.username)
        metrics.DELEGATED.labels(result="held").inc()
        return None

    def _synced_one(self, ref: str, condition: str | None) -> None:
        """Tell the server, with the others synced in this turn of the loop."""
        self._synced.append((ref, condition))
        if self._tell_synced is None:
            self._tell_synced = asyncio.get_running_loop().call_soon(self._send_synced)

    def _send_synced(self) -> None:
        if self._tell_synced is not None:
            self._tell_synced.cancel()
            self._tell_synced = None
        outcomes, self._synced = self._synced, []
        for start in range(0, len(outcomes), _SYNCED_PER_MESSAGE):
            batch = outcomes[start : start + _SYNCED_PER_MESSAGE]
            self._link.send_message(self._domain, stanzas.synced_answer(batch))

    async def _answer_delegated(self, iq: Any) -> None:
        if iq["from"].full != self._domain:
            # Only the server may hand us a user's request: anyone else could forge the
            # forwarded sender and read or probe another user's roster.
            log.warning("xmpp.delegation_spoofed", sender=iq["from"].full)
            metrics.DELEGATED.labels(result="spoofed").inc()
            _send_error(iq, "auth", "forbidden")
            return
        request = stanzas.parse_delegated(iq.xml)
        if request is None:
            log.warning("xmpp.delegation_malformed", stanza=str(iq))
            metrics.DELEGATED.labels(result="malformed").inc()
            _send_error(iq, "modify", "bad-request")
            return
        reply = iq.reply(clear=True)
        try:
            answer = await self._answer(request)
        except BaseException:
            # Cancelled (we are stopping) or a bug: the user still gets an answer.
            reply.append(stanzas.delegated_error(request, "wait", "internal-server-error"))
            reply.send()
            raise
        reply.append(answer)
        reply.send()

    async def _answer(self, request: stanzas.DelegatedRequest) -> ET.Element:
        refusal = refusal_for(request, self._domain)
        if refusal is not None:
            return refusal
        sender = JID(request.sender)
        bound = log.bind(sender=request.sender)
        # Before the wait, so that no change is lost for this client: a sync that finishes
        # while we answer from the store pushes to it (the answering sync's own changes are
        # pushed too, which is redundant but harmless: pushes are idempotent).
        self._online.answered_by_us(sender)
        try:
            roster, current = await self._roster_provider(sender.user)
        except Exception:  # noqa: BLE001 -- the user must get an answer whatever went wrong
            metrics.DELEGATED.labels(result="error").inc()
            bound.exception("roster.answer_failed")
            return stanzas.delegated_error(request, "wait", "internal-server-error")
        if request.payload is not None and request.payload.get("ver") == current:
            # XEP-0237: the client holds this very roster; an empty result says so.
            metrics.DELEGATED.labels(result="unchanged").inc()
            bound.debug("roster.answered", contacts=len(roster), unchanged=True)
            return stanzas.delegated_result(request, None)
        answer = stanzas.delegated_result(request, stanzas.roster_query(roster, current))
        # Serialized to measure only when the cheap bound comes near the limit.
        size = stanzas.size_bound(answer)
        if size > self._max_stanza_bytes:
            size = len(ET.tostring(answer, encoding="unicode").encode())
        if size > self._max_stanza_bytes:
            # The server would close our stream over it, failing every user at once.
            metrics.DELEGATED.labels(result="too_large").inc()
            bound.error(
                "roster.answer_too_large",
                contacts=len(roster),
                bytes=size,
                limit=self._max_stanza_bytes,
                hint="raise component_stanza_size_limit and server.max_stanza_bytes together",
            )
            return stanzas.delegated_error(request, "wait", "resource-constraint")
        metrics.DELEGATED.labels(result="ok").inc()
        bound.debug("roster.answered", contacts=len(roster))
        return answer


def _send_error(iq: Any, error_type: str, condition: str) -> None:
    error = iq.reply(clear=True)
    error["type"] = "error"
    error["error"]["type"] = error_type
    error["error"]["condition"] = condition
    error.send()


def refusal_for(request: stanzas.DelegatedRequest, domain: str) -> ET.Element | None:
    """The error answer for a delegated request we must not serve, or None to serve it."""
    bound = log.bind(sender=request.sender, iq_type=request.type)
    try:
        sender = JID(request.sender)
        target = JID(request.to) if request.to else None
    except InvalidJID:
        metrics.DELEGATED.labels(result="malformed").inc()
        return stanzas.delegated_error(request, "modify", "jid-malformed")
    if request.namespace != stanzas.ROSTER_NS:
        metrics.DELEGATED.labels(result="not_roster").inc()
        return stanzas.delegated_error(request, "cancel", "service-unavailable")
    if sender.domain != domain or not sender.user:
        metrics.DELEGATED.labels(result="forbidden").inc()
        bound.warning("roster.request_refused", why="not a user of our domain")
        return stanzas.delegated_error(request, "cancel", "forbidden")
    if target is not None and target.bare != sender.bare:
        # Prosody delegates requests addressed to another user's roster to us as well.
        metrics.DELEGATED.labels(result="forbidden").inc()
        bound.warning("roster.foreign_request_refused", target=target.full)
        return stanzas.delegated_error(request, "auth", "forbidden")
    if request.type == "set":
        metrics.DELEGATED.labels(result="set_refused").inc()
        bound.info("roster.set_refused")
        return stanzas.delegated_error(request, "cancel", "not-allowed")
    return None
