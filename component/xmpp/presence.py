"""Who is online: the server copies every user's presence to us (XEP-0356 presence).

Also the sessions whose roster request we answered ourselves (delegated): ours to push to.
The server pushes to those it answered itself (a request its module held while we synced).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from component.xmpp.link import STREAM_NS

if TYPE_CHECKING:
    from collections.abc import Callable

    from slixmpp.jid import JID

    from component.xmpp.link import Stream


class OnlineUsers:
    """Online resources per user of our domain, from the presence the server sends us."""

    def __init__(self, link: Stream, domain: str, on_available: Callable[[str], None]) -> None:
        self._domain = domain
        self._on_available = on_available
        # user bare JID -> full JIDs of their sessions
        self._resources: dict[str, set[str]] = {}
        # user bare JID -> when their last session was reported gone (time.monotonic()).
        # Some servers (ejabberd) also copy us the unavailable presence a subscription change
        # makes one user send another, which looks like going offline but is not: callers
        # that must not miss an online user ask for those seen within a while, too.
        self._departed: dict[str, float] = {}
        # user bare JID -> full JIDs of the sessions we answered. Kept when the link breaks:
        # the server keeps its sessions, and tells us of those gone (unavailable presence,
        # or a push request naming them).
        self._answered: dict[str, set[str]] = {}
        link.handle("user presence", f"{{{STREAM_NS}}}presence", self._on_presence)
        link.on_state(self._on_link)

    def online_users(self, since: float | None = None) -> list[str]:
        """Usernames with a session we know of, and those last seen after ``since``."""
        users = set(self._resources)
        if since is not None:
            for bare, gone in list(self._departed.items()):
                if gone >= since:
                    users.add(bare)
                else:
                    del self._departed[bare]  # forgotten once no caller looks that far back
        return [bare.partition("@")[0] for bare in users]

    def is_online(self, username: str, since: float | None = None) -> bool:
        bare = f"{username}@{self._domain}"
        if bare in self._resources:
            return True
        return since is not None and self._departed.get(bare, since - 1) >= since

    def resources(self, user: str) -> list[str]:
        """The full JIDs of ``user`` (a bare JID), sorted."""
        return sorted(self._resources.get(user, ()))

    def answered_resources(self, user: str) -> list[str]:
        """The full JIDs of ``user`` (a bare JID) whose roster request we answered, sorted."""
        return sorted(self._answered.get(user, ()))

    def track(self, full: JID) -> None:
        self._resources.setdefault(full.bare, set()).add(full.full)
        self._departed.pop(full.bare, None)

    def answered_by_us(self, full: JID) -> None:
        """The session holds the roster we sent it: our pushes keep it current."""
        self.track(full)
        self._answered.setdefault(full.bare, set()).add(full.full)

    def answered_by_server(self, full: JID) -> None:
        """The server answers this session (and pushes to it) itself: a session of that name
        we answered before is gone."""
        _discard(self._answered, full)

    def forget(self, full: JID) -> None:
        _discard(self._answered, full)
        if _discard(self._resources, full):
            self._departed[full.bare] = time.monotonic()

    def _on_link(self, connected: bool) -> None:
        if not connected:
            # The server replays every online session's presence when we are back.
            self._resources.clear()
            self._departed.clear()

    def _on_presence(self, presence: Any) -> None:
        sender: JID = presence["from"]
        if sender.domain != self._domain or not sender.user or not sender.resource:
            return
        kind = presence["type"]
        if kind == "unavailable":
            self.forget(sender)
        elif kind in {"available", "", *presence.showtypes}:
            self.track(sender)
            self._on_available(sender.user)


def _discard(sessions: dict[str, set[str]], full: JID) -> bool:
    """Remove ``full`` from its user's sessions; True when that left the user none."""
    resources = sessions.get(full.bare)
    if resources is None:
        return False
    resources.discard(full.full)
    if resources:
        return False
    del sessions[full.bare]
    return True
