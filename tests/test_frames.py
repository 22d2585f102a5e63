"""Columns and ColumnSet -> pandas and xarray (speeddata.frames, issue 14): every column
type the reader produces, nulls, zero copy, attributes, pivoted files (every record and
resampled), sets of channels, and a clear error when the optional package is missing.

The expected values come from the records fastavro encoded (tests/_cachedata.py), not
from the reader under test."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import speeddata
from _cachedata import ALL_TYPES, T0, all_types_record, flat, write_channel, write_demo_channels
from speeddata.pivot import pivot
from speeddata.reader import Columns, ColumnSet
from speeddata.schema import Schema

MS = 1_000_000
N = 400


@pytest.fixture(scope="module")
def all_types(tmp_path_factory):
    cache = tmp_path_factory.mktemp("alltypes")
    w = write_channel(cache, "alltypes", ALL_TYPES, all_types_record, N, blocks_per_segment=4,
                      seq_skips={5: 2})
    cols = speeddata.read(cache, "alltypes", recv_time=True)
    assert cols.n_rows == N
    return cache, w, cols


def _expected(w, name):
    """(values, is-null) of a signal, as fastavro wrote them."""
    values = [flat(r)[name] for r in w.records]
    return values, [v is None for v in values]


def _sig_names(schema):
    return [s.name for s in schema.signals if s.name != "time"]


# ---------------------------------------------------------------------------- pandas


def test_pandas_every_type(all_types):
    _, w, cols = all_types
    df = cols.to_pandas()
    assert isinstance(df.index, pd.DatetimeIndex) and df.index.name == "time"
    assert str(df.index.tz) == "UTC" and df.index.dtype == "datetime64[ns, UTC]"
    assert df.index.asi8.tolist() == w.time_ns
    assert df["recv_time"].dtype == "datetime64[ns, UTC]"
    assert df["recv_time"].array.asi8.tolist() == w.recv_ns
    # one column per signal, in the reader's order (the micros time field as time.signal)
    assert list(df.columns) == [k for k in cols if k != "time"]
    assert df["time.signal"].tolist() == [r["time"] for r in w.records]
    for name in _sig_names(w.schema):
        sig = w.schema.signal(name)
        want, null = _expected(w, name)
        col = df[name]
        assert col.isna().tolist() == null if sig.nullable else not col.isna().any(), name
        got = [None if n else v for v, n in zip(col.tolist(), null, strict=True)]
        if sig.type in ("float", "double"):
            np.testing.assert_array_equal(col.to_numpy(np.float64),
                                          np.array(want, dtype=np.float64), err_msg=name)
            assert col.dtype == sig.dtype, name
        elif sig.type == "enum":
            assert isinstance(col.dtype, pd.CategoricalDtype), name
            assert list(col.cat.categories) == list(sig.symbols), name
            assert got == want, name
        else:
            assert got == want, name
        if sig.type in ("int", "long", "boolean"):
            want_dtype = {"int": "Int32", "long": "Int64", "boolean": "boolean"}[sig.type]
            assert col.dtype == (want_dtype if sig.nullable else sig.dtype), name
        if sig.type == "string":
            assert pd.api.types.is_string_dtype(col.dtype), name
            assert all(isinstance(v, str) for v in col.dropna()), name
        if sig.type in ("bytes", "fixed"):
            assert col.dtype == object, name
            assert all(type(v) is bytes for v in col.dropna()), name
    assert df.attrs["channel"] == "alltypes" and df.attrs["schema_name"] == "alltypes"
    assert df.attrs["units"] == {"i": "count", "f": "V", "d": "A"}
    assert df.attrs["doc"] == {"i": "an int", "d": "a double"}


def test_pandas_numbers_are_not_copied(all_types):
    _, _, cols = all_types
    df = cols.to_pandas()
    for name in ("b", "i", "l", "f", "d", "nd", "nf", "rec.a"):
        assert np.shares_memory(df[name].to_numpy(), cols[name]), name
    # nullable ints and booleans: the values are the reader's, the mask is new
    for name in ("ni", "nl", "nbool"):
        assert np.shares_memory(df[name].array._data, cols[name]), name
    # a naive index (tz=None) is the time column itself; a time zone costs a copy
    naive = cols.to_pandas(tz=None)
    assert naive.index.tz is None and np.shares_memory(naive.index.asi8, cols["time"])
    assert naive.index.asi8.tolist() == cols["time"].tolist()


def test_pandas_time_zone(all_types):
    _, w, cols = all_types
    df = cols.to_pandas(tz="Europe/Berlin")
    assert str(df.index.tz) == "Europe/Berlin"
    assert df.index.asi8.tolist() == w.time_ns  # the same instants
    assert df.index[0].hour == 17  # 16:00 UTC in November
    assert str(df["recv_time"].dt.tz) == "Europe/Berlin"
    assert df["recv_time"].array.asi8.tolist() == w.recv_ns
    naive = cols.to_pandas(tz=None)
    assert naive["recv_time"].dtype == "datetime64[ns]"
    assert np.shares_memory(naive["recv_time"].to_numpy(), cols["recv_time"])


def test_fixed_keeps_trailing_nul_bytes(tmp_path):
    schema = Schema({"type": "record", "name": "fx", "fields": [
        {"name": "time", "type": "long"},
        {"name": "id", "type": {"type": "fixed", "name": "F4", "size": 4}},
        {"name": "nid", "type": ["null", {"type": "fixed", "name": "F3", "size": 3}]}]})
    ids = [b"ab\0\0", b"\0\0\0\0", b"abcd", b"\0bc\0"]
    nids = [b"x\0\0", None, b"\0\0\0", b"yz\0"]

    def rec(k, rng):
        return {"time": T0 + k * MS, "id": ids[k], "nid": nids[k]}

    write_channel(tmp_path, "fx", schema, rec, 4)
    cols = speeddata.read(tmp_path, "fx")
    assert cols["id"].dtype == np.dtype("S4") and cols["id"][0] == b"ab"  # numpy drops NULs
    df = cols.to_pandas()
    assert df["id"].tolist() == ids
    assert df["nid"].tolist() == nids
    ds = cols.to_xarray()
    assert ds["id"].values.tolist() == ids
    assert ds["nid"].values.tolist() == nids


def test_strided_record_views(tmp_path, schemas_dir):
    """read(contiguous=False): columns are strided views of one structured array."""
    schema = Schema(schemas_dir / "fixed.avsc")

    def rec(k, rng):
        return {"x": k * 0.5, "y": -k * 1.0, "z": 1e-3 * k, "ok": k % 3 == 0}

    write_channel(tmp_path, "vib", schema, rec, 60, records_per_datagram=5)
    cols = speeddata.read(tmp_path, "vib", contiguous=False)
    assert not cols["x"].flags.c_contiguous
    df = cols.to_pandas()
    assert df["x"].tolist() == [k * 0.5 for k in range(60)]
    assert df["ok"].tolist() == [k % 3 == 0 for k in range(60)]
    assert np.shares_memory(df["x"].to_numpy(), cols.records)
    ds = cols.to_xarray()
    assert ds["z"].values.tolist() == [1e-3 * k for k in range(60)]
    assert np.shares_memory(ds["z"].values, cols.records)
    # no time field: the time is the receive time, and the attributes say so
    assert df.attrs["time_source"] == "receive" and ds.attrs["time_source"] == "receive"
    assert ds["time"].attrs["long_name"] == "relay receive time (UTC)"


def test_empty_range_keeps_columns_and_types(all_types):
    cache, _, _ = all_types
    empty = speeddata.read(cache, "alltypes", T0 - 10 * MS, T0 - 5 * MS, ["d", "s", "e", "ni"])
    df = empty.to_pandas()
    assert len(df) == 0 and list(df.columns) == ["d", "s", "e", "ni"]
    assert df["d"].dtype == np.float64 and isinstance(df["e"].dtype, pd.CategoricalDtype)
    assert df["ni"].dtype == "Int32" and df.index.dtype == "datetime64[ns, UTC]"
    ds = empty.to_xarray()
    assert ds.sizes["time"] == 0 and set(ds.data_vars) == {"d", "s", "e", "ni"}
    assert ds.attrs["start_ns"] == T0 - 10 * MS and ds.attrs["end_ns"] == T0 - 5 * MS


def test_pandas_resample_and_plot_ready(all_types):
    """What a user does next: resample by time, with the units at hand."""
    _, w, cols = all_types
    df = cols.to_pandas()
    per_100ms = df[["d", "i"]].resample("100ms").mean()
    assert len(per_100ms) == 4  # 400 records 1 ms apart
    want = np.array([r["i"] for r in w.records[:100]], np.float64).mean()
    assert per_100ms["i"].iloc[0] == pytest.approx(want)
    # nullable ints resample skipping nulls
    ni = df["ni"].resample("100ms").count()
    assert ni.iloc[0] == sum(r["ni"] is not None for r in w.records[:100])


# ---------------------------------------------------------------------------- xarray


def test_xarray_every_type(all_types):
    _, w, cols = all_types
    ds = cols.to_xarray()
    assert isinstance(ds, xr.Dataset) and list(ds.dims) == ["time"]
    assert ds["time"].dtype == np.dtype("datetime64[ns]")
    assert ds["time"].values.view(np.int64).tolist() == w.time_ns
    assert ds["time"].attrs["long_name"] == "source time (UTC)"
    assert ds["recv_time"].values.view(np.int64).tolist() == w.recv_ns
    assert list(ds.data_vars) == [k for k in cols if k != "time"]
    for name in _sig_names(w.schema):
        sig = w.schema.signal(name)
        want, null = _expected(w, name)
        var = ds[name]
        assert var.dims == ("time",) and var.attrs["avro_type"] == sig.type, name
        values = var.values.tolist()
        if sig.type in ("float", "double") or (sig.nullable and sig.type in (
                "int", "long", "boolean", "enum")):
            # numbers: NaN where null (nullable ints, booleans and enum codes as float64)
            assert np.isnan(var.values).tolist() == [
                n or (isinstance(v, float) and np.isnan(v)) for v, n in zip(want, null,
                                                                            strict=True)], name
            if sig.type == "enum":
                want = [None if v is None else float(sig.symbols.index(v)) for v in want]
            got = [None if n else v for v, n in zip(values, null, strict=True)]
            np.testing.assert_array_equal(np.array(got, dtype=np.float64),
                                          np.array(want, dtype=np.float64), err_msg=name)
            assert var.dtype == (sig.dtype if not sig.nullable or sig.type in (
                "float", "double") else np.float64), name
        elif sig.type == "enum":
            assert var.dtype == np.int32
            assert values == [sig.symbols.index(v) for v in want], name
        else:
            # missing where null, as xarray keeps it (NaN for strings, None for bytes)
            assert var.isnull().values.tolist() == null, name
            got = [None if n else v for v, n in zip(values, null, strict=True)]
            assert got == want, name
            if sig.type in ("string", "bytes", "fixed"):
                assert var.dtype == object, name
            else:
                assert var.dtype == sig.dtype, name
    e = ds["e"]
    assert e.attrs["flag_meanings"] == "IDLE RUN FAULT"
    assert e.attrs["flag_values"].tolist() == [0, 1, 2]
    assert ds["ne"].attrs["flag_meanings"] == "X Y"
    assert ds["i"].attrs["units"] == "count" and ds["i"].attrs["long_name"] == "an int"
    assert ds["d"].attrs["units"] == "A" and "units" not in ds["l"].attrs
    assert ds["time.signal"].attrs["logical_type"] == "timestamp-micros"
    assert ds.attrs["channel"] == "alltypes"
    # attribute values are all types netCDF files keep (no None, no bool)
    for attrs in [ds.attrs] + [v.attrs for v in ds.variables.values()]:
        for key, value in attrs.items():
            assert isinstance(value, (str, int, float, np.ndarray, list)), key
            assert not isinstance(value, bool), key


def test_xarray_is_not_copied_and_selects_by_time(all_types):
    _, w, cols = all_types
    ds = cols.to_xarray()
    for name in ("b", "i", "l", "f", "d", "e", "rec.a"):
        assert np.shares_memory(ds[name].values, cols[name]), name
    assert np.shares_memory(ds["time"].values, cols["time"])
    start = np.datetime64(T0 + 100 * MS, "ns")
    part = ds.sel(time=slice(start, start + np.timedelta64(9, "ms")))
    assert part["rec.a"].values.tolist() == list(range(100, 110))
    mean = ds["d"].where(np.isfinite(ds["d"])).resample(time="100ms").mean()
    assert mean.sizes["time"] == 4


# ---------------------------------------------------------------------------- pivoted files


def engine_record(k, rng):
    return {"time": T0 + k * MS, "rpm": 1000.0 + k, "torque": float(np.sin(k / 10)),
            "temperature": 20.0 + (k % 17), "throttle": float(np.float32(k % 100)),
            "state": ["IDLE", "RUN", "FAULT"][k // 50 % 3], "counter": k}


def status_record(k, rng):
    return {"time": T0 + k * 10 * MS, "message": f"line {k}", "uptime": k * 0.01,
            "load": None if k % 4 == 1 else k / 100,
            "host": {"cpu_temp": float(np.float32(40 + k / 8)), "free_disk": 10**9 - k}}


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    return write_demo_channels(tmp_path_factory.mktemp("demo"), engine_record, status_record,
                               2000, 200)


def test_loaded_channel_converts_like_read(demo_cache, tmp_path):
    out = tmp_path / "set.h5"
    speeddata.add_tag(demo_cache, "t", T0, T0 + 2000 * MS, note="a note", now_ns=T0 + 10**12)
    try:
        pivot(demo_cache, out, tag="t", recv_time=True)
    finally:
        speeddata.remove_tag(demo_cache, "t")
    for channel in ("engine", "status"):
        direct = speeddata.read(demo_cache, channel, T0, T0 + 2000 * MS, recv_time=True)
        loaded = speeddata.load(out, channel, recv_time=True)
        a, b = direct.to_pandas(), loaded.to_pandas()
        pd.testing.assert_frame_equal(a, b, check_like=True)  # load: the file's order
        assert a.attrs["units"] == b.attrs["units"] and b.attrs["units"]
        # the file's group attributes: loss and gap counts, schema, ...
        assert b.attrs["lost_datagrams"] == 0 and "recv_gaps" in b.attrs
        x, y = direct.to_xarray(), loaded.to_xarray()
        xr.testing.assert_identical(x.drop_attrs(deep=False), y.drop_attrs(deep=False))
        assert y.attrs["n_records"] == len(a) and y.attrs["channel"] == channel
    status = speeddata.load(out, "status").to_pandas()
    assert status["load"].isna().tolist() == [k % 4 == 1 for k in range(200)]
    assert status.attrs["units"]["host.cpu_temp"] == "degC"
    engine = speeddata.load(out, "engine").to_pandas()
    assert engine["state"].tolist()[::50][:4] == ["IDLE", "RUN", "FAULT", "IDLE"]


def test_column_set_to_dict_of_frames_and_data_tree(demo_cache, tmp_path):
    out = tmp_path / "set.h5"
    speeddata.add_tag(demo_cache, "s", T0, T0 + 2000 * MS, note="both", now_ns=T0 + 10**12)
    try:
        pivot(demo_cache, out, tag="s")
    finally:
        speeddata.remove_tag(demo_cache, "s")
    both = speeddata.load(out)
    assert isinstance(both, ColumnSet) and isinstance(both, dict)
    assert set(both) == {"engine", "status"} and all(isinstance(c, Columns)
                                                    for c in both.values())
    assert both.attrs["tag"] == "s" and both.attrs["note"] == "both"
    assert repr(both) == "<ColumnSet engine: 2000 rows, status: 200 rows>"
    frames = both.to_pandas()
    assert set(frames) == {"engine", "status"}
    assert len(frames["engine"]) == 2000 and len(frames["status"]) == 200
    assert frames["engine"]["rpm"].tolist() == [1000.0 + k for k in range(2000)]
    tree = both.to_xarray()
    assert isinstance(tree, xr.DataTree)
    assert set(tree.children) == {"engine", "status"}
    assert tree.attrs["tag"] == "s" and tree.attrs["note"] == "both"
    assert tree["engine"].sizes["time"] == 2000 and tree["status"].sizes["time"] == 200
    assert tree["engine/rpm"].attrs["units"] == "1/min"
    assert tree["status/host.free_disk"].values.tolist() == [10**9 - k for k in range(200)]


def test_resampled_file(demo_cache, tmp_path):
    out = tmp_path / "resampled.h5"
    pivot(demo_cache, out, start=T0, end=T0 + 2000 * MS, channels="engine",
          resample="100ms", agg="mean,max,last")
    cols = speeddata.load(out, "engine")
    df = cols.to_pandas()
    assert len(df) == 20 and df.index[1] - df.index[0] == pd.Timedelta("100ms")
    assert df["count"].tolist() == [100] * 20
    assert df["rpm.mean"].tolist() == [1000.0 + 100 * b + 49.5 for b in range(20)]
    assert df.attrs["units"]["rpm.max"] == "1/min"
    # an enum's last code of each bucket is a category again
    assert isinstance(df["state.last"].dtype, pd.CategoricalDtype)
    last = [engine_record(100 * b + 99, None)["state"] for b in range(20)]
    assert df["state.last"].tolist() == last and len(set(last)) == 3
    ds = cols.to_xarray()
    assert ds["rpm.mean"].attrs["units"] == "1/min"
    assert ds["state.last"].attrs["flag_meanings"] == "IDLE RUN FAULT"


# ---------------------------------------------------------------------------- optional


@pytest.mark.parametrize(
    ("blocked", "convert", "extra"),
    [
        ("pandas", lambda c: c.to_pandas(), "pandas"),
        ("xarray", lambda c: c.to_xarray(), "xarray"),
        ("pandas", lambda c: ColumnSet({"a": c}).to_pandas(), "pandas"),
        ("xarray", lambda c: ColumnSet({"a": c}).to_xarray(), "xarray"),
    ],
)
def test_missing_package_names_the_extra(all_types, monkeypatch, blocked, convert, extra):
    _, _, cols = all_types
    monkeypatch.setitem(sys.modules, blocked, None)  # `import blocked` raises ImportError
    with pytest.raises(ImportError, match=rf"needs {blocked}.*pip install 'speeddata\[{extra}\]'"):
        convert(cols)


def test_reading_needs_neither_pandas_nor_xarray(all_types):
    cache, _, _ = all_types
    code = (
        "import sys\n"
        "sys.modules['pandas'] = sys.modules['xarray'] = None\n"
        "import speeddata\n"
        f"cols = speeddata.read({str(cache)!r}, 'alltypes', signals='d')\n"
        "assert cols.n_rows == 400\n"
        "try:\n"
        "    cols.to_pandas()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "pip install 'speeddata[pandas]'" in r.stdout
    # and a plain import of the reader loads neither
    code = ("import sys, speeddata.reader, speeddata.frames\n"
            "assert 'pandas' not in sys.modules and 'xarray' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
