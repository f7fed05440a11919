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
    from collections.abc import Iterator


@pytest.fixture(name="out")
def fixture_out() -> Iterator[io.StringIO]:
    """What the service writes to stdout, with JSON logging set up."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    logs.setup("info", "json", stream=out)
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


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


def test_exceptions_are_rendered_into_the_line(out: io.StringIO) -> None:
    """A logged exception travels inside the JSON object, not as stray lines."""
    try:
        raise ValueError("boom")  # noqa: TRY301 -- the point of the test
    except ValueError:
        structlog.get_logger("x").exception("roster.answer_failed")
    written = out.getvalue().strip()
    assert written.count("\n") == 0
    assert "ValueError: boom" in json.loads(written)["exception"]
