"""Record validator: compiled ``speeddata._validate.Validator`` and the pure-Python reference
``speeddata.validate.PyValidator``, both checked against fastavro as the oracle.

Property tests generate random schemas from the supported type set and random records for
them; fastavro encodes the records, and every claim the validator makes is checked by
decoding with fastavro.
"""

from __future__ import annotations

import copy
import io
import itertools
import random
from pathlib import Path

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from speeddata._validate import Validator
from speeddata.schema import Schema
from speeddata.validate import PyValidator, read_varint

IMPLS = [Validator, PyValidator]
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", params=IMPLS, ids=["compiled", "reference"])
def impl(request):
    return request.param


def record(*fields, name="r") -> dict:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


def zigzag(v: int) -> bytes:
    """Avro long encoding, written out here independently of the code under test."""
    z = (v << 1) ^ (v >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def strip_logical_types(avsc):
    """The same schema without logicalType: fastavro then reads time fields as plain ints
    (random longs are not all valid datetimes); the encoding is identical."""
    if isinstance(avsc, dict):
        return {k: strip_logical_types(v) for k, v in avsc.items() if k != "logicalType"}
    if isinstance(avsc, list):
        return [strip_logical_types(v) for v in avsc]
    return avsc


def fastavro_decode_all(parsed, data: bytes) -> list:
    """Records decoded one after another until the bytes are used up (raises if they don't
    split into whole records)."""
    bio = io.BytesIO(data)
    out = []
    while bio.tell() < len(data):
        out.append(fastavro.schemaless_reader(bio, parsed, None))
    assert bio.tell() == len(data)
    return out


def encode(parsed, records) -> list[bytes]:
    out = []
    for rec in records:
        bio = io.BytesIO()
        fastavro.schemaless_writer(bio, parsed, rec)
        out.append(bio.getvalue())
    return out


def get_path(rec: dict, dotted: str):
    for part in dotted.split("."):
        rec = rec[part]
    return rec


# ---------------------------------------------------------------------------- strategies

PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
TIMESTAMPS = ["timestamp-nanos", "timestamp-micros", "timestamp-millis"]


@st.composite
def value_types(draw, names, depth: int, allow_null: bool = True):
    """One field type from the supported set (no named references: each named type is
    defined once, inline, with a fresh name)."""
    kinds = PRIMITIVES[0 if allow_null else 1 :] + ["enum", "fixed"]
    if allow_null:
        kinds += ["nullable", "nullable"]
        if depth < 2:
            kinds.append("record")
    kind = draw(st.sampled_from(kinds))
    if kind == "enum":
        n = draw(st.integers(1, 70))  # more than 63 symbols needs a 2-byte index
        return {"type": "enum", "name": f"E{next(names)}", "symbols": [f"S{i}" for i in range(n)]}
    if kind == "fixed":
        return {"type": "fixed", "name": f"F{next(names)}", "size": draw(st.integers(1, 12))}
    if kind == "nullable":
        inner = draw(value_types(names, depth, allow_null=False))
        return ["null", inner] if draw(st.booleans()) else [inner, "null"]
    if kind == "record":
        n = draw(st.integers(1, 4))
        return {
            "type": "record",
            "name": f"R{next(names)}",
            "fields": [
                {"name": f"f{i}", "type": draw(value_types(names, depth + 1))} for i in range(n)
            ],
        }
    return kind


def encodes_bytes(t) -> bool:
    """Whether a value of type ``t`` takes at least one byte (a record of nulls does not)."""
    if isinstance(t, dict) and t["type"] == "record":
        return any(encodes_bytes(f["type"]) for f in t["fields"])
    return t != "null"


@st.composite
def schemas(draw):
    """(avsc dict, time field name or None): a random channel schema."""
    names = itertools.count()
    fields = [
        {"name": f"f{i}", "type": draw(value_types(names, 0))}
        for i in range(draw(st.integers(1, 6)))
    ]
    if not any(encodes_bytes(f["type"]) for f in fields):
        fields.append({"name": "pad", "type": draw(value_types(names, 0, allow_null=False))})
    time_kind = draw(st.sampled_from(["none", "plain", "named-logical", "other-logical"]))
    time = None
    if time_kind == "plain":
        time, ttype = "time", "long"
    elif time_kind == "named-logical":
        time, ttype = "time", {"type": "long", "logicalType": draw(st.sampled_from(TIMESTAMPS))}
    elif time_kind == "other-logical":
        time, ttype = "stamp", {"type": "long", "logicalType": draw(st.sampled_from(TIMESTAMPS))}
    if time:
        fields.insert(draw(st.integers(0, len(fields))), {"name": time, "type": ttype})
    return {"type": "record", "name": "channel", "namespace": "test", "fields": fields}, time


def value_strategy(t):
    if isinstance(t, list):
        inner = next(b for b in t if b != "null")
        return st.none() | value_strategy(inner)
    if isinstance(t, dict):
        kind = t["type"]
        if kind == "enum":
            return st.sampled_from(t["symbols"])
        if kind == "fixed":
            return st.binary(min_size=t["size"], max_size=t["size"])
        if kind == "record":
            fields = {f["name"]: value_strategy(f["type"]) for f in t["fields"]}
            return st.fixed_dictionaries(fields)
        return value_strategy(kind)  # {"type": "long", "logicalType": ...}
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32),
        "double": st.floats(),
        "bytes": st.binary(max_size=40),
        "string": st.text(max_size=20),  # any code point but surrogates (not encodable)
    }[t]


class Case:
    """A random schema, records for it and their fastavro encoding."""

    def __init__(self, avsc, time, records):
        self.schema = Schema(avsc)
        assert self.schema.time_field == time
        self.time = time
        self.parsed = fastavro.parse_schema(strip_logical_types(copy.deepcopy(avsc)))
        self.records = records
        self.encoded = encode(self.parsed, records)
        self.data = b"".join(self.encoded)
        self.boundaries = list(itertools.accumulate(len(e) for e in self.encoded))

    def expected(self):
        if self.time is None:
            return (len(self.records), -1, None, None)
        times = [get_path(r, self.time) for r in self.records]
        return (len(self.records), -1, min(times), max(times))


@st.composite
def cases(draw, max_records: int = 8):
    avsc, time = draw(schemas())
    rec = value_strategy(avsc)
    records = draw(st.lists(rec, min_size=1, max_size=max_records))
    return Case(avsc, time, records)


@st.composite
def corruptions(draw, data: bytes) -> bytes:
    """``data`` with 1-4 random edits: bit flips, inserted bytes, deleted runs, overwrites."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "overwrite"]))
        pos = draw(st.integers(0, len(buf)))
        if kind == "flip" and pos < len(buf):
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 4))]
        elif kind == "overwrite" and pos < len(buf):
            chunk = draw(st.sampled_from([b"\xff", b"\x80\x80", b"\x00", b"\x7f", b"\xed\xa0"]))
            buf[pos : pos + len(chunk)] = chunk
    return bytes(buf)


def assert_fastavro_agrees(case: Case, data: bytes, result, in_hypothesis=True) -> None:
    """Whatever the validator accepts, fastavro reads completely with the same count and
    time range. (--hypothesis-show-statistics shows how often each happens.)"""
    n, bad, t_min, t_max = result
    if in_hypothesis:
        event("accepted" if n >= 0 else "rejected")
    if n >= 0:
        assert bad == -1
        decoded = fastavro_decode_all(case.parsed, data)
        assert len(decoded) == n
        if case.time is None:
            assert (t_min, t_max) == (None, None)
        else:
            times = [get_path(r, case.time) for r in decoded]
            assert (t_min, t_max) == (min(times), max(times))
    else:
        assert n == -1 and 0 <= bad < max(len(data), 1)
        assert (t_min, t_max) == (None, None)


# ---------------------------------------------------------------------------- properties


@SETTINGS
@given(case=cases())
def test_fastavro_batches_are_accepted(impl, case: Case):
    v = impl(case.schema)
    assert v.check(case.data) == case.expected()
    assert v.count(case.data) == len(case.records)
    # every record alone, too
    for rec_bytes in case.encoded:
        assert v.count(rec_bytes) == 1


@SETTINGS
@given(case=cases(max_records=4))
def test_every_cut_inside_a_record_is_rejected(impl, case: Case):
    v = impl(case.schema)
    starts = [0] + case.boundaries[:-1]
    for cut in range(len(case.data)):
        n, bad, t_min, t_max = v.check(case.data[:cut])
        if cut in case.boundaries:  # a whole number of records: accepted
            k = case.boundaries.index(cut) + 1
            assert (n, bad) == (k, -1)
        else:
            # the partial record starts at the last boundary before the cut
            start = max(s for s in starts if s <= cut)
            assert (n, bad, t_min, t_max) == (-1, start, None, None), cut


@SETTINGS
@given(data=st.data())
def test_corruption_is_rejected_or_read_whole_by_fastavro(impl, data):
    case = data.draw(cases())
    corrupt = data.draw(corruptions(case.data))
    v = impl(case.schema)
    result = v.check(corrupt)
    assert_fastavro_agrees(case, corrupt, result)
    if result[0] == -1 and result[1] > 0:
        assert v.check(corrupt[: result[1]])[0] >= 0


@SETTINGS
@given(data=st.data())
def test_compiled_and_reference_agree_on_corrupt_batches(data):
    case = data.draw(cases())
    corrupt = data.draw(corruptions(case.data))
    compiled = Validator(case.schema).check(corrupt)
    assert compiled == PyValidator(case.schema).check(corrupt)
    assert_fastavro_agrees(case, corrupt, compiled)


@SETTINGS
@given(avsc_time=schemas(), noise=st.binary(max_size=300))
def test_compiled_and_reference_agree_on_random_bytes(avsc_time, noise):
    case = Case(avsc_time[0], avsc_time[1], [])
    compiled = Validator(case.schema).check(noise)
    assert compiled == PyValidator(case.schema).check(noise)
    assert_fastavro_agrees(case, noise, compiled)


@SETTINGS
@given(value=st.integers(-(2**63), 2**63 - 1))
def test_long_varints_round_trip(impl, value):
    v = impl(record(("time", "long")))
    assert v.check(zigzag(value)) == (1, -1, value, value)
    assert read_varint(zigzag(value), 0, 10) == (value, len(zigzag(value)))


# ---------------------------------------------------------------------------- specific cases


@pytest.mark.parametrize("name", ["engine", "power", "status", "fixed"])
def test_empty_bytes_are_rejected(impl, schemas_dir: Path, name):
    v = impl(schemas_dir / f"{name}.avsc")
    assert v.check(b"") == (-1, 0, None, None)
    assert v.count(b"") == -1


@pytest.mark.parametrize(
    ("data", "ok"),
    [(b"\x00", True), (b"\x01", True), (b"\x02", False), (b"\x80", False), (b"\xff", False)],
)
def test_boolean_byte(impl, data, ok):
    v = impl(record(("b", "boolean")))
    assert v.check(data) == ((1, -1, None, None) if ok else (-1, 0, None, None))


@pytest.mark.parametrize(
    ("index", "ok"), [(0, True), (2, True), (3, False), (64, False), (-1, False), (2**31, False)]
)
def test_enum_index_range(impl, index, ok):
    v = impl(record(("e", {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]})))
    assert v.count(zigzag(index)) == (1 if ok else -1)


@pytest.mark.parametrize("null_first", [True, False])
@pytest.mark.parametrize(("branch", "ok"), [(0, True), (1, True), (2, False), (-1, False)])
def test_union_branch_index(impl, null_first, branch, ok):
    v = impl(record(("u", ["null", "int"] if null_first else ["int", "null"])))
    is_null = branch == (0 if null_first else 1)
    data = zigzag(branch) + (b"" if is_null or not ok else zigzag(-5))
    assert v.count(data) == (1 if ok else -1)
    if ok:
        assert v.count(data + data) == 2


@pytest.mark.parametrize("kind", ["string", "bytes"])
@pytest.mark.parametrize(
    ("data", "ok"),
    [
        (zigzag(3) + b"abc", True),
        (zigzag(0), True),
        (zigzag(-1), False),  # negative length
        (zigzag(-(2**63)), False),
        (zigzag(5) + b"abc", False),  # length beyond the end
        (zigzag(2**62) + b"abc", False),
        (zigzag(2**63 - 1), False),
        (zigzag(2) + b"abc", False),  # trailing byte: not a whole record
    ],
)
def test_length_prefixed(impl, kind, data, ok):
    v = impl(record(("s", kind)))
    assert v.count(data) == (1 if ok else -1)


BAD_UTF8 = {
    "overlong-2": b"\xc0\xaf",
    "overlong-2b": b"\xc1\xbf",
    "overlong-3": b"\xe0\x80\xaf",
    "overlong-4": b"\xf0\x80\x80\xaf",
    "surrogate-high": b"\xed\xa0\x80",
    "surrogate-low": b"\xed\xbf\xbf",
    "above-10ffff": b"\xf4\x90\x80\x80",
    "lead-f5": b"\xf5\x80\x80\x80",
    "lead-ff": b"\xff",
    "lone-continuation": b"\x80",
    "truncated-2": b"\xc3",
    "truncated-3": b"\xe2\x82",
    "truncated-4": b"\xf0\x9f\x98",
    "bad-continuation": b"\xe2\x28\xa1",
    "after-ascii-run": b"0123456789abcdef\xed\xa0\x80",
    "inside-ascii-run": b"0123\xff456789abcdef",
    "at-end-after-run": b"0123456789abcde\xc3",
}
GOOD_UTF8 = [
    "",
    "ascii",
    "é",
    "€",
    "𝄞",
    "\U0010ffff",
    "\ud7ff",
    "\ue000",
    "日本語テキスト" * 5,
    "0123456789abcdef€0123456789abcdef",
]


@pytest.mark.parametrize("raw", BAD_UTF8.values(), ids=BAD_UTF8.keys())
def test_invalid_utf8_string_is_rejected(impl, raw):
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the oracle agrees it is not UTF-8
    v = impl(record(("s", "string")))
    assert v.count(zigzag(len(raw)) + raw) == -1
    # the same bytes are fine as a bytes field
    assert impl(record(("s", "bytes"))).count(zigzag(len(raw)) + raw) == 1


@pytest.mark.parametrize("text", GOOD_UTF8)
def test_valid_utf8_string_is_accepted(impl, text):
    raw = text.encode()
    assert impl(record(("s", "string"))).count(zigzag(len(raw)) + raw) == 1


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        (b"\xff\xff\xff\xff\x0f", True),  # 5 bytes, top byte 0x0f: -2**31
        (b"\xfe\xff\xff\xff\x0f", True),  # 2**31 - 1
        (b"\xff\xff\xff\xff\x10", False),  # 5th byte > 0x0f: beyond 32 bits
        (b"\xff\xff\xff\xff\x7f", False),
        (b"\x80\x80\x80\x80\x00", True),  # overlong zero in 5 bytes is still an int
        (b"\x80\x80\x80\x80\x80\x00", False),  # 6 bytes: too long for an int
        (b"\x80\x80\x80\x80\x80", False),  # unterminated
    ],
)
def test_int_varint_limits(impl, data, ok):
    assert impl(record(("i", "int"))).count(data) == (1 if ok else -1)


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"\xff" * 9 + b"\x01", -(2**63)),
        (b"\xfe" + b"\xff" * 8 + b"\x01", 2**63 - 1),
        (b"\x80" * 9 + b"\x00", 0),  # overlong zero in 10 bytes
        (b"\xff" * 9 + b"\x02", None),  # 10th byte > 1: beyond 64 bits
        (b"\x80" * 10 + b"\x00", None),  # 11 bytes: too long for a long
        (b"\x80" * 10, None),  # unterminated
    ],
)
def test_long_varint_limits(impl, data, value):
    v = impl(record(("time", "long")))
    if value is None:
        assert v.check(data) == (-1, 0, None, None)
    else:
        assert v.check(data) == (1, -1, value, value)
        assert fastavro.schemaless_reader(io.BytesIO(data), {"type": "long"}, None) == value


@pytest.mark.parametrize(
    ("ftype", "size"),
    [("float", 4), ("double", 8), ({"type": "fixed", "name": "X", "size": 5}, 5)],
    ids=["float", "double", "fixed"],
)
def test_fixed_width_values(impl, ftype, size):
    v = impl(record(("x", ftype)))
    assert v.count(bytes(size)) == 1
    assert v.count(bytes(size - 1)) == -1
    assert v.count(bytes(size + 1)) == -1
    assert v.count(bytes(3 * size)) == 3


def test_bad_offset_is_the_start_of_the_first_bad_record(impl, schemas_dir: Path):
    schema = Schema(schemas_dir / "status.avsc")
    parsed = fastavro.parse_schema(strip_logical_types(schema.avsc))
    rows = [
        {
            "time": 10 + i,
            "message": f"m{i}",
            "uptime": 1.0,
            "load": None,
            "host": {"cpu_temp": 40.0, "free_disk": 1},
        }
        for i in range(3)
    ]
    good = encode(parsed, rows)
    bad = bytearray(good[2])
    bad[2] = 0xFF  # inside the message string: invalid UTF-8
    data = good[0] + good[1] + bytes(bad)
    v = impl(schema)
    assert v.check(data) == (-1, len(good[0]) + len(good[1]), None, None)
    assert v.check(b"".join(good)) == (3, -1, 10, 12)


def test_time_range_spans_the_batch(impl, schemas_dir: Path):
    schema = Schema(schemas_dir / "engine.avsc")
    parsed = fastavro.parse_schema(strip_logical_types(schema.avsc))
    times = [5, -3, 2**62, 7, -(2**63)]
    rows = [
        {
            "time": t,
            "rpm": 1.0,
            "torque": 2.0,
            "temperature": 3.0,
            "throttle": 4.0,
            "state": "RUN",
            "counter": i,
        }
        for i, t in enumerate(times)
    ]
    v = impl(schema)
    assert v.check(b"".join(encode(parsed, rows))) == (5, -1, -(2**63), 2**62)


def test_no_time_field_gives_none(impl, schemas_dir: Path):
    v = impl(schemas_dir / "fixed.avsc")
    assert v.schema.time_field is None
    assert v.check(bytes(25) * 4) == (4, -1, None, None)


@pytest.mark.parametrize("name", ["engine", "status", "fixed", "power"])
def test_64_kib_of_random_noise(impl, schemas_dir: Path, name):
    schema = Schema(schemas_dir / f"{name}.avsc")
    noise = random.Random(20240611).randbytes(64 * 1024)
    result = impl(schema).check(noise)
    assert result == Validator(schema).check(noise) == PyValidator(schema).check(noise)
    if name != "power":  # enum, UTF-8, union and boolean checks cannot all pass by chance
        assert result[0] == -1
    case = Case(schema.avsc, schema.time_field, [])
    assert_fastavro_agrees(case, noise, result, in_hypothesis=False)


@pytest.mark.parametrize(
    "wrap",
    [
        bytes,
        bytearray,
        memoryview,
        lambda b: memoryview(bytearray(b)),
        lambda b: np.frombuffer(b, dtype=np.uint8),
    ],
    ids=["bytes", "bytearray", "memoryview", "memoryview-rw", "numpy"],
)
def test_buffer_types(impl, schemas_dir: Path, wrap):
    v = impl(schemas_dir / "fixed.avsc")
    data = (bytes(24) + b"\x01") * 3
    assert v.check(wrap(data)) == (3, -1, None, None)
    assert v.check(wrap(data[:-1])) == (-1, 50, None, None)


def test_validator_takes_schema_dict_or_path(impl, schemas_dir: Path):
    path = schemas_dir / "power.avsc"
    s = Schema(path)
    for source in (s, str(path), s.avsc):
        v = impl(source)
        assert v.schema == s
    assert impl(s).schema is s


def test_non_buffers_are_refused(impl):
    v = impl(record(("x", "double")))
    with pytest.raises(TypeError):
        v.check("not bytes")
    with pytest.raises(TypeError):
        v.check(None)
    with pytest.raises(ValueError, match="contiguous"):
        v.check(np.zeros(32, np.uint8)[::2])
    with pytest.raises(ValueError):
        v.check(np.zeros(4, np.int32))


# ------------------------------------------------ ints and longs against the spec (issue 10)


def strict_varint(data: bytes, max_bytes: int, bits: int):
    """Avro 1.11 "Binary Encoding", read strictly and independently of the code under test:
    an int is at most 5 bytes and its zigzag value within 32 bits, a long at most 10 bytes
    within 64 bits. -> (value, length) or None."""
    acc = 0
    for i, b in enumerate(data[:max_bytes]):
        acc |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if acc >= 1 << bits:
                return None
            return (acc >> 1) ^ -(acc & 1), i + 1
    return None


@st.composite
def varint_bytes(draw, max_len: int = 11):
    """Varint-like byte strings: canonical, overlong (zero-padded), too long, with high
    bits in the last byte, or cut short."""
    n = draw(st.integers(1, max_len))
    # often zero padding (an overlong small value) and small last bytes: the edge cases
    body = [draw(st.just(0x80) | st.integers(0x80, 0xFF)) for _ in range(n - 1)]
    last = draw(st.integers(0, 2) | st.integers(0, 127))
    tail = [] if draw(st.integers(0, 9)) == 0 else [last]  # sometimes unterminated
    return bytes(body + tail)


UNION_EXAMPLE = bytes.fromhex("828080808000")  # the 6-byte branch index 1


@pytest.mark.parametrize("null_first", [True, False])
def test_union_branch_index_is_an_int(impl, null_first):
    """A union branch index is an Avro int: 6 bytes is not one (Apache Avro Java: "Invalid
    int encoding"), whatever its value."""
    v = impl(record(("u", ["null", "int"] if null_first else ["int", "null"])))
    value = b"" if not null_first else zigzag(7)  # branch 1 is "int" when null comes first
    assert v.count(UNION_EXAMPLE + value) == -1
    assert v.reason(UNION_EXAMPLE + value) == "bad_varint"
    five = b"\x82\x80\x80\x80\x00"  # 1 in 5 bytes: an int still
    assert v.count(five + value) == 1
    assert v.count(b"\x82\x80\x80\x80\x10" + value) == -1  # 5 bytes beyond int32


@SETTINGS
@given(data=varint_bytes())
@example(data=bytes.fromhex("808080808000"))  # 0 in 6 bytes: a long, not an int
@example(data=bytes.fromhex("828080808000"))  # the union index
@example(data=bytes.fromhex("8080808010"))  # 5 bytes beyond int32
@example(data=b"\x80" * 10 + b"\x00")  # 11 bytes
@example(data=b"\xff" * 9 + b"\x02")  # 10 bytes beyond int64
def test_int_like_values_against_the_spec(data):
    """int, enum index and union branch index take exactly the varints a strict reading
    of the spec takes (<= 5 bytes, int32); long takes <= 10 bytes in int64; and what is
    taken is the value fastavro reads. Both implementations."""
    as_int = strict_varint(data, 5, 32)
    as_long = strict_varint(data, 10, 64)
    cases = [
        (record(("i", "int")), as_int, lambda x: True),
        (record(("t", "long")), as_long, lambda x: True),
        (
            record(("e", {"type": "enum", "name": "E", "symbols": [f"S{i}" for i in range(70)]})),
            as_int,
            lambda x: 0 <= x < 70,
        ),
        (record(("u", ["null", "double"])), as_int, lambda x: x == 0),  # branch 1 needs a value
    ]
    for avsc, strict, in_range in cases:
        ok = strict is not None and strict[1] == len(data) and in_range(strict[0])
        for cls in IMPLS:
            assert cls(avsc).count(data) == (1 if ok else -1), (avsc, data.hex(), cls)
        if ok:
            got = fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(avsc), None)
            field = avsc["fields"][0]["name"]
            expect = strict[0]
            if field == "e":
                expect = f"S{strict[0]}"
            elif field == "u":
                expect = None
            assert got[field] == expect


@SETTINGS
@given(data=varint_bytes(), tail=st.binary(max_size=12))
@example(data=b"", tail=b"\x00")
@example(data=zigzag(-1), tail=b"")
@example(data=b"\x86\x80\x80\x80\x80\x80\x80\x80\x80\x00", tail=b"abc")  # 3 in 10 bytes
def test_lengths_against_the_spec(data, tail):
    """bytes/string lengths are longs (<= 10 bytes) and never negative, for both."""
    payload = data + tail
    strict = strict_varint(payload, 10, 64)  # the length, then exactly that many bytes
    for kind in ("bytes", "string"):
        ok = (
            strict is not None
            and strict[0] == len(payload) - strict[1]
            and (kind == "bytes" or _utf8(payload[strict[1] :]))
        )
        for cls in IMPLS:
            assert cls(record(("b", kind))).count(payload) == (1 if ok else -1)


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


REASON_CASES = {
    "empty": (("i", "int"), b""),
    "truncated": (("d", "double"), b"\x00" * 7),
    "trailing_bytes": (("d", "double"), b"\x00" * 9),
    "bad_varint": (("i", "int"), b"\x80\x80\x80\x80\x80\x00"),
    "bad_length": (("s", "string"), zigzag(-1)),
    "bad_boolean": (("b", "boolean"), b"\x02"),
    "bad_enum": (("e", {"type": "enum", "name": "E", "symbols": ["A"]}), zigzag(1)),
    "bad_union": (("u", ["null", "int"]), zigzag(2)),
    "bad_utf8": (("s", "string"), zigzag(1) + b"\xff"),
}


@pytest.mark.parametrize("reason", sorted(REASON_CASES))
def test_reject_reasons(impl, reason):
    field, data = REASON_CASES[reason]
    v = impl(record(field))
    assert v.reason(data) == reason
    assert v.count(data) == -1


def test_reason_names_in_sync():
    from speeddata.validate import REJECT_REASONS

    assert REJECT_REASONS[0] == "none" and len(set(REJECT_REASONS)) == len(REJECT_REASONS)
    assert set(REASON_CASES) < set(REJECT_REASONS)


@SETTINGS
@given(data=st.data())
def test_compiled_and_reference_agree_on_reasons(data):
    avsc, time = data.draw(schemas())
    payload = data.draw(st.binary(max_size=64))
    compiled, reference = Validator(Schema(avsc, time)), PyValidator(Schema(avsc, time))
    assert compiled.reason(payload) == reference.reason(payload)
    assert (compiled.reason(payload) is None) == (compiled.count(payload) >= 0)
