"""Pivot: a time range of the cache -> one HDF5 file, one dataset per signal.

Layout of the file (one per set)::

    /                          attrs: format, start_ns, end_ns, start, end, tag, note,
                                      channels, mode, compression, created
    /<channel>                 group; attrs: schema (JSON), schema_name, fingerprint,
                                      time_field, n_records, loss and gap counts
    /<channel>/time            int64 ns since the epoch (UTC)
    /<channel>/recv_time       int64 ns, kernel receive time (with --recv-time)
    /<channel>/<signal>        one dataset per signal; attrs avro_type, units, doc, ...
    /<channel>/<signal>.valid  bool validity of a nullable non-float signal (floats: NaN)

Types: numbers as themselves, booleans as HDF5's numpy-bool enum, enums as HDF5 enum
types (every HDF5 reader shows the symbol names; the ``symbols`` attribute repeats them),
strings as variable-length UTF-8, bytes as variable-length uint8, fixed(N) as N-byte
strings.

Decimation (``every=N``) keeps records 0, N, 2N... of each channel's range. Resampling
(``resample="10ms"``, ``agg="mean,min,max"``) groups records in buckets of that length
aligned on the epoch and writes ``/<channel>/time`` (bucket start), ``/<channel>/count``
(records per bucket; empty buckets are not written) and ``<signal>.<agg>`` per numeric
signal; NaN/null values are ignored. Enum, string, bytes and fixed signals take
``first``/``last`` only (``last`` when neither is asked for). Resampling assumes the
time of each channel does not go backwards.

Loss and gaps per channel (group attributes), from the ``.recv`` entries of the blocks
read: ``lost_datagrams`` (missing relay sequence numbers: datagrams the relay accepted
but did not store), ``seq_gaps`` (places where that happened), ``seq_resets`` (the
sequence restarted: a relay restart), and ``recv_gaps`` (receive-time intervals longer
than ``gap_factor`` x the median interval, with ``recv_gap_max_ns`` and
``recv_gap_total_ns``).

Chunks hold about 1 MiB of one dataset along time. Compression: ``gzip`` (deflate level
1 + shuffle: every HDF5 reader opens it; the default), ``gzip:N`` (level N), ``none``
(fastest to write and read, largest), ``lzf`` (+shuffle; fast, but only h5py and
readers with the LZF plugin open it), and with the ``hdf5plugin`` package: ``blosc``
(= ``blosc:lz4``), ``blosc:zstd``, ``zstd``, ``lz4`` (fast and small; readers need the
plugin, e.g. ``import hdf5plugin`` or ``HDF5_PLUGIN_PATH``). ``none`` and ``gzip`` write
chunks directly (``write_direct_chunk``), compressing on several threads.

``gzip`` at level 1 (the default) compresses with ISA-L (the ``isal`` package, its
fastest level 0) when it is installed, else with zlib level 1; other levels use zlib.
Both write the same standard deflate stream, which every HDF5 reader decodes; ISA-L is
4-8x faster and its files ~15-35% larger. A chunk that deflate does not make smaller
(random doubles, say) is stored as it is, with the chunk's filter mask telling readers
that shuffle and deflate were skipped for it (standard HDF5: every reader honours it).

The file is written as a temporary file beside the output, fsynced, then renamed: a
failed pivot (bad input, full disk, Ctrl-C) leaves no file behind. Every 8 MiB written,
the disk's writeback of them is started (``sync_file_range``), so the disk works while
the pivot decodes and compresses and the final fsync has little left to do. With
``none``, fixed-size datasets are made with every chunk allocated up front and no fill
value ever written (``H5D_ALLOC_TIME_EARLY``, ``H5D_FILL_TIME_NEVER``); each decoded
batch's rows are written straight to their place in those chunks by a background
thread (one ``pwrite`` per chunk part, no HDF5 call, no copy; the writeback of each
part's pages started after it), and the datasets are shrunk to the rows written at
the end (rows of the last chunk past the end are never read; HDF5 frees whole chunks
past it). Other ``none`` chunks (resampling) go through ``write_direct_chunk``, their
bytes written by the same thread. The decoder writes each batch into the memory of
one already written; that memory and the chunk buffers are kept for the next pivot in
the process (``POOL_BYTES``; ``speeddata.release_memory()`` frees them). Attributes are
written once the rows are on their way, and the metadata is flushed while the last rows
are written. docs/pivot.md describes the file and the order of the work.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import fnmatch
import io
import os
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:  # ISA-L's deflate: the same zlib streams as zlib, 4-8x faster (optional)
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _isal_zlib = None

try:  # compiled helpers: GIL-free writes, writeback, shuffle (pure Python below if absent)
    from . import _pivot as _native
except ImportError:  # pragma: no cover - built by setup.py; the references below run then
    _native = None

try:  # the compiled decoder's recycled column memory (release_memory)
    from . import _columns as _native_columns
except ImportError:  # pragma: no cover - built by setup.py
    _native_columns = None

from . import __version__
from .config import parse_duration
from .errors import SpeedDataError
from .reader import (
    ChannelReader,
    Columns,
    ReadError,
    _column_name,
    cache_channels,
    format_time,
    parse_range,
    resolve_cache_dir,
)
from .schema import Schema

__all__ = ["pivot", "PivotError", "PivotResult", "add_arguments", "run", "COMPRESSIONS",
           "release_memory"]

FORMAT = "speeddata-set/1"
CHUNK_BYTES = 1024 * 1024
BATCH_BYTES = 16 * 1024 * 1024
AGGREGATES = ("mean", "min", "max", "first", "last", "sum")
COMPRESSIONS = ("none", "gzip", "gzip:N", "lzf", "blosc", "blosc:lz4", "blosc:zstd", "zstd", "lz4")
TIME_UNITS = "nanoseconds since 1970-01-01 00:00:00 UTC"


class PivotError(SpeedDataError, ValueError):
    """A pivot that cannot be done; the message says why and what to change."""


@dataclass
class PivotResult:
    """What a pivot wrote."""

    path: Path
    channels: dict[str, int] = field(default_factory=dict)  # channel -> rows written
    bytes_in: int = 0  # record bytes read from the cache
    bytes_out: int = 0  # size of the file
    seconds: float = 0.0


# ---------------------------------------------------------------------------- compression


@dataclass(frozen=True)
class _Compression:
    name: str
    kwargs: dict  # for create_dataset
    direct: bool  # chunks written with write_direct_chunk
    level: int = 0  # the deflate level asked for (and recorded in the file)
    engine: str = "zlib"  # who deflates the direct chunks: "zlib" or "isal"
    engine_level: int = 0  # the level given to that engine


def _deflate_engine(level: int) -> tuple[str, int]:
    """Who deflates ``gzip:level`` chunks: ISA-L's level 0 for level 1 (the default; 4-8x
    zlib level 1's speed, files ~15-35% larger) when ``isal`` is installed, zlib otherwise
    and for every other level (0 = stored blocks; 2-9 are asked for to get smaller files,
    and ISA-L's levels 1-3 are no better than zlib's there)."""
    if level == 1 and _isal_zlib is not None:
        return "isal", 0
    return "zlib", level


def _compression(spec: str) -> _Compression:
    spec = (spec or "gzip").strip().lower()
    if spec == "none":
        return _Compression("none", {}, True)
    if spec == "gzip" or spec.startswith("gzip:"):
        level = 1
        if ":" in spec:
            try:
                level = int(spec.split(":", 1)[1])
            except ValueError:
                level = -1
            if not 0 <= level <= 9:
                raise PivotError(f"compression {spec!r}: the gzip level is 0 to 9")
        return _Compression(
            f"gzip:{level}", {"compression": "gzip", "compression_opts": level, "shuffle": True},
            True, level, *_deflate_engine(level),
        )
    if spec == "lzf":
        return _Compression("lzf", {"compression": "lzf", "shuffle": True}, False)
    plugin = {"blosc": "blosc:lz4", "blosc:lz4": "blosc:lz4", "blosc:zstd": "blosc:zstd",
              "zstd": "zstd", "lz4": "lz4"}.get(spec)
    if plugin is None:
        raise PivotError(
            f"unknown compression {spec!r}; choose one of: {', '.join(COMPRESSIONS)}"
        )
    try:
        import hdf5plugin
    except ImportError:
        raise PivotError(
            f"compression {spec!r} needs the hdf5plugin package: pip install hdf5plugin "
            "(or use gzip, lzf or none)"
        ) from None
    if plugin.startswith("blosc:"):
        filt = hdf5plugin.Blosc(cname=plugin.split(":")[1], clevel=5,
                                shuffle=hdf5plugin.Blosc.SHUFFLE)
    elif plugin == "zstd":
        filt = hdf5plugin.Zstd()
    else:
        filt = hdf5plugin.LZ4()
    return _Compression(plugin, dict(filt), False)


def _shuffle_deflate(data: bytes, itemsize: int, level: int, engine: str = "zlib",
                     raw_mask: int = 0) -> tuple[bytes, int]:
    """What HDF5's shuffle + deflate filters make of one chunk: bytes grouped by their
    position in the element (H5Zshuffle.c), then a zlib stream (H5Zdeflate.c), by zlib or
    ISA-L (``engine``). Returns (chunk bytes, filter mask): mask 0 with every filter
    applied, or, when deflate does not make the chunk smaller, the chunk as it is with
    ``raw_mask`` (the bits of every filter of the dataset: all skipped)."""
    shuffled = _shuffle(data, itemsize) if itemsize > 1 else data
    if engine == "isal":
        packed = _isal_zlib.compress(shuffled, level)
    else:
        packed = zlib.compress(shuffled, level)
    if raw_mask and len(packed) >= len(data):
        return data, raw_mask
    return packed, 0


_scratch = threading.local()  # per compression thread: the shuffle's output buffer


def _shuffle(data, itemsize: int):
    """HDF5's shuffle filter (bytes grouped by their position in the element): compiled
    (GIL released, 2-8x numpy's speed) into this thread's reused buffer (valid until the
    thread's next call), or numpy's bytes."""
    if _native is None:
        return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()
    n = memoryview(data).nbytes
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < n:
        buf = _scratch.buf = bytearray(max(n, CHUNK_BYTES))
    return _native.shuffle(data, itemsize, buf)


# ---------------------------------------------------------------------------- output file

#: Start the disk's writeback of what was written every this many bytes, so that the
#: final fsync has little left to do (sync_file_range(2); 0: only the fsync).
WRITEBACK_BYTES = 8 * 1024 * 1024

#: Chunk bytes handed to the background writer and not yet written, at most (the
#: pivot waits for the oldest past this).
BACKGROUND_BYTES = 64 * 1024 * 1024

#: ``none``: batches decoded into at most this many buffers (the decoder waits for one
#: written rather than fault in a new one; see _Buffers).
BATCH_BUFFERS = 4


class _GuardedFile(io.RawIOBase):
    """The temporary output file, given to h5py as a file object.

    HDF5 cannot close a file whose writes fail (a full disk: every flush fails again,
    and the process crashes at exit when h5py finally closes it). So the first failed
    write is remembered and every later write is discarded: HDF5 then closes cleanly,
    the pivot checks ``error`` after each step, removes the file and reports the error.

    Chunks in the background (``background(chunk)``): HDF5 writes a direct chunk in one
    ``write`` of the caller's own buffer; announced beforehand, that write is handed to a
    writer thread (``pwrite`` without the GIL: the copy into the page cache, a third of
    a ``none`` pivot's time, runs on the other core while this one makes the HDF5
    calls of the next chunks). The chunk's memory must then stay as it is until the
    returned future is done. Reads, truncation, sync and close wait for every pending
    write first.
    """

    def __init__(self, path: Path, writeback_bytes: int | None = None,
                 background_bytes: int | None = None):
        if writeback_bytes is None:
            writeback_bytes = WRITEBACK_BYTES
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.pos = 0
        self.error: BaseException | None = None  # the first failed write
        # Writeback: HDF5 appends the chunks (its metadata, rewritten in place near the
        # start of the file, is left to the fsync); every writeback_bytes past
        # `started`, the range [started, end) goes to the disk while the pivot works on.
        self.writeback_bytes = writeback_bytes if _native is not None else 0
        self.started = 0  # writeback started for [0, started)
        self.end = 0  # end of the furthest write
        # background writes (limit 0: all in the calling thread)
        self.limit = BACKGROUND_BYTES if background_bytes is None else background_bytes
        self.writer: threading.Thread | None = None
        self.cond = threading.Condition()
        self.queue: list = []  # (chunk, offset, future) for the writer thread
        self.closing = False
        self.pending: deque = deque()  # (future, bytes) of background writes, in order
        self.pending_bytes = 0
        self.announced: Any = None  # the chunk whose write goes to the background
        self.future: concurrent.futures.Future | None = None  # of the announced write
        self.bg_from = -1  # writer thread: writeback not started from here on
        self.staged: list = []  # (buffer, offset) streamed since the last flush_staged()
        self.streamed = False  # writes staged: the writer starts each one's writeback

    def streams(self) -> bool:
        """Whether ``stage`` writes go to the background writer (else: not available)."""
        return self.limit > 0 and _native is not None

    def stage(self, data: np.ndarray, offset: int) -> None:
        """Write ``data`` (contiguous) at ``offset`` on the writer thread, with the other
        staged writes, at the next ``flush_staged()``: the rows of a streamed dataset
        go straight to their place in the file's allocated chunks, no HDF5 call. The
        memory must stay as it is until the future of that flush is done."""
        self.staged.append((data, offset))

    def flush_staged(self) -> concurrent.futures.Future | None:
        """Queue the staged writes for the writer thread, in one ``pwrite_many`` (the
        writeback of each one's whole pages started right after it); returns their
        future (None: nothing staged)."""
        if not self.staged:
            return None
        staged, self.staged = self.staged, []
        if self.error is not None:
            return None
        self.streamed = True
        if self.writer is None:
            self.writer = threading.Thread(target=self._write_loop, name="pivot-write",
                                           daemon=True)
            self.writer.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        n = 0
        with self.cond:
            for data, offset in staged[:-1]:
                self.queue.append((data, offset, None))
                n += data.nbytes
            self.queue.append((staged[-1][0], staged[-1][1], future))
            n += staged[-1][0].nbytes
            self.cond.notify()
        self.pending.append((future, n))
        self.pending_bytes += n
        while self.pending_bytes > self.limit and len(self.pending) > 1:
            done, k = self.pending.popleft()
            done.result()
            self.pending_bytes -= k
        return future

    def background(self, chunk: np.ndarray) -> None:
        """Announce that HDF5's next write of exactly ``chunk``'s memory goes to the
        background; ``announced_future()`` then returns its future (None: written
        here, or not seen)."""
        if self.limit > 0 and _native is not None:
            self.announced = chunk
            self.future = None

    def announced_future(self) -> concurrent.futures.Future | None:
        future, self.future, self.announced = self.future, None, None
        return future

    def _write_loop(self) -> None:
        # The writer thread: every chunk queued meanwhile in one pwrite_many (the GIL
        # released once for them all), with the writeback every few MiB.
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                items, self.queue = self.queue, []
            try:
                if self.error is None:
                    if self.streamed:
                        # scattered over the chunks: each write's pages to the disk, in
                        # file order (a dataset's rows of consecutive batches queued
                        # meanwhile follow each other: one range) unless writes overlap
                        # (then the order they were staged in decides)
                        items = _in_file_order(items)
                        _native.pwrite_many(self.fd, [chunk for chunk, _, _ in items],
                                            [offset for _, offset, _ in items],
                                            -1, 0, bool(self.writeback_bytes))
                    else:
                        if self.writeback_bytes and self.bg_from < 0:
                            self.bg_from = items[0][1]
                        self.bg_from = _native.pwrite_many(
                            self.fd, [chunk for chunk, _, _ in items],
                            [offset for _, offset, _ in items],
                            self.bg_from if self.writeback_bytes else -1,
                            self.writeback_bytes)
            except BaseException as exc:  # noqa: BLE001 - reported by check(), as a write's
                if self.error is None:
                    self.error = exc
            finally:
                for _, _, future in items:
                    if future is not None:
                        future.set_result(None)

    def drain(self) -> None:
        """Wait for every background write (the staged ones queued first)."""
        self.flush_staged()
        while self.pending:
            self.pending.popleft()[0].result()
        self.pending_bytes = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            self.drain()
            self.pos = os.fstat(self.fd).st_size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        self.drain()
        n = os.preadv(self.fd, [buffer], self.pos)
        self.pos += n
        return n

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        chunk = self.announced
        if (chunk is not None and self.error is None and n == chunk.nbytes
                and np.frombuffer(view, np.uint8).ctypes.data == chunk.ctypes.data):
            self.announced = None
            if self.writer is None:
                self.writer = threading.Thread(target=self._write_loop, name="pivot-write",
                                               daemon=True)
                self.writer.start()
            self.future = concurrent.futures.Future()
            with self.cond:
                self.queue.append((chunk, self.pos, self.future))
                self.cond.notify()
            self.pending.append((self.future, n))
            self.pending_bytes += n
            while self.pending_bytes > self.limit:
                future, k = self.pending.popleft()
                future.result()
                self.pending_bytes -= k
            self.pos += n
            self.end = max(self.end, self.pos)
            return n
        if self.error is None:
            try:
                if _native is not None:
                    _native.pwrite_all(self.fd, view, self.pos)
                else:
                    done = 0
                    while done < n:  # write(2) may write less than asked
                        done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as exc:
                self.error = exc
        self.pos += n
        if self.pos > self.end:
            self.end = self.pos
            if (self.writeback_bytes and self.writer is None
                    and self.end - self.started >= self.writeback_bytes):
                _native.start_writeback(self.fd, self.started, self.end - self.started)
                self.started = self.end
        return n

    def truncate(self, size: int | None = None) -> int:
        self.drain()
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        self.drain()
        if self.error is None:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self.error = exc

    def check(self) -> None:
        """Raise the first write error, if any."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.writer is not None:
            with self.cond:
                self.closing = True
                self.cond.notify()
            self.writer.join()  # every pending write done (or failed)
            self.writer = None
            self.pending.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


def _in_file_order(items: list) -> list:
    """``(buffer, offset, future)`` items sorted by offset, or as they are if two of them
    overlap (a later write must land after an earlier one it overlaps)."""
    ordered = sorted(items, key=lambda item: item[1])
    end = -1
    for data, offset, _ in ordered:
        if offset < end:
            return items
        end = offset + memoryview(data).nbytes
    return ordered


# ---------------------------------------------------------------------------- writers

_ATTR_TYPES: dict = {}  # kind -> (file type, memory type, dataspace), made once


def _attr_array(value: Any) -> tuple[str, np.ndarray] | None:
    """(kind, array) of an attribute value the fast path writes, else None."""
    import h5py

    if isinstance(value, str):
        return "str", np.array(value, dtype=h5py.string_dtype())
    if isinstance(value, (bool, np.bool_)):
        return "bool", np.array(value, np.bool_)
    if type(value) is int and -(2**63) <= value < 2**63:  # numpy scalars keep their type
        return "int64", np.array(value, np.int64)
    if type(value) is float:
        return "float64", np.array(value, np.float64)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return f"str[{len(value)}]", np.array(value, dtype=h5py.string_dtype())
    return None


def _write_attrs(obj, attrs: dict) -> None:
    """Set the attributes of a new object (None values skipped), as ``obj.attrs[k] = v``
    would, through h5py's low-level API: the types and dataspaces made once, and none of
    the high-level checks (the object is new, no attribute to replace): half the time of
    ``attrs[k] = v``, which the 3-7 attributes of each of ~100 datasets add up to."""
    from h5py import h5a, h5s, h5t

    for name, value in attrs.items():
        if value is None:
            continue
        found = _attr_array(value)
        if found is None:
            obj.attrs[name] = value
            continue
        kind, data = found
        types = _ATTR_TYPES.get(kind)
        if types is None:
            types = _ATTR_TYPES[kind] = (
                h5t.py_create(data.dtype, logical=True), h5t.py_create(data.dtype),
                h5s.create_simple(data.shape) if data.shape else h5s.create(h5s.SCALAR),
            )
        attr = h5a.create(obj.id, name.encode(), types[0], types[2])
        try:
            attr.write(data, mtype=types[1])
        finally:
            attr.close()


_DATASET_TEMPLATES: dict = {}  # (dtype, filters) -> (HDF5 type, creation plist) h5py made


def _create_dataset(group, name: str, n_rows: int, h5dtype, chunk_rows: int, kwargs: dict,
                    early: bool = False):
    """``group.create_dataset(name, (n_rows,), maxshape=(None,), chunks=(chunk_rows,),
    dtype=h5dtype, **kwargs)``: the first dataset of a kind (plain numbers, same filters)
    through h5py, the next ones with a copy of the type and creation properties h5py
    made for it (only the chunk size changes): a fifth of h5py's time per dataset.

    ``early``: every chunk allocated in the file when the dataset is made, and no fill
    value ever written (``H5D_ALLOC_TIME_EARLY``, ``H5D_FILL_TIME_NEVER``), so that the
    rows can be written straight to the chunks' addresses."""
    import h5py
    from h5py import h5d, h5p, h5s

    dtype = np.dtype(h5dtype)
    key = None
    if dtype.metadata is None and dtype.kind in "biuf":  # no enum, string or vlen
        key = (dtype.str, early, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    template = _DATASET_TEMPLATES.get(key) if key is not None else None
    if template is None:
        extra: dict = {}
        if early:
            plist = h5p.create(h5p.DATASET_CREATE)
            plist.set_alloc_time(h5d.ALLOC_TIME_EARLY)
            extra = {"dcpl": plist, "fill_time": "never"}
        ds = group.create_dataset(name, shape=(n_rows,), maxshape=(None,), dtype=h5dtype,
                                  chunks=(chunk_rows,), **kwargs, **extra)
        if key is not None:
            _DATASET_TEMPLATES[key] = (ds.id.get_type(), ds.id.get_create_plist())
        return ds
    tid, dcpl = template
    dcpl = dcpl.copy()
    dcpl.set_chunk((chunk_rows,))
    space = h5s.create_simple((n_rows,), (h5s.UNLIMITED,))
    return h5py.Dataset(h5d.create(group.id, name.encode("utf-8"), tid, space, dcpl=dcpl))


class _DatasetWriter:
    """Appends rows to one 1-D dataset, a chunk at a time.

    Fixed-size types with ``none``/``gzip`` go through ``write_direct_chunk`` (compressed
    on the pool's threads, written in order by this thread); others through h5py's
    normal write with HDF5's own filter pipeline.
    """

    def __init__(self, group, name: str, dtype, h5dtype, n_max: int, comp: _Compression,
                 pool, attrs: dict, guard: _GuardedFile | None = None, stream: bool = False):
        import h5py

        self.name = name
        self.dtype = np.dtype(dtype)
        variable = h5py.check_vlen_dtype(np.dtype(h5dtype)) is not None or (
            h5py.check_string_dtype(np.dtype(h5dtype)) is not None
            and h5py.check_string_dtype(np.dtype(h5dtype)).length is None
        )
        itemsize = 16 if variable else max(np.dtype(h5dtype).itemsize, 1)
        # About CHUNK_BYTES a chunk, the chunks of n_max rows all the same size, so the
        # last one is not mostly padding (a direct write stores whole chunks).
        target = max(1, CHUNK_BYTES // itemsize)
        n_chunks = max(1, -(-max(n_max, 1) // target))
        self.chunk_rows = -(-max(n_max, 1) // n_chunks)
        self.direct = comp.direct and not variable
        # Streamed (``none``, fixed-size rows, the background writer there, rows not
        # resampled): every chunk allocated when the dataset is made; each batch's rows
        # written straight to their place in the chunks by the writer thread.
        self.stream = (stream and self.direct and comp.name == "none" and guard is not None
                       and guard.streams())
        self.addresses: dict[int, int] = {}  # chunk index -> its address in the file
        kwargs = dict(comp.kwargs) if (comp.name != "none") else {}
        if variable and comp.name not in ("lzf",) and not comp.name.startswith("gzip"):
            # Plugin filters divide by the element size, which a variable-length type
            # does not have (Blosc raises SIGFPE); the heap they point to is never
            # filtered anyway.
            kwargs = {}
        if self.dtype.itemsize == 1 and "shuffle" in kwargs:
            kwargs["shuffle"] = False  # nothing to shuffle in 1-byte elements
        self.comp = comp
        self.ds = _create_dataset(group, name, max(n_max, 0), h5dtype, self.chunk_rows, kwargs,
                                  self.stream)
        # Filter mask of a chunk stored as it is: bit i skips filter i of the pipeline
        # (shuffle then deflate, or deflate alone for 1-byte elements).
        self.raw_mask = 0
        if self.direct and comp.name.startswith("gzip"):
            self.raw_mask = (1 << self.ds.id.get_create_plist().get_nfilters()) - 1
        # written by write_attrs(), once the chunks are on their way: the disk gets to
        # work a few ms sooner (~100 datasets x a few attributes)
        self.attrs = attrs
        self.pool = pool
        self.guard = guard  # background writes of `none` chunks (None: none)
        self.writing: deque = deque()  # (future, chunk buffer) of background writes
        self.size = max(n_max, 0)  # rows the dataset has (h5py's ds.shape costs ~15 us)
        self.n = 0  # rows appended
        self.first = self.last = None  # the first and last value appended
        self.written = 0  # rows written to the file
        # Direct chunks: rows gather in `buf` (a chunk, reused: no new pages to fault in
        # for each chunk), unless a batch holds a whole chunk (then written from it).
        self.buf: np.ndarray | None = None
        self.fill = 0  # rows in buf
        self.spare: list[np.ndarray] = []  # chunk buffers back from the pool
        self.inflight: deque = deque()
        # futures of chunks that are views of a batch, done once written (the decoder
        # reuses the batch's memory after that: _Buffers), since the last take_borrowed()
        self.borrowed: list = []

    def append(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        if self.n == 0:
            self.first = values[0]
        self.last = values[-1]  # (time: the channel's t_first_ns, t_last_ns, no read-back)
        if self.n + len(values) > self.size:
            self.size = self.n + len(values)
            self.ds.resize((self.size,))
        self.n += len(values)
        if not self.direct:
            self._write_rows(self.n - len(values), values)
            return
        values = np.ascontiguousarray(values, self.dtype)
        if self.stream:
            self._stage(self.n - len(values), values)
            return
        c = self.chunk_rows
        i, n = 0, len(values)
        while i < n:
            if self.fill == 0 and n - i >= c:
                self._submit(values[i : i + c], None)  # a whole chunk of the batch
                i += c
                continue
            if self.buf is None:
                self.buf = self._spare()
            k = min(c - self.fill, n - i)
            self.buf[self.fill : self.fill + k] = values[i : i + k]
            self.fill += k
            i += k
            if self.fill == c:
                self._flush_buf()

    def _stage(self, start: int, values: np.ndarray) -> None:
        """Stage the rows ``[start, start + len(values))`` for the writer thread, each
        chunk's part at its place in that chunk (written at the guard's next
        ``flush_staged``)."""
        c = self.chunk_rows
        size = self.dtype.itemsize
        i, n = 0, len(values)
        while i < n:
            k, within = divmod(start + i, c)
            m = min(c - within, n - i)
            address = self.addresses.get(k)
            if address is None:
                address = self.addresses[k] = self._address(k)
            self.guard.stage(values[i : i + m], address + within * size)
            i += m
        self.written = start + n

    def _address(self, k: int) -> int:
        """The file address of chunk ``k`` (allocated when the dataset was made)."""
        info = self.ds.id.get_chunk_info_by_coord((k * self.chunk_rows,))
        address = info.byte_offset
        if address is None or address < 0 or info.size != self.chunk_rows * self.dtype.itemsize:
            raise PivotError(f"{self.name}: chunk {k} has no storage in the file "
                             f"(HDF5 reported {info}); this is a bug, please report it")
        return address

    def _spare(self) -> np.ndarray:
        """A chunk buffer: one whose write is done, or a new one."""
        while self.writing and self.writing[0][0].done():
            self.spare.append(self.writing.popleft()[1])
        if not self.spare and len(self.writing) >= 4:  # bound the buffers in flight
            future, buf = self.writing.popleft()
            future.result()
            self.spare.append(buf)
        if self.spare:
            return self.spare.pop()
        kept = _POOL.take_chunk(self.chunk_rows * self.dtype.itemsize)
        return kept.view(self.dtype) if kept is not None else np.empty(self.chunk_rows,
                                                                        self.dtype)

    def _write_rows(self, start: int, values: np.ndarray) -> None:
        stop = start + len(values)
        try:
            self.ds[start:stop] = values
        except ValueError as exc:
            if "embedded NULL" not in str(exc):
                raise
            # HDF5 variable-length strings end at NUL: write U+2400 (SYMBOL FOR
            # NULL) instead and count the values changed.
            fixed = [str(v).replace("\0", "\u2400") for v in values]
            changed = sum(1 for v in values if "\0" in str(v))
            self.ds.attrs["nul_replaced"] = int(self.ds.attrs.get("nul_replaced", 0)) + changed
            self.ds[start:stop] = np.array(fixed, dtype=values.dtype)
        self.written = stop

    def _flush_buf(self) -> None:
        """Submit the chunk buffer (its tail zeroed when not full: the last chunk)."""
        buf, self.buf = self.buf, None
        buf[self.fill :] = 0
        self.fill = 0
        self._submit(buf, buf)

    def _submit(self, chunk: np.ndarray, buf: np.ndarray | None) -> None:
        """Write ``chunk`` (a whole chunk); ``buf``: the chunk buffer it is, to reuse
        once written."""
        offset = self.written
        self.written += self.chunk_rows
        if self.comp.name == "none":
            if self.guard is None:
                self.ds.id.write_direct_chunk((offset,), chunk)
                if buf is not None:
                    self.spare.append(buf)
                return
            self.guard.background(chunk)
            try:
                self.ds.id.write_direct_chunk((offset,), chunk)
            finally:
                future = self.guard.announced_future()
            if future is None:
                if buf is not None:
                    self.spare.append(buf)
            elif buf is not None:
                self.writing.append((future, buf))
            else:
                self.borrowed.append(future)  # the batch's memory waits for it
            return
        args = (chunk.view(np.uint8), self.dtype.itemsize, self.comp.engine_level,
                self.comp.engine, self.raw_mask)
        if self.pool is None:
            self._write_chunk(offset, *_shuffle_deflate(*args))
            if buf is not None:
                self.spare.append(buf)
            return
        fut = self.pool.submit(_shuffle_deflate, *args)
        written = None
        if buf is None:
            # a view of the batch: in use until written (a chunk that deflate does not
            # make smaller is written as it is, from this memory)
            written = concurrent.futures.Future()
            self.borrowed.append(written)
        self.inflight.append((offset, fut, buf, written))
        while len(self.inflight) > 2 * (self.pool._max_workers or 1):
            self._drain_one()

    def take_borrowed(self) -> list:
        """Futures of the chunks of a batch's memory not yet written when handed on
        (compressed or written on another thread), since the last call."""
        borrowed, self.borrowed = self.borrowed, []
        return borrowed

    def _drain_one(self) -> None:
        offset, fut, buf, written = self.inflight.popleft()
        self._write_chunk(offset, *fut.result())
        if buf is not None:
            self.spare.append(buf)
        if written is not None:
            written.set_result(None)

    def _write_chunk(self, offset: int, data: bytes, mask: int) -> None:
        self.ds.id.write_direct_chunk((offset,), data, filter_mask=mask)
        if mask:
            # HDF5 2.0 keeps the last chunk it looked up in a cache, and after a direct
            # write that cache holds the chunk with mask 0: reading the chunk back in this
            # session (the shrink in close(), t_last_ns) would inflate raw bytes and fail.
            # Looking up another chunk replaces it; the next one is not written yet, so
            # the lookup only finds that it is missing (the file itself is right).
            try:
                self.ds.id.read_direct_chunk((offset + self.chunk_rows,))
            except (RuntimeError, ValueError):
                pass

    def release_buffers(self) -> None:
        """Chunk buffers no longer needed (written) to the pool, for the next pivot."""
        while self.writing and self.writing[0][0].done():
            self.spare.append(self.writing.popleft()[1])
        for buf in self.spare:
            _POOL.give(buf, chunk=True)
        self.spare = []

    def write_attrs(self) -> None:
        _write_attrs(self.ds, self.attrs)

    def abandon(self) -> None:
        """Drop the dataset and pending chunks (after a failed write)."""
        for _, fut, _, _ in self.inflight:
            fut.cancel()
        self.inflight.clear()
        self.writing.clear()
        self.buf = None
        self.spare = []
        self.ds = None

    def close(self) -> int:
        if self.stream:
            self.guard.flush_staged()
        if self.direct and self.fill:
            self._flush_buf()
        while self.inflight:
            self._drain_one()
        self.release_buffers()
        if self.size != self.n:
            self.size = self.n
            self.ds.resize((self.n,))
        return self.n


# ---------------------------------------------------------------------------- channels


def _h5_types(sig, mode: str) -> tuple[np.dtype, Any]:
    """(numpy dtype of the column, HDF5 dtype of the dataset) of a signal."""
    import h5py

    if sig.type == "string":
        return np.dtype(object), h5py.string_dtype("utf-8")
    if sig.type == "bytes":
        return np.dtype(object), h5py.vlen_dtype(np.dtype(np.uint8))
    if sig.type == "enum":
        n = len(sig.symbols)
        base = np.int8 if n <= 127 else np.int16 if n <= 32767 else np.int32
        return np.dtype(base), h5py.enum_dtype({s: i for i, s in enumerate(sig.symbols)}, base)
    return sig.dtype, sig.dtype


def _signal_attrs(sig, schema: Schema) -> dict:
    attrs = {
        "avro_type": sig.type,
        "signal": sig.name,
        "doc": sig.doc,
        "units": sig.unit,
        "logical_type": sig.logical_type,
        "nullable": bool(sig.nullable),
    }
    if sig.symbols is not None:
        attrs["symbols"] = list(sig.symbols)
    if sig.name == schema.time_field:
        attrs["time_field"] = True
    return attrs


def _prepare(sig, values: np.ndarray) -> np.ndarray:
    if sig.type == "enum":
        n = len(sig.symbols)
        return values.astype(np.int8 if n <= 127 else np.int16 if n <= 32767 else np.int32)
    if sig.type == "bytes":
        out = np.empty(len(values), object)
        out[:] = [np.frombuffer(v, np.uint8) for v in values]
        return out
    return values


def _numeric(sig) -> bool:
    return sig.type in ("boolean", "int", "long", "float", "double")


@dataclass
class _Plan:
    channel: str
    reader: ChannelReader
    names: list[str]


def _loss(datagrams: np.ndarray, gap_factor: float) -> dict:
    """Loss and gap counts from the receive-time entries of a channel's datagrams."""
    out = {
        "n_datagrams": len(datagrams),
        "lost_datagrams": 0,
        "seq_gaps": 0,
        "seq_resets": 0,
        "recv_gaps": 0,
        "recv_gap_max_ns": 0,
        "recv_gap_total_ns": 0,
        "recv_interval_median_ns": 0,
        "recv_gap_threshold_ns": 0,
        "gap_factor": float(gap_factor),
    }
    if len(datagrams) < 2:
        return out
    seq = datagrams["seq"].astype(np.int64)
    step = (seq[1:] - seq[:-1]) % (1 << 32)
    resets = (step == 0) | (step >= (1 << 31))
    gaps = (step > 1) & ~resets
    out["seq_resets"] = int(resets.sum())
    out["seq_gaps"] = int(gaps.sum())
    out["lost_datagrams"] = int((step[gaps] - 1).sum())
    recv = np.sort(datagrams["recv_ns"])
    interval = np.diff(recv)
    positive = interval[interval > 0]
    if len(positive):
        median = int(np.median(positive))
        threshold = int(median * gap_factor)
        big = interval[interval > threshold]
        out.update(
            recv_interval_median_ns=median,
            recv_gap_threshold_ns=threshold,
            recv_gaps=len(big),
            recv_gap_max_ns=int(big.max()) if len(big) else 0,
            recv_gap_total_ns=int(big.sum()),
        )
    return out


# ---------------------------------------------------------------------------- resampling


def _concat(a: Columns, b: Columns) -> Columns:
    out = Columns({k: _cat(a[k], b[k]) for k in b}, channel=b.channel, schema=b.schema,
                  valid={k: np.concatenate([a.valid[k], b.valid[k]]) for k in b.valid},
                  start_ns=b.start_ns, end_ns=b.end_ns)
    return out


def _cat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return y
    if len(y) == 0:
        return x
    return np.concatenate([x, y])


def _take(cols: Columns, sel: Any) -> Columns:
    return Columns({k: v[sel] for k, v in cols.items()}, channel=cols.channel,
                   schema=cols.schema, valid={k: v[sel] for k, v in cols.valid.items()},
                   start_ns=cols.start_ns, end_ns=cols.end_ns)


def resample_columns(cols: Columns, period_ns: int, aggs: list[str]) -> dict[str, np.ndarray]:
    """Bucket ``cols`` by ``time // period_ns``; returns ``time`` (bucket start), ``count``
    and ``<signal>.<agg>`` columns (see the module docstring). Rows must be time-sorted."""
    t = cols["time"]
    out: dict[str, np.ndarray] = {}
    if len(t) == 0:
        return out
    bucket = t // period_ns
    starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
    ends = np.concatenate([starts[1:], [len(t)]])
    out["time"] = bucket[starts] * period_ns
    out["count"] = (ends - starts).astype(np.int64)
    for name, sig in cols.signals.items():
        if name in ("time", "recv_time") or name not in cols:
            continue  # the abscissa, or a signal not asked for
        values = cols[name]
        if _numeric(sig):
            x = values.astype(np.float64) if (sig.nullable or sig.type in ("float", "double")) \
                else values
            if name in cols.valid:
                x = np.where(cols.valid[name], x, np.nan)
            for agg in aggs:
                out[f"{name}.{agg}"] = _aggregate(x, starts, ends, agg)
        else:
            wanted = [a for a in aggs if a in ("first", "last")] or ["last"]
            for agg in wanted:
                out[f"{name}.{agg}"] = values[starts if agg == "first" else ends - 1]
    return out


def _aggregate(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, agg: str) -> np.ndarray:
    if agg == "first":
        return x[starts]
    if agg == "last":
        return x[ends - 1]
    if x.dtype.kind == "f":
        nan = np.isnan(x)
        if agg in ("mean", "sum"):
            total = np.add.reduceat(np.where(nan, 0.0, x), starts)
            if agg == "sum":
                return total
            n = np.add.reduceat((~nan).astype(np.int64), starts)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(n > 0, total / np.maximum(n, 1), np.nan)
        # fmin/fmax ignore NaN unless a whole bucket is NaN
        return (np.fmin if agg == "min" else np.fmax).reduceat(x, starts)
    if x.dtype == np.bool_:
        x = x.astype(np.int64)
    if agg == "mean":
        return np.add.reduceat(x.astype(np.float64), starts) / (ends - starts)
    if agg == "sum":
        return np.add.reduceat(x.astype(np.int64 if x.dtype.kind in "iub" else x.dtype), starts)
    return (np.minimum if agg == "min" else np.maximum).reduceat(x, starts)


# ---------------------------------------------------------------------------- progress


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


# ---------------------------------------------------------------------------- pivot


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
    agg: Any = ("mean", "min", "max"),
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
    (``"10ms"``, or ns as int) with ``agg`` (``"mean,min,max"``; also first, last, sum).
    ``compression``: see the module docstring. ``progress``: a progress bar on stderr
    (None: when stderr is a terminal). ``threads``: compression threads (None: CPUs).
    Raises PivotError (a SpeedDataError) with what to change; no file is left on error.
    """
    import h5py

    t_start = time.perf_counter()
    cache = resolve_cache_dir(cache_dir)
    output = Path(output)
    comp = _compression(compression)
    if every is not None and resample is not None:
        raise PivotError("choose --every or --resample, not both")
    if every is not None and (isinstance(every, bool) or int(every) < 1):
        raise PivotError(f"--every must be a positive integer, not {every!r}")
    period_ns = None
    aggs: list[str] = []
    if resample is not None:
        period_ns = _period_ns(resample)
        aggs = [a.strip() for a in (agg.split(",") if isinstance(agg, str) else agg) if a.strip()]
        bad = [a for a in aggs if a not in AGGREGATES]
        if bad or not aggs:
            raise PivotError(
                f"unknown aggregate {bad[0] if bad else ''!r}; choose from {', '.join(AGGREGATES)}"
            )
    note = ""
    if tag is not None:
        from .tags import get_tag

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
    chosen = _match_channels(available, channels)
    if output.is_dir():
        raise PivotError(f"{output} is a folder; give a file name such as {output / 'set.h5'}")
    if output.exists() and not force:
        raise PivotError(f"{output} exists; use --force to replace it")
    if not output.parent.exists():
        raise PivotError(f"folder {output.parent} does not exist")

    plans = _plan(cache, chosen, signals, start_ns, end_ns, tag, decoder)
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
                from .cache import channel_summary

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
        registry: list[_DatasetWriter] = []
        guard = f = None
        try:
            guard = _GuardedFile(tmp)
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
            _fsync_dir(output.parent)
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
            if _disk_full(exc):
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


def _period_ns(resample: Any) -> int:
    if isinstance(resample, (int, np.integer)) and not isinstance(resample, bool):
        period = int(resample)
    else:
        try:
            period = round(parse_duration(str(resample)) * 1e9)
        except ValueError as exc:
            raise PivotError(f"--resample: {exc}") from None
    if period <= 0:
        raise PivotError(f"--resample must be a positive duration, not {resample!r}")
    return period


def _match_channels(available: list[str], patterns: Any) -> list[str]:
    if patterns is None or len(patterns) == 0:
        return list(available)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: list[str] = []
    for pat in patterns:
        hits = [c for c in available if fnmatch.fnmatchcase(c, pat)]
        if not hits:
            raise PivotError(f"no channel matches {pat!r}; channels: {available}")
        chosen += [c for c in hits if c not in chosen]
    return [c for c in available if c in chosen]


def _plan(
    cache: Path, chosen: list[str], signals: Any, start_ns, end_ns, tag, decoder
) -> list[_Plan]:
    """Open a reader per channel and apply the signal globs.

    A glob must match a signal of some chosen channel; channels none of whose signals
    match are left out (``--signals engine.rpm`` writes only engine).
    """
    patterns = [signals] if isinstance(signals, str) else list(signals or [])
    plans: list[_Plan] = []
    matched = {p: False for p in patterns}
    try:
        for channel in chosen:
            try:
                reader = ChannelReader(cache, channel, start_ns, end_ns, None, tag=tag,
                                       decoder=decoder)
            except ReadError as exc:
                raise PivotError(str(exc)) from None
            names = [s.name for s in reader.schema.signals]
            if patterns:
                hit = []
                for pat in patterns:
                    h = [n for n in names if fnmatch.fnmatchcase(n, pat)
                         or fnmatch.fnmatchcase(f"{channel}.{n}", pat)]
                    matched[pat] = matched[pat] or bool(h)
                    hit += h
                names = [n for n in names if n in set(hit)]
                if not names:
                    reader.close()
                    continue
            reader.names = names
            plans.append(_Plan(channel, reader, names))
        missing = [p for p, ok in matched.items() if not ok]
        if missing:
            listing = {p.channel: [s.name for s in p.reader.schema.signals] for p in plans}
            raise PivotError(f"no signal matches {missing[0]!r}; signals: {listing or chosen}")
    except BaseException:
        for p in plans:
            p.reader.close()
        raise
    return plans


def _write_channel(f, plan: _Plan, comp, pool, every, period_ns, aggs, recv_time, gap_factor,
                   batch_bytes, bar, registry: list, guard: _GuardedFile) -> int:
    """Write one channel's group; the batches are decoded on a thread, started before
    the datasets are created (the first batches decode meanwhile)."""
    reader = plan.reader
    # Rows (not resampled: a resample holds rows back across batches) are written or
    # copied out before the next batch, so their memory goes back to the decoder.
    buffers = None
    if not period_ns:
        buffers = _Buffers(BATCH_BUFFERS if comp.name == "none" else None)
    batches = _Prefetch(reader.batches(batch_bytes, recv_time=recv_time and not period_ns,
                                       out=buffers.take if buffers is not None else None))
    try:
        return _write_channel_batches(f, plan, comp, pool, every, period_ns, aggs, recv_time,
                                      gap_factor, bar, registry, guard, batches, buffers)
    finally:
        batches.close()
        if buffers is not None:
            buffers.close()


def _write_channel_batches(f, plan: _Plan, comp, pool, every, period_ns, aggs, recv_time,
                           gap_factor, bar, registry: list, guard: _GuardedFile,
                           batches: _Prefetch, buffers: _Buffers | None = None) -> int:
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
    group.attrs.update(_loss(datagrams, gap_factor))
    n_max = reader.n_rows_max
    if every:
        n_max = -(-n_max // int(every))
    if period_ns and reader.start_ns is not None and reader.end_ns is not None:
        n_max = min(n_max, (reader.end_ns - reader.start_ns) // period_ns + 2)
    writers: dict[str, _DatasetWriter] = {}
    h5py_time_attrs = {"units": TIME_UNITS, "doc": "time of each row"}

    def writer(name, dtype, h5dtype, attrs):
        if name not in writers:
            w = writers[name] = _DatasetWriter(group, name, dtype, h5dtype, n_max, comp, pool,
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
        col = _column_name(sig, schema)
        attrs = _signal_attrs(sig, schema)
        if period_ns:
            if _numeric(sig):
                for a in aggs:
                    dt = np.float64 if (a in ("mean",) or sig.nullable
                                        or sig.type in ("float", "double")) else sig.dtype
                    if a == "sum" and not sig.nullable and sig.type in ("boolean", "int", "long"):
                        dt = np.int64
                    specs.append((f"{col}.{a}", dt, dt, {**attrs, "agg": a}, None))
            else:
                for a in [x for x in aggs if x in ("first", "last")] or ["last"]:
                    dt, h5dt = _h5_types(sig, "resample")
                    specs.append((f"{col}.{a}", dt, h5dt, {**attrs, "agg": a}, None))
            continue
        dt, h5dt = _h5_types(sig, "records")
        specs.append((col, dt, h5dt, attrs, lambda b, sig=sig, col=col: _prepare(sig, b[col])))
        if sig.nullable and sig.type not in ("float", "double"):
            attrs["valid"] = f"{col}.valid"
            specs.append((f"{col}.valid", np.bool_, np.bool_,
                          {"doc": f"True where {col} has a value (False: null)", "valid_of": col},
                          lambda b, col=col: b.valid[col]))
    made = 0  # specs whose dataset exists

    def make(i: int) -> _DatasetWriter:
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
            batch = _take(batch, slice(first, None, n))
        if period_ns:
            if pending is not None:
                batch = _concat(pending, batch)
            if not _sorted(batch["time"]):
                batch = _take(batch, np.argsort(batch["time"], kind="stable"))
            if batch.n_rows:
                # hold back the last (maybe incomplete) bucket for the next batch
                last = batch["time"][-1] // period_ns
                cut = int(np.searchsorted(batch["time"] // period_ns, last, "left"))
                pending = _take(batch, slice(cut, None))
                batch = _take(batch, slice(0, cut))
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


class _Buffers:
    """The column memory of written batches, given back to the decoder (``batches(out=)``)
    for the next ones: decoding into fresh memory made the kernel fault in and zero
    16 MiB for every batch (~13% of a ``wide`` pivot's profile), and the two cores share
    one memory bus. A batch's memory is free once every chunk written from it is
    (``give``'s futures). ``take`` runs on the decode thread, ``give`` on the writing one.

    ``limit``: once that many buffers exist, ``take`` waits for the oldest held one to be
    written rather than let the decoder fault in a new one (only where every future
    given is completed by another thread than the one that takes batches: ``none``'s
    background writer). With the disk the bottleneck, a decoder running further ahead
    gains nothing, and a fresh 16 MiB batch can cost ~40 ms of page faults (2-3 ms
    reused; see _MemoryPool). Buffers come from the process's pool before new ones are
    made, and go back to it at ``close``."""

    #: at most this long waiting for a buffer, then a new one after all
    WAIT_SECONDS = 1.0

    def __init__(self, limit: int | None = None):
        self.lock = threading.Lock()
        self.free: list[np.ndarray] = []
        self.held: deque = deque()  # (buffer, futures of its chunks not yet written)
        self.limit = limit
        self.made = 0  # buffers the decoder was left to allocate, or taken from the pool

    def take(self) -> np.ndarray | None:
        waited = False
        while True:
            with self.lock:
                self._release()
                if self.free:
                    return self.free.pop()
                if waited or self.limit is None or self.made < self.limit or not self.held:
                    self.made += 1
                    return _POOL.take()
                futures = list(self.held[0][1])
            concurrent.futures.wait(futures, timeout=self.WAIT_SECONDS)
            waited = not all(f.done() for f in futures)

    def give(self, memory: np.ndarray, futures: list) -> None:
        with self.lock:
            self.held.append((memory, futures))
            self._release()

    def _release(self) -> None:
        while self.held and all(f.done() for f in self.held[0][1]):
            self.free.append(self.held.popleft()[0])

    def close(self) -> None:
        """Hand the free buffers to the process's pool for the next pivot, after the
        channel's last batch (a buffer still held by a write is left to the garbage
        collector: after a failure, its write may never complete)."""
        with self.lock:
            self._release()
            free, self.free = self.free, []
            self.held = deque()
        for memory in free:
            _POOL.give(memory)


class _MemoryPool:
    """Batch memory and chunk buffers kept between pivots (and channels), up to
    ``limit`` bytes.

    New memory is expensive: the kernel faults in and zeroes every page, and in a virtual
    machine whose balloon reports free pages to the host (free page reporting), each
    first touch is also a fault in the host: 16 MiB took 35-45 ms there against 2-3 ms
    reused. A process that pivots more than once (a notebook exporting several tags, a
    server answering export requests) reuses the same memory. :func:`release_memory`
    empties the pool."""

    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.buffers: list[np.ndarray] = []  # batch memory, by size (the largest last)
        self.chunks: dict[int, list[np.ndarray]] = {}  # chunk buffers, by bytes
        self.nbytes = 0

    def take(self) -> np.ndarray | None:
        """The largest batch buffer kept, or None."""
        with self.lock:
            if not self.buffers:
                return None
            memory = self.buffers.pop()
            self.nbytes -= memory.nbytes
            return memory

    def take_chunk(self, nbytes: int) -> np.ndarray | None:
        """A chunk buffer of ``nbytes`` bytes (uint8) kept, or None."""
        with self.lock:
            kept = self.chunks.get(nbytes)
            if not kept:
                return None
            self.nbytes -= nbytes
            return kept.pop()

    def give(self, memory: np.ndarray | None, chunk: bool = False) -> None:
        """Keep ``memory`` (a batch buffer, or with ``chunk`` a chunk buffer) if the pool
        has room for it."""
        if memory is None:
            return
        memory = memory.view(np.uint8).reshape(-1)
        with self.lock:
            if self.nbytes + memory.nbytes > self.limit:
                return  # let it go: the pool holds enough
            if chunk:
                self.chunks.setdefault(memory.nbytes, []).append(memory)
            else:
                self.buffers.append(memory)
                self.buffers.sort(key=lambda m: m.nbytes)
            self.nbytes += memory.nbytes

    def clear(self) -> int:
        with self.lock:
            freed, self.buffers, self.chunks, self.nbytes = self.nbytes, [], {}, 0
        return freed


#: datasets of a channel made before its first batch is taken (about what HDF5 makes
#: while the first batch decodes); the others are made with that batch's rows at hand
FIRST_DATASETS = 32

def _pool_bytes() -> int:
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        ram = 4 << 30
    return min(256 << 20, ram // 16)


#: batch and chunk memory kept for the next pivot: 256 MiB at most, and at most 1/16 of
#: the RAM (a ``wide`` pivot of 100 doubles uses ~180 MB of it)
POOL_BYTES = _pool_bytes()
_POOL = _MemoryPool(POOL_BYTES)


def release_memory() -> int:
    """Free the memory kept for the next pivot or read: the pivot's batch and chunk
    buffers (``POOL_BYTES``) and the column memory of reads (``speeddata._columns``,
    ``SLAB_POOL_BYTES``); returns the bytes released. Also ``speeddata.release_memory``."""
    freed = _POOL.clear()  # (its buffers' column memory goes to the reads' pool: freed next)
    if _native_columns is not None:
        freed += _native_columns.release_slabs()
    return freed


class _Prefetch:
    """Decode batches on a thread, up to ``depth`` ahead of the one being written (the
    decoder and the writes release the GIL: on two cores the two overlap). Started
    before the channel's datasets are created, so the first batches decode meanwhile;
    ``close()`` stops and joins the thread (call it on every path)."""

    def __init__(self, batches, depth: int = 2):
        import queue

        self._queue_full = queue.Full
        self.batches = batches
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="pivot-decode", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except self._queue_full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for batch in self.batches:
                if not self._put(batch):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


_DONE = object()


def _sorted(t: np.ndarray) -> bool:
    return len(t) < 2 or bool(np.all(t[1:] >= t[:-1]))


def _append_resampled(writers: dict, batch: Columns, period_ns: int, aggs: list[str]) -> None:
    if batch.n_rows == 0:
        return
    out = resample_columns(batch, period_ns, aggs)
    for name, values in out.items():
        w = writers[name]
        if values.dtype != w.dtype and w.dtype != np.dtype(object):
            values = values.astype(w.dtype)
        sig = batch.signals.get(name.rsplit(".", 1)[0])
        if sig is not None and not _numeric(sig):
            values = _prepare(sig, values)
        w.append(values)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc)
    return any(s in text for s in ("No space left", "File too large", "errno = 28",
                                   "errno = 27", "Disk quota"))


# ---------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .tags import add_cache_arguments

    rng = parser.add_argument_group("what to write (a tag, or --start and --end)")
    rng.add_argument("--tag", help="the tag's range, channels and note")
    rng.add_argument("--start", help="ISO time, ns since the epoch, 'now', 'now-5min' "
                     "(or --start=-5min: a leading '-' needs the '=')")
    rng.add_argument("--end", help="ISO time, ns since the epoch, 'now', 'now-1min'")
    rng.add_argument("--channels", nargs="+", metavar="GLOB", help="channel names or globs")
    rng.add_argument("--signals", nargs="+", metavar="GLOB",
                     help="signals or globs, as SIGNAL or CHANNEL.SIGNAL (e.g. 'engine.*')")
    red = parser.add_argument_group("reduction (default: every record)")
    ex = red.add_mutually_exclusive_group()
    ex.add_argument("--every", type=int, metavar="N", help="keep every Nth record")
    ex.add_argument("--resample", metavar="PERIOD", help="time buckets, e.g. 10ms, 1s")
    red.add_argument("--agg", default="mean,min,max",
                     help=f"aggregates for --resample, from {','.join(AGGREGATES)}")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", required=True, metavar="FILE.h5")
    out.add_argument("--compression", default="gzip",
                     help="gzip (default: deflate+shuffle, any reader), gzip:N, none, lzf, "
                          "blosc, blosc:zstd, zstd, lz4 (last four need hdf5plugin)")
    out.add_argument("--recv-time", action="store_true", help="add /<channel>/recv_time")
    out.add_argument("--force", action="store_true", help="replace an existing output file")
    out.add_argument("--threads", type=int, help="compression threads (default: CPUs)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cache_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .tags import cache_dir_from_args

    if args.tag is None and (args.start is None or args.end is None):
        raise PivotError("give --tag NAME, or both --start and --end")
    result = pivot(
        cache_dir_from_args(args),
        args.output,
        tag=args.tag,
        start=args.start,
        end=args.end,
        channels=args.channels,
        signals=args.signals,
        every=args.every,
        resample=args.resample,
        agg=args.agg,
        compression=args.compression,
        recv_time=args.recv_time,
        force=args.force,
        progress=False if args.no_progress else None,
        threads=args.threads,
    )
    rows = ", ".join(f"{c} {n} rows" for c, n in result.channels.items())
    print(
        f"wrote {result.path}: {rows}; {result.bytes_in / 1e6:.1f} MB of records -> "
        f"{result.bytes_out / 1e6:.1f} MB in {result.seconds:.2f} s"
    )
    return 0
