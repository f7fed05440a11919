"""The shipped systemd unit: hardened, watched, and given time to stop cleanly."""

from __future__ import annotations

import subprocess
from pathlib import Path

from component import config

UNIT = Path(__file__).parents[2] / "deploy" / "http-roster-admin.service"


def unit_settings() -> dict[str, str]:
    """The unit's settings, the last value of each key."""
    lines = UNIT.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_exposure_stays_below_2() -> None:
    """systemd-analyze rates the unit's sandboxing below 2 (1.6 when written: README)."""
    analysis = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=19", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert analysis.returncode == 0, analysis.stdout[-400:] + analysis.stderr


def test_the_watchdog_is_on() -> None:
    """Type=notify with a watchdog, and Python's stack dump for the watchdog's SIGABRT."""
    settings = unit_settings()
    assert (settings["Type"], settings["WatchdogSec"]) == ("notify", "30s")
    assert settings["Environment"] == "PYTHONFAULTHANDLER=1"


def test_systemd_waits_longer_than_the_component_takes_to_stop() -> None:
    """TimeoutStopSec covers the example config's stop timeout, the writes in flight and the
    link's close (README), so that systemd never kills a clean shutdown."""
    example = config.load(
        UNIT.parent / "config.example.toml", environ={"HTTP_ROSTER_ADMIN_SECRET": "s"}
    )
    needed = example.listener.stop_timeout + example.sync.xmpp_timeout + 10
    assert float(unit_settings()["TimeoutStopSec"].removesuffix("s")) > needed
