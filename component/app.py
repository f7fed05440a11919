"""Wiring and lifecycle: build the parts from the config, start, serve, shut down cleanly."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiohttp import web

from component import __version__
from component.http_api import HttpApi
from component.store import PrivilegedRosterStore
from component.sync import Syncer
from component.webapp import WebAppClient
from component.xmpp import XmppAdapter

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from component.config import Config
    from component.roster import Roster

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

USER_AGENT = f"http-roster-admin/{__version__}"


class Application:
    """The running service: XMPP adapter, sync core and HTTP listener on one event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.webapp = WebAppClient(
            config.webapp.roster_url,
            token=config.webapp.token or None,
            timeout=config.webapp.timeout,
            attempts=config.webapp.attempts,
            max_bytes=config.webapp.max_bytes,
            user_agent=USER_AGENT,
        )
        self.xmpp = XmppAdapter(
            config.component,
            users_domain=config.users.domain,
            iq_timeout=config.sync.xmpp_timeout,
            roster_provider=self._roster_for,
            on_available=self._on_available,
        )
        self.syncer = Syncer(
            self.webapp,
            PrivilegedRosterStore(self.xmpp),
            config.users.domain,
            concurrency=config.sync.concurrency,
            max_age=config.sync.max_age,
            on_change=self.xmpp.push,
        )
        self.http = HttpApi(
            config.listener,
            domain=config.users.domain,
            refresher=self.syncer,
            readiness=self.xmpp,
        )

    @property
    def http_port(self) -> int:
        """The port the listener is bound to (useful when the config asks for port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the listener is not running")
        port: int = self._runner.addresses[0][1]
        return port

    async def start(self) -> None:
        listener = self.config.listener
        self._runner = web.AppRunner(self.http.app(), access_log=None, shutdown_timeout=10.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, listener.host, listener.port).start()
        log.info("http.listening", host=listener.host, port=self.http_port, version=__version__)
        self.xmpp.start()
        self._spawn(self._notify_systemd_when_ready())

    async def stop(self) -> None:
        """Stop accepting, let in-flight refreshes finish (bounded), then close the links."""
        log.info("app.stopping")
        if self._runner is not None:
            await self._runner.cleanup()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.xmpp.stop()
        await self.webapp.close()
        log.info("app.stopped")

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def _roster_for(self, username: str) -> Roster:
        """The roster to answer a user's roster request with.

        A fresh sync when needed; if that fails or takes too long, the last good roster the
        server holds (the sync goes on in the background and the next push fixes the client).
        """
        sync = self._spawn(self.syncer.ensure_fresh(username))
        try:
            result = await asyncio.wait_for(
                asyncio.shield(sync), timeout=self.config.sync.answer_timeout
            )
        except TimeoutError:
            log.warning("roster.answer_from_store", user=username, why="sync too slow")
        else:
            if result.ok and result.roster is not None:
                return result.roster
        return await self.syncer.current_roster(username)

    def _on_available(self, username: str) -> None:
        if self.xmpp.ready:
            self._spawn(self.syncer.ensure_fresh(username))

    def _spawn(self, coro: Coroutine[object, object, _T]) -> asyncio.Task[_T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _notify_systemd_when_ready(self) -> None:
        await self.xmpp.wait_ready()
        _sd_notify("READY=1\nSTATUS=connected and privileged")


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)
