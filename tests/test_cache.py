"""The cache files (docs/cache.md): writer, crash recovery, retention, summaries.

fastavro reads every segment these tests leave behind.
"""

from __future__ import annotations

import os

import fastavro
import numpy as np
import pytest

from conftest import SCHEMAS
from relay_helpers import encode, engine_record
from speeddata import cache
from speeddata.cache import (
    IDX_DTYPE,
    RECV_DTYPE,
    Segment,
    SegmentWriter,
    budget_bytes,
    channel_summary,
    enforce_retention,
    list_segments,
    recover_cache,
    recover_segment,
    segment_needs_recovery,
    segment_stem,
)
from speeddata.schema import Schema
from speeddata.validate import PyValidator

T0 = 1_700_000_000_000_000_000


@pytest.fixture
def schema() -> Schema:
    return Schema(SCHEMAS / "engine.avsc")


def write_segment(d, schema, blocks, t_open_ns=None, size=64 * 1024, close=True):
    """``blocks``: lists of record indexes, one datagram per record."""
    w = SegmentWriter(d, schema, "engine", 1, size, t_open_ns=t_open_ns)
    seq = 0
    for block in blocks:
        datagrams = [encode(schema, [engine_record(i)]) for i in block]
        times = [engine_record(i)["time"] for i in block]
        w.append(
            datagrams,
            [T0 + seq + k for k in range(len(block))],
            list(range(seq, seq + len(block))),
            [1] * len(block),
            min(times),
            max(times),
        )
        seq += len(block)
    if close:
        w.close()
    return w


def read(path) -> list[dict]:
    with open(path, "rb") as f:
        return list(fastavro.reader(f))


def test_writer_files_read_by_fastavro(tmp_path, schema):
    w = write_segment(tmp_path / "engine", schema, [[0, 1, 2], [3], [4, 5]])
    seg = w.segment
    assert read(seg.avro) == [engine_record(i) for i in range(6)]
    with open(seg.avro, "rb") as f:
        reader = fastavro.reader(f)
        assert reader.metadata["speeddata.channel"] == "engine"
        assert reader.metadata["speeddata.channel_id"] == "1"
    idx, recv = seg.read_index(), seg.read_recv()
    assert idx.dtype == IDX_DTYPE and recv.dtype == RECV_DTYPE
    assert list(idx["n_records"]) == [3, 1, 2] and list(idx["n_datagrams"]) == [3, 1, 2]
    assert list(idx["seq_first"]) == [0, 3, 4]
    assert list(recv["seq"]) == list(range(6))
    assert seg.avro.stat().st_size == int(idx["offset"][-1] + idx["size"][-1])
    assert not segment_needs_recovery(seg)


def test_writer_preallocates_and_trims(tmp_path, schema):
    w = write_segment(tmp_path / "engine", schema, [[0]], close=False)
    st = w.segment.avro.stat()
    assert st.st_size == 64 * 1024
    assert st.st_blocks * 512 >= 64 * 1024  # reserved, not sparse (posix_fallocate)
    assert segment_needs_recovery(w.segment)
    w.close()
    assert not segment_needs_recovery(w.segment)


def test_writer_failure_removes_its_files(tmp_path, schema, monkeypatch):
    def full(fd, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "preallocate", full)
    with pytest.raises(OSError):
        SegmentWriter(tmp_path / "engine", schema, "engine", 1, 64 * 1024)
    assert list((tmp_path / "engine").iterdir()) == []


def test_recover_trims_partial_block(tmp_path, schema):
    w = write_segment(tmp_path / "engine", schema, [[0, 1], [2, 3], [4]], close=False)
    # a crash while the last block was being copied: its index entry exists, its bytes half
    idx = w.segment.read_index()
    last = int(idx["offset"][-1])
    w._map[last + 5 : last + int(idx["size"][-1])] = bytes(int(idx["size"][-1]) - 5)
    w._map.close()
    os.close(w._fd)
    w._idx.close()
    w._recv.close()
    assert segment_needs_recovery(w.segment)
    good, dropped = recover_segment(w.segment, PyValidator(schema))
    assert (good, dropped) == (2, 1)
    assert read(w.segment.avro) == [engine_record(i) for i in range(4)]
    assert len(w.segment.read_recv()) == 4
    assert not segment_needs_recovery(w.segment)


def test_recover_index_beyond_data_and_bad_records(tmp_path, schema):
    w = write_segment(tmp_path / "engine", schema, [[0], [1], [2]], close=False)
    idx = w.segment.read_index()
    # damage a record of block 2 so that only the validator notices (sync stays intact)
    record = encode(schema, [engine_record(1)])
    state_at = 9 + 8 + 8 + 8 + 4  # time varint, rpm, torque, temperature, throttle
    assert record[state_at] == 2  # zigzag 1 = RUN
    w._map[int(idx["offset"][1]) + 2 + state_at] = 6  # enum index 3 of 3 symbols
    w._map.close()
    os.close(w._fd)
    w._idx.close()
    w._recv.close()
    with open(w.segment.idx, "ab") as f:  # and an index entry for a block never written
        f.write(np.zeros(1, IDX_DTYPE).tobytes())
    good, dropped = recover_segment(w.segment, PyValidator(schema))
    assert (good, dropped) == (1, 3)
    assert read(w.segment.avro) == [engine_record(0)]


def test_recover_cache_every_channel(tmp_path, schema):
    root = tmp_path / "cache"
    clean = write_segment(root / "engine", schema, [[0]], t_open_ns=T0)
    crashed = write_segment(root / "engine", schema, [[1], [2]], t_open_ns=T0 + 1, close=False)
    crashed._map.close()
    os.close(crashed._fd)
    crashed._idx.close()
    crashed._recv.close()
    # a segment created but never given its header (crash right after open)
    (root / "other").mkdir()
    headerless = Segment(root / "other" / f"{segment_stem(T0)}.avro")
    headerless.avro.write_bytes(bytes(4096))
    made = []

    def make_validator(schema_json):
        made.append(schema_json)
        return PyValidator(Schema(schema_json))

    result = recover_cache(root, make_validator)
    assert {s.avro for s, _, _ in result} == {crashed.segment.avro, headerless.avro}
    assert made == [schema.json]  # built from the segment's own header
    assert not headerless.avro.exists()
    assert read(clean.segment.avro) == [engine_record(0)]
    assert read(crashed.segment.avro) == [engine_record(1), engine_record(2)]
    assert recover_cache(root, make_validator) == []  # idempotent


def test_retention_budget_pinned_and_open(tmp_path, schema):
    root = tmp_path / "cache"
    segs = [
        write_segment(root / "engine", schema, [[i]], t_open_ns=T0 + i * 10**9).segment
        for i in range(6)
    ]
    size = cache.segment_bytes(segs[0])
    tag = root / "tags" / "keep" / "engine"
    tag.mkdir(parents=True)
    os.link(segs[0].avro, tag / segs[0].avro.name)  # pinned
    deleted = enforce_retention(root, budget_bytes=3 * size, open_segments={segs[1].avro})
    # oldest unpinned, unopened first, until 3 segments' worth remain
    assert [s.avro for s in deleted] == [segs[2].avro, segs[3].avro, segs[4].avro]
    assert list_segments(root, "engine") == [segs[0], segs[1], segs[5]]
    # removing the tag lets retention delete the segment again
    (tag / segs[0].avro.name).unlink()
    deleted = enforce_retention(root, budget_bytes=2 * size, open_segments={segs[1].avro})
    assert [s.avro for s in deleted] == [segs[0].avro]


def test_retention_by_age(tmp_path, schema):
    root = tmp_path / "cache"
    segs = [
        write_segment(root / "engine", schema, [[i]], t_open_ns=T0 + i * 10**9).segment
        for i in range(4)
    ]
    deleted = enforce_retention(root, 10**12, max_age=1.5, now_ns=T0 + 3 * 10**9)
    assert [s.avro for s in deleted] == [segs[0].avro, segs[1].avro]


def test_channel_summary(tmp_path, schema):
    root = tmp_path / "cache"
    assert channel_summary(root, "engine") == {
        "segments": 0,
        "bytes": 0,
        "allocated": 0,
        "oldest_ns": None,
        "newest_ns": None,
    }
    write_segment(root / "engine", schema, [[0, 1]], t_open_ns=T0)
    write_segment(root / "engine", schema, [[2], [3, 4]], t_open_ns=T0 + 1)
    SegmentWriter(root / "engine", schema, "engine", 1, 64 * 1024, t_open_ns=T0 + 2).close()
    s = channel_summary(root, "engine")
    assert s["segments"] == 3
    assert s["oldest_ns"] == engine_record(0)["time"]
    assert s["newest_ns"] == engine_record(4)["time"]  # the empty newest segment is skipped
    assert s["bytes"] == sum(cache.segment_bytes(x) for x in list_segments(root, "engine"))
    assert s["allocated"] == s["bytes"]  # all closed: trimmed to their data


def test_channel_summary_counts_data_not_preallocation(tmp_path, schema):
    """Issue 10, item 19: a segment being written is pre-allocated (64 KiB here); the
    summary reports the bytes of data it holds, the allocation separately."""
    root = tmp_path / "cache"
    w = write_segment(root / "engine", schema, [[0]], t_open_ns=T0, close=False)
    try:
        s = channel_summary(root, "engine")
        assert s["allocated"] >= 64 * 1024
        assert s["bytes"] == w.end + 40 + 16 < 2000  # header + block, one index entry, one recv
        assert cache.segment_data_bytes(w.segment) == s["bytes"]
    finally:
        w.close()
    assert channel_summary(root, "engine")["bytes"] == cache.segment_bytes(w.segment)


def test_budget_bytes(tmp_path):
    assert budget_bytes(("bytes", 1234.0), tmp_path) == 1234
    st = os.statvfs(tmp_path)
    assert budget_bytes(("share", 0.5), tmp_path) == int(0.5 * st.f_blocks * st.f_frsize)


def test_stem_sorts_by_time():
    stems = [segment_stem(T0 + d) for d in (0, 1, 999_999_999, 10**9, 86400 * 10**9)]
    assert stems == sorted(stems) and len(set(stems)) == len(stems)
    assert cache.segment_time_ns(Segment(cache.Path(f"/x/{stems[2]}.avro"))) == T0 + 999_999_999


def test_segment_data_bytes_remembered_until_the_files_change(tmp_path, schema):
    """The retention pass asks for every segment every few seconds: the answer is kept
    while the segment's files are unchanged, and recomputed as soon as a block lands."""
    root = tmp_path / "cache"
    w = write_segment(root / "engine", schema, [[0]], t_open_ns=T0, close=False)
    try:
        first = cache.segment_data_bytes(w.segment)
        assert first == cache._segment_data_bytes(w.segment, None)
        assert cache.segment_data_bytes(w.segment) == first  # from the memo
        datagrams = [encode(schema, [engine_record(1)]), encode(schema, [engine_record(2)])]
        t = engine_record(1)["time"]
        w.append(datagrams, [T0 + 1, T0 + 2], [1, 2], [1, 1], t, engine_record(2)["time"])
        second = cache.segment_data_bytes(w.segment)
        assert second == cache._segment_data_bytes(w.segment, None) > first
        assert cache.segment_data_bytes(w.segment, 1) == first  # the first block only
    finally:
        w.close()
    assert cache.segment_data_bytes(w.segment) == cache.segment_bytes(w.segment)


def test_segment_data_bytes_memo_forgets_deleted_segments(tmp_path, schema, monkeypatch):
    monkeypatch.setattr(cache, "_DATA_BYTES", {})
    monkeypatch.setattr(cache, "_data_bytes_limit", 4)
    root = tmp_path / "cache"
    segments = [
        write_segment(root / "engine", schema, [[i]], t_open_ns=T0 + i).segment
        for i in range(6)
    ]
    for seg in segments[:3]:
        cache.segment_data_bytes(seg)
        for p in seg.files():
            p.unlink()
    for seg in segments[3:]:
        assert cache.segment_data_bytes(seg) == cache.segment_bytes(seg)
    held = {memo[0] for memo in cache._DATA_BYTES}
    assert not held & {str(seg.avro) for seg in segments[:3]}  # the deleted ones went
    assert held == {str(seg.avro) for seg in segments[3:]}
