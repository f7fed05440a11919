"""Reading the service's metrics in tests: counters only ever grow, so tests compare deltas."""

from __future__ import annotations

from component import metrics


def sample(name: str, **labels: str) -> float:
    """The current value of one sample of the service's registry (0 when never set)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0
