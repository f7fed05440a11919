"""Bad answers from the web app, end to end: the roster the real server stores is exactly as
it was after each one, and a roster's invalid entries never reach the server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from component.roster import Contact
from tests.integration.conftest import jid

if TYPE_CHECKING:
    from tests.campaign.figures import Figures
    from tests.harness.webapp import Handler
    from tests.integration.conftest import System

pytestmark = [pytest.mark.campaign, pytest.mark.integration]


def answering(status: int, body: bytes) -> Handler:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body)

    return answer


async def truncated(request: web.Request) -> web.StreamResponse:
    """Half a roster, then the connection closes: Content-Length promised more."""
    body = json.dumps({jid("dave"): {"name": "Dave"}}).encode()
    response = web.StreamResponse()
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    assert request.transport is not None
    request.transport.close()
    return response


# Those that look like no answer at all (and open the circuit) come last.
BAD_ANSWERS: dict[str, Handler] = {
    "not JSON": answering(200, b"<html>Welcome</html>"),
    "invalid UTF-8": answering(200, b'{"\xff@example.test": {}}'),
    "not an object": answering(200, json.dumps([jid("dave")]).encode()),
    "deeply nested": answering(200, b"[" * 100_000),
    "too large": answering(200, b"[" + b" " * 5_000_000 + b"]"),
    "HTTP 404": answering(404, json.dumps({jid("dave"): {}}).encode()),
    "HTTP 500": answering(500, b"boom"),
    "HTTP 302": answering(302, json.dumps({jid("dave"): {}}).encode()),
    "cut short": truncated,
    "HTTP 503": answering(503, b""),
}


async def stored(system: System) -> dict[str, Contact]:
    assert system.app is not None
    return dict(await system.app.syncer.current_roster("alice"))


async def test_bad_answers_leave_the_stored_roster_as_it_was(
    system: System, figures: Figures
) -> None:
    """After a good refresh, each bad answer is a counted error and the server's copy of the
    roster does not change; invalid JIDs and the user's own are never written."""
    system.set_roster(
        "alice",
        {
            jid("bob"): {"name": "Bob", "groups": ["Team"]},
            "not a jid": {"name": "Junk"},
            "x@y@z": None,
            jid("alice"): {"name": "Me"},
            f"{jid('carol')}/phone": None,
            jid("carol"): {"name": ["not", "a", "name"], "groups": "Team"},
        },
    )
    assert (await system.refresh(["alice"]))[0] == 200
    good = {
        jid("bob"): Contact(jid("bob"), "Bob", frozenset({"Team"})),
        jid("carol"): Contact(jid("carol")),
    }
    assert await stored(system) == good
    for name, handler in BAD_ANSWERS.items():
        system.webapp.handlers["alice"] = handler
        status, reply = await system.refresh(["alice"])
        assert (status, reply["errors"]) == (502, 1), name
        assert await stored(system) == good, name
        figures.add("bad answers survived")
