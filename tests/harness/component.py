"""The component's configuration for tests, the demo and the benchmark: written in one place.

Every server harness describes itself (``ComponentTarget``); callers add or override the
sections they care about.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import tomli_w

from tests.harness import log_secrets

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


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
