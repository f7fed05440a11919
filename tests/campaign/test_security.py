"""Security properties over arbitrary input: a username cannot leave its place in the roster
URL, and a user is never served someone else's roster.

Elsewhere: the token is compared in constant time (tests/unit/test_http_api.py), a listener
off loopback needs a token (tests/unit/test_config.py), roster changes and foreign requests
are refused by the component (tests/unit/test_refusals.py) and by the servers end to end
(tests/integration), bodies and answers have size limits (test_bad_input.py here,
tests/unit/test_http_api.py and test_webapp.py).
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st
from slixmpp.jid import JID, InvalidJID

from component import stanzas
from component.webapp import roster_url
from component.xmpp.delegation import refusal_for
from tests.campaign.strategies import tricky_usernames

if TYPE_CHECKING:
    from tests.campaign.figures import Figures

pytestmark = pytest.mark.campaign

DOMAIN = "example.test"
# Any text a username can be: JIDs (and XML) cannot hold lone surrogates.
any_text = st.text(st.characters(codec="utf-8"), max_size=40)
xml_usernames = tricky_usernames.filter(lambda u: not any("\ud800" <= c <= "\udfff" for c in u))


@given(username=any_text | xml_usernames)
@pytest.mark.parametrize(
    "template",
    ["http://app.test/contacts/%s", "http://app.test/users/%s/roster.json?format=json"],
)
def test_a_username_stays_in_its_path_segment(
    figures: Figures, template: str, username: str
) -> None:
    """Whatever the username, it is exactly one path segment: no `/`, `?` or `#` in it, never
    `.` or `..`, and it decodes back to the username."""
    figures.add("cases")
    prefix, suffix = template.split("%s")
    url = roster_url(template, username)
    assert url.startswith(prefix)
    assert url.endswith(suffix)
    segment = url[len(prefix) : len(url) - len(suffix)]
    assert not set("/?#") & set(segment)
    assert segment not in {".", ".."}
    assert urllib.parse.unquote(segment, errors="strict") == username


ALICE = f"alice@{DOMAIN}"
targets = st.one_of(
    st.none(),
    st.sampled_from(
        [
            ALICE,
            "Alice@Example.test",
            f"{ALICE}/phone",
            f"bob@{DOMAIN}",
            DOMAIN,
            "alice@evil.test",
            f"alice@{DOMAIN}.",
            "alice%40example.test@example.test",
            "ALICE@EXAMPLE.TEST/x",
            "",
        ]
    ),
    st.builds(lambda u, d, r: f"{u}@{d}/{r}", xml_usernames, st.just(DOMAIN), any_text),
    any_text,
)


@given(
    to=targets,
    iq_type=st.sampled_from(["get", "set"]),
    sender=st.sampled_from([f"{ALICE}/phone", ALICE, "Alice@example.test/x"]),
)
def test_a_user_is_served_only_their_own_roster(
    figures: Figures, to: str | None, iq_type: str, sender: str
) -> None:
    """A delegated roster request is served only as a GET of the sender's own roster; every
    other `to` (another user, the server, a look-alike, junk) is refused."""
    figures.add("cases")
    query = ET.Element(f"{{{stanzas.ROSTER_NS}}}query")
    request = stanzas.DelegatedRequest(sender, to, iq_type, "id1", query)
    refusal = refusal_for(request, DOMAIN)
    if refusal is None:
        assert iq_type == "get"
        if to:
            try:
                assert JID(to).bare == ALICE
            except InvalidJID:
                pytest.fail(f"served a request to a malformed JID: {to!r}")
