"""The XEP-0356 roster store: what it sends to the server and how it reads the answers."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest

from component import stanzas
from component.errors import StoreError
from component.roster import Contact
from component.store import IqType, PrivilegedRosterStore

ALICE = "alice@example.test"


class RecordingSender:
    """Stands in for the XMPP link: records IQs, answers with a canned result or error."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, ET.Element]] = []
        self.result = ET.Element("iq", {"type": "result"})
        self.error: StoreError | None = None

    async def send_iq(self, to: str, iq_type: IqType, payload: ET.Element) -> ET.Element:
        self.sent.append((to, iq_type, payload))
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture(name="sender")
def fixture_sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture(name="store")
def fixture_store(sender: RecordingSender) -> PrivilegedRosterStore:
    return PrivilegedRosterStore(sender)


async def test_read_is_a_roster_get_to_the_users_bare_jid(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Reading sends an empty roster query and parses the server's items."""
    sender.result.append(stanzas.roster_query({"bob@x": Contact("bob@x", "Bob")}))
    assert await store.read(ALICE) == {"bob@x": Contact("bob@x", "Bob")}
    [(to, iq_type, payload)] = sender.sent
    assert (to, iq_type, len(payload)) == (ALICE, "get", 0)


async def test_write_sends_exactly_one_item(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """One item per IQ: Prosody answers multi-item sets with several same-id results."""
    await store.write(ALICE, Contact("bob@x", "Bob", frozenset({"G"})))
    [(_, iq_type, payload)] = sender.sent
    assert iq_type == "set"
    assert stanzas.parse_roster_query(payload) == {
        "bob@x": Contact("bob@x", "Bob", frozenset({"G"}))
    }


async def test_removing_an_item_already_gone_is_fine(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """item-not-found on removal means the roster already is as wanted."""
    sender.error = StoreError("gone", "item-not-found")
    await store.remove(ALICE, "bob@x")
    (item,) = sender.sent[0][2]
    assert item.attrib == {"jid": "bob@x", "subscription": "remove"}


async def test_other_removal_errors_are_raised(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Any other refusal is a store failure."""
    sender.error = StoreError("no", "forbidden")
    with pytest.raises(StoreError):
        await store.remove(ALICE, "bob@x")


async def test_announce_asks_the_users_host_for_presence(
    store: PrivilegedRosterStore, sender: RecordingSender
) -> None:
    """Presence for added and removed contacts is one request to the host, naming the user."""
    await store.announce(ALICE, ["bob@example.test"], ["carol@remote.test"])
    [(to, iq_type, payload)] = sender.sent
    assert (to, iq_type) == ("example.test", "set")
    assert payload.tag == f"{{{stanzas.PRESENCE_UPDATE_NS}}}update"
    assert payload.get("user") == "alice"
    assert [(child.tag.rpartition("}")[2], child.get("jid")) for child in payload] == [
        ("added", "bob@example.test"),
        ("removed", "carol@remote.test"),
    ]
