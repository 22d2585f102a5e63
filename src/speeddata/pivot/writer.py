"""HDF5 dataset writing: attributes through h5py's low-level API, datasets made from a
template, and ``DatasetWriter``, which appends rows a chunk at a time (direct chunks
compressed on a thread pool, streamed rows, or h5py's own filter pipeline)."""

from __future__ import annotations

import concurrent.futures
from collections import deque
from typing import Any

import numpy as np

from . import memory
from .compression import Compression, shuffle_deflate
from .errors import PivotError
from .fileio import GuardedFile

#: bytes of one chunk of a dataset, about (its rows along time)
CHUNK_BYTES = 1024 * 1024


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


class DatasetWriter:
    """Appends rows to one 1-D dataset, a chunk at a time.

    Fixed-size types with ``none``/``gzip`` go through ``write_direct_chunk`` (compressed
    on the pool's threads, written in order by this thread); others through h5py's
    normal write with HDF5's own filter pipeline.
    """

    def __init__(self, group, name: str, dtype, h5dtype, n_max: int, comp: Compression,
                 pool, attrs: dict, guard: GuardedFile | None = None, stream: bool = False):
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
        # reuses the batch's memory after that: Buffers), since the last take_borrowed()
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
        kept = memory.POOL.take_chunk(self.chunk_rows * self.dtype.itemsize)
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
            self._write_chunk(offset, *shuffle_deflate(*args))
            if buf is not None:
                self.spare.append(buf)
            return
        fut = self.pool.submit(shuffle_deflate, *args)
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
            memory.POOL.give(buf, chunk=True)
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
        if self.raw_mask and self.size != self.n:
            # Shrink before the last (partial) chunk is written, so that the shrink
            # prunes no written chunk: HDF5 2.0 rewrites a pruned chunk that was stored
            # as it is (raw_mask) deflated, yet keeps its filter mask, and readers then
            # take the deflate stream for values. Every chunk submitted so far is a
            # whole chunk of rows below self.n.
            self.size = self.n
            self.ds.resize((self.n,))
        if self.direct and self.fill:
            self._flush_buf()
        while self.inflight:
            self._drain_one()
        self.release_buffers()
        if self.size != self.n:
            self.size = self.n
            self.ds.resize((self.n,))
        return self.n
