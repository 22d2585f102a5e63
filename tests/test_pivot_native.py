"""The pivot's compiled helpers (speeddata._pivot) against their pure-Python references,
and the write path built on them: chunk buffers, writeback, the decode thread, the
low-level dataset and attribute creation (checked against h5py's own)."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import re
import shutil
import subprocess
import threading

import h5py
import numpy as np
import pytest

import speeddata
import speeddata.pivot as pivot_module
import speeddata.pivot.compression as pivot_compression
import speeddata.pivot.fileio as pivot_fileio
import speeddata.pivot.memory as pivot_memory
import speeddata.pivot.setfile as pivot_setfile
import speeddata.pivot.writer as pivot_writer
from _cachedata import T0, write_demo_channels
from speeddata import _pivot
from speeddata.pivot import pivot
from speeddata.reader import ChannelReader

MS = 1_000_000
H5DUMP = shutil.which("h5dump")


def engine_record(k, rng):
    return {"time": T0 + k * MS, "rpm": 1000.0 + (k % 97) * 3.5, "torque": float(np.sin(k / 9)),
            "temperature": 20.0 + (k % 17), "throttle": float(np.float32(k % 100)),
            "state": ["IDLE", "RUN", "FAULT"][k // 50 % 3], "counter": k}


def status_record(k, rng):
    return {"time": T0 + k * MS, "message": f"line {k}" + ("\0x" if k == 7 else ""),
            "uptime": k * 0.001, "load": None if k % 4 == 0 else k / 7,
            "host": {"cpu_temp": float(np.float32(40 + k % 5)), "free_disk": 10**9 - k}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_demo_channels(
        tmp_path_factory.mktemp("native"), engine_record, status_record, 5000, 1200
    )


@pytest.fixture(params=["compiled", "python"])
def impl(request, monkeypatch):
    """The compiled helpers, and the pure-Python references (``_native`` hidden)."""
    if request.param == "python":
        monkeypatch.setattr(pivot_fileio, "_native", None)
        monkeypatch.setattr(pivot_compression, "_native", None)
    return request.param


# ---------------------------------------------------------------------------- shuffle


@pytest.mark.parametrize("itemsize", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 1001])
def test_shuffle_matches_numpy(itemsize, n):
    data = np.random.default_rng(n * 31 + itemsize).integers(0, 256, n * itemsize, np.uint8)
    ref = data.reshape(-1, itemsize).T.tobytes()
    assert _pivot.shuffle(data, itemsize) == ref
    assert _pivot.shuffle(data.tobytes(), itemsize) == ref
    out = bytearray(n * itemsize + 5)
    view = _pivot.shuffle(data, itemsize, out)
    assert bytes(view) == ref and out[: len(ref)] == ref


def test_shuffle_of_typed_chunks_is_hdf5s():
    """The shuffled bytes HDF5's shuffle + deflate filters decode back to the values."""
    values = np.arange(1, 2001, dtype=np.float64) * 1.5
    for dtype in (np.int16, np.int32, np.float32, np.float64, np.int64):
        chunk = values.astype(dtype)
        shuffled = _pivot.shuffle(chunk.view(np.uint8), chunk.itemsize)
        planes = np.frombuffer(shuffled, np.uint8).reshape(chunk.itemsize, -1)
        np.testing.assert_array_equal(planes.T.copy().view(dtype).ravel(), chunk)


def test_shuffle_bad_arguments():
    with pytest.raises(ValueError, match="not whole 8-byte elements"):
        _pivot.shuffle(b"x" * 12, 8)
    with pytest.raises(ValueError, match="itemsize must be positive"):
        _pivot.shuffle(b"x" * 8, 0)
    with pytest.raises(ValueError, match="holds 8 bytes, not 16"):
        _pivot.shuffle(b"x" * 16, 8, bytearray(8))
    with pytest.raises((TypeError, ValueError, BufferError)):
        _pivot.shuffle(b"x" * 16, 8, b"y" * 16)  # read-only output


def test_shuffle_releases_the_gil():
    """Another Python thread runs while a long shuffle runs: it records times strictly
    inside the call, which it could not do if the call held the GIL. Up to five calls
    (on a busy or single-core machine the other thread may not be scheduled during
    one ~10 ms call; a call holding the GIL never lets it in)."""
    import time

    data = np.zeros(64 << 20, np.uint8)
    ticks: list[float] = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    t = threading.Thread(target=tick)
    t.start()
    inside = False
    try:
        time.sleep(0.01)
        for _ in range(5):
            start = time.perf_counter()
            _pivot.shuffle(data, 8)
            end = time.perf_counter()
            if any(start < x < end for x in ticks):
                inside = True
                break
    finally:
        stop.set()
        t.join()
    assert inside


# ---------------------------------------------------------------------------- file calls


def test_pwrite_all_and_errors(tmp_path):
    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        data = np.random.default_rng(1).integers(0, 256, 3 << 20, np.uint8)
        _pivot.pwrite_all(fd, data, 4096)
        _pivot.pwrite_all(fd, b"", 0)  # nothing to write
        _pivot.pwrite_all(fd, b"head", 0)
        assert os.pread(fd, 4, 0) == b"head"
        assert os.pread(fd, len(data), 4096) == data.tobytes()
        assert _pivot.start_writeback(fd, 0, 1 << 20) in (0, errno.ENOSYS, errno.EINVAL)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        _pivot.pwrite_all(fd, b"x", 0)  # closed
    assert info.value.errno == errno.EBADF
    assert _pivot.start_writeback(fd, 0, 1) == errno.EBADF  # advisory: errno, no raise


def test_pwrite_many_and_errors(tmp_path):
    path = tmp_path / "m.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    rng = np.random.default_rng(3)
    try:
        a = rng.integers(0, 256, 70_000, np.uint8)
        b = rng.random(5000)  # any contiguous buffer, written as its bytes
        assert _pivot.pwrite_many(fd, [a, b, b"tail", memoryview(b"xy")],
                                  [100, 80_000, 200_000, 0]) == -1
        assert _pivot.pwrite_many(fd, [], []) == -1
        assert os.pread(fd, 2, 0) == b"xy"
        assert os.pread(fd, len(a), 100) == a.tobytes()
        assert os.pread(fd, b.nbytes, 80_000) == b.tobytes()
        assert os.pread(fd, 4, 200_000) == b"tail"
        # writeback every 64 KiB: returns where the range not yet started begins
        assert _pivot.pwrite_many(fd, [a, a], [300_000, 370_000], 300_000, 65536) == 440_000
        assert _pivot.pwrite_many(fd, [b"z" * 10], [440_000], 440_000, 65536) == 440_000
        assert os.pread(fd, len(a), 370_000) == a.tobytes()
        with pytest.raises(ValueError, match="as many offsets"):
            _pivot.pwrite_many(fd, [a], [0, 1])
        with pytest.raises((ValueError, BufferError)):
            _pivot.pwrite_many(fd, [a[::2]], [0])  # not contiguous
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        _pivot.pwrite_many(fd, [b"x"], [0])  # closed
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize("limit", [1, 1 << 20])
def test_guarded_file_background_writes(limit, tmp_path):
    """An announced chunk's write goes to the writer thread (its future done once
    written); other writes stay in this thread; reads, sync and close wait for the
    pending writes; ``limit``: bytes pending at most (1: every write waited for)."""
    path = tmp_path / "bg.bin"
    g = pivot_fileio.GuardedFile(path, writeback_bytes=8192, background_bytes=limit)
    rng = np.random.default_rng(4)
    chunks = [rng.random(3000) for _ in range(20)]
    futures = []
    try:
        g.write(b"H" * 100)
        for i, chunk in enumerate(chunks):
            g.background(chunk)
            assert g.write(memoryview(chunk).cast("B")) == chunk.nbytes
            futures.append(g.announced_future())
            assert futures[-1] is not None
            if i == 5:  # the same size, other memory: written here
                g.background(chunk)
                copy = chunk.copy()
                g.write(memoryview(copy).cast("B"))
                assert g.announced_future() is None
        assert g.announced_future() is None
        buf = bytearray(100 + 24_000 * 21)
        g.seek(0)
        assert g.readinto(buf) == len(buf)  # waits for the writer
        assert all(f.done() for f in futures)
        g.sync()
        g.check()
    finally:
        g.close()
    expect = b"H" * 100 + b"".join(c.tobytes() for c in chunks[:6]) + chunks[5].tobytes() \
        + b"".join(c.tobytes() for c in chunks[6:])
    assert bytes(buf) == expect == path.read_bytes()


def test_background_write_error_is_reported(cache, tmp_path, monkeypatch):
    """A write that fails on the writer thread (a full disk) is the pivot's error: a
    clear PivotError, no file left, the writer thread gone."""
    calls = []

    def full(fd, buffers, offsets, writeback_from=-1, writeback_bytes=0, each=False):
        calls.append(len(buffers))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pivot_fileio._native, "pwrite_many", full)
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(pivot_module.PivotError, match="disk is full"):
        pivot(cache, tmp_path / "full.h5", compression="none", channels=["engine"])
    assert calls and os.listdir(tmp_path) == []
    assert {t.name for t in threading.enumerate()} - before == set()


@pytest.mark.parametrize("writeback", [0, 4096])
def test_guarded_file_writes(impl, writeback, tmp_path):
    """Writes in any order land where asked, with writeback on or off."""
    path = tmp_path / "g.bin"
    g = pivot_fileio.GuardedFile(path, writeback_bytes=writeback)
    rng = np.random.default_rng(2)
    expect = bytearray(300_000)
    try:
        for _ in range(60):
            off = int(rng.integers(0, 250_000))
            piece = rng.integers(0, 256, int(rng.integers(1, 50_000)), np.uint8).tobytes()
            g.seek(off)
            assert g.write(piece) == len(piece)
            end = off + len(piece)
            if end > len(expect):
                expect.extend(b"\0" * (end - len(expect)))
            expect[off:end] = piece
        size = g.end
        g.truncate(size)
        g.sync()
        g.check()
        if impl == "compiled" and writeback:
            assert g.started > 0  # writeback was started along the way
        buf = bytearray(size)
        g.seek(0)
        assert g.readinto(buf) == size
    finally:
        g.close()
    assert bytes(buf) == bytes(expect[:size]) == path.read_bytes()


# ---------------------------------------------------------------------------- pivot


def _h5_values(path):
    out = {}
    with h5py.File(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
    return out


@pytest.mark.parametrize("background", [0, 2048, None])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_pivot_columns_with_small_chunks(impl, compression, background, cache, tmp_path,
                                         monkeypatch):
    """Chunks of 64 rows (int64) and batches of a few blocks: rows gathered into chunk
    buffers across batches, whole chunks straight from a batch, a padded last chunk,
    written here or by the background writer (``none``; 2048: at most that many bytes
    pending), batch memory decoded into again; h5py reads back exactly the columns the
    reader decodes."""
    monkeypatch.setattr(pivot_writer, "CHUNK_BYTES", 512)
    monkeypatch.setattr(pivot_fileio, "WRITEBACK_BYTES", 4096)
    if background is not None:
        monkeypatch.setattr(pivot_fileio, "BACKGROUND_BYTES", background)
    out = tmp_path / "small.h5"
    for batch_bytes in (700, 40_000):
        pivot(cache, out, compression=compression, force=True, batch_bytes=batch_bytes,
              threads=2)
        with ChannelReader(cache, "engine") as r:
            cols = r.read()
        with h5py.File(out) as f:
            g = f["engine"]
            assert g["time"].chunks[0] < 100 and g["time"].shape == (5000,)
            for name in cols:
                np.testing.assert_array_equal(g[name][()], cols[name])
            assert g.attrs["n_records"] == 5000


def test_pivot_same_file_compiled_and_python(cache, tmp_path, monkeypatch):
    """The compiled helpers and the pure-Python references write the same datasets."""
    pivot(cache, tmp_path / "c.h5")
    monkeypatch.setattr(pivot_fileio, "_native", None)
    monkeypatch.setattr(pivot_compression, "_native", None)
    pivot(cache, tmp_path / "p.h5")
    a, b = _h5_values(tmp_path / "c.h5"), _h5_values(tmp_path / "p.h5")
    assert sorted(a) == sorted(b) and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    with h5py.File(tmp_path / "c.h5") as f, h5py.File(tmp_path / "p.h5") as g:
        ds, ref = f["engine/rpm"], g["engine/rpm"]
        n = ds.id.get_num_chunks()
        assert n == ref.id.get_num_chunks() and n > 0
        for i in range(n):
            offset = (i * ds.chunks[0],)
            assert ds.id.read_direct_chunk(offset) == ref.id.read_direct_chunk(offset)


def _slow_create(group, name, n_rows, h5dtype, chunk_rows, kwargs, early=False):
    if early:
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        kwargs = {**kwargs, "dcpl": plist, "fill_time": "never"}
    return group.create_dataset(name, shape=(n_rows,), maxshape=(None,), dtype=h5dtype,
                                chunks=(chunk_rows,), **kwargs)


def _describe(path) -> dict:
    """Every object's attributes (value, HDF5 type, dataspace) and every dataset's type,
    shape, chunks, filters, fill value and creation properties."""
    out = {}
    with h5py.File(path) as f:
        def visit(name, obj):
            attrs = {}
            for k in obj.attrs:
                if k == "created":
                    continue
                a = h5py.h5a.open(obj.id, k.encode())
                value = obj.attrs[k]
                attrs[k] = (repr(value), a.get_type(), a.get_space().get_simple_extent_type(),
                            a.shape)
            entry = {"attrs": attrs}
            if isinstance(obj, h5py.Dataset):
                plist = obj.id.get_create_plist()
                entry.update(
                    type=obj.id.get_type(), shape=obj.shape, maxshape=obj.maxshape,
                    chunks=obj.chunks,
                    filters=[plist.get_filter(i)[:3] for i in range(plist.get_nfilters())],
                    fill=(plist.fill_value_defined(), plist.get_fill_time(),
                          plist.get_alloc_time(), plist.get_obj_track_times()),
                    layout=plist.get_layout(),
                )
            out[name] = entry
        f.visititems(visit)
    return out


@pytest.mark.parametrize("compression", ["none", "gzip", "lzf"])
def test_low_level_creation_matches_h5py(compression, cache, tmp_path, monkeypatch):
    """Datasets made from a template and attributes written by the low-level path are
    what h5py's create_dataset and attrs[k] = v make (types, dataspaces, properties)."""
    pivot(cache, tmp_path / "fast.h5", compression=compression, recv_time=True)
    monkeypatch.setattr(pivot_writer, "_create_dataset", _slow_create)
    monkeypatch.setattr(pivot_writer, "_attr_array", lambda value: None)
    pivot(cache, tmp_path / "h5py.h5", compression=compression, recv_time=True)
    fast, ref = _describe(tmp_path / "fast.h5"), _describe(tmp_path / "h5py.h5")
    assert sorted(fast) == sorted(ref)
    for name in ref:
        assert fast[name] == ref[name], name
    if H5DUMP is not None:
        dumps = []
        for p in (tmp_path / "fast.h5", tmp_path / "h5py.h5"):
            text = subprocess.run([H5DUMP, "-p", "-H", "-A", str(p)], capture_output=True,
                                  text=True, timeout=60, check=True).stdout
            text = re.sub(r'ATTRIBUTE "created" \{.*?\n   \}', "", text, flags=re.S)
            dumps.append(text.replace(str(p), "FILE"))
        assert dumps[0] == dumps[1]


def test_attr_fallback_for_other_values(tmp_path):
    """Values the fast path does not know go through h5py unchanged."""
    with h5py.File(tmp_path / "a.h5", "w") as f:
        values = {"s": "x", "b": True, "i": 3, "f": 2.5, "l": ["a", "bc"],
                  "arr": np.arange(3, dtype=np.int16), "empty": [], "none": None}
        pivot_writer._write_attrs(f, values)
        assert "none" not in f.attrs
        assert f.attrs["s"] == "x" and f.attrs["b"] is np.True_ and f.attrs["i"] == 3
        assert f.attrs["f"] == 2.5 and list(f.attrs["l"]) == ["a", "bc"]
        assert f.attrs["arr"].dtype == np.int16  # through h5py: its own dtype kept
        np.testing.assert_array_equal(f.attrs["arr"], np.arange(3))
        assert f.attrs["empty"].shape == (0,)
    assert pivot_writer._attr_array(np.arange(3)) is None
    assert pivot_writer._attr_array(np.int32(3)) is None  # h5py keeps int32
    assert pivot_writer._attr_array(2**70) is None and pivot_writer._attr_array([]) is None


# ---------------------------------------------------------------------------- decode thread


def test_prefetch_passes_errors_and_stops():
    def batches():
        yield 1
        yield 2
        raise RuntimeError("bad block")

    p = pivot_fileio.Prefetch(batches())
    got = []
    with pytest.raises(RuntimeError, match="bad block"):
        for b in p:
            got.append(b)
    p.close()
    assert got == [1, 2] and not p.thread.is_alive()

    def endless():
        i = 0
        while True:
            i += 1
            yield i

    p = pivot_fileio.Prefetch(endless(), depth=2)
    it = iter(p)
    assert next(it) == 1
    p.close()  # the producer is blocked on a full queue: it stops
    assert not p.thread.is_alive()


def test_failed_channel_stops_the_decode_thread(cache, tmp_path, monkeypatch):
    """An error while the datasets are made (the decode thread already running) leaves
    no thread and no file."""
    def broken(*args, **kwargs):
        raise RuntimeError("no datasets today")

    monkeypatch.setattr(pivot_writer, "_create_dataset", broken)
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="no datasets today"):
        pivot(cache, tmp_path / "x.h5")
    assert {t.ident for t in threading.enumerate() if t.name == "pivot-decode"} - before == set()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- streamed rows


def test_pwrite_many_each_writeback(tmp_path):
    """``each=True``: every buffer lands at its offset (the writeback of its whole pages
    started after it), in any order, pieces not page aligned."""
    fd = os.open(tmp_path / "each.bin", os.O_RDWR | os.O_CREAT, 0o644)
    rng = np.random.default_rng(7)
    expect = bytearray(200_000)
    buffers, offsets = [], []
    for off in (150_001, 3, 70_000, 8190, 120_333):
        piece = rng.integers(0, 256, int(rng.integers(1, 30_000)), np.uint8)
        buffers.append(piece)
        offsets.append(off)
        expect[off : off + len(piece)] = piece.tobytes()
    try:
        assert _pivot.pwrite_many(fd, buffers, offsets, -1, 0, True) == -1
        end = max(o + len(b) for b, o in zip(buffers, offsets, strict=True))
        assert os.pread(fd, end, 0) == bytes(expect[:end])
    finally:
        os.close(fd)


@pytest.mark.parametrize("limit", [1, 1 << 20])
def test_guarded_file_staged_writes(limit, tmp_path):
    """Staged writes go to the writer thread at flush_staged() (one future for the lot),
    land at their offsets, and reads, drain and sync wait for them; staged writes not
    yet flushed are flushed by a read."""
    path = tmp_path / "staged.bin"
    g = pivot_fileio.GuardedFile(path, writeback_bytes=8192, background_bytes=limit)
    rng = np.random.default_rng(5)
    expect = bytearray(100_000)
    try:
        assert g.streams() and g.flush_staged() is None  # nothing staged
        futures = []
        for _ in range(6):
            for _ in range(5):
                off = int(rng.integers(0, 90_000))
                piece = rng.random(int(rng.integers(1, 1000)))
                g.stage(piece, off)
                expect[off : off + piece.nbytes] = piece.tobytes()
            futures.append(g.flush_staged())
        g.stage(np.arange(10, dtype=np.int64), 0)  # read below flushes it
        expect[0:80] = np.arange(10, dtype=np.int64).tobytes()
        end = len(expect.rstrip(b"\0")) or 1
        buf = bytearray(end)
        g.seek(0)
        assert g.readinto(buf) == end
        assert all(f is not None and f.done() for f in futures)
        g.sync()
        g.check()
    finally:
        g.close()
    assert bytes(buf) == bytes(expect[:end]) == path.read_bytes()[:end]


def test_batch_buffers_wait_for_a_written_one(monkeypatch):
    """``_Buffers(limit)``: past ``limit`` buffers made, ``take`` waits for the oldest held
    one to be written and returns it; if that takes too long, the decoder makes one."""
    monkeypatch.setattr(pivot_memory, "POOL", pivot_memory.MemoryPool(0))  # none kept
    bufs = pivot_memory.Buffers(2)
    assert bufs.take() is None and bufs.take() is None  # the decoder makes two
    a, b = np.zeros(16, np.uint8), np.ones(16, np.uint8)
    fa, fb = concurrent.futures.Future(), concurrent.futures.Future()
    bufs.give(a, [fa])
    bufs.give(b, [fb])
    got = []
    t = threading.Thread(target=lambda: got.append(bufs.take()))
    t.start()
    t.join(0.2)
    assert t.is_alive() and not got  # waiting: both held
    fa.set_result(None)
    t.join(5)
    assert got and got[0] is a
    monkeypatch.setattr(pivot_memory.Buffers, "WAIT_SECONDS", 0.05)
    assert bufs.take() is None  # b still held: waited, then a new one after all
    fb.set_result(None)
    assert bufs.take() is b
    unlimited = pivot_memory.Buffers()
    unlimited.give(a, [concurrent.futures.Future()])
    assert unlimited.take() is None  # no limit: never waits


def test_background_writes_in_file_order_unless_they_overlap():
    """The writer thread writes a queue of disjoint pieces in file order (adjacent ones
    then make one writeback range); overlapping ones keep the order they were staged in,
    so that the later write wins as it would have."""
    a, b, c = np.zeros(10, np.uint8), np.ones(10, np.uint8), np.full(10, 2, np.uint8)
    disjoint = [(a, 20, None), (b, 0, None), (c, 10, None)]
    assert [off for _, off, _ in pivot_fileio._in_file_order(disjoint)] == [0, 10, 20]
    overlapping = [(a, 20, None), (b, 0, None), (c, 15, None)]  # c overlaps a
    assert pivot_fileio._in_file_order(overlapping) == overlapping


def test_pwrite_many_adjacent_buffers(tmp_path):
    """``each=True`` with buffers that follow each other in the file (one writeback
    range for them) and gaps between runs: every byte lands at its place."""
    path = tmp_path / "runs.bin"
    rng = np.random.default_rng(9)
    pieces = [rng.integers(0, 256, int(k), dtype=np.uint8) for k in (5000, 3000, 8192, 100, 7)]
    offsets = [0, 5000, 8000, 20000, 20100]  # two runs: [0, 16192) and [20000, 20107)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _pivot.pwrite_many(fd, pieces, offsets, -1, 0, True)
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert len(data) == 20107
    for piece, off in zip(pieces, offsets, strict=True):
        assert data[off : off + piece.nbytes] == piece.tobytes()
    assert data[16192:20000] == bytes(20000 - 16192)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_datasets_made_with_the_first_batch(compression, cache, tmp_path, monkeypatch):
    """Datasets made after the first batch arrived (given its rows at once) hold what
    they hold when all are made first, in both channels (numbers, strings, validity)."""
    monkeypatch.setattr(pivot_setfile, "FIRST_DATASETS", 10**6)
    pivot(cache, tmp_path / "first.h5", compression=compression, recv_time=True,
          batch_bytes=64 * 1024)
    monkeypatch.setattr(pivot_setfile, "FIRST_DATASETS", 1)
    pivot(cache, tmp_path / "later.h5", compression=compression, recv_time=True,
          batch_bytes=64 * 1024)
    with h5py.File(tmp_path / "first.h5") as a, h5py.File(tmp_path / "later.h5") as b:
        names = []
        a.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset)
                     else None)
        assert len(names) > 10
        for name in names:
            x, y = a[name][()], b[name][()]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            if x.dtype.kind == "f":
                np.testing.assert_array_equal(x, y, err_msg=name)
            else:
                assert x.tolist() == y.tolist(), name
            assert dict(a[name].attrs).keys() == dict(b[name].attrs).keys(), name


def test_batch_memory_is_kept_for_the_next_pivot(monkeypatch, cache, tmp_path):
    """The batch memory of a pivot goes to the process's pool (up to its limit), the next
    pivot decodes into it instead of new memory, and ``release_memory`` empties it."""
    pool = pivot_memory.MemoryPool(pivot_memory.POOL_BYTES)
    monkeypatch.setattr(pivot_memory, "POOL", pool)
    given = []
    take = pool.take
    monkeypatch.setattr(pool, "take", lambda: given.append(take()) or given[-1])
    small = 256 * 1024  # several batches
    pivot(cache, tmp_path / "1.h5", compression="none", channels=["engine"], batch_bytes=small)
    kept = {id(m) for m in pool.buffers}
    assert kept and pool.nbytes == sum(m.nbytes for m in pool.buffers) <= pool.limit
    assert not any(m is not None for m in given)  # the first pivot: nothing to reuse
    pivot(cache, tmp_path / "2.h5", compression="none", channels=["engine"], batch_bytes=small)
    assert {id(m) for m in given if m is not None} & kept  # decoded into the kept memory
    expect = speeddata.load(tmp_path / "1.h5", "engine")
    got = speeddata.load(tmp_path / "2.h5", "engine")
    assert got.n_rows == expect.n_rows and all(
        np.array_equal(got[k], expect[k]) for k in expect if got[k].dtype.kind in "biuf")
    held = pool.nbytes
    assert held > 0 and pivot_module.release_memory() >= held  # (+ free column memory)
    assert pool.nbytes == 0 and not pool.buffers
    # chunk buffers (gathered rows of the compressed chunks) are kept and reused too
    taken = []
    take_chunk = pool.take_chunk
    monkeypatch.setattr(pool, "take_chunk", lambda n: taken.append(take_chunk(n)) or taken[-1])
    tiny = 32 * 1024  # batches smaller than a chunk: rows gathered into chunk buffers
    pivot(cache, tmp_path / "3.h5", compression="gzip", channels=["engine"], batch_bytes=tiny)
    assert pool.chunks and not any(m is not None for m in taken)
    kept = {id(m) for ms in pool.chunks.values() for m in ms}
    taken.clear()
    pivot(cache, tmp_path / "4.h5", compression="gzip", channels=["engine"], batch_bytes=tiny)
    assert {id(m) for m in taken if m is not None} & kept
    got = speeddata.load(tmp_path / "4.h5", "engine")
    assert all(np.array_equal(got[k], expect[k]) for k in expect if got[k].dtype.kind in "biuf")
    full = pivot_memory.MemoryPool(100)
    full.give(np.zeros(60, np.uint8))
    full.give(np.zeros(60, np.uint8))  # over the limit: let go
    assert full.nbytes == 60 and full.take().nbytes == 60 and full.take() is None


def _streamed_spy(monkeypatch):
    """Count the chunk writes through HDF5 and the streamed flushes of a pivot."""
    calls = {"submit": 0, "flush": 0}
    submit, flush = pivot_writer.DatasetWriter._submit, pivot_fileio.GuardedFile.flush_staged

    def spy_submit(self, *args):
        calls["submit"] += 1
        return submit(self, *args)

    def spy_flush(self):
        future = flush(self)
        calls["flush"] += future is not None
        return future

    monkeypatch.setattr(pivot_writer.DatasetWriter, "_submit", spy_submit)
    monkeypatch.setattr(pivot_fileio.GuardedFile, "flush_staged", spy_flush)
    return calls


def test_none_streams_rows_to_early_allocated_chunks(cache, tmp_path, monkeypatch):
    """``none``: fixed-size datasets are made with every chunk allocated and no fill
    (early, never), their rows written straight to the chunks (no chunk through HDF5);
    strings keep HDF5's writes; the file reads back right after reopening, also by
    h5dump; ``gzip`` keeps the chunk path."""
    monkeypatch.setattr(pivot_writer, "CHUNK_BYTES", 512)
    calls = _streamed_spy(monkeypatch)
    out = tmp_path / "streamed.h5"
    for batch_bytes in (700, 40_000):
        calls.update(submit=0, flush=0)
        pivot(cache, out, compression="none", force=True, batch_bytes=batch_bytes,
              recv_time=True)
        assert calls["submit"] == 0 and calls["flush"] > 0
        with h5py.File(out) as f:
            for channel in ("engine", "status"):
                with ChannelReader(cache, channel) as r:
                    cols = r.read(recv_time=True)
                g = f[channel]
                for name in cols:
                    if h5py.check_string_dtype(g[name].dtype) is not None:
                        nul = [str(v).replace("\0", "\u2400") for v in cols[name]]
                        assert list(g[name].asstr()[()]) == nul
                    else:
                        np.testing.assert_array_equal(g[name][()], cols[name])
                for name, valid in cols.valid.items():
                    if f"{name}.valid" in g:
                        np.testing.assert_array_equal(g[f"{name}.valid"][()], valid)
                for name, ds in g.items():
                    plist = ds.id.get_create_plist()
                    fixed = h5py.check_string_dtype(ds.dtype) is None
                    assert (plist.get_alloc_time() == h5py.h5d.ALLOC_TIME_EARLY) == fixed, name
                    if fixed:
                        assert plist.get_fill_time() == h5py.h5d.FILL_TIME_NEVER
                        assert ds.id.get_num_chunks() == -(-ds.shape[0] // ds.chunks[0])
    if H5DUMP is not None:
        r = subprocess.run([H5DUMP, "-d", "/engine/counter", str(out)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "4999" in r.stdout
    calls.update(submit=0, flush=0)
    pivot(cache, out, compression="gzip", force=True)
    assert calls["submit"] > 0 and calls["flush"] == 0
    with h5py.File(out) as f:
        alloc = f["engine/rpm"].id.get_create_plist().get_alloc_time()
        assert alloc != h5py.h5d.ALLOC_TIME_EARLY


@pytest.mark.parametrize("every", [None, 3])
def test_streamed_range_cut_mid_block(every, cache, tmp_path, monkeypatch):
    """A range that starts and ends inside blocks has fewer rows than the datasets are
    made with (whole blocks): the streamed rows read back right after the shrink, the
    chunks past the end are gone and the edge chunk's unwritten rows are never read."""
    monkeypatch.setattr(pivot_writer, "CHUNK_BYTES", 128)  # 16 rows of int64
    start, end = T0 + 1234 * MS + 1, T0 + 3777 * MS + 1  # rows 1235 .. 3777
    with ChannelReader(cache, "engine", start, end) as r:
        n_max = r.n_rows_max
        cols = r.read()
    expect = np.arange(1235, 3778)[::every or 1]
    assert n_max > len(cols["counter"]) + 50  # whole blocks counted: cut at both ends
    out = tmp_path / "cut.h5"
    calls = _streamed_spy(monkeypatch)
    result = pivot(cache, out, start=start, end=end, channels=["engine"], compression="none",
                   every=every, batch_bytes=2000)
    assert calls["submit"] == 0 and calls["flush"] > 0
    assert result.channels["engine"] == len(expect)
    with h5py.File(out) as f:
        g = f["engine"]
        np.testing.assert_array_equal(g["counter"][()], expect)
        step = every or 1
        for name in cols:
            np.testing.assert_array_equal(g[name][()], cols[name][::step])
        ds = g["rpm"]
        assert ds.shape == (len(expect),)
        assert ds.id.get_num_chunks() == -(-len(expect) // ds.chunks[0])
        assert g.attrs["t_first_ns"] == T0 + 1235 * MS
