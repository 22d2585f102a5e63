"""Tags: named sets (time range, channels, note) whose data retention never deletes.

A tag lives in ``<cache>/tags/<name>/``: ``tag.json`` and, per channel, hard links to
every segment file (``.avro``, ``.idx``, ``.recv``) that overlaps the range
(docs/cache.md, "Tags"). A linked ``.avro`` has ``st_nlink > 1``, which
``speeddata.cache.enforce_retention`` skips; removing the tag removes the folder and the
segments may go again. Because the links are names of the same files, the tag's data
stays readable even when the channel folder's names are gone: ``speeddata.read`` and
``speeddata pivot --tag`` look there too.

A tag is what it kept: ``tag.json`` lists, per channel, the segments it pinned and how
many blocks each held when the tag was made, and reading the tag returns exactly the
records of those blocks within its range. Records stored later with times in the range
(a replay of old data, blocks the relay appends to a segment that was still open) are in
the cache, and in reads by time, but not in the tag.

Python::

    tag = speeddata.add_tag("data", "run42", start="-10min", end="now", note="new cam")
    speeddata.list_tags("data"); speeddata.remove_tag("data", "run42")

Command line (speeddata.commands.tag): ``speeddata tag add NAME --start T --end T
[--channels C ...] [--note TEXT]``, ``speeddata tag list``, ``speeddata tag rm NAME`` (each
with ``--cache DIR`` or ``-c CONFIG``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import (
    IDX_DTYPE,
    Segment,
    cache_channels,
    resolve_cache_dir,
    segment_bytes,
    segment_candidates,
    segment_data_bytes,
    segment_time_ns,
    write_json_atomic,
)
from .errors import SpeedDataError
from .times import format_time, parse_range

__all__ = [
    "Tag",
    "TagError",
    "add_tag",
    "get_tag",
    "list_tags",
    "remove_tag",
    "validate_tag_name",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: slack for "now": the newest data is at most this far behind the wall clock
_FUTURE_SLACK_NS = 1_000_000_000


class TagError(SpeedDataError, ValueError):
    """A tag request that cannot be done; the message says why and what is possible."""


@dataclass(frozen=True)
class Tag:
    """A named set: ``[start_ns, end_ns)`` of ``channels``, with a ``note``."""

    name: str
    start_ns: int
    end_ns: int
    channels: tuple[str, ...]
    note: str = ""
    created_ns: int = 0
    #: segments pinned (links to .avro files), the bytes of data the tag kept in them,
    #: and the bytes they take on disk (more while a segment is still being written:
    #: segments are pre-allocated)
    n_segments: int = 0
    n_bytes: int = 0
    n_allocated: int = 0
    #: channel -> segment file name -> blocks it held when the tag was made: what the
    #: tag reads (None: a tag made before tags kept this; it reads its links' blocks)
    segments: dict[str, dict[str, int]] | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        del d["n_segments"], d["n_bytes"], d["n_allocated"]
        if d["segments"] is None:
            del d["segments"]
        return d


def validate_tag_name(name: Any) -> str:
    """The name if it is ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``; TagError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name) if isinstance(name, str) and len(name) <= 80 else "the name"
        raise TagError(
            f"{shown} is not a tag name: use 1 to 64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit (no '/', no leading '.')"
        )
    return name


def _tags_dir(cache_dir: Any) -> Path:
    return resolve_cache_dir(cache_dir) / "tags"


def _channel_range(cache_dir: Path, channel: str) -> tuple[int | None, int | None]:
    """Oldest t_min and newest t_max over the channel's segments (index entries)."""
    lo = hi = None
    for paths in segment_candidates(cache_dir, channel, None):
        index = _index(Segment(paths[0]))
        if len(index):
            a, b = int(index["t_min"].min()), int(index["t_max"].max())
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    return lo, hi


def _index(segment: Segment) -> np.ndarray:
    try:
        raw = segment.idx.read_bytes()
    except FileNotFoundError:
        return np.zeros(0, IDX_DTYPE)
    return np.frombuffer(raw[: len(raw) // IDX_DTYPE.itemsize * IDX_DTYPE.itemsize], IDX_DTYPE)


def add_tag(
    cache_dir: Any,
    name: str,
    start: Any,
    end: Any,
    channels: Any = None,
    note: str = "",
    *,
    now_ns: int | None = None,
) -> Tag:
    """Create tag ``name`` over ``[start, end)`` of ``channels`` (all when None).

    Times as in ``speeddata.read``; the end is excluded. Raises TagError when the name is
    invalid or taken, a channel is unknown, or the range is not in the cache (the
    message gives the range that is): it starts before the oldest data, ends in the
    future, or holds no data of the channels, inside the span of the data (a gap) as
    outside it.
    """
    validate_tag_name(name)
    cache = resolve_cache_dir(cache_dir)
    now_ns = time.time_ns() if now_ns is None else now_ns
    if start is None or end is None:
        raise TagError("a tag needs both --start and --end")
    start_ns, end_ns = parse_range(start, end, now_ns)
    known = cache_channels(cache)
    if not known:
        raise TagError(f"the cache {str(cache)!r} holds no channel yet")
    if channels is None or len(channels) == 0:
        chosen = known
    else:
        chosen = [channels] if isinstance(channels, str) else list(dict.fromkeys(channels))
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise TagError(f"no channel {unknown[0]!r} in the cache; channels: {known}")
    ranges = {c: _channel_range(cache, c) for c in chosen}
    lows = [lo for lo, _ in ranges.values() if lo is not None]
    highs = [hi for _, hi in ranges.values() if hi is not None]
    if not lows:
        raise TagError(f"channels {chosen} hold no data yet")
    oldest, newest = min(lows), max(highs)
    available = f"available: {format_time(oldest)} to {format_time(newest)}"
    if start_ns < oldest:
        raise TagError(
            f"start {format_time(start_ns)} is before the oldest data in the cache "
            f"(deleted or never recorded); {available}"
        )
    if start_ns > newest:
        raise TagError(f"start {format_time(start_ns)} is after the newest data; {available}")
    if end_ns > now_ns + _FUTURE_SLACK_NS:
        raise TagError(
            f"end {format_time(end_ns)} is in the future: data that arrives later cannot be "
            f"pinned now; {available}"
        )

    if not any(_holds_data(cache, c, start_ns, end_ns) for c in chosen):
        # the same answer inside the span of the data (a gap) as outside it
        raise TagError(
            f"no data of {', '.join(chosen)} from {format_time(start_ns)} to "
            f"{format_time(end_ns)} (end excluded): a tag keeps data, and there is none "
            f"to keep; {available}"
        )

    tags = cache / "tags"
    final = tags / name
    if final.exists():
        raise TagError(f"tag {name!r} exists; remove it first (speeddata tag rm {name})")
    tags.mkdir(parents=True, exist_ok=True)
    work = tags / f".new-{name}-{os.getpid()}-{time.monotonic_ns()}"
    work.mkdir()
    try:
        n_segments = n_bytes = n_allocated = 0
        kept: dict[str, dict[str, int]] = {}
        for channel in chosen:
            kept[channel] = {}
            for paths in segment_candidates(cache, channel, None):
                seg = Segment(paths[0])
                # the blocks counted before linking: one appended meanwhile is not kept
                index = _index(seg)
                if not _overlaps(seg, start_ns, end_ns, index):
                    continue
                linked = _link_segment(paths, work / channel)
                if linked:
                    n_segments += 1
                    n_allocated += linked
                    n_bytes += segment_data_bytes(seg, len(index))
                    kept[channel][seg.avro.name] = len(index)
        tag = Tag(name, start_ns, end_ns, tuple(chosen), note or "", time.time_ns(),
                  segments=kept)
        write_json_atomic(work / "tag.json", tag.to_json())
        try:
            os.rename(work, final)  # atomic: a concurrent add of the same name fails here
        except OSError as exc:
            raise TagError(f"tag {name!r} exists; remove it first") from exc
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Tag(**{**asdict(tag), "n_segments": n_segments, "n_bytes": n_bytes,
                  "n_allocated": n_allocated})


def _holds_data(cache: Path, channel: str, start_ns: int, end_ns: int) -> bool:
    """Whether a block of ``channel`` (by its index: its first and last time) overlaps
    ``[start_ns, end_ns)``."""
    for paths in segment_candidates(cache, channel, None):
        index = _index(Segment(paths[0]))
        if len(index) and ((index["t_max"] >= start_ns) & (index["t_min"] < end_ns)).any():
            return True
    return False


def _overlaps(seg: Segment, start_ns: int, end_ns: int, index: np.ndarray) -> bool:
    if len(index):
        return bool(((index["t_max"] >= start_ns) & (index["t_min"] < end_ns)).any())
    try:  # no block yet (just opened): its open time decides
        return start_ns <= segment_time_ns(seg) < end_ns
    except ValueError:
        return False


def _link_segment(paths: list[Path], dest: Path) -> int:
    """Hard-link a segment's three files into ``dest``; returns the bytes pinned (0 if
    the segment went away meanwhile)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in paths:
        seg = Segment(path)
        try:
            os.link(seg.avro, dest / seg.avro.name)
        except FileNotFoundError:
            continue  # this name was removed; try the segment's other names
        total = seg.avro.stat().st_size
        for extra in (seg.idx, seg.recv):
            try:
                os.link(extra, dest / extra.name)
                total += extra.stat().st_size
            except FileNotFoundError:
                pass
        return total
    return 0


def _load(folder: Path) -> Tag:
    try:
        d = json.loads((folder / "tag.json").read_text())
        segments = d.get("segments")
        tag = Tag(
            name=str(d["name"]),
            start_ns=int(d["start_ns"]),
            end_ns=int(d["end_ns"]),
            channels=tuple(d["channels"]),
            note=str(d.get("note") or ""),
            created_ns=int(d.get("created_ns") or 0),
            segments=None if segments is None else {
                str(ch): {str(seg): int(n) for seg, n in kept.items()}
                for ch, kept in segments.items()
            },
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TagError(f"{folder}: not a readable tag ({exc})") from None
    n_segments = n_bytes = n_allocated = 0
    for avro in folder.glob("*/*.avro"):
        n_segments += 1
        n_allocated += segment_bytes(Segment(avro))
        kept = None if tag.segments is None else tag.segments.get(avro.parent.name, {})
        n_blocks = None if kept is None else kept.get(avro.name, 0)
        n_bytes += segment_data_bytes(Segment(avro), n_blocks)
    return Tag(**{**asdict(tag), "n_segments": n_segments, "n_bytes": n_bytes,
                  "n_allocated": n_allocated})


def get_tag(cache_dir: Any, name: str) -> Tag:
    """The tag ``name``; TagError naming the existing tags if there is none."""
    validate_tag_name(name)
    folder = _tags_dir(cache_dir) / name
    if not (folder / "tag.json").is_file():
        names = [t.name for t in list_tags(cache_dir)]
        raise TagError(f"no tag {name!r}; tags: {names or 'none'}")
    return _load(folder)


def list_tags(cache_dir: Any) -> list[Tag]:
    """Every tag of the cache, by start time."""
    tags = _tags_dir(cache_dir)
    if not tags.is_dir():
        return []
    found = [
        _load(d)
        for d in sorted(tags.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (d / "tag.json").is_file()
    ]
    return sorted(found, key=lambda t: (t.start_ns, t.name))


def remove_tag(cache_dir: Any, name: str) -> Tag:
    """Remove tag ``name`` and its links; retention may then delete its segments."""
    tag = get_tag(cache_dir, name)
    folder = _tags_dir(cache_dir) / name
    # Rename first so that the tag disappears at once, even if removal is interrupted.
    trash = folder.with_name(f".rm-{name}-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(folder, trash)
    shutil.rmtree(trash)
    return tag
