"""The ejabberd test harness and the shipped configuration (deploy/ejabberd/), on 23.01 and
24.12."""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness.ejabberd import (
    DEPLOY_CONFIG,
    DEPLOY_DIR,
    EjabberdApiError,
    EjabberdError,
    add_rosteritem_args,
    parse_get_roster,
    render_deploy_config,
    require_build,
)
from tests.harness.xmpp_client import StanzaError, XmppConnectError, connected_component

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET
    from collections.abc import Callable

    from tests.harness.ejabberd import EjabberdBuild, EjabberdServer
    from tests.harness.xmpp_client import TestComponent
    from tests.integration.ejabberd_fixtures import Accounts


REFUSAL = "Access denied by service policy"
#: What the shipped file grants the component (XEP-0356 access -> type).
GRANTED = {"roster": "both", "presence": "roster", "message": "outgoing"}


def privileges(message: ET.Element, namespace: str) -> dict[str, str] | None:
    """A XEP-0356 advertisement's grants, {access: type}; None for any other message."""
    privilege = message.find(f"{{{namespace}}}privilege")
    if privilege is None:
        return None
    return {p.get("access", ""): p.get("type", "") for p in privilege.iter(f"{{{namespace}}}perm")}


def sent_by(sender: str, presence_type: str | None) -> Callable[[ET.Element], bool]:
    """Matches a presence from exactly `sender` of `presence_type` (None: available)."""
    return lambda p: p.get("from") == sender and p.get("type") == presence_type


async def advertised(component: TestComponent, namespace: str) -> dict[str, str]:
    """The grants the server advertised to `component` on connecting."""
    message = await component.messages.wait(lambda m: privileges(m, namespace) is not None)
    grants = privileges(message, namespace)
    assert grants is not None
    return grants


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word of the address in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add((socket.inet_ntop(family, words), int(port, 16)))
    return found


# --- without servers ----------------------------------------------------------------------


def test_missing_build_fails_with_bootstrap_hint(tmp_path: Path) -> None:
    """A build that is not installed is reported with the command that installs it."""
    with pytest.raises(EjabberdError, match="run scripts/bootstrap"):
        require_build("24.12", servers_dir=tmp_path)


def test_rendered_config_has_the_test_names_ports_and_probe() -> None:
    """Rendering substitutes every name, the secret and both ports, and lets the probe in."""
    text = render_deploy_config(
        domain="d.test",
        component_jid="c.d.test",
        component_secret="s3",
        component_port=10001,
        api_port=10002,
        extra_components=("p.d.test",),
    )
    assert "example.org" not in text
    assert "change-me" not in text
    assert '      c.d.test:\n        password: "s3"\n' in text
    assert "    port: 10001\n" in text
    assert "    port: 10002\n" in text
    assert "  roster_component:\n    server:\n      - c.d.test\n      - p.d.test\n" in text
    assert "  roster_managed_users:\n    server: d.test\n" in text
    assert (DEPLOY_DIR / DEPLOY_CONFIG).is_file()


def test_api_auth_rendering_enables_the_documented_alternative() -> None:
    """api_auth swaps the loopback-only permission for the commented credentials block."""

    def render(*, api_auth: bool) -> str:
        return render_deploy_config(
            domain="d.test",
            component_jid="c.d.test",
            component_secret="s",
            component_port=1,
            api_port=2,
            api_auth=api_auth,
        )

    plain, auth = render(api_auth=False), render(api_auth=True)
    commented = (
        "      ip: 127.0.0.1/8\n"
        "      # access:\n      #   allow:\n      #     user: roster-admin@d.test\n"
        "      #     ip: 127.0.0.1/8\n"
    )
    enabled = (
        "      access:\n        allow:\n          user: roster-admin@d.test\n"
        "          ip: 127.0.0.1/8\n"
    )
    assert plain.count(commented) == 1
    assert auth == plain.replace(commented, enabled)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        ("23.01", {"group": "Work;Friends"}),
        ("24.12", {"groups": ["Work", "Friends"]}),
    ],
)
def test_add_rosteritem_arguments_per_build(build: str, shape: dict[str, object]) -> None:
    """23.01 takes the groups as one ';'-separated string, 24.12 as a list."""
    args = add_rosteritem_args(
        build,
        "alice",
        "d.test",
        "bob@d.test",
        name="Bob",
        groups=["Work", "Friends"],
        subscription="both",
    )
    common = {"localuser": "alice", "localhost": "d.test", "user": "bob", "host": "d.test"}
    assert args == {**common, "nick": "Bob", "subs": "both", **shape}


def test_23_01_cannot_name_a_group_with_a_semicolon() -> None:
    """23.01 splits the group string at ';': such a group cannot be written, and says so."""
    with pytest.raises(ValueError, match="cannot name a group"):
        add_rosteritem_args(
            "23.01", "a", "d.test", "b@d.test", name="", groups=["a;b"], subscription="both"
        )


def test_get_roster_rows_merge_per_build() -> None:
    """23.01's one row per group and 24.12's one row per contact read the same."""
    rows_23 = [
        {"jid": "b@d", "nick": "B", "subscription": "both", "ask": "undefined", "group": "G1"},
        {"jid": "b@d", "nick": "B", "subscription": "both", "ask": "undefined", "group": "G2"},
        {"jid": "c@d", "nick": "", "subscription": "none", "ask": "out", "group": ""},
    ]
    rows_24 = [
        {
            "jid": "b@d",
            "nick": "B",
            "subscription": "both",
            "pending": "undefined",
            "groups": ["G2", "G1"],
        },
        {"jid": "c@d", "nick": "", "subscription": "none", "pending": "out", "groups": []},
    ]
    expected = {
        "b@d": {"name": "B", "groups": ["G1", "G2"], "subscription": "both", "pending": "none"},
        "c@d": {"name": None, "groups": [], "subscription": "none", "pending": "out"},
    }
    assert parse_get_roster("23.01", rows_23) == expected
    assert parse_get_roster("24.12", rows_24) == expected


def section_keys(yaml_text: str, section: str) -> set[str]:
    """The keys right under the top-level mapping `section` of an ejabberd.yml-style file
    (two-space indentation; commented-out keys do not count)."""
    keys: set[str] = set()
    inside = False
    for line in yaml_text.splitlines():
        if re.match(r"[^\s#]", line):
            inside = line.rstrip() == f"{section}:"
        elif inside and (key := re.match(r"  ([^\s#-][^:]*):", line)):
            keys.add(key.group(1).strip("\"'"))
    return keys


def test_shipped_names_clash_with_debians_default_config_in_mod_roster_only(
    ejabberd_build: EjabberdBuild,
) -> None:
    """Only mod_roster clashes with Debian's ejabberd.yml, which has our modules, not our ports."""
    example = ejabberd_build.root / "usr" / "share" / "ejabberd" / "ejabberd.yml.example"
    default, shipped = example.read_text(), (DEPLOY_DIR / DEPLOY_CONFIG).read_text()
    for section in ("acl", "access_rules", "api_permissions"):
        assert section_keys(shipped, section)
        assert not section_keys(shipped, section) & section_keys(default, section)
    assert section_keys(shipped, "modules") & section_keys(default, "modules") == {"mod_roster"}
    assert {"mod_admin_extra", "mod_http_api"} <= section_keys(default, "modules")
    ports = re.compile(r"(?m)^\s*port: (\d+)$")
    assert set(ports.findall(shipped)) == {"5347", "5288"}
    assert not set(ports.findall(shipped)) & set(ports.findall(default))


# --- with servers -------------------------------------------------------------------------


@pytest.mark.integration
async def test_shipped_config_starts_a_server_listening_on_loopback_only(
    ejabberd: EjabberdServer,
) -> None:
    """The shipped file loads; every socket the VM listens on is ours and on 127.0.0.1."""
    status = await ejabberd.api("status")
    assert f"ejabberd {ejabberd.build.version} is running" in status
    assert listening_sockets(ejabberd.pid) == {("127.0.0.1", port) for port in ejabberd.ports}


@pytest.mark.integration
async def test_component_is_advertised_the_shipped_privileges(ejabberd: EjabberdServer) -> None:
    """On connecting, the component is granted roster both, presence roster, message outgoing."""
    namespace = ejabberd.build.privilege_namespace
    async with connected_component(
        ejabberd.component_jid, ejabberd.component_secret, ejabberd.component_port
    ) as component:
        grants = await advertised(component, namespace)
    # 24.12 also lists an "iq" permission granting no namespace.
    assert {access: grants[access] for access in GRANTED} == GRANTED
    assert set(grants) - set(GRANTED) <= {"iq"}
    assert grants.get("iq", "") == ""


@pytest.mark.integration
async def test_probe_and_component_side_by_side_both_get_users_presence(
    ejabberd: EjabberdServer, ejabberd_probe: TestComponent, ejabberd_accounts: Accounts
) -> None:
    """Probe and component connect side by side; each gets its grants and users' presence."""
    namespace = ejabberd.build.privilege_namespace
    alice = await ejabberd_accounts.new("alice")
    async with connected_component(
        ejabberd.component_jid, ejabberd.component_secret, ejabberd.component_port
    ) as component:
        components = (component, ejabberd_probe)
        for each in components:
            assert GRANTED.items() <= (await advertised(each, namespace)).items()
        async with ejabberd_accounts.client(alice) as a:
            for presence_type in (None, "unavailable"):
                await a.send_presence(presence_type=presence_type)
                for each in components:
                    await each.presences.wait(sent_by(a.jid, presence_type))
        for each in components:
            assert {p.get("to") for p in each.presences.items} == {each.jid}


@pytest.mark.integration
async def test_no_unavailable_reaches_components_when_a_lone_client_just_disconnects(
    ejabberd: EjabberdServer, ejabberd_probe: TestComponent, ejabberd_accounts: Accounts
) -> None:
    """A lone client that just disconnects leaves the components no unavailable presence."""
    # mod_privilege forwards the presence users send and the presence they receive from other
    # users; the unavailable ejabberd broadcasts for a closed session is neither, unless a
    # contact online receives it.
    alice, bob = await ejabberd_accounts.new("alice"), await ejabberd_accounts.new("bob")
    async with ejabberd_accounts.client(alice) as a:
        await a.send_presence()
        await ejabberd_probe.presences.wait(sent_by(a.jid, None))
    # A marker: bob's presence, sent after alice's session has ended.
    async with ejabberd_accounts.client(bob) as b:
        await b.send_presence(presence_type="unavailable")
        await ejabberd_probe.presences.wait(sent_by(b.jid, "unavailable"))
    assert not [
        p for p in ejabberd_probe.presences.items if p.get("from") == a.jid and p.get("type")
    ]


@pytest.mark.integration
async def test_api_roster_commands_store_push_and_remove(
    ejabberd: EjabberdServer, ejabberd_accounts: Accounts
) -> None:
    """add_rosteritem stores and pushes, get_roster reads, delete_rosteritem removes and pushes."""
    alice, bob = await ejabberd_accounts.new("alice"), await ejabberd_accounts.new("bob")
    user = alice.partition("@")[0]
    item = {"name": "Bob", "groups": ["Friends", "Work"], "subscription": "both"}
    async with ejabberd_accounts.client(alice) as a:
        assert await a.get_roster() == {}
        await ejabberd.add_roster_item(user, bob, name="Bob", groups=["Work", "Friends"])
        push = await a.wait_for_push(lambda p: bob in p.items)
        assert push.accepted
        assert push.items == {bob: item}
        assert await a.get_roster() == {bob: item}
        assert await ejabberd.roster(user) == {bob: {**item, "pending": "none"}}

        await ejabberd.remove_roster_item(user, bob)
        push = await a.wait_for_push(lambda p: p.items.get(bob, {}).get("subscription") == "remove")
        assert push.accepted
        assert await a.get_roster() == {}
        assert await ejabberd.roster(user) == {}


@pytest.mark.integration
async def test_get_roster_answers_in_the_builds_own_shape(
    ejabberd: EjabberdServer, ejabberd_accounts: Accounts
) -> None:
    """get_roster's raw JSON: one row per group on 23.01, one row per contact on 24.12."""
    alice, bob = await ejabberd_accounts.new("alice"), await ejabberd_accounts.new("bob")
    user = alice.partition("@")[0]
    await ejabberd.add_roster_item(user, bob, name="Bob", groups=["G1", "G2"])
    rows = await ejabberd.api("get_roster", user=user, host=ejabberd.domain)
    common = {"jid": bob, "nick": "Bob", "subscription": "both"}
    if ejabberd.build.name == "23.01":
        by_group = sorted(rows, key=lambda row: row["group"])
        assert by_group == [
            {**common, "ask": "undefined", "group": "G1"},
            {**common, "ask": "undefined", "group": "G2"},
        ]
    else:
        assert rows == [{**common, "pending": "undefined", "groups": ["G1", "G2"]}]


@pytest.mark.integration
async def test_users_own_roster_sets_are_refused(
    ejabberd: EjabberdServer, ejabberd_accounts: Accounts
) -> None:
    """A user's roster SETs (add, change, remove) get not-allowed and change nothing."""
    alice, bob = await ejabberd_accounts.new("alice"), await ejabberd_accounts.new("bob")
    user = alice.partition("@")[0]
    await ejabberd.add_roster_item(user, bob, name="Bob")
    before = await ejabberd.roster(user)
    async with ejabberd_accounts.client(alice) as a:
        attempts: list[Callable[[], object]] = [
            lambda: a.set_roster_item(f"mallory@{ejabberd.domain}", "Mallory", ["Evil"]),
            lambda: a.set_roster_item(bob, "Renamed", ["Elsewhere"]),
            lambda: a.remove_roster_item(bob),
        ]
        for attempt in attempts:
            with pytest.raises(StanzaError) as exc:
                await attempt()  # type: ignore[misc]
            assert (exc.value.condition, exc.value.text) == ("not-allowed", REFUSAL)
        assert not a.pushes.items
    assert await ejabberd.roster(user) == before


@dataclass(frozen=True)
class Outcome:
    """What one subscription stanza from alice does, though it bounces with forbidden."""

    alice: str  # alice's subscription to bob afterwards (they start as "both")
    bob: str  # bob's to alice
    reaches_contact: bool  # bob receives the stanza
    reaches_stranger: bool  # carol (no contact) receives it


#: The mod_roster access rule only keeps the SENDER's roster out of it: ejabberd routes the
#: stanza anyway and the target's roster processes it (and answers an unsubscribe
#: automatically, which lowers the sender's side too). The component's sync repairs this.
#: A subscribe to a stranger also leaves the stranger a pending request (not in get_roster).
OUTCOMES = {
    "subscribe": Outcome("both", "both", reaches_contact=False, reaches_stranger=True),
    "subscribed": Outcome("both", "both", reaches_contact=False, reaches_stranger=False),
    "unsubscribe": Outcome("from", "to", reaches_contact=True, reaches_stranger=False),
    "unsubscribed": Outcome("both", "from", reaches_contact=True, reaches_stranger=False),
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", sorted(OUTCOMES))
async def test_subscription_stanzas_bounce_yet_reach_their_target(
    ejabberd: EjabberdServer, ejabberd_accounts: Accounts, kind: str
) -> None:
    """Subscription stanzas bounce with forbidden, yet have the OUTCOMES effects on rosters."""
    alice, bob, carol = [await ejabberd_accounts.new(n) for n in ("alice", "bob", "carol")]
    users = {jid: jid.partition("@")[0] for jid in (alice, bob, carol)}
    await ejabberd.add_roster_item(users[alice], bob)
    await ejabberd.add_roster_item(users[bob], alice)
    outcome = OUTCOMES[kind]
    async with (
        ejabberd_accounts.client(alice) as a,
        ejabberd_accounts.client(bob) as b,
        ejabberd_accounts.client(carol) as c,
    ):
        for each in (a, b, c):
            await each.send_presence()
        for target in (b, c):
            a.errors.clear()
            await a.send_subscription(target.bare, kind)
            bounced = await a.wait_for_error()
            assert bounced.sender == target.bare
            assert bounced.error is not None
            assert (bounced.error.condition, bounced.error.text) == ("forbidden", REFUSAL)
            # A marker sent after it has arrived, so the stanza has been dealt with.
            await a.send_message(target.bare, f"after {kind}")
            await target.wait_for_message(lambda m: m.body == f"after {kind}")
        delivered = {x.bare for x in (b, c) if any(p.type == kind for p in x.presences.items)}
    reached = ((bob, outcome.reaches_contact), (carol, outcome.reaches_stranger))
    assert delivered == {jid for jid, reaches in reached if reaches}
    assert {
        jid: item["subscription"] for jid, item in (await ejabberd.roster(users[alice])).items()
    } == {bob: outcome.alice}
    assert {
        jid: item["subscription"] for jid, item in (await ejabberd.roster(users[bob])).items()
    } == {alice: outcome.bob}
    assert await ejabberd.roster(users[carol]) == {}


@pytest.mark.integration
async def test_clients_log_in_with_plain_and_scram_only_on_23_01(
    ejabberd: EjabberdServer, ejabberd_accounts: Accounts
) -> None:
    """PLAIN logs in without TLS on both builds, SCRAM-SHA-1 only on 23.01."""
    alice = await ejabberd_accounts.new("alice")
    async with ejabberd_accounts.client(alice, mechanism="PLAIN") as a:
        assert a.bare == alice
    scram = ejabberd_accounts.client(alice, mechanism="SCRAM-SHA-1")
    if ejabberd.build.name == "23.01":
        async with scram as a:
            assert a.bare == alice
    else:
        with pytest.raises(XmppConnectError, match="authentication failed"):
            async with scram:
                pass


@pytest.mark.integration
async def test_api_refuses_commands_the_component_does_not_need(ejabberd: EjabberdServer) -> None:
    """The shipped permission names the component's commands only: others get 403."""
    with pytest.raises(EjabberdApiError) as exc:
        await ejabberd.api("registered_users", host=ejabberd.domain)
    assert exc.value.status == 403


@pytest.mark.integration
async def test_check_account_tells_registered_users(
    ejabberd: EjabberdServer, ejabberd_accounts: Accounts
) -> None:
    """check_account answers 0 for an account and 1 for none (add_rosteritem does not care)."""
    alice = await ejabberd_accounts.new("alice")
    user = alice.partition("@")[0]
    assert await ejabberd.api("check_account", user=user, host=ejabberd.domain) == 0
    assert await ejabberd.api("check_account", user=f"{user}-none", host=ejabberd.domain) == 1


@pytest.mark.integration
async def test_api_with_credentials_needs_them(
    ejabberd_factory: Callable[..., EjabberdServer],
) -> None:
    """With the documented credentials block, roster commands need the API account's password."""
    server = ejabberd_factory(api_auth=True)
    await server.register("alice", "pw")
    with pytest.raises(EjabberdApiError) as exc:
        await server.api("get_roster", auth=False, user="alice", host=server.domain)
    assert exc.value.status == 403
    await server.add_roster_item("alice", f"bob@{server.domain}", name="Bob")
    assert list(await server.roster("alice")) == [f"bob@{server.domain}"]


@pytest.mark.integration
async def test_restart_keeps_accounts_and_rosters(
    ejabberd: EjabberdServer, ejabberd_accounts: Accounts
) -> None:
    """restart() comes back on the same ports with the same accounts and rosters."""
    alice, bob = await ejabberd_accounts.new("alice"), await ejabberd_accounts.new("bob")
    user = alice.partition("@")[0]
    await ejabberd.add_roster_item(user, bob, name="Bob")
    ports = ejabberd.ports
    ejabberd.restart()
    assert ejabberd.ports == ports
    async with ejabberd_accounts.client(alice) as a:
        assert await a.get_roster() == {bob: {"name": "Bob", "groups": [], "subscription": "both"}}
