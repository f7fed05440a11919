"""The operator commands that ask the running service: check and refresh."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Never, TypeVar

from tqdm import tqdm

from component.cli import report
from component.cli.service import ServiceClient
from component.http_api import normalize_username

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from typing import TextIO

    from component.cli.service import Counts
    from component.config import Config

_T = TypeVar("_T")
_R = TypeVar("_R")

EXIT_OK = 0
EXIT_DIFFERS = 1  # check: a roster is not in sync; refresh: a user failed
EXIT_ERROR = 2  # config, service unreachable or refusing, a check that could not compare
# Requests in flight at once: the service bounds its own work (sync.concurrency), this only
# keeps it fed while the progress bar moves.
IN_FLIGHT = 4
CHUNK_SIZE = 25
# Shorter lists are done before a bar would tell anything.
LONG_LIST = 20


async def check(cfg: Config, usernames: Sequence[str], out: TextIO) -> int:
    """Print how each user's roster in the server differs from the web app's."""
    users = _usernames(usernames, cfg.users.domain)
    async with ServiceClient(cfg.listener) as service:
        results = await _bounded(users, service.check, _progress(len(users), out), _one)
    for line in report.check_report(results):
        print(line, file=out)
    if any(result.error is not None for result in results):
        return EXIT_ERROR
    return EXIT_OK if all(result.in_sync for result in results) else EXIT_DIFFERS


async def refresh(
    cfg: Config, usernames: Sequence[str] | None, out: TextIO, chunk_size: int = CHUNK_SIZE
) -> int:
    """Refresh the users (None: every user online now) in chunks; print the summed counts."""
    async with ServiceClient(cfg.listener) as service:
        users = _usernames(
            await service.online() if usernames is None else usernames, cfg.users.domain
        )
        size = min(chunk_size, cfg.listener.max_users)
        chunks = [users[i : i + size] for i in range(0, len(users), size)]
        parts: list[Counts] = await _bounded(
            chunks, service.refresh, _progress(len(users), out), len
        )
    counts = report.total(parts)
    print(report.counts_json(counts), file=out)
    return EXIT_DIFFERS if counts.errors else EXIT_OK


def _one(_item: object) -> int:
    return 1


def _usernames(names: Sequence[str], domain: str) -> list[str]:
    """Normalized as the service does, duplicates dropped; BadRequestError for a bad one."""
    return list(dict.fromkeys(normalize_username(name, domain) for name in names))


def _progress(total: int, out: TextIO) -> tqdm[Never]:
    """A progress bar on a terminal for long lists; otherwise one that shows nothing."""
    return tqdm(
        total=total,
        unit="user",
        file=out,
        leave=False,
        disable=not (total > LONG_LIST and out.isatty()),
    )


async def _bounded(
    items: Sequence[_T],
    work: Callable[[_T], Awaitable[_R]],
    bar: tqdm[Never],
    weight: Callable[[_T], int],
) -> list[_R]:
    """``work`` on every item, IN_FLIGHT at a time, the bar moving by each item's weight;
    results in the items' order. The first failure cancels the rest and is raised."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(item: _T) -> _R:
        async with slots:
            result = await work(item)
        bar.update(weight(item))
        return result

    with bar:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(item)) for item in items]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
