"""Fetching a user's roster from the web app (README, "The web app's side")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
import urllib.parse
from typing import TYPE_CHECKING, Self

import aiohttp
import stamina
import structlog
import yarl

from component import metrics
from component.breaker import CircuitBreaker, CircuitChange
from component.errors import (
    FetchError,
    RosterFormatError,
    TransientFetchError,
    UnreachableError,
    WebAppDownError,
)
from component.roster import ParsedRoster, parse_webapp_roster

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from component.errors import FetchErrorKind

__all__ = ["WebAppClient", "roster_url"]

log = structlog.get_logger(__name__)

# Backoff between attempts is short: a refresh request from the web app waits for the answer.
_WAIT_INITIAL = 0.5
_WAIT_MAX = 2.0
_WAIT_JITTER = 0.5
# On top of attempts * timeout, room for the backoff waits in the overall retry budget.
_RETRY_SLACK = 5.0
# A gateway's way of saying the web app behind it is down or overloaded.
_GATEWAY_DOWN = frozenset({502, 503, 504})
# How long fetches wait behind a probe: a web app that is back answers it well within this;
# one that is not would otherwise keep them all for a whole timeout, probe after probe.
_PROBE_WAIT = 1.0


def roster_url(template: str, username: str) -> str:
    """The roster URL for *username*, which is encoded so it stays in its path segment."""
    quoted = urllib.parse.quote(username, safe="")
    # quote() leaves dots alone, but a "." or ".." segment would be resolved away by the web
    # app, or a proxy in front of it, and so reach another resource.
    if not username.strip("."):
        quoted = "%2E" * len(username)
    return template.replace("%s", quoted)


class WebAppClient:
    """Fetches rosters from the web app over one reused connection pool."""

    def __init__(  # noqa: PLR0913 - all but the URL are keyword-only settings
        self,
        url_template: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        max_bytes: int = 1_048_576,
        circuit_failures: int = 5,
        circuit_cooldown: float = 5.0,
        user_agent: str,
    ) -> None:
        self._template = url_template
        self._timeout = timeout
        self._attempts = attempts
        self._max_bytes = max_bytes
        self._headers = {"Accept": "application/json", "User-Agent": user_agent}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None
        # While the web app is clearly down, fetches fail at once instead of each waiting out
        # its attempts: a 10,000-user refresh answers in seconds, logins get the stored roster.
        self._circuit = CircuitBreaker(
            threshold=circuit_failures,
            cooldown=circuit_cooldown,
            probe_timeout=timeout,
            on_change=self._circuit_changed,
        )
        # Set (and replaced) when a probe's outcome is known: fetches waiting on it go on.
        self._settled = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._get_session()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def fetch(self, username: str, owner: str) -> ParsedRoster:
        """The roster the web app wants *username*, whose bare JID is *owner*, to have.

        Raises FetchError, and nothing else, when there is no trustworthy answer.
        """
        parsed = await self.fetch_if_changed(username, owner, unless=None)
        assert parsed is not None  # only a fingerprint given as `unless` can match
        return parsed

    async def fetch_if_changed(
        self, username: str, owner: str, *, unless: bytes | None
    ) -> ParsedRoster | None:
        """Like fetch(), but None when the answer is byte for byte the one whose fingerprint
        (``ParsedRoster.source``) is ``unless``: nothing is decoded or checked again, so an
        unchanged roster costs little more than its request (its warnings are not repeated).
        """
        if not username:
            # "/contacts/" is likely some other resource of the web app.
            raise FetchError(username, "empty username")
        # encoded=True: the path is already encoded exactly as it must be sent; without it yarl
        # would decode and re-normalize it (%2E%2E becoming "..").
        url = yarl.URL(roster_url(self._template, username), encoded=True)
        started = time.monotonic()
        # Before the retries: while the web app is down, refusing costs next to nothing.
        await self._admitted(username)

        # The first attempt runs outside stamina: setting up its retry loop cost 40% of an
        # unchanged fetch's CPU (profiled), and most fetches succeed at once. A failure is
        # handed to stamina as its first attempt's: waits, attempts, budget, hooks and
        # metrics stay the same.
        def attempt(num: int) -> Awaitable[ParsedRoster | None]:
            return self._attempt(url, username, owner, num, unless)

        first_began = time.monotonic()
        try:
            parsed = await attempt(1)
        except TransientFetchError as exc:
            parsed = await self._retried(attempt, exc, first_began)

        if parsed is None:
            log.debug("webapp.fetched", username=username, unchanged=True)
            return None
        for warning in parsed.warnings:
            log.warning("webapp.roster_warning", username=username, warning=warning)
        log.debug(
            "webapp.fetched",
            username=username,
            contacts=len(parsed.roster),
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        return parsed

    async def _retried(
        self,
        attempt: Callable[[int], Awaitable[ParsedRoster | None]],
        first: TransientFetchError,
        first_began: float,
    ) -> ParsedRoster | None:
        """The attempts after a first one failed with ``first``, within the same budget."""
        failed: TransientFetchError | None = first
        parsed = None
        # What the first attempt left of the budget (it waited at most one timeout).
        budget = self._attempts * self._timeout + _RETRY_SLACK - (time.monotonic() - first_began)
        async for retry in stamina.retry_context(
            on=TransientFetchError,
            attempts=self._attempts,
            timeout=budget,
            wait_initial=_WAIT_INITIAL,
            wait_max=_WAIT_MAX,
            wait_jitter=_WAIT_JITTER,
        ):
            with retry:
                if failed is not None:
                    error, failed = failed, None
                    raise error
                parsed = await attempt(retry.num)
        return parsed

    async def _attempt(
        self, url: yarl.URL, username: str, owner: str, attempt: int, unless: bytes | None
    ) -> ParsedRoster | None:
        if attempt > 1:
            await self._admitted(username)
        try:
            body = await self._answered(url, username)
            source = hashlib.blake2b(body, digest_size=16).digest()
            if source == unless:
                return None
            try:
                parsed = parse_webapp_roster(_decoded(body, username), owner)
            except RosterFormatError as exc:
                raise FetchError(username, str(exc), "bad_body") from None
            return dataclasses.replace(parsed, source=source)
        except FetchError as exc:
            metrics.FETCH_ERRORS.labels(kind=exc.kind).inc()
            log.warning(
                "webapp.fetch_failed", username=username, reason=exc.reason, attempt=attempt
            )
            raise

    async def _admitted(self, username: str) -> None:
        """Wait for our turn: none while the web app is down; while a probe is out, its
        outcome (so the first refresh after an outage is served whole, not one user of it).

        Not logged per user: the circuit's own events say the web app is down.
        """
        deadline = time.monotonic() + min(self._timeout, _PROBE_WAIT)
        while not self._circuit.allow():
            remaining = deadline - time.monotonic()
            if self._circuit.state == "open" or remaining <= 0:
                raise WebAppDownError(username, self._circuit.reason)
            # Bounded: a probe whose caller was cancelled never reports.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), remaining)

    def _circuit_changed(self, change: CircuitChange) -> None:
        metrics.CIRCUIT_OPEN.set(change.state != "closed")
        match change:
            case CircuitChange(state="open", previous="closed"):
                metrics.CIRCUIT_OPENED.inc()
                log.warning(
                    "webapp.circuit_open", failures=change.failures, last_error=change.reason
                )
            case CircuitChange(state="open"):
                log.warning(
                    "webapp.circuit_probe_failed",
                    error=change.reason,
                    down_for_s=round(change.down_for, 1),
                )
            case CircuitChange(state="half-open"):
                log.info("webapp.circuit_probe", down_for_s=round(change.down_for, 1))
            case CircuitChange(state="closed"):
                log.info("webapp.circuit_closed", down_for_s=round(change.down_for, 1))
        if change.state != "half-open":
            self._settled.set()
            self._settled = asyncio.Event()

    async def _answered(self, url: yarl.URL, username: str) -> bytes:
        """The answer's body; what the request showed of the web app told to the circuit.
        Any answer from the web app itself (a 404, a 500, garbage) shows it is up."""
        try:
            body = await self._get_body(url, username)
        except UnreachableError as exc:
            self._circuit.failure(exc.reason)
            if self._circuit.state == "open":
                # No retry (nor its backoff wait) while the web app is down.
                raise WebAppDownError(username, self._circuit.reason, exc.kind) from exc
            raise
        except FetchError:
            self._circuit.success()
            raise
        self._circuit.success()
        return body

    async def _get_body(self, url: yarl.URL, username: str) -> bytes:
        try:
            # Redirects are not followed: the credential must not travel to another host, and a
            # web app that moved should get its configuration fixed, not silently tolerated.
            async with self._get_session().get(url, allow_redirects=False) as response:
                if response.status != 200:
                    status = response.status
                    if status in _GATEWAY_DOWN:
                        raise UnreachableError(username, f"HTTP {status}", "5xx")
                    if status >= 500:
                        raise TransientFetchError(username, f"HTTP {status}", "5xx")
                    kind: FetchErrorKind = "4xx" if 400 <= status < 500 else "other"
                    raise FetchError(username, f"HTTP {status}", kind)
                body = await self._read_capped(response, username)
        # Before ClientError: aiohttp's own timeout errors are both.
        except TimeoutError:
            raise UnreachableError(
                username, f"timed out after {self._timeout}s", "timeout"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            reason = "connection refused" if refused else f"cannot connect: {exc.os_error}"
            raise UnreachableError(username, reason, "refused" if refused else "other") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise UnreachableError(username, f"connection broken ({type(exc).__name__})") from exc
        except aiohttp.ClientError as exc:
            raise FetchError(username, f"request failed ({type(exc).__name__})") from exc
        return body

    async def _read_capped(self, response: aiohttp.ClientResponse, username: str) -> bytes:
        # Counted as it streams in: Content-Length may be absent (chunked) or compressed.
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > self._max_bytes:
                raise FetchError(username, f"too large (over {self._max_bytes} bytes)", "too_large")
        return bytes(body)

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use: a ClientSession belongs to the loop running when it is made.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                # Every fetch stands alone; cookies from one user's answer must not shape the
                # next user's request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


def _decoded(body: bytes, username: str) -> object:
    # The Content-Type is not checked: web apps written for mod_http_roster_admin may send
    # JSON as text/plain, and that module accepted it.
    try:
        return json.loads(body)
    # RecursionError: absurdly deep nesting is not a roster either.
    except (ValueError, RecursionError):
        raise FetchError(username, "not JSON", "bad_body") from None
