"""speeddata.schema.Schema: loading, supported types, signals, time field, fingerprint, dtype."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import numpy as np
import pytest

from speeddata.errors import SpeedDataError
from speeddata.schema import (
    OP_BOOLEAN,
    OP_BYTES,
    OP_DOUBLE,
    OP_ENUM,
    OP_FIXED,
    OP_FLOAT,
    OP_INT,
    OP_LONG,
    OP_NULL,
    OP_STRING,
    OP_UNION,
    Schema,
    SchemaError,
)


def record(*fields, name="r", **extra) -> dict:
    """A record schema with the given ``(name, type)`` or field-dict fields."""
    out = []
    for f in fields:
        out.append(f if isinstance(f, dict) else {"name": f[0], "type": f[1]})
    return {"type": "record", "name": name, "fields": out, **extra}


# ---------------------------------------------------------------------------- loading


def test_load_from_path_str_path_json_and_dict_agree(schemas_dir: Path):
    path = schemas_dir / "engine.avsc"
    text = path.read_text()
    by_path = Schema(path)
    by_str = Schema(str(path))
    by_json = Schema(text)
    by_dict = Schema(json.loads(text))
    assert by_path.path == path and by_str.path == path
    assert by_json.path is None and by_dict.path is None
    assert by_path == by_str == by_json == by_dict
    assert len({by_path, by_json, by_dict}) == 1  # hash follows the canonical form
    assert by_path.name == "engine"
    assert Schema.load(by_path) is by_path
    assert Schema.load(str(path)) == by_path


def test_json_property_round_trips(schemas_dir: Path):
    s = Schema(schemas_dir / "status.avsc")
    assert json.loads(s.json) == json.loads((schemas_dir / "status.avsc").read_text())
    assert " " not in s.json.replace("Slow housekeeping", "").split('"doc"')[0]


def test_missing_file_names_the_path(tmp_path: Path):
    missing = tmp_path / "nope.avsc"
    with pytest.raises(SchemaError, match="nope.avsc.*cannot read schema file"):
        Schema(missing)


def test_bad_json_names_the_file(tmp_path: Path):
    bad = tmp_path / "bad.avsc"
    bad.write_text('{"type": "record", ')
    with pytest.raises(SchemaError, match="bad.avsc: not valid JSON"):
        Schema(bad)
    with pytest.raises(SchemaError, match="not valid JSON"):
        Schema('{"type": ')


def test_schema_error_is_a_speeddata_error_and_value_error():
    with pytest.raises(SpeedDataError):
        Schema({"type": "int"})
    with pytest.raises(ValueError):
        Schema({"type": "int"})


@pytest.mark.parametrize(
    "avsc",
    [
        {"type": "int"},
        {"type": "array", "items": "int"},
        {"type": "enum", "name": "e", "symbols": ["A"]},
    ],
    ids=["int", "array", "enum"],
)
def test_top_level_must_be_a_record(avsc, tmp_path: Path):
    with pytest.raises(SchemaError, match="must be an Avro record"):
        Schema(avsc)
    f = tmp_path / "top.avsc"
    f.write_text(json.dumps(avsc))
    with pytest.raises(SchemaError, match=r"top\.avsc: a channel schema must be an Avro record"):
        Schema(f)


# ---------------------------------------------------------------------------- types and signals


def test_every_supported_type_gives_a_signal_and_an_op():
    s = Schema(
        record(
            {"name": "n", "type": "null"},
            {"name": "b", "type": "boolean", "doc": "a flag"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float", "unit": "V"},
            {"name": "d", "type": "double"},
            {"name": "by", "type": "bytes"},
            {"name": "s", "type": "string"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
            {"name": "x", "type": {"type": "fixed", "name": "X", "size": 6}},
            {"name": "u", "type": ["null", "long"]},
            {"name": "v", "type": ["string", "null"]},
        )
    )
    sigs = {sig.name: sig for sig in s.signals}
    assert list(sigs) == ["b", "i", "l", "f", "d", "by", "s", "e", "x", "u", "v"]  # null: none
    assert [sig.type for sig in s.signals] == [
        "boolean",
        "int",
        "long",
        "float",
        "double",
        "bytes",
        "string",
        "enum",
        "fixed",
        "long",
        "string",
    ]
    assert sigs["b"].doc == "a flag" and sigs["i"].doc is None
    assert sigs["f"].unit == "V"
    assert sigs["e"].symbols == ("A", "B", "C")
    assert sigs["x"].size == 6
    assert sigs["u"].nullable and sigs["v"].nullable and not sigs["l"].nullable
    assert s.program.dtype == np.int32 and s.program.shape == (14, 2)
    assert s.program.tolist() == [
        [OP_NULL, 0],
        [OP_BOOLEAN, 0],
        [OP_INT, 0],
        [OP_LONG, 0],
        [OP_FLOAT, 0],
        [OP_DOUBLE, 0],
        [OP_BYTES, 0],
        [OP_STRING, 0],
        [OP_ENUM, 3],
        [OP_FIXED, 6],
        [OP_UNION, 0],  # null is branch 0
        [OP_LONG, 0],
        [OP_UNION, 1],  # null is branch 1
        [OP_STRING, 0],
    ]
    # the same pairs, flat, as the int32 buffer the compiled validator and relay take
    assert s.program_ops.itemsize == 4
    assert s.program_ops.tolist() == s.program.reshape(-1).tolist()
    # Each signal points at its value op (after the union op for nullable ones).
    for sig in s.signals:
        op = int(s.program[sig.op_index][0])
        assert op != OP_UNION and op != OP_NULL
    assert s.signal("u").op_index == 11 and s.signal("v").op_index == 13
    assert [sig.dtype for sig in s.signals] == [
        np.dtype("?"),
        np.dtype("<i4"),
        np.dtype("<i8"),
        np.dtype("<f4"),
        np.dtype("<f8"),
        np.dtype("O"),
        np.dtype("O"),
        np.dtype("<i4"),
        np.dtype("S6"),
        np.dtype("<i8"),
        np.dtype("O"),
    ]


def test_nested_records_flatten_to_dotted_names():
    inner = record(
        {"name": "c", "type": "double", "doc": "deep"},
        {"name": "d", "type": ["null", "int"]},
        name="Inner",
    )
    middle = record({"name": "b", "type": inner}, {"name": "z", "type": "float"}, name="Middle")
    s = Schema(record({"name": "a", "type": middle}, {"name": "top", "type": "long"}))
    assert [(sig.name, sig.type) for sig in s.signals] == [
        ("a.b.c", "double"),
        ("a.b.d", "int"),
        ("a.z", "float"),
        ("top", "long"),
    ]
    assert s.signal("a.b.c").doc == "deep"
    assert s.signal("a.b.d").nullable


def test_named_types_are_reused_by_name_and_by_inherited_full_name():
    s = Schema(
        record(
            {
                "name": "p",
                "type": {
                    "type": "record",
                    "name": "Point",
                    "fields": [{"name": "x", "type": "double"}],
                },
            },
            {"name": "q", "type": "Point"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}},
            {"name": "e2", "type": "my.ns.E"},  # E inherits the record's namespace
            {"name": "e3", "type": ["null", "E"]},
            namespace="my.ns",
        )
    )
    assert [sig.name for sig in s.signals] == ["p.x", "q.x", "e", "e2", "e3"]
    assert s.signal("e2").symbols == ("A",)


def test_demo_schemas_load(schemas_dir: Path):
    engine = Schema(schemas_dir / "engine.avsc")
    assert [sig.name for sig in engine.signals] == [
        "time",
        "rpm",
        "torque",
        "temperature",
        "throttle",
        "state",
        "counter",
    ]
    assert engine.signal("rpm").unit == "1/min"
    assert engine.signal("state").symbols == ("IDLE", "RUN", "FAULT")
    status = Schema(schemas_dir / "status.avsc")
    assert [sig.name for sig in status.signals] == [
        "time",
        "message",
        "uptime",
        "load",
        "host.cpu_temp",
        "host.free_disk",
    ]
    assert status.signal("load").nullable
    assert status.signal("host.free_disk").unit == "B"
    power = Schema(schemas_dir / "power.avsc")
    assert power.time_field == "time"
    with pytest.raises(KeyError, match="no signal 'nope'"):
        power.signal("nope")


# ---------------------------------------------------------------------------- unsupported


@pytest.mark.parametrize(
    ("avsc", "field", "why"),
    [
        (record(("ok", "int"), ("xs", {"type": "array", "items": "double"})), "xs", "array"),
        (record(("m", {"type": "map", "values": "long"})), "m", "map"),
        (
            record(("a", record(("deep", {"type": "array", "items": "int"}), name="A"))),
            "a.deep",
            "array",
        ),
        (record(("v", ["null", {"type": "array", "items": "int"}])), "v", "array"),
        (record(("u", ["int", "string"])), "u", "union"),
        (record(("u", ["null", "int", "string"])), "u", "union"),
        (record(("u", ["double"])), "u", "union"),
        (record(("u", ["null", "null"])), "u", "union"),
        (record(("next", ["null", "r"]), ("x", "int")), "next", "recursive"),
        (
            record(("a", record(("back", ["null", "r"]), ("y", "int"), name="A"))),
            "a.back",
            "recursive",
        ),
        (record(("n", ["null", record(("x", "int"), name="N")])), "n", "nullable record"),
        (record(("e", {"type": "enum", "name": "E", "symbols": []})), "e", "symbols"),
        (record(("x", {"type": "fixed", "name": "X", "size": 0})), "x", "size"),
        (record(("t", "Nope")), "t", "unknown type"),
        (record(("x", "int"), ("x", "double")), "x", "defined twice"),
        (
            record(("a", record(("b", "int"), name="A")), ("a.b", "int")),
            "a.b",
            "flatten",
        ),
    ],
    ids=[
        "array",
        "map",
        "nested-array",
        "nullable-array",
        "union-int-string",
        "union-of-3",
        "union-of-1",
        "union-null-null",
        "recursive-direct",
        "recursive-nested",
        "nullable-record",
        "enum-no-symbols",
        "fixed-size-0",
        "unknown-type",
        "duplicate",
        "flatten-collision",
    ],
)
def test_unsupported_schema_is_refused_naming_field_and_reason(avsc, field, why):
    with pytest.raises(SchemaError) as info:
        Schema(avsc)
    msg = str(info.value)
    assert f"field {field!r}" in msg
    assert why in msg


def test_all_null_record_is_refused():
    with pytest.raises(SchemaError, match="every field is null"):
        Schema(record(("a", "null"), ("b", "null")))


@pytest.mark.parametrize(
    "avsc",
    [
        {"type": "record", "fields": [{"name": "x", "type": "int"}]},
        {"type": "record", "name": "r", "fields": []},
        {"type": "record", "name": "r"},
        {"type": "record", "name": "r", "fields": [{"name": "x"}]},
    ],
    ids=["no-name", "no-fields", "fields-missing", "field-without-type"],
)
def test_malformed_records_are_refused(avsc):
    with pytest.raises(SchemaError, match="needs"):
        Schema(avsc)


def test_unsupported_file_error_names_the_file(tmp_path: Path):
    f = tmp_path / "arr.avsc"
    f.write_text(json.dumps(record(("xs", {"type": "array", "items": "int"}))))
    with pytest.raises(SchemaError, match=r"arr\.avsc: field 'xs'"):
        Schema(f)


# ---------------------------------------------------------------------------- time field


def ts(unit: str = "nanos") -> dict:
    return {"type": "long", "logicalType": f"timestamp-{unit}"}


@pytest.mark.parametrize(
    ("fields", "time", "expected", "scale"),
    [
        ([("time", "long"), ("x", "double")], None, "time", 1),
        ([("x", "double"), ("time", ts("micros"))], None, "time", 1_000),
        ([("time", "double"), ("t", ts("millis"))], None, "t", 1_000_000),
        ([("time", ["null", "long"]), ("t", ts())], None, "t", 1),
        # a long named time that is a time of day is not the abscissa
        (
            [("time", {"type": "long", "logicalType": "time-micros"}), ("t", ts("micros"))],
            None,
            "t",
            1_000,
        ),
        ([("a", "long"), ("b", ts("nanos")), ("c", ts("millis"))], None, "b", 1),
        ([("a", {"type": "long", "logicalType": "local-timestamp-millis"})], None, "a", 1_000_000),
        ([("x", "double"), ("n", "long")], None, None, 1),
        ([("time", "long"), ("t2", ts("millis"))], "t2", "t2", 1_000_000),
        ([("time", "long"), ("t2", "long")], "t2", "t2", 1),
    ],
    ids=[
        "named-time",
        "named-time-micros",
        "time-not-long",
        "time-nullable",
        "time-of-day",
        "first-timestamp",
        "local-timestamp",
        "none",
        "explicit",
        "explicit-plain-long",
    ],
)
def test_time_field(fields, time, expected, scale):
    s = Schema(record(*fields), time=time)
    assert s.time_field == expected
    assert s.time_scale == scale
    if expected is None:
        assert s.time_op == -1
    else:
        assert s.time_op == s.signal(expected).op_index
        assert s.program[s.time_op][0] == OP_LONG


def test_time_field_in_a_nested_record_is_found_by_logical_type():
    s = Schema(record(("x", "double"), ("meta", record(("stamp", ts("micros")), name="M"))))
    assert s.time_field == "meta.stamp" and s.time_scale == 1_000


@pytest.mark.parametrize(
    ("fields", "time", "match"),
    [
        ([("x", "double")], "nope", "time field 'nope' is not a field"),
        ([("x", "double")], "x", "time field 'x' must be a non-null long.*it is double"),
        ([("t", ["null", "long"])], "t", "must be a non-null long.*nullable long"),
        ([("t", {"type": "long", "logicalType": "time-micros"})], "t", "not a timestamp"),
    ],
    ids=["missing", "double", "nullable", "time-of-day"],
)
def test_explicit_time_field_errors(fields, time, match):
    with pytest.raises(SchemaError, match=match):
        Schema(record(*fields), time=time)


# ---------------------------------------------------------------------------- fingerprint

CRC64_EMPTY = 0xC15D213AA4D7A795  # Avro spec, "Schema Fingerprints"


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO, bit by bit from the spec's definition (no table, independent of fastavro)."""
    fp = CRC64_EMPTY
    for byte in data:
        fp ^= byte
        for _ in range(8):
            fp = (fp >> 1) ^ (CRC64_EMPTY & -(fp & 1))
    return fp


def single_object_fingerprint(canonical: str) -> bytes:
    """Single-object encoding carries the fingerprint little-endian (Avro spec)."""
    return crc64_avro(canonical.encode()).to_bytes(8, "little")


# (canonical form, fingerprint as a signed 64-bit integer) from the Avro project's
# share/test/data/schema-tests.txt, which the Java implementation cross-checks.
SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('"int"', 8247732601305521295),
    ('"string"', -8142146995180207161),
    ('{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
    ('{"name":"x.y.foo","type":"record","fields":[]}', 5916914534497305771),
    (
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
        7843277075252814651,
    ),
    (
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},'
        '{"name":"f2","type":"int"}]}',
        -4860222112080293046,
    ),
]


@pytest.mark.parametrize(("canonical", "fingerprint"), SPEC_VECTORS)
def test_reference_crc64_matches_the_spec_vectors(canonical, fingerprint):
    assert crc64_avro(canonical.encode()) == fingerprint % 2**64


@pytest.mark.parametrize(
    ("avsc", "canonical"),
    [
        # spec vector 025: {"type": "boolean"} collapses to "boolean"
        (
            {
                "fields": [{"type": {"type": "boolean"}, "name": "f1"}],
                "type": "record",
                "name": "foo",
            },
            '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
        ),
        # spec vector 026: aliases, default, order, doc stripped; keys reordered
        (
            {
                "fields": [
                    {"type": "boolean", "aliases": [], "name": "f1", "default": True},
                    {"order": "descending", "name": "f2", "doc": "Hello", "type": "int"},
                ],
                "type": "record",
                "name": "foo",
            },
            '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},'
            '{"name":"f2","type":"int"}]}',
        ),
        # namespaces become full names, inherited by nested named types; logicalType,
        # unit and doc are not parsing attributes
        (
            {
                "type": "record",
                "name": "engine",
                "namespace": "x.y",
                "doc": "d",
                "fields": [
                    {"name": "time", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
                    {"name": "s", "type": {"type": "enum", "name": "S", "symbols": ["A", "B"]}},
                    {"name": "f", "type": {"type": "fixed", "name": "F", "size": 4}},
                    {"name": "rpm", "type": "double", "unit": "1/min", "doc": "speed"},
                    {
                        "name": "h",
                        "type": {
                            "type": "record",
                            "name": "a.H",
                            "fields": [{"name": "v", "type": ["null", "float"]}],
                        },
                    },
                ],
            },
            '{"name":"x.y.engine","type":"record","fields":[{"name":"time","type":"long"},'
            '{"name":"s","type":{"name":"x.y.S","type":"enum","symbols":["A","B"]}},'
            '{"name":"f","type":{"name":"x.y.F","type":"fixed","size":4}},'
            '{"name":"rpm","type":"double"},'
            '{"name":"h","type":{"name":"a.H","type":"record",'
            '"fields":[{"name":"v","type":["null","float"]}]}}]}',
        ),
    ],
    ids=["spec-025", "spec-026", "namespaces-and-attributes"],
)
def test_canonical_form_and_fingerprint(avsc, canonical):
    s = Schema(avsc)
    assert s.canonical == canonical
    assert s.fingerprint == single_object_fingerprint(canonical)
    assert s.fingerprint_hex == s.fingerprint.hex()
    assert len(s.fingerprint) == 8


def test_spec_vector_026_fingerprint_value():
    avsc = {
        "fields": [{"type": "boolean", "name": "f1"}, {"name": "f2", "type": "int"}],
        "type": "record",
        "name": "foo",
    }
    assert Schema(avsc).fingerprint == (-4860222112080293046 % 2**64).to_bytes(8, "little")


@pytest.mark.parametrize("name", ["engine", "power", "status", "fixed"])
def test_demo_schema_fingerprints_match_reference(schemas_dir: Path, name):
    s = Schema(schemas_dir / f"{name}.avsc")
    assert s.fingerprint == single_object_fingerprint(s.canonical)
    assert '"doc"' not in s.canonical and " " not in s.canonical


def test_fingerprint_ignores_docs_but_not_types():
    a = Schema(record({"name": "x", "type": "double", "doc": "one"}))
    b = Schema(record({"name": "x", "type": "double", "doc": "two", "unit": "V"}))
    c = Schema(record({"name": "x", "type": "float"}))
    assert a.fingerprint == b.fingerprint and a == b
    assert a.fingerprint != c.fingerprint and a != c


# ---------------------------------------------------------------------------- numpy dtype


def test_fixed_layout_dtype_reads_fastavro_bytes(schemas_dir: Path):
    s = Schema(schemas_dir / "fixed.avsc")
    assert s.fixed_size == 25
    dt = s.dtype
    assert dt is not None and dt.itemsize == 25
    assert dt.names == ("x", "y", "z", "ok")
    rows = [{"x": i * 0.5, "y": -i, "z": 1e300 / (i + 1), "ok": i % 2 == 0} for i in range(7)]
    buf = io.BytesIO()
    for row in rows:
        fastavro.schemaless_writer(buf, s.parsed, row)
    arr = np.frombuffer(buf.getvalue(), dtype=dt)
    assert len(arr) == 7
    for row, got in zip(rows, arr, strict=True):
        assert (got["x"], got["y"], got["z"], bool(got["ok"])) == (
            row["x"],
            row["y"],
            row["z"],
            row["ok"],
        )


def test_dtype_with_fixed_float_and_null_fields():
    s = Schema(
        record(
            ("a", "float"),
            ("gap", "null"),
            ("raw", {"type": "fixed", "name": "Raw", "size": 3}),
            ("b", "boolean"),
            ("c", "double"),
        )
    )
    assert s.fixed_size == 4 + 3 + 1 + 8
    dt = s.dtype
    assert dt.names == ("a", "raw", "b", "c")
    assert [dt.fields[n][1] for n in dt.names] == [0, 4, 7, 8]
    assert dt.fields["raw"][0] == np.dtype("S3")
    row = {"a": 1.5, "gap": None, "raw": b"\x00\x01\x02", "b": True, "c": -2.25}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, s.parsed, row)
    got = np.frombuffer(buf.getvalue(), dtype=dt)[0]
    assert (got["a"], got["raw"], bool(got["b"]), got["c"]) == (1.5, b"\x00\x01\x02", True, -2.25)


@pytest.mark.parametrize(
    "ftype",
    [
        "int",
        "long",
        "string",
        "bytes",
        ["null", "double"],
        {"type": "enum", "name": "E", "symbols": ["A"]},
    ],
    ids=["int", "long", "string", "bytes", "nullable", "enum"],
)
def test_no_dtype_when_the_layout_varies(ftype):
    s = Schema(record(("x", "double"), ("v", ftype)))
    assert s.fixed_size is None
    assert s.dtype is None


def test_repr_names_schema_and_fingerprint(schemas_dir: Path):
    s = Schema(schemas_dir / "engine.avsc")
    assert repr(s) == f"<Schema engine 7 signals fp={s.fingerprint_hex}>"
