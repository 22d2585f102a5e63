"""``pivot()``: a time range of the cache -> one set file (HDF5), channel by channel:
the file's attributes, each channel's group and datasets, the batches decoded ahead and
written, and the temporary file renamed into place only when all went well."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..cache import cache_channels, channel_summary, resolve_cache_dir
from ..reader import Columns, column_name
from ..tags import get_tag
from ..times import format_time, parse_range
from .compression import parse_compression
from .errors import PivotError
from .fileio import GuardedFile, Prefetch, fsync_dir, is_disk_full
from .memory import BATCH_BUFFERS, Buffers
from .plan import (
    Plan,
    h5_types,
    is_numeric,
    loss_counts,
    match_channels,
    parse_period,
    plan_channels,
    signal_attrs,
    to_dataset,
)
from .resample import AGGREGATES, concat_columns, is_sorted, resample_columns, take_rows
from .writer import DatasetWriter

FORMAT = "speeddata-set/1"
BATCH_BYTES = 16 * 1024 * 1024
TIME_UNITS = "nanoseconds since 1970-01-01 00:00:00 UTC"

#: datasets of a channel made before its first batch is taken (about what HDF5 makes
#: while the first batch decodes); the others are made with that batch's rows at hand
FIRST_DATASETS = 32


@dataclass
class PivotResult:
    """What a pivot wrote."""

    path: Path
    channels: dict[str, int] = field(default_factory=dict)  # channel -> rows written
    bytes_in: int = 0  # record bytes read from the cache
    bytes_out: int = 0  # size of the file
    seconds: float = 0.0


class _Progress:
    """A one-line progress bar on stderr, at most 10 updates a second; silent when off."""

    def __init__(self, total: int, enabled: bool):
        self.total = max(total, 1)
        self.enabled = enabled
        self.done = 0
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, n: int, label: str) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and self.done < self.total:
            return
        self.last = now
        frac = min(self.done / self.total, 1.0)
        rate = self.done / max(now - self.t0, 1e-9) / 1e6
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\rpivot {label:<16.16} [{bar:<30}] {frac:6.1%} {rate:7.1f} MB/s")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def pivot(
    cache_dir: Any,
    output: Any,
    *,
    tag: str | None = None,
    start: Any = None,
    end: Any = None,
    channels: Any = None,
    signals: Any = None,
    every: int | None = None,
    resample: Any = None,
    agg: Any = None,
    compression: str = "gzip",
    recv_time: bool = False,
    force: bool = False,
    progress: bool | None = None,
    threads: int | None = None,
    gap_factor: float = 10.0,
    batch_bytes: int = BATCH_BYTES,
    decoder: str = "compiled",
) -> PivotResult:
    """Write ``[start, end)`` (or the tag's range and channels) of the cache to ``output``.

    ``channels``/``signals``: names or globs (signals match ``<signal>`` or
    ``<channel>.<signal>``). ``every``: keep every Nth record. ``resample``: bucket length
    (``"10ms"``, or ns as int) with ``agg`` (default ``"mean,min,max"``; also first, last,
    sum; only with ``resample``).
    ``compression``: see speeddata.pivot. ``progress``: a progress bar on stderr
    (None: when stderr is a terminal). ``threads``: compression threads (None: CPUs).
    Raises PivotError (a SpeedDataError) with what to change; no file is left on error.
    """
    import h5py

    t_start = time.perf_counter()
    cache = resolve_cache_dir(cache_dir)
    output = Path(output)
    comp = parse_compression(compression)
    if every is not None and resample is not None:
        raise PivotError("choose --every or --resample, not both")
    if every is not None and (isinstance(every, bool) or int(every) < 1):
        raise PivotError(f"--every must be a positive integer, not {every!r}")
    if agg is not None and resample is None:
        raise PivotError(
            f"--agg {agg if isinstance(agg, str) else ','.join(agg)} needs --resample PERIOD "
            "(aggregates summarise time buckets); without --resample every record is written"
        )
    period_ns = None
    aggs: list[str] = []
    if resample is not None:
        agg = ("mean", "min", "max") if agg is None else agg
        period_ns = parse_period(resample)
        aggs = [a.strip() for a in (agg.split(",") if isinstance(agg, str) else agg) if a.strip()]
        bad = [a for a in aggs if a not in AGGREGATES]
        if bad or not aggs:
            raise PivotError(
                f"unknown aggregate {bad[0] if bad else ''!r}; choose from {', '.join(AGGREGATES)}"
            )
    note = ""
    if tag is not None:
        info = get_tag(cache, tag)
        start = info.start_ns if start is None else start
        end = info.end_ns if end is None else end
        note = info.note
        available = list(info.channels)
    else:
        available = cache_channels(cache)
    start_ns, end_ns = parse_range(start, end)
    if not available:
        raise PivotError(f"the cache {str(cache)!r} holds no channel")
    chosen = match_channels(available, channels)
    if output.is_dir():
        raise PivotError(f"{output} is a folder; give a file name such as {output / 'set.h5'}")
    if output.exists() and not force:
        raise PivotError(f"{output} exists; use --force to replace it")
    if not output.parent.exists():
        raise PivotError(f"folder {output.parent} does not exist")

    plans = plan_channels(cache, chosen, signals, start_ns, end_ns, tag, decoder)
    if comp.name == "none":
        # One decoding thread: it keeps ahead of the writes on its own, and the other
        # core is left to the HDF5 calls and the background writer (a second decoding
        # thread made the dataset creation and the writes wait for a core).
        for p in plans:
            p.reader.threads = 1
    try:
        total_rows = sum(p.reader.n_rows_max for p in plans)
        if total_rows == 0:
            ranges = []
            for ch in chosen:
                summary = channel_summary(cache, ch)
                ranges.append(
                    f"{ch}: {format_time(summary['oldest_ns'])} to "
                    f"{format_time(summary['newest_ns'])}"
                )
            raise PivotError(
                f"no records between {format_time(start_ns)} and {format_time(end_ns)} in "
                f"{', '.join(p.channel for p in plans)}; available: {'; '.join(ranges)}"
            )
        tmp = output.with_name(f".{output.name}.{os.getpid()}-{time.monotonic_ns()}.tmp")
        result = PivotResult(path=output)
        show = sys.stderr.isatty() if progress is None else progress
        bar = _Progress(sum(p.reader.payload_bytes for p in plans), show)
        n_threads = threads if threads is not None else (os.cpu_count() or 1)
        pool = (
            concurrent.futures.ThreadPoolExecutor(n_threads)
            if n_threads > 1 and comp.direct and comp.name != "none"
            else None
        )
        registry: list[DatasetWriter] = []
        guard = f = None
        try:
            guard = GuardedFile(tmp)
            f = h5py.File(guard, "w", libver=("earliest", "v110"))
            f.attrs.update(
                {
                    "format": FORMAT,
                    "speeddata_version": __version__,
                    "created": format_time(time.time_ns()),
                    "start_ns": start_ns if start_ns is not None else -1,
                    "end_ns": end_ns if end_ns is not None else -1,
                    "start": format_time(start_ns),
                    "end": format_time(end_ns),
                    "tag": tag or "",
                    "note": note,
                    "channels": [p.channel for p in plans],
                    "compression": comp.name,
                    "mode": "resample" if period_ns else f"every {every}" if every else "all",
                    "time_units": TIME_UNITS,
                }
            )
            if period_ns:
                f.attrs["resample_ns"] = period_ns
                f.attrs["agg"] = ",".join(aggs)
            if every:
                f.attrs["every"] = int(every)
            for plan in plans:
                rows = _write_channel(
                    f, plan, comp, pool, every, period_ns, aggs, recv_time, gap_factor,
                    batch_bytes, bar, registry, guard,
                )
                result.channels[plan.channel] = rows
                result.bytes_in += plan.reader.payload_bytes
            f.close()
            f = None
            guard.check()
            guard.sync()
            guard.check()
            guard.close()
            for w in registry:  # their background writes done: the rest of the buffers
                w.release_buffers()
            os.replace(tmp, output)
            fsync_dir(output.parent)
        except BaseException as exc:
            for w in registry:
                w.abandon()
            if f is not None:
                try:
                    f.close()  # succeeds: the guard discards writes after a failure
                except Exception:  # noqa: BLE001 - report the first error, below
                    pass
            if guard is not None:
                guard.close()
            tmp.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise PivotError(
                    f"the disk is full (or the file size limit reached) writing {output}: "
                    "free space or write elsewhere; no file was left behind"
                ) from exc
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            bar.finish()
    finally:
        for p in plans:
            p.reader.close()
    result.bytes_out = output.stat().st_size
    result.seconds = time.perf_counter() - t_start
    return result


def _write_channel(f, plan: Plan, comp, pool, every, period_ns, aggs, recv_time, gap_factor,
                   batch_bytes, bar, registry: list, guard: GuardedFile) -> int:
    """Write one channel's group; the batches are decoded on a thread, started before
    the datasets are created (the first batches decode meanwhile)."""
    reader = plan.reader
    # Rows (not resampled: a resample holds rows back across batches) are written or
    # copied out before the next batch, so their memory goes back to the decoder.
    buffers = None
    if not period_ns:
        buffers = Buffers(BATCH_BUFFERS if comp.name == "none" else None)
    batches = Prefetch(reader.batches(batch_bytes, recv_time=recv_time and not period_ns,
                                       out=buffers.take if buffers is not None else None))
    try:
        return _write_channel_batches(f, plan, comp, pool, every, period_ns, aggs, recv_time,
                                      gap_factor, bar, registry, guard, batches, buffers)
    finally:
        batches.close()
        if buffers is not None:
            buffers.close()


def _write_channel_batches(f, plan: Plan, comp, pool, every, period_ns, aggs, recv_time,
                           gap_factor, bar, registry: list, guard: GuardedFile,
                           batches: Prefetch, buffers: Buffers | None = None) -> int:
    reader = plan.reader
    schema = reader.schema
    group = f.create_group(plan.channel)
    datagrams = reader.datagrams()
    group.attrs.update(
        {
            "schema": schema.json,
            "schema_name": schema.name,
            "fingerprint": schema.fingerprint_hex,
            "time_field": schema.time_field or "",
            "time_source": "time field" if schema.time_field else "receive time",
            "time_units": TIME_UNITS,
            "n_segments": len(reader.blocks),
            "n_blocks": reader.n_blocks,
            "n_records_read": 0,
        }
    )
    group.attrs.update(loss_counts(datagrams, gap_factor))
    n_max = reader.n_rows_max
    if every:
        n_max = -(-n_max // int(every))
    if period_ns and reader.start_ns is not None and reader.end_ns is not None:
        n_max = min(n_max, (reader.end_ns - reader.start_ns) // period_ns + 2)
    writers: dict[str, DatasetWriter] = {}
    h5py_time_attrs = {"units": TIME_UNITS, "doc": "time of each row"}

    def writer(name, dtype, h5dtype, attrs):
        if name not in writers:
            w = writers[name] = DatasetWriter(group, name, dtype, h5dtype, n_max, comp, pool,
                                               attrs, guard, stream=not period_ns)
            registry.append(w)
        return writers[name]

    # The datasets, in a fixed order (empty channels have them too): (name, dtype, HDF5
    # dtype, attributes, the column of a batch it takes: rows, not resampled).
    specs: list[tuple] = []
    time_attrs = dict(h5py_time_attrs)
    if period_ns:
        time_attrs["doc"] = f"start of each {period_ns} ns bucket"
    specs.append(("time", np.int64, np.int64, time_attrs, lambda b: b["time"]))
    if period_ns:
        specs.append(("count", np.int64, np.int64, {"doc": "records in the bucket"}, None))
    elif recv_time:
        specs.append(("recv_time", np.int64, np.int64,
                      {"units": TIME_UNITS, "doc": "kernel receive time of the record's datagram"},
                      lambda b: b["recv_time"]))
    names = [n for n in plan.names if not (n == schema.time_field and schema.time_scale == 1)]
    for name in names:
        sig = schema.signal(name)
        col = column_name(sig, schema)
        attrs = signal_attrs(sig, schema)
        if period_ns:
            if is_numeric(sig):
                for a in aggs:
                    dt = np.float64 if (a in ("mean",) or sig.nullable
                                        or sig.type in ("float", "double")) else sig.dtype
                    if a == "sum" and not sig.nullable and sig.type in ("boolean", "int", "long"):
                        dt = np.int64
                    specs.append((f"{col}.{a}", dt, dt, {**attrs, "agg": a}, None))
            else:
                for a in [x for x in aggs if x in ("first", "last")] or ["last"]:
                    dt, h5dt = h5_types(sig, "resample")
                    specs.append((f"{col}.{a}", dt, h5dt, {**attrs, "agg": a}, None))
            continue
        dt, h5dt = h5_types(sig, "records")
        specs.append((col, dt, h5dt, attrs, lambda b, sig=sig, col=col: to_dataset(sig, b[col])))
        if sig.nullable and sig.type not in ("float", "double"):
            attrs["valid"] = f"{col}.valid"
            specs.append((f"{col}.valid", np.bool_, np.bool_,
                          {"doc": f"True where {col} has a value (False: null)", "valid_of": col},
                          lambda b, col=col: b.valid[col]))
    made = 0  # specs whose dataset exists

    def make(i: int) -> DatasetWriter:
        name, dtype, h5dtype, attrs, _ = specs[i]
        return writer(name, dtype, h5dtype, attrs)

    # Rows: the first FIRST_DATASETS datasets are made while the first batch decodes;
    # with it, the rest are made one by one, each given its rows of that batch at once,
    # so that the disk starts on the first datasets' rows while HDF5 makes the last ones
    # (~100 datasets: ~15 ms). A fixed number, not "until the batch is there": the file's
    # layout (HDF5 allocates in call order) stays the same from one run to the next.
    # Resampled: all of them first.
    while made < len(specs) and (period_ns or made < FIRST_DATASETS):
        make(made)
        made += 1

    def done_batch(batch_rows: int, memory, streamed: list) -> None:
        streamed.append(guard.flush_staged())  # the batch's rows of streamed datasets
        if buffers is not None and memory is not None:
            # written, or copied into chunk buffers; chunks of it still being
            # compressed or written (or streamed rows of it) keep it until done
            held = [x for w in writers.values() for x in w.take_borrowed()]
            held += [x for x in streamed if x is not None]
            buffers.give(memory, held)
        guard.check()  # stop at the first failed write (full disk)
        # progress in record bytes: the channel's payload shared out by rows
        bar.update(reader.payload_bytes * batch_rows // max(reader.n_rows_max, 1), plan.channel)

    seen = 0
    n_read = 0
    pending: Columns | None = None
    for batch in batches:
        batch_rows = batch.n_rows
        memory = getattr(batch, "buffer", None)
        streamed: list = []
        n_read += batch_rows
        if every:
            n = int(every)
            first = (-seen) % n
            seen += batch.n_rows
            batch = take_rows(batch, slice(first, None, n))
        if period_ns:
            if pending is not None:
                batch = concat_columns(pending, batch)
            if not is_sorted(batch["time"]):
                batch = take_rows(batch, np.argsort(batch["time"], kind="stable"))
            if batch.n_rows:
                # hold back the last (maybe incomplete) bucket for the next batch
                last = batch["time"][-1] // period_ns
                cut = int(np.searchsorted(batch["time"] // period_ns, last, "left"))
                pending = take_rows(batch, slice(cut, None))
                batch = take_rows(batch, slice(0, cut))
            _append_resampled(writers, batch, period_ns, aggs)
        else:
            # each dataset its column of the batch; the first batch also makes the
            # datasets not made yet, handing the writer thread their rows as it goes
            first_made = made
            for i, (name, _, _, _, column) in enumerate(specs):
                if i == first_made and made < len(specs):
                    streamed.append(guard.flush_staged())
                if i >= made:
                    make(i)
                    made += 1
                    if (i - first_made) % 16 == 15:
                        streamed.append(guard.flush_staged())  # to the disk meanwhile
                writers[name].append(column(batch))
            batch = None
        done_batch(batch_rows, memory, streamed)
    while made < len(specs):  # no batch at all
        make(made)
        made += 1
    if period_ns and pending is not None and pending.n_rows:
        _append_resampled(writers, pending, period_ns, aggs)
    rows = {name: w.close() for name, w in writers.items()}
    for w in writers.values():  # while the last chunks are written
        w.write_attrs()
    group.attrs["n_records_read"] = n_read
    group.attrs["n_records"] = rows["time"]
    times = writers["time"]
    group.attrs["t_first_ns"] = int(times.first) if rows["time"] else -1
    group.attrs["t_last_ns"] = int(times.last) if rows["time"] else -1
    # the metadata written now, while the background writes of the rows go on
    f.flush()
    return rows["time"]


def _append_resampled(writers: dict, batch: Columns, period_ns: int, aggs: list[str]) -> None:
    if batch.n_rows == 0:
        return
    out = resample_columns(batch, period_ns, aggs)
    for name, values in out.items():
        w = writers[name]
        if values.dtype != w.dtype and w.dtype != np.dtype(object):
            values = values.astype(w.dtype)
        sig = batch.signals.get(name.rsplit(".", 1)[0])
        if sig is not None and not is_numeric(sig):
            values = to_dataset(sig, values)
        w.append(values)
