"""Readiness: the sum of the parts' conditions, with every reason while not ready."""

from __future__ import annotations

from structlog.testing import capture_logs

from component.readiness import Readiness


class Part:
    """A part whose problem the test sets."""

    def __init__(self, problem: str | None = None) -> None:
        self.problem_text = problem

    def problem(self) -> str | None:
        return self.problem_text


async def test_ready_when_no_condition_has_a_problem() -> None:
    """Every problem is a reason; ready once the last one is gone."""
    link, store = Part("link down"), Part("no privilege")
    readiness = Readiness()
    readiness.require(link.problem)
    readiness.require(store.problem)
    readiness.update()
    assert (readiness.ready, readiness.reasons) == (False, ["link down", "no privilege"])
    link.problem_text = None
    readiness.update()
    assert readiness.reasons == ["no privilege"]
    store.problem_text = None
    readiness.update()
    assert (readiness.ready, readiness.reasons) == (True, [])
    await readiness.wait_ready()
    readiness.stop()


async def test_listeners_hear_each_change_once() -> None:
    """A listener (systemd's status) hears changes, not every re-evaluation."""
    part = Part("link down")
    readiness = Readiness()
    readiness.require(part.problem)
    heard: list[tuple[bool, list[str]]] = []
    readiness.on_change(lambda ready, reasons: heard.append((ready, reasons)))
    readiness.update()
    readiness.update()
    part.problem_text = None
    readiness.update()
    readiness.update()
    assert heard == [(False, ["link down"]), (True, [])]


async def test_the_change_is_logged_with_its_reasons() -> None:
    """Not ready is logged with what to fix; ready is logged once."""
    part = Part("grant roster both")
    readiness = Readiness()
    readiness.require(part.problem)
    with capture_logs() as logs:
        readiness.update()
        part.problem_text = None
        readiness.update()
    assert [(e["event"], e.get("reasons")) for e in logs] == [
        ("app.not_ready", ["grant roster both"]),
        ("app.ready", None),
    ]
