"""``speeddata up``: relay + live server (+ demo source) on one config, under the
supervisor of speeddata.up, with the relay's status table until Ctrl-C."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path

from ..config import load_config
from ..control import WIDTH, ControlError, format_status, request
from ..up import Supervisor, UpError, children, server_url, wait_for_relay
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


def run(args: argparse.Namespace) -> int:
    """``speeddata up``: start the children, show the relay status until Ctrl-C (or
    ``--duration``), stop them all; 0 on Ctrl-C/duration, else the failed child's status.

    The children's output goes to ``<cache dir>/up.log``; its tail is printed when a
    child fails.
    """
    if args.duration is not None and (math.isnan(args.duration) or args.duration < 0):
        raise UpError(f"--duration {args.duration}: must be a number of seconds >= 0")
    config = load_config(args.config)  # report config errors once, before starting anything
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
        header += f"\nspeeddata up: open {server_url(config)}"
    print(header, file=sys.stderr, flush=True)
    code = 0
    try:
        with Supervisor() as sup:
            try:
                relay = sup.start(*procs[0], output=log)
                wait_for_relay(config.relay.control, relay)
                for name, argv in procs[1:]:
                    sup.start(name, argv, output=log)
                display = None if args.no_status else StatusDisplay(config.relay.control, header)
                code = sup.wait(args.duration, tick=display.refresh if display else None)
            except KeyboardInterrupt:
                code = 0
            except UpError:
                code = 2
                raise
    finally:
        log.close()
        if code != 0:
            sys.stderr.write(f"--- last lines of {log_path} ---\n{_tail(log_path)}\n")
    return code


class StatusDisplay:
    """Shows the relay's status table (asked over ZeroMQ) on ``out``: redrawn in place on
    a terminal, appended otherwise."""

    def __init__(self, endpoint: str, header: str, out=None, tty: bool | None = None):
        self.endpoint = endpoint
        self.header = header
        self.out = out if out is not None else sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.shown = 0

    def refresh(self) -> None:
        try:
            text = format_status(request(self.endpoint, {"cmd": "status"}, timeout=0.5))
        except ControlError as exc:
            text = f"(no status: {exc})"
        if self.tty:
            text = _fit_lines(self.header + "\n" + text, WIDTH)
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


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
