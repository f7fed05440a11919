"""Benchmark: the real component against a real server, figures as medians of repeated runs.

    PYTHONPATH=. .venv/bin/python scripts/bench.py [--server prosody-13] [--users 500]
        [--contacts 20] [--clients 50] [--repeats 3] [--in-server-module PATH] [--json FILE]

Each run starts everything afresh on loopback: the server with the shipped configuration
(Prosody 13 by default; --server prosody-0.12, ejabberd-24.12, ejabberd-23.01), the web app
(scripts/bench_webapp.py, its own process) with N users of M contacts, the component as a
real process (``python -m component run``), and K clients (scripts/bench_xmpp.py). Modes,
each with its own server and component: the component delegated, not delegated, and (Prosody,
with --in-server-module) Prosody's mod_http_roster_admin instead of the component.

Figures (README, "Benchmarks", says how each is measured):
- the server's raw write limit: privileged roster SETs (Prosody) or add_rosteritem calls
  (ejabberd) per second at the best of --windows, before the component connects;
- the same writes as the initial sync (every user's roster) made by the server alone, at that
  window, into a fresh server of their own: the rate the initial sync is compared with (on
  Prosody twice: as privileged SETs, and each user's roster in one request to the shipped
  module, as the component writes);
- initial sync of the N offline users (items/s, and as a ratio to that rate), then a refresh
  of the same N users with nothing changed;
- login: K clients ask for their roster at once; answer latency p50/p95, less the web app's
  own time for the request in between; then the same clients connect and log in again at
  once, within max_age of those logins' syncs (a reconnect storm);
- refresh of the K online users after each lost one contact and gained one: the reply, and
  the moment the clients have every push; the same change made by the server alone (Prosody,
  not delegated, before the component connects: privileged SETs, and one request per user to
  the shipped module; delegated, one request per user once the component has stopped), and
  each run's refresh divided by its own server's;
- CPU (utime+stime) of the component and the server for each of these, the component's RSS,
  requests to the web app and to the server (the component's component_server_requests_total)
  per user.

Nothing is asserted: targets are read off these figures, never enforced by timed tests.
The full size: --users 10000 --contacts 20 --clients 500 --repeats 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import aiohttp
from bench_webapp import roster
from bench_xmpp import BenchClient, BenchComponent, connect_client, connect_component, roster_items

from tests.harness import ejabberd, prosody
from tests.harness.component import write_component_config
from tests.harness.files import replace_once
from tests.harness.prosody import die_with_parent, free_ports

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

    from tests.harness.component import ComponentTarget

ROOT = Path(__file__).resolve().parents[1]
WEBAPP_SCRIPT = Path(__file__).resolve().parent / "bench_webapp.py"
MODULE_NAME = "mod_http_roster_admin.lua"

DOMAIN = "example.test"
PASSWORD = "pw"  # noqa: S105 -- loopback only
TOKEN = "bench-token"  # noqa: S105 -- loopback only
COMPONENT_JID = "roster.example.test"
COMPONENT_SECRET = "bench-component-secret"  # noqa: S105 -- loopback only

SERVERS = {
    "prosody-13": ("prosody", "13"),
    "prosody-0.12": ("prosody", "0.12"),
    "ejabberd-24.12": ("ejabberd", "24.12"),
    "ejabberd-23.01": ("ejabberd", "23.01"),
}
MODES = ("delegated", "not-delegated", "in-server")
MODE_TITLES = {
    "delegated": "delegated",
    "not-delegated": "not delegated",
    "in-server": "in-server module",
}
# Users per request of the bulk endpoint (POST /roster_admin/rosters).
INLINE_CHUNK = 1000
# A hung phase fails the run; the initial sync of 10,000 x 20 takes minutes on a busy machine.
PHASE_TIMEOUT = 1800.0
PUSH_TIMEOUT = 120.0


# --- processes ------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(
                    int(entry.name)
                )
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """utime + stime of the process so far (``tree``: and of its live descendants, as an
    Erlang VM has a few)."""
    total = 0
    for each in _descendants(pid) if tree else [pid]:
        with contextlib.suppress(OSError):
            fields = _stat_fields(each)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used so far (all cores, /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) in MiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        line.split(":")[0]: int(line.split()[1]) / 1024
        for line in lines
        if line.startswith(("VmRSS", "VmHWM"))
    }


async def settle(pids: Iterable[int], *, interval: float = 0.25, limit: float = 30.0) -> None:
    """Wait until these processes are idle (under 4% of a core each, twice in a row)."""
    pids = list(pids)
    deadline = time.monotonic() + limit
    quiet = 0
    before = [cpu_seconds(p, tree=True) for p in pids]
    while quiet < 2 and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        now = [cpu_seconds(p, tree=True) for p in pids]
        busy = any(b - a > 0.04 * interval for a, b in zip(before, now, strict=True))
        quiet = 0 if busy else quiet + 1
        before = now


async def stop_process(process: asyncio.subprocess.Process, grace: float = 15.0) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


# --- the web app -----------------------------------------------------------------------------


class WebApp:
    """scripts/bench_webapp.py in its own process, driven over HTTP."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.port}/contacts/%s"

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, str(WEBAPP_SCRIPT),
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 20)
        if not line.startswith(b"port "):
            raise RuntimeError(f"the web app did not start: {line!r}")
        self.port = int(line.split()[1])

    async def stop(self) -> None:
        if self._process is not None:
            await stop_process(self._process)

    async def _post(self, path: str, data: object) -> Any:
        async with self._http.post(f"http://127.0.0.1:{self.port}{path}", json=data) as response:
            response.raise_for_status()
            return await response.json()

    async def setup(self, users: int, contacts: int, delay: float) -> None:
        await self._post(
            "/admin/setup", {"users": users, "contacts": contacts, "domain": DOMAIN, "delay": delay}
        )

    async def set_generation(self, names: Sequence[str], generation: int) -> None:
        await self._post("/admin/generation", {"users": list(names), "generation": generation})

    async def stats(
        self, *, reset: bool = False, timings: bool = False
    ) -> tuple[int, dict[str, list[list[float]]]]:
        """Requests served, and (``timings``) per user each request's [start, seconds in the
        handler], since the last reset."""
        answer = await self._post("/admin/stats", {"reset": reset, "timings": timings})
        return int(answer["requests"]), answer.get("timings", {})


# --- servers ---------------------------------------------------------------------------------


def _lua(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid Lua string for these values


def _replace_once(text: str, old: str, new: str) -> str:
    return replace_once(text, old, new, where="the harness's Prosody config")


class BenchProsody(prosody.ProsodyServer):
    """The harness's Prosody, logging at info (debug lines would cost Prosody CPU), or with
    mod_http_roster_admin in place of mod_roster and our snippet (``module``)."""

    def __init__(
        self,
        build: prosody.ProsodyBuild,
        workdir: Path,
        *,
        delegate_roster: bool,
        module: Path | None = None,
        roster_url: str = "",
    ) -> None:
        super().__init__(
            build,
            workdir,
            domain=DOMAIN,
            component_jid=COMPONENT_JID,
            component_secret=COMPONENT_SECRET,
            delegate_roster=delegate_roster,
            shipped_config=module is None,
        )
        self.module = module
        self.roster_url = roster_url
        (self.http_port,) = free_ports(1)

    def render_config(self) -> str:
        text = _replace_once(super().render_config(), "log = { debug = ", "log = { info = ")
        if self.module is None:
            return text
        # As the module's README says: rosters in memory, mod_roster off, mod_http on.
        text = _replace_once(text, '"roster"; ', "")
        text = _replace_once(
            text, "modules_enabled = { ", 'modules_enabled = { "http"; "http_roster_admin"; '
        )
        text = _replace_once(text, "plugin_paths = { ", f"plugin_paths = {{ {_lua(self.module)}; ")
        text = _replace_once(
            text,
            'storage = "internal"',
            'default_storage = "internal"\nstorage = { roster = "memory" }',
        )
        return _replace_once(
            text,
            "http_ports = {}",
            f'http_ports = {{ {self.http_port} }}\nhttp_interfaces = {{ "127.0.0.1" }}\n'
            f"http_default_host = {_lua(self.domain)}\nhttp_roster_url = {_lua(self.roster_url)}",
        )


_T = TypeVar("_T")


@dataclass(frozen=True)
class Write:
    """One roster item written straight into the server (no component): subscription both,
    or its removal."""

    user: str  # the username
    contact: str  # a bare JID
    name: str = ""
    groups: tuple[str, ...] = ()
    remove: bool = False


class Target(Protocol):
    """A server under benchmark, whatever its kind."""

    label: str
    write_unit: str

    @property
    def pid(self) -> int: ...

    @property
    def c2s_port(self) -> int: ...

    @property
    def component_target(self) -> ComponentTarget: ...

    async def start(self, usernames: Sequence[str]) -> None: ...

    async def stop(self) -> None: ...

    async def write(self, window: int, writes: Sequence[Write]) -> Written:
        """Make every write with ``window`` in flight: when they began, the seconds until all
        were answered. On Prosody, only while the component under test is not connected."""
        ...


def probe_writes(users: Sequence[str], contacts: int) -> list[Write]:
    """The raw write probe: every user gets ``contacts`` items, as in an initial sync."""
    return [
        Write(user, f"probe-contact{c}@{DOMAIN}", f"Probe {c}", ("Probe",))
        for user in users
        for c in range(contacts)
    ]


def roster_writes(user: str, roster: dict[str, Any]) -> list[Write]:
    """A web app roster as writes (groups as the web app's set)."""
    return [
        Write(user, jid, str(item["name"]), tuple(item["groups"])) for jid, item in roster.items()
    ]


def change_writes(user: str, old: dict[str, Any], new: dict[str, Any]) -> list[Write]:
    """What turns roster ``old`` into ``new``: removals, then additions."""
    removals = [Write(user, jid, remove=True) for jid in old if jid not in new]
    return removals + roster_writes(user, {j: i for j, i in new.items() if j not in old})


class Written(NamedTuple):
    """When the first write went out (monotonic clock), and how long until all were answered:
    pushes are timed from ``began``, not from before the connection and its setup."""

    began: float
    seconds: float


async def _in_window(
    window: int, writes: Sequence[_T], write: Callable[[_T], Awaitable[None]]
) -> Written:
    queue = iter(writes)

    async def worker() -> None:
        for each in queue:
            await write(each)

    began = time.monotonic()
    async with asyncio.timeout(PHASE_TIMEOUT):
        await asyncio.gather(*(worker() for _ in range(window)))
    return Written(began, time.monotonic() - began)


class ProsodyTarget:
    write_unit = "privileged roster SETs/s"

    def __init__(self, server: BenchProsody) -> None:
        self.server = server
        self.label = f"Prosody {server.build.version}"

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def c2s_port(self) -> int:
        return self.server.c2s_port

    @property
    def component_target(self) -> ComponentTarget:
        return self.server

    async def start(self, usernames: Sequence[str]) -> None:
        self.server.add_accounts(usernames, PASSWORD)
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    @contextlib.asynccontextmanager
    async def _privileged(self) -> AsyncIterator[BenchComponent]:
        """A connection with the component's own JID (the harness's Prosody has one Component
        section), once the server has granted its privileges."""
        component = await connect_component(
            COMPONENT_JID, COMPONENT_SECRET, self.server.component_port
        )
        try:
            await asyncio.sleep(0.2)  # the server's privilege advertisement and disco queries
            yield component
        finally:
            component.close()
            await asyncio.wait_for(component.closed, 10)

    async def write(self, window: int, writes: Sequence[Write]) -> Written:
        async with self._privileged() as component:

            async def one(w: Write) -> None:
                await component.set_roster_item(
                    f"{w.user}@{DOMAIN}", w.contact, w.name, w.groups, remove=w.remove
                )

            return await _in_window(window, writes, one)

    async def write_per_user(self, window: int, writes: Sequence[Write]) -> Written:
        """Like write(), each user's writes in one request to the shipped module, as the
        component makes them; ``window`` requests in flight."""
        per_user: dict[str, list[Write]] = {}
        for w in writes:
            per_user.setdefault(w.user, []).append(w)
        async with self._privileged() as component:

            async def one(user: str) -> None:
                items = [(w.contact, w.name, w.groups, w.remove) for w in per_user[user]]
                await component.write_items(f"{user}@{DOMAIN}", items)

            return await _in_window(window, list(per_user), one)


class EjabberdTarget:
    write_unit = "add_rosteritem calls/s"

    def __init__(self, server: ejabberd.EjabberdServer) -> None:
        self.server = server
        self.label = f"ejabberd {server.build.version}"

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def c2s_port(self) -> int:
        return self.server.c2s_port

    @property
    def component_target(self) -> ComponentTarget:
        return self.server

    async def _api(self, http: aiohttp.ClientSession, command: str, args: dict[str, Any]) -> Any:
        # Host: the XMPP domain, as the harness sends it (24.12 warns about any other).
        async with http.post(
            f"{self.server.api_url}/{command}", json=args, headers={"Host": DOMAIN}
        ) as response:
            body = await response.text()
            if response.status != 200:
                raise RuntimeError(f"ejabberd {command}: HTTP {response.status}: {body}")
            return json.loads(body)

    async def start(self, usernames: Sequence[str]) -> None:
        # Synchronous, on the main thread: the harness ties the VM's life to that thread.
        self.server.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:
            names = iter(usernames)

            async def worker() -> None:
                for name in names:
                    args = {"user": name, "host": DOMAIN, "password": PASSWORD}
                    await self._api(http, "register", args)

            await asyncio.gather(*(worker() for _ in range(16)))

    async def stop(self) -> None:
        self.server.stop()

    async def write(self, window: int, writes: Sequence[Write]) -> Written:
        connector = aiohttp.TCPConnector(limit=window)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(w: Write) -> None:
                if w.remove:
                    contact_user, _, contact_host = w.contact.rpartition("@")
                    command, args = "delete_rosteritem", {
                        "localuser": w.user, "localhost": DOMAIN,
                        "user": contact_user, "host": contact_host,
                    }  # fmt: skip
                else:
                    command, args = "add_rosteritem", ejabberd.add_rosteritem_args(
                        self.server.build.name, w.user, DOMAIN, w.contact,
                        name=w.name, groups=w.groups, subscription="both",
                    )  # fmt: skip
                result = await self._api(http, command, args)
                if result != 0:
                    raise RuntimeError(f"{command}: {result}")

            return await _in_window(window, writes, one)


# --- the component ---------------------------------------------------------------------------


class Component:
    """``python -m component run --config ...`` as its own process."""

    def __init__(self, http: aiohttp.ClientSession, config: Path, log: Path, port: int) -> None:
        self._http = http
        self._config = config
        self._log = log
        self.url = f"http://127.0.0.1:{port}"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "component", "run", "--config", str(self._config),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                cwd=ROOT, preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get(f"{self.url}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        tail = "\n".join(self._log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"the component did not become ready:\n{tail}")

    async def stop(self) -> None:
        if self._process is not None:
            await stop_process(self._process)

    async def server_requests(self) -> float | None:
        """component_server_requests_total summed over its labels; None when not exposed."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with self._http.get(f"{self.url}/metrics", headers=headers) as response:
            response.raise_for_status()
            text = await response.text()
        if "component_server_requests_total" not in text:
            return None
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("component_server_requests_total")
        )


async def post_refresh(
    http: aiohttp.ClientSession,
    url: str,
    names: Sequence[str] | Mapping[str, object],
    headers: dict[str, str],
) -> dict[str, Any]:
    """A refresh (usernames) or a bulk apply (rosters by username); its counts."""
    timeout = aiohttp.ClientTimeout(total=PHASE_TIMEOUT)
    payload = dict(names) if isinstance(names, Mapping) else list(names)
    async with http.post(url, json=payload, headers=headers, timeout=timeout) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"refresh answered {response.status}: {body}")
        return body


# --- clients ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    username: str
    sent: float
    answered: float
    items: int


class Fleet:
    """K logged-in clients, connected a bounded number at a time."""

    def __init__(self, names: Sequence[str], port: int, concurrency: int) -> None:
        self.names = list(names)
        self.port = port
        self.concurrency = concurrency
        self.clients: list[BenchClient] = []
        self.push_items = 0
        self.goal = 0
        self._reached: asyncio.Future[float] | None = None

    def _on_push(self, at: float, items: int) -> None:
        self.push_items += items
        if self._reached is not None and not self._reached.done() and self.push_items >= self.goal:
            self._reached.set_result(at)

    async def connect(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)

        async def one(name: str) -> BenchClient:
            async with slots:
                return await connect_client(name, PASSWORD, DOMAIN, self.port, self._on_push)

        results = await asyncio.gather(*(one(n) for n in self.names), return_exceptions=True)
        self.clients = [r for r in results if isinstance(r, BenchClient)]
        failures = [r for r in results if not isinstance(r, BenchClient)]
        if failures:
            raise RuntimeError(f"{len(failures)} clients could not log in: {failures[0]!r}")

    async def ask_rosters(self, *, presence: bool) -> list[Login]:
        """Every client asks for its roster at once, then (``presence``) sends its initial
        presence once answered, as clients do."""

        async def answer(client: BenchClient, sent: float, future: Any) -> Login:
            answered, element = await future
            if presence:
                client.send_presence()
            return Login(client.username, sent, answered, roster_items(element))

        requests = [(client, *client.send_roster_get()) for client in self.clients]
        async with asyncio.timeout(PHASE_TIMEOUT):
            return await asyncio.gather(*(answer(*request) for request in requests))

    def expect_pushes(self, items: int) -> asyncio.Future[float]:
        """When ``items`` more pushed roster items have arrived (their arrival time)."""
        self.goal = self.push_items + items
        self._reached = asyncio.get_running_loop().create_future()
        return self._reached

    async def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.clients:
            await asyncio.wait([c.closed for c in self.clients], timeout=10)


# --- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    cpu: dict[str, float]
    webapp_requests: int
    server_requests: float | None
    timings: dict[str, list[list[float]]] = field(default_factory=dict)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))]


@dataclass
class Options:
    server: str
    users: int
    contacts: int
    clients: int
    repeats: int
    windows: list[int]
    probe_users: int
    max_age: float
    login_presence: bool
    bulk: bool
    component_options: dict[str, dict[str, object]]
    module: Path | None
    modes: list[str]
    webapp_delay: float
    connect_concurrency: int
    json_path: str | None
    workdir: Path | None


class Run:
    """One repeat of one mode: fresh server, fresh component, fresh clients."""

    def __init__(
        self,
        bench: Bench,
        mode: str,
        workdir: Path,
        *,
        bulk: bool,
        probe: tuple[float, int] | None,
    ) -> None:
        self.bench = bench
        self.opts = bench.opts
        self.mode = mode
        self.workdir = workdir
        self.bulk = bulk
        # The raw write limit and the window it was reached with, once measured this repeat.
        self.probe = probe
        self.figures: dict[str, float] = {}
        # The online users' rosters are the web app's at this generation (bench_webapp.py).
        self.generation = 0
        self.component: Component | None = None
        self.target: Target = self._target(workdir)
        # When the online users were last synced: logins come once that is max_age ago.
        self.synced_at = 0.0
        # When the login storm began: the clients log in again within max_age of it.
        self.login_at = 0.0

    def _target(self, workdir: Path) -> Target:
        kind, build = SERVERS[self.opts.server]
        if kind == "ejabberd":
            server = ejabberd.EjabberdServer(
                ejabberd.require_build(build),
                workdir / "ejabberd",
                domain=DOMAIN,
                component_jid=COMPONENT_JID,
                component_secret=COMPONENT_SECRET,
            )
            return EjabberdTarget(server)
        module = None
        if self.mode == "in-server":
            assert self.opts.module is not None
            module = workdir / "modules"
            module.mkdir(parents=True)
            shutil.copy(self.opts.module, module / MODULE_NAME)
        return ProsodyTarget(
            BenchProsody(
                prosody.require_build(build),
                workdir / "prosody",
                delegate_roster=self.mode == "delegated",
                module=module,
                roster_url=self.bench.webapp.url_template,
            )
        )

    @property
    def pids(self) -> dict[str, int]:
        pids = {"server": self.target.pid, "webapp": self.bench.webapp.pid, "bench": os.getpid()}
        if self.component is not None:
            pids["component"] = self.component.pid
        return pids

    async def snapshot(self, *, timings: bool = False) -> Snapshot:
        requests, handled = await self.bench.webapp.stats(timings=timings)
        server = None if self.component is None else await self.component.server_requests()
        cpu = {name: cpu_seconds(pid, tree=name == "server") for name, pid in self.pids.items()}
        cpu["machine"] = machine_busy_seconds()
        return Snapshot(cpu, requests, server, handled)

    def record(self, phase: str, before: Snapshot, after: Snapshot, users: int) -> None:
        """CPU per process, and requests to the web app and the server per user."""
        # A process started in between (the component) counts from zero.
        used = {name: value - before.cpu.get(name, 0.0) for name, value in after.cpu.items()}
        # What the rest of the machine took meanwhile: noise, when it is not close to zero.
        used["others"] = used.pop("machine") - sum(used.values())
        for name, value in used.items():
            self.figures[f"{phase}.cpu_{name}"] = value
        # What serving rosters cost, whoever does it (the in-server module has no component).
        self.figures[f"{phase}.cpu_both"] = used["server"] + used.get("component", 0.0)
        self.figures[f"{phase}.webapp_per_user"] = (
            after.webapp_requests - before.webapp_requests
        ) / users
        if after.server_requests is not None and before.server_requests is not None:
            self.figures[f"{phase}.server_per_user"] = (
                after.server_requests - before.server_requests
            ) / users
        if self.component is not None:
            self.figures[f"{phase}.rss"] = memory_mib(self.component.pid)["VmRSS"]

    async def quiet(self) -> None:
        await settle([p for n, p in self.pids.items() if n in {"server", "component"}])

    async def go(self) -> dict[str, float]:
        opts = self.opts
        names = [f"u{i}" for i in range(opts.users)]
        windows = opts.windows if self.probe is None and self.mode != "in-server" else []
        probes = [*windows, "end"] if windows else []
        probe_users = [f"probe{w}x{i}" for w in probes for i in range(opts.probe_users)]
        await self.bench.webapp.setup(opts.users, opts.contacts, opts.webapp_delay)
        async with contextlib.AsyncExitStack() as stack:
            await self.target.start([*names, *probe_users])
            stack.push_async_callback(self.target.stop)
            await self.quiet()
            began, first = time.monotonic(), await self.snapshot()
            if windows:
                await self.measure_probe(windows)
                if self.bulk:
                    await self.measure_raw_initial(names)
            online = names[: opts.clients]
            if (
                self.mode == "not-delegated"
                and isinstance(self.target, ProsodyTarget)
                and not self.bulk  # it would fill rosters the initial sync must write
            ):
                # Before the component connects: the probe takes its place.
                await self.measure_raw_refresh_first(online)
            if self.mode != "in-server":
                await self.start_component(stack, names)
            fleet = Fleet(online, self.target.c2s_port, opts.connect_concurrency)
            stack.push_async_callback(fleet.close)
            await fleet.connect()
            await self.quiet()
            await self.measure_login(fleet)
            await self.measure_relogin(fleet)
            await self.measure_refresh(fleet)
            if isinstance(self.target, EjabberdTarget):
                await self.measure_raw_refresh(fleet)
            if self.component is not None:
                peak = memory_mib(self.component.pid)
                self.figures["rss.end"] = peak["VmRSS"]
                self.figures["rss.peak"] = peak["VmHWM"]
            self.record("run", first, await self.snapshot(), 1)
            wall = time.monotonic() - began
            others = (
                self.figures["run.cpu_others"]
                - self.figures.get("raw_initial.cpu_total", 0)
                - self.figures.get("raw_initial_module.cpu_total", 0)
            )
            self.figures["run.others_share"] = max(0.0, others) / (wall * (os.cpu_count() or 1))
            if self.mode == "delegated" and isinstance(self.target, ProsodyTarget):
                await self.measure_raw_refresh_after(fleet)
            if self.bulk and windows and self.probe is not None:
                await self.measure_probe_end()
        if "refresh.pushes" in self.figures and "raw_module.pushes" in self.figures:
            self.figures["refresh.vs_alone_module"] = (
                self.figures["refresh.pushes"] / self.figures["raw_module.pushes"]
            )
        return self.figures

    async def probe_once(self, window: int, users: Sequence[str], key: str) -> None:
        """Raw writes of M items into each of ``users``: ``key`` is the rate, ``key``_server_ms
        the server's CPU per write."""
        cpu = cpu_seconds(self.target.pid, tree=True)
        writes = probe_writes(users, self.opts.contacts)
        self.figures[key] = len(writes) / (await self.target.write(window, writes)).seconds
        used = cpu_seconds(self.target.pid, tree=True) - cpu
        self.figures[f"{key}_server_ms"] = used / len(writes) * 1000
        await self.quiet()

    async def measure_probe(self, windows: Sequence[int]) -> None:
        for window in windows:
            users = [f"probe{window}x{i}" for i in range(self.opts.probe_users)]
            await self.probe_once(window, users, f"probe.w{window}")
        best = max(windows, key=lambda w: self.figures[f"probe.w{w}"])
        self.figures["probe.best"] = self.figures[f"probe.w{best}"]
        self.probe = (self.figures["probe.best"], best)
        self.figures["probe.window"] = best
        self.figures["probe.server_ms"] = self.figures[f"probe.w{best}_server_ms"]

    async def measure_probe_end(self) -> None:
        """The raw write limit again, on the server the run has filled (Prosody writes get
        slower as it holds more)."""
        assert self.probe is not None
        if self.component is not None:
            await self.component.stop()  # Prosody: the probe takes the component's place
        users = [f"probeendx{i}" for i in range(self.opts.probe_users)]
        await self.probe_once(self.probe[1], users, "probe.end")
        self.figures["initial.ratio"] = (
            self.figures["initial.items_per_s"] / self.figures["raw_initial.items_per_s"]
        )
        if "raw_initial_module.items_per_s" in self.figures:
            self.figures["initial.ratio_module"] = (
                self.figures["initial.items_per_s"] / self.figures["raw_initial_module.items_per_s"]
            )

    async def measure_raw_initial(self, names: Sequence[str]) -> None:
        """The initial sync's own writes by the server alone: every user's roster written at
        the probe's best window into a fresh server of its own, which fills as the one the
        component syncs does. The initial sync is compared with this rate: the probe's, on a
        near-empty server, is not what the same writes get once it holds thousands of rosters.
        On Prosody also as the component writes: each user's roster in one request to the
        shipped module (``raw_initial_module``).
        """
        await self._raw_initial(names, "raw_initial")
        if isinstance(self.target, ProsodyTarget):
            await self._raw_initial(names, "raw_initial_module")

    async def _raw_initial(self, names: Sequence[str], key: str) -> None:
        assert self.probe is not None
        target = self._target(self.workdir / key.replace("_", "-"))
        writes = [w for n in names for w in roster_writes(n, self.roster(n, self.generation))]
        await target.start(names)
        try:
            cpu = cpu_seconds(target.pid, tree=True)
            if key == "raw_initial_module":
                assert isinstance(target, ProsodyTarget)
                seconds = (await target.write_per_user(self.probe[1], writes)).seconds
            else:
                seconds = (await target.write(self.probe[1], writes)).seconds
            used = cpu_seconds(target.pid, tree=True) - cpu
            # Its whole life, which the run's "other processes" must not count as noise.
            self.figures[f"{key}.cpu_total"] = cpu_seconds(target.pid, tree=True)
        finally:
            await target.stop()
        self.figures[f"{key}.items_per_s"] = len(writes) / seconds
        self.figures[f"{key}.server_ms"] = used / len(writes) * 1000
        await self.quiet()

    async def start_component(self, stack: contextlib.AsyncExitStack, names: list[str]) -> None:
        opts = self.opts
        (port,) = free_ports(1)
        sections: dict[str, dict[str, object]] = {
            "listener": {"port": port, "token": TOKEN, "max_users": max(opts.users, 1)},
            "sync": {"max_age": opts.max_age},
            "log": {"format": "json", "level": "warning"},
        }
        for section, values in opts.component_options.items():
            sections.setdefault(section, {}).update(values)
        config = write_component_config(
            self.workdir / "component.toml",
            self.target.component_target,
            self.bench.webapp.url_template,
            **sections,
        )
        self.component = Component(self.bench.http, config, self.workdir / "component.log", port)
        await self.component.start()
        stack.push_async_callback(self.component.stop)
        await self.quiet()
        self.figures["rss.idle"] = memory_mib(self.component.pid)["VmRSS"]
        refresh = self.refresh_call()
        if self.bulk:
            for phase in ("initial", "nochange"):
                before = await self.snapshot()
                began = time.monotonic()
                reply = await refresh(names)
                took = time.monotonic() - began
                after = await self.snapshot()
                self.figures[f"{phase}.seconds"] = took
                self.figures[f"{phase}.errors"] = float(reply.get("errors", 0))
                self.record(phase, before, after, len(names))
                self.synced_at = time.monotonic()
                await self.quiet()
            await self.measure_nochange_inline(names)
            items = len(names) * opts.contacts
            self.figures["initial.items_per_s"] = items / self.figures["initial.seconds"]
            self.figures["initial.server_ms"] = self.figures["initial.cpu_server"] / items * 1000
            self.figures["nochange.users_per_s"] = len(names) / self.figures["nochange.seconds"]
        else:
            # The online users' rosters must be in the server before they log in.
            await refresh(names[: opts.clients])
            self.synced_at = time.monotonic()
            await self.quiet()

    async def measure_nochange_inline(self, names: Sequence[str]) -> None:
        """The same no-change refresh through the bulk endpoint: rosters in the requests, in
        chunks of INLINE_CHUNK users as README advises (a body costs about 6x its size in
        memory while it is applied)."""
        assert self.component is not None
        opts = self.opts
        bodies = [
            {name: roster(int(name[1:]), opts.users, opts.contacts, DOMAIN, 0) for name in chunk}
            for chunk in (
                names[start : start + INLINE_CHUNK] for start in range(0, len(names), INLINE_CHUNK)
            )
        ]
        url = f"{self.component.url}/roster_admin/rosters"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        before = await self.snapshot()
        began = time.monotonic()
        errors = 0.0
        for body in bodies:
            reply = await post_refresh(self.bench.http, url, body, headers)
            errors += reply.get("errors", 0)
        took = time.monotonic() - began
        after = await self.snapshot()
        self.figures["inline.seconds"] = took
        self.figures["inline.errors"] = errors
        self.figures["inline.users_per_s"] = len(names) / took
        self.record("inline", before, after, len(names))
        self.synced_at = time.monotonic()  # logins wait max_age from this sync too
        await self.quiet()

    def refresh_call(self) -> Callable[[Sequence[str]], Awaitable[dict[str, Any]]]:
        http = self.bench.http
        if self.component is not None:
            url = f"{self.component.url}/roster_admin/refresh"
            headers = {"Authorization": f"Bearer {TOKEN}"}
        else:
            assert isinstance(self.target, ProsodyTarget)
            url = f"http://127.0.0.1:{self.target.server.http_port}/roster_admin/refresh"
            headers = {"Host": DOMAIN}
        return lambda names: post_refresh(http, url, names, headers)

    async def measure_login(self, fleet: Fleet) -> None:
        # A login after an absence syncs the user (delegated: to answer; not delegated: on
        # presence); one within max_age of the last sync would not.
        await asyncio.sleep(max(0.0, self.synced_at + self.opts.max_age + 0.5 - time.monotonic()))
        self.login_at = time.monotonic()
        await self.storm(fleet, "login")

    async def measure_relogin(self, fleet: Fleet) -> None:
        """The clients connect again and log in at once, within max_age of their logins' syncs
        (a reconnect storm): no fetch is due; delegated, the component says at once that the
        user is synced."""
        await fleet.close()
        await fleet.connect()
        await self.quiet()
        self.figures["relogin.within_max_age"] = float(
            time.monotonic() - self.login_at < self.opts.max_age
        )
        await self.storm(fleet, "relogin")

    async def storm(self, fleet: Fleet, phase: str) -> None:
        """Every client asks for its roster at once: ``phase``.p50 etc."""
        await self.bench.webapp.stats(reset=True)
        before = await self.snapshot()
        logins = await fleet.ask_rosters(presence=self.opts.login_presence)
        answered = await self.snapshot(timings=True)
        await self.quiet()  # presence and the syncs it starts belong to the logins too
        after = await self.snapshot()
        raw = [login.answered - login.sent for login in logins]
        webapp = [
            sum(
                seconds
                for start, seconds in answered.timings.get(login.username, [])
                if login.sent <= start <= login.answered
            )
            for login in logins
        ]
        net = [r - w for r, w in zip(raw, webapp, strict=True)]
        figures = self.figures
        figures[f"{phase}.p50"] = statistics.median(net) * 1000
        figures[f"{phase}.p95"] = percentile(net, 0.95) * 1000
        figures[f"{phase}.raw_p50"] = statistics.median(raw) * 1000
        figures[f"{phase}.raw_p95"] = percentile(raw, 0.95) * 1000
        figures[f"{phase}.webapp_p50"] = statistics.median(webapp) * 1000
        figures[f"{phase}.wrong_rosters"] = sum(
            login.items != self.opts.contacts for login in logins
        )
        figures[f"{phase}.answer_cpu_server"] = answered.cpu["server"] - before.cpu["server"]
        if "component" in answered.cpu:
            figures[f"{phase}.answer_cpu_component"] = (
                answered.cpu["component"] - before.cpu["component"]
            )
        self.record(phase, before, after, len(logins))

    async def measure_refresh(self, fleet: Fleet) -> None:
        names = [client.username for client in fleet.clients]
        if not self.opts.login_presence:
            # Online users have sent their presence (mod_http_roster_admin's refresh fails
            # for a session without one, and never answers).
            for client in fleet.clients:
                client.send_presence()
            await self.quiet()
        self.generation += 1
        await self.bench.webapp.set_generation(names, self.generation)
        refresh = self.refresh_call()
        pushed = fleet.expect_pushes(2 * len(names))  # one added, one removed contact each
        before = await self.snapshot()
        began = time.monotonic()
        try:
            reply = await asyncio.wait_for(refresh(names), PUSH_TIMEOUT)
        except TimeoutError:
            reply = {"errors": len(names)}  # no answer at all: every user counts as failed
        self.figures["refresh.reply"] = time.monotonic() - began
        self.figures["refresh.errors"] = float(reply.get("errors", 0))
        try:
            self.figures["refresh.pushes"] = await asyncio.wait_for(pushed, PUSH_TIMEOUT) - began
        except TimeoutError:
            self.figures["refresh.missing_pushes"] = fleet.goal - fleet.push_items
        after = await self.snapshot()
        self.record("refresh", before, after, len(names))
        if self.probe:
            self.figures["refresh.raw_cost"] = 2 * len(names) / self.probe[0]
        await self.quiet()

    def roster(self, username: str, generation: int) -> dict[str, Any]:
        opts = self.opts
        return roster(int(username[1:]), opts.users, opts.contacts, DOMAIN, generation)

    async def measure_raw_refresh_first(self, online: Sequence[str]) -> None:
        """Prosody, before the component connects: the online users' rosters written straight
        in, their clients logged in, then the refresh's change measured as the server's own."""
        window = self.probe[1] if self.probe else 64
        writes = [w for n in online for w in roster_writes(n, self.roster(n, self.generation))]
        await self.target.write(window, writes)
        fleet = Fleet(online, self.target.c2s_port, self.opts.connect_concurrency)
        try:
            await fleet.connect()
            await fleet.ask_rosters(presence=True)
            await self.quiet()
            await self.measure_raw_refresh(fleet)
            if isinstance(self.target, ProsodyTarget):
                await self.measure_raw_refresh(fleet, through_module=True)
        finally:
            await fleet.close()
        self.synced_at = time.monotonic()

    async def measure_raw_refresh_after(self, fleet: Fleet) -> None:
        """Delegated: the refresh's change written by the server alone, in the component's
        place, on this very server and clients (which the server answered: it pushes to them
        itself). Not delegated, the same is measured before the component connects. Single
        runs vary more from one server to the next than the refresh does from the server
        alone, so the ratio within one server is the one to read."""
        assert self.component is not None
        await self.component.stop()
        await self.measure_raw_refresh(fleet, through_module=True)

    async def measure_raw_refresh(self, fleet: Fleet, *, through_module: bool = False) -> None:
        """The refresh's change (one removal, one addition per online user) written straight
        into the server at the probe's best window: what those writes cost the server alone,
        until every push has reached the clients. Privileged SETs (one item each), or
        ``through_module``: each user's change in one request to the shipped Prosody module,
        as the component writes."""
        key = "raw_module" if through_module else "raw"
        names = [client.username for client in fleet.clients]
        writes = [
            w
            for n in names
            for w in change_writes(
                n, self.roster(n, self.generation), self.roster(n, self.generation + 1)
            )
        ]
        pushed = fleet.expect_pushes(len(writes))
        cpu = cpu_seconds(self.target.pid, tree=True)
        window = self.probe[1] if self.probe else 64
        if through_module:
            assert isinstance(self.target, ProsodyTarget)
            written = await self.target.write_per_user(window, writes)
        else:
            written = await self.target.write(window, writes)
        self.figures[f"{key}.writes"] = written.seconds
        try:
            self.figures[f"{key}.pushes"] = (
                await asyncio.wait_for(pushed, PUSH_TIMEOUT) - written.began
            )
        except TimeoutError:
            self.figures[f"{key}.missing_pushes"] = fleet.goal - fleet.push_items
        self.figures[f"{key}.cpu_server"] = cpu_seconds(self.target.pid, tree=True) - cpu
        self.generation += 1
        await self.bench.webapp.set_generation(names, self.generation)
        await self.quiet()


class Bench:
    def __init__(self, opts: Options, http: aiohttp.ClientSession, root: Path) -> None:
        self.opts = opts
        self.http = http
        self.root = root
        self.webapp = WebApp(http)
        self.samples: dict[str, dict[str, list[float]]] = {mode: {} for mode in opts.modes}
        self.label = ""

    async def run(self) -> None:
        opts = self.opts
        component_modes = [m for m in opts.modes if m != "in-server"]
        bulk_mode = component_modes[0] if component_modes else None
        await self.webapp.start()
        try:
            for repeat in range(opts.repeats):
                probe: tuple[float, int] | None = None
                for mode in opts.modes:
                    print(f"run {repeat + 1}/{opts.repeats}: {MODE_TITLES[mode]} ...", flush=True)
                    workdir = self.root / f"run{repeat + 1}-{mode}"
                    first = mode == bulk_mode
                    run = Run(self, mode, workdir, bulk=first and opts.bulk, probe=probe)
                    self.label = run.target.label
                    figures = await run.go()
                    probe = run.probe
                    for key, value in figures.items():
                        self.samples[mode].setdefault(key, []).append(value)
                    print("    " + summary_line(figures), flush=True)
        finally:
            await self.webapp.stop()

    def medians(self) -> dict[str, dict[str, float]]:
        return {
            mode: {key: statistics.median(values) for key, values in figures.items()}
            for mode, figures in self.samples.items()
        }


#: Figures that count failures: any non-zero sample is reported, whatever the median.
FAILURES = {
    "initial.errors": "users failed in the initial sync",
    "nochange.errors": "users failed in the no-change refresh",
    "inline.errors": "users failed in the no-change bulk apply",
    "refresh.errors": "users failed in the refresh",
    "refresh.missing_pushes": "pushed items missing",
    "raw.missing_pushes": "pushed items missing when the server wrote alone",
    "raw_module.missing_pushes": "pushed items missing when the server wrote alone (module)",
    "login.wrong_rosters": "rosters of the wrong size",
    "relogin.wrong_rosters": "rosters of the wrong size when logging in again",
}


def summary_line(f: dict[str, float]) -> str:
    parts = []
    if "probe.best" in f:
        parts.append(f"raw {f['probe.best']:.0f}/s")
    if "initial.items_per_s" in f:
        parts.append(f"initial {f['initial.items_per_s']:.0f} items/s")
    if "nochange.seconds" in f:
        parts.append(f"no-change {f['nochange.seconds']:.2f} s")
    parts.append(f"login p50/p95 {f['login.p50']:.0f}/{f['login.p95']:.0f} ms")
    pushes = f.get("refresh.pushes", float("nan"))
    parts.append(f"refresh {f['refresh.reply']:.2f} s, pushes {pushes:.2f} s")
    parts.append(f"other processes {f['run.others_share']:.0%} of the machine")
    failures = {key: value for key, value in f.items() if key in FAILURES and value}
    if failures:
        parts.append(
            "FAILURES: " + ", ".join(f"{FAILURES[k]} {v:.0f}" for k, v in failures.items())
        )
    return ", ".join(parts)


# --- the report ------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(bench: Bench) -> str:
    """The table printed at the end: medians over the runs."""
    opts = bench.opts
    extra = ", ".join(
        f"{s}.{k}={v}" for s, values in opts.component_options.items() for k, v in values.items()
    )
    lines = [
        "",
        (
            f"{opts.server} ({bench.label}): {opts.users} users x {opts.contacts} contacts, "
            f"{opts.clients} online clients; median of {opts.repeats} run(s)"
        ),
        (
            f"component: sync.max_age={opts.max_age:g}{', ' + extra if extra else ''}; "
            f"clients send presence after their roster: {'yes' if opts.login_presence else 'no'}"
        ),
        *_bulk_report(bench),
        "",
        *_table(bench),
        *_within_run_report(bench),
        "",
        "login CPU counts until every client's presence has been handled; per-user counts are",
        "requests divided by the users concerned (N for bulk, K otherwise); '-': not measured.",
    ]
    for mode in opts.modes:
        for key, label in FAILURES.items():
            worst = max(bench.samples[mode].get(key, [0.0]))
            if worst:
                lines.append(
                    f"FAILURES ({MODE_TITLES[mode]}): {label}: {worst:.0f} in the worst run"
                )
    others = max(figures.get("run.others_share", 0.0) for figures in bench.medians().values())
    lines.append(
        f"other processes used up to {others:.0%} of the machine during a run (median)"
        + (": figures are noisy, rerun on a quiet machine" if others > 0.05 else "")
    )
    return "\n".join(lines)


#: Issue 7's ratios, each taken within one run (one repeat): a ratio of medians mixes runs
#: minutes apart, and the machine's speed drifts between them.
WITHIN_RUN = {
    "login p50, delegated / not delegated": ("login.p50", "delegated", "not-delegated"),
    "login p50, delegated / mod_http_roster_admin": ("login.p50", "delegated", "in-server"),
    "login again within max_age, p50 delegated / not delegated": (
        "relogin.p50",
        "delegated",
        "not-delegated",
    ),
    "refresh, all pushes / server alone on the same server, delegated": (
        "refresh.vs_alone_module",
        "delegated",
        None,
    ),
    "refresh, the same, not delegated": ("refresh.vs_alone_module", "not-delegated", None),
}


def within_run_ratios(bench: Bench) -> dict[str, list[float]]:
    """Each of WITHIN_RUN's ratios per repeat, in run order (those measured in every run)."""
    ratios: dict[str, list[float]] = {}
    for label, (key, top, bottom) in WITHIN_RUN.items():
        tops = bench.samples.get(top, {}).get(key, [])
        if bottom is None:
            found = list(tops)
        else:
            bottoms = bench.samples.get(bottom, {}).get(key, [])
            found = [a / b for a, b in zip(tops, bottoms, strict=False) if b]
        if found and len(found) == bench.opts.repeats:
            ratios[label] = found
    return ratios


def _within_run_report(bench: Bench) -> list[str]:
    ratios = within_run_ratios(bench)
    if not ratios:
        return []
    width = max(len(label) for label in ratios)
    lines = [
        "",
        f"ratios within each run: median over {bench.opts.repeats} run(s) (lowest, highest)",
    ]
    for label, values in ratios.items():
        lines.append(
            f"  {label:<{width}}  {statistics.median(values):.2f} "
            f"({min(values):.2f}, {max(values):.2f})"
        )
    return lines


def _bulk_report(bench: Bench) -> list[str]:
    """The raw write limit, the initial sync and the no-change refresh (first component mode)."""
    opts = bench.opts
    mode = next((m for m in opts.modes if m != "in-server"), None)
    if mode is None:
        return []
    bulk = bench.medians()[mode]
    lines = []
    if "probe.best" in bulk:
        unit = EjabberdTarget.write_unit if "ejabberd" in opts.server else ProsodyTarget.write_unit
        per_window = "  ".join(
            f"w{w} {bulk[f'probe.w{w}']:.0f}" for w in opts.windows if f"probe.w{w}" in bulk
        )
        lines += [
            "",
            f"server's raw write limit: {bulk['probe.best']:.0f} {unit} at the best window",
            f"  by window: {per_window}; server CPU {bulk['probe.server_ms']:.2f} ms per write",
        ]
        if "raw_initial.items_per_s" in bulk:
            lines.append(
                f"  writing the initial sync's {opts.users * opts.contacts} items into a fresh "
                f"server of their own: {bulk['raw_initial.items_per_s']:.0f}/s, server CPU "
                f"{bulk['raw_initial.server_ms']:.2f} ms per write"
            )
        if "raw_initial_module.items_per_s" in bulk:
            lines.append(
                f"  the same, each user's items in one request to the shipped module: "
                f"{bulk['raw_initial_module.items_per_s']:.0f} items/s, server CPU "
                f"{bulk['raw_initial_module.server_ms']:.3f} ms per item"
            )
        if "probe.end" in bulk:
            lines.append(
                f"  at the end of the run: {bulk['probe.end']:.0f}/s, server CPU "
                f"{bulk['probe.end_server_ms']:.2f} ms per write"
            )
    if "initial.seconds" in bulk:
        items = opts.users * opts.contacts
        lines += [
            "",
            f"bulk ({MODE_TITLES[mode]}):",
            (
                f"  initial sync, {opts.users} offline users x {opts.contacts} = {items} items: "
                f"{bulk['initial.seconds']:.1f} s, {bulk['initial.items_per_s']:.0f} items/s, "
                f"{_fmt(bulk.get('initial.ratio'), '.2f')}x the server's own rate for those writes"
                + (
                    f" as privileged SETs, {bulk['initial.ratio_module']:.2f}x through the module"
                    if "initial.ratio_module" in bulk
                    else ""
                )
            ),
            "    " + _costs(bulk, "initial"),
            f"    server CPU {bulk['initial.server_ms']:.2f} ms per item written",
            (
                f"  no-change refresh of the same {opts.users} users: "
                f"{bulk['nochange.seconds']:.2f} s, {bulk['nochange.users_per_s']:.0f} users/s"
            ),
            "    " + _costs(bulk, "nochange"),
            (
                f"  the same, rosters sent inline ({INLINE_CHUNK} users per POST "
                f"/roster_admin/rosters): "
                f"{bulk['inline.seconds']:.2f} s, {bulk['inline.users_per_s']:.0f} users/s"
            ),
            "    " + _costs(bulk, "inline"),
        ]
    return lines


def _table(bench: Bench) -> list[str]:  # noqa: PLR0915 -- one statement per row, in print order
    """Refresh, login and memory, one column per mode, with ratios between modes."""
    modes = bench.opts.modes
    med = bench.medians()
    ratios = []
    if "delegated" in modes and "in-server" in modes:
        ratios.append(("deleg./in-srv", "delegated", "in-server"))
    if "delegated" in modes and "not-delegated" in modes:
        ratios.append(("deleg./not", "delegated", "not-delegated"))
    width = 50
    lines = [
        f"{'':<{width}}"
        + "".join(f"{MODE_TITLES[m]:>18}" for m in modes)
        + "".join(f"{r[0]:>15}" for r in ratios)
    ]

    def row(label: str, key: str, spec: str) -> None:
        values(label, {m: med[m].get(key) for m in modes}, spec)

    def values(label: str, by_mode: dict[str, float | None], spec: str) -> None:
        text = f"  {label:<{width - 2}}" + "".join(f"{_fmt(by_mode[m], spec):>18}" for m in modes)
        for _, top, bottom in ratios:
            a, b = by_mode[top], by_mode[bottom]
            text += f"{_fmt(a / b if a is not None and b else None, '.2f') + 'x':>15}"
        lines.append(text)

    def costs(phase: str) -> None:
        row("CPU server + component (s)", f"{phase}.cpu_both", ".2f")
        row("  CPU server (s)", f"{phase}.cpu_server", ".2f")
        row("  CPU component (s)", f"{phase}.cpu_component", ".2f")
        row("web app requests per user", f"{phase}.webapp_per_user", ".2f")
        row("server requests per user", f"{phase}.server_per_user", ".2f")
        row("CPU of the benchmark's clients (s)", f"{phase}.cpu_bench", ".2f")

    k = bench.opts.clients
    lines.append(f"refresh of {k} online users, each +1 -1 contact")
    row("reply (s)", "refresh.reply", ".3f")
    row("all pushes at the clients (s)", "refresh.pushes", ".3f")
    row(f"{2 * k} writes at the raw write limit (s)", "refresh.raw_cost", ".3f")
    lines.append("  the same change by the server alone, as privileged SETs / a request per user:")
    for key, how in (("raw", "SETs"), ("raw_module", "per user")):
        row(f"  {how}: writes answered (s)", f"{key}.writes", ".3f")
        row(f"  {how}: all pushes (s)", f"{key}.pushes", ".3f")
        row(f"  {how}: CPU server (s)", f"{key}.cpu_server", ".2f")
    # SETs: measured in the not-delegated run only; per user, on each run's own server.
    alone = next((med[m]["raw.pushes"] for m in modes if "raw.pushes" in med[m]), None)
    values(
        "all pushes / server alone (SETs)",
        {
            m: med[m]["refresh.pushes"] / alone if alone and "refresh.pushes" in med[m] else None
            for m in modes
        },
        ".2f",
    )
    row("all pushes / server alone, same server (per user)", "refresh.vs_alone_module", ".2f")
    costs("refresh")

    def storm(phase: str) -> None:
        row("answer p50, less the web app (ms)", f"{phase}.p50", ".1f")
        row("answer p95, less the web app (ms)", f"{phase}.p95", ".1f")
        row("answer p50 as measured (ms)", f"{phase}.raw_p50", ".1f")
        row("answer p95 as measured (ms)", f"{phase}.raw_p95", ".1f")
        row("web app's own time p50 (ms)", f"{phase}.webapp_p50", ".2f")
        row("CPU server until answered (s)", f"{phase}.answer_cpu_server", ".2f")
        row("CPU component until answered (s)", f"{phase}.answer_cpu_component", ".2f")
        costs(phase)

    lines.append(f"login: {k} clients ask for their roster at once")
    storm("login")
    lines.append(f"the {k} log in again at once, within max_age of those logins' syncs")
    row("within max_age (1: yes; else raise --max-age)", "relogin.within_max_age", ".0f")
    storm("relogin")
    lines.append("component memory (MiB)")
    row("RSS idle", "rss.idle", ".1f")
    row("RSS after the initial sync", "initial.rss", ".1f")
    row("RSS at the end", "rss.end", ".1f")
    row("RSS peak", "rss.peak", ".1f")
    return lines


def _costs(figures: dict[str, float], phase: str) -> str:
    server = figures.get(f"{phase}.server_per_user")
    return (
        f"CPU component {figures[f'{phase}.cpu_component']:.2f} s, "
        f"server {figures[f'{phase}.cpu_server']:.2f} s; per user: "
        f"{figures[f'{phase}.webapp_per_user']:.2f} web app requests, "
        f"{_fmt(server, '.2f')} server requests"
    )


# --- command line ----------------------------------------------------------------------------


def parse_component_options(values: Sequence[str]) -> dict[str, dict[str, object]]:
    """``section.key=value`` (value in TOML syntax, else a string) -> {section: {key: value}}."""
    sections: dict[str, dict[str, object]] = {}
    for text in values:
        name, sep, raw = text.partition("=")
        section, dot, key = name.partition(".")
        if not (sep and dot and section and key):
            raise argparse.ArgumentTypeError(f"not section.key=value: {text!r}")
        try:
            value: object = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        sections.setdefault(section, {})[key] = value
    return sections


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="The full size: --users 10000 --contacts 20 --clients 500 --repeats 1. "
        "mod_http_roster_admin is not part of this project: get it from prosody-modules "
        "(hg clone https://hg.prosody.im/prosody-modules/), install lua-cjson "
        "(apt install lua-cjson), and give its path.",
    )
    parser.add_argument("--server", choices=list(SERVERS), default="prosody-13")
    parser.add_argument("--users", type=int, default=500, help="N, users in the web app")
    parser.add_argument("--contacts", type=int, default=20, help="M, contacts per user")
    parser.add_argument("--clients", type=int, default=50, help="K, online clients")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--windows",
        default="1,16,64,128",
        help="writes in flight tried for the raw write limit (default: 1,16,64,128)",
    )
    parser.add_argument(
        "--probe-users",
        type=int,
        default=50,
        help="users written per window by the raw write probe, M items each (default: 50)",
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=10.0,
        help="the component's sync.max_age; logins start once the users' last sync is that "
        "old, so each login syncs once, as after a real absence (default: 10)",
    )
    parser.add_argument(
        "--bulk",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the initial sync of N users and the no-change refresh (default: yes; without, "
        "only the K online users are synced, unmeasured)",
    )
    parser.add_argument(
        "--login-presence",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each client sends its initial presence once its roster arrives (default: yes; "
        "its contacts are online too, so presence is routed while later answers wait)",
    )
    parser.add_argument(
        "--component-option",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other component setting, e.g. sync.concurrency=32 (repeatable)",
    )
    parser.add_argument(
        "--in-server-module",
        type=Path,
        metavar="PATH",
        help=f"Prosody only: {MODULE_NAME} from prosody-modules, measured side by side "
        "(needs lua-cjson); the column is skipped without it",
    )
    parser.add_argument(
        "--modes",
        help="comma-separated subset of delegated,not-delegated,in-server (default: all "
        "that apply)",
    )
    parser.add_argument(
        "--webapp-delay",
        type=float,
        default=0.0,
        help="milliseconds the web app waits before each answer (default 0)",
    )
    parser.add_argument("--connect-concurrency", type=int, default=25)
    parser.add_argument("--json", metavar="FILE", help="also write every sample and median")
    parser.add_argument("--workdir", type=Path, help="keep servers' files and logs here")
    args = parser.parse_args(argv)
    kind = SERVERS[args.server][0]
    if args.in_server_module is not None:
        if kind != "prosody":
            parser.error("--in-server-module: Prosody only")
        if not args.in_server_module.is_file():
            parser.error(f"--in-server-module: {args.in_server_module} not found")
    if kind == "ejabberd":
        applicable = ["not-delegated"]  # ejabberd cannot delegate (README)
    else:
        applicable = ["delegated", "not-delegated"]
        if args.in_server_module is not None:
            applicable.append("in-server")
    modes = applicable if args.modes is None else args.modes.split(",")
    for mode in modes:
        if mode not in applicable:
            parser.error(f"--modes: {mode!r} does not apply here (choose from {applicable})")
    if args.users <= args.contacts:
        parser.error("--users must exceed --contacts (contacts are other users)")
    if not 0 < args.clients <= args.users:
        parser.error("--clients must be between 1 and --users")
    return Options(
        server=args.server,
        users=args.users,
        contacts=args.contacts,
        clients=args.clients,
        repeats=args.repeats,
        windows=[int(w) for w in args.windows.split(",")],
        probe_users=args.probe_users,
        max_age=args.max_age,
        login_presence=args.login_presence,
        bulk=args.bulk,
        component_options=parse_component_options(args.component_option),
        module=args.in_server_module,
        modes=[m for m in MODES if m in modes],
        webapp_delay=args.webapp_delay / 1000,
        connect_concurrency=args.connect_concurrency,
        json_path=args.json,
        workdir=args.workdir,
    )


async def bench(opts: Options) -> Bench:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.ExitStack() as stack:
        if opts.workdir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="roster-bench-")))
        else:
            root = opts.workdir
            root.mkdir(parents=True, exist_ok=True)
        async with aiohttp.ClientSession() as http:
            runner = Bench(opts, http, root)
            await runner.run()
    return runner


def write_json(runner: Bench, path: str) -> None:
    opts = runner.opts
    data = {
        "server": opts.server,
        "label": runner.label,
        "options": {
            "users": opts.users,
            "contacts": opts.contacts,
            "clients": opts.clients,
            "repeats": opts.repeats,
            "windows": opts.windows,
            "probe_users": opts.probe_users,
            "max_age": opts.max_age,
            "login_presence": opts.login_presence,
            "bulk": opts.bulk,
            "component_options": opts.component_options,
            "modes": opts.modes,
            "webapp_delay": opts.webapp_delay,
        },
        "median": runner.medians(),
        "within_run": within_run_ratios(runner),
        "samples": runner.samples,
    }
    text = json.dumps(data, indent=2)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")


def main() -> None:
    opts = parse_args()
    try:
        runner = asyncio.run(bench(opts))
    except KeyboardInterrupt:
        sys.exit(130)
    except asyncio.CancelledError:
        sys.exit(143)
    print(report(runner))
    if opts.json_path:
        write_json(runner, opts.json_path)


if __name__ == "__main__":
    main()
