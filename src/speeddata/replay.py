"""Replay recorded records to a relay: ``speeddata source --replay FILE...``.

The files are Avro Object Container Files of one schema: cache segments (closed ones,
as the relay leaves them; tags' links), or any file that fastavro or the Apache ``avro``
package wrote. Records are decoded with fastavro and sent with :class:`Source` (packed
into datagrams of at most ``max_datagram`` bytes), paced like the original:

- by the schema's time field, scaled by ``speed`` (2 = twice as fast, 0 = as fast as the
  socket takes them);
- without a time field, by the receive times in a cache segment's ``.recv`` (the relay's
  kernel timestamps, one per original datagram);
- else unpaced.

``now=True`` restamps the time field on the replay's own clock: the first record with the
time the replay starts, the others as far apart as they are sent (their recorded spacing
divided by ``speed``; with ``speed=0``, the time each one is queued). No record is ever
stamped ahead of the time it is sent: each is stamped after its pacing wait, with at most
the current time. Live pages then show the replay as live data. Without it, records keep
their times (a cache appends them in its own new segments; readers select by time, so
keep ``now`` for data that should look new).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fastavro
import numpy as np

from .cache import Segment
from .schema import Schema, SchemaError
from .source import DEFAULT_MAX_DATAGRAM, Source, SourceError, lookup_path, with_path

__all__ = ["ReplayStats", "replay", "file_schema"]

#: longest sleep between two checks of the clock (Ctrl-C stays prompt)
MAX_SLEEP = 0.05


@dataclass
class ReplayStats:
    """What a replay sent."""

    files: int
    records: int
    datagrams: int
    bytes: int
    seconds: float
    paced_by: str  # "time field", "receive times" or "nothing"


def file_schema(path: str | Path) -> tuple[dict, dict[str, str]]:
    """The writer schema and the metadata (as text) of an Avro container file
    (SourceError if it is not one)."""
    try:
        with open(path, "rb") as f:
            reader = fastavro.reader(f)
            meta = {
                k: v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                for k, v in reader.metadata.items()
            }
            return reader.writer_schema, meta
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except (ValueError, OSError, StopIteration, EOFError) as exc:
        raise SourceError(
            f"{path}: not an Avro container file ({exc}); replay takes .avro files such as "
            "cache segments"
        ) from None


def _receive_times(path: Path) -> np.ndarray:
    """Receive time (ns) of each record of a cache segment, from the ``.recv`` beside it."""
    entries = Segment(path).read_recv()
    return np.repeat(entries["recv_ns"], entries["n_records"].astype(np.int64))


def _records(path: Path) -> Iterator[dict]:
    """The file's records; of a cache segment, those of the blocks its ``.idx`` lists, so
    that a segment the relay is still writing (pre-allocated: zeros after its last block)
    replays up to its last complete block."""
    segment = Segment(path)
    limit = int(segment.read_index()["n_records"].sum()) if segment.idx.exists() else None
    with open(path, "rb") as f:
        try:
            yield from itertools.islice(fastavro.reader(f), limit)
        except (ValueError, EOFError) as exc:
            raise SourceError(
                f"{path}: cannot be read to the end ({exc}); a segment left open by a crash "
                "is repaired when the relay starts"
            ) from None


def replay(
    files: Sequence[str | Path],
    relay: tuple[str, int],
    *,
    speed: float = 1.0,
    now: bool = False,
    single_object: bool = False,
    max_datagram: int = DEFAULT_MAX_DATAGRAM,
    channel: str | None = None,
    expect_schema: Schema | None = None,
    out: IO[str] | None = None,
) -> ReplayStats:
    """Send the records of ``files`` (in order, one schema) to ``relay``; see the module.

    ``expect_schema``: the relay's schema for the channel; a file of another schema is
    refused before anything is sent (the relay would reject every datagram).
    """
    if not files:
        raise SourceError("nothing to replay: name one or more .avro files")
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed >= 0:
        raise SourceError(f"--speed {speed!r}: must be a number >= 0 (0: as fast as possible)")
    paths = [Path(f) for f in files]
    schemas = [file_schema(p) for p in paths]
    avsc, meta = schemas[0]
    try:
        schema = Schema(avsc)
    except SchemaError as exc:
        raise SourceError(f"{paths[0]}: its schema cannot be sent: {exc}") from None
    for p, (other, _) in zip(paths[1:], schemas[1:], strict=True):
        if Schema(other).fingerprint != schema.fingerprint:
            raise SourceError(f"{p}: another schema than {paths[0]}; replay one channel at a time")
    if expect_schema is not None and expect_schema.fingerprint != schema.fingerprint:
        raise SourceError(
            f"{paths[0]}: its schema is not the one the relay has for channel "
            f"{channel!r} (fingerprint {schema.fingerprint_hex}, relay's "
            f"{expect_schema.fingerprint_hex}): the relay would reject every datagram"
        )
    name = channel or meta.get("speeddata.channel") or "replay"
    time_path, scale = schema.time_field, schema.time_scale
    paced_by = "nothing"
    if speed > 0 and time_path is not None:
        paced_by = "time field"
    elif speed > 0 and all(p.with_suffix(".recv").exists() for p in paths):
        paced_by = "receive times"
    start_wall = time.monotonic()
    start_ns = time.time_ns()  # ``now``: the first record's stamp
    first_ns = None
    with Source(name, schema, relay, single_object=single_object, max_datagram=max_datagram) as src:
        pending: list[dict] = []
        for path in paths:
            recv_ns = _receive_times(path) if paced_by == "receive times" else None
            for k, record in enumerate(_records(path)):
                t_ns = _record_ns(record, time_path, scale, recv_ns, k)
                if first_ns is None and t_ns is not None:
                    first_ns = t_ns
                if paced_by != "nothing" and t_ns is not None:
                    due = start_wall + (t_ns - first_ns) / 1e9 / speed
                    if due > time.monotonic():
                        _flush(src, pending)
                        _sleep_until(due)
                if now and time_path is not None:  # after the wait: never ahead of sending
                    stamp = _now_stamp(t_ns, first_ns, start_ns, speed)
                    record = with_path(record, time_path, stamp // scale)
                pending.append(record)
                if len(pending) >= 4096:
                    _flush(src, pending)
        _flush(src, pending)
        stats = ReplayStats(
            len(paths), src.n_records, src.n_datagrams, src.n_bytes,
            time.monotonic() - start_wall, paced_by,
        )
    if out is not None:
        host, port = relay
        print(
            f"replayed {stats.records} records of {name!r} in {stats.datagrams} datagrams "
            f"({stats.bytes} bytes) from {stats.files} file(s) to {host}:{port} in "
            f"{stats.seconds:.2f} s, paced by {stats.paced_by}",
            file=out,
        )
    return stats


def _record_ns(
    record: dict, time_path: str | None, scale: int, recv_ns: np.ndarray | None, k: int
) -> int | None:
    if time_path is not None:
        value: Any = lookup_path(record, time_path)
        if hasattr(value, "timestamp"):  # fastavro gives datetimes for -millis/-micros
            return round(value.timestamp() * 1e6) * 1000
        return int(value) * scale
    if recv_ns is not None and k < len(recv_ns):
        return int(recv_ns[k])
    return None


def _now_stamp(t_ns: int, first_ns: int, start_ns: int, speed: float) -> int:
    """The ns a record is stamped with under ``now``: the replay's timeline (the first
    record at ``start_ns``, the others their recorded distance divided by ``speed``
    later), capped by the clock so that no stamp is ahead of when the record is sent
    (it is queued right after, and sent at once or with the next ones)."""
    wall = time.time_ns()
    if speed == 0:
        return wall  # as fast as possible: the recorded spacing has no meaning here
    return min(start_ns + int((t_ns - first_ns) / speed), wall)


def _flush(src: Source, pending: list[dict]) -> None:
    if pending:
        src.send_many(pending)
        pending.clear()


def _sleep_until(due: float) -> None:
    while True:
        left = due - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, MAX_SLEEP))
