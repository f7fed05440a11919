"""Every error that crosses a module boundary, in one place.

Callers decide by type; the message says what went wrong, for the log or the caller.
"""

from __future__ import annotations

from typing import Literal


class ConfigError(Exception):
    """The configuration is missing, unreadable or invalid; the message says what to fix."""


class BadRequestError(ValueError):
    """A refresh request is not what the endpoint accepts; the message says why."""


class ServiceError(Exception):
    """The command line could not reach the running service, or it refused the request
    (token, not ready, bad request); the message says why and what to check."""


# --- the web app ---------------------------------------------------------------------------


class RosterFormatError(ValueError):
    """The web app's answer is not a roster at all."""


# What went wrong with a fetch, for the metrics: "bad_body" is a 200 that is not a roster.
FetchErrorKind = Literal["timeout", "refused", "5xx", "4xx", "bad_body", "too_large", "other"]


class FetchError(Exception):
    """A roster could not be fetched; the user's roster must stay as it was."""

    def __init__(self, username: str, reason: str, kind: FetchErrorKind = "other") -> None:
        super().__init__(f"cannot fetch the roster of {username!r}: {reason}")
        self.username = username
        self.reason = reason
        self.kind: FetchErrorKind = kind


class TransientFetchError(FetchError):
    """A fetch failure another attempt may not repeat: network trouble, timeout, 5xx."""


class UnreachableError(TransientFetchError):
    """No answer from the web app (refused, timed out, cut off), or a gateway in front of it
    saying it is down (502, 503, 504): what the circuit breaker counts."""


class WebAppDownError(FetchError):
    """The web app is taken to be down (the circuit is open): it was not asked."""


# --- the server's roster store, in words that do not depend on the server ------------------


class StoreError(Exception):
    """The server refused or failed to read or write a roster."""


class ItemRefusedError(StoreError):
    """The server will not store this one item (e.g. a JID it rejects); it takes others."""


class UnknownUserError(StoreError):
    """The server has no such user."""


class StoreUnavailableError(StoreError):
    """The server cannot be asked now (link or API down, no answer in time); retry later."""


# --- below the store: only stores and the XMPP parts see these ------------------------------


class IqRefusedError(Exception):
    """An IQ we sent came back as an error; ``condition`` is its RFC 6120 defined condition."""

    def __init__(self, message: str, condition: str) -> None:
        super().__init__(message)
        self.condition = condition


class IqUnansweredError(Exception):
    """An IQ could not be sent (the link is down) or got no answer in time."""


class ApiFailedError(Exception):
    """ejabberd's admin API answered with an error (below the store, like the two above)."""

    def __init__(self, command: str, status: int, text: str) -> None:
        super().__init__(f"ejabberd API {command}: HTTP {status}: {text[:200]}")
        self.status = status
        self.text = text
