"""The ``speeddata`` command. Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import SpeedDataError

# name -> (module, one-line help). Listed in the order users meet them.
COMMANDS = {
    "up": ("speeddata.up", "run relay + live server + demo sources on one config"),
    "relay": ("speeddata.relay", "run the relay: UDP in, cache, multicast out"),
    "serve": ("speeddata.commands.serve", "run the live web server"),
    "source": ("speeddata.source", "send data: the demo source, or a replay of .avro files"),
    "pivot": ("speeddata.pivot", "turn a time range of the cache into an HDF5 file"),
    "tag": ("speeddata.tags", "keep a time range: add, list, remove tags"),
    "cache": ("speeddata.cache", "what the cache holds; recover it after a crash"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speeddata",
        description="Live telemetry: Avro over UDP in, disk cache, multicast, web, HDF5 out.",
    )
    parser.add_argument("--version", action="version", version=f"speeddata {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not part of this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args) or 0
    except SpeedDataError as exc:
        print(f"speeddata {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
