"""The component's real parts without an XMPP server: HttpApi -> Syncer -> WebAppClient over
real HTTP to the fake web app, and the in-memory roster store in place of the server."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from component.check import Checker
from component.config import ListenerConfig
from component.http_api import HttpApi
from component.sync import Syncer
from component.webapp import WebAppClient
from tests.harness.memory_store import MemoryStore
from tests.harness.webapp import FakeWebApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from component.roster import Contact

DOMAIN = "example.test"
TOKEN = "campaign-token"
REFRESH = "/roster_admin/refresh"
ROSTERS = "/roster_admin/rosters"


class _Ready:
    """Always ready, and nobody online: there is no XMPP server here."""

    ready = True
    reasons: list[str] = []  # noqa: RUF012 - never changed

    def online_users(self) -> list[str]:
        return []


@dataclass
class Rig:
    webapp: FakeWebApp
    store: MemoryStore
    client: WebAppClient
    syncer: Syncer
    url: str
    http: aiohttp.ClientSession

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """POST to the listener; the answer's status and JSON body (every answer is JSON)."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        # A stream: aiohttp warns about large bodies given as bytes.
        data = io.BytesIO(body)
        async with self.http.post(self.url + path, data=data, headers=headers) as response:
            return response.status, json.loads(await response.read())

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with self.http.get(self.url + path, headers=headers) as response:
            return response.status, json.loads(await response.read())

    def stored(self, user: str) -> dict[str, Contact]:
        return dict(self.store.rosters.get(f"{user}@{DOMAIN}", {}))


@contextlib.asynccontextmanager
async def running_rig(
    *,
    webapp: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
    concurrency: int = 16,
    write_window: int = 64,
) -> AsyncIterator[Rig]:
    """The parts wired as the app wires them; ``webapp`` and ``listener`` override settings."""
    client_settings: dict[str, Any] = {"timeout": 2.0, "attempts": 2, "max_bytes": 1_048_576}
    client_settings |= webapp or {}
    store = MemoryStore()
    async with (
        FakeWebApp() as fake,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
        ) as http,
    ):
        client = WebAppClient(fake.url_template, user_agent="campaign", **client_settings)
        syncer = Syncer(
            client, store, DOMAIN, concurrency=concurrency, max_age=0, write_window=write_window
        )
        api = HttpApi(
            ListenerConfig(port=0, token=TOKEN, **(listener or {})),
            domain=DOMAIN,
            refresher=syncer,
            checker=Checker(client, store, DOMAIN, on_drift=syncer.forget),
            online=_Ready(),
            readiness=_Ready(),
        )
        runner = web.AppRunner(api.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            yield Rig(fake, store, client, syncer, url, http)
        finally:
            await runner.cleanup()
            await client.close()
