"""Secrets never reach the component's logs: a pytest plugin (loaded by tests/conftest.py).

For the whole session, logging is set up as the service sets it up under systemd (ECS JSON
lines), at debug, into one file: every component run in-process writes there, and so do
slixmpp and aiohttp. Components run as processes hand their output over with
``component_output``. Every secret of every config the harness writes (``configured``, called
by tests/harness/component.py) is looked for in all of it at the end of the session; one found
fails the session, naming the secret's key and the line.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import structlog

from component import logs

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from pathlib import Path

# The config keys whose values must never be logged.
SECRET_KEYS = (
    ("component", "secret"),
    ("webapp", "token"),
    ("listener", "token"),
    ("server", "api_password"),
)
# Shorter secrets could turn up in a log by chance: the harness's are random and longer.
MIN_LENGTH = 16
MAX_REPORTED = 20


@dataclass
class Watch:
    """The secrets configured in one session, and the component output to look for them in."""

    log_file: Path
    secrets: dict[str, str] = field(default_factory=dict)  # secret -> what it is
    outputs: dict[str, list[str]] = field(default_factory=dict)  # label -> lines

    def configured(self, config: Mapping[str, Mapping[str, object]]) -> None:
        for section, key in SECRET_KEYS:
            secret = config.get(section, {}).get(key)
            if not isinstance(secret, str):
                continue
            if len(secret) < MIN_LENGTH:
                raise ValueError(
                    f"{section}.{key} {secret!r} is too short to be looked for in the logs: "
                    "use secrets.token_urlsafe()"
                )
            self.secrets[secret] = f"{section}.{key}"
        server = config.get("server", {})
        user, password = server.get("api_user"), server.get("api_password")
        if isinstance(user, str) and isinstance(password, str):
            # What the Authorization header of an API call carries.
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.secrets[basic] = "server.api_password (in an Authorization: Basic header)"

    def leaks(self) -> list[str]:
        """Each line that holds a secret: where, which secret, and the line's start."""
        if not self.secrets:
            return []
        pattern = re.compile("|".join(map(re.escape, self.secrets)))
        with self.log_file.open(errors="replace") as log_file:
            found = list(_matches(str(self.log_file), log_file, pattern, self.secrets))
        for label, lines in self.outputs.items():
            found += _matches(label, lines, pattern, self.secrets)
        return found


def _matches(
    label: str, lines: Iterable[str], pattern: re.Pattern[str], secrets: Mapping[str, str]
) -> Iterator[str]:
    for number, line in enumerate(lines, 1):
        if match := pattern.search(line):
            around = line[max(match.start() - 200, 0) : match.end() + 50].strip()
            yield f"{secrets[match.group()]} in {label}, line {number}: ...{around}..."


_watches: list[Watch] = []


def configured(config: Mapping[str, Mapping[str, object]]) -> None:
    """Remember the secrets of a component config the harness wrote (in a test session)."""
    if _watches:
        _watches[-1].configured(config)


def component_output(label: str, line: str) -> None:
    """A line a component run as a process wrote (in a test session)."""
    if _watches:
        _watches[-1].outputs.setdefault(label, []).append(line)


@pytest.fixture(scope="session", autouse=True)
def _secrets_never_logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The session's component logs, as the service writes them, checked for secrets at the
    end (a failure shows as an error at the teardown of the last test)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    watch = Watch(tmp_path_factory.mktemp("component-logs") / "component.jsonl")
    _watches.append(watch)
    try:
        with watch.log_file.open("w") as stream:
            logs.setup("debug", "json", stream=stream)
            try:
                yield
            finally:
                root.handlers[:] = handlers
                root.setLevel(level)
                structlog.configure(**config)
    finally:
        _watches.remove(watch)
    if found := watch.leaks():
        shown = "\n".join(found[:MAX_REPORTED])
        more = f"\n... and {len(found) - MAX_REPORTED} more" if len(found) > MAX_REPORTED else ""
        pytest.fail(f"secrets in the component's logs:\n{shown}{more}", pytrace=False)
