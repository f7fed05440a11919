"""Fetching rosters from a real (fake) web app over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import stamina
from aiohttp import web
from structlog.testing import capture_logs

from component.errors import FetchError
from component.roster import Contact
from component.webapp import WebAppClient, roster_url
from tests.harness.webapp import Answer, FakeWebApp
from tests.unit.sampling import sample

OWNER = "john@example.org"
MARIE = "marie@example.com"
USER_AGENT = "http-roster-admin-test/1.0"

MakeClient = Callable[..., WebAppClient]


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    # Backoff off, attempts left as each client sets them (at most 10).
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


@pytest.fixture(name="webapp")
async def fixture_webapp() -> AsyncIterator[FakeWebApp]:
    async with FakeWebApp() as webapp:
        webapp.rosters["john"] = {MARIE: {"name": "Marie", "groups": ["Friends"]}}
        yield webapp


@pytest.fixture(name="make_client")
async def fixture_make_client(webapp: FakeWebApp) -> AsyncIterator[MakeClient]:
    """Make clients of the fake web app with any settings; all are closed afterwards."""
    clients: list[WebAppClient] = []

    def make(**settings: Any) -> WebAppClient:
        settings.setdefault("user_agent", USER_AGENT)
        client = WebAppClient(settings.pop("url_template", webapp.url_template), **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture(name="client")
def fixture_client(make_client: MakeClient) -> WebAppClient:
    return make_client()


async def fetch_error(client: WebAppClient, username: str = "john") -> FetchError:
    with pytest.raises(FetchError) as excinfo:
        await client.fetch(username, OWNER)
    assert excinfo.value.username == username
    return excinfo.value


@pytest.mark.parametrize(
    ("template", "username", "url"),
    [
        ("http://app/contacts/%s", "john", "http://app/contacts/john"),
        ("http://app/contacts/%s", "a/b", "http://app/contacts/a%2Fb"),
        ("http://app/contacts/%s", "x?y#z", "http://app/contacts/x%3Fy%23z"),
        ("http://app/contacts/%s", "..", "http://app/contacts/%2E%2E"),
        ("http://app/contacts/%s", "...", "http://app/contacts/%2E%2E%2E"),
        ("http://app/contacts/%s", "a..b", "http://app/contacts/a..b"),
        ("http://app/contacts/%s", "ü €", "http://app/contacts/%C3%BC%20%E2%82%AC"),
        ("http://app/roster?user=%s&x=1", "a&b=c", "http://app/roster?user=a%26b%3Dc&x=1"),
    ],
)
def test_roster_url(template: str, username: str, url: str) -> None:
    """The username replaces %s, encoded so that it stays one path segment or query value."""
    assert roster_url(template, username) == url


async def test_fetch(client: WebAppClient, webapp: FakeWebApp) -> None:
    """A good answer becomes the user's roster, with one request."""
    parsed = await client.fetch("john", OWNER)

    assert parsed.roster == {MARIE: Contact(MARIE, name="Marie", groups=frozenset({"Friends"}))}
    assert parsed.warnings == ()
    assert [r.raw_path for r in webapp.requests] == ["/contacts/john"]


async def test_an_answer_as_before_is_recognized_without_decoding(
    client: WebAppClient, webapp: FakeWebApp
) -> None:
    """The same bytes as the answer fingerprinted give None; any other answer its roster."""
    first = await client.fetch("john", OWNER)
    assert len(first.source) == 16
    assert await client.fetch_if_changed("john", OWNER, unless=first.source) is None
    webapp.rosters["john"] = {MARIE: {"name": "Marie Curie", "groups": ["Friends"]}}
    changed = await client.fetch_if_changed("john", OWNER, unless=first.source)
    assert changed is not None
    assert changed.roster[MARIE].name == "Marie Curie"
    assert changed.source not in {b"", first.source}
    assert len(webapp.requests) == 3


@pytest.mark.parametrize(
    ("username", "raw_path"),
    [
        ("a/b", "/contacts/a%2Fb"),
        ("..", "/contacts/%2E%2E"),
        (".", "/contacts/%2E"),
        ("x?y#z", "/contacts/x%3Fy%23z"),
        ("ü", "/contacts/%C3%BC"),
        ("%", "/contacts/%25"),
        ("%2E", "/contacts/%252E"),
        ("a b", "/contacts/a%20b"),
    ],
)
async def test_path_arrives_verbatim(
    client: WebAppClient, webapp: FakeWebApp, username: str, raw_path: str
) -> None:
    """The encoded path reaches the web app unchanged, and decodes back to the username."""
    webapp.rosters[username] = {MARIE: None}

    parsed = await client.fetch(username, OWNER)

    assert [(r.raw_path, r.username) for r in webapp.requests] == [(raw_path, username)]
    assert list(parsed.roster) == [MARIE]


async def test_headers(client: WebAppClient, webapp: FakeWebApp) -> None:
    """Requests ask for JSON, name the product, and carry no credential unless configured."""
    await client.fetch("john", OWNER)

    headers = webapp.requests[0].headers
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT
    assert "Authorization" not in headers


async def test_token(make_client: MakeClient, webapp: FakeWebApp) -> None:
    """A configured token is sent as a bearer credential."""
    await make_client(token="s3cret").fetch("john", OWNER)

    assert webapp.requests[0].headers["Authorization"] == "Bearer s3cret"


async def test_client_without_context_manager(webapp: FakeWebApp) -> None:
    """A client works without `async with`, and closing it twice is harmless."""
    client = WebAppClient(webapp.url_template, user_agent=USER_AGENT)

    assert list((await client.fetch("john", OWNER)).roster) == [MARIE]
    await client.close()
    await client.close()


async def test_roster_warnings_are_logged(client: WebAppClient, webapp: FakeWebApp) -> None:
    """Each skipped entry is logged with the user it concerns; the rest still applies."""
    webapp.rosters["john"] = {MARIE: None, "not a jid": None}

    with capture_logs() as logs:
        parsed = await client.fetch("john", OWNER)

    assert list(parsed.roster) == [MARIE]
    warnings = [e for e in logs if e["event"] == "webapp.roster_warning"]
    assert warnings == [
        {
            "event": "webapp.roster_warning",
            "log_level": "warning",
            "username": "john",
            "warning": parsed.warnings[0],
        }
    ]


async def test_not_found(make_client: MakeClient, webapp: FakeWebApp) -> None:
    """A 4xx answer is a failed fetch, logged once and not retried."""
    client = make_client(url_template=webapp.url_template.replace("/contacts/", "/nowhere/"))

    with capture_logs() as logs:
        error = await fetch_error(client)

    assert error.reason == "HTTP 404"
    assert [(e["event"], e.get("attempt")) for e in logs] == [("webapp.fetch_failed", 1)]


@pytest.mark.parametrize("attempts", [1, 3])
async def test_server_error(make_client: MakeClient, webapp: FakeWebApp, attempts: int) -> None:
    """A 5xx answer is retried until the configured attempts are used up."""
    await webapp.set_mode("error")

    with capture_logs() as logs:
        error = await fetch_error(make_client(attempts=attempts))

    assert error.reason == "HTTP 500"
    assert len(webapp.requests) == attempts
    failed = [e for e in logs if e["event"] == "webapp.fetch_failed"]
    assert [e["attempt"] for e in failed] == list(range(1, attempts + 1))


async def test_server_error_then_success(client: WebAppClient, webapp: FakeWebApp) -> None:
    """After 5xx answers, a good answer on a later attempt is the result."""
    webapp.upcoming = ["error", "error"]

    parsed = await client.fetch("john", OWNER)

    assert list(parsed.roster) == [MARIE]
    assert len(webapp.requests) == 3


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("garbage", "not JSON"),
        ("not_object", "expected a JSON object, got an array"),
    ],
)
async def test_bad_body(
    client: WebAppClient, webapp: FakeWebApp, answer: Answer, reason: str
) -> None:
    """A 200 whose body is not a JSON object is a failed fetch, not retried."""
    await webapp.set_mode(answer)

    assert (await fetch_error(client)).reason == reason
    assert len(webapp.requests) == 1


async def test_empty_array_is_an_empty_roster(client: WebAppClient, webapp: FakeWebApp) -> None:
    """A web app that encodes an empty map as [] (PHP) gets an empty roster, not an error."""
    webapp.rosters["john"] = []

    parsed = await client.fetch("john", OWNER)

    assert dict(parsed.roster) == {}
    assert parsed.warnings == ()


async def test_size_limit(make_client: MakeClient, webapp: FakeWebApp) -> None:
    """A body of exactly max_bytes is accepted; one byte more is too large, not retried."""
    webapp.rosters["john"] = {f"user{i}@example.com": {"name": "x" * 50} for i in range(100)}
    size = len(json.dumps(webapp.rosters["john"]).encode())

    parsed = await make_client(max_bytes=size).fetch("john", OWNER)
    error = await fetch_error(make_client(max_bytes=size - 1))

    assert len(parsed.roster) == 100
    assert error.reason == f"too large (over {size - 1} bytes)"
    assert len(webapp.requests) == 2


async def test_timeout(make_client: MakeClient, webapp: FakeWebApp) -> None:
    """An answer that never comes times out each attempt and the fetch fails."""
    await webapp.set_mode("hang")
    started = time.monotonic()

    error = await fetch_error(make_client(timeout=0.1, attempts=2))

    assert error.reason == "timed out after 0.1s"
    assert len(webapp.requests) == 2
    assert time.monotonic() - started < 1


async def test_connection_refused(client: WebAppClient, webapp: FakeWebApp) -> None:
    """A web app that is down is a failed fetch; once it is back, fetching works again."""
    await webapp.set_mode("down")

    assert (await fetch_error(client)).reason == "connection refused"

    await webapp.set_mode("ok")
    assert list((await client.fetch("john", OWNER)).roster) == [MARIE]


async def test_empty_username(client: WebAppClient, webapp: FakeWebApp) -> None:
    """An empty username is refused without a request: it would name another resource."""
    assert (await fetch_error(client, "")).reason == "empty username"
    assert webapp.requests == []


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("error", "5xx"),
        ("garbage", "bad_body"),
        ("not_object", "bad_body"),
        ("hang", "timeout"),
        ("down", "refused"),
        ("not_found", "4xx"),
        ("too_large", "too_large"),
    ],
)
async def test_failed_attempts_are_counted_by_kind(
    make_client: MakeClient, webapp: FakeWebApp, answer: str, kind: str
) -> None:
    """webapp_fetch_errors_total{kind} grows by one per failed attempt."""
    # Only the hanging web app should time out: a loaded machine can take longer than the
    # short timeout to answer the others, which would count them as timeouts.
    timeout = 0.2 if answer == "hang" else 10.0
    settings: dict[str, Any] = {"attempts": 1, "timeout": timeout, "max_bytes": 1024}
    if answer == "not_found":
        settings["url_template"] = webapp.url_template.replace("/contacts/", "/nowhere/")
    elif answer == "too_large":
        webapp.rosters["john"] = {f"user{i}@example.com": {} for i in range(100)}
    else:
        await webapp.set_mode(answer)  # type: ignore[arg-type]
    before = sample("webapp_fetch_errors_total", kind=kind)

    await fetch_error(make_client(**settings))

    assert sample("webapp_fetch_errors_total", kind=kind) == before + 1


async def test_a_web_app_that_is_down_is_not_asked(
    make_client: MakeClient, webapp: FakeWebApp
) -> None:
    """After failures in a row without an answer, fetches fail at once without a request,
    saying the web app is down, and are not retried; the circuit's opening is logged."""
    client = make_client(attempts=3, circuit_failures=3, circuit_cooldown=60)
    await webapp.set_mode("down")
    with capture_logs() as logs:
        first = await fetch_error(client)
        await webapp.set_mode("error")
        error = await fetch_error(client, "aaron")
    down = "web app down (3 failures in a row, last: connection refused); not asked"
    assert first.reason.startswith(down)
    assert error.reason.startswith(down)
    assert webapp.requests == []
    [opened] = [e for e in logs if e["event"] == "webapp.circuit_open"]
    assert (opened["failures"], opened["last_error"]) == (3, "connection refused")


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_gateway_saying_down_counts_as_no_answer(
    make_client: MakeClient, webapp: FakeWebApp, status: int
) -> None:
    """A proxy's 502, 503 or 504 says the web app behind it is down, like a refused connection."""

    async def gateway(_request: object) -> web.Response:
        return web.Response(status=status)

    webapp.handlers["john"] = gateway
    client = make_client(attempts=2, circuit_failures=2)
    await fetch_error(client)
    assert (await fetch_error(client)).reason.startswith("web app down")
    assert len(webapp.requests) == 2


async def test_any_answer_from_the_web_app_keeps_the_circuit_closed(
    make_client: MakeClient, webapp: FakeWebApp
) -> None:
    """A 500, a 404 or garbage come from the web app itself: it is up, whatever it says."""
    client = make_client(attempts=2, circuit_failures=2)
    for mode in ("error", "garbage", "error"):
        await webapp.set_mode(mode)
        assert not (await fetch_error(client)).reason.startswith("web app down")
    assert len(webapp.requests) == 5


async def test_the_circuit_closes_by_itself_when_the_web_app_is_back(
    make_client: MakeClient, webapp: FakeWebApp
) -> None:
    """After the cooldown one probe goes, the fetches that come meanwhile wait for its
    outcome, and when it is answered they all go on."""
    client = make_client(attempts=1, circuit_failures=1, circuit_cooldown=0.2)
    await webapp.set_mode("down")
    await fetch_error(client)
    await webapp.set_mode("ok")
    assert (await fetch_error(client)).reason.startswith("web app down")
    await asyncio.sleep(0.2)
    with capture_logs() as logs:
        parsed = await asyncio.gather(*(client.fetch("john", OWNER) for _ in range(5)))
    assert all(list(p.roster) == [MARIE] for p in parsed)
    assert [e["event"] for e in logs if e["event"].startswith("webapp.circuit")] == [
        "webapp.circuit_probe",
        "webapp.circuit_closed",
    ]
    assert len(webapp.requests) == 5


async def test_a_failed_probe_fails_the_fetches_waiting_on_it(
    make_client: MakeClient, webapp: FakeWebApp
) -> None:
    """Still down after the cooldown: the probe fails, and so do at once those behind it."""
    client = make_client(attempts=1, circuit_failures=1, circuit_cooldown=0.2)
    await webapp.set_mode("down")
    await fetch_error(client)
    await asyncio.sleep(0.2)
    with capture_logs() as logs:
        errors = await asyncio.gather(
            *(client.fetch("john", OWNER) for _ in range(5)), return_exceptions=True
        )
    reasons = [e.reason for e in errors if isinstance(e, FetchError)]
    assert len(reasons) == 5
    assert all(r.startswith("web app down (1 failures in a row, last: connection") for r in reasons)
    assert "webapp.circuit_probe_failed" in [e["event"] for e in logs]


async def test_fetches_wait_for_a_slow_probe_only_briefly(
    make_client: MakeClient, webapp: FakeWebApp
) -> None:
    """A probe that hangs keeps the fetches behind it for a moment, not for its timeout."""
    client = make_client(attempts=1, timeout=5, circuit_failures=1, circuit_cooldown=0.1)
    await webapp.set_mode("down")
    await fetch_error(client)
    await webapp.set_mode("hang")
    await asyncio.sleep(0.1)
    probe = asyncio.create_task(client.fetch("john", OWNER))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert (await fetch_error(client, "aaron")).reason.startswith("web app down")
    assert time.monotonic() - started < 4  # the probe's timeout is 5 s
    probe.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probe
