"""The quick-start scripts as a user runs them: what bootstrap leaves of Debian's system-wide
Prosody, and the demo stopping cleanly on a signal and printing in order through a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "scripts" / "bootstrap"
DEMO = ROOT / "scripts" / "demo"
STATE_FILE = ROOT / ".servers" / "system-prosody"
# With these on the host, update-rc.d would change the host's links whatever DPKG_ROOT says.
HOST_WIDE_TOOLS = (Path("/usr/lib/insserv/insserv"), Path("/sbin/insserv"), Path("/sbin/openrc"))

# Generous bounds, only there so that a broken demo fails the test instead of hanging it.
DEMO_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Where the demo's output says what it started.
C2S_PORT = r"on 127\.0\.0\.1:(\d+) \(c2s\)"
HTTP_PORT = r"http://127\.0\.0\.1:(\d+)/roster_admin/refresh"
WORKDIR = r"component config (\S+)/config\.toml"

# --- bootstrap and the system-wide Prosody ----------------------------------------------------


def boot_starts(root: Path) -> tuple[str, list[str]]:
    """Whether prosody starts at boot under ``root``: systemd's verdict and sysvinit's S links."""
    systemd = subprocess.run(
        ["systemctl", f"--root={root}", "is-enabled", "prosody.service"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    links = sorted(str(path.relative_to(root)) for path in root.glob("etc/rc[2-5].d/S*prosody"))
    return systemd.stdout.strip() or systemd.stderr.strip(), links


def configure_package(root: Path) -> None:
    """What prosody's postinst does when installed or upgraded, as its debhelper snippets do:
    sysvinit links by update-rc.d; the systemd unit enabled unless it was found disabled."""
    env = {**os.environ, "DPKG_ROOT": str(root), "DPKG_MAINTSCRIPT_PACKAGE": "prosody"}

    def helper(*args: str, check: bool = True) -> int:
        return subprocess.run(args, env=env, check=check, timeout=30).returncode

    helper("update-rc.d", "prosody", "defaults")
    helper("deb-systemd-helper", "unmask", "prosody.service")
    was_enabled = helper(
        "deb-systemd-helper", "--quiet", "was-enabled", "prosody.service", check=False
    )
    helper(
        "deb-systemd-helper", "enable" if was_enabled == 0 else "update-state", "prosody.service"
    )


def test_bootstrap_keeps_the_prosody_it_installed_from_starting_at_boot() -> None:
    """A Prosody that bootstrap installed does not start at boot, under systemd nor sysvinit."""
    if not STATE_FILE.exists():
        pytest.fail(f"{STATE_FILE} is missing: run scripts/bootstrap", pytrace=False)
    state = STATE_FILE.read_text().strip()
    if state == "present-before-bootstrap":
        pytest.skip("Prosody was installed before bootstrap ran: how it boots is the operator's")
    assert state == "installed-by-bootstrap"
    assert boot_starts(Path("/")) == ("disabled", [])


def test_disabling_lasts_through_package_upgrades(tmp_path: Path) -> None:
    """On a scratch root, bootstrap's disable_system_prosody turns off both boot starts for good."""
    if present := [str(tool) for tool in HOST_WIDE_TOOLS if tool.exists()]:
        pytest.skip(f"update-rc.d would act on this host's own links: {', '.join(present)}")
    for path in ("lib/systemd/system/prosody.service", "etc/init.d/prosody"):
        if not (Path("/") / path).exists():
            pytest.fail(f"/{path} is missing: run scripts/bootstrap", pytrace=False)
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path("/") / path, tmp_path / path)
    configure_package(tmp_path)  # a fresh install, as bootstrap's apt-get does
    systemd, links = boot_starts(tmp_path)
    assert systemd == "enabled"
    assert links

    subprocess.run(
        ["bash", "-c", 'source "$0" && disable_system_prosody', str(BOOTSTRAP)],
        env={**os.environ, "DPKG_ROOT": str(tmp_path)},
        check=True,
        timeout=30,
    )
    assert boot_starts(tmp_path) == ("disabled", [])
    configure_package(tmp_path)  # an upgrade
    assert boot_starts(tmp_path) == ("disabled", [])


# --- the demo -----------------------------------------------------------------------------


def demo_env() -> dict[str, str]:
    """The caller's environment, but with stdout buffered as Python does for a pipe."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state field on (state, ppid, ...), or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid``, each with its start time (telling a reused pid apart)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None:
            table[int(entry.name)] = (int(stat[1]), stat[19])
    found: dict[int, str] = {}
    parents = [pid]
    while parents:
        parent = parents.pop()
        for child, (ppid, started) in table.items():
            if ppid == parent and child not in found:
                found[child] = started
                parents.append(child)
    return found


def alive(processes: dict[int, str]) -> dict[int, str]:
    """Those of ``processes`` still running (zombies are dead), with their command lines."""
    running: dict[int, str] = {}
    for pid, started in processes.items():
        stat = proc_stat(pid)
        if stat is not None and stat[19] == started and stat[0] != "Z":
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                running[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return running


async def survivors(processes: dict[int, str], within: float = 10.0) -> dict[int, str]:
    """Those of ``processes`` still running after up to ``within`` seconds (none, normally)."""
    with contextlib.suppress(TimeoutError):
        await eventually(lambda: not alive(processes), within)
    return alive(processes)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def found(pattern: str, lines: list[str]) -> str:
    """The first group of ``pattern`` in the demo's output."""
    match = re.search(pattern, "\n".join(lines))
    assert match, f"no {pattern!r} in:\n" + "\n".join(lines)
    return match.group(1)


def index_of(lines: list[str], wanted: str) -> int:
    """The index of the first line containing ``wanted``."""
    return next(i for i, line in enumerate(lines) if wanted in line)


@dataclass
class RunningDemo:
    """``scripts/demo --keep-running`` once it says it is running, and what it started."""

    process: asyncio.subprocess.Process
    lines: list[str]
    children: dict[int, str]
    workdir: Path
    ports: tuple[int, int]  # Prosody's c2s port, the component's HTTP listener

    async def finish(self) -> list[str]:
        """Wait for the demo to exit (it and its children must close its stdout); all lines."""
        try:
            out, _ = await asyncio.wait_for(self.process.communicate(), STOP_TIMEOUT)
        except TimeoutError:
            pytest.fail(
                f"demo still running (or its output held open) after {STOP_TIMEOUT} s; "
                f"processes left: {alive({self.process.pid: '', **self.children})}"
            )
        self.lines += ANSI.sub("", out.decode(errors="replace")).splitlines()
        return self.lines


@pytest.fixture(name="running_demo")
async def fixture_running_demo() -> AsyncIterator[RunningDemo]:
    """The demo, up and idle, in its own session (as a shell runs a job); killed if left."""
    process = await asyncio.create_subprocess_exec(
        str(DEMO),
        "--keep-running",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=demo_env(),
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    children: dict[int, str] = {}
    try:
        try:
            async with asyncio.timeout(DEMO_TIMEOUT):
                while not lines or not lines[-1].startswith("Ctrl-C"):
                    line = await process.stdout.readline()
                    if not line:
                        pytest.fail("the demo ended early:\n" + "\n".join(lines))
                    lines.append(ANSI.sub("", line.decode(errors="replace")).rstrip("\n"))
        except TimeoutError:
            pytest.fail(f"no 'Ctrl-C' line within {DEMO_TIMEOUT} s:\n" + "\n".join(lines))
        children = descendants(process.pid)
        commands = alive(children).values()
        assert any("prosody" in command for command in commands), commands
        assert any("-m component run" in command for command in commands), commands
        yield RunningDemo(
            process,
            lines,
            children,
            Path(found(WORKDIR, lines)),
            (int(found(C2S_PORT, lines)), int(found(HTTP_PORT, lines))),
        )
    finally:
        # Whatever is left below the demo, including what a broken demo would orphan.
        left = alive({**children, **descendants(process.pid)})
        if process.returncode is None:
            process.kill()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)
        if workdir := re.search(WORKDIR, "\n".join(lines)):
            shutil.rmtree(workdir.group(1), ignore_errors=True)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)


def ctrl_c(pid: int) -> None:
    # A terminal sends SIGINT to the whole foreground job: the demo and all it started.
    os.killpg(pid, signal.SIGINT)


@pytest.mark.parametrize(
    ("send", "signum"),
    [(kill, signal.SIGTERM), (ctrl_c, signal.SIGINT)],
    ids=["kill", "ctrl-c"],
)
async def test_demo_stops_everything_it_started_on_a_signal(
    running_demo: RunningDemo, send: Callable[[int], None], signum: signal.Signals
) -> None:
    """SIGTERM or Ctrl-C: Prosody and the component stop, ports and temp folder are freed."""
    send(running_demo.process.pid)
    lines = await running_demo.finish()
    assert running_demo.process.returncode == 128 + signum, lines[-20:]
    assert alive(running_demo.children) == {}
    assert not any(listening(port) for port in running_demo.ports)
    assert not running_demo.workdir.exists()


async def test_demo_killed_outright_takes_its_children_along(running_demo: RunningDemo) -> None:
    """SIGKILL: Prosody and the component die with the demo (its temp folder stays behind)."""
    os.kill(running_demo.process.pid, signal.SIGKILL)
    assert await survivors(running_demo.children) == {}
    await running_demo.finish()
    assert running_demo.process.returncode == -signal.SIGKILL
    assert not any(listening(port) for port in running_demo.ports)


async def test_demo_piped_prints_its_story_in_order_with_the_component_logs() -> None:
    """`scripts/demo | tee`: each story line comes out before what it causes in the component."""
    process = await asyncio.create_subprocess_exec(
        str(DEMO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=demo_env(),
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), DEMO_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = ANSI.sub("", out.decode(errors="replace")).splitlines()
    assert process.returncode == 0, lines
    # Each line's cause: the story announces the refresh and then posts it; the component
    # logs it before answering; the story prints the answer.
    assert (
        index_of(lines, "The web app renames bob")
        < index_of(lines, "refresh.done")
        < index_of(lines, "POST /roster_admin/refresh -> 200")
    ), lines
    assert "carol@example.test     removed" in "\n".join(lines)
