"""speeddata.source: dicts, lists and numpy arrays -> UDP datagrams of whole Avro records.

Real UDP sockets on 127.0.0.1 with kernel-chosen ports; fastavro decodes what arrives.
The numpy path runs twice, with the compiled encoder and with the pure-Python reference.
"""

from __future__ import annotations

import io
import socket
import struct
import time

import fastavro
import numpy as np
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import speeddata
import speeddata.source as source_mod
from speeddata._encode import encode_columns, record_size_bound
from speeddata.schema import Schema
from speeddata.source import (
    MAX_UDP_PAYLOAD,
    SINGLE_OBJECT_MARKER,
    Source,
    SourceError,
    datagram_bounds,
    encode_columns_py,
)

I32 = (-(2**31), 2**31 - 1)
I64 = (-(2**63), 2**63 - 1)

# Every numeric type the numpy path takes, nullable ones, a null field and a nested record.
ALL_NUMERIC = {
    "type": "record",
    "name": "allnum",
    "namespace": "t",
    "fields": [
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C", "D"]}},
        {"name": "x", "type": {"type": "fixed", "name": "X", "size": 3}},
        {"name": "nothing", "type": "null"},
        {"name": "ni", "type": ["null", "int"]},
        {"name": "nd", "type": ["double", "null"]},
        {
            "name": "sub",
            "type": {
                "type": "record",
                "name": "sub",
                "fields": [
                    {"name": "nl", "type": ["null", "long"]},
                    {"name": "g", "type": "float"},
                ],
            },
        },
    ],
}
ALL_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("b", "?"),
        ("i", "<i4"),
        ("l", "<i8"),
        ("f", "<f4"),
        ("d", "<f8"),
        ("e", "<i4"),
        ("x", "S3"),
        ("ni", "<i4"),
        ("nd", "<f8"),
        ("sub", [("nl", "<i8"), ("g", "<f4")]),
    ]
)


@pytest.fixture(params=["compiled", "python"])
def impl(request, monkeypatch):
    """Run the numpy path with the compiled encoder and with the reference."""
    if request.param == "python":
        monkeypatch.setattr(source_mod, "encode_columns", encode_columns_py)
    return request.param


def addr(sock: socket.socket) -> tuple[str, int]:
    return sock.getsockname()


def recv_datagrams(sock: socket.socket, n: int, timeout: float = 2.0) -> list[bytes]:
    """Exactly ``n`` datagrams, then check nothing more is queued."""
    out = []
    sock.settimeout(timeout)
    for _ in range(n):
        out.append(sock.recv(65536))
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(65536)
    return out


def decode(data: bytes, schema: Schema) -> list[dict]:
    """Records in ``data``; fails unless the bytes are exactly whole records."""
    buf = io.BytesIO(data)
    out = []
    while buf.tell() < len(data):
        out.append(fastavro.schemaless_reader(buf, schema.parsed))
    assert buf.tell() == len(data)
    return out


def decode_single_object(data: bytes, schema: Schema) -> list[dict]:
    """Records of a datagram of single-object encodings, checking marker and fingerprint."""
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema.avsc), "CRC-64-AVRO"))
    buf = io.BytesIO(data)
    out = []
    while buf.tell() < len(data):
        assert buf.read(2) == SINGLE_OBJECT_MARKER
        assert buf.read(8) == fp
        out.append(fastavro.schemaless_reader(buf, schema.parsed))
    return out


def fastavro_bytes(records: list[dict], schema: Schema) -> tuple[bytes, list[int]]:
    buf = io.BytesIO()
    ends = []
    for r in records:
        fastavro.schemaless_writer(buf, schema.parsed, r)
        ends.append(buf.tell())
    return buf.getvalue(), ends


def engine_records(n: int, t0: int = 1_700_000_000_000_000_000) -> list[dict]:
    states = ["IDLE", "RUN", "FAULT"]
    return [
        {
            "time": t0 + k * 10_000_000,
            "rpm": 2500.0 + k,
            "torque": -3.25 * k,
            "temperature": 85.5,
            "throttle": float(k % 100),
            "state": states[k % 3],
            "counter": k,
        }
        for k in range(n)
    ]


def engine_array(n: int) -> np.ndarray:
    arr = np.zeros(
        n,
        dtype=[
            ("time", "<i8"),
            ("rpm", "<f8"),
            ("torque", "<f8"),
            ("temperature", "<f8"),
            ("throttle", "<f4"),
            ("state", "<i4"),
            ("counter", "<i8"),
        ],
    )
    arr["time"] = 1_700_000_000_000_000_000 + np.arange(n) * 10_000_000
    arr["rpm"] = 2500.0 + np.arange(n)
    arr["torque"] = -3.25 * np.arange(n)
    arr["temperature"] = 85.5
    arr["throttle"] = np.arange(n) % 100
    arr["state"] = np.arange(n) % 3
    arr["counter"] = np.arange(n)
    return arr


def all_records(arr: np.ndarray) -> list[dict]:
    """The dicts fastavro should get for rows of an ALL_DTYPE array (unmasked)."""
    out = []
    for t, b, i, l_, f, d, e, x, ni, nd, (nl, g) in arr.tolist():
        out.append(
            {
                "time": t, "b": b, "i": i, "l": l_, "f": f, "d": d, "e": "ABCD"[e],
                "x": x.ljust(3, b"\0"), "nothing": None, "ni": ni,
                "nd": None if nd != nd else nd, "sub": {"nl": nl, "g": g},
            }
        )  # fmt: skip
    return out


# -- constructor, life cycle ------------------------------------------------------------


def test_exported_and_closes(receiver, schemas_dir):
    rx = receiver()
    assert speeddata.Source is Source
    with Source("engine", schemas_dir / "engine.avsc", addr(rx)) as src:
        assert not src.closed
        assert "engine" in repr(src)
    assert src.closed
    with pytest.raises(OSError):
        src.send(engine_records(1)[0])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"max_datagram": 0}, ["max_datagram", "65507"]),
        ({"max_datagram": 65508}, ["max_datagram", "65507"]),
        ({"relay": "localhost"}, ["HOST:PORT"]),
        ({"relay": ("127.0.0.1", 0)}, ["port", "1 to 65535"]),
        ({"relay": ("no-such-host.invalid", 9)}, ["cannot be resolved"]),
    ],
)
def test_bad_settings(schemas_dir, kwargs, words):
    kwargs = {"relay": ("127.0.0.1", 9), **kwargs}
    with pytest.raises(SourceError) as err:
        Source("engine", schemas_dir / "engine.avsc", **kwargs)
    for w in words:
        assert w in str(err.value)


def test_schema_forms(schemas_dir, receiver):
    rx = receiver()
    path = schemas_dir / "engine.avsc"
    for schema in (path, str(path), Schema(path), Schema(path).avsc, Schema(path).json):
        with Source("engine", schema, f"127.0.0.1:{addr(rx)[1]}") as src:
            assert src.schema == Schema(path)


# -- dict path --------------------------------------------------------------------------


def test_send_one_record_per_datagram(receiver, schemas_dir):
    rx = receiver()
    schema = Schema(schemas_dir / "engine.avsc")
    recs = engine_records(5)
    with Source("engine", schema, addr(rx)) as src:
        for r in recs:
            src.send(r)
        assert (src.n_datagrams, src.n_records) == (5, 5)
    got = recv_datagrams(rx, 5)
    assert [decode(d, schema) for d in got] == [[r] for r in recs]
    assert src.n_bytes == sum(len(d) for d in got)
    assert b"".join(got) == fastavro_bytes(recs, schema)[0]


@pytest.mark.parametrize("name", ["engine", "power", "status", "fixed"])
def test_send_many_every_schema(receiver, schemas_dir, name):
    rx = receiver()
    schema = Schema(schemas_dir / f"{name}.avsc")
    rng = np.random.default_rng(1)
    recs = []
    for k in range(300):
        rec = {}
        for sig in schema.signals:
            v = {
                "long": int(rng.integers(*I64)),
                "double": float(rng.normal()),
                "float": float(np.float32(rng.normal())),
                "string": f"message {k} \u00e9\u4e2d",
                "boolean": bool(k % 2),
                "enum": (sig.symbols or ("",))[k % len(sig.symbols or ("",))],
            }[sig.type]
            if sig.nullable and k % 4 == 0:
                v = None
            target = rec
            parts = sig.name.split(".")
            for p in parts[:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = v
        recs.append(rec)
    with Source(name, schema, addr(rx), max_datagram=500) as src:
        n = src.send_many(recs)
        assert n == src.n_datagrams > 1
        assert src.n_records == len(recs)
    got = recv_datagrams(rx, n)
    assert all(len(d) <= 500 for d in got)
    assert [r for d in got for r in decode(d, schema)] == recs
    assert b"".join(got) == fastavro_bytes(recs, schema)[0]


def test_send_many_accepts_generators_and_empty(receiver, schemas_dir):
    rx = receiver()
    schema = Schema(schemas_dir / "power.avsc")
    with Source("power", schema, addr(rx)) as src:
        assert src.send_many([]) == 0
        gen = ({"time": k, "voltage": 1.0, "current": 2.0, "noise": 0.5} for k in range(3))
        assert src.send_many(gen) == 1
    assert len(decode(recv_datagrams(rx, 1)[0], schema)) == 3


def test_time_filled_when_missing(receiver, schemas_dir):
    rx = receiver()
    schema = Schema(schemas_dir / "engine.avsc")
    rec = engine_records(1)[0]
    del rec["time"]
    before = time.time_ns()
    with Source("engine", schema, addr(rx)) as src:
        src.send(rec)
        src.send_many([rec, {**rec, "time": 42}])
    after = time.time_ns()
    assert "time" not in rec  # the caller's dict is left alone
    one, many = (decode(d, schema) for d in recv_datagrams(rx, 2))
    assert before <= one[0]["time"] <= after
    assert before <= many[0]["time"] <= after
    assert many[1]["time"] == 42


def test_time_scaled_to_field_unit(receiver):
    rx = receiver()
    avsc = {
        "type": "record",
        "name": "m",
        "fields": [
            {"name": "v", "type": "double"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        ],
    }
    schema = Schema(avsc)
    assert schema.time_field == "ts" and schema.time_scale == 1_000_000
    before = time.time_ns() // 1_000_000
    with Source("m", schema, addr(rx)) as src:
        src.send({"v": 1.0})
    after = time.time_ns() // 1_000_000
    (got,) = decode(recv_datagrams(rx, 1)[0], schema)
    assert before <= got["ts"].timestamp() * 1000 <= after + 1


@pytest.mark.parametrize(
    "change, words",
    [
        ({"rpm": "abc"}, ["record 0", "'rpm'", "'abc'", "str", "double"]),
        ({"rpm": None}, ["'rpm'", "None", "double"]),
        ({"state": "BROKEN"}, ["'state'", "'BROKEN'", "IDLE, RUN, FAULT"]),
        ({"counter": 2**70}, ["'counter'", str(2**70), "long"]),
        ({"torque": ...}, ["'torque'", "missing", "double"]),
    ],
)
def test_bad_record_names_field_value_type(receiver, schemas_dir, change, words):
    rx = receiver()
    good = engine_records(1)[0]
    bad = {k: v for k, v in {**good, **change}.items() if v is not ...}
    with Source("engine", schemas_dir / "engine.avsc", addr(rx)) as src:
        with pytest.raises(SourceError) as err:
            src.send(bad)
        for w in words:
            assert w in str(err.value), str(err.value)
        # send_many: the bad record is named by index and nothing of the call is sent
        with pytest.raises(SourceError) as err:
            src.send_many([good, good, bad, good])
        assert "record 2" in str(err.value)
        assert (src.n_datagrams, src.n_records, src.n_bytes) == (0, 0, 0)
        src.send(good)  # the Source is still usable
    assert decode(recv_datagrams(rx, 1)[0], src.schema) == [good]


def test_bad_nested_and_union_fields(receiver, schemas_dir):
    rx = receiver()
    rec = {
        "time": 1,
        "message": "hi",
        "uptime": 1.0,
        "load": "high",
        "host": {"cpu_temp": 50.0, "free_disk": 1},
    }
    with Source("status", schemas_dir / "status.avsc", addr(rx)) as src:
        with pytest.raises(
            SourceError, match=r"field 'load': got 'high' \(str\), expected null or double"
        ):
            src.send(rec)
        rec["load"] = 0.5
        rec["host"] = {"cpu_temp": "hot", "free_disk": 1}
        with pytest.raises(SourceError, match=r"field 'host.cpu_temp': got 'hot'.*float"):
            src.send(rec)
        with pytest.raises(SourceError, match="must be a dict of field values, not list"):
            src.send_many([[1, 2, 3]])


def test_record_larger_than_limit_goes_alone_and_too_large_is_refused(receiver, schemas_dir):
    rx = receiver()
    schema = Schema(schemas_dir / "status.avsc")
    base = {"time": 1, "uptime": 1.0, "load": None, "host": {"cpu_temp": 1.0, "free_disk": 2}}
    small = {**base, "message": "ok"}
    big = {**base, "message": "x" * 3000}
    with Source("status", schema, addr(rx), max_datagram=200) as src:
        assert src.send_many([small, small, big, small]) == 3
        huge = {**base, "message": "y" * MAX_UDP_PAYLOAD}
        with pytest.raises(SourceError, match=r"record 1 encodes to \d+ bytes.*65507"):
            src.send_many([small, huge])
        with pytest.raises(SourceError, match="65507"):
            src.send(huge)
        assert src.n_datagrams == 3
    got = recv_datagrams(rx, 3)
    assert [len(decode(d, schema)) for d in got] == [2, 1, 1]
    assert len(got[1]) > 3000


def test_max_datagram_65507_packs_many(receiver, schemas_dir):
    rx = receiver()
    schema = Schema(schemas_dir / "engine.avsc")
    recs = engine_records(2000)
    with Source("engine", schema, addr(rx), max_datagram=MAX_UDP_PAYLOAD) as src:
        n = src.send_many(recs)
    got = recv_datagrams(rx, n)
    assert all(len(d) <= MAX_UDP_PAYLOAD for d in got)
    assert max(len(d) for d in got) > MAX_UDP_PAYLOAD - 100
    assert [r for d in got for r in decode(d, schema)] == recs


# -- datagram cutting -------------------------------------------------------------------


def test_datagram_bounds_greedy_whole_records():
    ends = [10, 20, 30, 45, 200, 205, 210]
    assert datagram_bounds(ends, 30) == [(0, 30, 3), (30, 45, 1), (45, 200, 1), (200, 210, 2)]
    assert datagram_bounds(ends, 1000) == [(0, 210, 7)]
    assert datagram_bounds(ends, 1) == [
        (0, 10, 1), (10, 20, 1), (20, 30, 1), (30, 45, 1), (45, 200, 1), (200, 205, 1),
        (205, 210, 1),
    ]  # fmt: skip
    assert datagram_bounds([], 100) == []


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=200),
    limit=st.integers(1, 1000),
)
def test_datagram_bounds_property(sizes, limit):
    ends = np.cumsum(sizes)
    bounds = datagram_bounds(ends, limit)
    assert bounds[0][0] == 0 and bounds[-1][1] == ends[-1]
    assert sum(n for _, _, n in bounds) == len(sizes)
    k = 0
    for (start, stop, n), nxt in zip(bounds, bounds[1:] + [None], strict=True):
        assert stop == ends[k + n - 1] and (k == 0 or start == ends[k - 1])
        assert stop - start <= limit or n == 1
        if nxt is not None:  # greedy: the next record would not have fit
            assert ends[k + n] - start > limit
        k += n


# -- numpy path -------------------------------------------------------------------------


def test_send_array_engine_matches_fastavro(receiver, schemas_dir, impl):
    rx = receiver()
    schema = Schema(schemas_dir / "engine.avsc")
    arr = engine_array(500)
    with Source("engine", schema, addr(rx)) as src:
        n = src.send_array(arr)
        assert src.n_records == 500
    got = recv_datagrams(rx, n)
    assert all(len(d) <= 1400 for d in got)
    assert b"".join(got) == fastavro_bytes(engine_records(500), schema)[0]


def test_send_array_power_with_times_and_single_object(receiver, schemas_dir, impl):
    rx = receiver()
    schema = Schema(schemas_dir / "power.avsc")
    arr = np.zeros(1000, dtype=[("voltage", "<f8"), ("current", "<f8"), ("noise", "<f4")])
    arr["voltage"] = np.sin(np.arange(1000) / 10) * 325
    arr["current"] = np.where(np.arange(1000) % 20 < 10, 10.0, -10.0)
    arr["noise"] = np.linspace(-1, 1, 1000)
    times = 1_700_000_000_000_000_000 + np.arange(1000) * 1_000_000
    with Source("power", schema, addr(rx), single_object=True, max_datagram=1000) as src:
        n = src.send_array(arr, times=times)
    got = recv_datagrams(rx, n)
    assert all(len(d) <= 1000 for d in got)
    recs = [r for d in got for r in decode_single_object(d, schema)]
    assert [r["time"] for r in recs] == times.tolist()
    assert [r["voltage"] for r in recs] == arr["voltage"].tolist()
    assert [r["noise"] for r in recs] == arr["noise"].tolist()


def test_send_array_time_filled_now_or_datetime64(receiver, schemas_dir, impl):
    rx = receiver()
    schema = Schema(schemas_dir / "engine.avsc")
    arr = engine_array(3)
    no_time = arr[[n for n in arr.dtype.names if n != "time"]]
    before = time.time_ns()
    with Source("engine", schema, addr(rx)) as src:
        src.send_array(no_time)
        after = time.time_ns()
        stamps = np.array(["2025-01-01T00:00:00.000000001", "2025-01-02", "2025-01-03"], "M8[ns]")
        src.send_array(no_time, times=stamps)
        withdt = np.zeros(
            3, dtype=[("time", "M8[us]")] + [(n, arr.dtype[n]) for n in no_time.dtype.names]
        )
        for name in no_time.dtype.names:
            withdt[name] = arr[name]
        withdt["time"] = stamps.astype("M8[us]")
        src.send_array(withdt)
    first, second, third = (decode(d, schema) for d in recv_datagrams(rx, 3))
    assert all(before <= r["time"] <= after for r in first)
    assert len({r["time"] for r in first}) == 1
    assert [r["time"] for r in second] == stamps.view(np.int64).tolist()
    assert [r["time"] for r in third] == stamps.astype("M8[us]").astype("M8[ns]").view(
        np.int64
    ).tolist()


def test_send_array_fixed_layout(receiver, schemas_dir, impl):
    rx = receiver()
    schema = Schema(schemas_dir / "fixed.avsc")
    assert schema.dtype is not None
    packed = np.zeros(300, dtype=schema.dtype)
    packed["x"] = np.arange(300) * 0.5
    packed["y"] = -1.0
    packed["z"] = np.nan
    packed["ok"] = np.arange(300) % 3 == 0
    other = np.zeros(300, dtype=[("ok", "u1"), ("z", "<f4"), ("y", "<i2"), ("x", ">f8")])
    for name in ("x", "ok"):
        other[name] = packed[name]
    other["y"] = -1
    other["z"] = np.nan
    expected = [
        {"x": x, "y": -1.0, "z": None, "ok": ok}
        for x, ok in zip(packed["x"].tolist(), packed["ok"].tolist(), strict=True)
    ]
    for arr in (packed, other):
        for single in (False, True):
            with Source("vib", schema, addr(rx), single_object=single, max_datagram=333) as src:
                n = src.send_array(arr)
            got = recv_datagrams(rx, n)
            assert all(len(d) <= 333 for d in got)
            reader = decode_single_object if single else decode
            recs = [r for d in got for r in reader(d, schema)]
            for r in recs:
                assert r["z"] != r["z"]  # NaN kept (not nullable)
                r["z"] = None
            assert recs == expected
            if not single:
                assert b"".join(got) == packed.tobytes()


def test_send_array_refuses_strings_clearly(receiver, schemas_dir):
    rx = receiver()
    with Source("status", schemas_dir / "status.avsc", addr(rx)) as src:
        arr = np.zeros(2, dtype=[("uptime", "<f8")])
        with pytest.raises(SourceError, match=r"field 'message' is a string.*send_many\(\)"):
            src.send_array(arr)


@pytest.mark.parametrize(
    "field, values, dtype, words",
    [
        ("counter", [1.5, 2.0], "<f8", ["'counter'", "value 1.5 at row 0", "not a whole"]),
        ("counter", [1.0, 2.0**63], "<f8", ["'counter'", "row 1", "out of range for long"]),
        ("counter", [np.nan, 2.0], "<f4", ["'counter'", "nan at row 0", "not a whole"]),
        ("counter", [1, 2], "<c8", ["'counter'", "complex64", "astype(np.int64)"]),
        ("state", [1, 3], "<i4", ["'state'", "value 3 at row 1", "out of range", "IDLE"]),
        ("state", [-1, 0], "<i8", ["'state'", "value -1 at row 0"]),
        ("state", ["RUN", "OFF"], "U5", ["'state'", "'OFF'", "not a symbol"]),
        ("rpm", ["a", "b"], "U1", ["'rpm'", "numeric dtype"]),
        ("counter", [2**63 - 1, 2**64 - 1], "<u8", ["'counter'", str(2**64 - 1), "row 1"]),
    ],
)
def test_send_array_bad_columns(receiver, schemas_dir, impl, field, values, dtype, words):
    rx = receiver()
    arr = engine_array(2)
    names = [n for n in arr.dtype.names if n != field]
    bad = np.zeros(2, dtype=[(n, arr.dtype[n]) for n in names] + [(field, dtype)])
    for n in names:
        bad[n] = arr[n]
    bad[field] = values
    with Source("engine", schemas_dir / "engine.avsc", addr(rx)) as src:
        with pytest.raises(SourceError) as err:
            src.send_array(bad)
        assert src.n_datagrams == 0
    for w in words:
        assert w in str(err.value), str(err.value)


def test_send_array_int_ranges_checked(receiver, impl):
    rx = receiver()
    schema = Schema(ALL_NUMERIC)
    arr = np.zeros(3, dtype=[(n, "<i8" if n == "i" else ALL_DTYPE[n]) for n in ALL_DTYPE.names])
    arr["i"] = [0, I32[1], I32[1] + 1]
    with Source("all", schema, addr(rx)) as src:
        with pytest.raises(SourceError, match=r"field 'i': value 2147483648 at row 2 .*int"):
            src.send_array(arr)
        arr["i"][2] = I32[0]
        arr["b"] = True
        src.send_array(arr)  # int64 column within the int range is fine
        bad = arr.astype([(n, "<i8" if n == "b" else arr.dtype[n]) for n in arr.dtype.names])
        bad["b"] = [0, 1, 2]
        with pytest.raises(SourceError, match=r"field 'b': value 2 at row 2 is not a boolean"):
            src.send_array(bad)
    assert [r["i"] for r in decode(recv_datagrams(rx, 1)[0], schema)] == [0, I32[1], I32[0]]


def test_send_array_missing_field_and_wrong_shape(receiver, schemas_dir):
    rx = receiver()
    arr = engine_array(2)
    with Source("engine", schemas_dir / "engine.avsc", addr(rx)) as src:
        with pytest.raises(SourceError, match=r"field 'torque' is missing from the array"):
            src.send_array(arr[["time", "rpm"]])
        with pytest.raises(SourceError, match="needs a structured array"):
            src.send_array(np.zeros(3))
        with pytest.raises(SourceError, match=r"times has shape \(3,\); the array has 2 rows"):
            src.send_array(arr, times=np.zeros(3, dtype=np.int64))
        with pytest.raises(SourceError, match="times must be integer ns"):
            src.send_array(arr, times=np.zeros(2))
        assert src.send_array(arr[:0]) == 0
        assert src.n_datagrams == 0


def test_masked_array_nulls(receiver, impl):
    rx = receiver()
    schema = Schema(ALL_NUMERIC)
    arr = np.zeros(4, dtype=ALL_DTYPE)
    arr["ni"] = [1, 2, 3, 4]
    arr["nd"] = [0.5, np.nan, 1.5, 2.5]
    arr["sub"]["nl"] = [7, 8, 9, 10]
    mask = np.zeros(
        4,
        dtype=[(n, "?") if n != "sub" else (n, [("nl", "?"), ("g", "?")]) for n in ALL_DTYPE.names],
    )
    mask["ni"] = [True, False, False, True]
    mask["nd"] = [False, False, True, False]
    mask["sub"]["nl"] = [False, True, False, False]
    with Source("all", schema, addr(rx)) as src:
        src.send_array(np.ma.array(arr, mask=mask))
        mask["l"][1] = True
        with pytest.raises(SourceError, match=r"field 'l' is masked at row 1 but is not nullable"):
            src.send_array(np.ma.array(arr, mask=mask))
    recs = decode(recv_datagrams(rx, 1)[0], schema)
    assert [r["ni"] for r in recs] == [None, 2, 3, None]
    assert [r["nd"] for r in recs] == [0.5, None, None, 2.5]
    assert [r["sub"]["nl"] for r in recs] == [7, None, 9, 10]


def test_extreme_ints_byte_identical(impl, receiver):
    rx = receiver()
    schema = Schema(ALL_NUMERIC)
    arr = np.zeros(6, dtype=ALL_DTYPE)
    for name, (lo, hi) in (("time", I64), ("i", I32), ("l", I64), ("ni", I32)):
        arr[name] = [lo, hi, 0, -1, 1, lo + 1]
    arr["sub"]["nl"] = [I64[0], I64[1], 0, -1, 1, 63]
    arr["e"] = [0, 3, 1, 2, 0, 3]
    arr["x"] = [b"\x00\x00\x00", b"\xff\xff\xff", b"abc", b"a\x00c", b"\x01", b""]
    with Source("all", schema, addr(rx)) as src:
        data, ends = src.encode_array(arr)
    expected, exp_ends = fastavro_bytes(all_records(arr), schema)
    assert data.tobytes() == expected
    assert ends.tolist() == exp_ends


int32s = st.integers(*I32)
int64s = st.integers(*I64)
doubles = st.floats(allow_nan=False)
floats32 = st.floats(width=32, allow_nan=False)
rows = st.tuples(
    int64s,
    st.booleans(),
    int32s,
    int64s,
    floats32,
    doubles,
    st.integers(0, 3),
    st.binary(min_size=3, max_size=3),
    st.one_of(st.none(), int32s),
    st.one_of(st.none(), doubles),
    st.tuples(st.one_of(st.none(), int64s), floats32),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(rows, max_size=40), st.booleans())
def test_encoder_matches_fastavro_property(impl, row_list, single):
    schema = Schema(ALL_NUMERIC)
    arr = np.zeros(len(row_list), dtype=ALL_DTYPE)
    mask = np.zeros(
        len(row_list),
        dtype=[(n, "?") if n != "sub" else (n, [("nl", "?"), ("g", "?")]) for n in ALL_DTYPE.names],
    )
    for k, row in enumerate(row_list):
        t, b, i, l_, f, d, e, x, ni, nd, (nl, g) = row
        arr[k] = (t, b, i, l_, f, d, e, x, ni or 0, np.nan if nd is None else nd, (nl or 0, g))
        mask["ni"][k] = ni is None
        mask["sub"]["nl"][k] = nl is None
    records = [
        {
            "time": t, "b": b, "i": i, "l": l_, "f": f, "d": d, "e": "ABCD"[e], "x": x,
            "nothing": None, "ni": ni, "nd": nd, "sub": {"nl": nl, "g": g},
        }
        for t, b, i, l_, f, d, e, x, ni, nd, (nl, g) in row_list
    ]  # fmt: skip
    src = Source("all", schema, ("127.0.0.1", 9), single_object=single)
    try:
        data, ends = src.encode_array(np.ma.array(arr, mask=mask))
        dict_data, dict_ends = src.encode_records(records)
    finally:
        src.close()
    expected, exp_ends = fastavro_bytes(records, schema)
    if single:
        prefix = SINGLE_OBJECT_MARKER + schema.fingerprint
        expected = b"".join(
            prefix + expected[a:b]
            for a, b in zip([0, *exp_ends][: len(exp_ends)], exp_ends, strict=True)
        )
        exp_ends = [e + 10 * (k + 1) for k, e in enumerate(exp_ends)]
    assert data.tobytes() == expected
    assert ends.tolist() == exp_ends
    assert dict_data == expected and dict_ends == exp_ends


def test_encoder_refuses_bad_columns():
    program = Schema(ALL_NUMERIC).program
    assert (
        record_size_bound(program) == 10 + 1 + 5 + 10 + 4 + 8 + 5 + 3 + 1 + 5 + 1 + 8 + 1 + 10 + 4
    )
    assert record_size_bound(Schema(SCHEMA_WITH_STRING).program) == -1
    with pytest.raises(ValueError, match="string or bytes"):
        encode_columns(Schema(SCHEMA_WITH_STRING).program, [None, None])
    with pytest.raises(ValueError, match="one column per program op"):
        encode_columns(program, [])
    good = [np.zeros(2, dtype="=i8"), np.zeros(2, dtype="<f8")]
    two = Schema({"type": "record", "name": "r", "fields": [
        {"name": "a", "type": "long"}, {"name": "b", "type": "double"}]}).program  # fmt: skip
    data, ends = encode_columns(two, good)
    assert data.tobytes() == b"\x00" + bytes(8) + b"\x00" + bytes(8)
    with pytest.raises(TypeError, match="dtype"):
        encode_columns(two, [np.zeros(2, dtype="=i4"), good[1]])
    with pytest.raises(ValueError, match="rows"):
        encode_columns(two, [good[0], np.zeros(3, dtype="<f8")])
    with pytest.raises(TypeError, match="1-D"):
        encode_columns(two, [good[0], None])


SCHEMA_WITH_STRING = {
    "type": "record",
    "name": "s",
    "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "long"}],
}


def test_single_object_dicts_parse(receiver, schemas_dir):
    rx = receiver()
    schema = Schema(schemas_dir / "status.avsc")
    recs = [
        {"time": k, "message": "m" * k, "uptime": 1.0, "load": None if k % 2 else 0.25,
         "host": {"cpu_temp": 40.0, "free_disk": 10**12}}
        for k in range(50)
    ]  # fmt: skip
    with Source("status", schema, addr(rx), single_object=True, max_datagram=400) as src:
        n = src.send_many(recs)
        src.send(recs[0])
    got = recv_datagrams(rx, n + 1)
    assert all(len(d) <= 400 for d in got[:-1])
    assert [r for d in got[:-1] for r in decode_single_object(d, schema)] == recs
    assert decode_single_object(got[-1], schema) == [recs[0]]
    # the fingerprint is CRC-64-AVRO of the canonical form, little-endian (spec algorithm)
    assert got[0][2:10] == struct.pack("<Q", crc64_avro(schema.canonical.encode()))


def crc64_avro(data: bytes) -> int:
    """The Avro spec's reference fingerprint64, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


def test_nested_time_field_filled(receiver, impl):
    rx = receiver()
    avsc = {
        "type": "record",
        "name": "n",
        "fields": [
            {"name": "v", "type": "double"},
            {
                "name": "meta",
                "type": {
                    "type": "record",
                    "name": "meta",
                    "fields": [
                        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
                        {"name": "seq", "type": "int"},
                    ],
                },
            },
        ],
    }
    schema = Schema(avsc)
    assert schema.time_field == "meta.ts"
    before = time.time_ns()
    with Source("n", schema, addr(rx)) as src:
        src.send({"v": 1.0, "meta": {"seq": 3}})
        src.send_many([{"v": 2.0, "meta": {"seq": 4}}, {"v": 3.0, "meta": {"seq": 5, "ts": 7}}])
        src.send_array(np.array([(4.0, 6)], dtype=[("v", "<f8"), ("meta.seq", "<i4")]))
    after = time.time_ns()
    one, many, arr = (decode(d, schema) for d in recv_datagrams(rx, 3))
    assert before <= one[0]["meta"]["ts"] <= after and one[0]["meta"]["seq"] == 3
    assert before <= many[0]["meta"]["ts"] <= after and many[1]["meta"]["ts"] == 7
    assert before <= arr[0]["meta"]["ts"] <= after and arr[0]["meta"]["seq"] == 6
