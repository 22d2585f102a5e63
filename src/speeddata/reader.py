"""Read the cache (or a pivoted HDF5 file) into numpy columns.

``read(cache_dir, channel, start, end, signals)`` returns a :class:`Columns`: a dict of
signal name -> numpy array, one row per record, plus

- ``"time"``: int64 ns since the epoch (UTC) of each record: the channel's time field
  scaled to ns, or the relay receive time for a channel without one;
- ``"recv_time"`` (with ``recv_time=True``): int64 ns, the kernel receive time of the
  datagram that carried the record.

Only the blocks whose index time range meets ``[start, end)`` are decoded (the segment
index has ``t_min``/``t_max`` per block); the records are then trimmed to
``start <= time < end``.

Column types (``Columns.signals[name]`` is the schema's :class:`~speeddata.schema.Signal`):

| Avro | numpy |
| --- | --- |
| boolean, int, long, float, double | ``bool``, ``int32``, ``int64``, ``float32``, ``float64`` |
| enum | ``int32`` codes; ``Columns.symbols(name)`` gives the symbols, ``labels(name)`` the names |
| string | ``StringDType()`` (numpy >= 2), else ``object`` of ``str`` |
| bytes | ``object`` of ``bytes`` |
| fixed(N) | ``S{N}`` (numpy drops trailing NUL bytes when it hands out one value) |
| nested record field ``a`` of ``host`` | column ``"host.a"`` |

Nullable fields (``["null", T]``): float and double columns hold NaN for null; every
other nullable column holds 0 / ``""`` / ``b""`` there and ``Columns.valid[name]`` is its
boolean validity mask (True = value present); ``Columns.masked(name)`` combines both into
a ``numpy.ma.MaskedArray``.

``time`` and ``recv_time`` are reserved: a signal with one of those names that is not the
time field is returned as ``"time.signal"`` / ``"recv_time.signal"``.

Times (``start``, ``end``) accept ``datetime`` (naive = local time, as Python does),
``numpy.datetime64``, ISO 8601 strings (``"2026-11-25T10:31:00.5Z"``; no offset = local
time), ints (ns since the epoch), ``"now"`` and relative forms: ``"-5min"``,
``"now-30s"``, ``"+1h"`` (relative to now), or a ``timedelta`` (added to now).
Signals accept names and ``fnmatch`` globs (``"temp*"``, ``"host.*"``), against the
signal name or ``"<channel>.<signal>"``.

``Columns.to_pandas()`` and ``to_xarray()`` (and ``ColumnSet``'s, for ``load`` of a whole
file) convert, when pandas / xarray are installed: see :mod:`speeddata.frames`.
"""

from __future__ import annotations

import fnmatch
import io
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cache import (
    IDX_DTYPE,
    RECV_DTYPE,
    Segment,
    cache_channels,
    parse_header,
    resolve_cache_dir,
    segment_candidates,
)
from .config import Config
from .errors import ReadError
from .schema import Schema, Signal
from .tags import get_tag
from .times import format_time, parse_range, parse_time

__all__ = [
    "Columns",
    "ColumnSet",
    "ReadError",
    "read",
    "load",
    "parse_time",
    "format_time",
    "ChannelReader",
    "PyBlockDecoder",
    "cache_channels",
    "resolve_cache_dir",
    "select_signals",
    "column_names",
    "column_name",
]

RESERVED = ("time", "recv_time")
_SIGNAL_SUFFIX = ".signal"

try:  # numpy >= 2
    from numpy.dtypes import StringDType as _StringDType
except ImportError:  # pragma: no cover - numpy 1.x
    _StringDType = None


# ---------------------------------------------------------------------------- columns


class Columns(dict):
    """The columns of one channel: name -> numpy array (see the module docstring).

    Attributes: ``channel`` (name), ``schema`` (:class:`~speeddata.schema.Schema`),
    ``signals`` (name -> :class:`~speeddata.schema.Signal`), ``valid`` (name -> bool
    validity mask of nullable non-float signals), ``start_ns``/``end_ns`` (the range
    asked for, None when open), ``attrs`` (extra metadata; for ``load``, the HDF5
    attributes of the channel group) and ``records``: for ``read(contiguous=False)`` of a
    fixed-layout schema, the rows as one structured array of ``Schema.dtype`` (every
    field; the signal columns are views of it), else None.
    """

    def __init__(
        self,
        data: Any = (),
        *,
        channel: str | None = None,
        schema: Schema | None = None,
        valid: dict[str, np.ndarray] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        attrs: dict | None = None,
    ):
        super().__init__(data)
        self.channel = channel
        self.schema = schema
        self.signals: dict[str, Signal] = (
            {column_name(s, schema): s for s in schema.signals} if schema is not None else {}
        )
        self.valid: dict[str, np.ndarray] = dict(valid or {})
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attrs: dict = dict(attrs or {})
        self.records: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        """Number of records (rows)."""
        if "time" in self:
            return len(self["time"])
        return len(next(iter(self.values()))) if self else 0

    def masked(self, name: str) -> np.ma.MaskedArray:
        """The column as a masked array: masked where null (NaN for float columns)."""
        values = self[name]
        if name in self.valid:
            return np.ma.MaskedArray(values, mask=~self.valid[name])
        if values.dtype.kind == "f":
            return np.ma.masked_invalid(values)
        return np.ma.MaskedArray(values, mask=np.zeros(len(values), bool))

    def symbols(self, name: str) -> tuple[str, ...]:
        """The symbols of an enum signal: code ``i`` means ``symbols[i]``."""
        sig = self.signals.get(name)
        if sig is None or sig.symbols is None:
            raise KeyError(f"{name!r} is not an enum signal of {self.channel!r}")
        return sig.symbols

    def labels(self, name: str) -> np.ndarray:
        """An enum column as its symbol names (an object array)."""
        return np.asarray(self.symbols(name), dtype=object)[self[name]]

    def datetimes(self) -> np.ndarray:
        """The ``time`` column as ``datetime64[ns]`` (UTC)."""
        return self["time"].view("datetime64[ns]")

    def to_pandas(self, *, tz: str | None = "UTC"):
        """The columns as a ``pandas.DataFrame``: a ``DatetimeIndex`` named ``time`` (in
        ``tz``; None: naive UTC, sharing the time column's memory), one column per signal
        (and ``recv_time``), numbers without a copy, enums as categories, nulls as
        pandas' missing values; units and docs in ``DataFrame.attrs``. Needs pandas:
        ``pip install 'speeddata[pandas]'``. Types: :mod:`speeddata.frames`."""
        from .frames import to_pandas

        return to_pandas(self, tz=tz)

    def to_xarray(self):
        """The columns as an ``xarray.Dataset``: a ``time`` coordinate (``datetime64[ns]``,
        UTC), one variable per signal with ``units``/``long_name`` attributes, the
        channel, range and (for ``load``) the file's attributes on the Dataset. Needs
        xarray: ``pip install 'speeddata[xarray]'``. Types: :mod:`speeddata.frames`."""
        from .frames import to_xarray

        return to_xarray(self)

    def __repr__(self) -> str:
        names = ", ".join(self)
        return f"<Columns {self.channel} {self.n_rows} rows: {names}>"


class ColumnSet(dict):
    """Several channels' columns: channel name -> :class:`Columns` (``load`` without a
    channel). ``attrs``: the set's attributes (a pivoted file's root attributes: range,
    tag, note, mode...)."""

    def __init__(self, data: Any = (), *, attrs: dict | None = None):
        super().__init__(data)
        self.attrs: dict = dict(attrs or {})

    def to_pandas(self, *, tz: str | None = "UTC") -> dict:
        """channel -> ``pandas.DataFrame`` (:meth:`Columns.to_pandas`): each channel keeps
        its own time index. Needs pandas: ``pip install 'speeddata[pandas]'``."""
        from .frames import set_to_pandas

        return set_to_pandas(self, tz=tz)

    def to_xarray(self):
        """An ``xarray.DataTree``: the set's attributes on the root, one child per channel
        holding its Dataset (:meth:`Columns.to_xarray`), like the groups of the HDF5
        file. Needs xarray: ``pip install 'speeddata[xarray]'``."""
        from .frames import set_to_xarray

        return set_to_xarray(self, self.attrs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}: {cols.n_rows} rows" for name, cols in self.items())
        return f"<ColumnSet {inner}>"


def column_name(sig: Signal, schema: Schema) -> str:
    """The column of a signal: its name, except that ``time``/``recv_time`` are the
    abscissa columns; a signal of that name (other than a time field already in ns) is
    ``<name>.signal``."""
    if sig.name in RESERVED and not (sig.name == schema.time_field and schema.time_scale == 1):
        return sig.name + _SIGNAL_SUFFIX
    return sig.name


def column_names(schema: Schema) -> list[str]:
    """The columns :func:`read` returns for ``schema``'s signals, ``time`` first, in
    schema order: the names a user selects with ``signals=`` and sees in errors (a time
    field in ns, whatever its name in the schema, is the ``time`` column)."""
    names = ["time"]
    for sig in schema.signals:
        if not (sig.name == schema.time_field and schema.time_scale == 1):
            names.append(column_name(sig, schema))
    return names


def select_signals(schema: Schema, patterns: Any, channel: str = "") -> list[str]:
    """Signal names of ``schema`` matching ``patterns`` (names or fnmatch globs, against the
    signal name or ``<channel>.<signal>``), in schema order. None selects all. Raises
    ReadError naming a pattern that matches nothing, with the available signals."""
    names = [s.name for s in schema.signals]
    if patterns is None:
        return names
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {
            n
            for n in names
            if fnmatch.fnmatchcase(n, pattern)
            or (channel and fnmatch.fnmatchcase(f"{channel}.{n}", pattern))
            or (n in RESERVED and fnmatch.fnmatchcase(n + _SIGNAL_SUFFIX, pattern))
        }
        abscissa = ("time", "recv_time", f"{channel}.time", f"{channel}.recv_time")
        if not hits and pattern in abscissa:
            continue  # the abscissa columns are always there
        if not hits:
            where = f"channel {channel!r}" if channel else f"schema {schema.name!r}"
            raise ReadError(
                f"no signal of {where} matches {pattern!r}; signals: {column_names(schema)}"
            )
        chosen |= hits
    return [n for n in names if n in chosen]


# ---------------------------------------------------------------------------- cache


@dataclass
class _Blocks:
    """The blocks of one segment chosen for a read."""

    segment: Segment
    buffer: Any  # mmap or bytes: the segment's bytes
    start: np.ndarray  # int64 payload offsets
    size: np.ndarray  # int64 payload sizes
    count: np.ndarray  # int64 records per block
    dg_first: np.ndarray  # int64 first datagram (row of .recv) of each block
    n_datagrams: np.ndarray  # int64 datagrams per block
    recv: np.ndarray  # RECV_DTYPE entries of the whole segment (good blocks)


class _OpenedSegment:
    """A segment opened for reading: header, verified blocks, receive times.

    ``max_blocks``: read only its first blocks (those a tag kept), not any appended since.
    """

    def __init__(self, paths: list[Path], max_blocks: int | None = None):
        self.max_blocks = max_blocks
        last_error: OSError | None = None
        for path in paths:
            try:
                self.fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError as exc:
                last_error = exc
                continue
            self.segment = Segment(path)
            break
        else:
            raise last_error or FileNotFoundError(paths)
        self.buffer: Any = None
        self._map: mmap.mmap | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        st = os.fstat(self.fd)
        file_size = st.st_size
        head = os.pread(self.fd, min(file_size, 64 * 1024), 0)
        index = _read_entries(self.segment.idx, IDX_DTYPE)
        try:
            self.header_size, self.sync, meta = parse_header(head)
            self.schema_json = meta["avro.schema"].decode()
        except (ValueError, IndexError, KeyError, UnicodeDecodeError) as exc:
            if len(index) == 0 and not head.strip(b"\0"):
                # just created: the header is not there yet and no block is
                self.header_size, self.sync, self.schema_json = 0, b"", None
                self.index = index[:0]
                self.recv = np.zeros(0, RECV_DTYPE)
                self.file_size = 0
                return
            raise ReadError(
                f"{self.segment.avro}: not a readable segment ({exc}); "
                "run `speeddata cache recover` or remove it"
            ) from None
        last_end = int(index["offset"][-1]) + int(index["size"][-1]) if len(index) else 0
        self.closed = file_size == max(last_end, self.header_size)
        self.file_size = file_size
        if self.max_blocks is not None:
            index = index[: self.max_blocks]
        self.raw_index = index
        self.index = None  # verified lazily: only segments with blocks in range need it

    def verify(self) -> None:
        """Map (closed segment) or read (segment being written) and keep the good blocks.

        A segment being written may be truncated by the relay when it closes it; a map
        touching bytes past the new end would fault (SIGBUS), so its bytes are copied
        with pread instead, up to the end of its last indexed block.
        """
        if self.index is not None:
            return
        from ._columns import verify_blocks

        index = self.raw_index
        if self.closed:
            if self.file_size > 0:
                self._map = mmap.mmap(self.fd, self.file_size, access=mmap.ACCESS_READ)
                self.buffer = self._map
            else:
                self.buffer = b""
        else:
            last_end = int(index["offset"][-1]) + int(index["size"][-1]) if len(index) else 0
            want = min(self.file_size, max(last_end, self.header_size))
            self.buffer = _pread_all(self.fd, want)
        view = memoryview(self.buffer)
        try:
            n_good, start, size = verify_blocks(
                view,
                np.ascontiguousarray(index["offset"]),
                np.ascontiguousarray(index["size"]),
                np.ascontiguousarray(index["n_records"]),
                self.header_size,
                bytes(self.sync),
            )
        finally:
            view.release()
        self.index = index[:n_good]
        self.payload_start = start
        self.payload_size = size
        n_datagrams = self.index["n_datagrams"].astype(np.int64)
        self.dg_first = np.concatenate([[0], np.cumsum(n_datagrams)[:-1]]).astype(np.int64)
        recv = _read_entries(self.segment.recv, RECV_DTYPE)
        need = int(n_datagrams.sum())
        if len(recv) < need:
            raise ReadError(
                f"{self.segment.recv}: {len(recv)} receive times for {need} datagrams; "
                "run `speeddata cache recover`"
            )
        self.recv = recv[:need]

    def blocks_in(self, start_ns: int | None, end_ns: int | None) -> np.ndarray:
        """Positions of the (verified) blocks whose time range meets [start, end)."""
        index = self.index
        keep = np.ones(len(index), bool)
        if start_ns is not None:
            keep &= index["t_max"] >= start_ns
        if end_ns is not None:
            keep &= index["t_min"] < end_ns
        return np.flatnonzero(keep)

    def may_hold(self, start_ns: int | None, end_ns: int | None) -> bool:
        index = self.raw_index if self.index is None else self.index
        if len(index) == 0:
            return False
        if start_ns is not None and not (index["t_max"] >= start_ns).any():
            return False
        return not (end_ns is not None and not (index["t_min"] < end_ns).any())

    def close(self) -> None:
        self.buffer = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a column view still uses it; the GC closes it later
                pass
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read_entries(path: Path, dtype: np.dtype) -> np.ndarray:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return np.zeros(0, dtype)
    n = len(raw) // dtype.itemsize
    return np.frombuffer(raw, dtype, count=n).copy() if n else np.zeros(0, dtype)


def _pread_all(fd: int, n: int) -> bytes:
    chunks = []
    pos = 0
    while pos < n:
        chunk = os.pread(fd, n - pos, pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


class ChannelReader:
    """Plan and run the read of one channel over a time range (what ``read`` uses).

    Opening it finds the channel's segments (in its folder and in the tags' links),
    checks that they share one schema and selects the blocks in range. ``read()``
    returns all the columns at once; ``batches(max_bytes)`` yields them a few blocks at
    a time (for pivots larger than memory); ``datagrams()`` gives the receive-time
    entries (``RECV_DTYPE``) of the selected blocks, for loss statistics.
    """

    def __init__(
        self,
        cache_dir: Any,
        channel: str,
        start: Any = None,
        end: Any = None,
        signals: Any = None,
        *,
        tag: str | None = None,
        time_field: str | None = None,
        decoder: str = "compiled",
        contiguous: bool = True,
        threads: int | None = None,
        now_ns: int | None = None,
    ):
        self.contiguous = contiguous
        self.threads = threads
        if isinstance(cache_dir, Config) and time_field is None:
            try:
                time_field = cache_dir.channel(channel).time
            except KeyError:
                pass
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.channel = channel
        self.tag = tag
        #: with a tag: segment file name -> blocks it kept (None: every block: a tag made
        #: before tags counted them)
        self._kept: dict[str, int | None] | None = None
        if tag is not None:
            info = get_tag(self.cache_dir, tag)
            if channel not in info.channels:
                raise ReadError(f"tag {tag!r} holds channels {info.channels}, not {channel!r}")
            start = info.start_ns if start is None else start
            end = info.end_ns if end is None else end
            if info.segments is not None:
                self._kept = info.segments.get(channel, {})
        self.start_ns, self.end_ns = parse_range(start, end, now_ns)
        self.decoder = decoder
        self._segments: list[_OpenedSegment] = []
        try:
            self._plan(time_field, signals)
        except BaseException:
            self.close()
            raise

    def _plan(self, time_field: str | None, signals: Any) -> None:
        candidates = segment_candidates(self.cache_dir, self.channel, self.tag)
        if self.tag is not None:
            # A tag is what it kept: its segments, up to the blocks they held when it
            # was made; not newer records in its range (a replay, later blocks).
            if self._kept is None:  # a tag made before tags counted blocks: its links
                own = self.cache_dir / "tags" / self.tag / self.channel
                self._kept = {p[0].name: None for p in candidates if p[0].parent == own}
            tagged = [paths for paths in candidates if paths[0].name in self._kept]
            # none kept (no block of the channel in the range): no rows, with the schema
            # of a segment of the channel
            self._kept.update({p[0].name: 0 for p in candidates[:1] if not tagged})
            candidates = tagged or candidates[:1]
        if not candidates and not self.cache_dir.is_dir():
            raise ReadError(
                f"no such folder {str(self.cache_dir)!r}: give the cache folder (cache.dir "
                "of the relay's config; relative to the folder the relay was started in)"
            )
        if not candidates:
            available = cache_channels(self.cache_dir)
            raise ReadError(
                f"no channel {self.channel!r} in the cache {str(self.cache_dir)!r}; "
                f"channels: {available or 'none'}"
            )
        schema_json = None
        for paths in candidates:
            kept = None if self._kept is None else self._kept[paths[0].name]
            try:
                seg = _OpenedSegment(paths, kept)
            except FileNotFoundError:
                continue  # deleted by retention meanwhile
            if seg.schema_json is None:
                seg.close()
                continue
            if schema_json is None:
                schema_json = seg.schema_json
            if seg.may_hold(self.start_ns, self.end_ns):
                self._segments.append(seg)
            else:
                seg.close()
        if schema_json is None:
            raise ReadError(f"channel {self.channel!r}: no readable segment in the cache")
        self.blocks: list[_Blocks] = []
        schemas: dict[str, list[str]] = {}
        for seg in self._segments:
            seg.verify()
            chosen = seg.blocks_in(self.start_ns, self.end_ns)
            if len(chosen) == 0:
                continue
            schemas.setdefault(seg.schema_json, []).append(seg.segment.avro.name)
            self.blocks.append(
                _Blocks(
                    segment=seg.segment,
                    buffer=seg.buffer,
                    start=seg.payload_start[chosen],
                    size=seg.payload_size[chosen],
                    count=seg.index["n_records"][chosen].astype(np.int64),
                    dg_first=seg.dg_first[chosen],
                    n_datagrams=seg.index["n_datagrams"][chosen].astype(np.int64),
                    recv=seg.recv,
                )
            )
        if len(schemas) > 1:
            parts = "; ".join(f"{names[0]}..{names[-1]}" for names in schemas.values())
            raise ReadError(
                f"channel {self.channel!r} changed schema within the range (segments {parts}); "
                "read each part with its own time range"
            )
        if schemas:
            schema_json = next(iter(schemas))
        self.schema = _schema(schema_json, time_field)
        self.names = select_signals(self.schema, signals, self.channel)
        self.n_blocks = sum(len(b.start) for b in self.blocks)
        self.n_rows_max = int(sum(int(b.count.sum()) for b in self.blocks))
        self.payload_bytes = int(sum(int(b.size.sum()) for b in self.blocks))

    # -- decoding

    def _decoder(self, names: list[str]):
        if self.decoder == "python":
            return PyBlockDecoder(self.schema, names)
        from ._columns import BlockDecoder

        return BlockDecoder(self.schema, names, self.contiguous, self.threads)

    def _pieces(self, max_bytes: int | None) -> Iterator[list[tuple[_Blocks, slice]]]:
        """Lists of (segment blocks, slice) holding about ``max_bytes`` of records each
        (a single larger block alone); at least one list, maybe empty."""
        if max_bytes is None:
            yield [(b, slice(None)) for b in self.blocks]
            return
        batch: list[tuple[_Blocks, slice]] = []
        used = 0
        yielded = False
        for blocks in self.blocks:
            i, n = 0, len(blocks.size)
            while i < n:
                cum = np.cumsum(blocks.size[i:])
                j = i + int(np.searchsorted(cum, max_bytes - used, side="right"))
                if j == i:
                    if batch:
                        yield batch
                        yielded = True
                        batch, used = [], 0
                        continue
                    j = i + 1  # one block larger than a batch goes alone
                batch.append((blocks, slice(i, j)))
                used += int(cum[j - i - 1])
                i = j
        if batch or not yielded:
            yield batch

    def batches(
        self, max_bytes: int | None = 64 * 1024**2, recv_time: bool = False, out: Any = None
    ) -> Iterator[Columns]:
        """Columns of the range, a few blocks (about ``max_bytes`` of records) at a time.

        ``out``: a callable giving a buffer (or None) for each batch's columns
        (``BlockDecoder.reserve(out=)``: used when large enough), e.g. the buffer of a
        batch its consumer is done with; each batch's ``buffer`` attribute is then the
        memory its columns are views of (None: not one buffer), for the consumer to
        hand back once it no longer uses them.
        """
        time_field = self.schema.time_field
        names = list(self.names)
        if time_field is not None and time_field not in names:
            names.append(time_field)
        want_recv = recv_time or time_field is None
        for batch in self._pieces(max_bytes):
            decoder = self._decoder(names)
            n_rows = sum(int(b.count[s].sum()) for b, s in batch)
            heap = sum(int(b.size[s].sum()) for b, s in batch)
            given = out() if out is not None else None
            if given is not None:
                decoder.reserve(n_rows, heap, out=given)
            else:
                decoder.reserve(n_rows, heap)
            recv_parts = []
            for blocks, s in batch:
                decoder.decode(
                    blocks.buffer,
                    np.ascontiguousarray(blocks.start[s]),
                    np.ascontiguousarray(blocks.size[s]),
                    np.ascontiguousarray(blocks.count[s]),
                )
                if want_recv:
                    recv_parts.append(_record_recv_times(blocks, s))
            columns, valid = decoder.finish()
            records = decoder.records() if hasattr(decoder, "records") else None
            recv = np.concatenate(recv_parts) if recv_parts else np.zeros(0, np.int64)
            cols = self._assemble(columns, valid, recv if want_recv else None, recv_time, records)
            if out is not None:
                slab = getattr(decoder, "slab", None)
                # the whole buffer given when it was used (a later batch may need more)
                used = given is not None and slab is not None and np.may_share_memory(slab, given)
                cols.buffer = given if used else slab
            yield cols

    def _assemble(
        self,
        columns: dict,
        valid: dict,
        recv: np.ndarray | None,
        recv_time: bool,
        records: np.ndarray | None = None,
    ) -> Columns:
        schema = self.schema
        if schema.time_field is not None:
            t = columns[schema.time_field]
            times = t if schema.time_scale == 1 else t * np.int64(schema.time_scale)
        else:
            times = recv
        keep = _trim(times, self.start_ns, self.end_ns)
        out: dict[str, np.ndarray] = {"time": times[keep]}
        signals = {sig.name: sig for sig in schema.signals}
        for name in self.names:
            if name == schema.time_field and schema.time_scale == 1:
                continue  # it is the time column
            out[column_name(signals[name], schema)] = columns[name][keep]
        if recv_time:
            out["recv_time"] = recv[keep]
        valid_out = {
            column_name(signals[n], schema): m[keep]
            for n, m in valid.items()
            if n in self.names
        }
        cols = Columns(
            out,
            channel=self.channel,
            schema=schema,
            valid=valid_out,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
        )
        if records is not None:
            cols.records = records[keep]
        return cols

    def read(self, recv_time: bool = False) -> Columns:
        """All the columns of the range at once."""
        return next(iter(self.batches(None, recv_time)))

    def datagrams(self) -> np.ndarray:
        """``RECV_DTYPE`` entries (recv_ns, n_records, seq) of the selected blocks' datagrams."""
        parts = [b.recv[_datagram_rows(b, slice(None))] for b in self.blocks]
        return np.concatenate(parts) if parts else np.zeros(0, RECV_DTYPE)

    def close(self) -> None:
        for blocks in getattr(self, "blocks", []):
            blocks.buffer = None
        self.blocks = []
        for seg in self._segments:
            seg.close()
        self._segments = []

    def __enter__(self) -> ChannelReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SCHEMAS: dict[tuple[str, str | None], Schema] = {}


def _schema(schema_json: str, time_field: str | None) -> Schema:
    """Parsed schemas, kept: parsing (fingerprint, canonical form) costs ~0.25 ms a read."""
    key = (schema_json, time_field)
    schema = _SCHEMAS.get(key)
    if schema is None:
        if len(_SCHEMAS) >= 64:
            _SCHEMAS.clear()
        schema = _SCHEMAS[key] = Schema(schema_json, time=time_field)
    return schema


def _trim(times: np.ndarray, start_ns: int | None, end_ns: int | None) -> Any:
    """A slice (sorted times: views, no copy) or a boolean mask of [start, end)."""
    if start_ns is None and end_ns is None:
        return slice(None)
    if len(times) < 2 or bool(np.all(times[1:] >= times[:-1])):
        i0 = 0 if start_ns is None else int(np.searchsorted(times, start_ns, "left"))
        i1 = len(times) if end_ns is None else int(np.searchsorted(times, end_ns, "left"))
        return slice(i0, max(i0, i1))
    keep = np.ones(len(times), bool)
    if start_ns is not None:
        keep &= times >= start_ns
    if end_ns is not None:
        keep &= times < end_ns
    return keep


def _datagram_rows(blocks: _Blocks, s: slice) -> np.ndarray:
    first = blocks.dg_first[s]
    n = blocks.n_datagrams[s]
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    # concatenated ranges [first[i], first[i] + n[i]) without a Python loop
    offsets = np.repeat(first - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
    return np.arange(total, dtype=np.int64) + offsets


def _record_recv_times(blocks: _Blocks, s: slice) -> np.ndarray:
    rows = _datagram_rows(blocks, s)
    entries = blocks.recv[rows]
    counts = entries["n_records"].astype(np.int64)
    if int(counts.sum()) != int(blocks.count[s].sum()):
        raise ReadError(
            f"{blocks.segment.recv}: datagram record counts disagree with the index; "
            "run `speeddata cache recover`"
        )
    return np.repeat(entries["recv_ns"], counts)


# ---------------------------------------------------------------------------- reference


class PyBlockDecoder:
    """Pure-Python reference of ``speeddata._columns.BlockDecoder`` (fastavro per record).

    Same interface and same columns; slow. Tests run both on the same blocks.
    """

    def __init__(self, schema: Any, names: Any = None, contiguous: bool = True):
        from fastavro import parse_schema

        self.schema = Schema.load(schema)
        all_names = [s.name for s in self.schema.signals]
        names = all_names if names is None else list(names)
        unknown = [n for n in names if n not in all_names]
        if unknown:
            raise KeyError(f"{self.schema.name}: no signal {unknown[0]!r}; signals: {all_names}")
        self.names = [n for n in all_names if n in set(names)]
        self._parsed = parse_schema(_strip_logical_types(self.schema.avsc))
        self.reserve(0)

    def reserve(self, n_rows: int, heap_bytes: int = 0, out: Any = None) -> None:
        self.capacity = n_rows  # out: ignored (the columns are made at finish())
        self.n_rows = 0
        self._rows: dict[str, list] = {n: [] for n in self.names}

    def decode(self, buffer: Any, start: Any, size: Any, count: Any) -> int:
        from fastavro import schemaless_reader

        view = memoryview(buffer)
        try:
            total = int(np.sum(count))
            if self.n_rows + total > self.capacity:
                raise ValueError(
                    f"{total} more rows do not fit: {self.n_rows} of {self.capacity} reserved"
                )
            for b in range(len(start)):
                s0, n = int(start[b]), int(size[b])
                payload = io.BytesIO(bytes(view[s0 : s0 + n]))
                for r in range(int(count[b])):
                    try:
                        record = schemaless_reader(payload, self._parsed, None)
                    except Exception as exc:
                        raise ValueError(
                            f"block at byte {s0}: record {r} does not parse ({exc}) "
                            f"({int(count[b])} records of {self.schema.name} expected)"
                        ) from None
                    flat = _flatten(record)
                    for name in self.names:
                        self._rows[name].append(flat[name])
                if payload.tell() != n:
                    raise ValueError(
                        f"block at byte {s0}: bytes are left after the last record "
                        f"({int(count[b])} records of {self.schema.name} expected)"
                    )
                self.n_rows += int(count[b])
        finally:
            view.release()
        return self.n_rows

    def finish(self) -> tuple[dict, dict]:
        columns, valid = {}, {}
        for name in self.names:
            sig = self.schema.signal(name)
            values = self._rows[name]
            present = np.array([v is not None for v in values], bool)
            if sig.type in ("float", "double"):
                col = np.array([np.nan if v is None else v for v in values], sig.dtype)
            elif sig.type == "enum":
                index = {s: i for i, s in enumerate(sig.symbols)}
                col = np.array([0 if v is None else index[v] for v in values], np.int32)
            elif sig.type == "string":
                filled = ["" if v is None else v for v in values]
                col = np.empty(len(filled), _string_dtype())
                col[:] = filled
            elif sig.type == "bytes":
                col = np.empty(len(values), object)
                col[:] = [b"" if v is None else bytes(v) for v in values]
            elif sig.type == "fixed":
                col = np.array(
                    [bytes(sig.size) if v is None else bytes(v) for v in values],
                    sig.dtype,
                ).reshape(len(values))
            else:
                col = np.array([0 if v is None else v for v in values], sig.dtype)
            columns[name] = col
            if sig.nullable and sig.type not in ("float", "double"):
                valid[name] = present
        return columns, valid


def _string_dtype() -> np.dtype:
    return _StringDType() if _StringDType is not None else np.dtype(object)


def _strip_logical_types(avsc: Any) -> Any:
    """The schema without logicalType annotations, so fastavro returns plain ints."""
    if isinstance(avsc, dict):
        return {k: _strip_logical_types(v) for k, v in avsc.items() if k != "logicalType"}
    if isinstance(avsc, list):
        return [_strip_logical_types(v) for v in avsc]
    return avsc


def _flatten(record: dict, prefix: str = "", out: dict | None = None) -> dict:
    out = {} if out is None else out
    for key, value in record.items():
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out)
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------------------- public API


def read(
    cache_dir: Any,
    channel: str,
    start: Any = None,
    end: Any = None,
    signals: Any = None,
    *,
    recv_time: bool = False,
    tag: str | None = None,
    time_field: str | None = None,
    decoder: str = "compiled",
    contiguous: bool = True,
    threads: int | None = None,
) -> Columns:
    """Read one channel of the cache into numpy columns (see the module docstring).

    ``cache_dir``: the cache folder, or a :class:`~speeddata.config.Config`.
    ``start``/``end``: the range ``[start, end)``; None is open. ``signals``: names or
    globs (None: all). ``recv_time``: add the ``"recv_time"`` column. ``tag``: read the
    tag's segments (found even when retention or a user removed the channel folder's
    names) over the tag's range unless ``start``/``end`` are given. ``time_field``: the
    channel's time field when the config names one other than the schema's default.
    ``decoder``: ``"compiled"`` or ``"python"`` (the fastavro reference, for tests).
    ``contiguous=False``: for a fixed-layout schema (``Schema.dtype`` not None), return
    the columns as strided views of the records (``np.frombuffer`` with the structured
    dtype, also given whole as ``Columns.records``): about twice as fast to read (one
    memcpy a block instead of a transposition), slower to use column by column, and a
    column keeps every record's bytes alive; ignored otherwise.
    ``threads``: decode threads for large reads (None: every CPU the process may use;
    1: the calling thread only).

    A range holding no record gives empty columns. Raises ReadError for an unknown
    channel or signal and an empty or reversed range.
    """
    with ChannelReader(
        cache_dir,
        channel,
        start,
        end,
        signals,
        tag=tag,
        time_field=time_field,
        decoder=decoder,
        contiguous=contiguous,
        threads=threads,
    ) as reader:
        return reader.read(recv_time=recv_time)


def load(
    h5_path: Any,
    channel: str | None = None,
    start: Any = None,
    end: Any = None,
    signals: Any = None,
    *,
    recv_time: bool = False,
) -> Columns | ColumnSet:
    """Read a file written by ``speeddata pivot`` back into :class:`Columns`.

    With ``channel``: that channel's columns; without: a :class:`ColumnSet` (a dict
    channel -> Columns, with the file's root attributes as ``attrs``).
    ``start``/``end``/``signals`` select as in :func:`read`; ``recv_time=True`` adds the
    receive times when the file has them. Enum columns come back as int32 codes, strings
    as ``StringDType`` (numpy >= 2), bytes as ``bytes`` objects, and ``<signal>.valid``
    datasets as ``Columns.valid`` masks. ``Columns.attrs`` holds the group's attributes.
    """
    import h5py

    try:  # files written with a plugin filter (blosc, zstd, lz4) need it to be read
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
    path = Path(h5_path)
    if not path.is_file():
        raise ReadError(f"{path}: no such file")
    s_ns, e_ns = parse_range(start, end)
    with h5py.File(path, "r") as f:
        names = [k for k in f if isinstance(f[k], h5py.Group)]
        if channel is not None:
            if channel not in names:
                raise ReadError(f"{path}: no channel {channel!r}; channels: {names}")
            return _load_group(f[channel], channel, s_ns, e_ns, signals, recv_time)
        return ColumnSet(
            {n: _load_group(f[n], n, s_ns, e_ns, signals, recv_time) for n in names},
            attrs={k: _attr(v) for k, v in f.attrs.items()},
        )


def _load_group(group, channel: str, s_ns, e_ns, signals, recv_time: bool) -> Columns:
    import h5py

    attrs = {k: _attr(v) for k, v in group.attrs.items()}
    schema = Schema(attrs["schema"]) if "schema" in attrs else None
    times = group["time"][()]
    keep = _trim(times, s_ns, e_ns)
    datasets = [k for k in group if isinstance(group[k], h5py.Dataset)]
    value_names = [
        k for k in datasets if k not in ("time", "recv_time") and not k.endswith(".valid")
    ]
    if signals is not None:
        pats = [signals] if isinstance(signals, str) else list(signals)
        chosen = []
        for pat in pats:
            hits = [
                k
                for k in value_names
                if fnmatch.fnmatchcase(k, pat) or fnmatch.fnmatchcase(f"{channel}.{k}", pat)
                or fnmatch.fnmatchcase(k.rsplit(".", 1)[0], pat)
            ]
            if not hits and pat not in ("time", "recv_time"):
                raise ReadError(
                    f"no dataset of {channel!r} matches {pat!r}; datasets: {value_names}"
                )
            chosen += hits
        value_names = [k for k in value_names if k in set(chosen)]
    out: dict[str, np.ndarray] = {"time": times[keep]}
    valid: dict[str, np.ndarray] = {}
    for name in value_names:
        ds = group[name]
        out[name] = _read_dataset(ds, keep)
        if f"{name}.valid" in group:
            valid[name] = group[f"{name}.valid"][()][keep].astype(bool)
    if recv_time and "recv_time" in group:
        out["recv_time"] = group["recv_time"][()][keep]
    cols = Columns(out, channel=channel, schema=schema, valid=valid, attrs=attrs)
    cols.start_ns, cols.end_ns = s_ns, e_ns
    return cols


def _read_dataset(ds, keep) -> np.ndarray:
    import h5py

    kind = ds.attrs.get("avro_type")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "fixed" or ds.dtype.kind == "S":
        return ds[()][keep]  # fixed(N): N-byte values, exactly as stored
    if h5py.check_string_dtype(ds.dtype) is not None:
        if _StringDType is not None:
            return ds.astype(_StringDType())[()][keep]
        return ds.asstr()[()][keep]  # pragma: no cover - numpy 1.x
    if h5py.check_vlen_dtype(ds.dtype) is not None:
        raw = ds[()]
        col = np.empty(len(raw), object)
        col[:] = [bytes(np.asarray(v, np.uint8)) for v in raw]
        return col[keep]
    if h5py.check_enum_dtype(ds.dtype) is not None:
        return ds[()].astype(np.int32)[keep]
    return ds[()][keep]


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value
