"""Parsing the web app's roster and diffing rosters."""

from __future__ import annotations

from dataclasses import replace

import pytest

from component.errors import RosterFormatError
from component.roster import (
    MAX_WARNINGS,
    Contact,
    ParsedRoster,
    Roster,
    RosterDiff,
    diff,
    diff_known,
    digest,
    parse_webapp_roster,
)

OWNER = "john@example.org"
MARIE = "marie@example.com"
MICHAEL = "michael@example.com"


def parse(data: object) -> ParsedRoster:
    return parse_webapp_roster(data, OWNER)


def parse_contact(value: object) -> tuple[Contact, tuple[str, ...]]:
    """Parse a roster holding only Marie with *value*; her contact and the warnings."""
    parsed = parse({MARIE: value})
    return parsed.roster[MARIE], parsed.warnings


class TestParse:
    def test_protocol_example(self) -> None:
        """The README's example roster parses into names and groups, all "both"."""
        parsed = parse(
            {
                MARIE: {"name": "Marie"},
                MICHAEL: {"name": "Michael", "groups": ["Team", "Friends"]},
            }
        )

        assert parsed == ParsedRoster(
            roster={
                MARIE: Contact(MARIE, name="Marie"),
                MICHAEL: Contact(MICHAEL, name="Michael", groups=frozenset({"Team", "Friends"})),
            },
            warnings=(),
        )
        assert {(c.subscription, c.ask) for c in parsed.roster.values()} == {("both", False)}

    def test_empty_object(self) -> None:
        """An empty object is a valid, empty roster."""
        assert parse({}) == ParsedRoster(roster={}, warnings=())

    def test_empty_array_is_an_empty_roster(self) -> None:
        """Exactly [] (PHP's json_encode of an empty map) is an empty roster, like {}."""
        assert parse([]) == ParsedRoster(roster={}, warnings=())

    @pytest.mark.parametrize("data", [[MARIE], [{}], [[]], "x", "[]", 1, 0, None, True, False])
    def test_not_an_object(self, data: object) -> None:
        """Anything but a JSON object or [] is not a roster at all."""
        with pytest.raises(RosterFormatError, match="expected a JSON object"):
            parse(data)

    def test_jids_are_normalized(self) -> None:
        """Keys are stringprepped: case folded, trailing dot of the domain dropped."""
        parsed = parse({"Marie@Example.COM.": None})

        assert list(parsed.roster) == [MARIE]
        assert parsed.roster[MARIE].jid == MARIE

    def test_domain_jid_is_a_contact(self) -> None:
        """A bare domain (a gateway, a service) is a valid contact."""
        assert list(parse({"gateway.example.org": None}).roster) == ["gateway.example.org"]

    @pytest.mark.parametrize(
        "key",
        [
            pytest.param(f"{MARIE}/phone", id="resource"),
            pytest.param("", id="empty"),
            pytest.param("@example.com", id="empty-localpart"),
            pytest.param("marie@", id="no-domain"),
            pytest.param("a b@example.com", id="space"),
            pytest.param("a@b@example.com", id="two-ats"),
            pytest.param("x" * 1100 + "@example.com", id="too-long"),
            pytest.param("\ud800@example.com", id="lone-surrogate"),
            pytest.param(OWNER, id="own-jid"),
            pytest.param("John@Example.ORG", id="own-jid-spelled-differently"),
        ],
    )
    def test_bad_key_is_skipped(self, key: str) -> None:
        """A key that is not a contact's bare JID is skipped with a warning; the rest applies."""
        parsed = parse({key: {"name": "Bad"}, MARIE: {"name": "Marie"}})

        assert parsed.roster == {MARIE: Contact(MARIE, name="Marie")}
        assert len(parsed.warnings) == 1
        assert "skipped" in parsed.warnings[0]

    def test_non_string_key_is_skipped(self) -> None:
        """A Python caller's non-string key is skipped, not a crash."""
        parsed = parse({1: None, MARIE: None})

        assert list(parsed.roster) == [MARIE]
        assert parsed.warnings == ("contact 1: key is not a string, skipped",)

    @pytest.mark.parametrize("reverse", [False, True])
    @pytest.mark.parametrize(
        ("keys", "winner"),
        [
            pytest.param(["Marie@Example.com", MARIE], MARIE, id="normal-form-wins"),
            pytest.param(["marie@EXAMPLE.com", "MARIE@example.com"], "MARIE@example.com", id="min"),
        ],
    )
    def test_duplicate_jids(self, keys: list[str], winner: str, reverse: bool) -> None:
        """Keys that normalize alike: the same one wins whatever the order, with a warning."""
        data = {key: {"name": key} for key in (reversed(keys) if reverse else keys)}

        parsed = parse(data)

        assert parsed.roster == {MARIE: Contact(MARIE, name=winner)}
        assert len(parsed.warnings) == 1
        assert "duplicate" in parsed.warnings[0]

    def test_null_value(self) -> None:
        """A null value is a contact without name or groups."""
        assert parse_contact(None) == (Contact(MARIE), ())

    @pytest.mark.parametrize("value", ["Marie", 1, True, [], ["Friends"]])
    def test_non_object_value_is_skipped(self, value: object) -> None:
        """A value that is neither an object nor null skips the contact, with a warning."""
        parsed = parse({MARIE: value, MICHAEL: None})

        assert list(parsed.roster) == [MICHAEL]
        assert len(parsed.warnings) == 1
        assert "expected an object or null" in parsed.warnings[0]

    @pytest.mark.parametrize(
        ("name", "warned"),
        [
            pytest.param(None, False, id="null"),
            pytest.param("", False, id="empty"),
            pytest.param(42, True, id="number"),
            pytest.param(["Marie"], True, id="array"),
            pytest.param("Ma\x00rie", True, id="control-character"),
            pytest.param("Ma\udc00rie", True, id="lone-surrogate"),
        ],
    )
    def test_unusable_name(self, name: object, warned: bool) -> None:
        """A null or empty name means no name; other unusable names are ignored with a warning."""
        contact, warnings = parse_contact({"name": name, "groups": ["Team"]})

        assert contact == Contact(MARIE, groups=frozenset({"Team"}))
        assert len(warnings) == int(warned)

    def test_names_are_kept_verbatim(self) -> None:
        """Names are not trimmed or folded, and may be long and non-ASCII."""
        name = " Marie Curie-Skłodowska " * 1000

        assert parse_contact({"name": name})[0].name == name

    @pytest.mark.parametrize(
        "groups",
        [
            pytest.param(["Team", "Friends"], id="array"),
            pytest.param(["Team", "Friends", "Team"], id="array-with-repeat"),
            pytest.param({"Team": True, "Friends": 1, "Old": False, "Gone": None}, id="set"),
        ],
    )
    def test_groups(self, groups: object) -> None:
        """Groups come as an array, or as an object whose keys with truthy values are members."""
        assert parse_contact({"groups": groups}) == (
            Contact(MARIE, groups=frozenset({"Team", "Friends"})),
            (),
        )

    def test_unusable_groups_are_dropped(self) -> None:
        """Non-string, empty and non-XML group names are dropped, one warning each."""
        contact, warnings = parse_contact({"groups": ["Team", 1, "", None, "\x07", {}]})

        assert contact.groups == frozenset({"Team"})
        assert len(warnings) == 5

    @pytest.mark.parametrize("groups", ["Team", 1, True])
    def test_groups_of_wrong_type(self, groups: object) -> None:
        """Groups that are neither an array nor an object are ignored with a warning."""
        contact, warnings = parse_contact({"name": "Marie", "groups": groups})

        assert contact == Contact(MARIE, name="Marie")
        assert len(warnings) == 1

    def test_unknown_fields_are_ignored(self) -> None:
        """Unknown fields are ignored silently; the web app cannot set the subscription."""
        value = {"name": "Marie", "avatar": "m.png", "subscription": "none", "ask": True}

        assert parse_contact(value) == (Contact(MARIE, name="Marie"), ())

    def test_warnings_are_capped(self) -> None:
        """A roster full of junk gives at most MAX_WARNINGS warnings, the last counting the rest."""
        parsed = parse({f"bad key {i}": None for i in range(MAX_WARNINGS + 10)})

        assert len(parsed.warnings) == MAX_WARNINGS
        assert parsed.warnings[-1] == "... and 11 more warnings"

    def test_warnings_quote_keys_briefly(self) -> None:
        """A huge bad key is quoted in its warning only in part."""
        parsed = parse({"x " * 100_000: None})

        assert len(parsed.warnings[0]) < 200


MARIE_CONTACT = Contact(MARIE, name="Marie", groups=frozenset({"Friends"}))


class TestNormalizedLikeTheServer:
    """What the web app sends is stored the way Prosody will store it, so syncs converge."""

    def test_trailing_dot_of_a_domain_is_dropped(self) -> None:
        """'marie@example.com.' is the same contact as 'marie@example.com'."""
        assert list(parse({"marie@example.com.": {}}).roster) == ["marie@example.com"]

    def test_own_jid_with_a_trailing_dot_is_still_the_owner(self) -> None:
        """The owner's JID written with a trailing dot is skipped like the plain one."""
        parsed = parse({OWNER + ".": {}})
        assert parsed.roster == {}
        assert "own JID" in parsed.warnings[0]

    def test_line_breaks_and_tabs_in_names_become_spaces(self) -> None:
        """XML attribute normalization turns them into spaces on the server's side."""
        contact, _ = parse_contact({"name": "Marie\tvon\nHof\r"})
        assert contact.name == "Marie von Hof "

    def test_carriage_returns_in_groups_become_newlines(self) -> None:
        """XML text normalization turns \\r\\n and \\r into \\n on the server's side."""
        contact, _ = parse_contact({"groups": ["a\r\nb", "c\rd"]})
        assert contact.groups == {"a\nb", "c\nd"}


@pytest.fixture(name="current")
def fixture_current() -> Roster:
    return {MARIE: MARIE_CONTACT, MICHAEL: Contact(MICHAEL, name="Michael")}


class TestDiff:
    def test_no_op(self, current: Roster) -> None:
        """Equal rosters need nothing, and the diff is falsy."""
        result = diff(current, dict(current))

        assert result == RosterDiff(upserts=(), removals=())
        assert not result

    def test_add(self, current: Roster) -> None:
        """A contact only in the desired roster is upserted."""
        aaron = Contact("aaron@example.com")

        result = diff(current, {**current, aaron.jid: aaron})

        assert result == RosterDiff(upserts=(aaron,), removals=())
        assert result

    def test_remove(self, current: Roster) -> None:
        """A contact only in the current roster is removed."""
        result = diff(current, {MARIE: MARIE_CONTACT})

        assert result == RosterDiff(upserts=(), removals=(MICHAEL,))
        assert result

    @pytest.mark.parametrize(
        "marie",
        [
            pytest.param(replace(MARIE_CONTACT, name="Marie C."), id="rename"),
            pytest.param(replace(MARIE_CONTACT, name=None), id="unname"),
            pytest.param(
                replace(MARIE_CONTACT, groups=frozenset({"Friends", "Team"})), id="regroup"
            ),
            pytest.param(replace(MARIE_CONTACT, groups=frozenset()), id="ungroup"),
        ],
    )
    def test_changed_contact(self, current: Roster, marie: Contact) -> None:
        """A contact whose name or groups changed is upserted with the desired values."""
        assert diff(current, {**current, MARIE: marie}) == RosterDiff(upserts=(marie,), removals=())

    @pytest.mark.parametrize(
        "stored",
        [
            pytest.param(replace(MARIE_CONTACT, subscription="none"), id="none"),
            pytest.param(replace(MARIE_CONTACT, subscription="to"), id="to"),
            pytest.param(replace(MARIE_CONTACT, subscription="from"), id="from"),
            pytest.param(replace(MARIE_CONTACT, ask=True), id="pending-ask"),
        ],
    )
    def test_subscription_is_forced(self, current: Roster, stored: Contact) -> None:
        """A stored item with another subscription or a pending ask is rewritten as desired."""
        tampered = {**current, MARIE: stored}

        assert diff(tampered, current) == RosterDiff(upserts=(MARIE_CONTACT,), removals=())

    def test_sorted_by_jid(self) -> None:
        """Upserts and removals come sorted by JID, whatever order the rosters are in."""
        jids = [f"{name}@example.com" for name in "dcbahgfe"]
        current = {jid: Contact(jid) for jid in jids[4:]}
        desired = {jid: Contact(jid) for jid in jids[:4]}

        result = diff(current, desired)

        assert [c.jid for c in result.upserts] == sorted(jids[:4])
        assert list(result.removals) == sorted(jids[4:])


def test_digest_tells_rosters_apart_by_every_stored_field() -> None:
    """Equal rosters hash alike whatever their order; any field's change shows."""
    base = {MARIE: Contact(MARIE, "Marie", frozenset({"a", "b"}))}
    assert digest(base) == digest(dict(reversed(list(base.items()))))
    variants = [
        {MARIE: Contact(MARIE, "Mari")},
        {MARIE: Contact(MARIE, "Marie", frozenset({"a"}))},
        {MARIE: Contact(MARIE, "Marie", frozenset({"a", "b"}), subscription="to")},
        {MARIE: Contact(MARIE, "Marie", frozenset({"a", "b"}), ask=True)},
        {MARIE: Contact(MARIE, "Marie", frozenset({"a,b"}))},
        {},
    ]
    assert len({digest(base), *(digest(v) for v in variants)}) == len(variants) + 1
    assert len(digest(base)) == 16


def test_diff_against_known_hashes_equals_the_full_diff() -> None:
    """Knowing the stored roster only by each contact's hash gives the same changes."""
    stored = {
        MARIE: Contact(MARIE, "Marie"),
        MICHAEL: Contact(MICHAEL, "Michael", frozenset({"Team"})),
        "old@example.com": Contact("old@example.com"),
    }
    desired = {
        MARIE: Contact(MARIE, "Marie"),
        MICHAEL: Contact(MICHAEL, "Mike", frozenset({"Team"})),
        "new@example.com": Contact("new@example.com"),
    }
    known = {jid: hash(contact) for jid, contact in stored.items()}
    assert diff_known(known, desired) == diff(stored, desired)
    assert not diff_known(known, stored)
