"""Whether the service can do its job now, and if not, every reason why.

Each part that the service needs (the XMPP link, the roster store, the delegation when one is
configured) contributes a condition; the service is ready when none has a problem. The parts
call ``update()`` when their state changes; listeners hear about every change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from component import metrics

log = structlog.get_logger(__name__)

# Problems that outlast this are reported as a warning: a normal connect clears them sooner
# (the server's advertisements arrive within milliseconds of the stream).
SETTLE_SECONDS = 5.0

Condition = Callable[[], "str | None"]  # a problem, said so that the operator can fix it


class Readiness:
    """The sum of the conditions; ``ready`` when no condition reports a problem."""

    def __init__(self) -> None:
        self._conditions: list[Condition] = []
        self._listeners: list[Callable[[bool, list[str]], None]] = []
        self._reasons: list[str] = ["not started"]
        self._ready = asyncio.Event()
        self._settle: asyncio.TimerHandle | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def reasons(self) -> list[str]:
        """What stands in the way, for /healthz and systemd's status line."""
        return list(self._reasons)

    def require(self, condition: Condition) -> None:
        self._conditions.append(condition)

    def on_change(self, listener: Callable[[bool, list[str]], None]) -> None:
        """Call ``listener(ready, reasons)`` whenever either changes."""
        self._listeners.append(listener)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def update(self) -> None:
        """Evaluate every condition again; tell the listeners if anything changed."""
        reasons = [problem for condition in self._conditions if (problem := condition())]
        if reasons == self._reasons:
            return
        self._reasons = reasons
        ready = not reasons
        metrics.READY.set(int(ready))
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        if ready:
            self._ready.set()
            log.info("app.ready")
        else:
            self._ready.clear()
            log.info("app.not_ready", reasons=reasons)
            self._settle = asyncio.get_running_loop().call_later(SETTLE_SECONDS, self._stuck)
        for listener in self._listeners:
            listener(ready, reasons)

    def stop(self) -> None:
        if self._settle is not None:
            self._settle.cancel()

    def _stuck(self) -> None:
        self._settle = None
        log.warning("app.not_ready", reasons=self._reasons, for_s=SETTLE_SECONDS)
