"""The real command, as systemd runs it: JSON logs, readiness notification, clean SIGTERM."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.harness import log_secrets
from tests.integration.conftest import TOKEN, eventually, write_config

if TYPE_CHECKING:
    from pathlib import Path

    from tests.harness.prosody import ProsodyServer, ServerFactory
    from tests.harness.webapp import FakeWebApp


pytestmark = pytest.mark.integration
COMMAND = "http-roster-admin run"


async def read_events(
    stream: asyncio.StreamReader, events: list[dict[str, Any]], until: str
) -> None:
    """Collect JSON log lines until an event named ``until`` (every line must be JSON); each is
    also looked for secrets at the end of the session."""
    while line := await stream.readline():
        log_secrets.component_output(COMMAND, line.decode())
        events.append(json.loads(line))
        if events[-1]["message"] == until:
            return
    raise AssertionError(f"stdout ended before {until}: {events}")


async def notifications(sock: socket.socket, until: bytes) -> list[bytes]:
    """sd_notify messages received, up to the first that starts with ``until``."""
    received: list[bytes] = []
    while not received or not received[-1].startswith(until):
        received.append(await asyncio.get_running_loop().sock_recv(sock, 4096))
    return received


def notify_socket(path: Path) -> socket.socket:
    """systemd's end of NOTIFY_SOCKET."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(path))
    notify.setblocking(False)  # noqa: FBT003 -- socket's own API
    return notify


async def collect(sock: socket.socket, messages: list[bytes]) -> None:
    """Read sd_notify messages as systemd does, as they come (until cancelled)."""
    while True:
        messages.append(await asyncio.get_running_loop().sock_recv(sock, 4096))


def as_under_systemd(server: ProsodyServer, config: Path) -> None:
    """The config as deployed: the secret comes from the environment, logs are automatic."""
    text = config.read_text().replace(f'secret = "{server.component_secret}"\n', "")
    config.write_text(text.replace('format = "console"', 'format = "auto"'))


async def start_service(
    server: ProsodyServer, config: Path, notify_path: Path, **env: str
) -> asyncio.subprocess.Process:
    """`http-roster-admin run` as systemd starts it: the secret in the environment,
    NOTIFY_SOCKET."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "component", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE,
        env={"NOTIFY_SOCKET": str(notify_path),
             "HTTP_ROSTER_ADMIN_SECRET": server.component_secret, "PATH": "/usr/bin:/bin",
             **env},
    )  # fmt: skip


async def test_service_notifies_systemd_logs_json_and_stops_cleanly(
    prosody_factory: ServerFactory, webapp: FakeWebApp, tmp_path: Path
) -> None:
    """`http-roster-admin run`: READY=1 once privileged, JSON lines, exit 0 on SIGTERM."""
    server = await prosody_factory(delegate_roster=True)
    await server.register("alice", "pw")
    webapp.rosters["alice"] = {"bob@example.test": {"name": "Bob"}}
    config = write_config(tmp_path / "c.toml", server, webapp)
    as_under_systemd(server, config)
    notify = notify_socket(tmp_path / "notify.sock")
    process = await start_service(server, config, tmp_path / "notify.sock")
    assert process.stdout is not None
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(15):
            await read_events(process.stdout, events, "app.ready")
            told = await notifications(notify, until=b"READY=1")
            assert told[0].startswith(b"STATUS=not ready: not connected to the XMPP server")
            assert told[-1] == b"READY=1\nSTATUS=ready"
        port = next(e["roster_admin"]["port"] for e in events if e["message"] == "http.listening")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{port}/roster_admin/refresh",
                json=["alice"],
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response,
        ):
            assert (await response.json())["updated"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await read_events(process.stdout, events, "app.stopped")
            assert await process.wait() == 0
            for line in (await process.stdout.read()).decode().splitlines():
                log_secrets.component_output(COMMAND, line)
            assert (await notifications(notify, until=b"STOPPING=1"))[0] == b"STOPPING=1"
        notify.close()
    names = [e["message"] for e in events]
    assert names[0] == "app.starting"
    assert {"xmpp.connected", "sync.done", "refresh.done", "app.stopping"} <= set(names)
    assert all({"@timestamp", "log.level", "ecs.version", "log"} <= e.keys() for e in events)


async def refused(port: int) -> bool:
    """Whether a connection to the port on loopback is refused."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


USERS = [f"u{i:02}" for i in range(40)]
CONTACTS: dict[str, object] = {f"c{i}@example.test": {"name": f"Contact {i}"} for i in range(30)}


async def test_sigterm_during_a_large_refresh_answers_it_and_exits_0(
    prosody_factory: ServerFactory, webapp: FakeWebApp, tmp_path: Path
) -> None:
    """SIGTERM mid-refresh: new connections are refused, the caller gets the counts (users not
    done as errors), the process exits 0 within the stop timeout, and every roster is either
    untouched or complete; the watchdog was pinged while it ran, not after STOPPING=1."""
    server = await prosody_factory(delegate_roster=False)
    server.add_accounts(USERS, "pw")
    for user in USERS:
        webapp.rosters[user] = CONTACTS
    webapp.delay = 0.3
    config = write_config(
        tmp_path / "c.toml", server, webapp,
        sync={"concurrency": 4}, listener={"stop_timeout": 1}, webapp={"timeout": 5},
        log={"level": "info"},
    )  # fmt: skip
    as_under_systemd(server, config)
    notify = notify_socket(tmp_path / "notify.sock")
    told: list[bytes] = []
    systemd = asyncio.create_task(collect(notify, told))
    process = await start_service(server, config, tmp_path / "notify.sock", WATCHDOG_USEC="400000")
    assert process.stdout is not None
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(15):
        await read_events(process.stdout, events, "app.ready")
    port = next(e["roster_admin"]["port"] for e in events if e["message"] == "http.listening")
    # Read on, or a full pipe would block the component.
    logs = asyncio.create_task(read_events(process.stdout, events, "app.stopped"))
    async with aiohttp.ClientSession() as http:
        refresh = asyncio.create_task(
            http.post(
                f"http://127.0.0.1:{port}/roster_admin/refresh",
                json=USERS,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        )
        # About a quarter of the users done.
        await eventually(lambda: len(webapp.requests) >= 12, within=15)
        process.send_signal(signal.SIGTERM)
        stopped = asyncio.get_running_loop().time()
        # New connections are refused at once, while the refresh goes on.
        await eventually(functools.partial(refused, port), within=1)
        assert not refresh.done()
        async with asyncio.timeout(10):
            response = await refresh
            status, body = response.status, await response.json()
            assert await process.wait() == 0
        took = asyncio.get_running_loop().time() - stopped
    await logs
    for line in (await process.stdout.read()).decode().splitlines():
        log_secrets.component_output(COMMAND, line)
    systemd.cancel()
    notify.close()

    assert took < 1 + 3  # the stop timeout, then writes in flight and the link's close
    assert status == 200
    assert body["updated"] + body["errors"] == len(USERS)
    assert 0 < body["errors"] < len(USERS) - 8
    assert "app.stop_timeout" in [e["message"] for e in events]
    for user in USERS:
        stored = (await server.stored_roster(user)).subscriptions
        if user in body["failed"]:
            assert stored == {}, user
        else:
            assert stored == dict.fromkeys(CONTACTS, "both"), user
    assert b"WATCHDOG=1" in told
    # No ping once stopping: systemd would watch the shutdown again.
    assert b"WATCHDOG=1" not in told[told.index(b"STOPPING=1") :]
