"""Unit tests of the live state: M4 columns (both paths) against downsample.columns, the
1-2-5 ladder, the frame format, the summary rings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speeddata import downsample
from speeddata.server.live import Level, _bucket_m4, join_m4, ladder_width
from speeddata.server.ws import (
    columns_blocks,
    decode_frame,
    encode_frame,
    gaps_block,
    latest_block,
    latest_blocks,
)


def test_ladder_is_1_2_5_and_never_more_columns_than_pixels():
    assert ladder_width(30 * 10**9, 1000) == 50_000_000
    assert ladder_width(10**9, 1000) == 1_000_000
    assert ladder_width(600 * 10**9, 1000) == 1_000_000_000
    assert ladder_width(7, 1000) == 1
    rng = np.random.default_rng(0)
    for span, px in zip(rng.integers(1, 10**13, 200), rng.integers(1, 5000, 200),
                        strict=True):
        w = ladder_width(int(span), int(px))
        mantissa = w // 10 ** (len(str(w)) - 1)
        assert mantissa in (1, 2, 5) and w == mantissa * 10 ** (len(str(w)) - 1)
        assert -(-int(span) // w) <= px
        smaller = [m * 10**e for e in range(20) for m in (1, 2, 5) if m * 10**e < w]
        if smaller:
            assert -(-int(span) // max(smaller)) > px


@pytest.mark.parametrize("rows_per_column", [0.3, 3, 50])
def test_bucket_m4_matches_downsample_columns(rows_per_column):
    rng = np.random.default_rng(1)
    n_cols, width = 200, 1000
    n = int(n_cols * rows_per_column)
    t = np.sort(rng.integers(-5000, n_cols * width + 5000, n)).astype(np.int64)
    x = rng.normal(size=(n, 3))
    x[rng.random(n) < 0.1, 1] = np.nan
    m4 = _bucket_m4(t, x, 7, n_cols - 7, width)
    for j in range(3):
        ref = downsample.columns(t, x[:, j], 7 * width, width, n_cols - 7)
        np.testing.assert_array_equal(m4.count, ref.count)
        for name in ("first", "min", "max", "last"):
            np.testing.assert_array_equal(getattr(m4, name)[:, j], getattr(ref, name))
    # split in two batches and joined: the same columns
    half = n // 2
    parts = [_bucket_m4(t[:half], x[:half], 7, n_cols - 7, width),
             _bucket_m4(t[half:], x[half:], 7, n_cols - 7, width)]
    joined = join_m4(parts, 7, n_cols - 7, 3)
    np.testing.assert_array_equal(joined.count, m4.count)
    for name in ("first", "min", "max", "last"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(m4, name))


def test_level_ring_overwrites_old_buckets_and_combines_equal_ones():
    lv = Level(10, 8, 1)
    t = np.arange(0, 200, 3, dtype=np.int64)
    x = t.astype(float).reshape(-1, 1)
    for i in range(0, len(t), 5):  # batch by batch, buckets split across batches
        lv.add(downsample.bucketize(t[i:i + 5], x[i:i + 5], 10, 0))
    assert lv.newest == 19 and lv.covers_from() == 120
    m4 = lv.columns(12, 8, 1)
    ref = downsample.columns(t, x[:, 0], 120, 10, 8)
    np.testing.assert_array_equal(m4.count, ref.count)
    np.testing.assert_array_equal(m4.first[:, 0], ref.first)
    np.testing.assert_array_equal(m4.last[:, 0], ref.last)
    m4 = lv.columns(6, 2, 2)  # width 20 from two buckets each
    ref = downsample.columns(t, x[:, 0], 120, 20, 4)
    np.testing.assert_array_equal(m4.min[:, 0], ref.min[:2])


def test_frame_layout_is_aligned_and_round_trips():
    m4 = _bucket_m4(np.arange(10, dtype=np.int64), np.arange(20.0).reshape(10, 2), 0, 5, 2)
    blocks = columns_blocks(3, [0, 1], [0, 1], m4)
    blocks.append(latest_block(3, 1, 12.5, 7.0))
    blocks.append(gaps_block(3, 0, [(1_000_000_000, 2_000_000_000)]))
    frame = encode_frame(blocks, 99.5)
    assert frame[:4] == b"SDF1" and len(frame) % 8 == 0
    assert all(len(b) % 8 == 0 for b in blocks)
    parsed = decode_frame(frame)
    assert parsed["now_s"] == 99.5 and len(parsed["blocks"]) == 4
    c = parsed["blocks"][1]
    assert (c["type"], c["sub"], c["signal"], c["first_column"]) == (1, 3, 1, 0)
    np.testing.assert_array_equal(c["count"], [2, 2, 2, 2, 2])
    np.testing.assert_array_equal(c["first"], [1, 5, 9, 13, 17])
    np.testing.assert_array_equal(c["max"], [3, 7, 11, 15, 19])
    assert parsed["blocks"][2]["value"] == 7.0 and parsed["blocks"][2]["time_s"] == 12.5
    g = parsed["blocks"][3]
    assert list(g["start_s"]) == [1.0] and list(g["end_s"]) == [2.0]
    # several latest blocks at once: the same bytes as one by one
    many = latest_blocks(3, np.array([0, 4]), np.array([1.5, 2.5]), np.array([np.nan, 9.0]))
    assert many == latest_block(3, 0, 1.5, np.nan) + latest_block(3, 4, 2.5, 9.0)
    parsed = decode_frame(encode_frame([many], 1.0, 2))
    assert [b["signal"] for b in parsed["blocks"]] == [0, 4]


def test_memory_bound_holds_for_many_channels_and_shrinks_keep_the_newest(tmp_path):
    import time

    from conftest import SCHEMAS, free_udp_port, random_group
    from relay_helpers import encode, engine_record
    from speeddata.schema import Schema
    from speeddata.server.live import Intake

    schema = Schema(SCHEMAS / "engine.avsc")
    memory = 4 << 20
    intake = Intake((random_group(), free_udp_port()), memory=memory, window=600)
    try:
        t0 = time.time_ns()
        payload = np.frombuffer(encode(schema, [engine_record(i, t0=t0) for i in range(400)]),
                                np.uint8)
        size = len(payload) // 400
        for cid in range(1, 11):
            ann = {"id": cid, "name": f"ch{cid}", "schema": schema.avsc, "decimation": 1,
                   "time": "time"}
            intake._announce(0x7F000001, json.dumps(ann).encode())
            for ch in intake.channels.values():  # everyone gets more rows than fit
                for rep in range(40):
                    start = np.array([0], np.int64)
                    ch.ingest(payload, start, np.array([len(payload)], np.int64),
                              np.array([400], np.int64), np.array([ch.datagrams], np.uint64),
                              np.array([t0], np.int64))
                    del rep
            assert intake.memory_reserved() <= memory
            assert intake.memory_used() <= memory
        assert intake.shares == 16 and len(intake.channels) == 10
        ch = intake.by_name("ch1")
        t, x = ch.raw_rows(0, 2**62)
        assert len(t) == min(ch.capacity, ch.n_rows) and size > 0
        # the newest rows survived the shrinks
        assert x[-1, ch.numeric.index("rpm")] == 1000.0 + 399
    finally:
        intake.close()


def test_export_progress_is_read_off_the_pivot_progress_bar(tmp_path):
    from speeddata.server.exports import ProgressSink, parse_spec

    state = {"done": 0.0, "state": "running"}
    path = tmp_path / "x.json"
    sink = ProgressSink(path, state)
    sink.write("\rpivot engine           [#########                     ]  31.5%   12.0 MB/s")
    assert json.loads(path.read_text())["done"] == 0.315
    sink.write("\rpivot engine [####] 100.0%")  # too soon after the last: not written yet
    assert json.loads(path.read_text())["done"] == 0.315
    assert state["done"] == 0.315
    assert parse_spec({"tag": "lap-1"}) == {"tag": "lap-1"}
    for bad in ({}, {"tag": "../x"}, {"start_ns": 5, "end_ns": 1}, {"start_ns": 1},
                {"tag": "a", "extra": 1}, {"start_ns": 1, "end_ns": 2, "signals": []},
                {"start_ns": 1, "end_ns": 2, "compression": "zip"}, []):
        with pytest.raises(ValueError):
            parse_spec(bad)


@pytest.mark.parametrize("block_copy", [True, False])
def test_all_double_channel_rows_reach_the_ring_whole(block_copy):
    import time

    from speeddata.schema import Schema
    from speeddata.server.live import LiveChannel
    from speeddata.source import Source

    fields = [{"name": f"x{i}", "type": "double"} for i in range(5)]
    schema = Schema({"type": "record", "name": "wide", "fields": [
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
        *fields]})
    ann = {"id": 1, "name": "wide", "schema": schema.avsc, "decimation": 1, "time": "time"}
    ch = LiveChannel("127.0.0.1", ann, "wide", 1, 1 << 16, 600 * 10**9)
    assert ch.plain_doubles and ch.capacity == 1024  # a small ring: it wraps
    ch.plain_doubles = block_copy
    src = Source("wide", schema, ("127.0.0.1", 9))
    t0 = time.time_ns()
    n_total = 0
    for b in range(40):
        n = 17 + b  # uneven batches
        arr = np.zeros(n, [(f["name"], "<f8") for f in fields])
        for i, f in enumerate(fields):
            arr[f["name"]] = (n_total + np.arange(n)) * 10.0 + i
        data, ends = src.encode_array(arr, t0 + (n_total + np.arange(n)) * 1000)
        buf = np.frombuffer(bytes(data), np.uint8)
        ch.ingest(buf, np.array([0]), np.array([len(buf)]), np.array([n]),
                  np.array([b], np.uint64), np.array([t0], np.int64))
        n_total += n
    src.close()
    t, x = ch.raw_rows(0, 2**62)
    assert len(t) == ch.capacity
    k = np.arange(n_total - ch.capacity, n_total)
    np.testing.assert_array_equal(t, t0 + k * 1000)
    for i in range(5):
        np.testing.assert_array_equal(x[:, i], k * 10.0 + i)
    assert ch.latest_v[4] == (n_total - 1) * 10.0 + 4
