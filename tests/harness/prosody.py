# Test helpers take default timeouts so that a broken server fails a test instead of hanging it.
# ruff: noqa: ASYNC109
"""Real Prosody servers for tests, configured with the snippets shipped in deploy/prosody/.

Two builds are supported: Debian 12's Prosody 0.12 (system-wide, /usr/bin/prosody) and
Prosody 13 from bookworm-backports unpacked by scripts/bootstrap into .servers/prosody-13.

Every server listens on loopback only, on free ports, with all of its files (config, data,
pid, logs) in a work directory. Prosody and prosodyctl are always run with --config: without
it they would start the system-wide server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import re
import secrets
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

from tests.harness.files import read_from, replace_once, size, sub_once, tails

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy" / "prosody"
#: Test-only Prosody modules (never shipped).
TEST_MODULES_DIR = Path(__file__).resolve().parent / "prosody_modules"
SERVERS_DIR = REPO_ROOT / ".servers"

BUILD_NAMES = ("0.12", "13")

#: The names the shipped configuration uses; the harness substitutes its own.
DEPLOY_CONFIG = "http_roster_admin.cfg.lua"
# Edits of the shipped config that must find exactly what they change.
_replace_once = functools.partial(replace_once, where=DEPLOY_CONFIG)
_sub_once = functools.partial(sub_once, where=DEPLOY_CONFIG)
DEPLOY_DOMAIN = "example.org"
DEPLOY_COMPONENT = "roster.example.org"
DEPLOY_SECRET = "change-me-to-a-long-random-secret"
DEPLOY_RULES_DIR = "/etc/prosody/http_roster_admin/"

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
_POLL_INTERVAL = 0.02
_PORT_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class StoredRoster:
    """A user's roster as Prosody stores it, including what roster GETs do not show."""

    subscriptions: dict[str, str]  # contact -> "none" | "to" | "from" | "both"
    asking: frozenset[str]  # contacts with a pending outgoing request (ask="subscribe")
    pending_in: frozenset[str]  # JIDs whose subscription requests await the user's answer


@dataclass(frozen=True)
class StoredItem:
    """One contact as Prosody stores it: what a roster GET shows of it."""

    name: str | None
    groups: frozenset[str]
    subscription: str  # "none" | "to" | "from" | "both"


#: Prints each roster data file given (arguments) as tab-separated lines: the argument's
#: number, the contact, its subscription, its name, then its groups.
_DUMP_ITEMS_LUA = """\
for index, path in ipairs(arg) do
    local ok, roster = pcall(dofile, path)
    for jid, item in pairs(ok and roster or {}) do
        if jid then
            local groups = {}
            for group in pairs(item.groups or {}) do groups[#groups + 1] = group end
            print(index, jid, item.subscription or "none", item.name or "",
                table.concat(groups, "\t"))
        end
    end
end
"""

#: Prints a roster data file (argument 1) as tab-separated lines.
_DUMP_ROSTER_LUA = """\
for jid, item in pairs(dofile(arg[1])) do
    if jid then
        print("item", jid, item.subscription or "none", item.ask or "")
    else -- roster[false]: the roster's own data
        for requester in pairs(item.pending or {}) do print("pending", requester) end
    end
end
"""


class ProsodyError(RuntimeError):
    """A Prosody server or tool failed; the message carries the relevant log lines."""


class _PortBusyError(ProsodyError):
    """Prosody could not bind one of its ports."""


@dataclass(frozen=True)
class ProsodyBuild:
    """One installed Prosody: its launchers and where its modules live."""

    name: str
    prosody: Path
    prosodyctl: Path
    source_dir: Path

    @property
    def modules_dir(self) -> Path:
        return self.source_dir / "modules"

    @property
    def version(self) -> str:
        return (self.source_dir / "prosody.version").read_text().strip()

    @property
    def id(self) -> str:
        return f"prosody-{self.name}"

    def problems(self) -> list[str]:
        """What is missing for this build to run our configuration (empty when usable)."""
        needed = [
            self.prosody,
            self.prosodyctl,
            self.source_dir / "prosody.version",
            *(
                self.modules_dir / f"mod_{mod}" / f"mod_{mod}.lua"
                for mod in ("privilege", "delegation", "firewall")
            ),
        ]
        if not self.prosody.exists():
            return [f"{self.prosody} not found"]
        missing = [f"missing {path}" for path in needed if not path.exists()]
        if not missing and not self.version.startswith(f"{self.name}."):
            missing.append(f"{self.source_dir} holds version {self.version}, not {self.name}")
        return missing


def known_builds(servers_dir: Path = SERVERS_DIR) -> dict[str, ProsodyBuild]:
    """Where each supported build is expected, whether or not it is installed."""
    p13 = servers_dir / "prosody-13"
    return {
        "0.12": ProsodyBuild(
            name="0.12",
            prosody=Path("/usr/bin/prosody"),
            prosodyctl=Path("/usr/bin/prosodyctl"),
            source_dir=Path("/usr/lib/prosody"),
        ),
        "13": ProsodyBuild(
            name="13",
            prosody=p13 / "bin" / "prosody",
            prosodyctl=p13 / "bin" / "prosodyctl",
            source_dir=p13 / "usr" / "lib" / "prosody",
        ),
    }


def find_builds(servers_dir: Path = SERVERS_DIR) -> dict[str, ProsodyBuild]:
    """The supported builds that are installed and usable, by name ("0.12", "13")."""
    return {name: b for name, b in known_builds(servers_dir).items() if not b.problems()}


def require_build(name: str, servers_dir: Path = SERVERS_DIR) -> ProsodyBuild:
    """The build called `name`, or ProsodyError saying how to install it."""
    build = known_builds(servers_dir)[name]
    problems = build.problems()
    if problems:
        raise ProsodyError(
            f"Prosody {name} is not usable ({'; '.join(problems)}): run scripts/bootstrap"
        )
    return build


def render_deploy_config(
    *,
    domain: str,
    component_jid: str,
    component_secret: str,
    delegate_roster: bool,
    roster_privilege: str = "both",
) -> str:
    """deploy/prosody/http_roster_admin.cfg.lua with the names an operator would substitute.

    For the non-delegated mode, do what its comments tell an operator: delete the
    "delegations" line and enable block_roster_sets.pfw. ``roster_privilege`` other than
    "both" stands for an operator's mistake.
    """
    text = (DEPLOY_DIR / DEPLOY_CONFIG).read_text()
    names = {DEPLOY_COMPONENT: component_jid, DEPLOY_DOMAIN: domain}
    text = re.sub(
        "|".join(re.escape(n) for n in names),  # the longer name first
        lambda m: names[m.group(0)],
        text,
    )
    text = _replace_once(text, f'"{DEPLOY_SECRET}"', _lua_str(component_secret))
    text = text.replace(DEPLOY_RULES_DIR, f"{DEPLOY_DIR}/")
    if roster_privilege != "both":
        text = _replace_once(text, 'roster = "both";', f"roster = {_lua_str(roster_privilege)};")
    if not delegate_roster:
        text = _sub_once(text, r"(?m)^\s*delegations\s*=.*\n", "")
        text = _sub_once(text, r'(?m)^(\s*)-- ("[^"]*/block_roster_sets\.pfw";)', r"\1\2")
    return text


def _lua_str(value: str | Path) -> str:
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _storage_name(name: str) -> str:
    """A file or folder name as Prosody's internal storage writes it (bytes other than ASCII
    letters and digits as %xx)."""
    return "".join(
        chr(byte) if chr(byte).isascii() and chr(byte).isalnum() else f"%{byte:02x}"
        for byte in name.encode()
    )


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that are free on 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Have the kernel kill the server if the test process dies without stopping it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ProsodyServer:
    """One Prosody process with our shipped configuration, on loopback.

    Use ``async with ProsodyServer(...) as server`` or call start() and stop().
    """

    def __init__(
        self,
        build: ProsodyBuild,
        workdir: Path,
        *,
        domain: str = "example.test",
        component_jid: str = "roster.example.test",
        component_secret: str | None = None,
        delegate_roster: bool = True,
        roster_privilege: str = "both",
        s2s: bool = False,
        shipped_config: bool = True,
        test_modules: Sequence[str] = (),
    ) -> None:
        self.build = build
        self.workdir = workdir
        self.domain = domain
        self.component_jid = component_jid
        # Random: tests/harness/log_secrets.py looks for it in the component's logs.
        self.component_secret = component_secret or secrets.token_urlsafe(24)
        self.delegate_roster = delegate_roster
        self.roster_privilege = roster_privilege
        self.s2s = s2s
        # False: a plain server with none of our snippet, standing in for somebody else's.
        self.shipped_config = shipped_config
        # Test-only modules from TEST_MODULES_DIR to load besides those the options imply.
        self.test_modules = list(test_modules)
        self._pick_ports()
        self.s2s_routes_path = workdir / "s2s_routes.txt"
        self.config_path = workdir / "prosody.cfg.lua"
        self.deploy_config_path = workdir / DEPLOY_CONFIG
        self.data_dir = workdir / "data"
        self.log_path = workdir / "prosody.log"
        self.console_path = workdir / "prosody.console"
        self.pid_path = workdir / "prosody.pid"
        # A unix socket path must stay under ~108 bytes, which pytest's tmp paths can exceed.
        self.admin_socket_path = Path(tempfile.gettempdir()) / f"prosody-{uuid.uuid4().hex}.sock"
        self.start_seconds: float | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._console: IO[bytes] | None = None

    def __repr__(self) -> str:
        return (
            f"<ProsodyServer {self.build.id} {self.domain} c2s={self.c2s_port} "
            f"component={self.component_port} s2s={self.s2s_port} "
            f"delegate_roster={self.delegate_roster}>"
        )

    def _pick_ports(self) -> None:
        ports = free_ports(3 if self.s2s else 2)
        self.c2s_port, self.component_port = ports[:2]
        self.s2s_port = ports[2] if self.s2s else None

    def federate_with(self, other: ProsodyServer) -> None:
        """Let this server and `other` reach each other over loopback s2s (both directions:
        dialback verifies a stream by connecting back to the sending domain)."""
        for server, peer in ((self, other), (other, self)):
            if server.s2s_port is None:
                raise ProsodyError(f"{server!r} was created without s2s=True")
            server.workdir.mkdir(parents=True, exist_ok=True)
            with server.s2s_routes_path.open("a") as routes:
                routes.write(f"{peer.domain} {peer.s2s_port}\n")

    def server_section(self) -> dict[str, object]:
        """The component's [server] section for this server (see tests/harness/component.py)."""
        return {"kind": "prosody", "delegate_roster": self.delegate_roster}

    @property
    def pid(self) -> int:
        """The running server's process id."""
        if self._process is None:
            raise ProsodyError(f"{self!r} is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def render_config(self) -> str:
        """The main config file: test-only globals, then the shipped snippet via Include."""
        # admin_shell + admin_socket: shell() edits a running server's state, as an admin would.
        modules = ["roster", "saslauth", "disco", "ping", "admin_shell", "admin_socket"]
        if self.build.name == "0.12":
            modules.append("posix")  # writes the pidfile on 0.12; deprecated (a no-op) on 13
        test_modules = list(self.test_modules)
        if self.s2s_port is None:
            s2s = """\
s2s_ports = {}
-- Tests never talk to other servers: no outgoing s2s, even for remote contacts' presence.
modules_disabled = { "s2s" }"""
        else:
            modules.append("dialback")
            test_modules.append("test_s2s_loopback")
            s2s = f"""\
s2s_ports = {{ {self.s2s_port} }}
s2s_interfaces = {{ "127.0.0.1" }}
s2s_secure_auth = false
-- Made-up domains: mod_test_s2s_loopback reaches the servers listed here on loopback.
test_s2s_routes_file = {_lua_str(self.s2s_routes_path)}"""
        modules += test_modules
        # Operators copy the shipped module to /usr/local/lib/prosody/modules, which Debian's
        # prosody.cfg.lua lists in plugin_paths; tests load it from deploy/prosody instead.
        paths = "; ".join(_lua_str(path) for path in (DEPLOY_DIR, TEST_MODULES_DIR))
        plugin_paths = f"plugin_paths = {{ {paths} }}"
        lua_modules = "; ".join(_lua_str(m) for m in modules)
        if self.shipped_config:
            shipped = f"""
-- What an operator installs (deploy/prosody/{DEPLOY_CONFIG}, names substituted):
Include {_lua_str(self.deploy_config_path)}"""
        else:
            shipped = ""
        return f"""\
-- Generated by tests/harness/prosody.py for one test server ({self.build.id}).
run_as_root = true
pidfile = {_lua_str(self.pid_path)}
admin_socket = {_lua_str(self.admin_socket_path)}
data_path = {_lua_str(self.data_dir)}
log = {{ debug = {_lua_str(self.log_path)} }}

interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {self.component_port} }}
component_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{}}
s2s_direct_tls_ports = {{}}
http_ports = {{}}
https_ports = {{}}

c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"

modules_enabled = {{ {lua_modules} }}
{plugin_paths}
{s2s}

-- The operator's own host; the shipped snippet below reopens it and adds its options.
VirtualHost {_lua_str(self.domain)}
{shipped}
"""

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        (self.workdir / "certs").mkdir(exist_ok=True)  # none needed; avoids a logged error
        self.deploy_config_path.write_text(
            render_deploy_config(
                domain=self.domain,
                component_jid=self.component_jid,
                component_secret=self.component_secret,
                delegate_roster=self.delegate_roster,
                roster_privilege=self.roster_privilege,
            )
        )
        self.config_path.write_text(self.render_config())

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn Prosody in the foreground; return once it listens on both ports.

        Should another process have taken one of the ports since they were picked, the first
        start moves to new ones; later starts (restart()) keep their ports or fail.
        """
        if self.running:
            raise ProsodyError(f"{self!r} is already running")
        for attempt in range(_PORT_ATTEMPTS):
            try:
                await self._start_once(timeout)
            except _PortBusyError:
                if self.start_seconds is not None or attempt == _PORT_ATTEMPTS - 1:
                    raise
                self._pick_ports()
            else:
                return

    async def _start_once(self, timeout: float) -> None:
        self.write_config()
        log_offset = size(self.log_path)
        began = time.monotonic()
        self._console = self.console_path.open("ab")
        self._process = process = await asyncio.create_subprocess_exec(
            str(self.build.prosody),
            "--config",
            str(self.config_path),
            "-F",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._console,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=die_with_parent,  # one prctl() call: safe between fork and exec
        )
        # Prosody logs each listening service once bound (line-buffered): that line, not a
        # connection attempt, proves that the port is ours.
        wanted = [f"Activated service 'c2s' on [127.0.0.1]:{self.c2s_port}"]
        if self.shipped_config:  # the component listener comes with the Component host
            wanted.append(f"Activated service 'component' on [127.0.0.1]:{self.component_port}")
        if self.s2s_port is not None:
            wanted.append(f"Activated service 's2s' on [127.0.0.1]:{self.s2s_port}")
        deadline = began + timeout
        while True:
            log_text = read_from(self.log_path, log_offset)
            if "Failed to open server port" in log_text:
                await self.stop()
                raise _PortBusyError(f"{self!r}: a port is taken\n{self.log_tail()}")
            if all(line in log_text for line in wanted):
                break
            if process.returncode is not None:
                await self._cleanup()
                raise ProsodyError(
                    f"{self!r} exited with {process.returncode} while starting\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                await self.stop()
                raise ProsodyError(f"{self!r} not ready after {timeout} s\n{self.log_tail()}")
            await asyncio.sleep(_POLL_INTERVAL)
        self.start_seconds = time.monotonic() - began

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait, then SIGKILL if it is still running. Keeps the data directory."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        await self._cleanup()

    async def _cleanup(self) -> None:
        if self._process is not None and self._process.returncode is None:
            await self._process.wait()
        self._process = None
        if self._console is not None:
            self._console.close()
            self._console = None

    async def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown at all. Keeps the data directory."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        await self._cleanup()

    async def restart(self) -> None:
        """Stop and start again on the same ports, keeping users and rosters."""
        await self.stop()
        await self.start()

    async def prosodyctl(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``prosodyctl --config <ours> *args``; returns its output, raises on failure."""
        process = await asyncio.create_subprocess_exec(
            str(self.build.prosodyctl),
            "--config",
            str(self.config_path),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.workdir,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ProsodyError(f"prosodyctl {args[0]} timed out after {timeout} s") from None
        text = out.decode(errors="replace")
        if process.returncode != 0:
            raise ProsodyError(f"prosodyctl {' '.join(args[:2])} failed: {text.strip()}")
        return text

    async def shell(self, lua: str) -> str:
        """Run Lua inside the running server (prosodyctl shell); returns what it printed."""
        return await self.prosodyctl("shell", f"> {lua}")

    async def register(self, user: str, password: str) -> str:
        """Create the account `user`@domain; returns its bare JID."""
        if not self.config_path.exists():
            self.write_config()
        await self.prosodyctl("register", user, self.domain, password)
        return f"{user}@{self.domain}"

    def add_accounts(self, users: Iterable[str], password: str) -> None:
        """Create many accounts at once, as internal storage files (prosodyctl register takes
        a Lua process per account); the server reads them on demand, running or not."""
        accounts = self.data_dir / _storage_name(self.domain) / "accounts"
        accounts.mkdir(parents=True, exist_ok=True)
        for user in users:
            (accounts / f"{_storage_name(user)}.dat").write_text(
                f'return {{\n\t["password"] = "{password}";\n}};\n'
            )

    def _roster_path(self, user: str) -> Path:
        return self.data_dir / _storage_name(self.domain) / "roster" / f"{_storage_name(user)}.dat"

    async def stored_items(
        self, users: Sequence[str], timeout: float = 30.0
    ) -> dict[str, dict[str, StoredItem]]:
        """Each user's stored contacts (one Lua process for all). Groups are read as
        tab-separated, so group names must not contain tabs."""
        paths = [str(self._roster_path(user)) for user in users]
        out = await _run_lua(_DUMP_ITEMS_LUA, paths, timeout, "cannot read rosters")
        rosters: dict[str, dict[str, StoredItem]] = {user: {} for user in users}
        for line in out.splitlines():
            index, contact, subscription, name, *groups = line.split("\t")
            rosters[users[int(index) - 1]][contact] = StoredItem(
                name or None, frozenset(g for g in groups if g), subscription
            )
        return rosters

    async def stored_roster(self, user: str, timeout: float = 10.0) -> StoredRoster:
        """What the internal storage holds for `user`@domain's roster (saved at each change).

        Read from the data file with the Lua that runs Prosody: pending inbound requests and
        "ask" flags never show in roster GETs.
        """
        path = self._roster_path(user)
        subscriptions: dict[str, str] = {}
        asking: set[str] = set()
        pending_in: set[str] = set()
        if path.exists():
            out = await _run_lua(_DUMP_ROSTER_LUA, [str(path)], timeout, f"cannot read {path}")
            for line in out.splitlines():
                kind, contact, *rest = line.split("\t")
                if kind == "pending":
                    pending_in.add(contact)
                else:
                    subscriptions[contact] = rest[0]
                    if rest[1]:
                        asking.add(contact)
        return StoredRoster(subscriptions, frozenset(asking), frozenset(pending_in))

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's console output and log, for failure messages."""
        return tails(
            (self.console_path, self.log_path), lines, empty=f"(no output in {self.workdir})"
        )

    def log_text(self) -> str:
        """The whole debug log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


#: What the prosody_factory fixture gives: ``await factory(delegate_roster=False)``.
ServerFactory = Callable[..., Awaitable[ProsodyServer]]


async def _run_lua(script: str, args: list[str], timeout: float, failure: str) -> str:
    """The output of ``script`` run by the Lua that runs Prosody; ProsodyError on failure."""
    process = await asyncio.create_subprocess_exec(
        "lua5.4", "-", *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(script.encode()), timeout)
    if process.returncode != 0:
        raise ProsodyError(f"{failure}: {err.decode(errors='replace')}")
    return out.decode()
