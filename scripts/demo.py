"""The quick-start demo: a local Prosody, a demo web app and the component, for real.

It starts Prosody on loopback with the shipped configuration, a small web app that owns the
rosters, and `http-roster-admin run` as its own process; then logs in as alice, shows her
roster arriving from the web app, changes it in the web app, posts a refresh and shows the
roster pushes that reach her client.

SIGTERM and SIGINT (Ctrl-C) stop everything it started and remove its temporary folder; it then
exits with 128 + the signal's number (143, 130), as shells report a program a signal stopped.
Should the demo itself be killed outright, the kernel kills Prosody and the component with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from tests.harness.component import write_component_config
from tests.harness.prosody import ProsodyServer, die_with_parent, free_ports, require_build
from tests.harness.webapp import FakeWebApp
from tests.harness.xmpp_client import Roster, RosterPush, connected_client

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "example.test"
TOKEN = "demo-token"  # noqa: S105 -- a demo on loopback
# The component finishes running refreshes for up to 10 s when asked to stop.
COMPONENT_STOP_TIMEOUT = 15.0
ROSTERS: dict[str, dict[str, object]] = {
    "alice": {
        f"bob@{DOMAIN}": {"name": "Bob", "groups": ["Friends"]},
        f"carol@{DOMAIN}": {"name": "Carol", "groups": ["Work", "Friends"]},
    },
}


def show(title: str, roster: Roster) -> None:
    print(f"\n{title}")
    if not roster:
        print("  (empty)")
    for jid, entry in sorted(roster.items()):
        groups = ", ".join(entry["groups"]) or "-"
        print(f"  {jid:<22} name={entry['name']!s:<8} groups={groups:<16} {entry['subscription']}")


def shows(jid: str, change: str) -> Callable[[RosterPush], bool]:
    """A push carrying ``change`` (a new name, or "remove") for ``jid``."""

    def check(push: RosterPush) -> bool:
        entry = push.items.get(jid)
        return entry is not None and change in {entry["name"], entry["subscription"]}

    return check


async def wait_healthy(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process
) -> None:
    async with asyncio.timeout(20):
        while True:
            if process.returncode is not None:
                sys.exit(f"the component exited with code {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)


async def stop_component(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # it may have just exited (e.g. Ctrl-C)
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), COMPONENT_STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def demo(build: str, delegate: bool, keep_running: bool) -> None:
    # An exit stack, so that a signal arriving mid-start still stops what already runs.
    with tempfile.TemporaryDirectory(prefix="roster-demo-") as tmp:
        work = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            server = ProsodyServer(require_build(build), work / "prosody", delegate_roster=delegate)
            stack.push_async_callback(server.stop)
            await server.start()
            webapp = await stack.enter_async_context(FakeWebApp())
            http = await stack.enter_async_context(aiohttp.ClientSession())
            for user in ("alice", "bob", "carol", "dave"):
                await server.register(user, "demo")
            webapp.rosters.update(ROSTERS)
            config = work / "config.toml"
            (port,) = free_ports(1)
            write_component_config(
                config,
                server,
                webapp.url_template,
                listener={"port": port, "token": TOKEN},
                log={"format": "console"},
            )
            print(f"Prosody {server.build.version} on 127.0.0.1:{server.c2s_port} (c2s), "
                  f"web app at {webapp.url_template}, component config {config}")  # fmt: skip
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "component",
                "run",
                "--config",
                str(config),
                preexec_fn=die_with_parent,  # one prctl() call: safe between fork and exec
            )
            stack.push_async_callback(stop_component, process)
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(http, url, process)
            await run_story(server, webapp, http, url)
            if keep_running:
                show_running(server, url)
                await asyncio.Event().wait()


def show_running(server: ProsodyServer, url: str) -> None:
    print(
        f"\nRunning. Users alice/bob/carol/dave, password 'demo', on 127.0.0.1:{server.c2s_port}."
    )
    print("Refresh alice by hand (the web app still serves the roster above):")
    refresh = f"{url}/roster_admin/refresh"
    print(f"  curl -H 'Authorization: Bearer {TOKEN}' -d '[\"alice\"]' {refresh}")
    print(f"Ctrl-C (or kill {os.getpid()}) stops everything.")


async def run_story(
    server: ProsodyServer, webapp: FakeWebApp, http: aiohttp.ClientSession, url: str
) -> None:
    async with connected_client(f"alice@{DOMAIN}", "demo", server.c2s_port) as alice:
        roster = await alice.get_roster()
        await alice.send_presence()
        if not server.delegate_roster:
            # The server answered from its own store; the component syncs alice as her
            # presence arrives and the server pushes the difference.
            show("alice logs in; the server's stored roster:", roster)
            async with asyncio.timeout(10):
                while len(roster) != len(ROSTERS["alice"]):
                    await alice.wait_for_push()
                    alice.pushes.clear()
                    roster = await alice.get_roster()
        show("alice's roster, as the web app says:", roster)

        webapp.rosters["alice"] = {
            f"bob@{DOMAIN}": {"name": "Bobby", "groups": ["Friends"]},
            f"dave@{DOMAIN}": {"name": "Dave", "groups": ["Work"]},
        }
        print("\nThe web app renames bob, drops carol, adds dave and posts a refresh:")
        async with http.post(
            f"{url}/roster_admin/refresh",
            json=["alice"],
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            print(f"  POST /roster_admin/refresh -> {response.status} {await response.text()}")
        for jid, change in (
            (f"bob@{DOMAIN}", "Bobby"),
            (f"carol@{DOMAIN}", "remove"),
            (f"dave@{DOMAIN}", "Dave"),
        ):
            push = await alice.wait_for_push(shows(jid, change))
            entry = push.items[jid]
            if entry["subscription"] == "remove":
                what = "removed"
            else:
                what = f"name={entry['name']!s:<8} {entry['subscription']}"
            print(f"  push to alice: {jid:<22} {what}")
        show("alice's roster now:", await alice.get_roster())


async def until_signalled(main: Coroutine[None, None, None]) -> int | None:
    """Run ``main``; SIGTERM or SIGINT cancels it (its cleanup runs). Returns that signal."""
    task = asyncio.ensure_future(main)
    received: list[int] = []

    def stop(signum: int) -> None:
        if not received:  # a second Ctrl-C must not cut the cleanup short
            received.append(signum)
            task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
        await task
    except asyncio.CancelledError:
        if not received:
            raise
    return received[0] if received else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prosody", choices=["0.12", "13"], default="13")
    parser.add_argument("--no-delegation", action="store_true", help="server answers rosters")
    parser.add_argument("--keep-running", action="store_true", help="stay up for your client")
    args = parser.parse_args()
    os.chdir(ROOT)
    # The component writes to the same stdout: when it is a pipe, each of our lines must go
    # out at once to stay in order with the component's.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    signum = asyncio.run(
        until_signalled(demo(args.prosody, not args.no_delegation, args.keep_running))
    )
    if signum is not None:
        sys.exit(128 + signum)


if __name__ == "__main__":
    main()
