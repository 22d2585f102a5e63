"""speeddata.read: cache segments -> numpy columns, over time ranges, for both decoders;
open segments; time parsing; bad input."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

import speeddata
from _cachedata import ALL_TYPES, T0, all_types_record, assert_column_equal, write_channel
from speeddata.cache import IDX_DTYPE, Segment
from speeddata.reader import ReadError, format_time, parse_time
from speeddata.schema import Schema


@pytest.fixture(params=["compiled", "python"])
def decoder(request):
    return request.param


@pytest.fixture(scope="module")
def all_types_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    written = write_channel(cache, "alltypes", ALL_TYPES, all_types_record, 400,
                            blocks_per_segment=4)
    assert len(written.segments) > 3
    return cache, written


def test_round_trip_every_type(all_types_cache, decoder):
    cache, w = all_types_cache
    cols = speeddata.read(cache, "alltypes", recv_time=True, decoder=decoder)
    schema = w.schema
    assert cols.n_rows == 400
    assert cols["time"].tolist() == w.time_ns
    assert cols["recv_time"].tolist() == w.recv_ns
    # the time field is micros: the raw signal is kept as "time.signal"
    assert cols["time.signal"].tolist() == [r["time"] for r in w.records]
    for sig in schema.signals:
        if sig.name == "time":
            continue
        assert_column_equal(schema, sig.name, cols[sig.name], w.records, cols.valid.get(sig.name))
    assert cols.symbols("e") == ("IDLE", "RUN", "FAULT")
    assert cols.labels("e").tolist() == [r["e"] for r in w.records]
    masked = cols.masked("ni")
    assert masked.mask.tolist() == [r["ni"] is None for r in w.records]
    assert np.ma.count_masked(cols.masked("nd")) == sum(r["nd"] is None for r in w.records)
    assert cols.signals["i"].unit == "count" and cols.signals["d"].doc == "a double"
    assert cols.datetimes()[0] == np.datetime64(T0, "ns")


def test_time_range_trims_to_half_open_interval(all_types_cache, decoder):
    cache, w = all_types_cache
    times = np.array(w.time_ns)
    start, end = T0 + 37_000_000, T0 + 251_000_000  # exactly on records 37 and 251
    cols = speeddata.read(cache, "alltypes", start, end, ["i", "s"], decoder=decoder)
    keep = (times >= start) & (times < end)
    assert cols["time"].tolist() == times[keep].tolist()
    assert cols.n_rows == 251 - 37
    assert list(cols) == ["time", "i", "s"]
    picked = [r for r, k in zip(w.records, keep, strict=True) if k]
    assert_column_equal(w.schema, "s", cols["s"], picked)


def test_only_blocks_in_range_are_decoded(all_types_cache, monkeypatch):
    cache, w = all_types_cache
    from speeddata import _columns

    seen = []
    real = _columns.BlockDecoder

    class Counting(real):
        def decode(self, buffer, start, size, count):
            seen.append(int(np.sum(count)))
            return super().decode(buffer, start, size, count)

    monkeypatch.setattr(_columns, "BlockDecoder", Counting)
    cols = speeddata.read(cache, "alltypes", T0 + 100_000_000, T0 + 110_000_000)
    assert cols.n_rows == 10
    # blocks of 12 records: at most the two blocks holding records 100..109
    assert 10 <= sum(seen) <= 24


def test_signal_globs_and_errors(all_types_cache):
    cache, _ = all_types_cache
    cols = speeddata.read(cache, "alltypes", signals=["n?", "rec.*", "alltypes.by"])
    assert list(cols) == ["time", "by", "nd", "nf", "ni", "nl", "ns", "nb", "ne",
                          "rec.a", "rec.deep.z"]
    with pytest.raises(ReadError, match=r"no signal .* matches 'volts'.*signals: \["):
        speeddata.read(cache, "alltypes", signals=["volts"])
    with pytest.raises(ReadError, match=r"no channel 'nope'.*channels: \['alltypes'\]"):
        speeddata.read(cache, "nope")
    with pytest.raises(ReadError, match="empty time range"):
        speeddata.read(cache, "alltypes", T0 + 10, T0 + 10)
    # issue 10, item 20: it said "channels: none"
    with pytest.raises(ReadError, match=r"no such folder '.*nodir': give the cache folder"):
        speeddata.read(cache / "nodir", "alltypes")
    empty = speeddata.read(cache, "alltypes", T0 - 10_000, T0 - 5_000, ["d", "s"])
    assert empty.n_rows == 0 and empty["d"].dtype == np.float64 and list(empty) == [
        "time", "d", "s"]


def test_channel_without_time_field_uses_receive_time(tmp_path, schemas_dir, decoder):
    schema = Schema(schemas_dir / "fixed.avsc")
    assert schema.time_field is None

    def rec(k, rng):
        return {"x": k * 0.5, "y": -k * 1.0, "z": 1e-3 * k, "ok": k % 3 == 0}

    w = write_channel(tmp_path, "vib", schema, rec, 90, records_per_datagram=5)
    cols = speeddata.read(tmp_path, "vib", decoder=decoder)
    assert cols["time"].tolist() == w.recv_ns
    assert cols["x"].tolist() == [k * 0.5 for k in range(90)]
    sub = speeddata.read(tmp_path, "vib", w.dgram_recv_ns[3], w.dgram_recv_ns[7], decoder=decoder)
    assert sub["x"].tolist() == [k * 0.5 for k in range(15, 35)]


@pytest.mark.parametrize("threads", [1, 2])
def test_fixed_layout_records_view(tmp_path, schemas_dir, threads):
    """contiguous=False: the same values as strided views of one structured array
    (Columns.records), trimmed to the range like the columns."""
    schema = Schema(schemas_dir / "fixed.avsc")

    def rec(k, rng):
        return {"x": k * 0.5, "y": -k * 1.0, "z": 1e-3 * k, "ok": k % 3 == 0}

    w = write_channel(tmp_path, "vib", schema, rec, 90, records_per_datagram=5)
    cols = speeddata.read(tmp_path, "vib", threads=threads)
    view = speeddata.read(tmp_path, "vib", contiguous=False, threads=threads)
    assert cols.records is None
    assert view.records.dtype == schema.dtype and len(view.records) == 90
    assert view.keys() == cols.keys()
    for key in cols:
        np.testing.assert_array_equal(view[key], cols[key])
    assert not view["x"].flags.c_contiguous and cols["x"].flags.c_contiguous
    sub = speeddata.read(tmp_path, "vib", w.dgram_recv_ns[3], w.dgram_recv_ns[7],
                         signals="x", contiguous=False)
    assert list(sub) == ["time", "x"]
    assert sub["x"].tolist() == sub.records["x"].tolist() == [k * 0.5 for k in range(15, 35)]
    assert sub.records["ok"].tolist() == [k % 3 == 0 for k in range(15, 35)]


def test_open_segment_is_read_up_to_its_last_complete_block(tmp_path, schemas_dir, decoder):
    schema = Schema(schemas_dir / "status.avsc")

    def rec(k, rng):
        return {"time": T0 + k, "message": f"m{k}", "uptime": k * 1.0,
                "load": None if k % 4 == 0 else k / 10, "host": {"cpu_temp": 40.0, "free_disk": k}}

    w = write_channel(tmp_path, "status", schema, rec, 50, blocks_per_segment=100,
                      leave_open=True)
    seg = w.writer.segment
    assert seg.avro.stat().st_size == w.writer.capacity  # pre-allocated, zeros after the end
    cols = speeddata.read(tmp_path, "status", decoder=decoder)
    assert cols["message"].tolist() == [f"m{k}" for k in range(50)]
    # The relay writes .recv and the index entry before the block: an index entry whose
    # block is not copied yet (zeros), or only half copied, is not read.
    entry = np.zeros(1, IDX_DTYPE)
    entry[0] = (w.writer.end, 200, 3, 1, 999, T0 + 50, T0 + 52)
    with open(seg.idx, "ab") as f:
        f.write(entry.tobytes())
    with open(seg.recv, "ab") as f:
        f.write(np.array([(T0, 3, 999)], speeddata.cache.RECV_DTYPE).tobytes())
    cols = speeddata.read(tmp_path, "status", decoder=decoder, recv_time=True)
    assert cols.n_rows == 50
    with open(seg.avro, "r+b") as f:  # half a block: the framing is there, not the sync
        f.seek(w.writer.end)
        f.write(bytes([6]) + bytes([50]) + b"x" * 30)
    assert speeddata.read(tmp_path, "status", decoder=decoder).n_rows == 50
    # the writer goes on and closes the segment: the next read sees everything
    w.writer._idx.truncate(w.writer.n_blocks * 40)
    w.writer._recv.truncate(sum(1 for _ in range(len(w.seqs))) * 16)
    w.writer.close()
    assert speeddata.read(tmp_path, "status", decoder=decoder).n_rows == 50


def test_schema_change_within_range_is_an_error(tmp_path, schemas_dir):
    def power(k, rng):
        return {"time": T0 + k * 1000, "voltage": 1.0, "current": 2.0, "noise": 0.0}

    def engine(k, rng):
        return {"time": T0 + 10**9 + k * 1000, "rpm": 1.0, "torque": 0.0, "temperature": 0.0,
                "throttle": 0.0, "state": "RUN", "counter": k}

    write_channel(tmp_path, "ch", Schema(schemas_dir / "power.avsc"), power, 10)
    write_channel(tmp_path, "ch", Schema(schemas_dir / "engine.avsc"), engine, 10,
                  t_open_ns=T0 + 10**9)
    with pytest.raises(ReadError, match="changed schema"):
        speeddata.read(tmp_path, "ch")
    assert speeddata.read(tmp_path, "ch", end=T0 + 10**9)["voltage"].tolist() == [1.0] * 10
    assert speeddata.read(tmp_path, "ch", start=T0 + 10**9)["counter"].tolist() == list(range(10))


def test_segment_removed_meanwhile_and_corrupt_header(tmp_path, all_types_cache):
    cache, _ = all_types_cache
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "20250101T000000.000000000Z.avro").write_bytes(b"not avro at all")
    (bad / "20250101T000000.000000000Z.idx").write_bytes(bytes(40))
    with pytest.raises(ReadError, match="not a readable segment.*recover"):
        speeddata.read(tmp_path, "broken")
    # a segment just created (header not yet written, no index) is skipped
    (bad / "20250101T000000.000000000Z.avro").write_bytes(bytes(4096))
    os.unlink(bad / "20250101T000000.000000000Z.idx")
    with pytest.raises(ReadError, match="no readable segment"):
        speeddata.read(tmp_path, "broken")


def test_read_accepts_a_config(all_types_cache):
    cache, _ = all_types_cache
    config = speeddata.load_config(text=f'[cache]\ndir = "{cache}"\n')
    assert speeddata.read(config, "alltypes", signals="i").n_rows == 400


# ---------------------------------------------------------------------------- times

NOW = 1_800_000_000_123_456_789


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (123, 123),
        (np.int64(5), 5),
        ("1764000000000000000", 1_764_000_000_000_000_000),
        ("now", NOW),
        ("-5min", NOW - 300 * 10**9),
        ("now-30s", NOW - 30 * 10**9),
        ("now - 1.5h", NOW - 5400 * 10**9),
        ("+10ms", NOW + 10**7),
        (timedelta(seconds=-2), NOW - 2 * 10**9),
        ("2025-11-24T16:00:00Z", T0),
        ("2025-11-24T16:00:00.123456789Z", T0 + 123_456_789),
        ("2025-11-24T17:00:00.5+01:00", T0 + 500_000_000),
        (datetime(2025, 11, 24, 16, tzinfo=timezone.utc), T0),
        (datetime(2025, 11, 24, 16, 0, 0, 7, tzinfo=timezone.utc), T0 + 7000),
        (np.datetime64("2025-11-24T16:00:00.000000001"), T0 + 1),
    ],
)
def test_parse_time(value, expected):
    assert parse_time(value, now_ns=NOW) == expected


def test_parse_time_naive_is_local_time():
    naive = datetime(2025, 11, 24, 16, 0, 0)
    assert parse_time(naive) == int(naive.timestamp()) * 10**9
    assert parse_time("2025-11-24T16:00:00") == int(naive.timestamp()) * 10**9


@pytest.mark.parametrize("bad", ["yesterday", "-5 parsecs", 1.5, True, "2025-13-01T00:00:00Z",
                                 object()])
def test_parse_time_errors(bad):
    with pytest.raises(ReadError):
        parse_time(bad, now_ns=NOW)


def test_format_time():
    assert format_time(T0 + 5) == "2025-11-24T16:00:00.000000005Z"
    assert parse_time(format_time(T0 + 5)) == T0 + 5


def test_relative_range_against_the_cache(tmp_path, schemas_dir):
    import time

    now = time.time_ns()

    def rec(k, rng):
        return {"time": now - (100 - k) * 10**9, "rpm": float(k), "torque": 0.0,
                "temperature": 0.0, "throttle": 0.0, "state": "IDLE", "counter": k}

    write_channel(tmp_path, "engine", Schema(schemas_dir / "engine.avsc"), rec, 100)
    cols = speeddata.read(tmp_path, "engine", "-30s", "now", "rpm")
    assert 29 <= cols.n_rows <= 30 and cols["rpm"][-1] == 99.0


def test_segment_helper_listing(all_types_cache):
    cache, w = all_types_cache
    assert [Segment(p.avro).channel for p in w.segments] == ["alltypes"] * len(w.segments)


def test_bench_read_smoke(tmp_path):
    """benchmarks/bench_read.py at tiny sizes: every arm sees every record."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_read.py"
    spec = importlib.util.spec_from_file_location("bench_read", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = []
    for name, n in (("wide", 1500), ("engine", 2500), ("status", 1234)):
        (tmp_path / name).mkdir()
        r = bench.measure(tmp_path / name, name, n, repeat=1)  # asserts the record counts
        assert r["records"] == n and r["p2_vs_fastavro"] > 0 and r["p1_vs_copy"] > 0
        results.append(r)
    assert "p2_views_vs_fastavro" in results[0]
    text = bench.report(results)
    assert text.count("P2 = ") == 4


def test_batches_into_memory_handed_back(all_types_cache, decoder):
    """batches(out=): each batch names the memory its columns are views of; memory
    handed back is decoded into again, with the same values as new memory."""
    from speeddata.reader import ChannelReader

    cache, _ = all_types_cache
    free: list = []
    given: list = []

    def take():
        given.append(free.pop() if free else None)
        return given[-1]

    with ChannelReader(cache, "alltypes", decoder=decoder) as r:
        expect = list(r.batches(3000))
        assert len(expect) > 3
        got = []
        reused = 0
        for batch in r.batches(3000, out=take):
            memory = batch.buffer
            if decoder == "python":
                assert memory is None
            else:
                assert memory is not None and np.shares_memory(batch["d"], memory)
                if given[-1] is not None and np.shares_memory(batch["d"], given[-1]):
                    assert memory is given[-1]  # the whole buffer, to be given again
                    reused += 1
            got.append({k: np.array(v, copy=True) for k, v in batch.items()})
            got[-1]["valid"] = {k: v.copy() for k, v in batch.valid.items()}
            if memory is not None:
                free.append(memory)
        if decoder != "python":
            assert reused > 0  # memory was decoded into again
    for a, b in zip(expect, got, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        for k in a.valid:
            np.testing.assert_array_equal(a.valid[k], b["valid"][k])


def test_a_time_field_named_ts_is_listed_as_time(tmp_path):
    """Issue 10, item 20: a time field ``ts`` is the ``time`` column in read() and HDF5,
    but read()'s error listed ``ts``: errors list the names the user can use."""
    schema = Schema({"type": "record", "name": "probe", "fields": [
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
        {"name": "volts", "type": "double"}]})

    def record(k, rng):
        return {"ts": T0 + k * 1000, "volts": float(k)}

    write_channel(tmp_path, "probe", schema, record, 20)
    cols = speeddata.read(tmp_path, "probe")
    assert list(cols) == ["time", "volts"]
    with pytest.raises(ReadError, match=r"signals: \['time', 'volts'\]$"):
        speeddata.read(tmp_path, "probe", signals=["nope"])
    from speeddata.pivot import PivotError, pivot

    with pytest.raises(PivotError, match=r"signals: probe.time, probe.volts$"):
        pivot(tmp_path, tmp_path / "x.h5", start=T0, end=T0 + 10**9, signals=["nope"])
