"""What the server grants us: XEP-0356 privileges and XEP-0355 delegations.

The server advertises both in messages after we connect (in either order); they hold until
the stream goes down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from component import stanzas
from component.xmpp.link import STREAM_NS

if TYPE_CHECKING:
    from collections.abc import Callable

    from component.xmpp.link import Stream

log = structlog.get_logger(__name__)


class Grants:
    """The advertisements of the users' server, read as they arrive."""

    def __init__(self, link: Stream, domain: str) -> None:
        self._domain = domain
        self._listeners: list[Callable[[], None]] = []
        self.privileges = stanzas.Privileges()
        self.privileges_known = False
        self.delegated: frozenset[str] = frozenset()
        link.handle("advertisements", f"{{{STREAM_NS}}}message", self._on_message)
        link.on_state(self._on_link)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever a grant arrives or all are lost."""
        self._listeners.append(listener)

    def _on_link(self, connected: bool) -> None:
        if not connected:
            self.privileges = stanzas.Privileges()
            self.privileges_known = False
            self.delegated = frozenset()
            self._notify()

    def _on_message(self, msg: Any) -> None:
        privilege = stanzas.find_privilege(msg.xml)
        delegated = stanzas.delegated_namespaces(msg.xml)
        if privilege is None and delegated is None:
            return
        if msg["from"].full != self._domain:
            log.warning(
                "xmpp.advertisement_ignored",
                sender=msg["from"].full,
                hint=f"we manage {self._domain}; check users.domain",
            )
            return
        if privilege is not None:
            self.privileges = stanzas.parse_privileges(privilege)
            self.privileges_known = True
            log.info(
                "xmpp.privileges",
                roster=self.privileges.roster,
                presence=self.privileges.presence,
                iq=self.privileges.iq,
            )
            if self.privileges.presence != "roster":
                log.warning(
                    "xmpp.presence_privilege_missing",
                    hint="grant the presence privilege (roster) so that users are synced as "
                    "they come online",
                )
        if delegated is not None:
            self.delegated = delegated
            log.info("xmpp.delegations", namespaces=sorted(delegated))
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
