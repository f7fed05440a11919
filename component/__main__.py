"""Command line: ``http-roster-admin run --config FILE``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog

from component import __version__, config, logs
from component.app import Application
from component.errors import ConfigError

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="http-roster-admin",
        description="Let a web application own every user's roster on an XMPP server.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the component"),
        ("check-config", "validate the configuration and exit"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", required=True, type=Path, help="the TOML file")
    return parser


async def _serve(cfg: config.Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Application(cfg).run(stop)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        print(f"http-roster-admin: {exc}", file=sys.stderr)  # noqa: T201 -- before logging exists
        return EXIT_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: ok")  # noqa: T201 -- the command's output
        return 0
    logs.setup(cfg.log.level, cfg.log.format)
    structlog.get_logger(__name__).info(
        "app.starting", version=__version__, config=str(args.config)
    )
    asyncio.run(_serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
