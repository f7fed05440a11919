"""The reliability campaign's shared parts: its size, hypothesis profiles, figures, the rig.

``CAMPAIGN=big`` runs it at full size (``scripts/campaign``); unset, it is the small,
deterministic run that ``scripts/test`` includes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import stamina
from hypothesis import HealthCheck, settings

from tests.campaign import figures as figures_module
from tests.campaign.figures import FIGURES_ENV, Figures, Value
from tests.campaign.rig import Rig, running_rig
from tests.integration.conftest import (  # noqa: F401 -- fixtures, registered by importing them
    TARGETS,
    fixture_component_options,
    fixture_system,
    fixture_webapp,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

_SIZE = os.environ.get("CAMPAIGN", "small")
if _SIZE not in {"small", "big"}:
    raise pytest.UsageError(f"CAMPAIGN must be 'small' or 'big', not {_SIZE!r}")
BIG = _SIZE == "big"


def scale(small: int, big: int) -> int:
    """A size for this run: small in CI, big in scripts/campaign."""
    return big if BIG else small


# Fixtures (the rig, a served web app) live across a test's examples on purpose: starting
# servers per example would cost more than the examples themselves.
_SUPPRESSED = [
    HealthCheck.function_scoped_fixture,
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
]
# Small: the same examples every run, no database, no deadline (a slow CI machine is no bug).
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=_SUPPRESSED,
)
# Big: at least 10,000 cases over the bad-input tests.
settings.register_profile(
    "big", max_examples=2_000, deadline=None, suppress_health_check=_SUPPRESSED
)
settings.load_profile("big" if BIG else "ci")

# End-to-end tests (``system``) run against the newest build of each server in the small run,
# every target in the big one.
SMALL_TARGETS = ("prosody-13-delegated", "ejabberd-24.12-server-answers")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``target`` as in tests/integration (same markers), over the campaign's targets;
    ``@pytest.mark.campaign_targets(id, ...)`` keeps a test to some of them."""
    if "target" not in metafunc.fixturenames:
        return
    targets = [t for t in TARGETS if BIG or t.id in SMALL_TARGETS]
    if (only := metafunc.definition.get_closest_marker("campaign_targets")) is not None:
        targets = [t for t in targets if t.id in only.args]
    if metafunc.definition.get_closest_marker("delegated_only") is not None:
        targets = [t for t in targets if t.delegated]
    if metafunc.definition.get_closest_marker("ejabberd_only") is not None:
        targets = [t for t in targets if t.kind == "ejabberd"]
    metafunc.parametrize("target", targets, ids=[t.id for t in targets])


_RECORDED: dict[str, dict[str, Value]] = {}


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """What the test measured, kept for the campaign's table under the test's name."""
    recorded = Figures()
    yield recorded
    _RECORDED[request.node.nodeid] = recorded.values


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(FIGURES_ENV)
    if path and _RECORDED:
        figures_module.write(Path(path), _RECORDED)


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    # Retries still happen, without waits (stamina's testing switch).
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """HttpApi, Syncer and WebAppClient over real HTTP, the roster store in memory."""
    async with running_rig() as running:
        yield running
