"""The component's configuration for tests, the demo and the benchmark: written in one place.

Every server harness describes itself (``ComponentTarget``); callers add or override the
sections they care about. ``ComponentProcess`` runs the component as its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiohttp
import tomli_w

from tests.harness import log_secrets
from tests.harness.files import tails
from tests.harness.prosody import die_with_parent

if TYPE_CHECKING:
    from collections.abc import Mapping

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class ComponentTarget(Protocol):
    """A test server the component can attach to."""

    domain: str
    component_jid: str
    component_secret: str
    component_port: int

    def server_section(self) -> dict[str, object]:
        """The component's ``[server]`` section for this server."""
        ...


def component_config(
    target: ComponentTarget, roster_url: str, /, **sections: Mapping[str, object]
) -> str:
    """TOML for a component attached to ``target`` fetching from ``roster_url``.

    ``sections`` add or override keys per section: ``sync={"max_age": 0}``.
    """
    config: dict[str, dict[str, object]] = {
        "component": {
            "jid": target.component_jid,
            "secret": target.component_secret,
            "host": "127.0.0.1",
            "port": target.component_port,
        },
        "users": {"domain": target.domain},
        "webapp": {"roster_url": roster_url},
        "listener": {"host": "127.0.0.1", "port": 0},
        "server": target.server_section(),
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    log_secrets.configured(config)
    return tomli_w.dumps(config)


def write_component_config(
    path: Path, target: ComponentTarget, roster_url: str, /, **sections: Mapping[str, object]
) -> Path:
    path.write_text(component_config(target, roster_url, **sections))
    return path


class ComponentProcess:
    """``python -m component run --config <config>`` as its own process, as systemd runs it:
    for faults an in-process component cannot have (SIGKILL). Its config must name a fixed
    listener port (``port``); its output goes to ``log``."""

    def __init__(self, config: Path, log: Path, port: int) -> None:
        self.config = config
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self._process: asyncio.subprocess.Process | None = None
        self._log_offset = 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Spawn it; return once /healthz says it is ready."""
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self._process = process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "component", "run", "--config", str(self.config),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                cwd=REPO_ROOT, preexec_fn=die_with_parent,
            )  # fmt: skip
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + START_TIMEOUT
            while process.returncode is None and time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        await self.kill()
        raise RuntimeError(f"the component did not become ready:\n{self.log_tail()}")

    async def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown at all."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            self._hand_over_output()

    async def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it takes longer than STOP_TIMEOUT."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            await self.kill()
        else:
            self._hand_over_output()

    def _hand_over_output(self) -> None:
        """What this run wrote, to be looked for secrets (tests/harness/log_secrets.py)."""
        with self.log.open("rb") as log:
            log.seek(self._log_offset)
            for line in log:
                label = f"component process ({self.log})"
                log_secrets.component_output(label, line.decode(errors="replace"))

    def log_tail(self, lines: int = 60) -> str:
        return tails((self.log,), lines, empty=f"(no output in {self.log})")
