"""Test data for the reader, tags and pivot tests: caches written with the reference
``SegmentWriter``, records encoded by fastavro (the oracle), and the values expected,
computed from the Python records (not by any decoder under test)."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import fastavro
import numpy as np

from speeddata.cache import SegmentWriter
from speeddata.schema import Schema

T0 = 1_764_000_000_000_000_000  # 2025-11-24T16:00:00Z, in ns

ALL_TYPES = {
    "type": "record",
    "name": "alltypes",
    "namespace": "speeddata.test",
    "fields": [
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int", "unit": "count", "doc": "an int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float", "unit": "V"},
        {"name": "d", "type": "double", "unit": "A", "doc": "a double"},
        {"name": "s", "type": "string"},
        {"name": "by", "type": "bytes"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["IDLE", "RUN", "FAULT"]}},
        {"name": "fx", "type": {"type": "fixed", "name": "F4", "size": 4}},
        {"name": "nothing", "type": "null"},
        {"name": "nd", "type": ["null", "double"]},
        {"name": "nf", "type": ["float", "null"]},
        {"name": "ni", "type": ["null", "int"]},
        {"name": "nl", "type": ["null", "long"]},
        {"name": "ns", "type": ["null", "string"]},
        {"name": "nb", "type": ["null", "bytes"]},
        {"name": "ne", "type": ["null", {"type": "enum", "name": "E2", "symbols": ["X", "Y"]}]},
        {"name": "nfx", "type": ["null", {"type": "fixed", "name": "F2", "size": 2}]},
        {"name": "nbool", "type": ["null", "boolean"]},
        {
            "name": "rec",
            "type": {
                "type": "record",
                "name": "Inner",
                "fields": [
                    {"name": "a", "type": "int"},
                    {
                        "name": "deep",
                        "type": {
                            "type": "record",
                            "name": "Deep",
                            "fields": [{"name": "z", "type": "string"}],
                        },
                    },
                ],
            },
        },
    ],
}

# 100 doubles: the fixed-layout benchmark schema.
WIDE = {
    "type": "record",
    "name": "wide",
    "fields": [{"name": f"v{i:03d}", "type": "double"} for i in range(100)],
}

STRINGS = ["", "a", "héllo", "日本語", "emoji 😀", "trailing nul\x00", "x" * 40, "tab\tline"]


def all_types_record(k: int, rng: random.Random) -> dict:
    """Record ``k`` of ALL_TYPES: time 1 ms apart, every type and null pattern."""
    def maybe(v):
        return None if rng.random() < 0.3 else v

    return {
        "time": T0 // 1000 + k * 1000,
        "b": bool(k % 2),
        "i": rng.randint(-(2**31), 2**31 - 1),
        "l": rng.randint(-(2**63), 2**63 - 1),
        "f": float(np.float32(rng.uniform(-1e6, 1e6))),
        "d": rng.uniform(-1e300, 1e300) if k % 7 else float("inf") if k % 2 else -0.0,
        "s": rng.choice(STRINGS) + str(k) if k % 4 else STRINGS[k // 4 % len(STRINGS)],
        "by": bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12))),
        "e": ["IDLE", "RUN", "FAULT"][k % 3],
        "fx": bytes(rng.randrange(256) for _ in range(4)),
        "nothing": None,
        "nd": maybe(rng.uniform(-10, 10)),
        "nf": maybe(float(np.float32(rng.uniform(-10, 10)))),
        "ni": maybe(rng.randint(-1000, 1000)),
        "nl": maybe(rng.randint(-(2**40), 2**40)),
        "ns": maybe(rng.choice(STRINGS)),
        "nb": maybe(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 5)))),
        "ne": maybe(rng.choice(["X", "Y"])),
        "nfx": maybe(bytes(rng.randrange(256) for _ in range(2))),
        "nbool": maybe(rng.random() < 0.5),
        "rec": {"a": k, "deep": {"z": f"deep {k} ü"}},
    }


@dataclass
class Written:
    """What was sent to a channel: records, and per record its datagram's receive time."""

    schema: Schema
    records: list[dict] = field(default_factory=list)
    recv_ns: list[int] = field(default_factory=list)
    time_ns: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # per datagram
    dgram_recv_ns: list[int] = field(default_factory=list)  # per datagram
    segments: list = field(default_factory=list)
    writer: SegmentWriter | None = None  # the segment left open, if any


def write_channel(
    cache_dir: Path,
    name: str,
    schema: Schema | dict,
    make_record,
    n_records: int,
    *,
    t_open_ns: int = T0,
    records_per_datagram: int = 3,
    datagrams_per_block: int = 4,
    blocks_per_segment: int = 5,
    segment_size: int = 1 << 20,
    leave_open: bool = False,
    seq_skips: dict[int, int] | None = None,
    recv_step_ns: int = 1_000_000,
    recv_pauses: dict[int, int] | None = None,
    seed: int = 1,
) -> Written:
    """Encode ``n_records`` records with fastavro and write them through SegmentWriter.

    ``seq_skips``: datagram index -> sequence numbers skipped before it (loss);
    ``recv_pauses``: datagram index -> extra ns of receive-time gap before it.
    The receive time of datagram j is ``t_open_ns + j * recv_step_ns`` (+ pauses).
    """
    schema = Schema.load(schema)
    parsed = fastavro.parse_schema(schema.avsc)
    rng = random.Random(seed)
    out = Written(schema)
    seq_skips = seq_skips or {}
    recv_pauses = recv_pauses or {}
    k = 0
    dgram = 0
    seq = 100
    recv_t = t_open_ns
    seg_t = t_open_ns
    writer = None
    blocks_in_segment = 0
    while k < n_records:
        if writer is None:
            writer = SegmentWriter(cache_dir / name, schema, name, 1, segment_size, t_open_ns=seg_t)
            blocks_in_segment = 0
        dgs, recvs, seqs, counts, times = [], [], [], [], []
        for _ in range(datagrams_per_block):
            if k >= n_records:
                break
            buf = io.BytesIO()
            count = 0
            recv_t += recv_pauses.get(dgram, 0)
            seq += seq_skips.get(dgram, 0)
            for _ in range(records_per_datagram):
                if k >= n_records:
                    break
                rec = make_record(k, rng)
                fastavro.schemaless_writer(buf, parsed, rec)
                out.records.append(rec)
                out.recv_ns.append(recv_t)
                t = _time_ns(schema, rec, recv_t)
                out.time_ns.append(t)
                times.append(t)
                count += 1
                k += 1
            dgs.append(buf.getvalue())
            recvs.append(recv_t)
            seqs.append(seq)
            counts.append(count)
            out.seqs.append(seq)
            out.dgram_recv_ns.append(recv_t)
            seq += 1
            dgram += 1
            recv_t += recv_step_ns
        writer.append(dgs, recvs, seqs, counts, min(times), max(times))
        blocks_in_segment += 1
        if blocks_in_segment >= blocks_per_segment and k < n_records:
            out.segments.append(writer.close())
            writer = None
            seg_t = recv_t
    if writer is not None:
        if leave_open:
            out.writer = writer
            out.segments.append(writer.segment)
        else:
            out.segments.append(writer.close())
    return out


def _time_ns(schema: Schema, rec: dict, recv_t: int) -> int:
    if schema.time_field is None:
        return recv_t
    value = rec
    for part in schema.time_field.split("."):
        value = value[part]
    return int(value) * schema.time_scale


def flat(rec: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in rec.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def expected_column(schema: Schema, name: str, records: list[dict]):
    """(values as Python objects with nulls filled, validity list) of a signal."""
    sig = schema.signal(name)
    values = [flat(r)[name] for r in records]
    valid = [v is not None for v in values]
    filled = []
    for v in values:
        if v is None:
            v = {"float": float("nan"), "double": float("nan"), "string": "", "bytes": b"",
                 "fixed": bytes(sig.size or 0), "enum": None}.get(sig.type, 0)
        if sig.type == "enum":
            v = 0 if v is None else sig.symbols.index(v)
        filled.append(v)
    return filled, valid


def assert_column_equal(schema: Schema, name: str, got: np.ndarray, records: list[dict],
                        got_valid=None) -> None:
    sig = schema.signal(name)
    want, valid = expected_column(schema, name, records)
    assert len(got) == len(want), (name, len(got), len(want))
    if sig.type in ("float", "double"):
        np.testing.assert_array_equal(np.asarray(got, np.float64), np.array(want, np.float64),
                                      err_msg=name)
        # -0.0 and +0.0 compare equal: check the bits too
        assert np.array_equal(np.signbit(np.asarray(got, np.float64)),
                              np.signbit(np.array(want, np.float64))), name
    elif sig.type in ("string",):
        assert [str(x) for x in got] == want, name
    elif sig.type in ("bytes",):
        assert [bytes(x) for x in got] == want, name
    elif sig.type == "fixed":
        assert got.dtype == np.dtype(f"S{sig.size}"), name
        assert [got[i : i + 1].tobytes() for i in range(len(got))] == want, name
    else:
        assert got.tolist() == want, name
    if sig.nullable and sig.type not in ("float", "double"):
        assert got_valid is not None, f"{name}: no validity mask"
        assert got_valid.tolist() == valid, name


def write_demo_channels(cache: Path, engine_record, status_record, n_engine: int,
                        n_status: int) -> Path:
    """The demo ``engine`` and ``status`` channels in ``cache``: several segments of
    several blocks of several datagrams each (records from the given record makers)."""
    from conftest import SCHEMAS

    write_channel(cache, "engine", Schema(SCHEMAS / "engine.avsc"), engine_record, n_engine,
                  records_per_datagram=10, datagrams_per_block=5, blocks_per_segment=20)
    write_channel(cache, "status", Schema(SCHEMAS / "status.avsc"), status_record, n_status,
                  records_per_datagram=4, datagrams_per_block=3, blocks_per_segment=40)
    return cache
