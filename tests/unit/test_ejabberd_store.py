"""The ejabberd admin-API store against a stand-in API speaking either version's shapes.

What real ejabberd 23.01 and 24.12 do is covered end to end in tests/integration; here each
answer the store must understand is produced on purpose.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from component.errors import ItemRefusedError, StoreError, StoreUnavailableError, UnknownUserError
from component.roster import Contact
from component.store.ejabberd import AdminApiRosterStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ALICE = "alice@example.test"
BOB = "bob@example.test"


class FakeApi:
    """mod_http_api as 23.01 ("old") or 24.12 ("new") answers it, rosters in memory."""

    def __init__(self, shape: str) -> None:
        self.shape = shape
        self.accounts = {"alice"}
        self.rosters: dict[str, dict[str, dict[str, Any]]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.status: int | None = None  # force every answer to this status
        # Requests from strangers: items get_roster leaves out (user -> contacts).
        self.hidden: dict[str, set[str]] = {}
        self.scans = 0  # process_rosteritems calls
        self.refused_commands: set[str] = set()  # answered 403
        self.delay = 0.0  # seconds each write takes
        self.hang: dict[str, float] = {}  # command -> seconds before it answers
        self.writing: dict[str, int] = {}  # user -> writes in progress
        self.overlaps: set[str] = set()  # users with two writes at once
        self.peak_writes = 0
        self.url = ""
        self._port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{command}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        # The same port again after a stop: the store under test keeps its URL.
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self._port}/api"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        command = request.match_info["command"]
        args = await request.json()
        self.calls.append((command, args))
        if self.status is not None:
            return web.Response(status=self.status, text='"forced"')
        if command in self.refused_commands:
            return web.Response(status=403, text='{"code": 32}')
        await asyncio.sleep(self.hang.get(command, 0.0))
        if command in {"add_rosteritem", "delete_rosteritem"}:
            await self._timed(args)
        answer = getattr(self, f"_{command}")(args)
        if isinstance(answer, web.Response):
            return answer
        return web.json_response(answer)

    def _check_account(self, args: dict[str, Any]) -> int:
        return 0 if args["user"] in self.accounts else 1

    def _get_roster(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for jid, item in sorted(self.rosters.get(args["user"], {}).items()):
            base = {"jid": jid, "nick": item["nick"], "subscription": item["subs"]}
            if self.shape == "new":
                rows.append({**base, "pending": item["pending"], "groups": item["groups"]})
            else:
                rows += [
                    {**base, "ask": item["pending"], "group": group}
                    for group in item["groups"] or [""]
                ]
        return rows

    async def _timed(self, args: dict[str, Any]) -> None:
        user = args["localuser"]
        self.writing[user] = self.writing.get(user, 0) + 1
        if self.writing[user] > 1:
            self.overlaps.add(user)
        self.peak_writes = max(self.peak_writes, sum(self.writing.values()))
        await asyncio.sleep(self.delay)
        self.writing[user] -= 1

    def _add_rosteritem(self, args: dict[str, Any]) -> int | web.Response:
        if self.shape == "old":
            if "group" not in args:
                return web.Response(status=400, text='"Request have missing argument: group"')
            groups = [g for g in args["group"].split(";") if g]
        else:
            groups = args["groups"]
        if args["host"] == "bad..host":
            return 1
        jid = f"{args['user']}@{args['host']}"
        self.rosters.setdefault(args["localuser"], {})[jid] = {
            "nick": args["nick"], "subs": args["subs"], "groups": groups, "pending": "none"
        }  # fmt: skip
        return 0

    def _process_rosteritems(self, args: dict[str, Any]) -> list[dict[str, str]]:
        assert (args["subs"], args["asks"]) == ("none", "in")
        assert (args["action"], args["contacts"]) == ("list", "any")
        self.scans += 1
        everyone, _, host = args["users"].partition("@")
        assert everyone == "*"  # every user of the host: one scan serves all reads
        return [
            {"user": f"{user}@{host}", "contact": contact}
            for user, hidden in sorted(self.hidden.items())
            for contact in sorted(hidden)
        ]

    def _delete_rosteritem(self, args: dict[str, Any]) -> int:
        jid = f"{args['user']}@{args['host']}"
        self.rosters.get(args["localuser"], {}).pop(jid, None)
        self.hidden.get(args["localuser"], set()).discard(jid)
        return 0


@pytest.fixture(name="api", params=["old", "new"], ids=["23.01-shape", "24.12-shape"])
async def fixture_api(request: pytest.FixtureRequest) -> AsyncIterator[FakeApi]:
    api = FakeApi(request.param)
    await api.start()
    yield api
    await api.stop()


@pytest.fixture(name="changes")
def fixture_changes() -> list[None]:
    return []


@pytest.fixture(name="store")
async def fixture_store(api: FakeApi, changes: list[None]) -> AsyncIterator[AdminApiRosterStore]:
    store = AdminApiRosterStore(
        api.url, "example.test", concurrency=4, timeout=2, on_change=lambda: changes.append(None)
    )
    yield store
    await store.close()


async def test_what_is_written_reads_back_the_same(
    store: AdminApiRosterStore, api: FakeApi
) -> None:
    """Name, groups and subscription survive a round trip in either version's shapes."""
    bob = Contact(BOB, "Bob", frozenset({"Team", "Friends"}))
    await store.write(ALICE, bob)
    await store.write(ALICE, Contact("carol@example.test"))
    stored = await store.read(ALICE)
    assert dict(stored.contacts) == {BOB: bob, "carol@example.test": Contact("carol@example.test")}
    assert stored.pending_in == frozenset()
    await store.remove(ALICE, BOB)
    await store.remove(ALICE, BOB)  # already gone: fine
    assert list((await store.read(ALICE)).contacts) == ["carol@example.test"]
    shapes = {"group" in args for command, args in api.calls if command == "add_rosteritem"}
    assert shapes == ({True, False} if api.shape == "old" else {False})


async def test_pending_requests_are_read_and_cleared(
    store: AdminApiRosterStore, api: FakeApi
) -> None:
    """Pending states map to ask (out) and pending_in (in); clearing rewrites the item."""
    api.rosters["alice"] = {
        BOB: {"nick": "Bob", "subs": "both", "groups": ["G"], "pending": "in"},
        "eve@x.test": {"nick": "", "subs": "none", "groups": [], "pending": "out"},
    }
    stored = await store.read(ALICE)
    assert stored.pending_in == {BOB}
    assert stored.contacts["eve@x.test"].ask
    await store.clear_pending(ALICE, [BOB])
    assert api.rosters["alice"][BOB] == {
        "nick": "Bob", "subs": "both", "groups": ["G"], "pending": "none"
    }  # fmt: skip


async def test_an_empty_roster_of_no_account_is_an_unknown_user(
    store: AdminApiRosterStore,
) -> None:
    """ejabberd answers [] for anyone; writing would create a roster for a non-user."""
    with pytest.raises(UnknownUserError):
        await store.read("nobody@example.test")
    assert (await store.read(ALICE)).contacts == {}


async def test_a_refused_item_is_an_item_refusal(store: AdminApiRosterStore) -> None:
    """An item the server will not take fails alone; the sync goes on with the others."""
    with pytest.raises(ItemRefusedError):
        await store.write(ALICE, Contact("x@bad..host"))


async def test_a_group_with_a_semicolon_is_refused_by_the_old_shape(
    store: AdminApiRosterStore, api: FakeApi
) -> None:
    """23.01 splits groups at ';': such a contact is refused rather than stored wrongly."""
    contact = Contact(BOB, "Bob", frozenset({"a;b"}))
    if api.shape == "old":
        with pytest.raises(ItemRefusedError, match="';'"):
            await store.write(ALICE, contact)
    else:
        await store.write(ALICE, contact)
        assert (await store.read(ALICE)).contacts[BOB] == contact


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_an_api_that_refuses_us_makes_the_store_unready(
    store: AdminApiRosterStore, api: FakeApi, status: int
) -> None:
    """Wrong permissions, credentials or URL: unavailable, with the reason, until it answers."""
    api.status = status
    with pytest.raises(StoreUnavailableError):
        await store.read(ALICE)
    assert f"HTTP {status}" in (store.problem() or "") or "api_url" in (store.problem() or "")
    api.status = None
    await store.read(ALICE)
    assert store.problem() is None


async def test_one_late_answer_is_not_an_api_gone(api: FakeApi) -> None:
    """A call that times out fails alone; the probe it starts finds the API answering, so
    the store never stops being ready (no 503, no warning). An API that answers nothing at
    all is said to be gone."""
    changes: list[str | None] = []
    store = AdminApiRosterStore(
        api.url,
        "example.test",
        concurrency=4,
        timeout=0.5,  # long enough for the answers that come on a loaded machine
        on_change=lambda: changes.append(store.problem()),
    )
    try:
        await store.write(ALICE, Contact(BOB))  # the API answers: ready
        api.hang["add_rosteritem"] = 1.5
        with pytest.raises(StoreUnavailableError, match="no answer"):
            await store.write(ALICE, Contact("carol@example.test"))
        assert store._probe is not None
        await asyncio.wait_for(store._probe, 5)  # it answered at once: no more probing
        assert changes == [None]  # ready after the first answer, and never since
        api.hang["check_account"] = 1.5
        changed = asyncio.Event()
        store._on_change = changed.set
        with pytest.raises(StoreUnavailableError):
            await store.write(ALICE, Contact("dave@example.test"))
        await asyncio.wait_for(changed.wait(), 5)
        assert "no answer" in (store.problem() or "")
    finally:
        await store.close()


async def test_an_unreachable_api_is_probed_until_it_answers(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Down at start: not ready and saying why; the probe notices when it is back."""
    monkeypatch.setattr("component.store.ejabberd._PROBE_INTERVAL", 0.05)
    await api.stop()
    changed = asyncio.Event()
    store = AdminApiRosterStore(
        api.url, "example.test", concurrency=1, timeout=1, on_change=changed.set
    )
    await store.open()
    try:
        await asyncio.wait_for(changed.wait(), 5)
        assert "unreachable" in (store.problem() or "")
        with pytest.raises(StoreUnavailableError):
            await store.write(ALICE, Contact(BOB))
        changed.clear()
        await api.start()
        await asyncio.wait_for(changed.wait(), 5)
        assert store.problem() is None
    finally:
        await store.close()


async def test_server_errors_fail_the_sync(store: AdminApiRosterStore, api: FakeApi) -> None:
    """A 500 is the server's failure, not the item's: StoreError, not a refusal."""
    api.status = 500
    with pytest.raises(StoreError) as raised:
        await store.write(ALICE, Contact(BOB))
    assert not isinstance(raised.value, ItemRefusedError)
    assert json.dumps("forced") in str(raised.value)


async def test_requests_from_strangers_are_seen_and_dropped(
    store: AdminApiRosterStore, api: FakeApi
) -> None:
    """Pending requests that get_roster hides are found (process_rosteritems) and dropped."""
    api.hidden["alice"] = {"eve@x.test", "mallory@y.test"}
    assert (await store.read(ALICE)).pending_in == {"eve@x.test", "mallory@y.test"}
    await store.clear_pending(ALICE, ["eve@x.test"])
    assert api.hidden["alice"] == {"mallory@y.test"}
    # Read again at once (the scan's result reused): the cleared request is gone there too.
    assert (await store.read(ALICE)).pending_in == {"mallory@y.test"}


async def test_one_scan_for_pending_requests_serves_the_reads_made_meanwhile(
    store: AdminApiRosterStore, api: FakeApi
) -> None:
    """process_rosteritems visits every item of the server: the reads of many users at once
    share one scan of the host, and a scan is reused only for ten times what it took."""
    api.accounts |= {f"u{n}" for n in range(10)}
    api.hidden = {"alice": {"eve@x.test"}, "u3": {"mallory@y.test"}}
    reads = await asyncio.gather(*(store.read(f"u{n}@example.test") for n in range(10)))
    pending = {n: set(r.pending_in) for n, r in enumerate(reads) if r.pending_in}
    assert pending == {3: {"mallory@y.test"}}
    assert (await store.read(ALICE)).pending_in == {"eve@x.test"}
    assert api.scans == 1
    loop = asyncio.get_running_loop()
    await asyncio.sleep(store._scan_reusable_until - loop.time() + 0.01)
    api.hidden["alice"].add("trudy@z.test")
    assert (await store.read(ALICE)).pending_in == {"eve@x.test", "trudy@z.test"}
    assert api.scans == 2


async def test_without_process_rosteritems_the_rest_still_works(
    store: AdminApiRosterStore, api: FakeApi
) -> None:
    """An API that does not allow it: said once, rosters still sync, the store stays ready."""
    api.refused_commands.add("process_rosteritems")
    await store.write(ALICE, Contact(BOB))
    with capture_logs() as logs:
        assert list((await store.read(ALICE)).contacts) == [BOB]
        await store.read(ALICE)
    assert [e["event"] for e in logs] == ["store.pending_requests_unseen"]
    assert store.problem() is None


async def test_one_users_changes_go_one_at_a_time(store: AdminApiRosterStore, api: FakeApi) -> None:
    """ejabberd's roster cache can lose concurrent changes to one roster: never two at once
    for a user, while different users still go in parallel."""
    api.delay = 0.02
    api.accounts |= {"bob"}
    await asyncio.gather(
        *(store.write(user, Contact(f"c{i}@x.test")) for user in (ALICE, BOB) for i in range(4)),
        store.remove(ALICE, "gone@x.test"),
    )
    assert api.overlaps == set()
    assert api.peak_writes == 2
    assert len(api.rosters["alice"]) == len(api.rosters["bob"]) == 4
