"""Benchmark: sync throughput, login latency and memory of the real component on real Prosody.

Starts Prosody on loopback with the shipped configuration, the fake web app, and
`http-roster-admin run` as its own process, then prints figures. Nothing here is asserted:
targets are read off these numbers, not enforced by timed tests.

    PYTHONPATH=. .venv/bin/python scripts/bench.py --users 200 --contacts 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.component import write_component_config
from tests.harness.prosody import ProsodyServer, free_ports, require_build
from tests.harness.webapp import FakeWebApp
from tests.harness.xmpp_client import connected_client

DOMAIN = "example.test"
TOKEN = "bench"  # noqa: S105 -- loopback only


def rosters(users: int, contacts: int, generation: int) -> dict[str, dict[str, object]]:
    """Every user gets ``contacts`` contacts; a new generation renames a tenth of them."""
    result: dict[str, dict[str, object]] = {}
    for u in range(users):
        roster: dict[str, object] = {}
        for c in range(contacts):
            renamed = generation and c % 10 == 0
            roster[f"c{c}-of-u{u}@{DOMAIN}"] = {
                "name": f"Contact {c}{' v' + str(generation) if renamed else ''}",
                "groups": [f"Group {c % 5}"],
            }
        result[f"u{u}"] = roster
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        line.split(":")[0]: int(line.split()[1])
        for line in status.splitlines()
        if line.startswith(("VmRSS", "VmHWM"))
    }


async def timed_refresh(
    http: aiohttp.ClientSession, url: str, users: list[str], pids: tuple[int, int]
) -> tuple[float, Any]:
    """POST a refresh; wall time, and the CPU seconds the component and Prosody spent on it."""
    cpu = [cpu_seconds(pid) for pid in pids]
    began = time.perf_counter()
    async with http.post(
        f"{url}/roster_admin/refresh", json=users, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        body = await response.json()
    took = time.perf_counter() - began
    used = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu, strict=True)]
    print(f"    cpu: component {used[0]:.2f} s, prosody {used[1]:.2f} s")
    return took, body


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="roster-bench-") as tmp:
        work = Path(tmp)
        server = ProsodyServer(require_build(args.prosody), work / "prosody")
        async with server, FakeWebApp() as webapp, aiohttp.ClientSession() as http:
            names = [f"u{u}" for u in range(args.users)]
            slots = asyncio.Semaphore(8)

            async def register(name: str) -> None:
                async with slots:
                    await server.register(name, "pw")

            await asyncio.gather(*(register(n) for n in names))
            webapp.rosters.update(rosters(args.users, args.contacts, 0))
            (port,) = free_ports(1)
            config = work / "config.toml"
            write_component_config(
                config,
                server,
                webapp.url_template,
                listener={"port": port, "token": TOKEN, "max_users": args.users},
                sync={"max_age": 0, "concurrency": args.concurrency},
                log={"format": "json", "level": "warning"},
            )
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "component", "run", "--config", str(config),
                stdout=(work / "component.log").open("w"),
            )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            try:
                await wait_ready(http, url)
                pids = (process.pid, server.pid)
                idle = memory_kib(process.pid)
                items = args.users * args.contacts
                print(f"Prosody {server.build.version}, {args.users} users x {args.contacts} "
                      f"contacts = {items} items, sync concurrency {args.concurrency}")  # fmt: skip

                took, body = await timed_refresh(http, url, names, pids)
                print(f"initial refresh (all new):    {took:7.2f} s  {items / took:7.0f} items/s"
                      f"  updated={body['updated']} errors={body['errors']}")  # fmt: skip
                took, body = await timed_refresh(http, url, names, pids)
                print(f"refresh, nothing changed:     {took:7.2f} s  "
                      f"{args.users / took:7.0f} users/s")  # fmt: skip
                webapp.rosters.update(rosters(args.users, args.contacts, 1))
                changed = args.users * len(range(0, args.contacts, 10))
                took, body = await timed_refresh(http, url, names, pids)
                print(f"refresh, 10% renamed:         {took:7.2f} s  {changed / took:7.0f} "
                      f"changed items/s  errors={body['errors']}")  # fmt: skip

                latencies = []
                for name in names[: args.logins]:
                    async with connected_client(f"{name}@{DOMAIN}", "pw", server.c2s_port) as c:
                        began = time.perf_counter()
                        roster = await c.get_roster()
                        latencies.append(time.perf_counter() - began)
                        assert len(roster) == args.contacts
                latencies.sort()
                p95 = latencies[int(len(latencies) * 0.95) - 1]
                p50 = statistics.median(latencies)
                print(f"login roster GET (fetch+diff): p50 {p50 * 1000:6.1f} ms  "
                      f"p95 {p95 * 1000:6.1f} ms  ({len(latencies)} logins)")  # fmt: skip
                busy = {k: v / 1024 for k, v in memory_kib(process.pid).items()}
                print(f"component memory: idle RSS {idle['VmRSS'] / 1024:.1f} MiB, after "
                      f"{busy['VmRSS']:.1f} MiB, peak {busy['VmHWM']:.1f} MiB")  # fmt: skip
            finally:
                process.terminate()
                await process.wait()


async def wait_ready(http: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prosody", choices=["0.12", "13"], default="13")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--contacts", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--logins", type=int, default=50)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
