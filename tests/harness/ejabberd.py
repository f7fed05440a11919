"""Real ejabberd servers for tests, configured with deploy/ejabberd/http_roster_admin.yml.

Two builds are supported: ejabberd 23.01 (Debian 12) and 24.12 (bookworm-backports), each
unpacked with the Erlang 25 it runs on by scripts/bootstrap-ejabberd into
.servers/ejabberd-<version>.

A server is a bare Erlang VM running ejabberd: no ejabberdctl (which, as root, switches to the
ejabberd user and Debian's directories) and no epmd (the node takes its distribution port
from the command line, on loopback, with a random cookie). Every listener binds 127.0.0.1, on
free ports; config, Mnesia spool and logs live in a work directory. The main config stands in
for an operator's ejabberd.yml and includes the shipped file the way that file tells
operators to, with the test's names and ports substituted.

A server starts in one to two seconds; tests share one per build and session
(tests/integration/ejabberd_fixtures.py): each test uses fresh accounts. The process lifecycle
(start, stop, restart) is synchronous and must run on the main thread: the kernel kills the
VM when the thread that spawned it ends (PR_SET_PDEATHSIG), so that no VM outlives the tests.
The admin API helpers are coroutines.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

from tests.harness.files import read_from, replace_once, size, sub_once, tails
from tests.harness.prosody import die_with_parent, free_ports

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy" / "ejabberd"
SERVERS_DIR = REPO_ROOT / ".servers"

BUILD_NAMES = ("23.01", "24.12")

#: The names and ports the shipped configuration uses; the harness substitutes its own.
DEPLOY_CONFIG = "http_roster_admin.yml"
# Edits of the shipped config that must find exactly what they change.
_replace_once = functools.partial(replace_once, where=DEPLOY_CONFIG)
_sub_once = functools.partial(sub_once, where=DEPLOY_CONFIG)
DEPLOY_DOMAIN = "example.org"
DEPLOY_COMPONENT = "roster.example.org"
DEPLOY_SECRET = "change-me-to-a-long-random-secret"
DEPLOY_COMPONENT_PORT = 5347
DEPLOY_API_PORT = 5288
#: The account the shipped file names for the API's optional authentication.
DEPLOY_API_USER = "roster-admin"

#: The XEP-0356 namespace each build advertises privileges in.
PRIVILEGE_NAMESPACES = {"23.01": "urn:xmpp:privilege:1", "24.12": "urn:xmpp:privilege:2"}

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
API_TIMEOUT = 10.0
_POLL_INTERVAL = 0.02
_PORT_ATTEMPTS = 3
_LISTENING = "Start accepting TCP connections at 127.0.0.1:{port} for {module}"


class EjabberdError(RuntimeError):
    """An ejabberd server failed; the message carries the relevant log lines."""


class _PortBusyError(EjabberdError):
    """ejabberd could not bind one of its ports."""


class EjabberdApiError(EjabberdError):
    """The admin API answered a command with an HTTP error."""

    def __init__(self, command: str, status: int, body: str) -> None:
        super().__init__(f"{command}: HTTP {status}: {body}")
        self.command = command
        self.status = status
        self.body = body


@dataclass(frozen=True)
class EjabberdBuild:
    """One unpacked ejabberd and the Erlang it runs on."""

    name: str
    root: Path

    @property
    def erl(self) -> Path:
        """Erlang's launcher, pointed into the folder by scripts/bootstrap-ejabberd."""
        return self.root / "bin" / "erl"

    @property
    def ebin(self) -> Path | None:
        """ejabberd's ebin directory (under usr/lib/<multiarch>/), None when absent."""
        found = sorted(self.root.glob(f"usr/lib/*/ejabberd-{self.name}*/ebin/ejabberd.app"))
        return found[0].parent if found else None

    @property
    def erl_libs(self) -> Path:
        """What ERL_LIBS must name for Erlang to find ejabberd (its other libraries sit in
        Erlang's own lib directory)."""
        if self.ebin is None:
            raise EjabberdError(f"{self.root}: ejabberd not found")
        return self.ebin.parent.parent

    @property
    def version(self) -> str:
        """The package version, e.g. "23.01-1" (from ejabberd.app)."""
        if self.ebin is None:
            raise EjabberdError(f"{self.root}: ejabberd not found")
        found = re.search(r'\{vsn,\s*"([^"]+)"\}', (self.ebin / "ejabberd.app").read_text())
        if found is None:
            raise EjabberdError(f"{self.ebin}/ejabberd.app names no version")
        return found.group(1)

    @property
    def id(self) -> str:
        return f"ejabberd-{self.name}"

    @property
    def privilege_namespace(self) -> str:
        return PRIVILEGE_NAMESPACES[self.name]

    def problems(self) -> list[str]:
        """What is missing for this build to run our configuration (empty when usable)."""
        if not self.erl.exists():
            return [f"{self.erl} not found"]
        if self.ebin is None:
            return [f"no ejabberd-{self.name}*/ebin under {self.root}/usr/lib"]
        missing = [
            f"missing {self.ebin / f'{mod}.beam'}"
            for mod in ("mod_privilege", "mod_admin_extra", "mod_http_api", "mod_roster")
            if not (self.ebin / f"{mod}.beam").exists()
        ]
        if not missing and not self.version.startswith(f"{self.name}-"):
            missing.append(f"{self.root} holds ejabberd {self.version}, not {self.name}")
        return missing


def known_builds(servers_dir: Path = SERVERS_DIR) -> dict[str, EjabberdBuild]:
    """Where each supported build is expected, whether or not it is installed."""
    return {name: EjabberdBuild(name, servers_dir / f"ejabberd-{name}") for name in BUILD_NAMES}


def require_build(name: str, servers_dir: Path = SERVERS_DIR) -> EjabberdBuild:
    """The build called `name`, or EjabberdError saying how to install it."""
    build = known_builds(servers_dir)[name]
    problems = build.problems()
    if problems:
        raise EjabberdError(
            f"ejabberd {name} is not usable ({'; '.join(problems)}): run scripts/bootstrap"
        )
    return build


# --- configuration --------------------------------------------------------------------------


def render_deploy_config(
    *,
    domain: str,
    component_jid: str,
    component_secret: str,
    component_port: int,
    api_port: int,
    api_auth: bool = False,
    extra_components: Sequence[str] = (),
) -> str:
    """deploy/ejabberd/http_roster_admin.yml with the names and ports an operator would set.

    api_auth: switch the API permission to the commented alternative the file documents
    (ejabberd credentials of DEPLOY_API_USER, besides loopback). extra_components: test-only
    component domains that get the same privileges (added to the roster_component ACL).
    """
    text = (DEPLOY_DIR / DEPLOY_CONFIG).read_text()
    names = {DEPLOY_COMPONENT: component_jid, DEPLOY_DOMAIN: domain}
    text = re.sub(
        "|".join(re.escape(n) for n in names),  # the longer name first
        lambda m: names[m.group(0)],
        text,
    )
    text = _replace_once(
        text, f'password: "{DEPLOY_SECRET}"', f"password: {_yaml_str(component_secret)}"
    )
    text = _replace_once(text, f"port: {DEPLOY_COMPONENT_PORT}\n", f"port: {component_port}\n")
    text = _replace_once(text, f"port: {DEPLOY_API_PORT}\n", f"port: {api_port}\n")
    if api_auth:
        # The "ip:" line makes way for the commented "access:" block right under it.
        text = _sub_once(
            text,
            r"(?m)^( +)ip: 127\.0\.0\.1/8\n((?:\1# .*\n)+)",
            lambda m: re.sub(r"(?m)^( +)# ", r"\1", m.group(2)),
        )
    if extra_components:
        servers = "".join(f"      - {jid}\n" for jid in (component_jid, *extra_components))
        text = _replace_once(
            text,
            f"  roster_component:\n    server: {component_jid}\n",
            f"  roster_component:\n    server:\n{servers}",
        )
    return text


def _yaml_str(value: str | Path) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(str(value))


# --- the admin API's argument shapes ----------------------------------------------------------

#: One roster item as the admin API reports it: {"name": str | None, "groups": sorted
#: list[str], "subscription": "none" | "to" | "from" | "both", "pending": "none" | "in" |
#: "out" | "both"}.
ApiRosterItem = dict[str, Any]


def add_rosteritem_args(
    build_name: str,
    user: str,
    domain: str,
    contact: str,
    *,
    name: str,
    groups: Iterable[str],
    subscription: str,
) -> dict[str, Any]:
    """add_rosteritem's JSON arguments: 23.01 takes the groups as one string split at ";",
    24.12 (the newest API version, its default) takes a list."""
    contact_user, _, contact_host = contact.rpartition("@")
    args: dict[str, Any] = {
        "localuser": user,
        "localhost": domain,
        "user": contact_user,
        "host": contact_host,
        "nick": name,
        "subs": subscription,
    }
    groups = list(groups)
    if build_name == "23.01":
        if any(";" in group for group in groups):
            raise ValueError(
                f"ejabberd 23.01's add_rosteritem cannot name a group with ';': {groups}"
            )
        args["group"] = ";".join(groups)
    else:
        args["groups"] = groups
    return args


def parse_get_roster(build_name: str, rows: list[dict[str, Any]]) -> dict[str, ApiRosterItem]:
    """get_roster's answer -> {contact: ApiRosterItem}.

    23.01 answers one row per group of each contact ({"jid", "nick", "subscription", "ask",
    "group"}; "group" is "" for a contact in no group); 24.12 one row per contact ({"jid",
    "nick", "subscription", "pending", "groups"}). Both report items the API added with
    "undefined" where a roster request would show no pending request.
    """
    roster: dict[str, ApiRosterItem] = {}
    for row in rows:
        pending = row["ask"] if build_name == "23.01" else row["pending"]
        groups = [row["group"]] if build_name == "23.01" else row["groups"]
        item = roster.setdefault(
            row["jid"],
            {
                "name": row["nick"] or None,
                "groups": [],
                "subscription": row["subscription"],
                "pending": "none" if pending == "undefined" else pending,
            },
        )
        item["groups"] = sorted({*item["groups"], *(g for g in groups if g)})
    return roster


# --- the server -------------------------------------------------------------------------------


class EjabberdServer:
    """One ejabberd VM with our shipped configuration, on loopback.

    Use ``with EjabberdServer(...) as server`` or call start() and stop() (on the main thread).
    Besides the component's own listener (component_jid), a second one serves a test-only
    component domain (probe_jid) with the same privileges, so that a test component can work
    next to the component under test.
    """

    def __init__(
        self,
        build: EjabberdBuild,
        workdir: Path,
        *,
        domain: str = "example.test",
        component_jid: str = "roster.example.test",
        component_secret: str | None = None,
        probe_jid: str = "probe.example.test",
        api_auth: bool = False,
        loglevel: str = "info",
    ) -> None:
        self.build = build
        self.workdir = workdir
        self.domain = domain
        self.component_jid = component_jid
        # Random: tests/harness/log_secrets.py looks for it in the component's logs.
        self.component_secret = component_secret or secrets.token_urlsafe(24)
        self.probe_jid = probe_jid
        self.probe_secret = self.component_secret
        self.api_auth = api_auth
        self.loglevel = loglevel
        # The account the API's optional authentication names, with a random password.
        self.api_user = f"{DEPLOY_API_USER}@{domain}"
        self.api_password = secrets.token_urlsafe(16)
        self.node = f"ejabberd_{secrets.token_hex(4)}@localhost"
        self.cookie = secrets.token_urlsafe(24)
        self._pick_ports()
        self.config_path = workdir / "ejabberd.yml"
        self.deploy_config_path = workdir / DEPLOY_CONFIG
        self.spool_dir = workdir / "spool"
        self.log_dir = workdir / "log"
        self.log_path = self.log_dir / "ejabberd.log"
        self.console_path = workdir / "console.log"
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None

    def __repr__(self) -> str:
        return (
            f"<EjabberdServer {self.build.id} {self.domain} c2s={self.c2s_port} "
            f"component={self.component_port} probe={self.probe_port} api={self.api_port} "
            f"node={self.node} dist={self.dist_port}>"
        )

    def _pick_ports(self) -> None:
        (self.c2s_port, self.component_port, self.probe_port, self.api_port, self.dist_port) = (
            free_ports(5)
        )

    def server_section(self) -> dict[str, object]:
        """The component's [server] section for this server (see tests/harness/component.py)."""
        section: dict[str, object] = {"kind": "ejabberd", "api_url": self.api_url}
        if self.api_auth:
            section.update(api_user=self.api_user, api_password=self.api_password)
        return section

    @property
    def api_url(self) -> str:
        """The admin API's base URL: POST {api_url}/<command> with JSON arguments."""
        return f"http://127.0.0.1:{self.api_port}/api"

    @property
    def ports(self) -> frozenset[int]:
        """Every port the server listens on (Erlang distribution included)."""
        return frozenset(
            (self.c2s_port, self.component_port, self.probe_port, self.api_port, self.dist_port)
        )

    @property
    def pid(self) -> int:
        """The running VM's process id."""
        if self._process is None:
            raise EjabberdError(f"{self!r} is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- configuration ----------------------------------------------------------------------

    def render_config(self) -> str:
        """The main config: what an operator's ejabberd.yml has (Debian's defaults that matter
        here, on loopback and without TLS), then the shipped file via include_config_file."""
        return f"""\
# Generated by tests/harness/ejabberd.py for one test server ({self.build.id}).
hosts:
  - {_yaml_str(self.domain)}
loglevel: {self.loglevel}
log_rotate_count: 0
# Tests never talk to other servers: contacts in made-up domains must not cause s2s attempts.
s2s_access: none

listen:
  -
    port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
  # The test-only component domain, on its own listener like the shipped one.
  -
    port: {self.probe_port}
    ip: "127.0.0.1"
    module: ejabberd_service
    hosts:
      {self.probe_jid}:
        password: {_yaml_str(self.probe_secret)}

api_permissions:
  # What the harness itself calls (accounts and readiness), from loopback. The roster
  # commands stay with the shipped file's permission, so the tests exercise it.
  "test harness":
    from:
      - mod_http_api
    who:
      ip: 127.0.0.1/8
    what:
      - register
      - unregister
      - status

# Debian's default ejabberd.yml loads these (and mod_roster, which the shipped file replaces).
modules:
  mod_admin_extra: {{}}
  mod_http_api: {{}}

# What an operator adds (deploy/ejabberd/{DEPLOY_CONFIG}, names and ports substituted):
include_config_file: {_yaml_str(self.deploy_config_path)}
"""

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.deploy_config_path.write_text(
            render_deploy_config(
                domain=self.domain,
                component_jid=self.component_jid,
                component_secret=self.component_secret,
                component_port=self.component_port,
                api_port=self.api_port,
                api_auth=self.api_auth,
                extra_components=(self.probe_jid,),
            )
        )
        self.config_path.write_text(self.render_config())

    def _command(self) -> list[str]:
        return [
            str(self.build.erl),
            "-sname", self.node,
            "-setcookie", self.cookie,
            # No epmd: the node listens for distribution on this port, on loopback only.
            "-start_epmd", "false",
            "-erl_epmd_port", str(self.dist_port),
            "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
            "-noinput",
            "-mnesia", "dir", json.dumps(str(self.spool_dir)),
            "-s", "ejabberd",
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "EJABBERD_CONFIG_PATH": str(self.config_path),
            "EJABBERD_LOG_PATH": str(self.log_path),
            "ERL_LIBS": str(self.build.erl_libs),
            "ERL_CRASH_DUMP": str(self.workdir / "erl_crash.dump"),
            # Erlang runs $HOME/.erlang at startup: keep the developer's out of the test VM.
            "HOME": str(self.workdir),
        }

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn the VM; return once every listener accepts and the API answers.

        The first start wipes the spool (Mnesia keeps accounts and rosters) and, should another
        process have taken a port since they were picked, moves to new ones; later starts
        (restart()) keep spool and ports, or fail.
        """
        if self.running:
            raise EjabberdError(f"{self!r} is already running")
        first = self.start_seconds is None
        if first:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._start_once(timeout)
            except _PortBusyError:
                if not first or attempt == _PORT_ATTEMPTS - 1:
                    raise
                shutil.rmtree(self.spool_dir, ignore_errors=True)
                self._pick_ports()
            else:
                break
        if first and self.api_auth:
            self._post("register", self._account_args(DEPLOY_API_USER, self.api_password))

    def _start_once(self, timeout: float) -> None:
        self.write_config()
        self.log_dir.mkdir(exist_ok=True)
        log_offset = size(self.log_path)
        console_offset = size(self.console_path)
        began = time.monotonic()
        self._console = self.console_path.open("ab")
        self._process = process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self._environment(),
            preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl() call: safe after fork
        )
        # ejabberd logs each listener once it is bound: that line, not a connection attempt,
        # proves that the port is ours.
        wanted = [
            _LISTENING.format(port=self.c2s_port, module="ejabberd_c2s"),
            _LISTENING.format(port=self.component_port, module="ejabberd_service"),
            _LISTENING.format(port=self.probe_port, module="ejabberd_service"),
            _LISTENING.format(port=self.api_port, module="ejabberd_http"),
        ]
        deadline = began + timeout
        while True:
            output = read_from(self.console_path, console_offset)
            if "eaddrinuse" in output:
                self.stop()
                raise _PortBusyError(f"{self!r}: a port is taken\n{self.log_tail()}")
            if all(line in read_from(self.log_path, log_offset) for line in wanted):
                break
            if process.poll() is not None:
                self._cleanup()
                raise EjabberdError(
                    f"{self!r} exited with {process.returncode} while starting\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EjabberdError(f"{self!r} not ready after {timeout} s\n{self.log_tail()}")
            time.sleep(_POLL_INTERVAL)
        self._post("status", {})
        self.start_seconds = time.monotonic() - began

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (the VM shuts ejabberd down cleanly), wait, then SIGKILL if need be.
        Keeps the spool."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._process is not None:
            self._process.wait()
            self._process = None
        if self._console is not None:
            self._console.close()
            self._console = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown at all. Keeps the spool."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self._cleanup()

    def restart(self) -> None:
        """Stop and start again on the same ports, keeping accounts and rosters."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the admin API --------------------------------------------------------------------

    def _post(
        self,
        command: str,
        args: dict[str, Any],
        *,
        auth: bool = False,
        timeout: float = API_TIMEOUT,
    ) -> Any:
        request = urllib.request.Request(  # noqa: S310 - always our own http://127.0.0.1 URL
            f"{self.api_url}/{command}",
            data=json.dumps(args).encode(),
            # A Host naming the XMPP domain: 24.12 looks up its API options for the host the
            # request names, and logs a warning for every call naming another.
            headers={"Content-Type": "application/json", "Host": self.domain},
            method="POST",
        )
        if auth:
            token = base64.b64encode(f"{self.api_user}:{self.api_password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise EjabberdApiError(command, exc.code, exc.read().decode(errors="replace")) from None

    async def api(self, command: str, *, auth: bool | None = None, **args: Any) -> Any:
        """POST {api_url}/<command> with ``args`` as JSON (as given: see the roster helpers
        for the shapes that differ between builds); the decoded answer, EjabberdApiError on
        an HTTP error. auth: send the API account's credentials (default: when api_auth)."""
        send_auth = self.api_auth if auth is None else auth
        return await asyncio.to_thread(self._post, command, args, auth=send_auth)

    def _account_args(self, user: str, password: str | None = None) -> dict[str, str]:
        args = {"user": user, "host": self.domain}
        if password is not None:
            args["password"] = password
        return args

    async def register(self, user: str, password: str) -> str:
        """Create the account `user`@domain; returns its bare JID."""
        await asyncio.to_thread(self._post, "register", self._account_args(user, password))
        return f"{user}@{self.domain}"

    async def unregister(self, user: str) -> None:
        """Delete the account `user`@domain with its roster (its sessions are closed)."""
        await asyncio.to_thread(self._post, "unregister", self._account_args(user))

    async def add_roster_item(
        self,
        user: str,
        contact: str,
        *,
        name: str = "",
        groups: Iterable[str] = (),
        subscription: str = "both",
    ) -> None:
        """add_rosteritem: `contact` (a bare JID) into `user`@domain's roster."""
        args = add_rosteritem_args(
            self.build.name,
            user,
            self.domain,
            contact,
            name=name,
            groups=groups,
            subscription=subscription,
        )
        await self._roster_command("add_rosteritem", args)

    async def remove_roster_item(self, user: str, contact: str) -> None:
        """delete_rosteritem: `contact` out of `user`@domain's roster (absent: no error)."""
        contact_user, _, contact_host = contact.rpartition("@")
        args = {"localuser": user, "localhost": self.domain}
        await self._roster_command(
            "delete_rosteritem", {**args, "user": contact_user, "host": contact_host}
        )

    async def roster(self, user: str) -> dict[str, ApiRosterItem]:
        """get_roster: `user`@domain's roster as stored, pending requests included."""
        rows = await self.api("get_roster", user=user, host=self.domain)
        return parse_get_roster(self.build.name, rows)

    async def _roster_command(self, command: str, args: dict[str, Any]) -> None:
        # Both answer 0 for success (ejabberd's "rescode"), 1 for failure.
        result = await self.api(command, **args)
        if result != 0:
            raise EjabberdApiError(command, 200, json.dumps(result))

    # --- logs --------------------------------------------------------------------------------

    def log_size(self) -> int:
        """The log's current length: pass it to log_since() to see what a test caused."""
        return size(self.log_path)

    def log_since(self, offset: int) -> str:
        return read_from(self.log_path, offset)

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the VM's console output and of ejabberd's log, for failures."""
        return tails(
            (self.console_path, self.log_path), lines, empty=f"(no output in {self.workdir})"
        )
