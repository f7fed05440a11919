"""Our IQs in flight, paired with their answers by id in one dictionary lookup.

slixmpp's ``Iq.send`` registers one handler per IQ, and every stanza that arrives is matched
against every handler: with a few hundred IQs in flight (parallel roster writes, pushes) that
scan was a quarter of the component's CPU. Here one handler serves them all.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slixmpp.xmlstream.matcher.base import MatcherBase

from component import stanzas
from component.errors import IqRefusedError, IqUnansweredError

if TYPE_CHECKING:
    from xml.etree import ElementTree as ET

_IQ_TAG = "{jabber:component:accept}iq"


@dataclass(frozen=True, slots=True)
class _Waiting:
    future: asyncio.Future[ET.Element]
    peers: frozenset[str]  # who may answer: the addressee, its bare JID or its domain
    what: str  # "set to alice@example.org", for error messages


def answerers(to: str) -> frozenset[str]:
    """The senders an answer to an IQ sent to ``to`` may come from (as slixmpp accepts)."""
    bare = to.partition("/")[0]
    return frozenset({to, bare, bare.rpartition("@")[2]})


class PendingIqs:
    """IQs sent and not yet answered, by id."""

    def __init__(self) -> None:
        self._waiting: dict[str, _Waiting] = {}
        # Unique per process and not guessable by a client that sees some of them: a forged
        # answer must also come from the IQ's addressee, which the server vouches for.
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, to: str, what: str) -> tuple[str, asyncio.Future[ET.Element]]:
        """A fresh id for an IQ to ``to``, and the future its answer will resolve."""
        iq_id = f"{self._prefix}-{next(self._counter)}"
        future: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()
        self._waiting[iq_id] = _Waiting(future, answerers(to), what)
        return iq_id, future

    def forget(self, iq_id: str) -> None:
        """The IQ was given up on (timeout, cancellation): a late answer is ignored."""
        self._waiting.pop(iq_id, None)

    def expects(self, iq: ET.Element) -> bool:
        """Is this stanza the answer to one of ours (type, id and sender)?"""
        if iq.get("type") not in {"result", "error"}:
            return False
        waiting = self._waiting.get(iq.get("id", ""))
        return waiting is not None and iq.get("from", "") in waiting.peers

    def answer(self, iq: ET.Element) -> None:
        """Resolve the IQ this stanza answers: its result, or IqRefusedError."""
        waiting = self._waiting.pop(iq.get("id", ""), None)
        if waiting is None or waiting.future.done():
            return
        if iq.get("type") == "result":
            waiting.future.set_result(iq)
            return
        # slixmpp misreads errors addressed to components: the condition is read from the XML.
        condition = stanzas.error_condition(iq)
        waiting.future.set_exception(
            IqRefusedError(f"{waiting.what} refused: {condition}", condition)
        )

    def fail_all(self, reason: str) -> None:
        """The stream went down: no answer will come to any IQ sent on it."""
        waiting, self._waiting = self._waiting, {}
        for entry in waiting.values():
            if not entry.future.done():
                entry.future.set_exception(IqUnansweredError(f"{entry.what}: {reason}"))


class AnswerMatcher(MatcherBase):
    """Matches the answers to the IQs in a PendingIqs (a dictionary lookup per stanza)."""

    def __init__(self, pending: PendingIqs) -> None:
        super().__init__(pending)
        self._pending = pending

    def match(self, xml: Any) -> bool:
        element: ET.Element = xml.xml
        return element.tag == _IQ_TAG and self._pending.expects(element)
