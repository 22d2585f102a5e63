"""``speeddata source``: the demo source (speeddata.demo), or a replay of .avro files
(speeddata.replay), sent to the relay until done, Ctrl-C, SIGTERM or ``--duration``."""

from __future__ import annotations

import argparse
import math
import signal
import sys

from ..config import load_config
from ..demo import DemoRunner, parse_rates
from ..relay import die_with_parent
from ..replay import file_schema, replay
from ..source import DEFAULT_MAX_DATAGRAM, MAX_UDP_PAYLOAD, SourceError
from .options import add_config_argument, add_duration_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``speeddata source``."""
    parser.add_argument("--demo", action="store_true", help="send the built-in demo signals")
    parser.add_argument(
        "--replay",
        nargs="+",
        metavar="FILE",
        help=(
            "send the records of .avro files (cache segments, in order) to their channel, "
            "paced by their time field (or a segment's receive times)"
        ),
    )
    parser.add_argument(
        "--channel",
        metavar="NAME",
        help="with --replay: the config channel to send to (default: the one the file names)",
    )
    parser.add_argument(
        "--port", type=int, metavar="N", help="with --replay: send to this port, not the config's"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="with --replay: 2 = twice as fast as recorded, 0 = as fast as possible (default 1)",
    )
    parser.add_argument(
        "--now",
        action="store_true",
        help="with --replay: shift the time field so the first record is stamped now",
    )
    add_config_argument(
        parser, "config file: the relay's ports and the channels' schemas (default: the "
        "built-in demo config; with --replay, give the config of the relay to replay to)"
    )
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="X|CH=HZ",
        help=(
            "a number multiplies every channel's demo rate (2 = twice as fast); CH=HZ sets one "
            "channel's rate in records/s; repeat or comma-separate, e.g. --rate 2 --rate "
            "power=5000. Demo rates: engine 100, power 1000, status 1, others 10 records/s"
        ),
    )
    add_duration_argument(parser)
    parser.add_argument(
        "--channels",
        action="append",
        default=[],
        metavar="A,B",
        help="send only these channels (comma-separated or repeated; default: all)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="relay host (default 127.0.0.1)",
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="send every channel with single-object encoding to the relay's shared port",
    )
    parser.add_argument(
        "--max-datagram",
        type=int,
        default=DEFAULT_MAX_DATAGRAM,
        metavar="BYTES",
        help=f"datagram payload limit (default {DEFAULT_MAX_DATAGRAM}, max {MAX_UDP_PAYLOAD})",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="do not print the send rate every second"
    )


def run(args: argparse.Namespace) -> int:
    """``speeddata source``: run the demo source until Ctrl-C, SIGTERM or ``--duration``."""
    die_with_parent()  # under `speeddata up`: stop when the supervisor dies
    if args.demo and args.replay:
        raise SourceError("--demo or --replay FILE..., not both")
    if args.replay:
        return run_replay(args)
    if not args.demo:
        raise SourceError("nothing to send: use --demo, or --replay FILE... to send a recording")
    if args.duration is not None and (math.isnan(args.duration) or args.duration < 0):
        raise SourceError(f"--duration {args.duration}: must be a number of seconds >= 0")
    config = load_config(args.config)
    names = [name.strip() for item in args.channels for name in item.split(",") if name.strip()]
    multiplier, overrides = parse_rates(args.rate)
    runner = DemoRunner(
        config,
        host=args.host,
        channels=names or None,
        multiplier=multiplier,
        rates=overrides,
        shared=args.shared,
        max_datagram=args.max_datagram,
        out=None if args.quiet else sys.stdout,
    )
    previous = _sigterm_as_interrupt()
    try:
        with runner:
            runner.run(duration=args.duration)  # returns on Ctrl-C or SIGTERM too
    finally:
        _restore(previous)
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """``speeddata source --replay FILE...``: send the files' records, then exit."""
    if args.port is not None and not 1 <= args.port <= 65535:
        raise SourceError(f"--port {args.port}: must be 1..65535")
    expect = None
    channel = args.channel
    if args.port is not None:
        port = args.port
    else:
        config = load_config(args.config)
        if channel is None:
            _, meta = file_schema(args.replay[0])
            channel = meta.get("speeddata.channel")
        served = {c.name: c for c in config.channels}
        where = args.config or "the built-in config"
        if channel not in served:
            hint = "" if args.config else "give the config that has it with -c FILE, "
            raise SourceError(
                f"channel {channel!r} is not in {where} (channels: {', '.join(sorted(served))}); "
                f"{hint}name one with --channel, or give --port"
            )
        expect = served[channel].schema
        port = config.relay.shared_port if args.shared else served[channel].port
        if port is None:
            raise SourceError(
                f"channel {channel!r} has no port in {where}: use --shared (single-object "
                "encoding to relay.shared_port)"
                if not args.shared
                else f"relay.shared_port is off in {where}: send to the channel's port"
            )
    previous = _sigterm_as_interrupt()
    try:
        replay(
            args.replay,
            (args.host, port),
            speed=args.speed,
            now=args.now,
            single_object=args.shared,
            max_datagram=args.max_datagram,
            channel=channel,
            expect_schema=expect,
            out=None if args.quiet else sys.stdout,
        )
    finally:
        _restore(previous)
    return 0


def _sigterm_as_interrupt() -> dict:
    """Make SIGTERM stop the demo as Ctrl-C does (clean exit, totals printed), and Ctrl-C
    raise KeyboardInterrupt also when SIGINT was ignored at start (``speeddata source
    --demo &`` in a script); the previous handlers, for :func:`_restore`."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = {}
    try:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, handler)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        pass
    return previous


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
