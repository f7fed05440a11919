"""Many users with sizeable rosters that change from one generation to the next, what the
server stores for them, and the check that a fault left every roster in a state it may be in.

Each generation changes three quarters of every roster: contacts renamed, regrouped, replaced
(one removed, another added). The last quarter, other users of the population, never changes:
losing one of those is what a fault must never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.harness import ejabberd, prosody

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from tests.harness.webapp import FakeWebApp

Server = prosody.ProsodyServer | ejabberd.EjabberdServer


@dataclass(frozen=True, slots=True)
class Item:
    """One contact as the server stores it, in the terms both servers share."""

    name: str | None
    groups: tuple[str, ...]  # sorted
    subscription: str


Roster = dict[str, Item]


class State(enum.Enum):
    """Where a stored roster stands between the one before a refresh and the one after."""

    BEFORE = "before"  # exactly the roster before
    AFTER = "after"  # exactly the web app's new roster
    BETWEEN = "between"  # part way, with every contact both keep
    BROKEN = "broken"  # a contact lost or mangled, or one neither roster has


def state(stored: Roster, before: Roster, after: Roster) -> State:
    """How far ``stored`` got from ``before`` to ``after``: writes go one item at a time,
    so a fault may stop a roster part way; but every contact that both rosters keep must be
    there, and every item must be as one of the two rosters has it."""
    if stored == after:
        return State.AFTER
    if stored == before:
        return State.BEFORE
    if not (before.keys() & after.keys()) <= stored.keys():
        return State.BROKEN
    allowed = (before.get(jid) for jid in stored), (after.get(jid) for jid in stored)
    for item, was, will_be in zip(stored.values(), *allowed, strict=True):
        if item not in (was, will_be):
            return State.BROKEN
    return State.BETWEEN


def describe(stored: Roster, before: Roster, after: Roster) -> str:
    """What is wrong with a broken roster, for an assertion message."""
    lost = sorted((before.keys() & after.keys()) - stored.keys())
    foreign = {
        jid: item
        for jid, item in sorted(stored.items())
        if item not in (before.get(jid), after.get(jid))
    }
    return f"kept contacts lost: {lost}; items neither roster has: {foreign}"


class Population:
    """``size`` users (``<prefix>-000``, ...) with ``contacts`` contacts each."""

    def __init__(self, size: int, contacts: int, domain: str, prefix: str = "crowd") -> None:
        self.users = [f"{prefix}-{index:03d}" for index in range(size)]
        self.contacts = contacts
        self.domain = domain

    def expected(self, user: str, generation: int) -> Roster:
        """What the server must store for ``user`` once ``generation`` is applied."""
        index = self.users.index(user)
        roster: Roster = {}
        for slot in range(self.contacts):
            match slot % 4:
                case 0:  # another user of the population: never changes
                    other = self.users[(index + 1 + slot // 4) % len(self.users)]
                    roster[f"{other}@{self.domain}"] = Item(other.title(), (), "both")
                case 1:  # renamed
                    name = f"C{slot} gen {generation}"
                    roster[self._contact(user, slot)] = Item(name, (), "both")
                case 2:  # moved to another group
                    groups = ("Team", f"X{generation % 3}")
                    roster[self._contact(user, slot)] = Item(f"C{slot}", groups, "both")
                case _:  # replaced by another contact
                    roster[self._contact(user, slot, generation)] = Item(f"C{slot}", (), "both")
        return roster

    def webapp_roster(self, user: str, generation: int) -> dict[str, object]:
        """The roster the web app serves ``user`` in ``generation``."""
        return {
            jid: {"name": item.name, "groups": list(item.groups)}
            for jid, item in self.expected(user, generation).items()
        }

    def publish(self, webapp: FakeWebApp, generation: int) -> None:
        """Make ``generation`` the web app's truth for every user."""
        for user in self.users:
            webapp.rosters[user] = self.webapp_roster(user, generation)

    def _contact(self, user: str, slot: int, generation: int | None = None) -> str:
        suffix = "" if generation is None else f"-g{generation}"
        return f"{user}-c{slot}{suffix}@{self.domain}"


async def register(server: Server, users: Sequence[str], password: str) -> None:
    if isinstance(server, prosody.ProsodyServer):
        server.add_accounts(users, password)
        return

    async def fresh(user: str) -> None:
        # The server is shared by the session: an account left by an earlier test goes.
        with contextlib.suppress(ejabberd.EjabberdApiError):
            await server.unregister(user)
        await server.register(user, password)

    await asyncio.gather(*(fresh(user) for user in users))


async def unregister(server: Server, users: Sequence[str]) -> None:
    """Delete the accounts from a shared ejabberd (a Prosody goes with its test)."""
    if isinstance(server, ejabberd.EjabberdServer):
        await asyncio.gather(*(server.unregister(user) for user in users))


async def stored_rosters(server: Server, users: Sequence[str]) -> dict[str, Roster]:
    """Every user's roster as the server stores it (Prosody's files, ejabberd's API)."""
    if isinstance(server, prosody.ProsodyServer):
        stored = await server.stored_items(users)
        return {user: _from_prosody(items) for user, items in stored.items()}
    rosters = await asyncio.gather(*(server.roster(user) for user in users))
    return {user: _from_ejabberd(items) for user, items in zip(users, rosters, strict=True)}


def _from_prosody(items: Mapping[str, prosody.StoredItem]) -> Roster:
    return {
        jid: Item(item.name, tuple(sorted(item.groups)), item.subscription)
        for jid, item in items.items()
    }


def _from_ejabberd(items: Mapping[str, ejabberd.ApiRosterItem]) -> Roster:
    return {
        jid: Item(item["name"], tuple(item["groups"]), item["subscription"])
        for jid, item in items.items()
    }
