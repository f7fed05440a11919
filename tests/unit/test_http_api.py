"""The refresh listener, served for real on loopback, with the sync core replaced by a recorder."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from typing import TYPE_CHECKING

import aiohttp
import pytest
import stamina
from aiohttp import web
from stamina.instrumentation import set_on_retry_hooks

from component import http_api, metrics
from component.check import CheckResult, ItemChange
from component.config import ListenerConfig
from component.errors import BadRequestError
from component.http_api import HttpApi, parse_usernames, token_matches
from component.roster import Contact
from component.sync import SyncResult
from component.webapp import WebAppClient
from tests.harness.webapp import FakeWebApp
from tests.unit.sampling import sample

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

TOKEN = "let-me-in"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Recorder:
    """Stands in for the sync core, the checker and the online users: records refreshes and
    checks, fails for chosen users."""

    def __init__(self) -> None:
        self.refreshed: list[str] = []
        self.applied: dict[str, object] = {}
        self.checked: list[str] = []
        self.checks: dict[str, CheckResult] = {}
        self.failing: set[str] = set()
        self.online: list[str] = []
        self.ready = True
        self.reasons: list[str] = []

    def online_users(self) -> list[str]:
        return list(self.online)

    async def check(self, username: str) -> CheckResult:
        self.checked.append(username)
        return self.checks.get(username, CheckResult(username, contacts=2))

    async def refresh(self, username: str) -> SyncResult:
        await asyncio.sleep(0)
        self.refreshed.append(username)
        if username in self.failing:
            return SyncResult(username, ok=False, error="fetch failed: HTTP 500")
        return SyncResult(username, ok=True, roster={})

    async def apply(self, username: str, roster: object) -> SyncResult:
        await asyncio.sleep(0)
        self.applied[username] = roster
        if username in self.failing:
            return SyncResult(username, ok=False, error="not a roster")
        return SyncResult(username, ok=True, roster={})


@pytest.fixture(name="recorder")
def fixture_recorder() -> Recorder:
    return Recorder()


@contextlib.asynccontextmanager
async def listening(recorder: Recorder, config: ListenerConfig) -> AsyncIterator[int]:
    """The listener served for real on loopback, the recorder behind it; its port."""
    api = HttpApi(
        config,
        domain="example.test",
        refresher=recorder,
        checker=recorder,
        online=recorder,
        readiness=recorder,
    )
    runner = web.AppRunner(api.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture(name="base_url")
async def fixture_base_url(recorder: Recorder) -> AsyncIterator[str]:
    config = ListenerConfig(
        port=1, token=TOKEN, max_body_bytes=200_000, max_rosters_bytes=400_000, max_users=50
    )
    async with listening(recorder, config) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, base_url: str, body: bytes | str, headers: dict[str, str] = AUTH
) -> tuple[int, dict[str, object]]:
    async with http.post(f"{base_url}/roster_admin/refresh", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_refresh_answers_counts_when_done(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """Each distinct user is refreshed once and the reply counts them."""
    status, body = await post(http, base_url, '["john", "aaron", "john", "John"]')
    assert status == 200
    assert body == {
        "status": "ok",
        "message": "roster update complete",
        "updated": 2,
        "errors": 0,
        "failed": [],
    }
    assert sorted(recorder.refreshed) == ["aaron", "john"]


async def test_refresh_counts_failures_honestly(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """Failed users are counted as errors and named."""
    recorder.failing = {"aaron"}
    status, body = await post(http, base_url, '["john", "aaron"]')
    assert status == 200
    assert (body["updated"], body["errors"], body["failed"]) == (1, 1, ["aaron"])


async def test_refresh_that_fails_completely_says_error(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """When nothing could be updated the status is error (and HTTP 502)."""
    recorder.failing = {"john"}
    status, body = await post(http, base_url, '["john"]')
    assert status == 502
    assert (body["status"], body["updated"], body["errors"]) == ("error", 0, 1)


async def test_empty_list_answers_at_once(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """[] gets zero counts and touches nothing."""
    status, body = await post(http, base_url, "[]")
    assert (status, body["status"], body["updated"], body["errors"]) == (200, "ok", 0, 0)
    assert recorder.refreshed == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{", "not JSON"),
        ('{"john": 1}', "JSON array"),
        ('"john"', "JSON array"),
        ("[1]", "item 0 is not a string"),
        ('["a@b"]', "not a valid username"),
        ('["a/b"]', "not a valid username"),
        ('[""]', "not a valid username"),
        ('["x\\ud800"]', "not a valid username"),  # a lone surrogate, escaped
        (b"\xff\xfe", "not JSON"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
async def test_malformed_bodies_get_400_and_nothing_is_done(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder, body: str, reason: str
) -> None:
    """A body that is not a JSON array of usernames is refused with the reason."""
    status, answer = await post(http, base_url, body)
    assert status == 400
    assert answer["status"] == "error"
    assert reason in str(answer["message"])
    assert recorder.refreshed == []


async def test_oversized_body_gets_413(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """A body over the configured size is refused before it is parsed."""
    status, _ = await post(http, base_url, '["' + "a" * 300_000 + '"]')
    assert status == 413
    assert recorder.refreshed == []


async def test_too_many_users_get_400(http: aiohttp.ClientSession, base_url: str) -> None:
    """More usernames than max_users is refused."""
    status, body = await post(http, base_url, str([f"u{i}" for i in range(51)]).replace("'", '"'))
    assert status == 400
    assert "too many" in str(body["message"])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": TOKEN},
    ],
)
async def test_wrong_token_gets_401(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder, headers: dict[str, str]
) -> None:
    """Without the right bearer token nothing is done."""
    status, _ = await post(http, base_url, '["john"]', headers=headers)
    assert status == 401
    assert recorder.refreshed == []


async def test_non_ascii_token_gets_401(base_url: str, recorder: Recorder) -> None:
    """A header with bytes beyond ASCII is a wrong token, not a server error."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /roster_admin/refresh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer l\xfft-me-in\r\nContent-Length: 2\r\n\r\n[]"
    )
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"401"
    assert recorder.refreshed == []


async def test_not_ready_gets_503(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """While the XMPP link is down the web app is told to retry, and nothing is done."""
    recorder.ready = False
    status, body = await post(http, base_url, '["john"]')
    assert status == 503
    assert body["status"] == "error"
    assert recorder.refreshed == []


async def test_single_user_refresh(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """GET /roster_admin/refresh/<username> refreshes that user (URL-decoded)."""
    async with http.get(f"{base_url}/roster_admin/refresh/j%C3%BCrgen", headers=AUTH) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "message": "roster update complete"}
    assert recorder.refreshed == ["jürgen"]


async def test_single_user_refresh_failure(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """A failed single refresh says why."""
    recorder.failing = {"john"}
    async with http.get(f"{base_url}/roster_admin/refresh/john", headers=AUTH) as resp:
        assert resp.status == 502
        assert await resp.json() == {"status": "error", "message": "fetch failed: HTTP 500"}


async def test_health_needs_no_token_and_tells_readiness(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """/healthz is 200 when ready and 503 with every reason when not."""
    async with http.get(f"{base_url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["reasons"] == []
    recorder.ready = False
    recorder.reasons = ["not connected to the XMPP server", "no roster privilege"]
    async with http.get(f"{base_url}/healthz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["reasons"] == recorder.reasons
    assert "no roster privilege" in body["message"]


async def test_metrics_are_served_in_prometheus_format(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    """/metrics exposes the service's counters."""
    async with http.get(f"{base_url}/metrics", headers=AUTH) as resp:
        assert resp.status == 200
        assert "xmpp_ready" in await resp.text()


def test_usernames_are_nodeprepped() -> None:
    """Usernames are normalized the way the server does, then deduplicated."""
    assert parse_usernames(b'["Alice", "alice", "BOB"]', "example.test", 10) == ["alice", "bob"]


def test_username_with_space_is_refused() -> None:
    """A username the server could never have is a bad request."""
    with pytest.raises(BadRequestError):
        parse_usernames(b'["a b"]', "example.test", 10)


async def post_rosters(
    http: aiohttp.ClientSession, base_url: str, body: bytes | str, headers: dict[str, str] = AUTH
) -> tuple[int, dict[str, object]]:
    async with http.post(f"{base_url}/roster_admin/rosters", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_bulk_rosters_are_applied_with_the_same_counts(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """POST /roster_admin/rosters hands each user's roster to the sync core; same answer."""
    recorder.failing = {"aaron"}
    body = '{"John": {"marie@example.com": {"name": "Marie"}}, "aaron": [], "zoe": [1]}'
    status, answer = await post_rosters(http, base_url, body)
    assert (status, answer["updated"], answer["errors"], answer["failed"]) == (
        200,
        2,
        1,
        ["aaron"],
    )
    assert recorder.applied == {
        "john": {"marie@example.com": {"name": "Marie"}},
        "aaron": [],
        "zoe": [1],
    }
    assert recorder.refreshed == []


@pytest.mark.parametrize(
    "body",
    ['["john"]', '{"a@b": {}}', '{"john": {}, "John": {}}', "{", '"x"', "[" * 100_000],
)
async def test_bulk_bodies_that_are_not_rosters_by_user_get_400(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder, body: str
) -> None:
    """Not an object, a bad or repeated username, not JSON: 400 and nothing is done."""
    status, answer = await post_rosters(http, base_url, body)
    assert (status, answer["status"]) == (400, "error")
    assert recorder.applied == {}


async def test_bulk_has_its_own_size_limit_and_the_same_token(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """Larger than max_rosters_bytes: 413; the refresh endpoint keeps its own smaller limit;
    without the token: 401."""
    big = '{"john": {"' + "x" * 300_000 + '@example.com": {}}}'
    assert (await post_rosters(http, base_url, big))[0] == 200
    assert (await post(http, base_url, '["' + "x" * 300_000 + '"]'))[0] == 413
    huge = '{"john": {"' + "x" * 500_000 + '@example.com": {}}}'
    assert (await post_rosters(http, base_url, huge))[0] == 413
    assert (await post_rosters(http, base_url, "{}", headers={}))[0] == 401


async def get(
    http: aiohttp.ClientSession, base_url: str, path: str, headers: dict[str, str] = AUTH
) -> tuple[int, dict[str, object]]:
    async with http.get(f"{base_url}{path}", headers=headers) as resp:
        return resp.status, await resp.json()


async def test_check_tells_each_difference_with_both_sides(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """GET /roster_admin/check/<username>: the differences, each item as stored and wanted."""
    was = Contact("bob@example.com", "Bob", frozenset({"B", "A"}), "to", ask=True)
    recorder.checks["jürgen"] = CheckResult(
        "jürgen",
        changes=(
            ItemChange("bob@example.com", "update", was, Contact("bob@example.com", "Bob"),
                       ("groups", "subscription", "ask")),
            ItemChange("eve@example.com", "pending_request"),
        ),
        contacts=1,
        warnings=("contact 'x': not a valid JID, skipped",),
    )  # fmt: skip
    status, body = await get(http, base_url, "/roster_admin/check/J%C3%BCrgen")
    assert status == 200
    assert body == {
        "status": "ok",
        "message": "2 differences",
        "username": "jürgen",
        "in_sync": False,
        "contacts": 1,
        "changes": [
            {
                "jid": "bob@example.com",
                "change": "update",
                "fields": ["groups", "subscription", "ask"],
                "was": {"name": "Bob", "groups": ["A", "B"], "subscription": "to", "ask": True},
                "now": {"name": "Bob", "groups": [], "subscription": "both", "ask": False},
            },
            {
                "jid": "eve@example.com",
                "change": "pending_request",
                "fields": [],
                "was": None,
                "now": None,
            },
        ],
        "warnings": ["contact 'x': not a valid JID, skipped"],
    }
    assert recorder.refreshed == []


async def test_check_of_a_roster_in_sync(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """A roster in sync is 200 with no changes."""
    status, body = await get(http, base_url, "/roster_admin/check/john")
    assert (status, body["message"], body["in_sync"], body["changes"]) == (200, "in sync", True, [])
    assert recorder.checked == ["john"]


async def test_check_that_could_not_compare_says_why(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """A failed fetch or store read is 502 with the reason."""
    recorder.checks["john"] = CheckResult("john", error="fetch failed: HTTP 500")
    status, body = await get(http, base_url, "/roster_admin/check/john")
    assert (status, body) == (
        502,
        {"status": "error", "message": "fetch failed: HTTP 500", "username": "john"},
    )


async def test_check_follows_the_refresh_rules(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """A bad username is 400, no token 401, not ready 503; none of them checks anything."""
    assert (await get(http, base_url, "/roster_admin/check/a%20b"))[0] == 400
    assert (await get(http, base_url, "/roster_admin/check/john", headers={}))[0] == 401
    recorder.ready = False
    assert (await get(http, base_url, "/roster_admin/check/john"))[0] == 503
    assert recorder.checked == []


async def test_online_lists_the_online_users_sorted(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """GET /roster_admin/online: who is online now, for a refresh of them all."""
    recorder.online = ["zoe", "john"]
    assert await get(http, base_url, "/roster_admin/online") == (
        200,
        {"status": "ok", "message": "2 users online", "users": ["john", "zoe"]},
    )
    assert (await get(http, base_url, "/roster_admin/online", headers={}))[0] == 401
    recorder.ready = False
    assert (await get(http, base_url, "/roster_admin/online"))[0] == 503


async def test_refresh_requests_are_counted_by_status(
    http: aiohttp.ClientSession, base_url: str, recorder: Recorder
) -> None:
    """refresh_requests_total{status}: every answer of the refresh endpoints, 401 included."""
    before = {code: sample("refresh_requests_total", status=code) for code in ("200", "401", "503")}
    await post(http, base_url, '["john"]')
    await post(http, base_url, '["john"]', headers={})
    recorder.ready = False
    await post(http, base_url, '["john"]')
    async with http.get(f"{base_url}/healthz"):
        pass
    after = {code: sample("refresh_requests_total", status=code) for code in before}
    assert {code: after[code] - before[code] for code in before} == {"200": 1, "401": 1, "503": 1}


@pytest.fixture(name="retries_counted")
def fixture_retries_counted() -> Iterator[None]:
    """stamina's hooks as the service installs them, without backoff; defaults restored."""
    metrics.instrument_retries()
    with stamina.set_testing(True, attempts=2):
        yield
    set_on_retry_hooks(None)


@pytest.mark.usefixtures("retries_counted")
async def test_stamina_retries_are_served_in_metrics(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    """A fetch retried after a 5xx shows in /metrics as stamina's retry counter."""
    line = (
        'stamina_retries_total{callable="<context block>",'
        'error_type="component.errors.TransientFetchError",retry_num="1"}'
    )

    async def retries() -> float:
        async with http.get(f"{base_url}/metrics", headers=AUTH) as resp:
            text = await resp.text()
        return next((float(s.split()[-1]) for s in text.splitlines() if s.startswith(line)), 0)

    before = await retries()
    async with FakeWebApp() as webapp, WebAppClient(webapp.url_template, user_agent="t") as client:
        webapp.upcoming = ["error"]
        await client.fetch("john", "john@example.test")
    assert await retries() == before + 1


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (f"Bearer {TOKEN}", True),
        ("Bearer let-me-ix", False),  # same length, last character wrong
        ("Bearer xet-me-in", False),  # same length, first character wrong
        ("Bearer let-me-i", False),
        ("Bearer let-me-inn", False),
        (TOKEN, False),
        ("", False),
        ("Bearer l\udcfft-me-in", False),  # a non-ASCII byte, as aiohttp hands it over
    ],
)
def test_token_matches_only_the_exact_header(header: str, matches: bool) -> None:
    """Right token: yes; any other header, of the same length or not: no."""
    assert token_matches(header, TOKEN) is matches


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest decides, for a guess of the token's length and for any other."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert not token_matches("Bearer let-me-ix", TOKEN)
    assert not token_matches("Bearer x", TOKEN)
    assert compared == [
        (b"Bearer let-me-ix", b"Bearer let-me-in"),
        (b"Bearer x", b"Bearer let-me-in"),
    ]


async def test_a_long_refresh_starts_a_bounded_number_of_syncs_and_keeps_only_outcomes() -> None:
    """Jobs start at most `width` at a time, in order; outcomes keep no roster."""
    running, most = 0, 0

    def job(n: int) -> Callable[[], Awaitable[SyncResult]]:
        async def sync() -> SyncResult:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.001 * (n % 4))
            running -= 1
            return SyncResult(f"u{n}", ok=n % 5 != 0, roster={}, version="v")

        return sync

    outcomes = await http_api._run_all([job(n) for n in range(40)], 3)
    assert most == 3
    assert [o.username for o in outcomes] == [f"u{n}" for n in range(40)]
    assert [o.ok for o in outcomes] == [n % 5 != 0 for n in range(40)]
    assert all(o.roster is None for o in outcomes)
