"""Schema fingerprints of the common Avro libraries (docs/wire.md, "Fingerprints"), and
single-object datagrams made by the real Apache ``avro`` package, stored by both relay
engines (compiled and reference)."""

from __future__ import annotations

import io
import json
import warnings

import avro.io
import avro.schema
import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SCHEMAS
from relay_helpers import (
    encode,
    engine_record,
    harness_factory,
    read_channel,
    single_object,
    wait_for,
)
from speeddata._relay import Engine
from speeddata.relay_ref import PyEngine
from speeddata.schema import Schema, apache_python_canonical_form
from test_engine import Rig, decode_all

ENGINES = [pytest.param(Engine, id="compiled"), pytest.param(PyEngine, id="python")]


def apache(avsc: dict):
    """Apache avro's parsed schema (its warnings about logical types it does not know,
    such as timestamp-nanos, are its business)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return avro.schema.parse(json.dumps(avsc))


def fastavro_fingerprint(avsc: dict) -> bytes:
    canonical = fastavro.schema.to_parsing_canonical_form(avsc)
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


# -- schemas, generated ------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
PRIMS = st.sampled_from(["boolean", "int", "long", "float", "double", "string", "bytes"])
LOGICAL = {
    "int": ["date", "time-millis"],
    "long": ["timestamp-millis", "timestamp-micros", "timestamp-nanos", "time-micros"],
    "string": ["uuid"],
    "bytes": [],
    "boolean": [],
    "float": [],
    "double": [],
}


@st.composite
def primitive(draw):
    """A primitive as a name, a bare object, or an object with a logical type, a unit or a
    doc (which Apache avro for Python and the spec treat differently)."""
    name = draw(PRIMS)
    form = draw(st.sampled_from(["name", "object", "unit", "doc", "logical"]))
    if form == "name":
        return name
    if form == "object":
        return {"type": name}
    if form == "unit":
        return {"type": name, "unit": draw(st.sampled_from(["V", "1/min", "degC"]))}
    if form == "doc":
        return {"type": name, "doc": "a doc"}
    logical = LOGICAL[name]
    if not logical:
        return {"type": name, "logicalType": "made-up"}
    return {"type": name, "logicalType": draw(st.sampled_from(logical))}


@st.composite
def record_schema(draw, depth=0, namespace=None, path="0"):
    """A channel-shaped record: primitives, nullable primitives, enums, fixed (defined
    once and maybe used again by name) and nested records in other namespaces."""
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    fields = []
    named: list[str] = []
    for i, fname in enumerate(names):
        kind = draw(st.sampled_from(["prim", "null", "enum", "fixed", "ref", "record"]))
        if kind == "prim":
            ftype = draw(primitive())
        elif kind == "null":
            ftype = ["null", draw(primitive())]
            if draw(st.booleans()):
                ftype.reverse()
        elif kind == "enum":
            ftype = {"type": "enum", "name": f"E{path}_{i}", "symbols": ["A", "B", "C"]}
            if draw(st.booleans()):
                ftype["doc"] = "states"
            named.append(ftype["name"])
        elif kind == "fixed":
            ftype = {"type": "fixed", "name": f"F{path}_{i}", "size": draw(st.integers(1, 8))}
            if draw(st.booleans()):
                ftype["namespace"] = "other.space"
                named.append(f"other.space.{ftype['name']}")
            else:
                named.append(ftype["name"])
        elif kind == "ref" and named:
            ftype = draw(st.sampled_from(named))
        elif kind == "record" and depth < 2:
            inner = draw(st.sampled_from([None, "inner.ns"]))
            ftype = draw(record_schema(depth + 1, inner, f"{path}_{i}"))
        else:
            ftype = "double"
        field = {"name": fname, "type": ftype}
        if draw(st.booleans()):
            field["doc"] = "field doc"
        fields.append(field)
    out = {"type": "record", "name": f"r{path}", "fields": fields}
    if namespace is not None:
        out["namespace"] = namespace
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_schema(namespace="speeddata.test"))
def test_canonical_forms_match_the_libraries(avsc):
    """Our copy of Apache avro's canonical form is the package's own, and a Schema carries
    the spec's fingerprint (fastavro's) first and Apache avro's when it differs."""
    schema = Schema(avsc)
    theirs = apache(avsc)
    assert apache_python_canonical_form(avsc) == theirs.canonical_form
    assert schema.fingerprint == fastavro_fingerprint(avsc)
    want = [schema.fingerprint]
    if theirs.fingerprint() != schema.fingerprint:
        want.append(theirs.fingerprint())
    assert list(schema.fingerprints) == want


@pytest.mark.parametrize("name", ["engine", "power", "status", "fixed"])
def test_project_schemas(name):
    """The project's schemas: the logical-type ones have two fingerprints."""
    schema = Schema(SCHEMAS / f"{name}.avsc")
    theirs = apache(schema.avsc)
    assert schema.fingerprints[0] == schema.fingerprint == fastavro_fingerprint(schema.avsc)
    assert theirs.fingerprint() in schema.fingerprints
    assert len(schema.fingerprints) == (1 if name == "fixed" else 2)


def test_primitive_object_forms():
    """The difference in one line: a primitive with an attribute Apache avro does not
    reserve stays an object there; the spec writes its name."""
    avsc = {"type": "record", "name": "r", "fields": [
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "v", "type": {"type": "double", "doc": "reserved: dropped"}},
        {"name": "f", "type": {"type": "fixed", "name": "f4", "size": 4}},
        {"name": "g", "type": "f4"},
    ]}
    assert apache_python_canonical_form(avsc) == (
        '{"name":"r","type":"record","fields":[{"name":"t","type":{"type":"long"}},'
        '{"name":"v","type":"double"},{"name":"f","type":{"name":"f4","type":"fixed","size":4}},'
        '{"name":"g","type":{"name":"f4","type":"fixed","size":4}}]}'
    )
    assert Schema(avsc).canonical == (
        '{"name":"r","type":"record","fields":[{"name":"t","type":"long"},'
        '{"name":"v","type":"double"},{"name":"f","type":{"name":"f4","type":"fixed","size":4}},'
        '{"name":"g","type":"f4"}]}'
    )


# -- single-object datagrams from Apache avro, into both engines --------------------------


def apache_single_object(avsc: dict, records: list[dict]) -> bytes:
    """Records as Apache avro for Python writes them, each in single-object encoding:
    ``C3 01``, ``Schema.fingerprint()`` (its CRC-64-AVRO), the record (DatumWriter)."""
    schema = apache(avsc)
    writer = avro.io.DatumWriter(schema)
    out = bytearray()
    for record in records:
        buf = io.BytesIO()
        writer.write(record, avro.io.BinaryEncoder(buf))
        out += b"\xc3\x01" + schema.fingerprint() + buf.getvalue()
    return bytes(out)


@pytest.fixture(params=ENGINES)
def rig(request, tmp_path):
    yield from harness_factory(Rig, request.param, tmp_path)


def test_apache_avro_single_object_datagrams_are_stored(rig):
    """engine.avsc has a timestamp-nanos time field: Apache avro's fingerprint differs from
    the spec's. Its datagrams reach the channel and the cache like fastavro's; a datagram
    mixing the two fingerprints is refused (one fingerprint per datagram)."""
    r = rig()
    eng = Schema(SCHEMAS / "engine.avsc")
    power = Schema(SCHEMAS / "power.avsc")
    r.channel(eng, "engine", cid=1, port=False)
    r.channel(power, "power", cid=2, port=False)
    shared = r.bind()
    r.engine.set_shared_socket(shared)
    port = shared.getsockname()[1]
    r.start()
    records = [engine_record(i) for i in range(6)]
    theirs = apache_single_object(eng.avsc, records[:3])
    assert theirs[2:10] == apache(eng.avsc).fingerprint() != eng.fingerprint
    p_recs = [{"time": i, "voltage": 1.0 * i, "current": 0.5, "noise": 0.25} for i in range(2)]
    good = [
        theirs,  # Apache avro: three records in one datagram
        single_object(eng, records[3:]),  # fastavro / the spec's fingerprint
        apache_single_object(power.avsc, p_recs),
    ]
    mixed = apache_single_object(eng.avsc, records[:1]) + single_object(eng, records[1:2])
    for d in good + [mixed]:
        r.sender.send(port, d)
    wait_for(lambda: sum(r.processed(c) for c in (0, 1, 2)) >= 4)
    r.stop()
    st = r.engine.stats()
    assert (st[1]["datagrams"], st[1]["records"]) == (2, 6)
    assert (st[2]["datagrams"], st[2]["records"]) == (1, 2)
    assert st[0]["rejected"] == 1
    assert read_channel(r.cache, "engine") == decode_all(eng, encode(eng, records))
    assert read_channel(r.cache, "power") == decode_all(power, encode(power, p_recs))
