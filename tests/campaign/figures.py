"""The campaign's figures: what each test measured, gathered into one JSON file and a table.

Tests record through the ``figures`` fixture (``figures.add("cases")``,
``figures.set("seconds", 1.2)``); when env ``CAMPAIGN_FIGURES`` names a file, the session
writes them there, and ``python -m tests.campaign.figures FILE`` prints them as a table
(``scripts/campaign`` does both).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

FIGURES_ENV = "CAMPAIGN_FIGURES"
Value = int | float | str


class Figures:
    """One test's figures, by name, in the order first recorded."""

    def __init__(self) -> None:
        self.values: dict[str, Value] = {}

    def add(self, name: str, amount: int = 1) -> None:
        """Count: generated cases, faults survived..."""
        current = self.values.get(name, 0)
        assert isinstance(current, int)
        self.values[name] = current + amount

    def set(self, name: str, value: Value) -> None:
        self.values[name] = value

    def peak(self, name: str, value: float) -> None:
        """Keep the largest value seen."""
        current = self.values.get(name)
        if not isinstance(current, int | float) or value > current:
            self.values[name] = value


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def write(path: Path, tests: dict[str, dict[str, Value]]) -> None:
    session = {"peak RSS of the test process (MiB)": peak_rss_mib()}
    path.write_text(json.dumps({"tests": tests, "session": session}, indent=2) + "\n")


def table(data: dict[str, Any]) -> str:
    """Markdown: one row per figure, the test named once."""
    tests: dict[str, dict[str, Value]] = data["tests"]
    session: dict[str, Value] = data["session"]
    rows = [("test", "figure", "value")]
    for test, values in [*tests.items(), ("session", session)]:
        name = test.rsplit("::", 1)[-1]
        for figure, value in values.items():
            shown = f"{value:,}" if isinstance(value, int) else str(value)
            rows.append((name, figure, shown))
            name = ""
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1]).read_text())))  # noqa: T201 - the script's output
