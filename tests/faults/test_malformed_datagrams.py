"""Malformed datagrams (hypothesis): random and mutated datagrams on a channel port and
on the shared port, interleaved with valid ones, into both engines. The engine never
dies; it accepts exactly the datagrams a strict reading of the Avro spec accepts
(``strict_avro``, written apart from the relay's validators); every stored record is one
of them, fastavro reads every segment, and the strict reader rejects nothing stored.

``SPEEDDATA_FUZZ_EXAMPLES`` sets the examples per engine (``make fuzz`` runs many)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay_helpers import Harness, encode, wait_for
from speeddata._relay import Engine
from speeddata.cache import list_segments
from speeddata.relay_ref import PyEngine
from speeddata.schema import Schema

from .strict_avro import StrictError, container_records, read_value, split_records

ENGINES = [pytest.param(Engine, id="compiled"), pytest.param(PyEngine, id="python")]
EXAMPLES = int(os.environ.get("SPEEDDATA_FUZZ_EXAMPLES", "25"))

AVSC = {
    "type": "record",
    "name": "fuzz",
    "fields": [
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
        {"name": "i", "type": "int"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "u", "type": ["null", "int"]},
        {"name": "u2", "type": ["string", "null"]},
        {"name": "s", "type": "string"},
        {"name": "b", "type": "bytes"},
        {"name": "flag", "type": "boolean"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "fx", "type": {"type": "fixed", "name": "FX", "size": 3}},
        {"name": "n", "type": {"type": "record", "name": "N", "fields": [
            {"name": "x", "type": "int"}]}},
    ],
}
SCHEMA = Schema(AVSC)
FP = SCHEMA.fingerprint
INT32 = st.integers(-(2**31), 2**31 - 1)

records = st.fixed_dictionaries(
    {
        "time": st.integers(-(2**63), 2**63 - 1),
        "i": INT32,
        "e": st.sampled_from(["A", "B", "C"]),
        "u": st.none() | INT32,
        "u2": st.none() | st.text(max_size=8),
        "s": st.text(max_size=12),
        "b": st.binary(max_size=12),
        "flag": st.booleans(),
        "f": st.floats(width=32, allow_nan=False),
        "d": st.floats(allow_nan=False),
        "fx": st.binary(min_size=3, max_size=3),
        "n": st.fixed_dictionaries({"x": INT32}),
    }
)

OVERLONG = [
    bytes.fromhex("828080808000"),  # the 6-byte union index 1
    bytes.fromhex("8280808010"),  # 5 bytes beyond int32
    b"\x80" * 10 + b"\x00",  # 11 bytes: longer than any long
    b"\xff" * 9 + b"\x02",  # 10 bytes beyond int64
]


@st.composite
def mutate(draw, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "truncate", "append", "overlong"]))
        pos = draw(st.integers(0, max(len(b), 1))) % (len(b) + 1)
        if kind == "set" and b:
            b[pos % len(b)] = draw(st.integers(0, 255))
        elif kind == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del b[pos : pos + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del b[pos:]
        elif kind == "append":
            b += draw(st.binary(min_size=1, max_size=6))
        else:
            b[pos : pos + 1] = draw(st.sampled_from(OVERLONG))
    return bytes(b)


def framed(recs: list[bytes]) -> bytes:
    return b"".join(b"\xc3\x01" + FP + r for r in recs)


@st.composite
def datagrams(draw) -> tuple[str, bytes]:
    """(target, datagram): target "port" or "shared"."""
    target = draw(st.sampled_from(["port", "shared"]))
    recs = [encode(SCHEMA, [r]) for r in draw(st.lists(records, min_size=1, max_size=3))]
    data = framed(recs) if target == "shared" else b"".join(recs)
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "random"]))
    if kind == "mutated":
        data = draw(mutate(data))
    elif kind == "random":
        prefix = b"\xc3\x01" + FP if target == "shared" and draw(st.booleans()) else b""
        data = prefix + draw(st.binary(max_size=80))
    return target, data


def strict_accepts(target: str, data: bytes) -> list[bytes] | None:
    """The records a strict reading takes from the datagram, or None: it is refused."""
    try:
        if target == "port":
            return split_records(AVSC, data)
        out, pos = [], 0
        if not data:
            return None
        while pos < len(data):
            if data[pos : pos + 2] != b"\xc3\x01" or data[pos + 2 : pos + 10] != FP:
                return None
            _, end = read_value(AVSC, data, pos + 10)
            out.append(data[pos + 10 : end])
            pos = end
        return out
    except StrictError:
        return None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine_cls", ENGINES)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(datagrams(), min_size=1, max_size=30))
def test_malformed_datagrams(engine_cls, batch):
    with tempfile.TemporaryDirectory(prefix="sd-fuzz-") as tmp:
        r = Harness(engine_cls, Path(tmp), announce_interval=3600.0, segment_size=1 << 20)
        try:
            ch = r.channel(SCHEMA, "fuzz")
            shared_port = r.shared()
            r.start()
            for target, data in batch:
                r.sender.send(ch.port if target == "port" else shared_port, data)

            def processed():
                s = r.engine.stats()
                return s[1]["datagrams"] + s[1]["rejected"] + s[0]["rejected"]

            wait_for(lambda: processed() >= len(batch))
            assert r.thread.is_alive(), "the engine died"
            s = r.engine.stats()
            assert s[1]["kernel_drops"] == s[0]["kernel_drops"] == 0
            r.stop()
            s = r.engine.stats()  # after the last block was written
            expected = [(t, strict_accepts(t, d)) for t, d in batch]
            accepted = [recs for _, recs in expected if recs is not None]
            assert s[1]["datagrams"] == len(accepted), expected
            assert s[1]["rejected"] == sum(1 for t, x in expected if t == "port" and x is None)
            assert s[0]["rejected"] == sum(1 for t, x in expected if t == "shared" and x is None)
            reasons = r.engine.rejects()  # every reject has its reason
            assert sum(reasons[1].values()) == s[1]["rejected"]
            assert sum(reasons[0].values()) == s[0]["rejected"]
            stored = []
            n_fastavro = 0
            for seg in list_segments(r.cache, "fuzz"):
                stored += container_records(seg.avro, AVSC)  # the strict reader: no refusal
                with open(seg.avro, "rb") as f:
                    n_fastavro += sum(1 for _ in fastavro.reader(f))
            assert n_fastavro == len(stored) == s[1]["stored_records"]
            assert Counter(stored) == Counter(rec for recs in accepted for rec in recs)
        finally:
            r.close()
