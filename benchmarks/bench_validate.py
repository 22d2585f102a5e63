"""Record validator throughput against a bare memcpy of the same bytes, in the same run.

For each demo schema (``engine``: varints, doubles, a float, an enum; ``status``: a UTF-8
string, a nullable double and a nested record), a batch of about 1 MiB of fastavro-encoded
records is validated by

- baseline: a memcpy of the batch into a preallocated numpy array (``np.copyto``),
- compiled: ``speeddata._validate.Validator.count`` (what the relay runs per datagram),
- reference: ``speeddata.validate.PyValidator.count`` (the pure-Python twin),

and the report gives MB/s and the ratios validator/memcpy and compiled/reference. Both
validators' counts are checked against the number of records encoded before timing. Run

    .venv/bin/python -m pytest benchmarks/bench_validate.py -s   (pytest-benchmark + ratios)
    .venv/bin/python benchmarks/bench_validate.py [BYTES]        (ratios only)
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastavro import parse_schema, schemaless_writer

from speeddata._validate import Validator
from speeddata.schema import Schema
from speeddata.validate import PyValidator

SCHEMAS = Path(__file__).resolve().parents[1] / "src" / "speeddata" / "schemas"
NAMES = ("engine", "status")
SIZE = 1024 * 1024
MESSAGES = [
    "ok",
    "relay started",
    "segment rotated: 000123.avro",
    "coolant 85.2 °C, fan on",
    "Überdruck im Kreis 2 – prüfen",
    "温度正常",
    "checksum mismatch on block 77, resent",
]


def _plain(avsc):
    """The schema without logicalType, so fastavro writes plain ints for time fields."""
    if isinstance(avsc, dict):
        return {k: _plain(v) for k, v in avsc.items() if k != "logicalType"}
    if isinstance(avsc, list):
        return [_plain(v) for v in avsc]
    return avsc


def make_records(name: str, n: int) -> list[dict]:
    """``n`` demo records of schema ``name`` with realistic values."""
    rng = np.random.default_rng(1)
    t0 = 1_700_000_000_000_000_000
    if name == "engine":
        states = ["IDLE", "RUN", "FAULT"]
        return [
            {
                "time": t0 + i * 10_000_000,
                "rpm": 2500.0 + 1500.0 * np.sin(i / 100),
                "torque": float(rng.normal(200, 30)),
                "temperature": 85.0 + i * 1e-4,
                "throttle": float(i % 100),
                "state": states[int(rng.integers(0, 3))],
                "counter": i,
            }
            for i in range(n)
        ]
    if name == "status":
        return [
            {
                "time": t0 + i * 1_000_000_000,
                "message": MESSAGES[i % len(MESSAGES)],
                "uptime": float(i),
                "load": None if i % 5 == 0 else float(rng.random()),
                "host": {"cpu_temp": 40.0 + float(rng.random()), "free_disk": 10**11 - i},
            }
            for i in range(n)
        ]
    raise ValueError(f"no records for schema {name!r}")


def make_batch(name: str, size: int = SIZE) -> tuple[Schema, bytes, int]:
    """(schema, at most ``size`` bytes of whole records back to back, record count)."""
    schema = Schema(SCHEMAS / f"{name}.avsc")
    parsed = parse_schema(_plain(schema.avsc))
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, make_records(name, 1)[0])
    n = max(1, size // len(buf.getvalue()) + 16)
    out = bytearray()
    count = 0
    for rec in make_records(name, n):
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, rec)
        if len(out) + buf.tell() > size and count:
            break
        out += buf.getvalue()
        count += 1
    return schema, bytes(out), count


def _per_call(fn, repeat: int, min_time: float = 0.002) -> float:
    """Best seconds per call over ``repeat`` samples of enough calls to last ``min_time``."""
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - t0 >= min_time:
            break
        loops *= 2
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best


def measure(name: str, size: int = SIZE, repeat: int = 5) -> dict[str, float]:
    """MB/s of memcpy, compiled and reference validation of one batch, and the ratios."""
    schema, batch, n = make_batch(name, size)
    compiled, reference = Validator(schema), PyValidator(schema)
    assert compiled.count(batch) == n, "compiled validator miscounts"
    assert reference.count(batch) == n, "reference validator miscounts"
    src = np.frombuffer(batch, dtype=np.uint8)
    dst = np.empty_like(src)
    t_memcpy = _per_call(lambda: np.copyto(dst, src), repeat)
    assert dst.tobytes() == batch
    t_compiled = _per_call(lambda: compiled.count(batch), repeat)
    t_reference = _per_call(lambda: reference.count(batch), max(1, repeat // 2), 0.0)
    mb = len(batch) / 1e6
    return {
        "name": name,
        "bytes": len(batch),
        "records": n,
        "memcpy_mbps": mb / t_memcpy,
        "compiled_mbps": mb / t_compiled,
        "reference_mbps": mb / t_reference,
        "compiled_vs_memcpy": t_memcpy / t_compiled,
        "compiled_vs_reference": t_reference / t_compiled,
        "compiled_records_per_s": n / t_compiled,
    }


def report(results: list[dict[str, float]]) -> str:
    lines = ["validator throughput, best of runs (MB = 10^6 bytes):"]
    for r in results:
        lines.append(
            f"  {r['name']:<7} {r['bytes']:>9,} B, {r['records']:>6,} records "
            f"({r['bytes'] / r['records']:.1f} B each)\n"
            f"    memcpy (np.copyto)       {r['memcpy_mbps']:>10,.0f} MB/s\n"
            f"    compiled Validator       {r['compiled_mbps']:>10,.0f} MB/s"
            f"  = {r['compiled_vs_memcpy']:.3f}x memcpy"
            f"  ({r['compiled_records_per_s'] / 1e6:.1f} M records/s)\n"
            f"    reference PyValidator    {r['reference_mbps']:>10,.2f} MB/s"
            f"  -> compiled is {r['compiled_vs_reference']:,.0f}x the reference"
        )
    return "\n".join(lines)


# -- pytest-benchmark -------------------------------------------------------------------


@pytest.fixture(scope="module", params=NAMES)
def batch(request):
    return make_batch(request.param)


def test_memcpy_baseline(benchmark, batch):
    _, data, _ = batch
    src = np.frombuffer(data, dtype=np.uint8)
    dst = np.empty_like(src)
    benchmark(np.copyto, dst, src)


def test_compiled_validator(benchmark, batch):
    schema, data, n = batch
    assert benchmark(Validator(schema).count, data) == n


def test_reference_validator(benchmark, batch):
    schema, data, n = batch
    assert benchmark.pedantic(PyValidator(schema).count, (data,), rounds=3) == n


def test_ratios():
    results = [measure(name) for name in NAMES]
    print("\n" + report(results))
    assert all(r["compiled_vs_memcpy"] > 0 for r in results)  # figures printed, not judged


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else SIZE
    print(report([measure(name, size) for name in NAMES]))
