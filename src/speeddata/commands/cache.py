"""``speeddata cache info|recover``: what the cache holds; recover it after a crash."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..cache import (
    CacheBusy,
    cache_writer_pid,
    channel_summary,
    list_segments,
    lock_cache,
    recover_cache,
    segment_needs_recovery,
)
from ..control import format_time
from ..errors import SpeedDataError
from ..validate import validator_factory
from .options import add_cache_arguments, cache_dir_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``speeddata cache info|recover``."""
    sub = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    p = sub.add_parser("info", help="per channel: segments, bytes, time range, open segments")
    p.add_argument("--json", action="store_true", help="one JSON document")
    add_cache_arguments(p)
    p = sub.add_parser(
        "recover",
        help="trim segments a crash left open to their last complete block (no relay running)",
    )
    add_cache_arguments(p)


def run(args: argparse.Namespace) -> int:
    cache_dir = cache_dir_from_args(args)
    if not cache_dir.is_dir():
        raise SpeedDataError(f"{cache_dir}: no cache folder there; give --cache DIR or -c CONFIG")
    if args.cache_command == "recover":
        return _run_recover(cache_dir)
    return _run_info(cache_dir, args.json)


def _run_recover(cache_dir: Path) -> int:
    try:
        fd = lock_cache(cache_dir)  # never under a running relay: it recovers on start itself
    except CacheBusy as exc:
        raise CacheBusy(
            exc.pid,
            f"{cache_dir} is being written by a running relay (pid {exc.pid or '?'}): stop "
            "the relay first, then recover; or just restart the relay, which recovers the "
            "cache when it starts"
        ) from None
    try:
        recovered = recover_cache(cache_dir, validator_factory())
    finally:
        os.close(fd)
    if not recovered:
        print(f"{cache_dir}: every segment is complete")
    for seg, good, dropped in recovered:
        print(f"recovered {seg.avro}: {good} complete block(s) kept, {dropped} index "
              f"entr{'y' if dropped == 1 else 'ies'} dropped")
    return 0


def _run_info(cache_dir: Path, as_json: bool) -> int:
    writer = cache_writer_pid(cache_dir)
    channels = []
    for folder in sorted(p for p in cache_dir.iterdir() if p.is_dir()):
        segments = list_segments(cache_dir, folder.name)
        if folder.name in ("tags", "rejected") or not segments:
            continue
        summary = channel_summary(cache_dir, folder.name)
        open_ = sum(segment_needs_recovery(s) for s in segments)
        pinned = sum(s.avro.stat().st_nlink > 1 for s in segments)
        channels.append(dict(summary, name=folder.name, open=open_, pinned=pinned))
    if as_json:
        print(json.dumps({"cache": str(cache_dir), "relay_pid": writer, "channels": channels},
                         indent=2))
        return 0
    who = f"written by relay pid {writer}" if writer else "no relay writing it"
    print(f"{cache_dir} ({who})")
    if not channels:
        print("no segments")
    for c in channels:
        print(
            f"{c['name']}\t{c['segments']} segments\t{c['bytes'] / 1e6:.1f} MB\t"
            f"{format_time(c['oldest_ns'])} to {format_time(c['newest_ns'])}\t"
            f"{c['open']} open\t{c['pinned']} pinned"
        )
    return 0
