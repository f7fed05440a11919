"""The XEP-0114 component stream: connect, stay connected, send IQs, route stanzas.

A thin owner of slixmpp's ComponentXMPP. It knows nothing about rosters: the other parts of
this package register their handlers on it and listen to its state.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any, Literal, Protocol
from xml.etree import ElementTree as ET

import structlog
from slixmpp import ComponentXMPP
from slixmpp.jid import JID
from slixmpp.xmlstream import tostring
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from component import metrics
from component.errors import IqUnansweredError
from component.xmpp.iqs import AnswerMatcher, PendingIqs

if TYPE_CHECKING:
    from collections.abc import Callable

    from component.config import ComponentConfig

log = structlog.get_logger(__name__)

IqType = Literal["get", "set"]
STREAM_NS = "jabber:component:accept"


def reconnect_delay(attempt: int, cap: float) -> float:
    """Seconds before reconnection attempt number ``attempt`` (1, 2, ...): at most ``cap``.

    Doubling from 1 s, with jitter so that components restarted together do not reconnect
    in step; the jitter only shortens the wait, so the cap holds as documented.
    """
    base = min(cap, 0.5 * 2.0 ** min(attempt, 16))
    return base * random.uniform(0.8, 1.0)  # noqa: S311 -- jitter, not cryptography


class Stream(Protocol):
    """What the other XMPP parts need of the link (a fake stands in for it in unit tests)."""

    def handle(self, name: str, path: str, callback: Callable[[Any], None]) -> None: ...

    def on_state(self, listener: Callable[[bool], None]) -> None: ...

    def add_disco_feature(self, feature: str, node: str) -> None: ...

    async def send_iq(self, to: str, iq_type: IqType, payload: ET.Element) -> ET.Element: ...

    def send_message(self, to: str, payload: ET.Element) -> None: ...


class ComponentLink:
    """Keeps the stream to the server up (capped backoff) and carries stanzas both ways."""

    def __init__(self, config: ComponentConfig, *, iq_timeout: float) -> None:
        self._config = config
        self._iq_timeout = iq_timeout
        self._connected = False
        self._stopping = False
        self._attempt = 0
        self._was_up = False
        self._reconnect: asyncio.TimerHandle | None = None
        self._listeners: list[Callable[[bool], None]] = []
        xmpp = ComponentXMPP(config.jid, config.secret)
        # slixmpp's own presence handling keeps a roster entry for every user who ever sent
        # presence and answers subscriptions on its own: we want neither.
        xmpp.remove_handler("Presence")
        xmpp.register_plugin("xep_0030")
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("disconnected", self._on_disconnected)
        xmpp.add_event_handler("connection_failed", self._on_connection_failed)
        xmpp.add_event_handler("stream_error", self._on_stream_error)
        self._pending = PendingIqs()
        xmpp.register_handler(Callback("iq answers", AnswerMatcher(self._pending), self._answer))
        self._xmpp = xmpp

    @property
    def jid(self) -> str:
        return self._config.jid

    @property
    def connected(self) -> bool:
        return self._connected

    def on_state(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(connected)`` whenever the stream comes up or goes down."""
        self._listeners.append(listener)

    def handle(self, name: str, path: str, callback: Callable[[Any], None]) -> None:
        """Hand stanzas matching ``path`` (an XPath in the stream's namespace) to ``callback``."""
        self._xmpp.register_handler(Callback(name, MatchXPath(path), callback))

    def add_disco_feature(self, feature: str, node: str) -> None:
        self._xmpp.plugin["xep_0030"].add_feature(feature, node=node, jid=JID(self._config.jid))

    def start(self) -> None:
        self._stopping = False
        self._connect()

    async def stop(self) -> None:
        self._stopping = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        self._xmpp.cancel_connection_attempt()
        if self._connected:
            await self._xmpp.disconnect(wait=2.0)
        else:
            self._xmpp.abort()

    async def send_iq(self, to: str, iq_type: IqType, payload: ET.Element) -> ET.Element:
        """Send an IQ from our domain and return the result stanza.

        Raises IqRefusedError for an error answer, IqUnansweredError without link or answer.
        """
        if not self._connected:
            raise IqUnansweredError(f"{iq_type} to {to}: the XMPP link is down")
        iq_id, answer = self._pending.expect(to, f"{iq_type} to {to}")
        iq = ET.Element(
            f"{{{STREAM_NS}}}iq", {"type": iq_type, "id": iq_id, "to": to, "from": self.jid}
        )
        iq.append(payload)
        metrics.SERVER_REQUESTS.labels(kind="iq").inc()
        self._send(iq)
        try:
            async with asyncio.timeout(self._iq_timeout):
                return await answer
        except TimeoutError:
            raise IqUnansweredError(
                f"{iq_type} to {to}: no answer in {self._iq_timeout}s"
            ) from None
        finally:
            self._pending.forget(iq_id)

    def send_message(self, to: str, payload: ET.Element) -> None:
        """Send a message from our domain carrying ``payload``; none without link (the server
        knows that what we would have said is lost with our stream)."""
        if not self._connected:
            return
        message = ET.Element(f"{{{STREAM_NS}}}message", {"to": to, "from": self.jid})
        message.append(payload)
        self._send(message)

    def _send(self, stanza: ET.Element) -> None:
        # Built and serialized directly: slixmpp's stanza objects cost more than the stanza
        # itself. Through the send queue, so it keeps its place among stanzas sent otherwise.
        self._xmpp.send(tostring(stanza, xmlns=STREAM_NS, stream=self._xmpp, top_level=True))

    def _answer(self, stanza: Any) -> None:
        self._pending.answer(stanza.xml)

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
        metrics.XMPP_CONNECTED.set(1)
        if self._was_up:
            metrics.XMPP_RECONNECTS.inc()
        self._was_up = True
        log.info("xmpp.connected", jid=self._config.jid)
        self._notify()

    def _on_disconnected(self, reason: object) -> None:
        was_connected, self._connected = self._connected, False
        self._pending.fail_all("the XMPP link went down before the answer")
        metrics.XMPP_CONNECTED.set(0)
        if was_connected:
            (log.info if self._stopping else log.warning)(
                "xmpp.disconnected", reason=str(reason) if reason else None
            )
            self._notify()
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

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self._connected)
