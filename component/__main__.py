"""Command line: ``http-roster-admin run --config FILE``, and the operator commands.

Exit codes: 0 done (in sync, no failures); 1 a check found a difference or a refresh had
failures; 2 a bad config or command line, or an error that kept a command from doing its job
(service unreachable or refusing, a roster that could not be checked); 70 a crash (an
unexpected exception, logged with its traceback); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import traceback
from pathlib import Path

import structlog

from component import __version__, config, logs
from component.app import Application
from component.cli import commands, report
from component.errors import BadRequestError, ConfigError, ServiceError

EXIT_CONFIG = 2
EXIT_CRASH = 70  # EX_SOFTWARE (sysexits.h): systemd restarts it, unlike a bad config
EXIT_INTERRUPTED = 130


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="http-roster-admin",
        description="Let a web application own every user's roster on an XMPP server.",
        epilog="Exit codes: 0 ok; 1 differences or failed users; 2 bad config or error; 70 crash.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands_ = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands_.add_parser(name, help=text, description=text)
        sub.add_argument("--config", required=True, type=Path, help="the service's TOML file")
        return sub

    command("run", "run the component")
    command("check-config", "validate the configuration and exit")
    command("config", "validate and print the effective configuration, secrets masked")
    command(
        "check", "show how each user's roster in the server differs from the web app's"
    ).add_argument("usernames", nargs="+", metavar="USER")
    refresh = command("refresh", "sync users' rosters now and print the counts")
    refresh.add_argument("usernames", nargs="*", metavar="USER")
    refresh.add_argument(
        "--all-online", action="store_true", help="every user online now, instead of USERs"
    )
    refresh.add_argument(
        "--chunk-size",
        type=_positive,
        default=commands.CHUNK_SIZE,
        help=f"users per request (default {commands.CHUNK_SIZE})",
    )
    return parser


def _fail(message: object) -> None:
    print(f"http-roster-admin: {message}", file=sys.stderr)  # noqa: T201 -- before logging exists


async def _serve(cfg: config.Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Application(cfg).run(stop)


def _run(cfg: config.Config, path: Path) -> int:
    logs.setup(cfg.log.level, cfg.log.format)
    log = structlog.get_logger(__name__)
    log.info("app.starting", version=__version__, config=str(path))
    try:
        asyncio.run(_serve(cfg))
    except Exception:
        # Whatever it is, it is a crash, with its own exit code.
        log.exception("app.crashed", exit_code=EXIT_CRASH)
        return EXIT_CRASH
    return 0


def _operate(cfg: config.Config, args: argparse.Namespace) -> int:
    """The commands other than ``run``: they print their results on stdout."""
    match args.command:
        case "check-config":
            sys.stdout.write(f"{args.config}: ok\n")
            return 0
        case "config":
            sys.stdout.write(f"# {args.config}: valid; defaults filled in, secrets masked\n")
            sys.stdout.write(report.effective_config(cfg, os.environ))
            return 0
        case "check":
            return asyncio.run(commands.check(cfg, args.usernames, sys.stdout))
        case _:
            users = None if args.all_online else args.usernames
            return asyncio.run(commands.refresh(cfg, users, sys.stdout, args.chunk_size))


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "refresh" and bool(args.usernames) == args.all_online:
        parser.error("refresh: name USERs or --all-online (one of them)")
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        _fail(exc)
        return EXIT_CONFIG
    if args.command == "run":
        return _run(cfg, args.config)
    try:
        return _operate(cfg, args)
    except (ConfigError, ServiceError, BadRequestError) as exc:
        _fail(exc)
        return commands.EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 -- whatever it is, it is a crash with its own exit code
        traceback.print_exc()
        _fail(f"crashed (exit code {EXIT_CRASH})")
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
