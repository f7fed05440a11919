"""The XMPP adapter: a slixmpp external component (XEP-0114).

It keeps the link to the server up, tracks the privileges the server grants (XEP-0356),
answers users' delegated roster requests (XEP-0355), pushes roster changes to the clients
that asked for their roster, and reports users coming online. It does not know the web app:
the application hands it a callable that produces a user's roster.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

import structlog
from slixmpp import ComponentXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import JID, InvalidJID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from component import metrics, stanzas
from component.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from component.config import Config
    from component.roster import Roster, RosterDiff
    from component.store import IqType

log = structlog.get_logger(__name__)

_NS = "jabber:component:accept"
# Error conditions meaning a client's session is gone (not that the server had a hiccup).
_SESSION_GONE = frozenset({"service-unavailable", "recipient-unavailable", "item-not-found"})
# How long the server gets to send its delegation advertisement after the privileges one.
_DELEGATION_GRACE = 5.0
# How long answers to users' roster requests may take to finish when we stop.
_ANSWER_DRAIN = 5.0


class XmppAdapter:
    """Owns the component stream and translates between the server and the service."""

    def __init__(
        self,
        config: Config,
        *,
        roster_provider: Callable[[str], Awaitable[Roster]],
        on_available: Callable[[str], None],
        on_ready_change: Callable[[bool], None] = lambda _: None,
    ) -> None:
        self._config = config.component
        self._domain = config.users.domain
        self._iq_timeout = config.sync.xmpp_timeout
        self._delegate_roster = config.server.delegate_roster
        self._max_stanza_bytes = config.server.max_stanza_bytes
        self._roster_provider = roster_provider
        self._on_available = on_available
        self._on_ready_change = on_ready_change
        self._privileges = stanzas.Privileges()
        self._privileges_known = False
        self._delegated: frozenset[str] = frozenset()
        self._connected = False
        self._stopping = False
        self._ready = asyncio.Event()
        self._attempt = 0
        self._reconnect: asyncio.TimerHandle | None = None
        self._answers: set[asyncio.Task[None]] = set()
        self._pushes: set[asyncio.Task[None]] = set()
        # slixmpp slows down with many IQs in flight (every one is a handler to scan).
        self._push_slots = asyncio.Semaphore(64)
        # user bare JID -> full JIDs to push roster changes to (see _track_resource).
        self._resources: dict[str, set[str]] = {}
        # full JID -> pushes not yet sent to it; one sender task per JID while non-empty.
        self._push_queues: dict[str, deque[ET.Element]] = {}

        xmpp = ComponentXMPP(self._config.jid, self._config.secret)
        # slixmpp's own presence handling keeps a roster entry for every user who ever sent
        # presence and answers subscriptions on its own: we want neither.
        xmpp.remove_handler("Presence")
        xmpp.register_plugin("xep_0030")
        for node in stanzas.delegation_disco_nodes(stanzas.ROSTER_NS):
            # The server asks for these nodes to nest our features in its own disco.
            xmpp.plugin["xep_0030"].add_feature(
                stanzas.ROSTER_NS, node=node, jid=JID(self._config.jid)
            )
        xmpp.register_handler(
            Callback("advertisements", MatchXPath(f"{{{_NS}}}message"), self._on_message)
        )
        xmpp.register_handler(
            Callback(
                "delegated iq",
                MatchXPath(f"{{{_NS}}}iq/{{{stanzas.DELEGATION_NS}}}delegation"),
                self._on_delegated,
            )
        )
        xmpp.register_handler(
            Callback("user presence", MatchXPath(f"{{{_NS}}}presence"), self._on_presence)
        )
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("disconnected", self._on_disconnected)
        xmpp.add_event_handler("connection_failed", self._on_connection_failed)
        xmpp.add_event_handler("stream_error", self._on_stream_error)
        self._xmpp = xmpp

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Connected, allowed to read and write users' rosters, and delegated to if we should be."""
        return self._ready.is_set()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def delegated(self) -> frozenset[str]:
        return self._delegated

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def start(self) -> None:
        self._stopping = False
        self._connect()

    async def stop(self) -> None:
        """Finish answering users (bounded), then close the stream."""
        self._stopping = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        if self._answers:
            # A delegated request we never answer leaves the client waiting forever.
            await asyncio.wait(self._answers, timeout=_ANSWER_DRAIN)
        for task in self._answers | self._pushes:
            task.cancel()
        await asyncio.gather(*self._answers, *self._pushes, return_exceptions=True)
        self._xmpp.cancel_connection_attempt()
        if self._connected:
            await self._xmpp.disconnect(wait=2.0)
        else:
            self._xmpp.abort()
        self._set_ready(ready=False)

    def _connect(self) -> None:
        self._reconnect = None
        log.info("xmpp.connecting", host=self._config.host, port=self._config.port)
        self._xmpp.connect(self._config.host, self._config.port)

    def _schedule_reconnect(self) -> None:
        if self._stopping or self._reconnect is not None:
            return
        # slixmpp's own retry loop backs off up to five minutes; ours is capped by config.
        self._xmpp.cancel_connection_attempt()
        self._attempt += 1
        delay = reconnect_delay(self._attempt, self._config.reconnect_max_delay)
        log.info("xmpp.reconnect_scheduled", delay_s=round(delay, 2), attempt=self._attempt)
        self._reconnect = asyncio.get_running_loop().call_later(delay, self._connect)

    def _on_session_start(self, _event: object) -> None:
        self._connected = True
        self._attempt = 0
        log.info("xmpp.connected", jid=self._config.jid)

    def _on_disconnected(self, reason: object) -> None:
        was_connected, self._connected = self._connected, False
        self._privileges = stanzas.Privileges()
        self._privileges_known = False
        self._delegated = frozenset()
        # The server replays every online session's presence when we are back.
        self._resources.clear()
        self._set_ready(ready=False)
        if was_connected:
            (log.info if self._stopping else log.warning)(
                "xmpp.disconnected", reason=str(reason) if reason else None
            )
        self._schedule_reconnect()

    def _on_connection_failed(self, error: object) -> None:
        log.warning("xmpp.connection_failed", error=str(error))
        self._schedule_reconnect()

    def _on_stream_error(self, error: Any) -> None:
        condition = error["condition"]
        hint = None
        if condition == "not-authorized":
            hint = "check component.secret and component.jid"
        elif condition in {"policy-violation", "not-well-formed"}:
            hint = "a stanza was too large? compare server.max_stanza_bytes with the server's limit"
        log.error("xmpp.stream_error", condition=condition, text=error["text"], hint=hint)

    def _set_ready(self, *, ready: bool) -> None:
        if ready == self._ready.is_set():
            return
        metrics.READY.set(int(ready))
        if ready:
            self._ready.set()
            log.info("xmpp.ready", domain=self._domain, delegated=sorted(self._delegated))
        else:
            self._ready.clear()
        self._on_ready_change(ready)

    # --- advertisements (XEP-0356, XEP-0355) ----------------------------------------------

    def _on_message(self, msg: Any) -> None:
        privilege = stanzas.find_privilege(msg.xml)
        delegated = stanzas.delegated_namespaces(msg.xml)
        if privilege is None and delegated is None:
            return
        if msg["from"].full != self._domain:
            log.warning(
                "xmpp.advertisement_ignored",
                sender=msg["from"].full,
                hint=f"we manage {self._domain}; check users.domain",
            )
            return
        if privilege is not None:
            self._privileges = stanzas.parse_privileges(privilege)
            self._privileges_known = True
            log.info(
                "xmpp.privileges",
                roster=self._privileges.roster,
                presence=self._privileges.presence,
                iq=self._privileges.iq,
            )
            self._check_privileges()
            if self._delegate_roster and stanzas.ROSTER_NS not in self._delegated:
                asyncio.get_running_loop().call_later(_DELEGATION_GRACE, self._check_delegation)
        if delegated is not None:
            self._delegated = delegated
            log.info("xmpp.delegations", namespaces=sorted(delegated))
            if stanzas.ROSTER_NS in delegated and not self._delegate_roster:
                log.warning(
                    "xmpp.delegation_unexpected",
                    hint="the server delegates rosters to us: set server.delegate_roster = true",
                )
        self._update_readiness()

    def _check_privileges(self) -> None:
        """Say what the server's privileged_entities lacks, if anything."""
        granted = self._privileges
        if not (granted.can_read_rosters() and granted.can_write_rosters()):
            log.error(
                "xmpp.privileges_insufficient",
                roster=granted.roster,
                hint=f'grant roster = "both" to {self._config.jid} in privileged_entities',
            )
        if granted.presence != "roster":
            log.warning(
                "xmpp.presence_privilege_missing",
                hint='grant presence = "roster" so users are synced when they come online',
            )
        if self._delegate_roster and not granted.can_send_iq(stanzas.ROSTER_NS, "set"):
            log.warning(
                "xmpp.push_privilege_missing",
                hint='grant iq = { ["jabber:iq:roster"] = "both" } so clients get pushes',
            )

    def _check_delegation(self) -> None:
        if self._connected and self._privileges_known and not self.ready:
            log.error(
                "xmpp.delegation_missing",
                hint="the server does not delegate jabber:iq:roster to us: add the delegations "
                "line to the VirtualHost, or set server.delegate_roster = false",
            )

    def _update_readiness(self) -> None:
        granted = self._privileges
        can_sync = granted.can_read_rosters() and granted.can_write_rosters()
        delegated = stanzas.ROSTER_NS in self._delegated or not self._delegate_roster
        self._set_ready(ready=can_sync and delegated)

    # --- presence ------------------------------------------------------------------------

    def _on_presence(self, presence: Any) -> None:
        sender: JID = presence["from"]
        if sender.domain != self._domain or not sender.user or not sender.resource:
            return
        kind = presence["type"]
        if kind == "unavailable":
            self._forget_resource(sender)
        elif kind in {"available", "", *presence.showtypes}:
            self._track_resource(sender)
            self._on_available(sender.user)

    def online_users(self) -> list[str]:
        """Usernames with a session we know of (from presence, or a roster request)."""
        return [bare.partition("@")[0] for bare in self._resources]

    def is_online(self, username: str) -> bool:
        return f"{username}@{self._domain}" in self._resources

    def _track_resource(self, full: JID) -> None:
        # Resources that asked us for their roster, or that are online: a client that is
        # online has received its roster, and after our restart that request is forgotten.
        self._resources.setdefault(full.bare, set()).add(full.full)

    def _forget_resource(self, full: JID) -> None:
        resources = self._resources.get(full.bare)
        if resources is not None:
            resources.discard(full.full)
            if not resources:
                del self._resources[full.bare]

    # --- delegated roster requests (XEP-0355) ----------------------------------------------

    def _on_delegated(self, iq: Any) -> None:
        if iq["type"] not in {"get", "set"}:
            return  # never answer a result or an error
        self._spawn(self._answers, self._answer_delegated(iq))

    async def _answer_delegated(self, iq: Any) -> None:
        if iq["from"].full != self._domain:
            # Only the server may hand us a user's request: anyone else could forge the
            # forwarded sender and read or probe another user's roster.
            log.warning("xmpp.delegation_spoofed", sender=iq["from"].full)
            metrics.DELEGATED.labels(result="spoofed").inc()
            self._send_error(iq, "auth", "forbidden")
            return
        request = stanzas.parse_delegated(iq.xml)
        if request is None:
            log.warning("xmpp.delegation_malformed", stanza=str(iq))
            metrics.DELEGATED.labels(result="malformed").inc()
            self._send_error(iq, "modify", "bad-request")
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

    @staticmethod
    def _send_error(iq: Any, error_type: str, condition: str) -> None:
        error = iq.reply(clear=True)
        error["type"] = "error"
        error["error"]["type"] = error_type
        error["error"]["condition"] = condition
        error.send()

    async def _answer(self, request: stanzas.DelegatedRequest) -> ET.Element:
        refusal = refusal_for(request, self._domain)
        if refusal is not None:
            return refusal
        sender = JID(request.sender)
        bound = log.bind(sender=request.sender)
        # Before the wait, so that no change is lost for this client: a sync that finishes
        # while we answer from the store pushes to it (the answering sync's own changes are
        # pushed too, which is redundant but harmless: pushes are idempotent).
        self._track_resource(sender)
        try:
            roster = await self._roster_provider(sender.user)
        except Exception:  # noqa: BLE001 -- the user must get an answer whatever went wrong
            metrics.DELEGATED.labels(result="error").inc()
            bound.exception("roster.answer_failed")
            return stanzas.delegated_error(request, "wait", "internal-server-error")
        answer = stanzas.delegated_result(request, stanzas.roster_query(roster))
        size = len(ET.tostring(answer))
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

    # --- outgoing IQs ----------------------------------------------------------------------

    async def send_iq(self, to: str, iq_type: IqType, payload: ET.Element) -> ET.Element:
        """Send an IQ from our domain and return the result; StoreError on any failure."""
        if not self._connected:
            raise StoreError("the XMPP link is down", "remote-server-not-found")
        iq = self._xmpp.make_iq(ito=to, ifrom=self._config.jid, itype=iq_type)
        iq.append(payload)
        try:
            result = await iq.send(timeout=self._iq_timeout)
        except IqError as exc:
            condition = stanzas.error_condition(exc.iq.xml)
            raise StoreError(f"{iq_type} to {to} refused: {condition}", condition) from None
        except IqTimeout:
            raise StoreError(
                f"{iq_type} to {to}: no answer in {self._iq_timeout}s", "remote-server-timeout"
            ) from None
        xml: ET.Element = result.xml
        return xml

    def push(self, user: str, changes: RosterDiff) -> None:
        """Send roster pushes for ``changes`` to every resource of ``user`` we know of.

        Only while the server delegates rosters to us: it then sends no pushes itself, having
        never seen the clients' requests; otherwise it pushes our privileged writes itself.
        """
        if stanzas.ROSTER_NS not in self._delegated:
            return
        resources = sorted(self._resources.get(user, ()))
        if not resources:
            return
        if not self._privileges.can_send_iq(stanzas.ROSTER_NS, "set"):
            log.warning(
                "roster.push_skipped", user=user, why="no iq privilege for jabber:iq:roster"
            )
            return
        payloads = [stanzas.roster_query({c.jid: c}) for c in changes.upserts]
        payloads += [stanzas.roster_removal(jid) for jid in changes.removals]
        for resource in resources:
            queue = self._push_queues.get(resource)
            if queue is not None:
                queue.extend(payloads)  # its sender is running and will get to them
                continue
            self._push_queues[resource] = queue = deque(payloads)
            self._spawn(self._pushes, self._push_to(user, resource, queue))

    async def _push_to(self, user: str, resource: str, queue: deque[ET.Element]) -> None:
        """Send one client its pushes strictly in order: a later change must land last."""
        try:
            while queue:
                payload = queue.popleft()
                wrapped = stanzas.privileged_iq(user, resource, uuid.uuid4().hex, payload)
                try:
                    async with self._push_slots:
                        await self.send_iq(user, "set", wrapped)
                except StoreError as exc:
                    log.info("roster.push_failed", resource=resource, error=str(exc))
                    if exc.condition in _SESSION_GONE:
                        # We missed its unavailable presence: stop pushing to it.
                        self._forget_resource(JID(resource))
                        return
        finally:
            del self._push_queues[resource]

    @staticmethod
    def _spawn(tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def reconnect_delay(attempt: int, cap: float) -> float:
    """Seconds before reconnection attempt number ``attempt`` (1, 2, ...): at most ``cap``.

    Doubling from 1 s, with jitter so that components restarted together do not reconnect
    in step; the jitter only shortens the wait, so the cap holds as documented.
    """
    base = min(cap, 0.5 * 2.0 ** min(attempt, 16))
    return base * random.uniform(0.8, 1.0)  # noqa: S311 -- jitter, not cryptography


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
