"""Arguments that several commands share, and what they resolve to."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cache DIR`` or ``-c CONFIG`` (the config's ``cache.dir``; default config without)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cache", metavar="DIR", help="cache folder")
    group.add_argument("-c", "--config", metavar="FILE", help="config file (its cache.dir)")


def cache_dir_from_args(args: argparse.Namespace) -> Path:
    """The cache folder that :func:`add_cache_arguments`' options name."""
    if getattr(args, "cache", None):
        return Path(args.cache)
    return Path(load_config(getattr(args, "config", None)).cache.dir)


def add_config_argument(
    parser: argparse.ArgumentParser,
    help: str = "config file (default: the built-in demo config)",  # noqa: A002
) -> None:
    """``-c/--config FILE`` of the commands that run parts of SpeedData."""
    parser.add_argument("-c", "--config", metavar="FILE", help=help)


def add_duration_argument(parser: argparse.ArgumentParser) -> None:
    """``--duration S`` of the commands that run until Ctrl-C."""
    parser.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)"
    )
