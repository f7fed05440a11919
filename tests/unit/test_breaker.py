"""The web app's circuit breaker: opens after failures in a row, probes once per cooldown."""

from __future__ import annotations

import pytest

from component.breaker import CircuitBreaker, CircuitChange


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def fixture_clock() -> Clock:
    return Clock()


@pytest.fixture(name="changes")
def fixture_changes() -> list[CircuitChange]:
    return []


@pytest.fixture(name="breaker")
def fixture_breaker(clock: Clock, changes: list[CircuitChange]) -> CircuitBreaker:
    return CircuitBreaker(threshold=3, cooldown=10, on_change=changes.append, clock=clock)


def open_it(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        assert breaker.allow()
        breaker.failure("connection refused")


def test_failures_in_a_row_open_the_circuit(breaker: CircuitBreaker) -> None:
    """Below the threshold every request goes; at it, none does."""
    breaker.failure("connection refused")
    breaker.failure("connection refused")
    assert breaker.allow()
    breaker.failure("timed out")
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.reason == (
        "web app down (3 failures in a row, last: timed out); not asked, next try in 10s"
    )


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    """Failures must come in a row: an answer in between starts the count again."""
    breaker.failure("x")
    breaker.failure("x")
    breaker.success()
    breaker.failure("x")
    breaker.failure("x")
    assert breaker.state == "closed"


def test_after_the_cooldown_one_probe_goes(breaker: CircuitBreaker, clock: Clock) -> None:
    """Half-open: exactly one request goes; the others are still refused."""
    open_it(breaker)
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    assert breaker.state == "half-open"
    assert not breaker.allow()


def test_a_successful_probe_closes(breaker: CircuitBreaker, clock: Clock) -> None:
    """The web app answered the probe: every request goes again."""
    open_it(breaker)
    clock.now += 10
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(5))


def test_a_failed_probe_opens_for_another_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    """Still down: refused again until the next probe."""
    open_it(breaker)
    clock.now += 10
    assert breaker.allow()
    clock.now += 2
    breaker.failure("connection refused")
    assert breaker.state == "open"
    clock.now += 9
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_a_probe_that_never_reports_is_replaced(clock: Clock) -> None:
    """A cancelled probe cannot keep the circuit half-open for ever: after the longer of the
    cooldown and the probe's own timeout, another goes."""
    breaker = CircuitBreaker(threshold=3, cooldown=10, probe_timeout=30, clock=clock)
    open_it(breaker)
    clock.now += 10
    assert breaker.allow()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_late_failures_do_not_extend_the_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    """Requests that began before it opened and fail afterwards change nothing."""
    open_it(breaker)
    clock.now += 5
    breaker.failure("timed out")
    clock.now += 5
    assert breaker.allow()


def test_changes_are_reported(
    breaker: CircuitBreaker, clock: Clock, changes: list[CircuitChange]
) -> None:
    """Each change of state is told once, with how long the web app has been down."""
    open_it(breaker)
    clock.now += 10
    breaker.allow()
    breaker.failure("timed out")
    clock.now += 10
    breaker.allow()
    breaker.success()
    assert [(c.previous, c.state, c.down_for) for c in changes] == [
        ("closed", "open", 0),
        ("open", "half-open", 10),
        ("half-open", "open", 10),
        ("open", "half-open", 20),
        ("half-open", "closed", 20),
    ]
    assert (changes[0].failures, changes[0].reason) == (3, "connection refused")
