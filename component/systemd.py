"""systemd's side of the service: readiness and status (``Type=notify``) and the watchdog.

Everything here is a no-op outside systemd (no ``NOTIFY_SOCKET``, no ``WATCHDOG_USEC``).

The watchdog asks two things of a healthy service. Its event loop must answer: the pings are
sent by a task on that loop, so a blocked loop sends none. Its XMPP link must be up, or down
for less than a grace period while it reconnects: a server restart (seconds, a minute or two
for an upgrade) plus the reconnection backoff fits in it, so systemd does not kill a component
that is only waiting for its server. Before the link has ever been up nothing is sent: systemd
arms the watchdog at ``READY=1`` (or at a first ping), and a component started while its server
is down is left to wait (``TimeoutStartSec=infinity``), as is the one systemd restarted after a
longer outage.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

log = structlog.get_logger(__name__)

# How long the link may be down, beyond one reconnection delay, before pings stop.
LINK_GRACE = 300.0


def notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        # Never block the event loop: with systemd behind on its queue, a message is lost
        # (a watchdog ping, most likely; the next one follows) rather than the whole service
        # waiting for it.
        sock.setblocking(False)  # noqa: FBT003 -- socket's own API
        try:
            sock.sendto(message.encode(), address)
        except BlockingIOError:
            log.warning("systemd.notify_dropped", message=message, why="systemd's queue is full")


def notify_readiness(ready: bool, reasons: list[str]) -> None:
    if ready:
        notify("READY=1\nSTATUS=ready")
    else:
        notify("STATUS=not ready: " + "; ".join(reasons))


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings: half of ``WatchdogSec=`` as systemd passes it, or None when
    the watchdog is off or meant for another process (``WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


class LinkState(Protocol):
    def on_state(self, listener: Callable[[bool], None]) -> None: ...


class LinkHealth:
    """Whether the XMPP link counts as healthy: up, or down for less than ``grace`` seconds
    since it was last up (reconnecting). Never healthy before it was first up."""

    def __init__(
        self, link: LinkState, grace: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._grace = grace
        self._clock = clock
        self._up = False
        self._down_since: float | None = None
        link.on_state(self._on_state)

    def _on_state(self, connected: bool) -> None:
        if connected:
            self._up, self._down_since = True, None
        elif self._up:
            self._up, self._down_since = False, self._clock()

    def problem(self) -> str | None:
        """Why the link is not healthy now, or None."""
        if self._up:
            return None
        if self._down_since is None:
            return "the XMPP link has not been up yet"
        down = self._clock() - self._down_since
        if down < self._grace:
            return None
        return f"the XMPP link has been down for {down:.0f} s"


class Watchdog:
    """Sends ``WATCHDOG=1`` every ``period`` seconds while ``problem()`` says nothing."""

    def __init__(self, period: float, problem: Callable[[], str | None]) -> None:
        self._period = period
        self._problem = problem

    async def run(self) -> None:
        withheld: str | None = None
        while True:
            # Sleep first: at start the link is not up yet, and systemd is not yet watching.
            await asyncio.sleep(self._period)
            problem = self._problem()
            if problem is None:
                notify("WATCHDOG=1")
            elif withheld is None:
                log.warning("systemd.watchdog_withheld", reason=problem)
            withheld = problem
