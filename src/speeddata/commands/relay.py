"""``speeddata relay`` (also ``python -m speeddata.relay``): run the relay until SIGINT,
SIGTERM or a stop request; ``speeddata relay status``: a running relay's counters."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time

from ..config import load_config
from ..control import ControlError, format_status, request
from ..errors import SpeedDataError
from ..relay import Relay, RelayError, die_with_parent
from .options import add_config_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``speeddata relay`` (and ``speeddata relay status``)."""
    add_config_argument(parser)
    parser.add_argument(
        "--workers", type=int, metavar="N", help="engine threads (default: relay.workers)"
    )
    parser.add_argument(
        "--engine",
        choices=("compiled", "python"),
        help="relay engine (default: compiled when built, else python)",
    )
    sub = parser.add_subparsers(dest="relay_command", metavar="{status}")
    status = sub.add_parser(
        "status",
        help="print a running relay's per-channel counters",
        description="Ask a running relay (over its ZeroMQ control socket) for its status.",
    )
    status.add_argument(
        "-c",
        "--config",
        dest="status_config",
        metavar="FILE",
        help="config file whose relay.control to ask",
    )
    status.add_argument(
        "--control", metavar="ENDPOINT", help="relay control endpoint (overrides the config)"
    )
    status.add_argument("--watch", action="store_true", help="refresh once a second until Ctrl-C")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    status.add_argument(
        "--timeout", type=float, default=3.0, metavar="S", help="seconds to wait for a reply"
    )


def run(args: argparse.Namespace) -> int:
    """``speeddata relay``: run until SIGINT/SIGTERM or a stop request; 0 when stopped."""
    if getattr(args, "relay_command", None) == "status":
        return run_status(args)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s speeddata relay: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = load_config(args.config)
    relay = Relay(config, engine=args.engine, workers=args.workers)
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, relay.stop_from_signal)
    die_with_parent()
    try:
        relay.start()
        relay.wait()
    finally:
        relay.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return relay.exit_code


def run_status(args: argparse.Namespace) -> int:
    """``speeddata relay status``: one table, or a refreshing one with ``--watch``."""
    endpoint = args.control
    if endpoint is None:
        endpoint = load_config(args.status_config or args.config).relay.control
    try:
        while True:
            status = request(endpoint, {"cmd": "status"}, timeout=args.timeout)
            if args.json:
                text = json.dumps(status, indent=2)
            else:
                text = format_status(status)
            if args.watch:
                sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
                sys.stdout.flush()
                time.sleep(1.0)
            else:
                print(text)
                return 0
    except KeyboardInterrupt:
        return 0
    except ControlError as exc:
        raise RelayError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """``python -m speeddata.relay``: same as ``speeddata relay``."""
    parser = argparse.ArgumentParser(
        prog="python -m speeddata.relay",
        description="run the relay: UDP in, cache, multicast out",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SpeedDataError as exc:
        print(f"speeddata relay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
