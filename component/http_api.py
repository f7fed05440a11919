"""The HTTP listener: the web app's refresh endpoint, health and metrics (aiohttp)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import json
import time
from typing import TYPE_CHECKING, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slixmpp.jid import JID

from component import metrics
from component.errors import BadRequestError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from component.check import CheckResult
    from component.config import ListenerConfig
    from component.roster import Contact
    from component.sync import SyncResult

    Job = Callable[[], Awaitable[SyncResult]]  # one user's sync, started when called

log = structlog.get_logger(__name__)

REFRESH_PATH = "/roster_admin/refresh"
ROSTERS_PATH = "/roster_admin/rosters"
CHECK_PATH = "/roster_admin/check"
ONLINE_PATH = "/roster_admin/online"
_OPEN_PATHS = frozenset({"/healthz"})
_COUNTED_PREFIX = "/roster_admin/"


class Refresher(Protocol):
    async def refresh(self, username: str) -> SyncResult: ...

    async def apply(self, username: str, roster: object) -> SyncResult: ...


class Checker(Protocol):
    async def check(self, username: str) -> CheckResult: ...


class Online(Protocol):
    def online_users(self) -> list[str]: ...


class Readiness(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def reasons(self) -> list[str]: ...


def _json(code: int, status: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"status": status, "message": message, **extra}, status=code)


def _json_body(body: bytes) -> object:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("body is nested too deeply") from None


def parse_usernames(body: bytes, domain: str, limit: int) -> list[str]:
    """The distinct, normalized usernames in a refresh body (a JSON array of strings)."""
    data = _json_body(body)
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


def parse_rosters(body: bytes, domain: str, limit: int) -> dict[str, object]:
    """The users and their rosters in a bulk body: a JSON object, username -> roster.

    Each roster is checked later exactly like one fetched from the web app (one that is not a
    roster fails that user alone); here only the shape of the whole is.
    """
    data = _json_body(body)
    if not isinstance(data, dict):
        raise BadRequestError(
            f"body must be a JSON object of username -> roster, not {type(data).__name__}"
        )
    if len(data) > limit:
        raise BadRequestError(f"too many usernames: {len(data)} > {limit}")
    rosters: dict[str, object] = {}
    for name, roster in data.items():
        username = normalize_username(name, domain)
        if username in rosters:
            raise BadRequestError(f"username {name!r} appears twice (as {username!r})")
        rosters[username] = roster
    return rosters


async def _run_all(work: Sequence[Job], width: int) -> list[SyncResult]:
    """Every job's outcome, in order, with at most ``width`` of them started at once.

    Enough at once to keep every sync slot busy; few enough that a 10,000-user refresh does
    not hold 10,000 waiting syncs in memory, nor every user's roster until the last is done
    (only the outcome is kept).
    """
    outcomes: list[SyncResult | None] = [None] * len(work)
    queue = iter(enumerate(work))  # shared: each worker takes the next job when it is free

    async def worker() -> None:
        for index, job in queue:
            result = await job()
            outcomes[index] = dataclasses.replace(result, roster=None)

    await asyncio.gather(*(worker() for _ in range(min(width, len(work)))))
    return [outcome for outcome in outcomes if outcome is not None]


def _counts(results: Sequence[SyncResult], began: float) -> web.Response:
    """The answer to a refresh: how many users were updated, which failed."""
    failed = sorted(r.username for r in results if not r.ok)
    updated = len(results) - len(failed)
    total_failure = bool(results) and not updated
    log.info(
        "refresh.done",
        users=len(results),
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


def _contact_json(contact: Contact | None) -> dict[str, object] | None:
    if contact is None:
        return None
    return {
        "name": contact.name,
        "groups": sorted(contact.groups),
        "subscription": contact.subscription,
        "ask": contact.ask,
    }


def _check_answer(result: CheckResult) -> web.Response:
    """The answer to a check: each difference with the item as stored and as wanted."""
    if result.error is not None:
        return _json(502, status="error", message=result.error, username=result.username)
    changes = [
        {
            "jid": change.jid,
            "change": change.kind,
            "fields": list(change.fields),
            "was": _contact_json(change.was),
            "now": _contact_json(change.now),
        }
        for change in result.changes
    ]
    return _json(
        200,
        status="ok",
        message=_plural(len(changes), "difference") if changes else "in sync",
        username=result.username,
        in_sync=result.in_sync,
        contacts=result.contacts,
        changes=changes,
        warnings=list(result.warnings),
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def token_matches(authorization: str, token: str) -> bool:
    """Whether an Authorization header carries the bearer token. In constant time, so that how
    long a refusal takes tells nothing about how much of a guess was right."""
    # Bytes, because compare_digest refuses non-ASCII text (a header may carry any).
    given = authorization.encode(errors="surrogateescape")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def normalize_username(name: str, domain: str) -> str:
    """The localpart ``name`` stands for on ``domain`` (nodeprep'd), or BadRequestError."""
    if not name or "@" in name or "/" in name:
        raise BadRequestError(f"not a valid username: {name!r}")
    try:
        jid = JID(f"{name}@{domain}")
    # InvalidJID is a ValueError; so is the UnicodeError a lone surrogate (JSON "\ud800") causes.
    except ValueError:
        raise BadRequestError(f"not a valid username: {name!r}") from None
    return str(jid.user)


class HttpApi:
    """Builds the aiohttp application; the app module runs it."""

    def __init__(  # noqa: PLR0913 -- one collaborator per kind of request, all keyword-only
        self,
        config: ListenerConfig,
        *,
        domain: str,
        refresher: Refresher,
        checker: Checker,
        online: Online,
        readiness: Readiness,
        parallel: int = 64,
    ) -> None:
        self._config = config
        self._parallel = parallel
        self._domain = domain
        self._refresher = refresher
        self._checker = checker
        self._online = online
        self._readiness = readiness

    def app(self) -> web.Application:
        app = web.Application(
            # The larger of the two limits; each endpoint enforces its own.
            client_max_size=max(self._config.max_body_bytes, self._config.max_rosters_bytes),
            middlewares=[self._count, self._authenticate],
        )
        app.router.add_post(REFRESH_PATH, self._refresh_many)
        app.router.add_post(ROSTERS_PATH, self._apply_many)
        app.router.add_get(REFRESH_PATH + "/{username}", self._refresh_one)
        app.router.add_get(CHECK_PATH + "/{username}", self._check_one)
        app.router.add_get(ONLINE_PATH, self._online_users)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    @web.middleware
    async def _count(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Refresh requests by the status they were answered with (401 and 413 included)."""
        if not request.path.startswith(_COUNTED_PREFIX):
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.REFRESH_REQUESTS.labels(status=str(exc.status)).inc()
            raise
        metrics.REFRESH_REQUESTS.labels(status=str(response.status)).inc()
        return response

    @web.middleware
    async def _authenticate(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        token = self._config.token
        given = request.headers.get("Authorization", "")
        if token and request.path not in _OPEN_PATHS and not token_matches(given, token):
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

    async def _body(self, request: web.Request, limit: int) -> bytes | web.Response:
        """The request's body, or the 413 answer when it is larger than ``limit``."""
        if request.content_length is not None and request.content_length > limit:
            return _json(413, status="error", message=f"body too large (over {limit} bytes)")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = b""
        if len(body) > limit or (not body and request.content_length):
            return _json(413, status="error", message=f"body too large (over {limit} bytes)")
        return body

    async def _refresh_many(self, request: web.Request) -> web.Response:
        def jobs(body: bytes) -> list[Job]:
            usernames = parse_usernames(body, self._domain, self._config.max_users)
            return [functools.partial(self._refresher.refresh, user) for user in usernames]

        return await self._sync_many(request, self._config.max_body_bytes, jobs)

    async def _apply_many(self, request: web.Request) -> web.Response:
        """The rosters themselves, inline: a bulk change costs no fetch per user."""

        def jobs(body: bytes) -> list[Job]:
            rosters = parse_rosters(body, self._domain, self._config.max_users)
            return [functools.partial(self._refresher.apply, *item) for item in rosters.items()]

        return await self._sync_many(request, self._config.max_rosters_bytes, jobs)

    async def _sync_many(
        self, request: web.Request, limit: int, jobs: Callable[[bytes], list[Job]]
    ) -> web.Response:
        """Read and check the body into one job per user, run them all, answer the counts."""
        body = await self._body(request, limit)
        if isinstance(body, web.Response):
            return body
        try:
            work = jobs(body)
        except BadRequestError as exc:
            log.warning("refresh.bad_request", reason=str(exc), path=request.path)
            return _json(400, status="error", message=str(exc))
        if (unavailable := self._not_ready()) is not None:
            return unavailable
        began = time.perf_counter()
        return _counts(await _run_all(work, self._parallel), began)

    def _one_user(self, request: web.Request) -> str | web.Response:
        """The username in the path, or the answer when it is bad or we are not ready."""
        try:
            username = normalize_username(request.match_info["username"], self._domain)
        except BadRequestError as exc:
            return _json(400, status="error", message=str(exc))
        unavailable = self._not_ready()
        return username if unavailable is None else unavailable

    async def _refresh_one(self, request: web.Request) -> web.Response:
        username = self._one_user(request)
        if isinstance(username, web.Response):
            return username
        result = await self._refresher.refresh(username)
        log.info("refresh.done", users=1, updated=int(result.ok), errors=int(not result.ok))
        if result.ok:
            return _json(200, status="ok", message="roster update complete")
        return _json(502, status="error", message=result.error or "roster update failed")

    async def _check_one(self, request: web.Request) -> web.Response:
        """How the server's copy of one roster differs from the web app's; nothing written."""
        username = self._one_user(request)
        if isinstance(username, web.Response):
            return username
        result = await self._checker.check(username)
        log.info(
            "check.done",
            username=username,
            in_sync=result.in_sync,
            changes=len(result.changes),
            error=result.error,
        )
        return _check_answer(result)

    async def _online_users(self, _request: web.Request) -> web.Response:
        """Who is online now: to refresh them, in chunks, with POST /roster_admin/refresh."""
        if (unavailable := self._not_ready()) is not None:
            return unavailable
        users = sorted(self._online.online_users())
        return _json(200, status="ok", message=_plural(len(users), "user") + " online", users=users)

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
