"""Logging: one structured stream on stdout, JSON lines under systemd, readable on a terminal.

The JSON lines are Elastic Common Schema (ECS), rendered by the ``ecs-logging`` library, so that
Filebeat ships them unchanged (``deploy/filebeat.yml``). Our dotted event name is ``message``
and ``event.action``; the fields ECS has a place for go there (the user, an error, a duration)
and every other field of ours goes under ``roster_admin.``.

slixmpp and aiohttp log through the standard library; their records are routed through the
same processors so an operator's ELK sees one consistent stream.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import TYPE_CHECKING, Literal, TextIO, TypeAlias, cast

import ecs_logging
import structlog

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from structlog.typing import EventDict, Processor, WrappedLogger

    ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
    # An ECS field (or several) for one of ours; None: not for this value.
    _Mapping: TypeAlias = Callable[[object], dict[str, object] | None]

LogFormat = Literal["auto", "json", "console"]

# Where our own fields go in ECS lines: one custom namespace, as ECS advises, named after us.
NAMESPACE = "roster_admin"
SERVICE = "http-roster-admin"

# Libraries that are chatty at INFO about things the service already reports itself. At
# debug they speak: an operator chasing a stanza problem needs slixmpp's stanza lines.
_QUIET_LIBRARIES = {"slixmpp": logging.WARNING, "aiohttp.access": logging.WARNING}


def setup(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's root logger once, at start."""
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    timestamp = "@timestamp" if use_json else "timestamp"
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key=timestamp),
    ]
    render: list[Processor]
    if use_json:
        # Typed for a dict where structlog passes a MutableMapping: to_ecs returns a dict.
        render = [to_ecs, cast("Processor", ecs_logging.StructlogFormatter())]
    else:
        render = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(),
        ]

    structlog.configure(
        processors=[
            # First: a debug line at info level then costs a level check, not a timestamp
            # and a dict (syncs log at debug per user; 10,000 users refresh at once).
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()], processors=render
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, quiet in _QUIET_LIBRARIES.items():
        debugging = root.level <= logging.DEBUG
        logging.getLogger(name).setLevel(root.level if debugging else max(quiet, root.level))


def to_ecs(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """One record as ECS fields, dotted, for ``ecs_logging.StructlogFormatter`` to nest and
    render: what it names stays ``event`` (the formatter makes it ``message``)."""
    from_structlog = event_dict.pop("_from_structlog", False)
    event_dict.pop("_record", None)
    exc_info = _exc_info(event_dict.pop("exc_info", None))
    ecs: EventDict = {
        "event": str(event_dict.pop("event")),
        "@timestamp": event_dict.pop("@timestamp"),
        "log.level": event_dict.pop("level"),
        "log.logger": event_dict.pop("logger"),
        "service.name": SERVICE,
    }
    if from_structlog:
        # Our call sites log a dotted name: what an operator searches for and alerts on.
        # A library's record is free text, with no action of its own.
        ecs["event.action"] = ecs["event"]
    if exc_info is not None:
        kind, error, trace = exc_info
        ecs["error.type"] = _type_name(kind)
        ecs["error.message"] = str(error)
        ecs["error.stack_trace"] = "".join(traceback.format_exception(kind, error, trace))
    for key, value in event_dict.items():
        mapping = _ECS_FIELDS.get(key)
        mapped = None if mapping is None else mapping(value)
        if mapped is None:
            ecs[f"{NAMESPACE}.{key}"] = value
        else:
            for field, ecs_value in mapped.items():
                ecs.setdefault(field, ecs_value)
    return ecs


def _user(value: object) -> dict[str, object] | None:
    # ``user=`` is a bare JID, ``username=`` its local part: both become user.name, so one
    # search finds a user's every event.
    name, at, domain = str(value).partition("@")
    return {"user.name": name, "user.domain": domain} if at else {"user.name": name}


def _nanoseconds(per_second: int) -> _Mapping:
    def duration(value: object) -> dict[str, object] | None:
        if isinstance(value, int | float):
            return {"event.duration": round(value * per_second)}
        return None

    return duration


# Our field names that ECS has a field for (event.duration is in nanoseconds); a mapping that
# does not apply to a value (None) leaves the field in our namespace.
_ECS_FIELDS: dict[str, _Mapping] = {
    "user": _user,
    "username": _user,
    "error": lambda value: {"error.message": str(value)},
    "duration_ms": _nanoseconds(1_000_000),
    "duration_s": _nanoseconds(1_000_000_000),
}


def _exc_info(value: object) -> ExcInfo | None:
    """What ``exc_info=`` says, as the standard library's triple (True: the one in flight)."""
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and value[0] is not None:
        return value
    if value is True:
        kind, error, trace = sys.exc_info()
        if kind is not None and error is not None:
            return kind, error, trace
    return None


def _type_name(kind: type[BaseException]) -> str:
    """The exception's type as ECS shows it: fully qualified, but builtins by their name."""
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"
