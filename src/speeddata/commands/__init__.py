"""The ``speeddata`` command line: the only layer that knows argparse, prints command
output and chooses exit codes.

Each subcommand lives in its own module here, which provides ``add_arguments(parser)``
and ``run(args) -> int``; the argument helpers they share are in
:mod:`speeddata.commands.options`. This module only dispatches. The library below takes
plain arguments and raises :class:`~speeddata.errors.SpeedDataError` subclasses, which
:func:`main` prints as ``speeddata COMMAND: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .. import __version__
from ..errors import SpeedDataError

# name -> (module, one-line help). Listed in the order users meet them. A module missing
# from this build (``serve`` before the live server lands) is left out of the parser.
COMMANDS = {
    "up": ("speeddata.commands.up", "run relay + live server + demo sources on one config"),
    "relay": ("speeddata.commands.relay", "run the relay: UDP in, cache, multicast out"),
    "serve": ("speeddata.commands.serve", "run the live web server"),
    "source": (
        "speeddata.commands.source",
        "send data: the demo source, or a replay of .avro files",
    ),
    "pivot": ("speeddata.commands.pivot", "turn a time range of the cache into an HDF5 file"),
    "tag": ("speeddata.commands.tag", "keep a time range: add, list, remove tags"),
    "cache": ("speeddata.commands.cache", "what the cache holds; recover it after a crash"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, that subcommand's module is the only one
    imported (the others are listed with their help but take no arguments). A process
    imports just what its command needs: ``speeddata relay`` never loads numpy, the
    live server not the pivot's HDF5 (docs/scaling.md, "Footprint")."""
    parser = argparse.ArgumentParser(
        prog="speeddata",
        description="Live telemetry: Avro over UDP in, disk cache, multicast, web, HDF5 out.",
    )
    parser.add_argument("--version", action="version", version=f"speeddata {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            if importlib.util.find_spec(module_name) is not None:
                sub.add_parser(name, help=help_text, description=help_text)
            continue
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
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return args._run(args) or 0
    except SpeedDataError as exc:
        print(f"speeddata {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
