"""The operator commands, against the real HTTP listener with the sync core replaced by a
recorder: what they print, and their exit codes."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from component import config
from component.__main__ import main
from component.check import CheckResult, ItemChange
from component.cli import commands
from component.cli.service import service_url
from component.config import ListenerConfig
from component.errors import ConfigError, ServiceError
from component.roster import Contact
from tests.unit.test_config import GOOD
from tests.unit.test_http_api import TOKEN, Recorder, listening

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROOT = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    """Standard output when it is a terminal."""

    def isatty(self) -> bool:
        return True


def config_text(port: int, token: str = TOKEN) -> str:
    return GOOD.replace("port = 5285", f"port = {port}").replace('"t0ken"', f'"{token}"')


@pytest.fixture(name="recorder")
def fixture_recorder() -> Recorder:
    return Recorder()


@pytest.fixture(name="port")
async def fixture_port(recorder: Recorder) -> AsyncIterator[int]:
    """The service's listener, for real on loopback, with max_users 50."""
    async with listening(recorder, ListenerConfig(port=1, token=TOKEN, max_users=50)) as port:
        yield port


@pytest.fixture(name="cfg")
def fixture_cfg(port: int, tmp_path: Path) -> config.Config:
    """The config a command gets: the same file as the service's."""
    path = tmp_path / "config.toml"
    path.write_text(config_text(port))
    return config.load(path, environ={})


def users(count: int) -> list[str]:
    return [f"user{i:03}" for i in range(count)]


# --- check ---------------------------------------------------------------------------------


async def test_check_prints_each_difference_and_exits_1(
    cfg: config.Config, recorder: Recorder
) -> None:
    """Adds, removals, renames, regroups, subscription and ask drift and pending requests, one
    line each, under the user; a roster in sync says so; exit code 1."""
    stored = Contact("bob@example.test", "Bob", frozenset({"Team"}), "to", ask=True)
    wanted = Contact("bob@example.test", "Robert", frozenset({"Team", "Friends"}))
    carol = Contact("carol@example.test", "Carol", subscription="from")
    recorder.checks["alice"] = CheckResult(
        "alice",
        changes=(
            ItemChange(
                wanted.jid, "update", stored, wanted, ("name", "groups", "subscription", "ask")
            ),
            ItemChange(carol.jid, "remove", was=carol),
            ItemChange("dave@example.test", "add", now=Contact("dave@example.test")),
            ItemChange("mallory@example.test", "pending_request"),
        ),
        contacts=2,
        warnings=("contact 'x': not a valid JID, skipped",),
    )
    out = io.StringIO()
    assert await commands.check(cfg, ["Alice", "bob"], out) == commands.EXIT_DIFFERS
    assert out.getvalue().splitlines() == [
        "alice: 4 differences",
        '  ~ bob@example.test  name: "Bob" -> "Robert"',
        '  ~ bob@example.test  groups: ["Team"] -> ["Friends", "Team"]',
        "  ~ bob@example.test  subscription: to -> both",
        "  ~ bob@example.test  ask: subscribe -> (none)",
        '  - carol@example.test  name "Carol", groups [], subscription from',
        "  + dave@example.test  name (none), groups []",
        "  ! mallory@example.test  pending inbound subscription request",
        "  warning: contact 'x': not a valid JID, skipped",
        "bob: in sync (2 contacts)",
        "2 users: 1 in sync, 1 differ, 0 failed",
    ]
    assert recorder.checked == ["alice", "bob"]
    assert recorder.refreshed == []


async def test_check_in_sync_exits_0(cfg: config.Config) -> None:
    """Every roster in sync: exit code 0, one line per user, no summary for one user."""
    out = io.StringIO()
    assert await commands.check(cfg, ["alice"], out) == commands.EXIT_OK
    assert out.getvalue() == "alice: in sync (2 contacts)\n"


async def test_check_that_could_not_compare_exits_2(cfg: config.Config, recorder: Recorder) -> None:
    """A roster that could not be checked (the fetch failed) outweighs differences: exit 2."""
    recorder.checks["alice"] = CheckResult("alice", error="fetch failed: HTTP 500")
    recorder.checks["bob"] = CheckResult("bob", changes=(ItemChange("x@y", "pending_request"),))
    out = io.StringIO()
    assert await commands.check(cfg, ["alice", "bob"], out) == commands.EXIT_ERROR
    lines = out.getvalue().splitlines()
    assert lines[0] == "alice: error: fetch failed: HTTP 500"
    assert lines[-1] == "2 users: 0 in sync, 1 differ, 1 failed"


# --- refresh -------------------------------------------------------------------------------


async def test_refresh_sums_the_counts_of_its_chunks(
    cfg: config.Config, recorder: Recorder
) -> None:
    """A long list goes in chunks; the printed answer is the refresh endpoint's, summed; a
    failed user makes the exit code 1."""
    recorder.failing = {"user007", "user021"}
    out = io.StringIO()
    code = await commands.refresh(cfg, [*users(30), "USER001"], out, chunk_size=8)
    assert code == commands.EXIT_DIFFERS
    assert json.loads(out.getvalue()) == {
        "status": "ok",
        "message": "roster update complete",
        "updated": 28,
        "errors": 2,
        "failed": ["user007", "user021"],
    }
    assert sorted(recorder.refreshed) == users(30)


async def test_refresh_where_every_user_failed_says_error(
    cfg: config.Config, recorder: Recorder
) -> None:
    """No user updated at all: status error, as the endpoint says it."""
    recorder.failing = {"alice"}
    out = io.StringIO()
    assert await commands.refresh(cfg, ["alice"], out) == commands.EXIT_DIFFERS
    assert json.loads(out.getvalue())["status"] == "error"


async def test_refresh_all_online_asks_who_is_online(
    cfg: config.Config, recorder: Recorder
) -> None:
    """--all-online refreshes exactly the users online now; none online is a success."""
    out = io.StringIO()
    assert await commands.refresh(cfg, None, out) == commands.EXIT_OK
    assert json.loads(out.getvalue())["updated"] == 0
    recorder.online = ["zoe", "john"]
    assert await commands.refresh(cfg, None, io.StringIO()) == commands.EXIT_OK
    assert sorted(recorder.refreshed) == ["john", "zoe"]


async def test_progress_bar_only_on_a_terminal_for_long_lists(cfg: config.Config) -> None:
    """A terminal sees a progress bar for a long list, then the counts; a pipe or a short
    list gets the counts alone."""
    terminal = Terminal()
    await commands.refresh(cfg, users(commands.LONG_LIST + 10), terminal, chunk_size=5)
    assert f"/{commands.LONG_LIST + 10}" in terminal.getvalue()
    assert terminal.getvalue().endswith('"failed": []}\n')
    piped = io.StringIO()
    await commands.refresh(cfg, users(commands.LONG_LIST + 10), piped, chunk_size=5)
    short = Terminal()
    await commands.refresh(cfg, users(commands.LONG_LIST), short, chunk_size=5)
    assert [json.loads(out.getvalue())["updated"] for out in (piped, short)] == [30, 20]


# --- the service's refusals ----------------------------------------------------------------


async def test_unready_service_is_an_error(cfg: config.Config, recorder: Recorder) -> None:
    """503: the reasons, and nothing is done."""
    recorder.ready = False
    recorder.reasons = ["not connected to the XMPP server"]
    with pytest.raises(ServiceError, match="not ready: not connected to the XMPP server"):
        await commands.refresh(cfg, ["alice"], io.StringIO())
    with pytest.raises(ServiceError, match="not ready"):
        await commands.check(cfg, ["alice"], io.StringIO())


async def test_wrong_token_is_an_error(port: int, tmp_path: Path) -> None:
    """401: says which setting to compare."""
    path = tmp_path / "config.toml"
    path.write_text(config_text(port, token="other"))
    cfg = config.load(path, environ={})
    with pytest.raises(ServiceError, match=r"refused the token: listener\.token"):
        await commands.check(cfg, ["alice"], io.StringIO())


async def test_a_bad_username_is_refused_before_any_request(
    cfg: config.Config, recorder: Recorder
) -> None:
    """A name the server could never have stops the command; nothing is refreshed."""
    with pytest.raises(ValueError, match="not a valid username"):
        await commands.refresh(cfg, ["alice", "a b"], io.StringIO())
    assert recorder.refreshed == []


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:5285"),  # noqa: S104 -- a config value, not a bind
        ("::", "http://[::1]:5285"),
        ("::1", "http://[::1]:5285"),
        ("10.1.2.3", "http://10.1.2.3:5285"),
    ],
)
def test_a_listener_on_every_address_is_reached_on_loopback(host: str, url: str) -> None:
    """0.0.0.0 and :: are reached through loopback; a given address as it is."""
    assert str(service_url(ListenerConfig(host=host))) == url


def test_a_listener_on_any_free_port_cannot_be_reached() -> None:
    """listener.port = 0 leaves nowhere to connect: a config error saying so."""
    with pytest.raises(ConfigError, match=r"listener\.port = 0"):
        service_url(ListenerConfig(port=0))


# --- main: arguments, config, exit codes -----------------------------------------------------


@pytest.fixture(name="path")
def fixture_path(tmp_path: Path) -> Path:
    """A config whose listener nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "config.toml"
    path.write_text(config_text(port))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["refresh"],
        ["refresh", "alice", "--all-online"],
        ["refresh", "alice", "--chunk-size", "0"],
        ["check"],
        ["check", "alice", "--config"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], path: Path) -> None:
    """USERs or --all-online (not both), at least one USER to check, a chunk of one or more."""
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--config", str(path)] if argv[-1] != "--config" else argv)
    assert exited.value.code == 2


@pytest.mark.parametrize("command", [["check", "alice"], ["refresh", "--all-online"], ["config"]])
def test_every_command_exits_2_on_a_bad_config(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad config: one line naming the key, exit code 2, before anything is asked."""
    path = tmp_path / "config.toml"
    path.write_text(GOOD.replace("[users]", "[user]"))
    assert main([*command, "--config", str(path)]) == 2
    assert capsys.readouterr().err == f"http-roster-admin: {path}: missing key users\n"


def test_an_unreachable_service_exits_2(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: one line saying where it looked, exit code 2."""
    assert main(["check", "alice", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("http-roster-admin: cannot reach the service at http://127.0.0.1:")
    assert "connection refused" in err


def test_config_prints_the_effective_config_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defaults filled in, each secret masked whether from the file or the environment (which
    is named), and loadable TOML."""
    ejabberd = 'kind = "ejabberd"\napi_url = "http://x/api"\napi_user = "admin@example.test"'
    path = tmp_path / "config.toml"
    path.write_text(
        GOOD.replace('kind = "prosody"', ejabberd).replace(
            'roster_url = "', 'token = "webapp-file-token"\nroster_url = "'
        )
    )
    monkeypatch.setenv(config.API_PASSWORD_ENV, "env-password")
    monkeypatch.setenv(config.SECRET_ENV, "env-secret")
    assert main(["config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    for secret in ("s3cret", "env-secret", "t0ken", "webapp-file-token", "env-password"):
        assert secret not in out
    shown = tomllib.loads(out)
    assert shown["component"]["secret"] == f"******** (from {config.SECRET_ENV})"
    assert shown["server"]["api_password"] == f"******** (from {config.API_PASSWORD_ENV})"
    assert shown["webapp"]["token"] == shown["listener"]["token"] == "********"
    assert shown["server"]["delegate_roster"] is False
    assert (shown["sync"]["max_age"], shown["listener"]["max_users"]) == (60, 10_000)
    assert out.startswith(f"# {path}: valid")


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m component ARGS`` as a process: its real exit code."""
    return subprocess.run(
        [sys.executable, "-m", "component", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_run_exits_2_on_a_bad_config_and_70_on_a_crash(tmp_path: Path) -> None:
    """systemd tells them apart: a bad config (2, not restarted) from a crash, here the
    listener's port taken by another process (70, logged with its traceback)."""
    path = tmp_path / "config.toml"
    path.write_text(GOOD.replace("[users]", "[user]"))
    bad = run_command("run", "--config", str(path))
    assert (bad.returncode, bad.stderr) == (2, f"http-roster-admin: {path}: missing key users\n")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        text = config_text(taken.getsockname()[1])
        path.write_text(text.replace("[server]", '[log]\nformat = "json"\n[server]'))
        crash = run_command("run", "--config", str(path))
    assert crash.returncode == 70
    events = [json.loads(line) for line in crash.stdout.splitlines()]
    assert events[-1]["event"]["action"] == "app.crashed"
    assert "address already in use" in events[-1]["error"]["stack_trace"]
