"""``speeddata serve``: the live web server alone (docs/server.md)."""

from __future__ import annotations

import argparse

from ..config import load_config, parse_address
from ..errors import SpeedDataError


class ServeError(SpeedDataError, RuntimeError):
    """``speeddata serve`` cannot start; the message says why and what to change."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", metavar="FILE", help="config file (default: the built-in demo config)"
    )
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help="address to listen on (default: server.listen)"
    )


def run(args: argparse.Namespace) -> int:
    from ..server import ServerError, serve

    config = load_config(args.config)
    listen = None
    if args.listen:
        try:
            listen = parse_address(args.listen)
        except ValueError as exc:
            raise ServeError(f"--listen: {exc}") from None
    try:
        return serve(config, listen=listen)
    except ServerError as exc:
        raise ServeError(str(exc)) from None
