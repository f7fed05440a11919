"""The session check of tests/harness/log_secrets.py, run on small inner sessions: a secret the
harness configured that reaches the component's logs fails the session; no secret, no failure."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import pytest

from tests.harness import log_secrets

if TYPE_CHECKING:
    from pathlib import Path

ARGS = ("-p", "tests.harness.log_secrets", "-p", "no:asyncio")
SECRET = "inner-session-secret-0123456789"


def inner_session(pytester: pytest.Pytester, config: object, logging: str) -> pytest.RunResult:
    """A session whose one test configures a component with ``config`` and then logs."""
    pytester.makepyfile(
        f"""
        import logging

        import structlog

        from tests.harness import log_secrets


        def test_the_component_runs():
            log_secrets.configured({config!r})
            {logging}
        """
    )
    return pytester.runpytest(*ARGS)


@pytest.mark.parametrize(
    "logging",
    [
        f'structlog.get_logger("component.app").info("app.starting", secret="{SECRET}")',
        f'logging.getLogger("slixmpp.xmlstream").debug("SEND: <handshake>{SECRET}</handshake>")',
        f'log_secrets.component_output("a process", "{{\\"message\\": \\"{SECRET}\\"}}")',
    ],
    ids=["structlog", "standard-library", "process-output"],
)
def test_a_logged_secret_fails_the_session(pytester: pytest.Pytester, logging: str) -> None:
    """Logged by our code, by a library, or written by a component process: the session fails
    at its end, naming the secret's key and the line."""
    result = inner_session(pytester, {"component": {"secret": SECRET}}, logging)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*secrets in the component's logs:", f"component.secret in *{SECRET}*"]
    )


def test_an_api_password_sent_as_basic_auth_is_found(pytester: pytest.Pytester) -> None:
    """The API password is also looked for as an Authorization: Basic header carries it."""
    user, password = "admin@example.test", SECRET
    header = base64.b64encode(f"{user}:{password}".encode()).decode()
    result = inner_session(
        pytester,
        {"server": {"api_user": user, "api_password": password}},
        f'structlog.get_logger("x").debug("http.request", authorization="Basic {header}")',
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*server.api_password (in an Authorization: Basic header)*"])


def test_logs_without_secrets_pass(pytester: pytest.Pytester) -> None:
    """Logging what is not a secret leaves the session green."""
    result = inner_session(
        pytester,
        {"component": {"secret": SECRET}},
        'structlog.get_logger("x").info("sync.done", user="alice@example.test")',
    )
    result.assert_outcomes(passed=1)


def test_a_guessable_secret_is_refused(tmp_path: Path) -> None:
    """A short secret could appear in a log by chance: the harness must use random ones."""
    watch = log_secrets.Watch(tmp_path / "component.jsonl")
    with pytest.raises(ValueError, match=r"server\.api_password 'wrong' is too short"):
        watch.configured({"server": {"api_password": "wrong"}})
