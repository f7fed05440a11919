"""The real command, as systemd runs it: JSON logs, readiness notification, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.harness import log_secrets
from tests.integration.conftest import TOKEN, write_config

if TYPE_CHECKING:
    from pathlib import Path

    from tests.harness.prosody import ServerFactory
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


async def test_service_notifies_systemd_logs_json_and_stops_cleanly(
    prosody_factory: ServerFactory, webapp: FakeWebApp, tmp_path: Path
) -> None:
    """`http-roster-admin run`: READY=1 once privileged, JSON lines, exit 0 on SIGTERM."""
    server = await prosody_factory(delegate_roster=True)
    await server.register("alice", "pw")
    webapp.rosters["alice"] = {"bob@example.test": {"name": "Bob"}}
    config = write_config(tmp_path / "c.toml", server, webapp)
    text = config.read_text().replace(f'secret = "{server.component_secret}"\n', "")
    config.write_text(text.replace('format = "console"', 'format = "auto"'))

    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)  # noqa: FBT003 -- socket's own API
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "component", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE,
        env={"NOTIFY_SOCKET": str(notify_path),
             "HTTP_ROSTER_ADMIN_SECRET": server.component_secret, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
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
