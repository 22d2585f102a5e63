"""``speeddata tag add|list|rm``: keep a time range of the cache (speeddata.tags)."""

from __future__ import annotations

import argparse
import json

from ..tags import add_tag, list_tags, remove_tag
from ..times import format_time
from .options import add_cache_arguments, cache_dir_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tag_command", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="create a tag: pin a time range against retention")
    p.add_argument("name", help="tag name: letters, digits, '_', '.', '-' (max 64)")
    p.add_argument("--start", required=True,
                   help="ISO time, ns, 'now' or e.g. 'now-10min' (or --start=-10min)")
    p.add_argument("--end", required=True,
                   help="ISO time, ns, 'now' or e.g. 'now-1min'; excluded: the tag keeps "
                        "[start, end)")
    p.add_argument("--channels", nargs="+", metavar="CHANNEL", help="default: every channel")
    p.add_argument("--note", default="", help="free text kept with the tag")
    add_cache_arguments(p)
    p = sub.add_parser("list", help="list tags")
    p.add_argument("--json", action="store_true", help="one JSON document")
    add_cache_arguments(p)
    p = sub.add_parser("rm", help="remove a tag (its data may then be deleted by retention)")
    p.add_argument("name", help="the tag to remove (see `speeddata tag list`)")
    add_cache_arguments(p)


def run(args: argparse.Namespace) -> int:
    cache = cache_dir_from_args(args)
    if args.tag_command == "add":
        tag = add_tag(cache, args.name, args.start, args.end, args.channels, args.note)
        print(
            f"tag {tag.name}: {format_time(tag.start_ns)} to {format_time(tag.end_ns)}, "
            f"{', '.join(tag.channels)}; {tag.n_segments} segments pinned, "
            f"{_size(tag.n_bytes)} of data{_allocated(tag)}"
        )
    elif args.tag_command == "list":
        tags = list_tags(cache)
        if args.json:
            print(json.dumps([{**t.to_json(), "n_segments": t.n_segments,
                               "n_bytes": t.n_bytes, "n_allocated": t.n_allocated}
                              for t in tags], indent=2))
        elif not tags:
            print(f"no tags in {cache}")
        else:
            for t in tags:
                print(
                    f"{t.name}\t{format_time(t.start_ns)}\t{format_time(t.end_ns)}\t"
                    f"{','.join(t.channels)}\t{t.n_segments} segments\t"
                    f"{_size(t.n_bytes)} of data{_allocated(t)}\t"
                    f"{t.note}"
                )
    elif args.tag_command == "rm":
        tag = remove_tag(cache, args.name)
        print(f"removed tag {tag.name} ({tag.n_segments} segments unpinned)")
    return 0


def _allocated(tag) -> str:
    """`` (201.6 MB on disk)`` when the tag's segments take more than its data (a segment
    still being written is pre-allocated), else nothing."""
    return f" ({_size(tag.n_allocated)} on disk)" if tag.n_allocated > tag.n_bytes else ""


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
