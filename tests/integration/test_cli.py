"""The operator commands as real processes, against the running component, a real server and
the fake web app: check tells drift and changes nothing, refresh syncs and pushes."""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness import log_secrets
from tests.integration.conftest import System, eventually, item, jid, write_config
from tests.integration.test_live_presence import drift_alice
from tests.unit.test_config import GOOD

if TYPE_CHECKING:
    from component.roster import StoredRoster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALICE_ROSTER = {jid("bob"): {"name": "Bob"}, jid("carol"): {"name": "Carol"}}


async def cli(
    system: System, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``python -m component ARGS --config FILE`` as a process, with the component's config
    (its listener's real port in place of 0): exit code, stdout, stderr (both also looked for
    secrets at the end of the session)."""
    assert system.app is not None
    path = system.config_path.with_name("cli.toml")
    write_config(path, system.server, system.webapp, listener={"port": system.app.http_port})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "component", *args, "--config", str(path),
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    for line in (out + err).decode().splitlines():
        log_secrets.component_output(f"http-roster-admin {args[0]}", line)
    return process.returncode, out.decode(), err.decode()


async def stored(system: System, user: str) -> StoredRoster:
    assert system.app is not None
    return await system.app.store.read(jid(user))


async def test_check_tells_drift_changes_nothing_and_a_refresh_repairs_it(
    system: System,
) -> None:
    """In sync: exit 0. The roster edited inside the server and changed by the web app: each
    difference, exit 1, the server's copy untouched; `refresh` then repairs it; a check that
    cannot fetch: exit 2."""
    system.set_roster("alice", ALICE_ROSTER)
    assert (await system.refresh(["alice"]))[1]["updated"] == 1
    assert await cli(system, "check", "alice") == (0, "alice: in sync (2 contacts)\n", "")

    await drift_alice(system)  # bob's subscription "to", carol removed, mallory added
    system.set_roster("alice", {jid("bob"): {"name": "Robert"}, jid("carol"): {"name": "Carol"}})
    before = await stored(system, "alice")
    code, out, err = await cli(system, "check", "alice", "bob")
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[:5] == [
        "alice: 3 differences",
        '  ~ bob@example.test  name: "Bob" -> "Robert"',
        "  ~ bob@example.test  subscription: to -> both",
        '  + carol@example.test  name "Carol", groups []',
        lines[4],  # mallory's stored item: its ask depends on the server's tools
    ]
    assert lines[4].startswith("  - mallory@example.test  name (none), groups [], subscription")
    assert lines[5:] == ["bob: in sync (0 contacts)", "2 users: 1 in sync, 1 differ, 0 failed"]
    assert await stored(system, "alice") == before

    code, out, _ = await cli(system, "refresh", "alice")
    assert (code, json.loads(out)) == (
        0,
        {
            "status": "ok",
            "message": "roster update complete",
            "updated": 1,
            "errors": 0,
            "failed": [],
        },
    )
    repaired = await stored(system, "alice")
    assert {c: (v.name, v.subscription, v.ask) for c, v in repaired.contacts.items()} == {
        jid("bob"): ("Robert", "both", False),
        jid("carol"): ("Carol", "both", False),
    }
    assert (await cli(system, "check", "alice"))[0] == 0

    await system.webapp.set_mode("error")
    assert await cli(system, "check", "alice") == (
        2,
        "alice: error: fetch failed: HTTP 500\n",
        "",
    )


async def test_refresh_syncs_and_pushes_to_online_clients(system: System) -> None:
    """`refresh USER`: the web app's change reaches the online client as pushes; a user whose
    fetch fails is counted, and makes the exit code 1."""
    system.set_roster("alice", ALICE_ROSTER)
    system.expected = {jid("bob"): item("Bob"), jid("carol"): item("Carol")}
    async with system.client("alice") as alice:
        await system.logged_in_roster(alice)
        alice.pushes.clear()
        system.set_roster("alice", {jid("bob"): {"name": "Bob"}, jid("dave"): {"name": "Dave"}})
        code, out, _ = await cli(system, "refresh", "alice")
        assert (code, json.loads(out)["updated"]) == (0, 1)
        await alice.wait_for_push(lambda p: p.items.get(jid("dave")) == item("Dave"))
        await alice.wait_for_push(
            lambda p: p.items.get(jid("carol"), {}).get("subscription") == "remove"
        )

    await system.webapp.set_mode("error")
    code, out, _ = await cli(system, "refresh", "alice", "bob")
    assert (code, json.loads(out)) == (
        1,
        {
            "status": "error",
            "message": "roster update failed",
            "updated": 0,
            "errors": 2,
            "failed": ["alice", "bob"],
        },
    )


async def test_refresh_all_online_syncs_exactly_the_online_users(system: System) -> None:
    """`refresh --all-online`: alice and bob (online) are fetched and get their new rosters
    pushed; carol (offline) is not fetched."""
    for user in ("alice", "bob", "carol"):
        system.set_roster(user, {})
    assert system.app is not None
    app = system.app
    async with system.client("alice") as alice, system.client("bob") as bob:
        for client in (alice, bob):
            await client.get_roster()
            await client.send_presence()
        await eventually(lambda: {"alice", "bob"} <= set(app.online.online_users()))
        system.set_roster("alice", {jid("dave"): {"name": "Dave"}})
        system.set_roster("bob", {jid("dave"): {"name": "Dave"}})
        system.set_roster("carol", {jid("dave"): {"name": "Dave"}})
        fetched = len(system.webapp.requests)
        code, out, _ = await cli(system, "refresh", "--all-online")
        assert (code, json.loads(out)["updated"], json.loads(out)["errors"]) == (0, 2, 0)
        for client in (alice, bob):
            await client.wait_for_push(lambda p: p.items.get(jid("dave")) == item("Dave"))
    # Login syncs may fetch alice or bob once more (max_age is 0 here); carol never.
    assert {r.username for r in system.webapp.requests[fetched:]} == {"alice", "bob"}
    assert (await stored(system, "carol")).contacts == {}


async def test_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    """`config` as a process: every secret masked, those from the environment named."""
    path = tmp_path / "config.toml"
    path.write_text(
        GOOD.replace('kind = "prosody"', 'kind = "ejabberd"\napi_url = "http://127.0.0.1:1/api"')
        + 'api_user = "admin@example.test"\n'
    )
    env = {"PATH": "/usr/bin:/bin", "HTTP_ROSTER_ADMIN_API_PASSWORD": "env-password"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "component", "config", "--config", str(path),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert (process.returncode, err) == (0, b"")
    shown = tomllib.loads(out.decode())
    assert shown["server"]["api_password"] == "******** (from HTTP_ROSTER_ADMIN_API_PASSWORD)"
    assert shown["component"]["secret"] == shown["listener"]["token"] == "********"
    assert shown["webapp"]["token"] == ""
    for secret in (b"s3cret", b"t0ken", b"env-password"):
        assert secret not in out
