"""Reconnection backoff: growing waits, jittered, never above the configured cap."""

from __future__ import annotations

import pytest

from component.xmpp.link import reconnect_delay


@pytest.mark.parametrize("cap", [0.1, 1.0, 4.0, 30.0])
def test_reconnect_delay_never_exceeds_the_cap(cap: float) -> None:
    """reconnect_max_delay is "at most", jitter included, however many attempts failed."""
    delays = [reconnect_delay(attempt, cap) for attempt in range(1, 40) for _ in range(50)]
    assert max(delays) <= cap
    assert min(delays) > 0


def test_reconnect_delay_grows_then_stays_near_the_cap() -> None:
    """Early attempts come quickly; later ones wait close to the cap, still spread by jitter."""
    assert reconnect_delay(1, 30.0) <= 1.0
    late = {reconnect_delay(20, 4.0) for _ in range(50)}
    assert min(late) >= 0.8 * 4.0
    assert len(late) > 1
