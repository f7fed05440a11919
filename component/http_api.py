"""The HTTP listener: the web app's refresh endpoint, health and metrics (aiohttp)."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import TYPE_CHECKING, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slixmpp.jid import JID, InvalidJID

from component import metrics
from component.errors import BadRequestError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from component.config import ListenerConfig
    from component.sync import SyncResult

log = structlog.get_logger(__name__)

REFRESH_PATH = "/roster_admin/refresh"
_OPEN_PATHS = frozenset({"/healthz"})


class Refresher(Protocol):
    async def refresh(self, username: str) -> SyncResult: ...


class Readiness(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def reasons(self) -> list[str]: ...


def _json(code: int, status: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"status": status, "message": message, **extra}, status=code)


def parse_usernames(body: bytes, domain: str, limit: int) -> list[str]:
    """The distinct, normalized usernames in a refresh body (a JSON array of strings)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("body is nested too deeply") from None
    if not isinstance(data, list):
        raise BadRequestError(f"body must be a JSON array of usernames, not {type(data).__name__}")
    if len(data) > limit:
        raise BadRequestError(f"too many usernames: {len(data)} > {limit}")
    usernames: dict[str, None] = {}
    for index, item in enumerate(data):
        if not isinstance(item, str):
            raise BadRequestError(f"item {index} is not a string")
        usernames[normalize_username(item, domain)] = None
    return list(usernames)


def normalize_username(name: str, domain: str) -> str:
    """The localpart ``name`` stands for on ``domain`` (nodeprep'd), or BadRequestError."""
    if not name or "@" in name or "/" in name:
        raise BadRequestError(f"not a valid username: {name!r}")
    try:
        jid = JID(f"{name}@{domain}")
    except InvalidJID:
        raise BadRequestError(f"not a valid username: {name!r}") from None
    return str(jid.user)


class HttpApi:
    """Builds the aiohttp application; the app module runs it."""

    def __init__(
        self,
        config: ListenerConfig,
        *,
        domain: str,
        refresher: Refresher,
        readiness: Readiness,
    ) -> None:
        self._config = config
        self._domain = domain
        self._refresher = refresher
        self._readiness = readiness

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._config.max_body_bytes, middlewares=[self._authenticate]
        )
        app.router.add_post(REFRESH_PATH, self._refresh_many)
        app.router.add_get(REFRESH_PATH + "/{username}", self._refresh_one)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    @web.middleware
    async def _authenticate(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        token = self._config.token
        if token and request.path not in _OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            # Bytes, because compare_digest refuses non-ASCII text (a header may carry any).
            expected = f"Bearer {token}".encode()
            if not hmac.compare_digest(given.encode(errors="surrogateescape"), expected):
                log.warning("http.unauthorized", path=request.path, remote=request.remote)
                return _json(401, status="error", message="missing or wrong bearer token")
        return await handler(request)

    def _not_ready(self) -> web.Response | None:
        if self._readiness.ready:
            return None
        response = _json(
            503,
            status="error",
            message="not ready: " + "; ".join(self._readiness.reasons) + "; retry later",
        )
        response.headers["Retry-After"] = "5"
        return response

    async def _refresh_many(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json(413, status="error", message="body too large")
        try:
            usernames = parse_usernames(body, self._domain, self._config.max_users)
        except BadRequestError as exc:
            log.warning("refresh.bad_request", reason=str(exc))
            return _json(400, status="error", message=str(exc))
        if (unavailable := self._not_ready()) is not None:
            return unavailable
        began = time.perf_counter()
        results = await asyncio.gather(*(self._refresher.refresh(u) for u in usernames))
        failed = sorted(r.username for r in results if not r.ok)
        updated = len(results) - len(failed)
        total_failure = bool(results) and not updated
        log.info(
            "refresh.done",
            users=len(usernames),
            updated=updated,
            errors=len(failed),
            failed=failed[:20],
            duration_ms=round((time.perf_counter() - began) * 1000, 1),
        )
        return _json(
            502 if total_failure else 200,
            status="error" if total_failure else "ok",
            message="roster update failed" if total_failure else "roster update complete",
            updated=updated,
            errors=len(failed),
            failed=failed,
        )

    async def _refresh_one(self, request: web.Request) -> web.Response:
        try:
            username = normalize_username(request.match_info["username"], self._domain)
        except BadRequestError as exc:
            return _json(400, status="error", message=str(exc))
        if (unavailable := self._not_ready()) is not None:
            return unavailable
        result = await self._refresher.refresh(username)
        log.info("refresh.done", users=1, updated=int(result.ok), errors=int(not result.ok))
        if result.ok:
            return _json(200, status="ok", message="roster update complete")
        return _json(502, status="error", message=result.error or "roster update failed")

    async def _health(self, _request: web.Request) -> web.Response:
        ready, reasons = self._readiness.ready, self._readiness.reasons
        return _json(
            200 if ready else 503,
            status="ok" if ready else "unavailable",
            message="ready" if ready else "not ready: " + "; ".join(reasons),
            reasons=reasons,
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
