"""A Source never sends what the relay would refuse, nor changes a value on the way.

``send``, ``send_many`` and ``send_array`` check every value before anything is sent: a
bad one raises SourceError naming the field and the value, and nothing of the call goes
(all or nothing), so no good record is lost in a datagram the relay refuses. fastavro is
the oracle for what a value becomes; the relay's validator for what the relay accepts.
Real UDP on 127.0.0.1 only.
"""

from __future__ import annotations

import io
import math
import socket

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay_helpers import harness_factory, read_channel, wait_for
from speeddata._relay import Engine
from speeddata._validate import Validator
from speeddata.relay_ref import PyEngine
from speeddata.schema import Schema
from speeddata.source import Source, SourceError
from test_engine import Rig
from test_source import decode

I32 = (-(2**31), 2**31 - 1)
I64 = (-(2**63), 2**63 - 1)

MIXED = Schema(
    {
        "type": "record",
        "name": "mixed",
        "fields": [
            {"name": "time", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
            {"name": "code", "type": "int"},
            {"name": "count", "type": "long"},
            {"name": "flag", "type": "boolean"},
            {"name": "level", "type": ["null", "int"]},
            {"name": "ok", "type": ["null", "boolean"]},
            {"name": "name", "type": "string"},
            {"name": "state", "type": {"type": "enum", "name": "S", "symbols": ["A", "B"]}},
            {"name": "v", "type": "double"},
            {"name": "w", "type": "float"},
            {"name": "host", "type": {"type": "record", "name": "host", "fields": [
                {"name": "port", "type": "int"}]}},
        ],
    }
)


def good(i: int) -> dict:
    return {
        "time": 1_700_000_000_000_000_000 + i, "code": i, "count": 10 * i, "flag": i % 2 == 0,
        "level": None if i % 3 else i, "ok": None, "name": f"n{i}", "state": "AB"[i % 2],
        "v": i / 4, "w": 0.5, "host": {"port": 80},
    }  # fmt: skip


def drain(sock: socket.socket, settle: float = 0.05) -> list[bytes]:
    """Every datagram queued on ``sock`` (after ``settle`` seconds for loopback delivery)."""
    sock.settimeout(settle)
    out = []
    try:
        while len(out) < 10_000:
            out.append(sock.recv(65536))
    except (BlockingIOError, TimeoutError):
        pass
    return out


# -- the cases of the issue -------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("code", 2**31, ["'code'", "2147483648", "out of range for int"]),
        ("code", 2**40, ["'code'", "1099511627776", "out of range for int"]),
        ("code", -(2**31) - 1, ["'code'", "-2147483649", "out of range"]),
        ("code", 3.7, ["'code'", "3.7", "not an integer (int)"]),
        ("code", math.nan, ["'code'", "nan", "not an integer"]),
        ("count", 2.5, ["'count'", "2.5", "not an integer (long)"]),
        ("count", 2**63, ["'count'", str(2**63), "out of range for long"]),
        ("count", np.float64(1e300), ["'count'", "1e+300", "out of range for long"]),
        ("flag", "no", ["'flag'", "'no'", "not a boolean"]),
        ("flag", 2, ["'flag'", "2", "not a boolean"]),
        ("flag", None, ["'flag'", "None", "not a boolean"]),
        ("level", 2**31, ["'level'", "2147483648"]),
        ("level", 1.5, ["'level'", "1.5"]),
        ("ok", "yes", ["'ok'", "'yes'"]),
        ("name", "a\udcff", ["'name'", "not valid UTF-8"]),
        ("name", b"bytes", ["'name'", "b'bytes'"]),
        ("state", "C", ["'state'", "'C'"]),
        ("host", {"port": 2**31}, ["'host.port'", "2147483648", "int"]),
    ],
)
def test_bad_value_refused_naming_field_and_value(receiver, field, value, words):
    rx = receiver()
    bad = {**good(1), field: value}
    with Source("mixed", MIXED, rx.getsockname()) as src:
        with pytest.raises(SourceError) as err:
            src.send(bad)
        for w in words:
            assert w in str(err.value), str(err.value)
        assert err.value.record == 0
        with pytest.raises(SourceError) as err:
            src.send_many([good(i) for i in range(40)] + [bad] + [good(i) for i in range(59)])
        assert "record 40" in str(err.value) and "nothing of this call was sent" in str(err.value)
        assert err.value.record == 40
        assert (src.n_datagrams, src.n_records, src.n_bytes) == (0, 0, 0)
    assert drain(rx) == []


@pytest.mark.parametrize(
    "field, value, stored",
    [
        ("code", 3.0, 3), ("code", np.int64(-5), -5), ("code", I32[1], I32[1]),
        ("code", True, 1), ("count", np.uint64(7), 7), ("count", I64[0], I64[0]),
        ("count", 1e18, 10**18), ("flag", 1, True), ("flag", 0, False),
        ("flag", np.bool_(True), True), ("level", None, None), ("level", -7, -7),
        ("ok", False, False), ("name", "é✓", "é✓"),
    ],
)  # fmt: skip
def test_good_values_sent_as_given(receiver, field, value, stored):
    rx = receiver()
    with Source("mixed", MIXED, rx.getsockname()) as src:
        src.send({**good(1), field: value})
    (datagram,) = drain(rx)
    (got,) = decode(datagram, MIXED)
    assert got[field] == stored and type(got[field]) is type(stored)


def test_one_bad_record_loses_no_good_one(receiver):
    """The issue: 100 records, one out of range. Nothing is sent and the user is told
    which; the 99 good ones then go, every datagram one the relay's validator accepts."""
    rx = receiver()
    records = [good(i) for i in range(100)]
    records[37]["code"] = 2**31
    with Source("mixed", MIXED, rx.getsockname(), max_datagram=300) as src:
        with pytest.raises(SourceError) as err:
            src.send_many(records)
        assert (err.value.record, err.value.field, err.value.value) == (37, "code", 2**31)
        assert src.n_records == 0
        assert drain(rx) == []
        del records[37]
        n = src.send_many(records)
        assert src.n_records == 99 and src.n_datagrams == n > 1
    got = drain(rx)
    assert len(got) == n
    validator = Validator(MIXED)
    assert sum(validator.count(d) for d in got) == 99
    assert [r["code"] for d in got for r in decode(d, MIXED)] == [r["code"] for r in records]


def test_send_failure_midway_says_how_many_went(receiver, monkeypatch):
    """A send that fails after some datagrams names how many records went: never more."""
    rx = receiver()
    with Source("mixed", MIXED, rx.getsockname(), max_datagram=200) as src:
        real = src._sock
        calls = []

        class Failing:
            def sendto(self, payload, address):
                calls.append(len(payload))
                if len(calls) == 3:
                    raise OSError(105, "No buffer space available")
                return real.sendto(payload, address)

            def fileno(self):
                return real.fileno()

        monkeypatch.setattr(src, "_sock", Failing())
        with pytest.raises(SourceError) as err:
            src.send_many([good(i) for i in range(30)])
        monkeypatch.setattr(src, "_sock", real)
        sent = src.n_records
        assert 0 < sent < 30
        assert f"{sent} of the call's 30 records were sent before" in str(err.value)
        assert "No buffer space" in str(err.value)
    assert sum(len(decode(d, MIXED)) for d in drain(rx)) == sent


# -- hypothesis: any value, fastavro as the oracle -------------------------------------

WILD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**31, -(2**31) - 1, 2**63, -(2**63) - 1, I32[1], I64[0]]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([3.0, 3.7, -0.0, 1e18, 2.0**63]),
    st.text(max_size=5),
    st.sampled_from(["A", "B", "C", "a\udcff", "yes"]),
    st.binary(max_size=4),
)
FIELDS = ["code", "count", "flag", "level", "ok", "name", "state", "v", "w"]


def oracle(field: str, value) -> bool:
    """Whether a value is fine for the field: fastavro writes it, the relay's validator
    accepts the bytes and fastavro reads the same value back (floats: any)."""
    record = {**good(1), field: value}
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, MIXED.parsed, record)
    except Exception:
        return False
    data = buf.getvalue()
    if Validator(MIXED).count(data) != 1:
        return False
    back = fastavro.schemaless_reader(io.BytesIO(data), MIXED.parsed)[field]
    if field in ("v", "w"):
        return True
    return back == value and type(back) is type(value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=WILD)
def test_any_value_sent_faithfully_or_refused_by_name(field, value):
    """Accepted: the relay's validator takes the bytes and fastavro reads the value back
    (floats rounded, integral floats as ints, 0/1 as booleans). Refused: the error names
    the field, and the oracle agrees the value was bad (or would have changed)."""
    with Source("mixed", MIXED, ("127.0.0.1", 9)) as src:  # encoding only: nothing sent
        try:
            data, ends = src.encode_records([{**good(1), field: value}])
        except SourceError as exc:
            assert f"'{field}'" in str(exc) and exc.record == 0
            loosely = value
            if isinstance(value, float) and value.is_integer() and field in ("code", "count"):
                loosely = int(value)
            assert not oracle(field, value) and not oracle(field, loosely)
            return
    assert Validator(MIXED).count(data) == 1 and ends == [len(data)]
    back = fastavro.schemaless_reader(io.BytesIO(data), MIXED.parsed)[field]
    if field in ("v", "w"):  # rounded to the float type as fastavro alone does it
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, MIXED.parsed, {**good(1), field: value})
        assert data == buf.getvalue()
    elif field == "flag":
        assert back is bool(value) and value in (0, 1)
    elif field in ("code", "count") and isinstance(value, float):
        assert back == int(value) and value.is_integer()
    else:
        assert back == value and type(back) is type(value) or back == int(value)


INT_SCHEMA = Schema(
    {
        "type": "record",
        "name": "ints",
        "fields": [
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "ni", "type": ["null", "int"]},
            {"name": "b", "type": "boolean"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        ],
    }
)
COLUMN_VALUES = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([2**31, -(2**31) - 1, 2.0**31, 2.0**63, -(2.0**63), 3.5, 0.0, 1.0, 2.0]),
)


@st.composite
def int_columns(draw):
    n = draw(st.integers(1, 8))
    field = draw(st.sampled_from(["i", "l", "ni", "b", "e"]))
    dtype = draw(st.sampled_from(["<i4", "<i8", "<u8", "<f4", "<f8", "?"]))
    values = draw(st.lists(COLUMN_VALUES, min_size=n, max_size=n))
    masked = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if field == "ni" else None
    return field, dtype, values, masked


def _column(dtype: str, values: list) -> np.ndarray | None:
    """The values as a column of ``dtype``, or None where numpy cannot hold them as is."""
    kind = np.dtype(dtype).kind
    out = []
    for v in values:
        if kind == "b":
            v = bool(v) if not (isinstance(v, float) and math.isnan(v)) else True
        elif kind in "iu":
            if isinstance(v, float):
                if not (math.isfinite(v) and v.is_integer()):
                    return None
                v = int(v)
            info = np.iinfo(dtype)
            if not info.min <= v <= info.max:
                return None
        elif dtype == "<f4" and isinstance(v, float) and math.isfinite(v) and abs(v) > 3e38:
            return None
        elif dtype == "<f4" and isinstance(v, int) and abs(v) > 2**100:
            return None
        out.append(v)
    return np.array(out, dtype=dtype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(int_columns())
def test_array_columns_sent_faithfully_or_refused_by_row(case):
    """send_array's vectorised checks: int and long columns of any dtype (floats only when
    whole), booleans 0/1, enum indexes, nullable rows (masked: not checked, sent as null).
    Accepted: the relay's validator takes every record and fastavro reads the values
    back. Refused: the error names the field and a row whose value is bad."""
    field, dtype, values, masked = case
    col = _column(dtype, values)
    if col is None:
        return
    n = len(col)
    names = [f["name"] for f in INT_SCHEMA.avsc["fields"]]
    arr = np.zeros(n, dtype=[(f, dtype if f == field else "<i8" if f != "b" else "?")
                             for f in names])  # fmt: skip
    arr[field] = col
    mask = None
    if masked is not None:
        mask = np.zeros(n, dtype=[(f, "?") for f in names])
        mask["ni"] = masked
        arr = np.ma.MaskedArray(arr, mask=mask)
    is_float = np.dtype(dtype).kind == "f"
    null = np.array(masked) if masked is not None else np.zeros(n, bool)
    if is_float and field == "ni":
        null = null | np.isnan(col)
    lo, hi = {"i": I32, "ni": I32, "l": I64, "b": (0, 1), "e": (0, 2)}[field]
    with Source("ints", INT_SCHEMA, ("127.0.0.1", 9)) as src:
        try:
            data, ends = src.encode_array(arr)
        except SourceError as exc:
            assert f"field '{field}'" in str(exc)
            row = exc.record
            if row is None:  # the whole column: a float dtype for a boolean or an enum
                assert is_float and field in ("b", "e") and str(col.dtype) in str(exc)
                return
            assert row is not None and not null[row]
            v = col[row].item()
            bad = not (isinstance(v, (int, bool)) or (math.isfinite(v) and v.is_integer()))
            bad = bad or not lo <= int(v) <= hi
            bad = bad or (is_float and field in ("b", "e"))
            assert bad, (field, dtype, v)
            return
    assert not is_float or field not in ("b", "e")
    data = bytes(np.asarray(data))
    assert Validator(INT_SCHEMA).count(data) == n
    back = decode(data, INT_SCHEMA)
    for k in range(n):
        got = back[k][field]
        if null[k]:
            assert got is None
        elif field == "e":
            assert got == "ABC"[int(col[k])]
        elif field == "b":
            assert got is bool(col[k])
        else:
            assert got == int(col[k])


def test_array_bad_time_values(receiver):
    rx = receiver()
    arr = np.zeros(2, dtype=[("code", "<i4"), ("count", "<i8")])
    schema = Schema({"type": "record", "name": "t", "fields": [
        {"name": "time", "type": "long"}, {"name": "code", "type": "int"},
        {"name": "count", "type": "long"}]})  # fmt: skip
    with Source("t", schema, rx.getsockname()) as src:
        with pytest.raises(SourceError, match=r"times: NaT \(not a time\) at row 1"):
            src.send_array(arr, times=np.array(["2026-01-01", "NaT"], dtype="datetime64[ns]"))
        with pytest.raises(SourceError, match=r"times: 18446744073709551615 at row 0 .*range"):
            src.send_array(arr, times=np.array([2**64 - 1, 1], dtype=np.uint64))
        assert src.n_datagrams == 0
    assert drain(rx) == []


# -- through a relay: what the source sends is what the cache holds ---------------------


@pytest.fixture(params=[pytest.param(Engine, id="compiled"), pytest.param(PyEngine, id="python")])
def rig(request, tmp_path):
    yield from harness_factory(Rig, request.param, tmp_path)


def test_relay_stores_every_good_record(rig):
    """send_many of 100 with one out of range, then the 99: both engines store all 99 and
    reject nothing (before the fix the relay rejected the datagram with the bad record
    and the good ones packed with it)."""
    r = rig()
    port = r.channel(MIXED, "mixed", cid=1).port
    r.start()
    records = [good(i) for i in range(100)]
    records[37]["code"] = 3.7
    with Source("mixed", MIXED, ("127.0.0.1", port), max_datagram=400) as src:
        with pytest.raises(SourceError, match=r"record 37: field 'code': 3.7 is not an integer"):
            src.send_many(records)
        del records[37]
        n = src.send_many(records)
    wait_for(lambda: r.processed(1) >= n)
    r.stop()
    st = r.engine.stats()[1]
    assert (st["datagrams"], st["records"], st["rejected"]) == (n, 99, 0)
    assert [x["code"] for x in read_channel(r.cache, "mixed")] == [x["code"] for x in records]
