"""The benchmark's web app, in a process of its own: N users with M contacts each.

Run by scripts/bench.py (``python scripts/bench_webapp.py``, which prints ``port <n>`` once it
listens on 127.0.0.1). In its own process, it answers at once whatever the benchmark's
clients are doing; its own latency (each request's time in the handler) is recorded so that
the benchmark can report it and take it out of login latencies.

Users are ``u0`` .. ``u<N-1>``. User i's contacts are M other users around it on a ring
(i+1, i-1, i+2, i-2, ...), so friendships are mutual and online users see each other. A user
at generation g has lost its first g of those and gained g contacts that are nobody's
accounts (``new<k>-of-u<i>``): each step is one addition and one removal.

    GET  /contacts/{username}   the roster (404 for unknown users)
    POST /admin/setup           {"users", "contacts", "domain", "delay"}: everyone at 0
    POST /admin/generation      {"users": [names], "generation": g}
    POST /admin/stats           {"reset": bool, "timings": bool}: requests counted since the
                                last reset (and per user each request's [start, seconds])
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web


def ring_contacts(index: int, users: int, contacts: int) -> list[int]:
    """The indexes of user ``index``'s contacts, nearest first (needs users > contacts)."""
    found: list[int] = []
    step = 1
    while len(found) < contacts:
        for other in ((index + step) % users, (index - step) % users):
            if len(found) < contacts and other != index and other not in found:
                found.append(other)
        step += 1
    return found


def roster(
    index: int, users: int, contacts: int, domain: str, generation: int
) -> dict[str, object]:
    """User ``index``'s roster at ``generation``, as the web app serves it.

    Groups are sent as an object used as a set, which mod_http_roster_admin reads too.
    """
    items: dict[str, object] = {}
    for position, other in enumerate(ring_contacts(index, users, contacts)):
        if position >= generation:
            items[f"u{other}@{domain}"] = {"name": f"User {other}", "groups": {"Friends": True}}
    for k in range(generation):
        items[f"new{k}-of-u{index}@{domain}"] = {"name": f"New {k}", "groups": {"New": True}}
    return items


@dataclass
class State:
    users: int = 0
    contacts: int = 0
    domain: str = "example.test"
    delay: float = 0.0
    generations: dict[int, int] = field(default_factory=dict)
    requests: int = 0
    # username -> [(start on the monotonic clock, seconds in the handler), ...]
    timings: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


class WebApp:
    def __init__(self) -> None:
        self.state = State()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/contacts/{username}", self.contacts)
        app.router.add_post("/admin/setup", self.setup)
        app.router.add_post("/admin/generation", self.generation)
        app.router.add_post("/admin/stats", self.stats)
        return app

    async def contacts(self, request: web.Request) -> web.Response:
        began = time.monotonic()
        state = self.state
        username = request.match_info["username"]
        state.requests += 1
        index = int(username[1:]) if username[:1] == "u" and username[1:].isdigit() else -1
        if not 0 <= index < state.users:
            return web.Response(status=404, text="no such user")
        if state.delay:
            await asyncio.sleep(state.delay)
        body = json.dumps(
            roster(
                index,
                state.users,
                state.contacts,
                state.domain,
                state.generations.get(index, 0),
            )
        )
        response = web.Response(text=body, content_type="application/json")
        state.timings.setdefault(username, []).append((began, time.monotonic() - began))
        return response

    async def setup(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.state = State(
            users=int(data["users"]),
            contacts=int(data["contacts"]),
            domain=str(data["domain"]),
            delay=float(data.get("delay", 0.0)),
        )
        return web.json_response({"status": "ok"})

    async def generation(self, request: web.Request) -> web.Response:
        data = await request.json()
        for name in data["users"]:
            self.state.generations[int(name[1:])] = int(data["generation"])
        return web.json_response({"status": "ok"})

    async def stats(self, request: web.Request) -> web.Response:
        data = await request.json()
        state = self.state
        answer: dict[str, object] = {"requests": state.requests}
        if data.get("timings"):
            answer["timings"] = state.timings
        if data.get("reset"):
            state.requests = 0
            state.timings = {}
        return web.json_response(answer)


async def serve() -> None:
    runner = web.AppRunner(WebApp().app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(f"port {runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.Event().wait()  # until the benchmark terminates us
    finally:
        await runner.cleanup()


def main() -> None:
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
