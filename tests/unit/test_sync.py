"""Sync orchestration: fetch, diff, apply; single flight per user; failures change nothing."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from component.errors import FetchError, ItemRefusedError, StoreError, WebAppDownError
from component.roster import Contact, ParsedRoster, Roster, RosterDiff, digest, version
from component.sync import Syncer
from tests.harness.memory_store import MemoryStore

DOMAIN = "example.test"


class ScriptedWebApp:
    """The web app: answers from `rosters`, or fails; can be held to test concurrency."""

    def __init__(self) -> None:
        self.rosters: dict[str, Roster] = {}
        self.failing = False
        self.down = False  # its circuit is open: not even asked
        self.fetches: list[str] = []
        self.parsed = 0  # answers the syncer had to decode (not the one last applied)
        self.gate: asyncio.Event | None = None

    async def fetch(self, username: str, owner: str) -> ParsedRoster:
        assert owner == f"{username}@{DOMAIN}"
        self.fetches.append(username)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise WebAppDownError(username, "web app down (connection refused)")
        if self.failing:
            raise FetchError(username, "HTTP 500")
        roster = dict(self.rosters.get(username, {}))
        # The answer's fingerprint: the same roster is sent the same way each time.
        return ParsedRoster(roster, (), source=digest(roster))

    async def fetch_if_changed(
        self, username: str, owner: str, *, unless: bytes | None
    ) -> ParsedRoster | None:
        parsed = await self.fetch(username, owner)
        self.parsed += parsed.source != unless
        return None if parsed.source == unless else parsed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="store")
def fixture_store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture(name="webapp")
def fixture_webapp() -> ScriptedWebApp:
    webapp = ScriptedWebApp()
    webapp.rosters["alice"] = {
        "bob@example.test": Contact("bob@example.test", "Bob", frozenset({"Team"})),
        "carol@example.test": Contact("carol@example.test", "Carol"),
    }
    return webapp


@pytest.fixture(name="clock")
def fixture_clock() -> Clock:
    return Clock()


@pytest.fixture(name="changes")
def fixture_changes() -> list[tuple[str, RosterDiff]]:
    return []


@pytest.fixture(name="syncer")
def fixture_syncer(
    webapp: ScriptedWebApp,
    store: MemoryStore,
    clock: Clock,
    changes: list[tuple[str, RosterDiff]],
) -> Syncer:
    return Syncer(
        webapp,
        store,
        DOMAIN,
        concurrency=4,
        max_age=60,
        on_change=lambda user, diff, _version: changes.append((user, diff)),
        clock=clock,
    )


async def test_refresh_makes_the_server_equal_the_web_app(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """After a refresh the stored roster is exactly the web app's."""
    store.rosters["alice@example.test"] = {
        "old@example.test": Contact("old@example.test"),
        "carol@example.test": Contact("carol@example.test", "Carol", subscription="to"),
    }
    result = await syncer.refresh("alice")
    assert result.ok
    assert store.rosters["alice@example.test"] == webapp.rosters["alice"]
    assert result.roster == webapp.rosters["alice"]


async def test_changes_are_reported_for_pushes(
    syncer: Syncer, changes: list[tuple[str, RosterDiff]]
) -> None:
    """The change listener hears what was written, and nothing when nothing changed."""
    await syncer.refresh("alice")
    [(user, diff)] = changes
    assert user == "alice@example.test"
    assert [c.jid for c in diff.upserts] == ["bob@example.test", "carol@example.test"]
    await syncer.refresh("alice")
    assert len(changes) == 1


async def test_failed_fetch_changes_nothing(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """A web app failure leaves the stored roster exactly as it was."""
    before = {"keep@example.test": Contact("keep@example.test", "Keep")}
    store.rosters["alice@example.test"] = dict(before)
    webapp.failing = True
    result = await syncer.refresh("alice")
    assert not result.ok
    assert result.error == "fetch failed: HTTP 500"
    assert store.rosters["alice@example.test"] == before
    assert store.writes == 0


async def test_a_web_app_taken_for_down_is_not_logged_once_per_user(
    syncer: Syncer, webapp: ScriptedWebApp
) -> None:
    """Its circuit says it once; each user's failure is still counted, at debug level."""
    webapp.down = True
    with capture_logs() as logs:
        results = [await syncer.refresh(user) for user in ("alice", "bob")]
    assert [r.ok for r in results] == [False, False]
    assert {(e["event"], e["log_level"]) for e in logs} == {("sync.fetch_failed", "debug")}
    webapp.down, webapp.failing = False, True
    with capture_logs() as logs:
        await syncer.refresh("alice")
    assert [(e["event"], e["log_level"]) for e in logs] == [("sync.fetch_failed", "warning")]


async def test_store_failure_is_reported(syncer: Syncer, store: MemoryStore) -> None:
    """A server that refuses writes makes the sync fail with a reason."""
    store.fail_writes_after = 1
    result = await syncer.refresh("alice")
    assert not result.ok
    assert result.error is not None
    assert "server said no" in result.error


async def test_fresh_roster_is_not_fetched_again(
    syncer: Syncer, webapp: ScriptedWebApp, clock: Clock
) -> None:
    """Within max_age a login does not fetch again; after it, it does."""
    await syncer.ensure_fresh("alice")
    clock.now += 30
    assert (await syncer.ensure_fresh("alice")).ok
    assert webapp.fetches == ["alice"]
    clock.now += 31
    await syncer.ensure_fresh("alice")
    assert webapp.fetches == ["alice", "alice"]


async def test_refresh_always_fetches(syncer: Syncer, webapp: ScriptedWebApp) -> None:
    """A refresh ignores freshness: the web app said the roster changed."""
    await syncer.ensure_fresh("alice")
    await syncer.refresh("alice")
    assert webapp.fetches == ["alice", "alice"]


async def test_failed_sync_is_not_fresh(syncer: Syncer, webapp: ScriptedWebApp) -> None:
    """After a failure the next login tries again."""
    webapp.failing = True
    await syncer.ensure_fresh("alice")
    webapp.failing = False
    assert (await syncer.ensure_fresh("alice")).ok
    assert webapp.fetches == ["alice", "alice"]


async def test_concurrent_needs_share_one_fetch(syncer: Syncer, webapp: ScriptedWebApp) -> None:
    """Logins arriving while a sync runs share it."""
    webapp.gate = asyncio.Event()
    first = asyncio.create_task(syncer.ensure_fresh("alice"))
    await asyncio.sleep(0.01)
    others = [asyncio.create_task(syncer.ensure_fresh("alice")) for _ in range(5)]
    await asyncio.sleep(0.01)
    webapp.gate.set()
    results = await asyncio.gather(first, *others)
    assert all(r.ok for r in results)
    assert webapp.fetches == ["alice"]


async def test_refresh_during_a_sync_fetches_again_once(
    syncer: Syncer, webapp: ScriptedWebApp, store: MemoryStore
) -> None:
    """Refreshes that arrive mid-sync get one later fetch, which sees the newest roster."""
    webapp.gate = asyncio.Event()
    first = asyncio.create_task(syncer.refresh("alice"))
    await asyncio.sleep(0.01)
    webapp.rosters["alice"] = {}
    late = [asyncio.create_task(syncer.refresh("alice")) for _ in range(3)]
    await asyncio.sleep(0.01)
    webapp.gate.set()
    results = await asyncio.gather(first, *late)
    assert webapp.fetches == ["alice", "alice"]
    assert all(r.ok for r in results)
    assert store.rosters.get(ALICE, {}) == {}


async def test_users_sync_in_parallel_up_to_the_bound(
    webapp: ScriptedWebApp, store: MemoryStore
) -> None:
    """No more than `concurrency` fetches run at once."""
    running = 0
    peak = 0
    release = asyncio.Event()

    class Counting(ScriptedWebApp):
        async def fetch(self, username: str, owner: str) -> ParsedRoster:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1
            return await super().fetch(username, owner)

    syncer = Syncer(Counting(), store, DOMAIN, concurrency=3, max_age=0)
    tasks = [asyncio.create_task(syncer.refresh(f"u{i}")) for i in range(10)]
    await asyncio.sleep(0.05)
    assert peak == 3
    release.set()
    assert all(r.ok for r in await asyncio.gather(*tasks))


async def test_a_sync_writing_leaves_its_slot_to_the_next_fetch(
    webapp: ScriptedWebApp, store: MemoryStore
) -> None:
    """The bound is on fetches: while one user's writes are in flight, the next user's fetch
    runs (a refresh of many users keeps the web app and the server busy at once)."""
    webapp.rosters = {"a": {BOB: Contact(BOB)}, "b": {CAROL: Contact(CAROL)}}
    store.write_delay = 0.2
    syncer = Syncer(webapp, store, DOMAIN, concurrency=1, max_age=0)
    first = asyncio.create_task(syncer.refresh("a"))
    await asyncio.sleep(0.05)
    assert store.in_flight == 1
    second = asyncio.create_task(syncer.refresh("b"))
    await asyncio.sleep(0.01)
    assert (webapp.fetches, store.in_flight) == (["a", "b"], 2)
    assert all(r.ok for r in await asyncio.gather(first, second))


async def test_server_requests_stay_within_the_write_window(
    webapp: ScriptedWebApp, store: MemoryStore
) -> None:
    """Reads, writes and announcements of syncs past their fetch (which hold no slot) are
    what the write window bounds."""
    webapp.rosters = {f"u{i}": {BOB: Contact(BOB), CAROL: Contact(CAROL)} for i in range(20)}
    store.write_delay = 0.01
    syncer = Syncer(webapp, store, DOMAIN, concurrency=8, max_age=0, write_window=3)
    results = await asyncio.gather(*(syncer.refresh(f"u{i}") for i in range(20)))
    assert all(r.ok for r in results)
    assert store.reads == 20
    assert store.peak_requests == 3


async def test_a_failed_sync_still_reports_what_it_wrote(
    syncer: Syncer, store: MemoryStore, changes: list[tuple[str, RosterDiff]]
) -> None:
    """Writes that went through before a failure are pushed, so clients match the server."""
    store.rosters["alice@example.test"] = {"old@example.test": Contact("old@example.test")}
    store.fail_writes_after = 2  # the removal and bob go through, carol fails
    assert not (await syncer.refresh("alice")).ok
    [(_, diff)] = changes
    assert diff.removals == ("old@example.test",)
    assert [c.jid for c in diff.upserts] == ["bob@example.test"]


async def test_one_refused_item_does_not_block_the_rest(syncer: Syncer, store: MemoryStore) -> None:
    """An item the server will not store is skipped; the others apply and the sync succeeds."""
    store.refused["bob@example.test"] = ItemRefusedError("not-allowed")
    result = await syncer.refresh("alice")
    assert result.ok
    assert list(store.rosters["alice@example.test"]) == ["carol@example.test"]
    assert result.roster is not None
    assert list(result.roster) == ["carol@example.test"]
    assert result.version == version(result.roster)


async def test_an_answer_as_last_applied_is_not_decoded_again(
    syncer: Syncer, webapp: ScriptedWebApp, store: MemoryStore, clock: Clock
) -> None:
    """A refresh whose answer is the one last applied stops at its fingerprint; a login,
    which needs the roster to answer with, still gets it."""
    await syncer.refresh("alice")
    parsed, writes = webapp.parsed, store.writes
    unchanged = await syncer.refresh("alice")
    assert (unchanged.ok, unchanged.roster, webapp.parsed) == (True, None, parsed)
    clock.now += 61  # past max_age: the login syncs
    login = await syncer.ensure_fresh("alice")
    assert login.roster == webapp.rosters["alice"]
    assert login.version == version(webapp.rosters["alice"])
    webapp.rosters["alice"] = {BOB: Contact(BOB, "Robert")}
    assert (await syncer.refresh("alice")).roster == webapp.rosters["alice"]
    assert webapp.parsed == parsed + 2
    assert store.writes == writes + 2


async def test_a_result_carries_its_rosters_version(
    syncer: Syncer, webapp: ScriptedWebApp, clock: Clock
) -> None:
    """Written or unchanged, the roster comes with its version (answers need not hash it)."""
    written = await syncer.refresh("alice")
    clock.now += 61
    unchanged = await syncer.ensure_fresh("alice")
    webapp.rosters["alice"] = {BOB: Contact(BOB, "Robert")}
    changed = await syncer.refresh("alice")
    for result in (written, unchanged, changed):
        assert result.roster is not None
        assert result.version == version(result.roster)
    assert written.version == unchanged.version != changed.version


async def test_privilege_errors_are_not_skipped(syncer: Syncer, store: MemoryStore) -> None:
    """A refusal that concerns us, not the item, fails the sync."""
    store.refused["bob@example.test"] = StoreError("forbidden")
    assert not (await syncer.refresh("alice")).ok


async def test_memory_holds_only_recent_users(
    syncer: Syncer, webapp: ScriptedWebApp, clock: Clock
) -> None:
    """Sync history older than max_age is forgotten, so memory does not grow with users."""
    for i in range(100):
        webapp.rosters[f"u{i}"] = {}
        await syncer.refresh(f"u{i}")
        clock.now += 1
    assert len(syncer._last) <= 62
    assert all(outcome.result is None for outcome in syncer._last.values())


async def test_background_syncs_leave_room_for_refreshes(store: MemoryStore) -> None:
    """A burst of logins cannot take every slot: a refresh still runs at once."""
    release = asyncio.Event()

    class SlowForLogins(ScriptedWebApp):
        async def fetch(self, username: str, owner: str) -> ParsedRoster:
            if username.startswith("login"):
                await release.wait()
            return await super().fetch(username, owner)

    syncer = Syncer(SlowForLogins(), store, DOMAIN, concurrency=4, max_age=60)
    logins = [
        asyncio.create_task(syncer.ensure_fresh(f"login{i}", background=True)) for i in range(20)
    ]
    await asyncio.sleep(0.01)
    async with asyncio.timeout(1):
        assert (await syncer.refresh("webapp-user")).ok
    release.set()
    assert all(r.ok for r in await asyncio.gather(*logins))


ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
DAVE = "dave@example.test"


async def test_presence_is_announced_for_contacts_added_and_removed(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """New contacts and removed ones are announced; renames and regroups are not."""
    store.rosters[ALICE] = {
        "old@example.test": Contact("old@example.test"),
        "stray@example.test": Contact("stray@example.test", subscription="none", ask=True),
        CAROL: Contact(CAROL, "Caroline"),
    }
    await syncer.refresh("alice")
    assert store.announced == [(ALICE, [BOB], ["old@example.test"])]
    webapp.rosters["alice"] = {CAROL: Contact(CAROL, "Carol", frozenset({"New"}))}
    await syncer.refresh("alice")
    assert store.announced[1:] == [(ALICE, [], [BOB])]


async def test_a_contact_becoming_both_is_announced(syncer: Syncer, store: MemoryStore) -> None:
    """A drifted subscription put back to both starts presence again: announced as added."""
    store.rosters[ALICE] = {
        BOB: Contact(BOB, "Bob", frozenset({"Team"}), subscription="to"),
        CAROL: Contact(CAROL, "Carol"),
    }
    await syncer.refresh("alice")
    assert store.announced == [(ALICE, [BOB], [])]


async def test_nothing_changed_nothing_announced(syncer: Syncer, store: MemoryStore) -> None:
    """A sync that writes nothing sends no announcement."""
    await syncer.refresh("alice")
    await syncer.refresh("alice")
    assert len(store.announced) == 1


async def test_a_failed_announcement_does_not_fail_the_sync(
    syncer: Syncer, store: MemoryStore
) -> None:
    """The roster is right even if presence could not be sent: the sync is ok, with a warning."""
    store.announce_error = StoreError("no module")
    with capture_logs() as logs:
        assert (await syncer.refresh("alice")).ok
    [warning] = [e for e in logs if e["event"] == "sync.announce_failed"]
    assert warning["error"] == "no module"


async def test_reconcile_logs_each_repaired_item(syncer: Syncer, store: MemoryStore) -> None:
    """A reconciliation that finds drift logs one roster.repaired with each item's before/after."""
    store.rosters[ALICE] = {
        BOB: Contact(BOB, "Bob", frozenset({"Team"}), subscription="from"),
        CAROL: Contact(CAROL, "Carol"),
        "mallory@example.test": Contact("mallory@example.test", subscription="none", ask=True),
    }
    store.pending[ALICE] = frozenset({"eve@remote.test"})
    with capture_logs() as logs:
        assert (await syncer.reconcile("alice")).ok
        assert (await syncer.reconcile("alice")).ok
    [repaired] = [e for e in logs if e["event"] == "roster.repaired"]
    assert repaired["user"] == ALICE
    assert repaired["items"] == [
        {
            "jid": BOB,
            "was": {"subscription": "from", "ask": False, "name": "Bob", "groups": ["Team"]},
            "now": {"subscription": "both", "ask": False, "name": "Bob", "groups": ["Team"]},
        },
        {
            "jid": "mallory@example.test",
            "was": {"subscription": "none", "ask": True, "name": None, "groups": []},
            "now": None,
        },
        {"jid": "eve@remote.test", "was": "pending request", "now": None},
    ]
    assert store.pending[ALICE] == frozenset()


async def test_refreshes_are_not_reported_as_repairs(syncer: Syncer) -> None:
    """Changes the web app asked for are syncs, not repairs."""
    with capture_logs() as logs:
        await syncer.refresh("alice")
    assert not [e for e in logs if e["event"] == "roster.repaired"]


async def test_pending_requests_are_cleared_when_the_server_is_read(
    syncer: Syncer, store: MemoryStore, changes: list[tuple[str, RosterDiff]]
) -> None:
    """Pending inbound requests are dropped even when no item changes; nothing is pushed."""
    await syncer.refresh("alice")
    store.pending[ALICE] = frozenset({"eve@remote.test", BOB})
    assert (await syncer.reconcile("alice")).ok
    assert store.pending[ALICE] == frozenset()
    assert len(changes) == 1


async def test_an_unchanged_roster_costs_no_server_request(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """The web app's roster as last applied: no request; a change costs only its writes."""
    await syncer.refresh("alice")
    reads, writes = store.reads, store.writes
    for _ in range(3):
        assert (await syncer.refresh("alice")).ok
    assert (store.reads, store.writes) == (reads, writes)
    webapp.rosters["alice"] = {BOB: Contact(BOB, "Robert")}
    await syncer.refresh("alice")
    assert (store.reads, store.writes) == (reads, writes + 2)  # rename bob, remove carol
    assert store.rosters[ALICE] == {BOB: Contact(BOB, "Robert")}
    assert store.announced[-1] == (ALICE, [], [CAROL])


async def test_after_a_failure_the_server_is_read_again(syncer: Syncer, store: MemoryStore) -> None:
    """A sync that failed half-way leaves the server's state unknown: the next one reads."""
    store.fail_writes_after = 1
    assert not (await syncer.refresh("alice")).ok
    store.fail_writes_after = None
    reads = store.reads
    assert (await syncer.refresh("alice")).ok
    assert store.reads == reads + 1
    assert set(store.rosters[ALICE]) == {BOB, CAROL}


async def test_after_the_server_went_away_every_sync_reads_it_again(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """A server that restarts may lose writes it acknowledged: once the link broke, an
    unchanged roster is read and repaired, not trusted."""
    await syncer.refresh("alice")
    store.rosters[ALICE] = {}
    syncer.forget_all()
    assert (await syncer.refresh("alice")).ok
    assert store.rosters[ALICE] == webapp.rosters["alice"]


async def test_a_sync_writing_when_the_server_went_away_records_nothing(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """What a sync wrote before the link broke may be lost with the server's restart."""
    store.write_delay = 0.2
    running = asyncio.ensure_future(syncer.refresh("alice"))
    await asyncio.sleep(0.1)
    assert store.in_flight
    syncer.forget_all()
    assert (await running).ok
    store.rosters[ALICE] = {}
    assert (await syncer.refresh("alice")).ok
    assert store.rosters[ALICE] == webapp.rosters["alice"]


async def test_a_sync_fetching_when_the_server_went_away_reads_it(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """The link broke while the roster was fetched: the server is read, not trusted to hold
    what was applied before."""
    await syncer.refresh("alice")
    webapp.rosters["alice"] = {**webapp.rosters["alice"], DAVE: Contact(DAVE)}
    webapp.gate = asyncio.Event()
    running = asyncio.ensure_future(syncer.refresh("alice"))
    await asyncio.sleep(0)
    store.rosters[ALICE] = {}
    syncer.forget_all()
    webapp.gate.set()
    assert (await running).ok
    assert store.rosters[ALICE] == webapp.rosters["alice"]


async def test_after_the_server_went_away_a_login_syncs_again_within_max_age(
    syncer: Syncer, webapp: ScriptedWebApp
) -> None:
    """A sync from before the link broke is not fresh: the web app's changes during the
    outage (refreshes got 503) reach a user who logs in again at once."""
    await syncer.ensure_fresh("alice")
    syncer.forget_all()
    assert (await syncer.ensure_fresh("alice")).ok
    assert webapp.fetches == ["alice", "alice"]


async def test_reconciliation_always_reads(syncer: Syncer, store: MemoryStore) -> None:
    """Drift is only seen in the server: a reconciliation reads even an unchanged roster."""
    await syncer.refresh("alice")
    del store.rosters[ALICE][BOB]
    assert (await syncer.reconcile("alice")).ok
    assert BOB in store.rosters[ALICE]


async def test_writes_go_out_together_within_the_window(
    webapp: ScriptedWebApp, store: MemoryStore
) -> None:
    """One user's items are written in parallel; all syncs together stay within the window."""
    store.write_delay = 0.01
    for user in ("u1", "u2", "u3"):
        webapp.rosters[user] = {f"c{i}@x.test": Contact(f"c{i}@x.test") for i in range(10)}
    syncer = Syncer(webapp, store, DOMAIN, concurrency=3, max_age=0, write_window=12)
    results = await asyncio.gather(*(syncer.refresh(u) for u in ("u1", "u2", "u3")))
    assert all(r.ok for r in results)
    assert store.peak_in_flight == 12
    assert all(len(store.rosters[f"{u}@{DOMAIN}"]) == 10 for u in ("u1", "u2", "u3"))


async def test_a_roster_sent_inline_is_applied_without_a_fetch(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """The bulk endpoint's rosters are checked like fetched ones and applied as they are."""
    assert (await syncer.apply("alice", {"bob@example.test": {"name": "Bob"}})).ok
    assert store.rosters[ALICE] == {BOB: Contact(BOB, "Bob")}
    assert (await syncer.apply("alice", [])).ok
    assert store.rosters[ALICE] == {}
    assert webapp.fetches == []


async def test_a_roster_sent_inline_again_unchanged_is_not_checked_again(
    syncer: Syncer, store: MemoryStore
) -> None:
    """The same JSON as last applied stops at its fingerprint (no warnings repeated, nothing
    written); a changed one is checked and applied."""
    sent = {"bob@example.test": {"name": "Bob"}, "not a jid": {}}
    with capture_logs() as first:
        assert (await syncer.apply("alice", sent)).ok
    writes = store.writes
    with capture_logs() as again:
        assert (await syncer.apply("alice", dict(sent))).ok
    warned = [e for e in first + again if e["event"] == "webapp.roster_warning"]
    assert len(warned) == 1
    assert store.writes == writes
    assert (await syncer.apply("alice", {"bob@example.test": {"name": "Robert"}})).ok
    assert store.rosters[ALICE] == {BOB: Contact(BOB, "Robert")}


async def test_an_answer_seen_before_is_compared_anew_when_what_was_known_is_forgotten(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """A server restart during the fetch voids what was applied: the same answer then makes
    the sync read the server and repair it, not stop at the answer's fingerprint."""
    await syncer.refresh("alice")
    reads = store.reads
    del store.rosters[ALICE][CAROL]  # lost by the server while it restarted
    webapp.gate = asyncio.Event()
    refresh = asyncio.create_task(syncer.refresh("alice"))
    await asyncio.sleep(0.01)
    syncer.forget_all()
    webapp.gate.set()
    assert (await refresh).ok
    assert store.reads == reads + 1
    assert CAROL in store.rosters[ALICE]


async def test_a_user_forgotten_while_their_sync_writes_is_read_at_the_next_sync(
    syncer: Syncer, store: MemoryStore, webapp: ScriptedWebApp
) -> None:
    """A check that finds drift forgets the user; a sync then writing must not record what it
    believes afterwards, or the next refresh would skip the repair."""
    await syncer.refresh("alice")
    webapp.rosters["alice"] = {BOB: Contact(BOB, "Robert")}
    store.write_delay = 0.05
    writing = asyncio.create_task(syncer.refresh("alice"))
    await asyncio.sleep(0.02)  # fetched, now writing
    syncer.forget("alice")
    assert (await writing).ok
    reads = store.reads
    await syncer.refresh("alice")
    assert store.reads == reads + 1


async def test_an_inline_non_roster_fails_that_user_alone(
    syncer: Syncer, store: MemoryStore
) -> None:
    """Like a failed fetch: the stored roster stays exactly as it was."""
    await syncer.apply("alice", {"bob@example.test": {}})
    result = await syncer.apply("alice", ["not", "a", "roster"])
    assert not result.ok
    assert result.error is not None
    assert "not a roster" in result.error
    assert store.rosters[ALICE] == {BOB: Contact(BOB)}
