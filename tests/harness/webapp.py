"""A fake web app serving rosters over real HTTP, with switchable failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    # Answers one user's request its own way: any status, body or delivery.
    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# How the next answer goes wrong, if it does. "slow": the roster, but only after `slow`
# seconds; "truncated": the roster's first half, then the connection is cut; "cut_json": the
# first half as if it were the whole body.
Answer = Literal["ok", "error", "garbage", "not_object", "hang", "slow", "truncated", "cut_json"]
# "down": not listening at all, so connections are refused.
Mode = Answer | Literal["down"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    raw_path: str  # exactly as it arrived, still percent-encoded
    username: str  # decoded from the path
    headers: Mapping[str, str]
    answer: Mode | None  # how it was answered; None: by the user's entry in `handlers`
    at: float = 0.0  # when it arrived (the event loop's clock)


class FakeWebApp:
    """Serves GET /contacts/{username} from `rosters` on 127.0.0.1 and a free port.

    `upcoming` answers are used one per request, first to last, before `mode` applies again:
    `["error", "error"]` makes the next two requests fail with HTTP 500. A user with an entry in
    `handlers` is answered by it instead.
    """

    def __init__(self) -> None:
        # A list stands for what some web apps send for an empty roster: [].
        self.rosters: dict[str, dict[str, object] | list[object]] = {}
        self.requests: list[RecordedRequest] = []
        self.upcoming: list[Answer] = []
        self.delay = 0.0  # seconds before each answer: a slow web app
        self.handlers: dict[str, Handler] = {}
        self.in_flight = 0
        self.peak_in_flight = 0  # requests being answered at once, at most
        self.slow = 2.0  # seconds before a "slow" answer
        self._arrived = asyncio.Condition()
        self._mode: Mode = "ok"
        self._port = 0
        self._runner: web.AppRunner | None = None
        # Set when stopping, so that hanging handlers return and shutdown does not wait on them.
        self._release = asyncio.Event()

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self._port}/contacts/%s"

    async def set_mode(self, mode: Mode) -> None:
        """Answer all further requests as *mode* says; "down" stops listening until changed."""
        if mode == "down":
            await self.stop()
        elif self._runner is None:
            await self.start()
        self._mode = mode

    async def wait_requests(self, count: int) -> None:
        """Return once ``count`` requests have arrived in all (a fault can then be injected
        at a known point of a refresh)."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    async def start(self) -> None:
        """Listen, on the same port as before if there was one."""
        self._release = asyncio.Event()
        app = web.Application()
        # Any one segment: aiohttp's default pattern would not match usernames with { or }.
        app.router.add_get("/contacts/{username:[^/]+}", self._contacts)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            self._release.set()
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _contacts(self, request: web.Request) -> web.StreamResponse:
        username = request.match_info["username"]
        handler = self.handlers.get(username)
        answer: Mode | None = None
        if handler is None:
            answer = self.upcoming.pop(0) if self.upcoming else self._mode
        now = asyncio.get_running_loop().time()
        self.requests.append(
            RecordedRequest(request.raw_path, username, request.headers, answer, now)
        )
        async with self._arrived:
            self._arrived.notify_all()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if handler is not None:
                return await handler(request)
            assert answer is not None
            if self.delay:
                await asyncio.sleep(self.delay)
            return await self._answer(request, answer, self.rosters.get(username, {}))
        finally:
            self.in_flight -= 1

    async def _answer(  # noqa: PLR0911 -- one return per kind of answer
        self, request: web.Request, answer: Mode, roster: object
    ) -> web.StreamResponse:
        match answer:
            case "error":
                return web.Response(status=500, text="boom")
            case "garbage":
                return web.Response(text="<html>not json", content_type="application/json")
            case "not_object":
                return web.json_response([request.match_info["username"]])
            case "hang":
                await self._release.wait()
                return web.Response(status=503)
            case "slow":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), self.slow)
                return web.json_response(roster)
            case "truncated":
                return await _cut_off(request, json.dumps(roster).encode())
            case "cut_json":
                body = json.dumps(roster).encode()
                return web.Response(body=body[: len(body) // 2], content_type="application/json")
            case _:
                return web.json_response(roster)


async def _cut_off(request: web.Request, body: bytes) -> web.StreamResponse:
    """Announce the whole body, send its first half, then cut the connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.abort()
    return response
