# Test helpers take default timeouts so that a broken server fails a test instead of hanging it.
# ruff: noqa: ASYNC109
"""Real slixmpp clients (and a bare test component) for integration tests.

Everything connects to 127.0.0.1 in the clear (our test servers offer no TLS). Nothing here
fetches the roster by itself: tests send their roster GETs explicitly. Received roster pushes,
presences, messages and error stanzas are recorded, and can be awaited with a predicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from slixmpp import JID, ClientXMPP, ComponentXMPP, Iq
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

log = logging.getLogger(__name__)

NS_ROSTER = "jabber:iq:roster"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
# The shipped Prosody module's namespace (deploy/prosody/mod_roster_admin_presence.lua).
MODULE_NS = "urn:http-roster-admin:presence:0"
DEFAULT_TIMEOUT = 10.0
SUBSCRIPTION_TYPES = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})

T = TypeVar("T")


#: One roster entry as plain data: {"name": str | None, "groups": sorted list[str],
#: "subscription": "none" | "to" | "from" | "both" | "remove"}.
RosterItem = dict[str, Any]
Roster = dict[str, RosterItem]


class XmppConnectError(RuntimeError):
    """Could not connect, authenticate or start the session."""


class StanzaError(Exception):
    """An XMPP error answer (RFC 6120 section 8.3), e.g. condition "not-allowed"."""

    def __init__(self, condition: str, error_type: str = "", text: str = "", xml: str = "") -> None:
        super().__init__(f"{condition} ({error_type}){': ' + text if text else ''}")
        self.condition = condition
        self.error_type = error_type
        self.text = text
        self.xml = xml

    @classmethod
    def from_stanza(cls, stanza: ET.Element) -> StanzaError:
        """Read the error child of any stanza, whatever its namespace (client or component)."""
        error = next((c for c in stanza if _local(c.tag) == "error"), None)
        if error is None:
            return cls("undefined-condition", xml=_xml(stanza))
        condition, text = "undefined-condition", ""
        for child in error:
            if child.tag == f"{{{NS_STANZAS}}}text":
                text = child.text or ""
            elif child.tag.startswith(f"{{{NS_STANZAS}}}"):
                condition = _local(child.tag)
        return cls(condition, error.get("type", ""), text, _xml(stanza))


@dataclass(frozen=True)
class RosterPush:
    """A roster push (an iq set with a jabber:iq:roster query) that this client received."""

    sender: str  # the 'from' attribute, "" when absent
    items: Roster  # subscription "remove" for removals
    accepted: bool  # answered with a result (it came from the server or our own bare JID)
    xml: str


@dataclass(frozen=True)
class Received:
    """A presence or message stanza that this client received."""

    kind: str  # "presence" or "message"
    sender: str
    type: str  # "available"/"normal" when the stanza has no type
    xml: str
    error: StanzaError | None = None
    body: str | None = None
    show: str | None = None  # presence only
    status: str | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class Inbox(Generic[T]):
    """Stanzas received so far, in order; wait() also returns ones that already arrived."""

    items: list[T] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, item: T) -> None:
        self.items.append(item)
        self._changed.set()

    def clear(self) -> None:
        self.items.clear()

    async def wait(
        self, predicate: Callable[[T], bool] = lambda _: True, timeout: float = DEFAULT_TIMEOUT
    ) -> T:
        """The first item (received before or after this call) for which predicate is true."""
        seen = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for item in self.items[seen:]:
                        if predicate(item):
                            return item
                    seen = len(self.items)
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"nothing matching arrived within {timeout} s; received: {self.items!r}"
            ) from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _xml(element: ET.Element) -> str:
    return ET.tostring(element, encoding="unicode")


def synced_payload(refs: Iterable[str], condition: str | None = None) -> ET.Element:
    """The shipped module's <synced/>: these held requests' users are synced (or, with an
    error ``condition``, could not be)."""
    synced = ET.Element(f"{{{MODULE_NS}}}synced")
    for ref in refs:
        attrs = {"ref": ref} if condition is None else {"ref": ref, "error": condition}
        ET.SubElement(synced, f"{{{MODULE_NS}}}user", attrs)
    return synced


def parse_roster_query(query: ET.Element | None) -> Roster:
    """jabber:iq:roster <query/> -> {bare jid: {"name", "groups", "subscription"}}."""
    roster: Roster = {}
    if query is None:
        return roster
    for item in query.findall(f"{{{NS_ROSTER}}}item"):
        groups = sorted(g.text or "" for g in item.findall(f"{{{NS_ROSTER}}}group"))
        roster[item.get("jid", "")] = {
            "name": item.get("name"),
            "groups": groups,
            "subscription": item.get("subscription", "none"),
        }
    return roster


def roster_query(
    jid: str,
    *,
    name: str | None = None,
    groups: Iterable[str] = (),
    subscription: str | None = None,
) -> ET.Element:
    """A jabber:iq:roster <query/> holding one item."""
    query = ET.Element(f"{{{NS_ROSTER}}}query")
    attrs = {"jid": jid}
    if name is not None:
        attrs["name"] = name
    if subscription is not None:
        attrs["subscription"] = subscription
    item = ET.SubElement(query, f"{{{NS_ROSTER}}}item", attrs)
    for group in groups:
        ET.SubElement(item, f"{{{NS_ROSTER}}}group").text = group
    return query


async def _send_iq(iq: Iq, timeout: float) -> ET.Element:
    """Send an iq and return the result's XML; StanzaError on an error answer."""
    try:
        result = await iq.send(timeout=timeout)
    except IqError as exc:
        raise StanzaError.from_stanza(exc.iq.xml) from None
    except IqTimeout:
        raise TimeoutError(f"no answer to iq {iq['id']} within {timeout} s") from None
    xml: ET.Element = result.xml
    return xml


class TestClient:
    """A logged-in XMPP client. Create with connected_client()."""

    __test__ = False  # not a pytest test class

    def __init__(self, xmpp: ClientXMPP) -> None:
        self.xmpp = xmpp
        self.pushes: Inbox[RosterPush] = Inbox()
        self.presences: Inbox[Received] = Inbox()
        self.messages: Inbox[Received] = Inbox()
        self.errors: Inbox[Received] = Inbox()  # presence and message errors
        # Answer roster pushes ourselves (slixmpp's own handler would also feed its roster).
        xmpp.remove_handler("Roster Update")
        xmpp.register_handler(
            Callback("Test roster push", MatchXPath(f"{{jabber:client}}iq/{{{NS_ROSTER}}}query"),
                     self._on_roster_iq)
        )  # fmt: skip
        xmpp.register_handler(
            Callback("Test presence", MatchXPath("{jabber:client}presence"), self._on_presence)
        )
        xmpp.register_handler(
            Callback("Test message", MatchXPath("{jabber:client}message"), self._on_message)
        )

    @property
    def jid(self) -> str:
        """The full JID the server bound."""
        return str(self.xmpp.boundjid.full)

    @property
    def bare(self) -> str:
        return str(self.xmpp.boundjid.bare)

    # --- received stanzas ---------------------------------------------------------------

    def _on_roster_iq(self, iq: Any) -> None:
        if iq["type"] not in {"get", "set"}:
            return  # a result/error to one of our own requests: the iq's future handles it
        sender = iq.xml.get("from", "")
        accepted = iq["type"] == "set" and sender in {"", self.bare}
        if iq["type"] == "set":
            query = iq.xml.find(f"{{{NS_ROSTER}}}query")
            self.pushes.add(RosterPush(sender, parse_roster_query(query), accepted, _xml(iq.xml)))
        reply = iq.reply(clear=True)
        if not accepted:  # RFC 6121 2.1.6: ignore pushes that do not come from our own account
            reply["type"] = "error"
            reply["error"]["type"] = "cancel"
            reply["error"]["condition"] = "service-unavailable"
        reply.send()

    def _received(self, kind: str, stanza: Any, default_type: str) -> Received:
        xml: ET.Element = stanza.xml
        stanza_type = xml.get("type", default_type)
        body = xml.findtext("{jabber:client}body")
        error = StanzaError.from_stanza(xml) if stanza_type == "error" else None
        show, status = xml.findtext("{jabber:client}show"), xml.findtext("{jabber:client}status")
        return Received(
            kind, xml.get("from", ""), stanza_type, _xml(xml), error, body, show, status
        )

    def _on_presence(self, presence: Any) -> None:
        received = self._received("presence", presence, "available")
        self.presences.add(received)
        if received.error:
            self.errors.add(received)

    def _on_message(self, message: Any) -> None:
        received = self._received("message", message, "normal")
        self.messages.add(received)
        if received.error:
            self.errors.add(received)

    async def wait_for_push(
        self, predicate: Callable[[RosterPush], bool] = lambda _: True, timeout: float = 5.0
    ) -> RosterPush:
        return await self.pushes.wait(predicate, timeout)

    async def wait_for_presence(
        self, predicate: Callable[[Received], bool] = lambda _: True, timeout: float = 5.0
    ) -> Received:
        return await self.presences.wait(predicate, timeout)

    async def wait_for_message(
        self, predicate: Callable[[Received], bool] = lambda _: True, timeout: float = 5.0
    ) -> Received:
        return await self.messages.wait(predicate, timeout)

    async def wait_for_error(
        self, predicate: Callable[[Received], bool] = lambda _: True, timeout: float = 5.0
    ) -> Received:
        """The first presence or message error matching predicate."""
        return await self.errors.wait(predicate, timeout)

    # --- requests -------------------------------------------------------------------------

    async def get_roster(self, timeout: float = DEFAULT_TIMEOUT) -> Roster:
        """Our own roster, by an explicit roster GET (no 'to')."""
        return await self._roster_get(None, timeout)

    async def get_roster_of(self, other_bare_jid: str, timeout: float = DEFAULT_TIMEOUT) -> Roster:
        """A roster GET addressed to another user's bare JID (must be refused)."""
        return await self._roster_get(other_bare_jid, timeout)

    async def _roster_get(self, to: str | None, timeout: float) -> Roster:
        iq = self.xmpp.make_iq_get(queryxmlns=NS_ROSTER, ito=to)
        result = await _send_iq(iq, timeout)
        return parse_roster_query(result.find(f"{{{NS_ROSTER}}}query"))

    async def set_roster_item(
        self,
        jid: str,
        name: str | None = None,
        groups: Iterable[str] = (),
        *,
        subscription: str | None = None,
        to: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """A roster SET of one item (subscription="remove" removes it)."""
        iq = self.xmpp.make_iq_set(ito=to)
        iq.append(roster_query(jid, name=name, groups=groups, subscription=subscription))
        await _send_iq(iq, timeout)

    async def send_iq(
        self,
        iq_type: Literal["get", "set"],
        to: str,
        payload: ET.Element,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ET.Element:
        """Any IQ with ``payload``; the result's XML, or StanzaError."""
        iq = self.xmpp.make_iq(ito=to, itype=iq_type)
        iq.append(payload)
        return await _send_iq(iq, timeout)

    async def remove_roster_item(self, jid: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.set_roster_item(jid, subscription="remove", timeout=timeout)

    async def send_subscription(self, to: str, subscription_type: str) -> None:
        """Send a subscribe/subscribed/unsubscribe/unsubscribed presence to `to`."""
        if subscription_type not in SUBSCRIPTION_TYPES:
            raise ValueError(f"not a subscription type: {subscription_type!r}")
        self.xmpp.send_presence(pto=to, ptype=cast("Any", subscription_type))
        await asyncio.sleep(0)  # let the send queue run

    async def send_presence(
        self,
        to: str | None = None,
        presence_type: str | None = None,
        *,
        show: str | None = None,
        status: str | None = None,
    ) -> None:
        """Available presence (broadcast, or directed when `to` is given)."""
        self.xmpp.send_presence(
            pto=to, ptype=cast("Any", presence_type), pshow=show, pstatus=status
        )
        await asyncio.sleep(0)

    async def send_message(self, to: str, body: str | ET.Element) -> None:
        """A chat message with this body, or a normal one carrying this payload."""
        if isinstance(body, str):
            self.xmpp.send_message(mto=JID(to), mbody=body, mtype="chat")
        else:
            message = self.xmpp.make_message(mto=JID(to))
            message.append(body)
            message.send()
        await asyncio.sleep(0)

    def stop_reading(self) -> None:
        """Read nothing more from the server until read_again() (a client on a stalled link)."""
        assert self.xmpp.transport is not None, "not connected"
        self.xmpp.transport.pause_reading()

    def read_again(self) -> None:
        assert self.xmpp.transport is not None, "not connected"
        self.xmpp.transport.resume_reading()


def _make_client(jid: str, password: str, mechanism: str | None) -> ClientXMPP:
    xmpp = ClientXMPP(
        jid,
        password,
        sasl_mech=mechanism,
        plugin_config={
            "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}
        },
    )
    xmpp.enable_direct_tls = False
    xmpp.enable_starttls = False
    xmpp.enable_plaintext = True
    # Never answer subscription requests automatically: tests decide what the client does.
    xmpp.auto_authorize = None
    xmpp.auto_subscribe = False
    return xmpp


async def _start_session(
    xmpp: Any, *, port: int, host: str, timeout: float, ready_event: str, what: str
) -> None:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[str | None] = loop.create_future()

    def finish(error: str | None) -> Callable[[Any], None]:
        def handler(data: Any) -> None:
            if not outcome.done():
                outcome.set_result(None if error is None else f"{error}: {data}")

        return handler

    xmpp.add_event_handler(ready_event, finish(None), disposable=True)
    xmpp.add_event_handler("failed_all_auth", finish("authentication failed"), disposable=True)
    xmpp.add_event_handler("connection_failed", finish("connection failed"), disposable=True)
    xmpp.add_event_handler("stream_error", finish("stream error"), disposable=True)
    xmpp.add_event_handler("disconnected", finish("disconnected"), disposable=True)
    xmpp.connect(host, port)
    try:
        error = await asyncio.wait_for(outcome, timeout)
    except TimeoutError:
        error = f"no session within {timeout} s"
    if error is not None:
        xmpp.cancel_connection_attempt()
        xmpp.abort()
        raise XmppConnectError(f"{what} to {host}:{port}: {error}")


async def _disconnect(xmpp: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(xmpp.disconnect(wait=2.0), 5.0)
    xmpp.cancel_connection_attempt()
    # slixmpp leaves its send loop running after a disconnect; end it with the client.
    sender: asyncio.Future[None] | None = xmpp._run_out_filters
    if sender is not None and not sender.done():
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


@contextlib.asynccontextmanager
async def connected_client(
    jid: str,
    password: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    mechanism: str | None = "PLAIN",
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[TestClient]:
    """A client logged in as `jid` (a resource is bound by the server unless given)."""
    xmpp = _make_client(jid, password, mechanism)
    client = TestClient(xmpp)
    await _start_session(
        xmpp, port=port, host=host, timeout=timeout, ready_event="session_start", what=jid
    )
    try:
        yield client
    finally:
        await _disconnect(xmpp)


class TestComponent:
    """A bare external component (XEP-0114) that can send privileged roster IQs (XEP-0356).

    It does not answer delegated requests (XEP-0355): use it with delegate_roster=False, or
    where no client asks for its roster.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, xmpp: ComponentXMPP) -> None:
        self.xmpp = xmpp
        self.messages: Inbox[ET.Element] = Inbox()
        # Presence the server routes to the component (e.g. under a XEP-0356 presence grant).
        self.presences: Inbox[ET.Element] = Inbox()
        # The shipped module's messages naming users whose roster requests it holds: the test
        # says they are synced (synced()), or does not.
        self.sync_requests: Inbox[ET.Element] = Inbox()
        xmpp.register_handler(
            Callback("Test component message", MatchXPath("{jabber:component:accept}message"),
                     lambda msg: self.messages.add(msg.xml))
        )  # fmt: skip
        xmpp.register_handler(
            Callback("Test component presence", MatchXPath("{jabber:component:accept}presence"),
                     lambda presence: self.presences.add(presence.xml))
        )  # fmt: skip
        xmpp.register_handler(
            Callback("Test component sync request",
                     MatchXPath(f"{{jabber:component:accept}}message/{{{MODULE_NS}}}sync"),
                     lambda message: self.sync_requests.add(message.xml))
        )  # fmt: skip

    @property
    def jid(self) -> str:
        return str(self.xmpp.boundjid.bare)

    def synced(self, server: str, refs: Iterable[str], condition: str | None = None) -> None:
        """Tell the server (its domain), in one message, that the users of these held
        requests are synced (or, with an error ``condition``, could not be)."""
        message = self.xmpp.make_message(mto=server, mfrom=self.jid)
        message.append(synced_payload(refs, condition))
        message.send()

    async def disconnect(self) -> None:
        """Leave the server now (the context manager's exit then does nothing more)."""
        await _disconnect(self.xmpp)

    async def send_iq(
        self,
        iq_type: Literal["get", "set"],
        to: str,
        payload: ET.Element,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ET.Element:
        """Any IQ from the component with ``payload``; the result's XML, or StanzaError."""
        iq = self.xmpp.make_iq(ito=to, ifrom=self.jid, itype=iq_type)
        iq.append(payload)
        return await _send_iq(iq, timeout)

    async def get_roster_of(self, user_bare_jid: str, timeout: float = DEFAULT_TIMEOUT) -> Roster:
        """Privileged roster GET: what the server has stored for the user."""
        iq = self.xmpp.make_iq_get(queryxmlns=NS_ROSTER, ito=user_bare_jid, ifrom=self.jid)
        result = await _send_iq(iq, timeout)
        return parse_roster_query(result.find(f"{{{NS_ROSTER}}}query"))

    async def set_roster_item_of(
        self,
        user_bare_jid: str,
        jid: str,
        name: str | None = None,
        groups: Iterable[str] = (),
        *,
        subscription: str | None = "both",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Privileged roster SET of one item in the user's roster."""
        iq = self.xmpp.make_iq_set(ito=user_bare_jid, ifrom=self.jid)
        iq.append(roster_query(jid, name=name, groups=groups, subscription=subscription))
        await _send_iq(iq, timeout)


@contextlib.asynccontextmanager
async def connected_component(
    jid: str,
    secret: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[TestComponent]:
    """A component connected and authenticated (handshake done) as `jid`."""
    xmpp = ComponentXMPP(jid, secret, host, port)
    component = TestComponent(xmpp)
    await _start_session(
        xmpp, port=port, host=host, timeout=timeout, ready_event="session_start", what=jid
    )
    try:
        yield component
    finally:
        await _disconnect(xmpp)
