"""Fixtures shared by the unit tests."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import pytest
import structlog

from component import logs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture(name="log_setup")
def fixture_log_setup() -> Iterator[Callable[..., io.StringIO]]:
    """Set logging up as the service does; returns what it writes. The logging set up before
    (the session's, see tests/log_secrets.py) is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in ("slixmpp", "aiohttp.access")}
    config = structlog.get_config()

    def setup(
        at: str = "info", fmt: logs.LogFormat = "json", out: io.StringIO | None = None
    ) -> io.StringIO:
        out = out or io.StringIO()
        logs.setup(at, fmt, stream=out)
        return out

    yield setup
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
    structlog.configure(**config)
