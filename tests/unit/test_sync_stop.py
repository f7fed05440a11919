"""Stopping the sync core: nothing new starts, fetches are cut short, writes finish."""

from __future__ import annotations

import asyncio

from component.roster import Contact
from component.sync import Syncer
from tests.harness.memory_store import MemoryStore
from tests.unit.test_sync import DOMAIN, ScriptedWebApp


async def test_stop_fails_what_has_not_written_and_finishes_what_has() -> None:
    """Queued and fetching syncs end as not done; a sync writing completes its whole roster."""
    store, webapp = MemoryStore(), ScriptedWebApp()
    store.write_delay = 0.05
    webapp.gate = asyncio.Event()  # fetches hang until stop cuts them short
    syncer = Syncer(webapp, store, DOMAIN, concurrency=3, max_age=0)
    contacts = {f"c{i}@{DOMAIN}": {"name": f"C{i}"} for i in range(20)}

    writing = asyncio.create_task(syncer.apply("w", contacts))
    await asyncio.sleep(0.01)
    others = [asyncio.create_task(syncer.refresh(user)) for user in ("a", "b", "c", "d")]
    await asyncio.sleep(0.01)
    # The writing sync holds no slot: three fetch, the fourth waits for a slot.
    assert (store.in_flight, sorted(webapp.fetches)) == (20, ["a", "b", "c"])

    syncer.stop()
    async with asyncio.timeout(2):
        results = await asyncio.gather(*others)
        await syncer.wait_idle()

    assert [r.error for r in results] == [
        "fetch failed: not done: the component is stopping"
    ] * 3 + ["not done: the component is stopping"]
    assert sorted(webapp.fetches) == ["a", "b", "c"]
    assert (await writing).ok
    assert sorted(store.rosters[f"w@{DOMAIN}"]) == sorted(contacts)
    assert store.rosters[f"w@{DOMAIN}"][f"c3@{DOMAIN}"] == Contact(f"c3@{DOMAIN}", "C3")
