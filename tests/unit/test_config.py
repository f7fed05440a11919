"""Configuration: one TOML file, secrets from the environment, one clear error per mistake."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from component import config
from component.__main__ import main
from component.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    Writer = Callable[[str], Path]

GOOD = """
[component]
jid = "roster.example.test"
secret = "s3cret"
host = "127.0.0.1"
port = 5347
[users]
domain = "example.test"
[webapp]
roster_url = "http://127.0.0.1:8080/contacts/%s"
[listener]
host = "127.0.0.1"
port = 5285
token = "t0ken"
[server]
kind = "prosody"
"""


EJABBERD = 'kind = "ejabberd"\napi_url = "http://127.0.0.1:5280/api"'


@pytest.fixture(name="write")
def fixture_write(tmp_path: Path) -> Writer:
    def write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    return write


def test_good_config_loads_with_defaults(write: Writer) -> None:
    """The documented keys load; optional sections get their defaults."""
    cfg = config.load(write(GOOD), environ={})
    assert cfg.component.jid == "roster.example.test"
    assert cfg.listener.token == "t0ken"
    assert cfg.server.delegates is True
    assert cfg.sync.max_age == 60
    assert cfg.webapp.timeout == 10


def test_secret_may_come_from_the_environment(write: Writer) -> None:
    """HTTP_ROSTER_ADMIN_SECRET supplies (and overrides) component.secret."""
    text = GOOD.replace('secret = "s3cret"\n', "")
    cfg = config.load(write(text), environ={config.SECRET_ENV: "from-env"})
    assert cfg.component.secret == "from-env"


def test_secrets_are_not_in_the_repr(write: Writer) -> None:
    """Logging the config cannot leak the secret or tokens."""
    cfg = config.load(write(GOOD), environ={})
    assert "s3cret" not in repr(cfg)
    assert "t0ken" not in repr(cfg)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('jid = "roster.example.test"\n', ""), "missing key component.jid"),
        (('secret = "s3cret"\n', ""), "component.secret is required"),
        (("port = 5347", "port = 99999"), "bad value for component.port"),
        (("port = 5347", 'port = "x"'), "bad value for component.port"),
        (("port = 5347", 'port = "5347"'), "bad value for component.port"),
        (
            ('kind = "prosody"', 'kind = "prosody"\ndelegate_roster = "yes"'),
            "bad value for server.delegate_roster",
        ),
        (
            ('kind = "prosody"', 'kind = "prosody"\ndelegate_roster = 0'),
            "bad value for server.delegate_roster",
        ),
        (("[webapp]", "[webapp]\nattempts = 3.0"), "bad value for webapp.attempts"),
        (("[webapp]", '[webapp]\ntimeout = "10"'), "bad value for webapp.timeout"),
        (('kind = "prosody"', 'kind = "openfire"'), "bad value for server.kind"),
        (("/contacts/%s", "/contacts/"), "bad value for webapp.roster_url"),
        (('"http://127', '"ftp://127'), "bad value for webapp.roster_url"),
        (('domain = "example.test"', 'domain = "a@example.test"'), "bad value for users.domain"),
        (("[users]", "[users]\ndomian = 1"), "unknown key users.domian"),
        (('kind = "prosody"', EJABBERD + "\ndelegate_roster = true"), "server.delegate_roster"),
        (('kind = "prosody"', 'kind = "ejabberd"'), "server.api_url is required"),
        (
            ('kind = "prosody"', EJABBERD + "\napi_user = 'a@x'"),
            "server.api_password",
        ),
        (('kind = "prosody"', EJABBERD.replace("http:", "ftp:")), "bad value for server.api_url"),
        (
            ('kind = "prosody"', 'kind = "prosody"\napi_url = "http://x/api"'),
            'only for kind = "ejabberd"',
        ),
        (("[users]", "[user]"), "missing key users"),
        (
            ('host = "127.0.0.1"\nport = 5285\ntoken = "t0ken"', 'host = "0.0.0.0"'),
            "listener.token is required when listener.host ('0.0.0.0') is not a loopback",
        ),
        (('host = "127.0.0.1"\nport = 5285\ntoken = "t0ken"', 'host = ""'), "listener.token"),
        (
            ('host = "127.0.0.1"\nport = 5285\ntoken = "t0ken"', 'host = "roster.example.test"'),
            "listener.token",
        ),
    ],
)
def test_bad_config_names_the_key(write: Writer, edit: tuple[str, str], message: str) -> None:
    """Each mistake is reported in one line naming the key to fix."""
    path = write(GOOD.replace(*edit))
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_integers_fill_float_keys(write: Writer) -> None:
    """Strict types still take a TOML integer where seconds are expected."""
    cfg = config.load(write(GOOD.replace("[webapp]", "[webapp]\ntimeout = 3")), environ={})
    assert cfg.webapp.timeout == 3.0


def test_invalid_toml_is_reported(write: Writer) -> None:
    """A file that is not TOML says so with the position."""
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write("[component\n"), environ={})


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A missing file is one clear error."""
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.toml", environ={})


def test_cli_exits_2_with_one_line_on_bad_config(
    write: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` with a bad config prints one line naming the key and exits with code 2."""
    path = write(GOOD.replace("port = 5347", "port = 0"))
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "component.port" in err


def test_cli_check_config_accepts_a_good_file(
    write: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check-config` validates without starting anything."""
    assert main(["check-config", "--config", str(write(GOOD))]) == 0
    assert "ok" in capsys.readouterr().out


def test_delegation_defaults_by_server_kind(write: Writer) -> None:
    """Prosody delegates unless told not to; ejabberd never does, and needs its API."""
    prosody = config.load(write(GOOD), environ={})
    ejabberd = config.load(write(GOOD.replace('kind = "prosody"', EJABBERD)), environ={})
    assert (prosody.server.delegates, ejabberd.server.delegates) == (True, False)
    assert ejabberd.server.api_url == "http://127.0.0.1:5280/api"


def test_api_password_may_come_from_the_environment(write: Writer) -> None:
    """HTTP_ROSTER_ADMIN_API_PASSWORD supplies server.api_password, kept out of the repr."""
    text = GOOD.replace('kind = "prosody"', EJABBERD + '\napi_user = "admin@example.test"')
    cfg = config.load(write(text), environ={config.API_PASSWORD_ENV: "pa55"})
    assert cfg.server.api_password == "pa55"
    assert "pa55" not in repr(cfg)


def test_the_shipped_example_config_is_valid() -> None:
    """deploy/config.example.toml loads as it is, the secret coming from the environment."""
    example = Path(__file__).resolve().parents[2] / "deploy" / "config.example.toml"
    cfg = config.load(example, environ={config.SECRET_ENV: "from-env"})
    assert (cfg.server.kind, cfg.sync.reconcile_interval, cfg.sync.write_window) == (
        "prosody",
        3600,
        128,
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_listener_needs_no_token(write: Writer, host: str) -> None:
    """Only local processes can reach it: the token stays optional."""
    text = GOOD.replace('host = "127.0.0.1"\nport = 5285\ntoken = "t0ken"', f'host = "{host}"')
    assert config.load(write(text), environ={}).listener.token == ""


def test_a_public_listener_may_take_its_token_from_the_environment(write: Writer) -> None:
    """The token from HTTP_ROSTER_ADMIN_LISTENER_TOKEN counts."""
    text = GOOD.replace('host = "127.0.0.1"\nport = 5285\ntoken = "t0ken"', 'host = "0.0.0.0"')
    cfg = config.load(write(text), environ={config.LISTENER_TOKEN_ENV: "from-env"})
    assert cfg.listener.token == "from-env"
