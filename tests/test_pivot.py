"""speeddata pivot: cache -> HDF5, checked with h5py, h5dump and load(); decimation and
resampling against numpy; loss counts; compression; bad input; the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zlib

import h5py
import numpy as np
import pytest

import speeddata
import speeddata.pivot.compression as pivot_compression
import speeddata.pivot.writer as pivot_writer
from _cachedata import (
    ALL_TYPES,
    T0,
    all_types_record,
    assert_column_equal,
    write_channel,
    write_demo_channels,
)
from speeddata.pivot import PivotError, pivot
from speeddata.reader import format_time, load
from speeddata.schema import Schema
from speeddata.tags import add_tag

MS = 1_000_000
H5DUMP = shutil.which("h5dump")


@pytest.fixture(scope="module")
def all_types_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    w = write_channel(cache, "alltypes", ALL_TYPES, all_types_record, 300, blocks_per_segment=3,
                      seq_skips={5: 3, 9: 1}, recv_pauses={12: 200 * MS})
    return cache, w


def engine_record(k, rng):
    return {"time": T0 + k * MS, "rpm": 1000.0 + k, "torque": float(np.sin(k / 10)),
            "temperature": 20.0 + (k % 17), "throttle": float(np.float32(k % 100)),
            "state": ["IDLE", "RUN", "FAULT"][k // 50 % 3], "counter": k}


def status_record(k, rng):
    return {"time": T0 + k * MS + rng.randrange(MS), "message": f"line {k}",
            "uptime": k * 0.001, "load": None if rng.random() < 0.25 else rng.uniform(0, 4),
            "host": {"cpu_temp": float(np.float32(40 + rng.random())), "free_disk": 10**9 - k}}


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    return write_demo_channels(
        tmp_path_factory.mktemp("demo"), engine_record, status_record, 3000, 3000
    )


def test_all_types_round_trip(all_types_cache, tmp_path):
    cache, w = all_types_cache
    out = tmp_path / "set.h5"
    add_tag(cache, "t1", T0, T0 + 300 * MS, note="all the types", now_ns=T0 + 10**12)
    try:
        result = pivot(cache, out, tag="t1", recv_time=True)
    finally:
        speeddata.remove_tag(cache, "t1")
    assert result.channels == {"alltypes": 300} and result.bytes_out == out.stat().st_size
    schema = w.schema
    with h5py.File(out, "r") as f:
        assert f.attrs["tag"] == "t1" and f.attrs["note"] == "all the types"
        assert f.attrs["start_ns"] == T0 and f.attrs["end_ns"] == T0 + 300 * MS
        assert f.attrs["compression"] == "gzip:1"
        g = f["alltypes"]
        assert Schema(g.attrs["schema"]) == schema
        assert g.attrs["n_records"] == 300 and g.attrs["time_field"] == "time"
        assert g["time"][()].tolist() == w.time_ns
        assert g["recv_time"][()].tolist() == w.recv_ns
        assert g["time"].attrs["units"].startswith("nanoseconds since 1970")
        assert g["time.signal"][()].tolist() == [r["time"] for r in w.records]
        assert g["d"].attrs["units"] == "A" and g["d"].attrs["doc"] == "a double"
        assert list(g["e"].attrs["symbols"]) == ["IDLE", "RUN", "FAULT"]
        assert h5py.check_enum_dtype(g["e"].dtype) == {"IDLE": 0, "RUN": 1, "FAULT": 2}
        assert g["d"].compression == "gzip" and g["d"].shuffle
        assert g["d"].chunks[0] == 300  # ~1 MiB, but not more than the rows
        assert g["ni"].attrs["valid"] == "ni.valid"
        assert "nd.valid" not in g  # float nulls are NaN
        assert g["s"].attrs["nul_replaced"] > 0
        # loss: 3 + 1 datagrams skipped in sequence, one receive-time pause
        assert g.attrs["lost_datagrams"] == 4 and g.attrs["seq_gaps"] == 2
        assert g.attrs["seq_resets"] == 0 and g.attrs["recv_gaps"] == 1
        assert g.attrs["recv_gap_max_ns"] == 201 * MS
        assert g.attrs["n_datagrams"] == 100
    cols = load(out, "alltypes")
    for sig in schema.signals:
        name = "time.signal" if sig.name == "time" else sig.name
        records = w.records
        if sig.name in ("s", "ns"):  # NUL cannot be stored in HDF5 strings: U+2400 instead
            records = [{**r, sig.name: r[sig.name] and r[sig.name].replace("\0", "\u2400")}
                       for r in w.records]
        assert_column_equal(schema, sig.name, cols[name], records, cols.valid.get(name))
    assert cols.attrs["lost_datagrams"] == 4
    assert cols.symbols("e") == ("IDLE", "RUN", "FAULT")
    # load() selects like read()
    part = load(out, "alltypes", T0 + 10 * MS, T0 + 20 * MS, ["d", "ni"])
    assert list(part) == ["time", "d", "ni"] and part.n_rows == 10
    assert part["d"].tolist() == cols["d"][10:20].tolist()


def _h5dump_values(path, dataset):
    out = subprocess.run([H5DUMP, "-d", dataset, "-y", "-w", "0", "-m", "%.17g", str(path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    values = []
    for line in out.split("DATA {", 1)[1].splitlines()[1:]:
        if line.strip() == "}":
            break
        values.append(line.strip().removesuffix(","))
    return values


@pytest.mark.skipif(H5DUMP is None, reason="h5dump (hdf5-tools) is not installed")
def test_h5dump_reads_the_file(all_types_cache, tmp_path):
    cache, w = all_types_cache
    out = tmp_path / "set.h5"
    pivot(cache, out, start=T0, end=T0 + 100 * MS)
    recs = w.records[:100]
    assert _h5dump_values(out, "/alltypes/time") == [str(t) for t in w.time_ns[:100]]
    assert _h5dump_values(out, "/alltypes/i") == [str(r["i"]) for r in recs]
    assert _h5dump_values(out, "/alltypes/l") == [str(r["l"]) for r in recs]
    assert [float(x) for x in _h5dump_values(out, "/alltypes/d")] == [r["d"] for r in recs]
    assert _h5dump_values(out, "/alltypes/e") == [r["e"] for r in recs]
    assert _h5dump_values(out, "/alltypes/b") == [("TRUE" if r["b"] else "FALSE") for r in recs]
    dumped = _h5dump_values(out, "/alltypes/ni.valid")
    assert dumped == [("FALSE" if r["ni"] is None else "TRUE") for r in recs]
    nd = [float(x) if x not in ("nan", "NaN") else None
          for x in _h5dump_values(out, "/alltypes/nd")]
    assert nd == [r["nd"] for r in recs]
    strings = _h5dump_values(out, "/alltypes/rec.deep.z")
    assert strings == [f'"deep {k} \\37777777703\\37777777674"' for k in range(100)]
    header = subprocess.run([H5DUMP, "-A", str(out)], capture_output=True, text=True,
                            check=True).stdout
    assert '"speeddata-set/1"' in header and "lost_datagrams" in header
    assert re.search(r'ATTRIBUTE "units".*?"A"', header, re.S)


@pytest.fixture(params=["isal", "zlib"])
def deflate_engine(request, monkeypatch):
    """The default gzip's deflate by ISA-L (when installed) and by the zlib fallback."""
    if request.param == "isal":
        pytest.importorskip("isal")
        assert pivot_compression._isal_zlib is not None
    else:
        monkeypatch.setattr(pivot_compression, "_isal_zlib", None)
    return request.param


@pytest.mark.parametrize("threads", [0, 2])
def test_incompressible_chunks_stored_unfiltered(deflate_engine, threads, tmp_path, monkeypatch):
    """A chunk deflate does not shrink is stored raw with every filter masked, beside
    deflated chunks; h5py and h5dump read both back exactly."""
    import concurrent.futures

    monkeypatch.setattr(pivot_writer, "CHUNK_BYTES", 8192)  # 1024 doubles a chunk
    comp = pivot_compression.parse_compression("gzip")
    assert comp.name == "gzip:1" and comp.engine == deflate_engine
    rng = np.random.default_rng(7)
    n = 3000  # chunks of 1024 doubles: smooth | random | smooth, partial (padded, shrunk)
    columns = {
        "d": np.concatenate([np.sin(np.arange(1024) / 50.0), rng.random(1024),
                             np.arange(n - 2048) * 0.5]),
        "l": np.concatenate([np.arange(1024), rng.integers(-2**63, 2**63 - 1, 1024),
                             np.full(n - 2048, 7)]).astype(np.int64),
        "u": np.concatenate([np.zeros(8192, np.uint8), rng.integers(0, 256, 8192, np.uint8),
                             np.arange(n * 8 - 16384, dtype=np.uint8)]),  # 1 byte: no shuffle
    }
    random_ints = rng.integers(-2**63, 2**63 - 1, 2040)
    out = tmp_path / "masks.h5"
    pool = concurrent.futures.ThreadPoolExecutor(threads) if threads else None
    try:
        with h5py.File(out, "w") as f:
            for name, values in columns.items():
                n_max = 3 * 8192 // values.dtype.itemsize  # 3 chunks of 8 KiB
                w = pivot_writer.DatasetWriter(f, name, values.dtype, values.dtype,
                                                n_max, comp, pool, {})
                for part in np.array_split(values, 7):  # appends across chunk edges
                    w.append(part)
                assert w.close() == len(values)
            # random int64s to the end: the last chunk, raw, is read back by the shrink
            # from 2048 rows to 2040 in close() (and the raw chunk before it, too)
            w = pivot_writer.DatasetWriter(f, "r", np.int64, np.int64, 2048, comp, pool, {})
            w.append(random_ints)
            assert w.close() == 2040 and f["r"].shape == (2040,)
            assert f["r"].id.read_direct_chunk((0,))[0] == 3
            assert f["r"][2039] == random_ints[-1]
    finally:
        if pool is not None:
            pool.shutdown()
    with h5py.File(out, "r") as f:
        for name, values in columns.items():
            ds = f[name]
            np.testing.assert_array_equal(ds[()], values)
            plist = ds.id.get_create_plist()
            filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            if values.dtype.itemsize > 1:
                assert filters == [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE]
            else:
                assert filters == [h5py.h5z.FILTER_DEFLATE]
            rows = ds.chunks[0]
            assert rows == 1024 * 8 // values.dtype.itemsize
            masks = []
            for i in range(3):
                mask, data = ds.id.read_direct_chunk((i * rows,))
                masks.append(mask)
                if mask:  # stored as it is: the raw chunk bytes
                    assert data == values[i * rows : (i + 1) * rows].tobytes()
                else:  # a zlib stream of the shuffled chunk, smaller than the chunk
                    assert len(data) < rows * values.dtype.itemsize
                    assert len(zlib.decompress(data)) == rows * values.dtype.itemsize
            # random doubles in [0, 1): zlib level 1 shrinks them (0.85x), ISA-L level 0
            # not (1.09x); random int64s and bytes shrink with neither
            raw_middle = name != "d" or deflate_engine == "isal"
            assert masks == [0, (1 << len(filters)) - 1 if raw_middle else 0, 0]
        np.testing.assert_array_equal(f["r"][()], random_ints)
    if H5DUMP is not None:
        assert [float(x) for x in _h5dump_values(out, "/d")] == columns["d"].tolist()
        assert [int(x) for x in _h5dump_values(out, "/l")] == columns["l"].tolist()
        assert [int(x) for x in _h5dump_values(out, "/u")] == columns["u"].tolist()
        assert [int(x) for x in _h5dump_values(out, "/r")] == random_ints.tolist()


def test_deflate_engines_write_the_same_values(demo_cache, tmp_path, monkeypatch):
    """The default gzip with ISA-L and with zlib: the same values, read by load()."""
    pytest.importorskip("isal")
    pivot(demo_cache, tmp_path / "isal.h5", threads=2)
    monkeypatch.setattr(pivot_compression, "_isal_zlib", None)
    pivot(demo_cache, tmp_path / "zlib.h5", threads=2)
    for channel in ("engine", "status"):
        a, b = load(tmp_path / "isal.h5", channel), load(tmp_path / "zlib.h5", channel)
        assert list(a) == list(b) and a.n_rows == b.n_rows == 3000
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    with h5py.File(tmp_path / "isal.h5") as f:
        ds = f["engine/rpm"]
        assert ds.compression == "gzip" and ds.compression_opts == 1 and ds.shuffle


def test_every_nth_record(demo_cache, tmp_path):
    out = tmp_path / "every.h5"
    start, end = T0 + 123 * MS, T0 + 2345 * MS
    result = pivot(demo_cache, out, start=start, end=end, every=7, signals=["engine.*"],
                   batch_bytes=4096)
    assert list(result.channels) == ["engine"]
    full = speeddata.read(demo_cache, "engine", start, end)
    got = load(out, "engine")
    for name in ("time", "rpm", "state", "counter", "throttle"):
        np.testing.assert_array_equal(got[name], full[name][::7])
    with h5py.File(out) as f:
        assert f.attrs["every"] == 7
        assert f["engine"].attrs["n_records_read"] == (end - start) // MS


def _expected_buckets(t, x, period):
    buckets = t // period
    out = {k: [] for k in ("time", "count", "mean", "min", "max", "first", "last", "sum")}
    for b in np.unique(buckets):
        sel = x[buckets == b]
        ok = sel[~np.isnan(sel)]
        out["time"].append(b * period)
        out["count"].append(len(sel))
        out["mean"].append(ok.mean() if len(ok) else np.nan)
        out["min"].append(ok.min() if len(ok) else np.nan)
        out["max"].append(ok.max() if len(ok) else np.nan)
        out["sum"].append(ok.sum())
        out["first"].append(sel[0])
        out["last"].append(sel[-1])
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("batch_bytes", [1500, 64 * 1024**2])
def test_resample_against_numpy(demo_cache, tmp_path, batch_bytes):
    out = tmp_path / "resampled.h5"
    start, end = T0 + 5 * MS, T0 + 2900 * MS
    pivot(demo_cache, out, start=start, end=end, resample="70ms",
          agg="mean,min,max,first,last,sum", batch_bytes=batch_bytes, compression="none")
    for channel, signal in (("status", "load"), ("status", "uptime"), ("engine", "torque"),
                            ("engine", "counter"), ("status", "host.cpu_temp")):
        raw = speeddata.read(demo_cache, channel, start, end)
        x = raw[signal].astype(np.float64)
        want = _expected_buckets(raw["time"], x, 70 * MS)
        got = load(out, channel)
        np.testing.assert_array_equal(got["time"], want["time"])
        np.testing.assert_array_equal(got["count"], want["count"])
        for agg in ("mean", "min", "max", "sum"):
            np.testing.assert_allclose(got[f"{signal}.{agg}"], want[agg], rtol=1e-12,
                                       err_msg=f"{channel}.{signal}.{agg}")
        for agg in ("first", "last"):
            np.testing.assert_array_equal(got[f"{signal}.{agg}"], want[agg])
    got = load(out, "status")
    assert got["message.last"][0] == speeddata.read(demo_cache, "status", start, T0 + 70 * MS)[
        "message"][-1]
    assert "message.mean" not in got
    engine = load(out, "engine")
    assert engine["counter.min"].dtype == np.int64  # ints keep their type for min/max
    with h5py.File(out) as f:
        assert f.attrs["resample_ns"] == 70 * MS and f.attrs["mode"] == "resample"


def test_segment_still_being_written(tmp_path, schemas_dir):
    w = write_channel(tmp_path, "engine", Schema(schemas_dir / "engine.avsc"), engine_record,
                      500, blocks_per_segment=1000, leave_open=True)
    out = tmp_path / "open.h5"
    pivot(tmp_path, out, start=T0, end=T0 + 10**10)
    assert load(out, "engine")["counter"].tolist() == list(range(500))
    w.writer.close()


@pytest.mark.parametrize("compression", ["none", "gzip", "gzip:6", "lzf", "blosc", "zstd"])
def test_compression_and_threads(tmp_path, schemas_dir, compression):
    if compression in ("blosc", "zstd"):
        pytest.importorskip("hdf5plugin")
    w = write_channel(tmp_path, "power", Schema(schemas_dir / "power.avsc"),
                      lambda k, rng: {"time": T0 + k * 1000, "voltage": np.sin(k / 100.0),
                                      "current": float(k % 7), "noise": 0.25},
                      150_000, records_per_datagram=50, datagrams_per_block=20,
                      blocks_per_segment=50, segment_size=8 << 20)
    out = tmp_path / "c.h5"
    pivot(tmp_path, out, compression=compression, threads=2, batch_bytes=1 << 20)
    got = load(out, "power")
    assert got["time"].tolist() == w.time_ns
    np.testing.assert_array_equal(got["voltage"], np.sin(np.arange(150_000) / 100.0))
    with h5py.File(out) as f:
        ds = f["power/voltage"]
        assert ds.chunks == (75000,)  # ~1 MiB of doubles, 2 equal chunks
        if compression == "none":
            assert ds.compression is None
        elif compression.startswith("gzip"):
            assert ds.compression == "gzip" and ds.shuffle
            assert ds.compression_opts == (6 if compression == "gzip:6" else 1)


def test_progress_bar_only_when_asked(demo_cache, tmp_path, capsys):
    pivot(demo_cache, tmp_path / "p.h5", progress=True)
    err = capsys.readouterr().err
    assert "pivot engine" in err and "100.0%" in err and "MB/s" in err
    pivot(demo_cache, tmp_path / "q.h5")  # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""


def test_bad_inputs_leave_no_file(demo_cache, tmp_path):
    out = tmp_path / "x.h5"
    cases = [
        (dict(channels=["nope*"]),
         r"no channel matches 'nope\*'; channels: \['engine', 'status'\]"),
        (dict(signals=["engine.volts"]), r"no signal matches 'engine.volts'"),
        # issue 10, item 16: the signals are listed, not the channels
        (dict(signals=["nope"]), r"no signal matches 'nope'; signals: engine.time, "
                                 r"engine.rpm, .*status.host.cpu_temp"),
        # --agg without --resample was silently ignored
        (dict(agg="max"), r"--agg max needs --resample PERIOD"),
        (dict(start=T0 - 10**10, end=T0 - 10**9), r"no records between .* available: engine: "
                                                  r"2025-11-24T16:00:00"),
        (dict(start=T0 + MS, end=T0), "empty time range"),
        (dict(every=0), "positive integer"),
        (dict(every=2, resample="1s"), "not both"),
        (dict(resample="fast"), "not a duration"),
        (dict(resample="1s", agg="median"), "unknown aggregate 'median'"),
        (dict(compression="zip"), "unknown compression 'zip'"),
        (dict(compression="gzip:12"), "level is 0 to 9"),
        (dict(tag="nope"), "no tag 'nope'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(speeddata.SpeedDataError, match=message):
            pivot(demo_cache, out, **kwargs)
        assert os.listdir(tmp_path) == [], kwargs
    with pytest.raises(PivotError, match="is a folder"):
        pivot(demo_cache, tmp_path)
    with pytest.raises(PivotError, match="does not exist"):
        pivot(demo_cache, tmp_path / "no" / "x.h5")
    out.write_bytes(b"precious")
    with pytest.raises(PivotError, match="exists; use --force"):
        pivot(demo_cache, out)
    assert out.read_bytes() == b"precious"
    pivot(demo_cache, out, force=True, signals="rpm")
    assert list(load(out)) == ["engine"]
    assert sorted(os.listdir(tmp_path)) == ["x.h5"]


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "speeddata.commands", *args], capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_disk_full_leaves_no_file(demo_cache, tmp_path):
    """A write that fails (here: the file size limit, EFBIG, as a full disk gives ENOSPC)
    is a clear error, and neither the output nor the temporary file is left."""
    limit = 200_000
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from speeddata.commands import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "full.h5"
    r = subprocess.run([sys.executable, "-c", code, "pivot", "--cache", str(demo_cache),
                        "--start", format_time(T0), "--end", format_time(T0 + 10**10),
                        "--compression", "none", "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "disk is full" in r.stderr and "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


def test_cli(demo_cache, tmp_path):
    add_tag(demo_cache, "cli", T0 + 100 * MS, T0 + 200 * MS, ["engine"], "cli note",
            now_ns=T0 + 10**12)
    try:
        out = tmp_path / "tag.h5"
        r = _cli("pivot", "--tag", "cli", "--signals", "rpm", "state", "--recv-time",
                 "--cache", str(demo_cache), "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert "engine 100 rows" in r.stdout and r.stderr == ""
        with h5py.File(out) as f:
            assert sorted(f["engine"]) == ["recv_time", "rpm", "state", "time"]
            assert f.attrs["note"] == "cli note"
        r = _cli("pivot", "--tag", "cli", "--cache", str(demo_cache), "-o", str(out))
        assert r.returncode == 2 and "exists; use --force" in r.stderr
        r = _cli("pivot", "--start", format_time(T0), "--end", format_time(T0 + 50 * MS),
                 "--channels", "status", "--every", "3", "--compression", "none", "--force",
                 "--cache", str(demo_cache), "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert load(out, "status").n_rows == 17
        r = _cli("pivot", "--start=-5min", "--cache", str(demo_cache), "-o", str(out))
        assert r.returncode == 2 and "--tag NAME, or both --start and --end" in r.stderr
        r = _cli("pivot", "--tag", "cli", "--agg", "max", "--force", "--cache", str(demo_cache),
                 "-o", str(out))
        assert r.returncode == 2 and "--agg max needs --resample" in r.stderr, r.stderr
    finally:
        speeddata.remove_tag(demo_cache, "cli")


def test_bench_pivot_smoke(tmp_path):
    """benchmarks/bench_pivot.py at tiny sizes: the pivots hold every record."""
    import importlib.util
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location("bench_pivot", bench_dir / "bench_pivot.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(bench_dir))
    results = []
    for name, n in (("wide", 1200), ("engine", 3000)):
        (tmp_path / name).mkdir()
        r = bench.measure(tmp_path / name, name, n, repeat=1)  # asserts the row count
        assert r["none_ratio"] > 0 and r["gzip_ratio"] > 0 and r["none_file_mb"] > 0
        assert r["gzip-zlib_ratio"] > 0 and r["gzip-zlib_file_mb"] > 0
        assert r["raw-wb_mbps"] > 0
        results.append(r)
    text = bench.report(results)
    assert text.count("x raw   (file") == 6 and text.count("x raw + writeback)") == 6
    # the raw arm with writeback writes the same bytes
    data = bench.column_bytes(tmp_path / "engine" / "cache", "engine")
    bench.raw_write(tmp_path / "wb.bin", data, writeback=4096)
    assert (tmp_path / "wb.bin").read_bytes() == data


def test_shrunk_dataset_keeps_its_raw_chunk(tmp_path):
    """A range that starts or ends inside a block holds fewer rows than the blocks read,
    so the datasets shrink when closed. A chunk that deflate did not make smaller is
    stored as it is (filter mask: shuffle and deflate skipped); HDF5 2.0 rewrote such a
    chunk deflated when the shrink pruned it, keeping the mask, and the values read back
    were the deflate stream (found by docs/notebook.md: a 1 Hz channel's random doubles,
    19 rows of a tag). The shrink now comes before the last chunk is written."""
    schema = Schema({"type": "record", "name": "rand", "fields": [
        {"name": "time", "type": "long"}, {"name": "v", "type": "double"}]})
    values = np.random.default_rng(7).random(40)

    def rec(k, rng):
        return {"time": T0 + k * 1000 * MS, "v": float(values[k])}

    write_channel(tmp_path, "rand", schema, rec, 40, records_per_datagram=1,
                  datagrams_per_block=4, blocks_per_segment=3)
    raw_chunks = 0
    for k in range(8):
        out = tmp_path / f"k{k}.h5"
        pivot(tmp_path, out, start=T0 + k * 1000 * MS, end=T0 + (k + 19) * 1000 * MS)
        with h5py.File(out, "r") as f:
            raw_chunks += f["rand/v"].id.get_chunk_info(0).filter_mask != 0
        got = load(out, "rand")["v"]
        np.testing.assert_array_equal(got, values[k : k + 19], err_msg=f"start at row {k}")
    assert raw_chunks == 8  # the case in question: 19 random doubles do not deflate
