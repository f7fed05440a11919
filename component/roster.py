"""Roster data and the rules for turning the web app's answer into one. Pure: no I/O."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from slixmpp.jid import JID

from component.errors import RosterFormatError

__all__ = [
    "MAX_WARNINGS",
    "Contact",
    "ParsedRoster",
    "Roster",
    "RosterDiff",
    "StoredRoster",
    "diff",
    "diff_known",
    "digest",
    "parse_webapp_roster",
    "version",
]


@dataclass(frozen=True, slots=True)
class Contact:
    """One roster item, as the server stores it."""

    jid: str  # normalized bare JID
    name: str | None = None
    groups: frozenset[str] = frozenset()
    subscription: str = "both"  # none | to | from | both
    ask: bool = False  # a pending outgoing subscription request is stored


Roster = Mapping[str, Contact]  # keyed by Contact.jid


@dataclass(frozen=True, slots=True)
class StoredRoster:
    """A user's roster as the server stores it, with what a roster query does not show."""

    contacts: Roster
    # JIDs whose subscription requests to the user await an answer. The web app owns every
    # subscription, so any of these is drift; servers re-offer them to the user at each login.
    pending_in: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ParsedRoster:
    """A roster from the web app, and what had to be skipped or adjusted to get it."""

    roster: Roster
    warnings: tuple[str, ...]  # human-readable, one per skipped/adjusted entry
    # A fingerprint of the web app's answer it was parsed from (b"": not from an answer).
    source: bytes = b""


@dataclass(frozen=True, slots=True)
class RosterDiff:
    """What must be written to turn one roster into another."""

    upserts: tuple[Contact, ...]  # new, or any stored field differs
    removals: tuple[str, ...]  # JIDs

    def __bool__(self) -> bool:
        return bool(self.upserts or self.removals)


# A roster of thousands of junk keys would otherwise flood the log with one line per key.
MAX_WARNINGS = 50
# Keys and values are quoted in warnings; a megabyte-long key must not become a log line.
_SHOWN_CHARS = 80
# Names and groups travel as XML text. A character XML 1.0 cannot carry (control characters,
# lone surrogates from JSON escapes) would make the stanza malformed, and an XMPP server closes
# the whole component stream over that, so such values never get that far.
_NOT_XML_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ATTRIBUTE_WHITESPACE = re.compile("[\t\n\r]")
# bool before int: True is an int to Python but not a number to JSON.
_JSON_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    ((int, float), "a number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)


def parse_webapp_roster(data: object, owner: str) -> ParsedRoster:
    """Turn the web app's decoded JSON into the roster *owner* (a bare JID) should have.

    Raises RosterFormatError if *data* is not a JSON object, or exactly ``[]``: PHP's
    json_encode writes an empty map that way, and mod_http_roster_admin read it as "no
    contacts". Bad entries are skipped or adjusted, each with a warning, so one typo in the
    web app cannot block a whole roster.
    """
    if data == []:
        data = {}
    if not isinstance(data, dict):
        raise RosterFormatError(f"expected a JSON object, got {_json_type(data)}")
    owner_jid = JID(owner).bare
    warnings: list[str] = []
    # (jid, raw key, contact) for every entry that survived its own checks.
    candidates: list[tuple[str, str, Contact]] = []
    for key, value in data.items():
        jid = _contact_jid(key, owner_jid, warnings)
        if jid is None:
            continue
        contact = _contact(jid, key, value, warnings)
        if contact is not None:
            candidates.append((jid, key, contact))

    # Duplicates ("Marie@x" and "marie@x"): the key already spelled in normal form wins, else
    # the smallest key, so the outcome does not depend on the order the web app emitted.
    candidates.sort(key=lambda c: (c[0], c[1] != c[0], c[1]))
    roster: dict[str, Contact] = {}
    for jid, key, contact in candidates:
        if jid in roster:
            warnings.append(f"contact {_show(key)}: duplicate of {_show(jid)}, ignored")
        else:
            roster[jid] = contact

    if len(warnings) > MAX_WARNINGS:
        hidden = len(warnings) - MAX_WARNINGS + 1
        warnings[MAX_WARNINGS - 1 :] = [f"... and {hidden} more warnings"]
    return ParsedRoster(roster=MappingProxyType(roster), warnings=tuple(warnings))


def diff(current: Roster, desired: Roster) -> RosterDiff:
    """What to write so that *current* becomes *desired*, sorted by JID.

    Whole contacts are compared, so a stored item whose subscription is not the desired one or
    that carries a pending ask is rewritten too: the web app's truth includes those.
    """
    return RosterDiff(
        upserts=tuple(
            contact for jid, contact in sorted(desired.items()) if current.get(jid) != contact
        ),
        removals=tuple(sorted(current.keys() - desired.keys())),
    )


def diff_known(known: Mapping[str, int], desired: Roster) -> RosterDiff:
    """Like diff(), against a roster known only by each contact's hash (``hash(Contact)``)."""
    return RosterDiff(
        upserts=tuple(
            contact for jid, contact in sorted(desired.items()) if known.get(jid) != hash(contact)
        ),
        removals=tuple(sorted(known.keys() - desired.keys())),
    )


def version(roster: Roster) -> str:
    """The roster's version string for XEP-0237: the same roster always has the same one."""
    return digest(roster).hex()


def digest(roster: Roster) -> bytes:
    """A short fingerprint of a whole roster: equal exactly when every stored field is.

    Kept per user instead of the roster itself (16 bytes, not kilobytes), to tell an unchanged
    roster from a changed one without asking the server; also a roster version (XEP-0237).
    """
    # JSON: unambiguous ("a","bc" and "ab","c" differ) and encoded in C, one call per roster.
    rows = [
        (jid, c.name, sorted(c.groups), c.subscription, c.ask) for jid, c in sorted(roster.items())
    ]
    encoded = json.dumps(rows, separators=(",", ":")).encode()
    return hashlib.blake2b(encoded, digest_size=16).digest()


def _contact_jid(key: object, owner_jid: str, warnings: list[str]) -> str | None:
    """The normalized bare JID for a roster key, or None (with a warning) if unusable."""
    if not isinstance(key, str):  # impossible from JSON, possible from Python callers
        warnings.append(f"contact {_show(key)}: key is not a string, skipped")
        return None
    jid, problem = _normalized(key)
    if problem is None and jid == owner_jid:
        problem = "the user's own JID"
    if problem is None:
        return jid
    warnings.append(f"contact {_show(key)}: {problem}, skipped")
    return None


@functools.lru_cache(maxsize=16_384)
def _normalized(key: str) -> tuple[str, str | None]:
    """A key's bare JID in normal form, or why it is none; remembered, because users mostly
    list each other: 10,000 rosters of 20 name about 10,000 JIDs, each prepared once."""
    try:
        jid = JID(key)
    # InvalidJID is a ValueError; so is the UnicodeError a lone surrogate causes.
    except ValueError:
        return "", "not a valid JID"
    if jid.domain.endswith("."):
        # "example.com." is "example.com" (RFC 7622 3.2); the server stores it without the dot.
        jid = JID(jid.bare.rstrip(".")) if jid.domain.rstrip(".") else JID()
    if not jid.domain:
        return "", "not a JID"
    if jid.resource:
        return "", "a full JID, not a bare one"
    return sys.intern(str(jid.bare)), None


def _contact(jid: str, key: str, value: object, warnings: list[str]) -> Contact | None:
    if value is None:
        return Contact(jid)
    if not isinstance(value, dict):
        warnings.append(
            f"contact {_show(key)}: expected an object or null, got {_json_type(value)}, skipped"
        )
        return None
    return Contact(
        jid,
        name=_name(key, value.get("name"), warnings),
        groups=_groups(key, value.get("groups"), warnings),
    )


def _name(key: str, name: object, warnings: list[str]) -> str | None:
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        warnings.append(f"contact {_show(key)}: name is {_json_type(name)}, ignored")
        return None
    if _NOT_XML_TEXT.search(name):
        warnings.append(f"contact {_show(key)}: name contains control characters, ignored")
        return None
    # The name travels as an XML attribute, whose parser turns these into spaces: store what
    # the server will store, or every sync would see a difference and rewrite it.
    return _ATTRIBUTE_WHITESPACE.sub(" ", name)


def _groups(key: str, groups: object, warnings: list[str]) -> frozenset[str]:
    names: list[object]
    if groups is None:
        return frozenset()
    if isinstance(groups, list):
        names = groups
    elif isinstance(groups, dict):
        # What mod_http_roster_admin understood: an object used as a set.
        names = [group for group, member in groups.items() if member]
    else:
        warnings.append(f"contact {_show(key)}: groups is {_json_type(groups)}, ignored")
        return frozenset()

    kept: set[str] = set()
    for group in names:
        if isinstance(group, str) and group and not _NOT_XML_TEXT.search(group):
            # Group names are XML text, whose parser turns \r\n and \r into \n.
            kept.add(group.replace("\r\n", "\n").replace("\r", "\n"))
        else:
            warnings.append(f"contact {_show(key)}: group {_show(group)} is not usable, dropped")
    return frozenset(kept)


def _json_type(value: object) -> str:
    """Name *value*'s type the way the web app's authors know it."""
    if value is None:
        return "null"
    return next((name for t, name in _JSON_TYPES if isinstance(value, t)), type(value).__name__)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
