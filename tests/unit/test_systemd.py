"""systemd's watchdog: pings on a real notify socket while the loop answers and the link is
healthy; none while the loop is blocked or the link is down past its grace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs

from component import systemd

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

PERIOD = 0.05  # WATCHDOG_USEC = 100 ms
GRACE = 10.0


class FakeLink:
    """The link's state listeners, played by the test."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[bool], None]] = []

    def on_state(self, listener: Callable[[bool], None]) -> None:
        self.listeners.append(listener)

    def set(self, connected: bool) -> None:
        for listener in self.listeners:
            listener(connected)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="notify_socket")
def fixture_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """systemd's end: a datagram socket in a temp dir, named in NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)  # noqa: FBT003 -- socket's own API
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", str(int(PERIOD * 2_000_000)))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with sock:
        yield sock


def received(sock: socket.socket) -> list[bytes]:
    """The messages that arrived since the last call."""
    messages = []
    with contextlib.suppress(BlockingIOError):
        while True:
            messages.append(sock.recv(4096))
    return messages


@pytest.fixture(name="link")
def fixture_link() -> FakeLink:
    return FakeLink()


@pytest.fixture(name="clock")
def fixture_clock() -> Clock:
    return Clock()


@pytest.fixture(name="watchdog")
async def fixture_watchdog(
    notify_socket: socket.socket, link: FakeLink, clock: Clock
) -> AsyncIterator[None]:
    """The watchdog as the service runs it, over a link that has been up once."""
    period = systemd.watchdog_period()
    assert period == PERIOD
    health = systemd.LinkHealth(link, grace=GRACE, clock=clock)
    link.set(True)
    task = asyncio.create_task(systemd.Watchdog(period, health.problem).run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.usefixtures("watchdog")
async def test_pings_while_the_loop_answers_and_the_link_is_up(
    notify_socket: socket.socket,
) -> None:
    """About one WATCHDOG=1 per half interval."""
    await asyncio.sleep(10 * PERIOD)
    pings = received(notify_socket)
    assert set(pings) == {b"WATCHDOG=1"}
    assert 3 <= len(pings) <= 11


@pytest.mark.usefixtures("watchdog")
async def test_no_ping_while_the_loop_is_blocked(notify_socket: socket.socket) -> None:
    """A loop stuck in blocking code sends nothing; pings resume once it answers again."""
    await asyncio.sleep(3 * PERIOD)
    received(notify_socket)
    time.sleep(6 * PERIOD)  # noqa: ASYNC251 -- the point: the event loop is blocked
    assert received(notify_socket) == []
    await asyncio.sleep(3 * PERIOD)
    assert b"WATCHDOG=1" in received(notify_socket)


@pytest.mark.usefixtures("watchdog")
async def test_reconnecting_within_the_grace_still_pings_then_stops(
    notify_socket: socket.socket, link: FakeLink, clock: Clock
) -> None:
    """A link down for less than the grace (a server restarting) keeps the pings going;
    past it they stop, with a warning saying why, and come back with the link."""
    link.set(False)
    clock.now += GRACE - 1
    received(notify_socket)
    await asyncio.sleep(4 * PERIOD)
    assert b"WATCHDOG=1" in received(notify_socket)

    clock.now += 2
    with capture_logs() as logs:
        await asyncio.sleep(2 * PERIOD)
        received(notify_socket)  # a ping may have been on its way
        await asyncio.sleep(4 * PERIOD)
        assert received(notify_socket) == []
    assert [e["event"] for e in logs] == ["systemd.watchdog_withheld"]
    assert "down for 11 s" in logs[0]["reason"]

    link.set(True)
    await asyncio.sleep(3 * PERIOD)
    assert b"WATCHDOG=1" in received(notify_socket)


async def test_no_ping_before_the_link_was_ever_up(
    notify_socket: socket.socket, link: FakeLink
) -> None:
    """At start systemd does not watch yet (until READY=1); a ping would make it watch."""
    health = systemd.LinkHealth(link, grace=GRACE)
    task = asyncio.create_task(systemd.Watchdog(PERIOD, health.problem).run())
    await asyncio.sleep(4 * PERIOD)
    task.cancel()
    assert received(notify_socket) == []


@pytest.mark.parametrize(
    ("environ", "period"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_period_is_half_of_systemds(environ: dict[str, str], period: float) -> None:
    """Half of WatchdogSec=; nothing when off or meant for another process."""
    assert systemd.watchdog_period(environ) == period


def test_a_full_queue_never_blocks_the_service(notify_socket: socket.socket) -> None:
    """systemd behind on its queue: messages are dropped with a warning, the caller goes on."""
    with capture_logs() as logs:
        for _ in range(2000):
            systemd.notify("WATCHDOG=1")
    assert "systemd.notify_dropped" in [e["event"] for e in logs]
    assert received(notify_socket)
