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
from typing import TYPE_CHECKING, Any

import structlog
from slixmpp import ComponentXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import JID, InvalidJID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from component import metrics, stanzas
from component.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from xml.etree import ElementTree as ET

    from component.config import ComponentConfig
    from component.roster import Roster, RosterDiff
    from component.store import IqType

log = structlog.get_logger(__name__)

_NS = "jabber:component:accept"


class XmppAdapter:
    """Owns the component stream and translates between the server and the service."""

    def __init__(
        self,
        config: ComponentConfig,
        *,
        users_domain: str,
        iq_timeout: float,
        roster_provider: Callable[[str], Awaitable[Roster]],
        on_available: Callable[[str], None],
    ) -> None:
        self._config = config
        self._domain = users_domain
        self._iq_timeout = iq_timeout
        self._roster_provider = roster_provider
        self._on_available = on_available
        self._privileges = stanzas.Privileges()
        self._delegated: frozenset[str] = frozenset()
        self._connected = False
        self._stopping = False
        self._ready = asyncio.Event()
        self._attempt = 0
        self._reconnect: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # slixmpp slows down with many IQs in flight (every one is a handler to scan).
        self._push_slots = asyncio.Semaphore(64)
        # user bare JID -> full JIDs to push roster changes to (see _track_resource).
        self._resources: dict[str, set[str]] = {}

        xmpp = ComponentXMPP(config.jid, config.secret, config.host, config.port)
        xmpp.register_plugin("xep_0030")
        for node in stanzas.delegation_disco_nodes(stanzas.ROSTER_NS):
            # The server asks for these nodes to nest our features in its own disco.
            xmpp.plugin["xep_0030"].add_feature(stanzas.ROSTER_NS, node=node, jid=JID(config.jid))
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
        """Connected, and allowed to read and write users' rosters."""
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
        """Close the stream and wait for what we started to finish."""
        self._stopping = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        self._xmpp.cancel_connection_attempt()
        if self._connected:
            await self._xmpp.disconnect(wait=2.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
        delay = min(self._config.reconnect_max_delay, 0.5 * 2 ** min(self._attempt, 10))
        delay *= random.uniform(0.8, 1.2)  # noqa: S311 -- jitter, not cryptography
        log.info("xmpp.reconnect_scheduled", delay_s=round(delay, 2), attempt=self._attempt)
        self._reconnect = asyncio.get_running_loop().call_later(delay, self._connect)

    def _on_session_start(self, _event: object) -> None:
        self._connected = True
        self._attempt = 0
        log.info("xmpp.connected", jid=self._config.jid)

    def _on_disconnected(self, reason: object) -> None:
        was_connected, self._connected = self._connected, False
        self._privileges = stanzas.Privileges()
        self._delegated = frozenset()
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
        hint = "check component.secret and component.jid" if condition == "not-authorized" else None
        log.error("xmpp.stream_error", condition=condition, text=error["text"], hint=hint)

    def _set_ready(self, *, ready: bool) -> None:
        if ready == self._ready.is_set():
            return
        metrics.READY.set(int(ready))
        if ready:
            self._ready.set()
            log.info("xmpp.ready", domain=self._domain)
        else:
            self._ready.clear()

    # --- advertisements (XEP-0356, XEP-0355) ----------------------------------------------

    def _on_message(self, msg: Any) -> None:
        if msg["from"].bare != self._domain:
            return
        privilege = stanzas.find_privilege(msg.xml)
        if privilege is not None:
            self._privileges = stanzas.parse_privileges(privilege)
            log.info(
                "xmpp.privileges",
                roster=self._privileges.roster,
                presence=self._privileges.presence,
                iq=self._privileges.iq,
            )
        delegated = stanzas.delegated_namespaces(msg.xml)
        if delegated is not None:
            self._delegated = delegated
            log.info("xmpp.delegations", namespaces=sorted(delegated))
        if privilege is not None or delegated is not None:
            self._check_grants(privileges_known=privilege is not None)

    def _check_grants(self, *, privileges_known: bool) -> None:
        """Become ready, or say what the server's configuration lacks.

        The two advertisements arrive in either order; each is checked once both could be.
        """
        granted = self._privileges
        can_sync = granted.can_read_rosters() and granted.can_write_rosters()
        if privileges_known:
            if not can_sync:
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
        if (
            stanzas.ROSTER_NS in self._delegated
            and can_sync
            and not granted.can_send_iq(stanzas.ROSTER_NS, "set")
        ):
            log.warning(
                "xmpp.push_privilege_missing",
                hint='grant iq = { ["jabber:iq:roster"] = "both" } so clients get pushes',
            )
        self._set_ready(ready=can_sync)

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
        self._spawn(self._answer_delegated(iq))

    async def _answer_delegated(self, iq: Any) -> None:
        if iq["from"].full != self._domain:
            # Only the server may hand us a user's request: anyone else could forge the
            # forwarded sender and read or probe another user's roster.
            log.warning("xmpp.delegation_spoofed", sender=iq["from"].full)
            self._send_error(iq, "auth", "forbidden")
            return
        request = stanzas.parse_delegated(iq.xml)
        if request is None:
            log.warning("xmpp.delegation_malformed", stanza=str(iq))
            self._send_error(iq, "modify", "bad-request")
            return
        reply = iq.reply(clear=True)
        answer = await self._answer(request)
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
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        sender = JID(request.sender)
        bound = log.bind(sender=request.sender)
        try:
            roster = await self._roster_provider(sender.user)
        except Exception:  # noqa: BLE001 -- the user must get an answer whatever went wrong
            metrics.DELEGATED.labels(result="error").inc()
            bound.exception("roster.answer_failed")
            return stanzas.delegated_error(request, "wait", "internal-server-error")
        self._track_resource(sender)
        metrics.DELEGATED.labels(result="ok").inc()
        bound.debug("roster.answered", contacts=len(roster))
        return stanzas.delegated_result(request, stanzas.roster_query(roster))

    def _refusal(self, request: stanzas.DelegatedRequest) -> ET.Element | None:
        """The error answer for a request we must not serve, or None to serve it."""
        bound = log.bind(sender=request.sender, iq_type=request.type)
        try:
            sender = JID(request.sender)
            target = JID(request.to) if request.to else None
        except InvalidJID:
            return stanzas.delegated_error(request, "modify", "jid-malformed")
        if request.namespace != stanzas.ROSTER_NS:
            return stanzas.delegated_error(request, "cancel", "service-unavailable")
        if sender.domain != self._domain or not sender.user:
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
            for payload in payloads:
                self._spawn(self._push_one(user, resource, payload))

    async def _push_one(self, user: str, resource: str, payload: ET.Element) -> None:
        wrapped = stanzas.privileged_iq(user, resource, uuid.uuid4().hex, payload)
        try:
            async with self._push_slots:
                await self.send_iq(user, "set", wrapped)
        except StoreError as exc:
            log.info("roster.push_failed", resource=resource, error=str(exc))
            if exc.condition != "remote-server-timeout":
                # The resource is gone and we missed its unavailable presence: stop pushing.
                self._forget_resource(JID(resource))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
