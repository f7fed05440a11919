"""The service's configuration: one TOML file, validated once at start.

Secrets may come from the environment instead of the file, so the file can be world-readable
and the unit can load them from a credentials store.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from typing import TYPE_CHECKING, Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from slixmpp.jid import JID, InvalidJID

from component.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

# Names of environment variables, not secrets.
SECRET_ENV = "HTTP_ROSTER_ADMIN_SECRET"  # noqa: S105
LISTENER_TOKEN_ENV = "HTTP_ROSTER_ADMIN_LISTENER_TOKEN"  # noqa: S105
WEBAPP_TOKEN_ENV = "HTTP_ROSTER_ADMIN_WEBAPP_TOKEN"  # noqa: S105
API_PASSWORD_ENV = "HTTP_ROSTER_ADMIN_API_PASSWORD"  # noqa: S105
# Every secret: (section, key, the environment variable that supplies and overrides it).
SECRETS = (
    ("component", "secret", SECRET_ENV),
    ("listener", "token", LISTENER_TOKEN_ENV),
    ("webapp", "token", WEBAPP_TOKEN_ENV),
    ("server", "api_password", API_PASSWORD_ENV),
)

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default. Types are
    # strict: "5347", "yes", 0 for a boolean or 3.0 for a count are mistakes, not values to
    # coerce (TOML has real integers, floats and booleans). An integer still fills a float.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def _domain(value: str) -> str:
    try:
        jid = JID(value)
    except InvalidJID as exc:
        raise ValueError(f"not a valid XMPP domain: {exc}") from None
    if jid.user or jid.resource:
        raise ValueError("must be a bare domain such as 'roster.example.org'")
    return jid.domain


class ComponentConfig(_Section):
    """The XEP-0114 link to the XMPP server."""

    jid: str
    secret: str = Field(default="", repr=False)
    host: str = "127.0.0.1"
    port: Port = 5347
    reconnect_max_delay: Seconds = 30.0

    _check_jid = field_validator("jid")(_domain)


class UsersConfig(_Section):
    """Whose rosters we manage."""

    domain: str

    _check_domain = field_validator("domain")(_domain)


class WebAppConfig(_Section):
    """How to ask the web app for a roster."""

    roster_url: str
    token: str = Field(default="", repr=False)
    timeout: Seconds = 10.0
    attempts: Annotated[int, Field(ge=1, le=10)] = 3
    max_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    # Requests in a row that got no answer before the web app is taken to be down; then
    # fetches fail at once, and one probe goes per cooldown until it answers.
    circuit_failures: Annotated[int, Field(ge=1)] = 5
    circuit_cooldown: Seconds = 5.0

    @field_validator("roster_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        if value.count("%s") != 1:
            raise ValueError("must contain '%s' exactly once, where the username goes")
        return value


class ListenerConfig(_Section):
    """The refresh endpoint the web app calls."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 5285  # 0: any free port
    token: str = Field(default="", repr=False)
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    # POST /roster_admin/rosters carries whole rosters: 10,000 users of 20 contacts are
    # about 15 MB of JSON.
    max_rosters_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    max_users: Annotated[int, Field(ge=1)] = 10_000
    # At shutdown, how long refreshes in flight may go on; what is not done then is answered
    # as failed. Keep systemd's TimeoutStopSec above this plus sync.xmpp_timeout plus 10 s.
    stop_timeout: Annotated[float, Field(ge=0)] = 10.0


class ServerConfig(_Section):
    """Which XMPP server we are attached to, and how rosters get into it."""

    kind: Literal["prosody", "ejabberd"]
    # Unset: Prosody delegates (the recommended mode there); ejabberd cannot (see Config).
    delegate_roster: bool | None = None
    # Must stay below what the server accepts from us (Prosody: component_stanza_size_limit,
    # 512 KiB by default), or an oversized roster answer would cost us the whole stream.
    max_stanza_bytes: Annotated[int, Field(ge=10_000)] = 500_000
    # ejabberd's admin API (mod_http_api with mod_admin_extra): where rosters are written.
    api_url: str = ""
    # For an API protected by ejabberd's own auth: an admin account and its password.
    api_user: str = ""
    api_password: str = Field(default="", repr=False)
    api_concurrency: Annotated[int, Field(ge=1, le=128)] = 16

    @property
    def delegates(self) -> bool:
        """Whether the server delegates users' roster requests to us."""
        return self.kind == "prosody" if self.delegate_roster is None else self.delegate_roster

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class SyncConfig(_Section):
    """How often and how widely rosters are synced."""

    max_age: Annotated[float, Field(ge=0)] = 60.0
    concurrency: Annotated[int, Field(ge=1, le=128)] = 16
    # Requests to the server in flight, over all syncs: servers take writes in parallel much
    # faster than one by one; Prosody peaks at 64-128 (a refresh's pushes: 1.00 times the
    # server alone's at 128, 1.12 at 64), and slixmpp slows beyond 128 IQs.
    write_window: Annotated[int, Field(ge=1, le=128)] = 128
    xmpp_timeout: Seconds = 10.0
    answer_timeout: Seconds = 20.0
    # Drift is rare (the server's rules block what they can, every login re-syncs): an hour
    # bounds how long a slipped-through change lasts for one web-app request per online user
    # per hour. 0 turns it off.
    reconcile_interval: Annotated[float, Field(ge=0)] = 3600.0
    # After the XMPP link comes back, the users online are re-synced with their starts spread
    # over this many seconds (a quarter of the sync slots at most), not all at once.
    resync_spread: Annotated[float, Field(ge=0)] = 10.0


class LogConfig(_Section):
    """Where logs go and in which shape."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    """The whole, validated configuration."""

    component: ComponentConfig
    users: UsersConfig
    webapp: WebAppConfig
    listener: ListenerConfig = ListenerConfig()
    server: ServerConfig
    sync: SyncConfig = SyncConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _check_secret(self) -> Self:
        if not self.component.secret:
            raise ValueError(f"component.secret is required (or set {SECRET_ENV})")
        return self

    @model_validator(mode="after")
    def _check_listener(self) -> Self:
        # Anyone who can reach the listener could make it fetch and rewrite every roster.
        if not self.listener.token and not _is_loopback(self.listener.host):
            raise ValueError(
                f"listener.token is required when listener.host ({self.listener.host!r}) is "
                f"not a loopback address (or set {LISTENER_TOKEN_ENV})"
            )
        return self

    @model_validator(mode="after")
    def _check_server(self) -> Self:
        server = self.server
        if server.kind == "ejabberd":
            if server.delegate_roster:
                # Its roster handler is removed when the component disconnects, breaking every
                # user's roster until mod_roster restarts (SERVERS.md, README).
                raise ValueError(
                    'server.delegate_roster = true is not possible with kind = "ejabberd": '
                    "remove it"
                )
            if not server.api_url:
                raise ValueError(
                    'server.api_url is required with kind = "ejabberd" '
                    '(e.g. "http://127.0.0.1:5280/api")'
                )
            if bool(server.api_user) != bool(server.api_password):
                raise ValueError(
                    "server.api_user and server.api_password go together "
                    f"(the password may come from {API_PASSWORD_ENV})"
                )
        elif server.api_url or server.api_user or server.api_password:
            raise ValueError('server.api_url and api_user are only for kind = "ejabberd"')
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every address)
        return False


def load(path: Path, environ: dict[str, str] | None = None) -> Config:
    """Read, merge the environment's secrets into, and validate the configuration file."""
    env = dict(os.environ if environ is None else environ)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for section, key, var in SECRETS:
        if env.get(var) and isinstance(raw.get(section, {}), dict):
            raw.setdefault(section, {})[key] = env[var]
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"missing key {key}"
    if error["type"] == "extra_forbidden":
        return f"unknown key {key}"
    if not key:
        return message
    return f"bad value for {key}: {message}"
