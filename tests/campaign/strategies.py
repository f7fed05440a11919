"""Hypothesis strategies for the campaign: hostile inputs, each with what must come of it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import strategies as st

from component.roster import Contact

# Any JSON document, as Python values.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)

# Usernames the server could have, that stay as they are when normalized.
plain_usernames = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,15}", fullmatch=True)
# Usernames that must stay in their own path segment, or be refused: separators, dot segments,
# escapes, unicode, lone surrogates, control characters.
tricky_usernames = st.sampled_from(
    [
        "",
        ".",
        "..",
        "...",
        "a/b",
        "a?b",
        "a#b",
        "%",
        "%2F",
        "%2e%2e",
        "a@b",
        " ",
        "a b",
        "Alice",
        "jürgen",
        "ǅ",
        "ﬀ",
        "\u0000",
        "x\ud800",
        "\ufeff",
        "a\u202eb",
        "../admin",
        "a\\b",
        "*",
    ]
) | st.text(max_size=20)
usernames = plain_usernames | tricky_usernames

# Text that XML can carry and a server stores as it is (no control characters, no \t\r\n,
# no lone surrogates or non-characters).
safe_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=30
)
contact_jids = st.from_regex(r"[a-z0-9]{1,8}@[a-z0-9]{1,8}\.(test|example)", fullmatch=True)
# Roster keys that never make a contact: not JIDs, full JIDs, no localpart or domain.
bad_keys = st.sampled_from(
    [
        "",
        " ",
        "@",
        "a@b@c.test",
        "@c.test",
        "a@",
        "x@y.test/res",
        "a b@c.test",
        "<x>@y.test",
        "x@y..test",
        "\u0000@y.test",
        "x@\ud800.test",
    ]
) | st.text(st.characters(codec="utf-8", categories=("Zs", "Cc")), min_size=1, max_size=5)


@dataclass(frozen=True)
class RosterCase:
    """A roster as the web app might send it, and the roster that must be stored from it."""

    data: object
    expected: dict[str, Contact]


def _expected_contact(jid: str, value: object) -> Contact | None:
    """An independent reading of README's rules for one entry (None: skipped)."""
    if value is None:
        return Contact(jid)
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    groups = value.get("groups")
    return Contact(
        jid,
        name=name if isinstance(name, str) and name else None,
        groups=frozenset(groups) if isinstance(groups, list) else frozenset(),
    )


entry_values = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "name": safe_text | st.integers() | st.none() | st.just(""),
            "groups": st.lists(safe_text, max_size=3) | st.integers() | st.text(max_size=3),
            "extra": json_values,
        },
    ),
    json_values.filter(lambda v: v is not None and not isinstance(v, dict)),
)


@st.composite
def rosters(draw: st.DrawFn, owner: str) -> RosterCase:
    """A JSON object roster: good contacts, wrong-typed values, bad keys, the owner itself."""
    good = draw(st.dictionaries(contact_jids, entry_values, max_size=8))
    bad = draw(st.dictionaries(bad_keys | st.just(owner), entry_values, max_size=4))
    data = {**bad, **good}
    expected = {
        jid: contact
        for jid, value in good.items()
        if jid != owner and (contact := _expected_contact(jid, value)) is not None
    }
    return RosterCase(data, expected)


def body_of(value: object) -> bytes:
    """JSON as a web app would send it (lone surrogates escaped, so still valid JSON)."""
    return json.dumps(value).encode()


# Bodies that are not JSON at all, or JSON in a way no parser should have to survive.
hostile_bytes = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(1, 200_000).map(lambda n: b"[" * n),
    st.integers(1, 100_000).map(lambda n: b'{"a":' * n),
    st.sampled_from([b'["a\xff"]', b'["\xc3"]', b"\xef\xbb\xbf[]", b'["a"', b"[]]", b"nul", b""]),
)
