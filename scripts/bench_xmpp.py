"""Light XMPP streams for the benchmark: many clients, and a bare component for the probe.

slixmpp builds objects and scans every handler for each stanza; with hundreds of clients in
one process the measuring side, not the server, would set the pace. These speak just enough
XMPP (stream, SASL PLAIN in the clear, bind, session) over asyncio transports, parse with the
C XML parser, and take each answer's arrival time when its bytes are parsed, before any other
work. Loopback only, no TLS: the benchmark's servers offer none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

STREAM_NS = "http://etherx.jabber.org/streams"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION_NS = "urn:ietf:params:xml:ns:xmpp-session"
ROSTER_NS = "jabber:iq:roster"
CLIENT_NS = "jabber:client"
COMPONENT_NS = "jabber:component:accept"
MODULE_NS = "urn:http-roster-admin:presence:0"  # the shipped Prosody module
TIMEOUT = 30.0


class XmppError(RuntimeError):
    """The stream failed, or an answer was an error."""


#: (arrival time on the monotonic clock, the top-level element)
Arrival = tuple[float, ET.Element]


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


class _Stream(asyncio.Protocol):
    """One XML stream: parses what arrives, answers IQs by id, queues the rest in order."""

    def __init__(self, namespace: str, to: str) -> None:
        self._namespace = namespace
        self._to = to
        self._transport: asyncio.Transport | None = None
        self._parser: ET.XMLPullParser[ET.Element] | None = None
        self._root: ET.Element | None = None
        self._depth = 0
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[Arrival]] = {}
        self._incoming: asyncio.Queue[Arrival] = asyncio.Queue()
        self._opened: asyncio.Future[ET.Element] | None = None
        self._negotiating = True
        self.closed = asyncio.get_running_loop().create_future()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._parser is None:
            return
        try:
            self._parser.feed(data)
            events = list(self._parser.read_events())
        except ET.ParseError as exc:
            self._fail(XmppError(f"unparseable stream: {exc}"))
            return
        for event in events:
            kind, element = event[0], event[-1]
            assert isinstance(element, ET.Element)
            if kind == "start":
                self._depth += 1
                if self._depth == 1:
                    self._root = element
                    if self._opened is not None and not self._opened.done():
                        self._opened.set_result(element)
            else:
                self._depth -= 1
                if self._depth == 1:
                    if self._root is not None:
                        self._root.remove(element)
                    self._dispatch(now, element)
                elif self._depth == 0:
                    self._fail(XmppError("the server closed the stream"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(XmppError(f"connection lost: {exc}"))

    def _fail(self, error: XmppError) -> None:
        for future in (*self._waiting.values(), self._opened):
            if future is not None and not future.done():
                future.set_exception(error)
        self._waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        if self._transport is not None:
            self._transport.close()

    # --- sending and receiving ------------------------------------------------------------

    def send(self, xml: str) -> None:
        if self._transport is None or self._transport.is_closing():
            raise XmppError("not connected")
        self._transport.write(xml.encode())

    def next_id(self) -> str:
        return f"b{next(self._ids)}"

    def expect(self, iq_id: str) -> asyncio.Future[Arrival]:
        """The answer to the IQ with this id, when it arrives."""
        future: asyncio.Future[Arrival] = asyncio.get_running_loop().create_future()
        self._waiting[iq_id] = future
        return future

    async def iq(self, xml: str, iq_id: str) -> Arrival:
        """Send an IQ (its id is ``iq_id``) and wait for its result; XmppError on an error."""
        answer = self.expect(iq_id)
        self.send(xml)
        arrival = await asyncio.wait_for(answer, TIMEOUT)
        if arrival[1].get("type") == "error":
            raise XmppError(f"iq {iq_id} failed: {ET.tostring(arrival[1], encoding='unicode')}")
        return arrival

    async def next_element(self) -> ET.Element:
        """The next top-level element that is not an answer to our IQs (negotiation)."""
        _, element = await asyncio.wait_for(self._incoming.get(), TIMEOUT)
        return element

    async def open_stream(self) -> ET.Element:
        """(Re)start the stream; returns the server's stream header."""
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self._root = None
        self._opened = asyncio.get_running_loop().create_future()
        self.send(
            f"<?xml version='1.0'?><stream:stream xmlns='{self._namespace}' "
            f"xmlns:stream='{STREAM_NS}' to={quoteattr(self._to)} version='1.0'>"
        )
        return await asyncio.wait_for(self._opened, TIMEOUT)

    def _dispatch(self, now: float, element: ET.Element) -> None:
        if _local(element.tag) == "iq" and element.get("type") in {"result", "error"}:
            future = self._waiting.pop(element.get("id", ""), None)
            if future is not None:
                if not future.done():
                    future.set_result((now, element))
                return
        if self._negotiating:
            self._incoming.put_nowait((now, element))
        else:
            self.on_stanza(now, element)

    def on_stanza(self, now: float, element: ET.Element) -> None:
        """A stanza after negotiation that answers none of our IQs."""

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"</stream:stream>")
            self._transport.close()


class BenchClient(_Stream):
    """A user's client: logs in, asks for its roster, counts and answers roster pushes."""

    def __init__(self, username: str, domain: str, on_push: Callable[[float, int], None]) -> None:
        super().__init__(CLIENT_NS, domain)
        self.username = username
        self.domain = domain
        self.full_jid = ""
        self.pushes = 0  # roster items pushed to this client
        self._on_push = on_push

    async def login(self, password: str) -> None:
        await self.open_stream()
        features = await self.next_element()
        mechanisms = [m.text for m in features.iter(f"{{{SASL_NS}}}mechanism")]
        if "PLAIN" not in mechanisms:
            raise XmppError(f"{self.username}: the server offers no PLAIN ({mechanisms})")
        token = base64.b64encode(f"\0{self.username}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{token}</auth>")
        outcome = await self.next_element()
        if _local(outcome.tag) != "success":
            raise XmppError(f"{self.username}: authentication failed")
        await self.open_stream()
        features = await self.next_element()
        iq_id = self.next_id()
        _, bound = await self.iq(
            f"<iq type='set' id='{iq_id}'><bind xmlns='{BIND_NS}'/></iq>", iq_id
        )
        self.full_jid = bound.findtext(f"{{{BIND_NS}}}bind/{{{BIND_NS}}}jid") or ""
        session = features.find(f"{{{SESSION_NS}}}session")
        if session is not None and session.find(f"{{{SESSION_NS}}}optional") is None:
            iq_id = self.next_id()
            await self.iq(
                f"<iq type='set' id='{iq_id}'><session xmlns='{SESSION_NS}'/></iq>", iq_id
            )
        self._negotiating = False

    def send_roster_get(self) -> tuple[float, asyncio.Future[Arrival]]:
        """Ask for the roster now: when it was sent, and the answer to come."""
        iq_id = self.next_id()
        answer = self.expect(iq_id)
        self.send(f"<iq type='get' id='{iq_id}'><query xmlns='{ROSTER_NS}'/></iq>")
        return time.monotonic(), answer

    def send_presence(self) -> None:
        self.send("<presence/>")

    def on_stanza(self, now: float, element: ET.Element) -> None:
        if _local(element.tag) != "iq" or element.get("type") not in {"get", "set"}:
            return  # presence and messages: nothing to do
        iq_id = quoteattr(element.get("id", ""))
        query = element.find(f"{{{ROSTER_NS}}}query")
        sender = element.get("from")
        if (
            element.get("type") == "set"
            and query is not None
            and sender in {None, self.full_jid.partition("/")[0]}
        ):
            items = len(query.findall(f"{{{ROSTER_NS}}}item"))
            self.pushes += items
            self.send(f"<iq type='result' id={iq_id}/>")
            self._on_push(now, items)
            return
        to = f" to={quoteattr(sender)}" if sender else ""
        self.send(
            f"<iq type='error' id={iq_id}{to}><error type='cancel'>"
            "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )


def roster_items(answer: ET.Element) -> int:
    """How many items a roster result carries."""
    return len(answer.findall(f"{{{ROSTER_NS}}}query/{{{ROSTER_NS}}}item"))


async def connect_client(
    username: str,
    password: str,
    domain: str,
    port: int,
    on_push: Callable[[float, int], None],
) -> BenchClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: BenchClient(username, domain, on_push), "127.0.0.1", port
    )
    try:
        await client.login(password)
    except BaseException:
        client.close()
        raise
    return client


class BenchComponent(_Stream):
    """A bare XEP-0114 component: it writes rosters (privileged SETs, or through the shipped
    module), nothing else."""

    def __init__(self, jid: str) -> None:
        super().__init__(COMPONENT_NS, jid)
        self.jid = jid

    async def handshake(self, secret: str) -> None:
        header = await self.open_stream()
        digest = hashlib.sha1((header.get("id", "") + secret).encode()).hexdigest()  # noqa: S324
        self.send(f"<handshake>{digest}</handshake>")
        answer = await self.next_element()
        if _local(answer.tag) != "handshake":
            raise XmppError(f"component handshake refused: {ET.tostring(answer)!r}")
        self._negotiating = False

    def on_stanza(self, now: float, element: ET.Element) -> None:
        del now
        if _local(element.tag) == "iq" and element.get("type") in {"get", "set"}:
            # e.g. the server's disco#info about delegated nodes: an error is harmless.
            self.send(
                f"<iq type='error' id={quoteattr(element.get('id', ''))} "
                f"from={quoteattr(self.jid)} to={quoteattr(element.get('from', ''))}>"
                "<error type='cancel'><service-unavailable "
                "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            )

    async def set_roster_item(
        self,
        user_jid: str,
        contact: str,
        name: str = "",
        groups: Iterable[str] = (),
        *,
        remove: bool = False,
    ) -> None:
        """A privileged roster SET of one item in the user's roster: subscription both, or
        the item's removal."""
        iq_id = self.next_id()
        item = _item_xml(contact, name, groups, remove)
        await self.iq(
            f"<iq type='set' id='{iq_id}' from={quoteattr(self.jid)} to={quoteattr(user_jid)}>"
            f"<query xmlns='{ROSTER_NS}'>{item}</query></iq>",
            iq_id,
        )

    async def write_items(self, user_jid: str, items: Iterable[RawItem]) -> None:
        """The items of one user in one request to the shipped module (saved once), as the
        component writes them."""
        iq_id = self.next_id()
        username, _, domain = user_jid.partition("@")
        xml = "".join(_item_xml(*item) for item in items)
        await self.iq(
            f"<iq type='set' id='{iq_id}' from={quoteattr(self.jid)} to={quoteattr(domain)}>"
            f"<write xmlns='{MODULE_NS}' user={quoteattr(username)}>"
            f"<query xmlns='{ROSTER_NS}'>{xml}</query></write></iq>",
            iq_id,
        )


#: One roster item to write: (contact, name, groups, remove)
RawItem = tuple[str, str, "Iterable[str]", bool]


def _item_xml(contact: str, name: str, groups: Iterable[str], remove: bool) -> str:
    if remove:
        return f"<item jid={quoteattr(contact)} subscription='remove'/>"
    group_xml = "".join(f"<group>{escape(g)}</group>" for g in groups)
    return (
        f"<item jid={quoteattr(contact)} name={quoteattr(name)} subscription='both'>"
        f"{group_xml}</item>"
    )


async def connect_component(jid: str, secret: str, port: int) -> BenchComponent:
    loop = asyncio.get_running_loop()
    _, component = await loop.create_connection(lambda: BenchComponent(jid), "127.0.0.1", port)
    try:
        await component.handshake(secret)
    except BaseException:
        component.close()
        raise
    return component
