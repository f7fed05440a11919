"""Wiring and lifecycle: build the parts from the config, start, serve, shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiohttp import web

from component import __version__, metrics, systemd
from component.check import Checker
from component.http_api import HttpApi
from component.readiness import Readiness
from component.reconcile import Reconciler
from component.resync import Resync
from component.roster import version
from component.store.ejabberd import AdminApiRosterStore
from component.store.privileged import PrivilegedRosterStore
from component.sync import Syncer
from component.webapp import WebAppClient
from component.xmpp.delegation import DelegatedRosters
from component.xmpp.grants import Grants
from component.xmpp.link import ComponentLink
from component.xmpp.presence import OnlineUsers
from component.xmpp.pushes import RosterPusher

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from component.config import Config
    from component.roster import Roster
    from component.store import RosterStore
    from component.sync import SyncResult

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

USER_AGENT = f"http-roster-admin/{__version__}"
# Seconds that pushes queued at shutdown get to go out before the link closes.
_PUSH_DRAIN = 2.0


class Application:
    """The running service: XMPP parts, sync core and HTTP listener on one event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._tasks: set[asyncio.Task[Any]] = set()
        # Users with a login sync queued or running: a reconnect replays every online
        # user's presence, and each user needs one sync, not one per presence.
        self._login_syncs: set[str] = set()
        self._runner: web.AppRunner | None = None
        metrics.instrument_retries()
        self.webapp = WebAppClient(
            config.webapp.roster_url,
            token=config.webapp.token or None,
            timeout=config.webapp.timeout,
            attempts=config.webapp.attempts,
            max_bytes=config.webapp.max_bytes,
            circuit_failures=config.webapp.circuit_failures,
            circuit_cooldown=config.webapp.circuit_cooldown,
            user_agent=USER_AGENT,
        )
        self.readiness = Readiness()
        self.link = ComponentLink(config.component, iq_timeout=config.sync.xmpp_timeout)
        # A reconnection attempt comes at most reconnect_max_delay after the server is back.
        self._link_health = systemd.LinkHealth(
            self.link, grace=systemd.LINK_GRACE + config.component.reconnect_max_delay
        )
        self.grants = Grants(self.link, config.users.domain)
        self.online = OnlineUsers(self.link, config.users.domain, self._on_available)
        self.delegation = DelegatedRosters(
            self.link,
            self.grants,
            self.online,
            domain=config.users.domain,
            roster_provider=self._roster_for,
            sync_provider=self._sync_before_answer,
            max_stanza_bytes=config.server.max_stanza_bytes,
            expected=config.server.delegates,
        )
        self.pusher = RosterPusher(self.link, self.grants, self.online, self.delegation)
        self.store = _roster_store(config, self.link, self.grants, self.readiness, self.online)
        self.syncer = Syncer(
            self.webapp,
            self.store,
            config.users.domain,
            concurrency=config.sync.concurrency,
            max_age=config.sync.max_age,
            write_window=config.sync.write_window,
            on_change=self.pusher.push,
        )
        # A quarter of the sync slots at most: refreshes and logins come first.
        self.reconciler = Reconciler(
            self.syncer,
            self.online,
            self.readiness,
            interval=config.sync.reconcile_interval,
            slots=max(1, config.sync.concurrency // 4),
        )
        self.resync = Resync(
            self._resync_one,
            spread=config.sync.resync_spread,
            slots=max(1, config.sync.concurrency // 4),
        )
        self._resync_pass: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.checker = Checker(
            self.webapp, self.store, config.users.domain, on_drift=self.syncer.forget
        )
        self.http = HttpApi(
            config.listener,
            domain=config.users.domain,
            refresher=self.syncer,
            checker=self.checker,
            online=self.online,
            readiness=self.readiness,
            # Every fetch slot busy, and as many users past their fetch as the write window
            # can serve (their reads and writes run outside the slots).
            parallel=config.sync.concurrency + config.sync.write_window,
        )
        self._require_parts()

    def _link_problem(self) -> str | None:
        if self.link.connected:
            return None
        link = self.config.component
        return f"not connected to the XMPP server at {link.host}:{link.port}"

    def _require_parts(self) -> None:
        """What must hold before refreshes and logins can be served; re-checked on changes."""
        self.readiness.require(self._link_problem)
        self.readiness.require(self.store.problem)
        self.readiness.require(self.delegation.problem)
        self.link.on_state(lambda _: self.readiness.update())
        self.grants.on_change(self.readiness.update)
        self.readiness.on_change(systemd.notify_readiness)
        self.link.on_state(lambda connected: None if connected else self.resync.hold())
        # The server may be going down: once back, it may lack the writes it acknowledged last.
        self.link.on_state(lambda connected: None if connected else self.syncer.forget_all())
        self.readiness.on_change(lambda ready, _: self._start_resync() if ready else None)

    @property
    def http_port(self) -> int:
        """The port the listener is bound to (useful when the config asks for port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the listener is not running")
        port: int = self._runner.addresses[0][1]
        return port

    async def start(self) -> None:
        listener = self.config.listener
        # Requests still running when the stop timeout cuts the syncs short finish writing.
        self._runner = web.AppRunner(
            self.http.app(),
            access_log=None,
            shutdown_timeout=listener.stop_timeout + self.config.sync.xmpp_timeout,
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, listener.host, listener.port).start()
        log.info("http.listening", host=listener.host, port=self.http_port, version=__version__)
        self.readiness.update()
        await self.store.open()
        self.link.start()
        if self.config.sync.reconcile_interval:
            self._spawn(self.reconciler.run())
        if (period := systemd.watchdog_period()) is not None:
            watchdog = systemd.Watchdog(period, self._link_health.problem)
            self._watchdog = asyncio.ensure_future(watchdog.run())

    async def stop(self) -> None:
        """Stop accepting, let in-flight refreshes finish (bounded), then close the links.

        Refreshes get ``listener.stop_timeout`` seconds; then syncs not begun or still fetching
        are answered as failed, and writes in flight finish (no roster is left half-written).
        Users waiting for their roster are answered (from the server's store if their sync
        is cut short) before the XMPP link closes.
        """
        log.info("app.stopping")
        # systemd stops watching once told we are stopping; a ping after that could make it
        # watch the shutdown again.
        if self._watchdog is not None:
            self._watchdog.cancel()
        systemd.notify("STOPPING=1")
        loop = asyncio.get_running_loop()
        cut = loop.call_later(self.config.listener.stop_timeout, self._cut_short)
        if self._runner is not None:
            await self._runner.cleanup()  # stops accepting, waits for the requests in flight
        cut.cancel()
        self.syncer.stop()  # background syncs (logins, reconciliation) are not waited for
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.syncer.wait_idle(), self.config.sync.xmpp_timeout)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.delegation.stop()
        # Pushes already queued are cheap and keep clients exact; a stuck link is not waited for.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pusher.wait_idle(), _PUSH_DRAIN)
        await self.pusher.stop()
        await self.link.stop()
        await self.store.close()
        self.readiness.stop()
        await self.webapp.close()
        log.info("app.stopped")

    def _cut_short(self) -> None:
        log.warning("app.stop_timeout", after_s=self.config.listener.stop_timeout)
        self.syncer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def _roster_for(self, username: str) -> tuple[Roster, str]:
        """The roster to answer a user's roster request with.

        A fresh sync when needed; if that fails, takes too long or is cut short by shutdown,
        the last good roster the server holds (a sync still running pushes what it changes).
        With it, its version (XEP-0237).
        """
        result = await self._login_sync(username, roster_needed=True)
        if result is not None and result.roster is not None and result.version is not None:
            return result.roster, result.version
        roster = await self.syncer.current_roster(username)
        return roster, version(roster)

    async def _sync_before_answer(self, username: str) -> None:
        """Sync before the server answers a user's roster request from its store (which
        then serves the last good roster if this fails or takes too long)."""
        await self._login_sync(username, roster_needed=False)

    async def _login_sync(self, username: str, *, roster_needed: bool) -> SyncResult | None:
        """A fresh sync when needed, waited for at most answer_timeout: the successful
        result, or None (the reason is logged)."""
        sync = self._spawn(self.syncer.ensure_fresh(username, roster_needed=roster_needed))
        try:
            result = await asyncio.wait_for(
                asyncio.shield(sync), timeout=self.config.sync.answer_timeout
            )
        except TimeoutError:
            log.warning("roster.answer_from_store", user=username, why="sync too slow")
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not sync.cancelled() or (current is not None and current.cancelling()):
                raise
            log.info("roster.answer_from_store", user=username, why="sync cancelled")
        else:
            if result.ok:
                self.resync.synced(username)
                return result
        return None

    def _on_available(self, username: str) -> None:
        if username in self._login_syncs or self.resync.offer(username):
            return
        if not self.readiness.ready:
            return
        self._login_syncs.add(username)
        task = self._spawn(self.syncer.ensure_fresh(username, background=True))
        task.add_done_callback(lambda _: self._login_syncs.discard(username))

    def _start_resync(self) -> None:
        """Ready again: the users who came online meanwhile (and come now) get their pass."""
        if self._resync_pass is None or self._resync_pass.done():
            self._resync_pass = self._spawn(self.resync.run(lambda: self.readiness.ready))

    async def _resync_one(self, username: str) -> None:
        """A user online after the link came back: a fresh fetch (changes made during the
        outage were refused with 503), unless a login sync is under way."""
        if username in self._login_syncs:
            return
        self._login_syncs.add(username)
        try:
            await self.syncer.refresh(username)
        finally:
            self._login_syncs.discard(username)

    def _spawn(self, coro: Coroutine[object, object, _T]) -> asyncio.Task[_T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _roster_store(
    config: Config, link: ComponentLink, grants: Grants, readiness: Readiness, online: OnlineUsers
) -> RosterStore:
    """The mechanism that writes rosters into this kind of server."""
    server = config.server
    match server.kind:
        case "prosody":
            return PrivilegedRosterStore(
                link,
                grants,
                config.component.jid,
                online=lambda user: bool(online.resources(user)),
                max_stanza_bytes=server.max_stanza_bytes,
            )
        case "ejabberd":
            return AdminApiRosterStore(
                server.api_url,
                config.users.domain,
                user=server.api_user,
                password=server.api_password,
                concurrency=server.api_concurrency,
                timeout=config.sync.xmpp_timeout,
                on_change=readiness.update,
            )
