"""A circuit breaker: stop asking a web app that is clearly down, and find out by itself when
it is back (README, "The web app's side"). Pure: the caller reports outcomes, a clock is
injected."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CircuitBreaker", "CircuitChange", "State"]

State = Literal["closed", "open", "half-open"]


@dataclass(frozen=True, slots=True)
class CircuitChange:
    """The circuit went from one state to another."""

    state: State
    previous: State
    failures: int  # in a row, when it opened
    reason: str  # the last failure's
    down_for: float  # seconds since it first opened, when it closes or probes


class CircuitBreaker:
    """Closed, every request goes. After ``threshold`` failures in a row it opens: requests
    are refused at once for ``cooldown`` seconds; then one goes as a probe (half-open), whose
    success closes the circuit and whose failure opens it for another cooldown. A probe that
    has not reported within ``probe_timeout`` (its caller was cancelled) lets another go. Any
    success closes it: a request that began before it opened shows the web app answers too.

    Why not a library: purgatory lets every caller through while half-open (with a black-holed
    web app, sync.concurrency requests each waiting out a timeout) and reads the wall clock;
    aiobreaker is unmaintained.
    """

    def __init__(
        self,
        *,
        threshold: int,
        cooldown: float,
        probe_timeout: float = 0.0,
        on_change: Callable[[CircuitChange], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._probe_timeout = probe_timeout
        self._on_change = on_change
        self._clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._reason = ""
        self._opened_at = 0.0  # when it opened, after being closed
        self._retry_at = 0.0  # when the next probe may go

    @property
    def state(self) -> State:
        return self._state

    @property
    def reason(self) -> str:
        """Why requests are refused now, for the refused caller."""
        wait = max(0.0, self._retry_at - self._clock())
        return (
            f"web app down ({self._failures} failures in a row, last: {self._reason}); "
            f"not asked, next try in {wait:.0f}s"
        )

    def allow(self) -> bool:
        """Whether a request may go now; while open, the first one after the cooldown goes."""
        if self._state == "closed":
            return True
        now = self._clock()
        if now < self._retry_at:
            return False
        # Until the probe reports, or is taken as lost.
        self._retry_at = now + max(self._cooldown, self._probe_timeout)
        self._change("half-open")
        return True

    def success(self) -> None:
        self._failures = 0
        if self._state != "closed":
            self._change("closed")

    def failure(self, reason: str) -> None:
        self._reason = reason
        if self._state == "closed":
            self._failures += 1
            if self._failures >= self._threshold:
                self._opened_at = self._clock()
                self._retry_at = self._opened_at + self._cooldown
                self._change("open")
        elif self._state == "half-open":
            self._retry_at = self._clock() + self._cooldown
            self._change("open")

    def _change(self, state: State) -> None:
        previous, self._state = self._state, state
        if self._on_change is not None and state != previous:
            change = CircuitChange(
                state, previous, self._failures, self._reason, self._clock() - self._opened_at
            )
            self._on_change(change)
