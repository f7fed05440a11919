"""The XMPP link's state and its reconnections, as /metrics shows them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from component.config import ComponentConfig
from component.xmpp.link import ComponentLink
from tests.unit.sampling import sample

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture(name="link")
async def fixture_link() -> AsyncIterator[ComponentLink]:
    """A link whose stream events the test plays (nothing listens on port 9)."""
    link = ComponentLink(
        ComponentConfig(jid="roster.example.test", secret="s", port=9), iq_timeout=1
    )
    yield link
    await link.stop()


async def test_link_state_and_reconnects_are_counted(link: ComponentLink) -> None:
    """The gauge follows the stream; only a stream established again counts as a reconnect."""
    reconnects = sample("xmpp_reconnects_total")
    link._on_session_start(None)
    assert (sample("xmpp_connected"), sample("xmpp_reconnects_total")) == (1, reconnects)
    link._on_disconnected("gone")
    assert sample("xmpp_connected") == 0
    link._on_session_start(None)
    assert (sample("xmpp_connected"), sample("xmpp_reconnects_total")) == (1, reconnects + 1)
