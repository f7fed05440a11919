"""The running service's HTTP listener, as the command line asks it (README, the API section).

The server's roster store is only reachable through the service's own XMPP connection (on
Prosody a second component connection with the same JID is refused), so every operator command
goes through the listener, with its address and token from the same config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self, TypeVar

import aiohttp
import pydantic
import yarl

# pydantic reads TypedDicts from typing_extensions only, before Python 3.12.
from typing_extensions import TypedDict

from component.check import ChangeKind, CheckResult, Field, ItemChange
from component.errors import ConfigError, ServiceError
from component.http_api import CHECK_PATH, ONLINE_PATH, REFRESH_PATH
from component.roster import Contact

if TYPE_CHECKING:
    from collections.abc import Sequence

    from component.config import ListenerConfig

_T = TypeVar("_T")
# Where a listener bound to every address is reached from this machine.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 -- matched, not bound
_CONNECT_TIMEOUT = 5.0
# A refresh answers once every user in it is done; a slow web app makes that long.
_REQUEST_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Counts:
    """The answer to a refresh (README, "The refresh endpoint")."""

    status: Literal["ok", "error"]
    message: str
    updated: int
    errors: int
    failed: tuple[str, ...]


class _ContactJson(TypedDict):
    name: str | None
    groups: list[str]
    subscription: str
    ask: bool


class _ChangeJson(TypedDict):
    jid: str
    change: ChangeKind
    fields: list[Field]
    was: _ContactJson | None
    now: _ContactJson | None


class _CheckJson(TypedDict):
    username: str
    contacts: int
    changes: list[_ChangeJson]
    warnings: list[str]


class _CountsJson(TypedDict):
    status: Literal["ok", "error"]
    message: str
    updated: int
    errors: int
    failed: list[str]


class _OnlineJson(TypedDict):
    users: list[str]


class _MessageJson(TypedDict):
    message: str


_CHECK = pydantic.TypeAdapter(_CheckJson)
_COUNTS = pydantic.TypeAdapter(_CountsJson)
_ONLINE = pydantic.TypeAdapter(_OnlineJson)
_MESSAGE = pydantic.TypeAdapter(_MessageJson)


def service_url(listener: ListenerConfig) -> yarl.URL:
    """Where the service's listener is reached from this machine."""
    if listener.port == 0:
        raise ConfigError(
            "listener.port = 0 (any free port): the command line cannot know where the "
            "service listens; set a port"
        )
    host = _LOOPBACK.get(listener.host, listener.host)
    return yarl.URL.build(scheme="http", host=host, port=listener.port)


class ServiceClient:
    """Asks the running service; every failure to get an answer is a ServiceError."""

    def __init__(self, listener: ListenerConfig) -> None:
        self._base = service_url(listener)
        self._headers = {"Authorization": f"Bearer {listener.token}"} if listener.token else {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        # Made here: a ClientSession belongs to the loop running when it is created.
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT, sock_connect=_CONNECT_TIMEOUT),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def check(self, username: str) -> CheckResult:
        """How the server's copy of the user's roster differs from the web app's."""
        status, body = await self._ask("GET", self._url(CHECK_PATH) / username)
        if status == 502:
            return CheckResult(username, error=_parse(_MESSAGE, body)["message"])
        _expect(status, body)
        answer = _parse(_CHECK, body)
        changes = tuple(
            ItemChange(
                change["jid"],
                change["change"],
                was=_contact(change["jid"], change["was"]),
                now=_contact(change["jid"], change["now"]),
                fields=tuple(change["fields"]),
            )
            for change in answer["changes"]
        )
        return CheckResult(
            answer["username"],
            changes=changes,
            contacts=answer["contacts"],
            warnings=tuple(answer["warnings"]),
        )

    async def online(self) -> list[str]:
        """The users online now."""
        status, body = await self._ask("GET", self._url(ONLINE_PATH))
        _expect(status, body)
        return _parse(_ONLINE, body)["users"]

    async def refresh(self, usernames: Sequence[str]) -> Counts:
        """Refresh these users now; the answer comes when all are done."""
        status, body = await self._ask("POST", self._url(REFRESH_PATH), json=list(usernames))
        if status != 502:  # 502: every user failed, and the answer still counts them
            _expect(status, body)
        answer = _parse(_COUNTS, body)
        return Counts(
            answer["status"],
            answer["message"],
            answer["updated"],
            answer["errors"],
            tuple(answer["failed"]),
        )

    def _url(self, path: str) -> yarl.URL:
        return self._base.with_path(path)

    async def _ask(self, method: str, url: yarl.URL, json: object = None) -> tuple[int, object]:
        if self._session is None:
            raise RuntimeError("use ServiceClient with async with")
        try:
            async with self._session.request(method, url, json=json) as response:
                try:
                    return response.status, await response.json(content_type=None)
                except ValueError:
                    raise ServiceError(
                        f"{self._base} answered HTTP {response.status} without JSON: "
                        "is listener.host/port the service's listener?"
                    ) from None
        except TimeoutError:
            raise ServiceError(f"{self._base} did not answer within the time allowed") from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            raise ServiceError(
                f"cannot reach the service at {self._base}: "
                f"{'connection refused' if refused else exc.os_error}; "
                "is it running, and are listener.host/port right?"
            ) from None
        except aiohttp.ClientError as exc:
            raise ServiceError(f"{self._base}: {type(exc).__name__}: {exc}") from None


def _expect(status: int, body: object) -> None:
    """Raise ServiceError unless the answer is a 200."""
    if status == 200:
        return
    message = body.get("message") if isinstance(body, dict) else None
    if status == 401:
        raise ServiceError(
            "the service refused the token: listener.token (or HTTP_ROSTER_ADMIN_LISTENER_TOKEN) "
            "is not the running service's"
        )
    if status == 503:
        raise ServiceError(f"the service is {message or 'not ready'}")
    raise ServiceError(f"the service answered HTTP {status}: {message or body!r:.200}")


def _parse(shape: pydantic.TypeAdapter[_T], body: object) -> _T:
    try:
        return shape.validate_python(body)
    except pydantic.ValidationError as exc:
        raise ServiceError(
            f"unexpected answer from the service: {exc.errors()[0]['msg']}"
        ) from None


def _contact(jid: str, data: _ContactJson | None) -> Contact | None:
    if data is None:
        return None
    return Contact(jid, data["name"], frozenset(data["groups"]), data["subscription"], data["ask"])
