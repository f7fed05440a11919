"""Checking a roster: every difference a sync would repair, told field by field, nothing written."""

from __future__ import annotations

import pytest

from component.check import Checker, ItemChange, compare
from component.errors import StoreUnavailableError
from component.roster import Contact, StoredRoster
from component.sync import Syncer
from tests.harness.memory_store import MemoryStore
from tests.unit.test_sync import DOMAIN, ScriptedWebApp

ALICE = f"alice@{DOMAIN}"
BOB = Contact("bob@example.test", "Bob", frozenset({"Team"}))
CAROL = Contact("carol@example.test", "Carol")


class FailingStore(MemoryStore):
    async def read(self, user: str) -> StoredRoster:
        raise StoreUnavailableError(f"not connected, cannot read {user}")


@pytest.fixture(name="webapp")
def fixture_webapp() -> ScriptedWebApp:
    webapp = ScriptedWebApp()
    webapp.rosters["alice"] = {BOB.jid: BOB, CAROL.jid: CAROL}
    return webapp


@pytest.fixture(name="store")
def fixture_store() -> MemoryStore:
    """alice's stored roster equals the web app's."""
    store = MemoryStore()
    store.rosters[ALICE] = {BOB.jid: BOB, CAROL.jid: CAROL}
    return store


def test_equal_rosters_have_no_changes() -> None:
    """The server's copy equal to the web app's roster: nothing to tell."""
    assert compare(StoredRoster({BOB.jid: BOB}), {BOB.jid: BOB}) == ()


def test_every_kind_of_difference_is_told_sorted_by_jid() -> None:
    """Adds, removals, renames, regroups, subscription and ask drift, pending requests."""
    dave = Contact("dave@example.test", "Dave")
    eve = Contact("eve@example.test", "Eve", subscription="to", ask=True)
    stored = StoredRoster(
        {
            BOB.jid: Contact(BOB.jid, "Robert", frozenset({"Old"})),
            dave.jid: dave,
            eve.jid: eve,
        },
        pending_in=frozenset({"mallory@example.test"}),
    )
    eve_now = Contact(eve.jid, "Eve")
    assert compare(stored, {BOB.jid: BOB, CAROL.jid: CAROL, eve.jid: eve_now}) == (
        ItemChange(BOB.jid, "update", stored.contacts[BOB.jid], BOB, ("name", "groups")),
        ItemChange(CAROL.jid, "add", now=CAROL),
        ItemChange(dave.jid, "remove", was=dave),
        ItemChange(eve.jid, "update", eve, eve_now, ("subscription", "ask")),
        ItemChange("mallory@example.test", "pending_request"),
    )


async def test_check_reports_drift_and_writes_nothing(
    webapp: ScriptedWebApp, store: MemoryStore
) -> None:
    """A stored roster edited behind the web app's back is reported; nothing is changed."""
    store.rosters[ALICE][BOB.jid] = Contact(BOB.jid, "Bob", frozenset({"Team"}), "from")
    store.pending[ALICE] = frozenset({"mallory@example.test"})
    drifted: list[str] = []
    result = await Checker(webapp, store, DOMAIN, on_drift=drifted.append).check("alice")
    assert (result.in_sync, result.contacts, result.error) == (False, 2, None)
    assert [(c.jid, c.kind, c.fields) for c in result.changes] == [
        (BOB.jid, "update", ("subscription",)),
        ("mallory@example.test", "pending_request", ()),
    ]
    assert (store.writes, store.pending[ALICE], drifted) == (
        0,
        frozenset({"mallory@example.test"}),
        ["alice"],
    )


async def test_a_roster_in_sync_is_not_reported_as_drift(
    webapp: ScriptedWebApp, store: MemoryStore
) -> None:
    """Equal rosters: in sync, and the sync core is not told anything."""
    drifted: list[str] = []
    result = await Checker(webapp, store, DOMAIN, on_drift=drifted.append).check("alice")
    assert (result.in_sync, result.changes, drifted) == (True, (), [])


async def test_a_failed_fetch_is_an_error_not_a_difference(
    webapp: ScriptedWebApp, store: MemoryStore
) -> None:
    """Without the web app's roster there is nothing to compare: the check fails."""
    webapp.failing = True
    result = await Checker(webapp, store, DOMAIN).check("alice")
    assert (result.in_sync, result.error) == (False, "fetch failed: HTTP 500")


async def test_an_unreadable_store_is_an_error(webapp: ScriptedWebApp) -> None:
    """Without the server's copy there is nothing to compare: the check fails."""
    result = await Checker(webapp, FailingStore(), DOMAIN).check("alice")
    assert (result.in_sync, result.error) == (
        False,
        f"server store: not connected, cannot read {ALICE}",
    )


async def test_a_refresh_after_a_check_that_found_drift_repairs_it(
    webapp: ScriptedWebApp, store: MemoryStore
) -> None:
    """A refresh trusts what it applied last; once a check saw the server's copy differ, the
    next refresh reads the server and puts the web app's roster back."""
    syncer = Syncer(webapp, store, DOMAIN, concurrency=4, max_age=0)
    assert (await syncer.refresh("alice")).ok
    del store.rosters[ALICE][CAROL.jid]  # an admin's edit
    await syncer.refresh("alice")
    assert CAROL.jid not in store.rosters[ALICE]  # unchanged web app roster: no server request

    checker = Checker(webapp, store, DOMAIN, on_drift=syncer.forget)
    assert not (await checker.check("alice")).in_sync
    assert (await syncer.refresh("alice")).ok
    assert store.rosters[ALICE] == {BOB.jid: BOB, CAROL.jid: CAROL}
    assert (await checker.check("alice")).in_sync
