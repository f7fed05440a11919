"""Logging: ECS JSON lines for journald/ELK, with the standard library's records in the same
stream and shape; the console renderer on a terminal."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from component import logs

if TYPE_CHECKING:
    from collections.abc import Callable

# What a line may hold at its top level: ECS field sets, and our namespace for the rest.
ECS_TOP_LEVEL = {"@timestamp", "log.level", "message", "ecs.version", "log", "event", "service"}
ECS_TOP_LEVEL |= {"user", "error", logs.NAMESPACE}


class TerminalOut(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(name="out")
def fixture_out(log_setup: Callable[..., io.StringIO]) -> io.StringIO:
    """What the service writes to stdout, with JSON logging set up at level info."""
    return log_setup("info")


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    """Each line written, parsed: every one must be a JSON object."""
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_events_are_ecs_lines(out: io.StringIO) -> None:
    """A structlog event is one ECS object: time, level, the dotted name as message and action,
    the logger, the ECS version and the service."""
    structlog.get_logger("component.sync").info("sync.done", upserts=2)
    [line] = lines(out)
    assert list(line)[:3] == ["@timestamp", "log.level", "message"]
    assert line["@timestamp"].endswith("Z")
    assert datetime.fromisoformat(line["@timestamp"]).utcoffset() == timedelta(0)
    assert (line["log.level"], line["message"]) == ("info", "sync.done")
    assert line["event"]["action"] == "sync.done"
    assert line["log"] == {"logger": "component.sync"}
    assert isinstance(line["ecs.version"], str)
    assert line["service"] == {"name": "http-roster-admin"}


def test_own_fields_go_under_one_namespace(out: io.StringIO) -> None:
    """Fields ECS has no place for are kept, with their types, under roster_admin; nothing
    else reaches the top level."""
    structlog.get_logger("x").warning(
        "roster.repaired", items=[{"jid": "bob@example.test", "now": None}], upserts=2, hint="h"
    )
    [line] = lines(out)
    assert line[logs.NAMESPACE] == {
        "items": [{"jid": "bob@example.test", "now": None}],
        "upserts": 2,
        "hint": "h",
    }
    assert set(line) <= ECS_TOP_LEVEL


@pytest.mark.parametrize(
    ("field", "value", "user"),
    [
        ("user", "alice@example.test", {"name": "alice", "domain": "example.test"}),
        ("username", "alice", {"name": "alice"}),
    ],
)
def test_the_user_is_user_name(out: io.StringIO, field: str, value: str, user: object) -> None:
    """`user=` (a bare JID) and `username=` both give user.name, so one search finds both."""
    structlog.get_logger("x").info("sync.done", **{field: value})
    [line] = lines(out)
    assert line["user"] == user
    assert logs.NAMESPACE not in line


def test_durations_are_event_duration_in_nanoseconds(out: io.StringIO) -> None:
    """duration_ms and duration_s become ECS event.duration, an integer of nanoseconds."""
    log = structlog.get_logger("x")
    log.info("sync.done", duration_ms=12.5)
    log.info("reconcile.done", duration_s=2)
    assert [line["event"]["duration"] for line in lines(out)] == [12_500_000, 2_000_000_000]


def test_an_error_text_is_error_message(out: io.StringIO) -> None:
    """`error=` (an error's text logged without its traceback) is ECS error.message."""
    structlog.get_logger("x").warning("sync.store_failed", error="item-not-found")
    [line] = lines(out)
    assert line["error"] == {"message": "item-not-found"}


class RosterTroubleError(Exception):
    pass


def test_exceptions_are_error_fields_in_the_line(out: io.StringIO) -> None:
    """A logged exception is error.type (qualified), error.message and error.stack_trace, all
    inside the one JSON line."""
    try:
        raise RosterTroubleError("boom")  # noqa: TRY301 -- the point of the test
    except RosterTroubleError:
        structlog.get_logger("x").exception("reconcile.failed", username="alice")
    assert out.getvalue().count("\n") == 1
    [line] = lines(out)
    assert line["log.level"] == "error"
    assert line["error"]["type"] == f"{__name__}.RosterTroubleError"
    assert line["error"]["message"] == "boom"
    assert line["error"]["stack_trace"].startswith("Traceback (most recent call last):")
    assert "RosterTroubleError: boom" in line["error"]["stack_trace"]


def test_standard_library_records_have_the_same_shape(out: io.StringIO) -> None:
    """slixmpp's and aiohttp's stdlib logs come out as the same ECS lines: their text as the
    message (no action: it is not one of our events), their exception as error fields."""
    try:
        raise ValueError("bad request")  # noqa: TRY301 -- the point of the test
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling %s", "request")
    [line] = lines(out)
    assert (line["message"], line["log.level"], line["log"]) == (
        "Error handling request",
        "error",
        {"logger": "aiohttp.server"},
    )
    assert "action" not in line.get("event", {})
    assert (line["error"]["type"], line["error"]["message"]) == ("ValueError", "bad request")
    assert {"@timestamp", "ecs.version", "service"} <= set(line) <= ECS_TOP_LEVEL


def test_below_the_level_is_dropped(out: io.StringIO) -> None:
    """At level info, debug events are not written."""
    structlog.get_logger("x").debug("noise")
    logging.getLogger("slixmpp").info("chatter")
    assert out.getvalue() == ""


def test_library_debug_lines_show_at_debug(log_setup: Callable[..., io.StringIO]) -> None:
    """At level debug, slixmpp's own debug lines (stanzas sent and received) are written."""
    out = log_setup("debug")
    logging.getLogger("slixmpp.xmlstream.xmlstream").debug("SEND: %s", "<iq/>")
    assert lines(out)[0]["message"] == "SEND: <iq/>"


def test_own_debug_events_show_at_debug(log_setup: Callable[..., io.StringIO]) -> None:
    """The level check that drops debug events early lets them through at level debug."""
    out = log_setup("debug")
    structlog.get_logger("component.sync").debug("sync.unchanged", contacts=3)
    assert lines(out)[0]["event"]["action"] == "sync.unchanged"


def test_auto_is_ecs_json_when_not_on_a_terminal(log_setup: Callable[..., io.StringIO]) -> None:
    """Under systemd (stdout is no terminal) "auto" writes the ECS lines."""
    out = log_setup("info", "auto")
    structlog.get_logger("x").info("app.ready")
    assert lines(out)[0]["event"]["action"] == "app.ready"


def test_a_terminal_gets_the_console_renderer(log_setup: Callable[..., io.StringIO]) -> None:
    """On a terminal "auto" stays readable text: the event name and its fields, no JSON."""
    out = log_setup("info", "auto", TerminalOut())
    structlog.get_logger("x").info("sync.done", user="alice@example.test")
    written = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert "sync.done" in written
    assert "user=alice@example.test" in written
    assert not written.startswith("{")
