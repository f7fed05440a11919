"""Logging: JSON lines for journald/ELK, with the standard library's records in the same stream."""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING

import pytest
import structlog

from component import logs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture(name="log_setup")
def fixture_log_setup() -> Iterator[Callable[[str], io.StringIO]]:
    """Set logging up as the service does at a given level; returns what it writes."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in ("slixmpp", "aiohttp.access")}

    def setup(at: str) -> io.StringIO:
        out = io.StringIO()
        logs.setup(at, "json", stream=out)
        return out

    yield setup
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
    structlog.reset_defaults()


@pytest.fixture(name="out")
def fixture_out(log_setup: Callable[[str], io.StringIO]) -> io.StringIO:
    """What the service writes to stdout, with JSON logging set up at level info."""
    return log_setup("info")


def test_events_are_json_lines_with_fields(out: io.StringIO) -> None:
    """A structlog event is one JSON object: dotted name, level, time, logger and fields."""
    structlog.get_logger("component.sync").info("sync.done", user="alice@example.test", upserts=2)
    line = json.loads(out.getvalue().strip())
    assert line["event"] == "sync.done"
    assert line["level"] == "info"
    assert line["logger"] == "component.sync"
    assert (line["user"], line["upserts"]) == ("alice@example.test", 2)
    assert line["timestamp"].endswith("Z")


def test_standard_library_records_join_the_stream(out: io.StringIO) -> None:
    """slixmpp's and aiohttp's stdlib logs come out as the same JSON lines."""
    logging.getLogger("aiohttp.server").warning("something %s", "odd")
    line = json.loads(out.getvalue().strip())
    assert (line["event"], line["level"], line["logger"]) == (
        "something odd",
        "warning",
        "aiohttp.server",
    )


def test_below_the_level_is_dropped(out: io.StringIO) -> None:
    """At level info, debug events are not written."""
    structlog.get_logger("x").debug("noise")
    logging.getLogger("slixmpp").info("chatter")
    assert out.getvalue() == ""


def test_library_debug_lines_show_at_debug(log_setup: Callable[[str], io.StringIO]) -> None:
    """At level debug, slixmpp's own debug lines (stanzas sent and received) are written."""
    out = log_setup("debug")
    logging.getLogger("slixmpp.xmlstream.xmlstream").debug("SEND: %s", "<iq/>")
    assert json.loads(out.getvalue().strip())["event"] == "SEND: <iq/>"


def test_exceptions_are_rendered_into_the_line(out: io.StringIO) -> None:
    """A logged exception travels inside the JSON object, not as stray lines."""
    try:
        raise ValueError("boom")  # noqa: TRY301 -- the point of the test
    except ValueError:
        structlog.get_logger("x").exception("roster.answer_failed")
    written = out.getvalue().strip()
    assert written.count("\n") == 0
    assert "ValueError: boom" in json.loads(written)["exception"]
