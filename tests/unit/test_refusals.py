"""Which delegated roster requests the component serves, and how it refuses the rest."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest

from component import stanzas
from component.xmpp.delegation import refusal_for

DOMAIN = "example.test"
ROSTER_QUERY = ET.Element(f"{{{stanzas.ROSTER_NS}}}query")


def request(
    sender: str = "alice@example.test/phone",
    to: str | None = None,
    iq_type: str = "get",
    payload: ET.Element | None = ROSTER_QUERY,
) -> stanzas.DelegatedRequest:
    return stanzas.DelegatedRequest(sender, to, iq_type, "id1", payload)


def condition(answer: ET.Element | None) -> str | None:
    if answer is None:
        return None
    inner = answer.find(f"{{{stanzas.FORWARD_NS}}}forwarded/{{{stanzas.CLIENT_NS}}}iq")
    assert inner is not None
    return stanzas.error_condition(inner)


@pytest.mark.parametrize(
    "to", [None, "alice@example.test", "alice@example.test/phone", "Alice@Example.test"]
)
def test_a_users_own_roster_get_is_served(to: str | None) -> None:
    """A GET without 'to', or addressed to the user's own JID, is answered."""
    assert refusal_for(request(to=to), DOMAIN) is None


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        pytest.param(request(to="bob@example.test"), "forbidden", id="another-users-roster"),
        pytest.param(request(to="example.test"), "forbidden", id="the-servers-roster"),
        pytest.param(request(iq_type="set"), "not-allowed", id="roster-change"),
        pytest.param(request(sender="eve@evil.example/x"), "forbidden", id="foreign-domain"),
        pytest.param(request(sender="example.test"), "forbidden", id="no-user"),
        pytest.param(request(sender="a@b@c"), "jid-malformed", id="malformed-sender"),
        pytest.param(
            request(payload=ET.Element("{urn:other}query")), "service-unavailable", id="other-ns"
        ),
        pytest.param(request(payload=None), "service-unavailable", id="no-payload"),
    ],
)
def test_everything_else_is_refused(req: stanzas.DelegatedRequest, expected: str) -> None:
    """Requests for other rosters, changes, strangers and junk get the right error."""
    assert condition(refusal_for(req, DOMAIN)) == expected
