"""``speeddata up``: relay + live server (+ demo source) on one config, under the
supervisor of speeddata.up, with the relay's status table until Ctrl-C."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import textwrap

from ..config import load_config
from ..control import WIDTH, ControlError, format_status, request
from ..up import Supervisor, UpError, children, server_url, wait_for_relay, wait_for_server
from .options import add_config_argument, add_duration_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``speeddata up``."""
    parser.add_argument("--demo", action="store_true", help="also run the demo source")
    add_config_argument(parser)
    add_duration_argument(parser)
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="X|CH=HZ",
        help="demo source rates, as for `speeddata source --rate`",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print send rates")
    parser.add_argument(
        "--engine", choices=("compiled", "python"), help="relay engine (default: compiled if built)"
    )
    parser.add_argument(
        "--no-status", action="store_true", help="do not show the relay status table"
    )
    parser.add_argument(
        "--on-failure",
        choices=("restart", "stop"),
        help="when a process dies: restart it after a back-off, or stop everything "
        "(default: up.on_failure of the config, \"restart\")",
    )


def run(args: argparse.Namespace) -> int:
    """``speeddata up``: start the children, show the relay status until Ctrl-C (or
    ``--duration``), stop them all; 0 on Ctrl-C/duration, else the exit status of the
    child whose death stopped everything (``[up]`` of the config: restart or stop).

    The children's output goes to ``<cache dir>/up.log``; the last lines of a child that
    dies are printed with its exit status or signal.
    """
    if args.duration is not None and (math.isnan(args.duration) or args.duration < 0):
        raise UpError(f"--duration {args.duration}: must be a number of seconds >= 0")
    config = load_config(args.config)  # report config errors once, before starting anything
    policy = config.up
    if args.on_failure:
        policy = dataclasses.replace(policy, on_failure=args.on_failure)
    procs = children(args.config, args.engine, args.demo, args.rate, args.quiet)
    log_path = config.cache.dir.resolve() / "up.log"
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed below, after the children
    except OSError as exc:
        raise UpError(f"cannot write the log {log_path}: {exc.strerror}") from exc
    names = ", ".join(name for name, _ in procs)
    header = f"speeddata up: {names}; output in {log_path}; Ctrl-C stops"
    if any(name == "live server" for name, _ in procs):
        header += f"\nspeeddata up: open {server_url(config)}"  # once it listens
    print(f"speeddata up: starting {names}", file=sys.stderr, flush=True)
    code = 0
    try:
        with Supervisor(policy=policy) as sup:
            try:
                # each part ready before the next; one that fails to start stops up
                # (restarting would not help a config or port problem)
                for name, argv in procs:
                    child = sup.start(name, argv, output=log)
                    if name == "relay":
                        wait_for_relay(config.relay.control, child, sup)
                    elif name == "live server":
                        wait_for_server(config.server.listen, child, sup)
                print(header, file=sys.stderr, flush=True)
                display = None
                if not args.no_status:
                    display = StatusDisplay(config.relay.control, header, events=sup.events)
                code = sup.wait(args.duration, tick=display.refresh if display else None)
            except KeyboardInterrupt:
                code = 0
            except UpError:
                code = 2
                raise
    finally:
        log.close()
    return code


class StatusDisplay:
    """Shows the relay's status table (asked over ZeroMQ) on ``out``: redrawn in place on
    a terminal, appended otherwise."""

    def __init__(self, endpoint: str, header: str, out=None, tty: bool | None = None,
                 events=()):
        self.endpoint = endpoint
        self.header = header
        self.events = events  # the supervisor's recent events (a child died, restarted)
        self.out = out if out is not None else sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.shown = 0

    def refresh(self) -> None:
        try:
            text = format_status(request(self.endpoint, {"cmd": "status"}, timeout=0.5))
        except ControlError as exc:
            text = f"(no status: {exc})"
        if self.tty:  # the screen is redrawn: what happened must be on it
            events = "".join(f"speeddata up: {e}\n" for e in self.events)
            text = _fit_lines(self.header + "\n" + events + text, WIDTH)
            self.out.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            self.out.write(_fit_lines(text, WIDTH) + "\n\n")
        self.out.flush()
        self.shown += 1


def _fit_lines(text: str, width: int) -> str:
    """Every line of ``text`` wrapped to ``width`` columns (the table already fits)."""
    return "\n".join(
        "\n".join(textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False))
        if len(line) > width else line
        for line in text.splitlines()
    )

