"""IQs in flight paired with their answers by id and sender."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest

from component.errors import IqRefusedError, IqUnansweredError
from component.xmpp.iqs import PendingIqs, answerers

STREAM = "jabber:component:accept"
ALICE = "alice@example.test"


def answer(iq_id: str, sender: str, iq_type: str = "result", condition: str = "") -> ET.Element:
    iq = ET.Element(f"{{{STREAM}}}iq", {"type": iq_type, "id": iq_id, "from": sender})
    if condition:
        error = ET.SubElement(iq, f"{{{STREAM}}}error", {"type": "cancel"})
        ET.SubElement(error, f"{{urn:ietf:params:xml:ns:xmpp-stanzas}}{condition}")
    return iq


def test_answerers_are_the_addressee_its_bare_jid_and_its_domain() -> None:
    assert answerers("alice@example.test/phone") == {
        "alice@example.test/phone",
        ALICE,
        "example.test",
    }
    assert answerers("example.test") == {"example.test"}


async def test_a_result_resolves_the_iq_with_that_id() -> None:
    pending = PendingIqs()
    first, first_answer = pending.expect(ALICE, "set to alice")
    second, second_answer = pending.expect(ALICE, "set to alice")
    assert first != second
    result = answer(second, ALICE)
    assert pending.expects(result)
    pending.answer(result)
    assert await second_answer is result
    assert not first_answer.done()
    assert len(pending) == 1


async def test_an_error_raises_its_condition() -> None:
    pending = PendingIqs()
    iq_id, future = pending.expect(ALICE, "set to alice")
    pending.answer(answer(iq_id, ALICE, "error", "not-allowed"))
    with pytest.raises(IqRefusedError) as refused:
        await future
    assert refused.value.condition == "not-allowed"
    assert "set to alice refused: not-allowed" in str(refused.value)


async def test_answers_from_anyone_else_or_of_other_types_are_not_ours() -> None:
    pending = PendingIqs()
    iq_id, future = pending.expect(ALICE, "get to alice")
    assert not pending.expects(answer(iq_id, "mallory@example.test"))
    assert not pending.expects(answer(iq_id, ALICE, "set"))
    assert not pending.expects(answer("other", ALICE))
    assert not future.done()


async def test_a_late_answer_to_a_forgotten_iq_is_ignored() -> None:
    pending = PendingIqs()
    iq_id, future = pending.expect(ALICE, "get to alice")
    pending.forget(iq_id)
    late = answer(iq_id, ALICE)
    assert not pending.expects(late)
    pending.answer(late)
    assert not future.done()


async def test_a_dropped_stream_fails_every_iq_at_once() -> None:
    pending = PendingIqs()
    futures = [pending.expect(ALICE, f"set {n} to alice")[1] for n in range(3)]
    pending.fail_all("the link went down")
    for n, future in enumerate(futures):
        with pytest.raises(IqUnansweredError, match=f"set {n} to alice: the link went down"):
            await future
    assert len(pending) == 0
