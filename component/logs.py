"""Logging: one structured stream on stdout, JSON lines under systemd, readable on a terminal.

slixmpp and aiohttp log through the standard library; their records are routed through the
same processors so an operator's ELK sees one consistent stream.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Literal, TextIO

import structlog

if TYPE_CHECKING:
    from structlog.typing import Processor

LogFormat = Literal["auto", "json", "console"]

# Libraries that are chatty at INFO about things the service already reports itself. At
# debug they speak: an operator chasing a stanza problem needs slixmpp's stanza lines.
_QUIET_LIBRARIES = {"slixmpp": logging.WARNING, "aiohttp.access": logging.WARNING}


def setup(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's root logger once, at start."""
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if use_json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()

    structlog.configure(
        processors=[
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
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, quiet in _QUIET_LIBRARIES.items():
        debugging = root.level <= logging.DEBUG
        logging.getLogger(name).setLevel(root.level if debugging else max(quiet, root.level))
