"""Source encoding throughput against fastavro, in the same run (encoding only, no socket).

Arms, all on the ``engine`` demo schema (time, 3 doubles, a float, an enum, a long):

- baseline: ``fastavro.schemaless_writer`` per record (a dict) into one ``BytesIO``;
- numpy path: ``Source.encode_array`` on a structured array (compiled encoder);
- dict path: ``Source.encode_records`` on the same dicts (what ``send_many`` encodes).

Every arm's bytes are checked equal to the baseline's before timing. Run

    .venv/bin/python -m pytest benchmarks/bench_encode.py -s     (pytest-benchmark + ratios)
    .venv/bin/python benchmarks/bench_encode.py [N]              (ratios only)
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from fastavro import schemaless_writer

from speeddata.schema import Schema
from speeddata.source import Source

ENGINE = Path(__file__).resolve().parents[1] / "src" / "speeddata" / "schemas" / "engine.avsc"
N = 100_000


def make_inputs(n: int) -> tuple[np.ndarray, list[dict]]:
    """``n`` engine samples as a structured array and as dicts (same values)."""
    rng = np.random.default_rng(0)
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
    arr["rpm"] = 2500 + 1500 * np.sin(np.arange(n) / 100)
    arr["torque"] = rng.normal(200, 30, n)
    arr["temperature"] = 85 + np.cumsum(rng.normal(0, 0.01, n))
    arr["throttle"] = np.arange(n) % 100
    arr["state"] = rng.integers(0, 3, n)
    arr["counter"] = np.arange(n)
    symbols = ["IDLE", "RUN", "FAULT"]
    records = [
        {**dict(zip(arr.dtype.names, row, strict=True)), "state": symbols[row[5]]}
        for row in arr.tolist()
    ]
    return arr, records


def fastavro_per_record(records: list[dict], parsed) -> bytes:
    buf = io.BytesIO()
    for record in records:
        schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(n: int = N, repeat: int = 5) -> dict[str, float]:
    """Records/s of each arm (best of ``repeat``) and the ratios to the baseline."""
    schema = Schema(ENGINE)
    arr, records = make_inputs(n)
    src = Source("engine", schema, ("127.0.0.1", 9))  # never sends: encoding only
    try:
        baseline = fastavro_per_record(records, schema.parsed)
        data, _ = src.encode_array(arr)
        assert data.tobytes() == baseline, "numpy path differs from fastavro"
        dict_data, _ = src.encode_records(records)
        assert dict_data == baseline, "dict path differs from fastavro"
        t_fastavro = _best(lambda: fastavro_per_record(records, schema.parsed), repeat)
        t_numpy = _best(lambda: src.encode_array(arr), repeat)
        t_dict = _best(lambda: src.encode_records(records), repeat)
    finally:
        src.close()
    return {
        "n": n,
        "bytes": len(baseline),
        "fastavro_rps": n / t_fastavro,
        "numpy_rps": n / t_numpy,
        "dict_rps": n / t_dict,
        "numpy_ratio": t_fastavro / t_numpy,
        "dict_ratio": t_fastavro / t_dict,
    }


def report(r: dict[str, float]) -> str:
    return (
        f"engine schema, {r['n']:,} records ({r['bytes'] / r['n']:.1f} B each), best of runs:\n"
        f"  fastavro.schemaless_writer per record  {r['fastavro_rps']:>14,.0f} records/s\n"
        f"  Source numpy path (encode_array)       {r['numpy_rps']:>14,.0f} records/s"
        f"  = {r['numpy_ratio']:.1f}x fastavro\n"
        f"  Source dict path (encode_records)      {r['dict_rps']:>14,.0f} records/s"
        f"  = {r['dict_ratio']:.2f}x fastavro"
    )


# -- pytest-benchmark -------------------------------------------------------------------


def _setup():
    schema = Schema(ENGINE)
    arr, records = make_inputs(N)
    return schema, arr, records


def test_fastavro_baseline(benchmark):
    schema, _, records = _setup()
    benchmark(fastavro_per_record, records, schema.parsed)


def test_numpy_path(benchmark):
    schema, arr, _ = _setup()
    with Source("engine", schema, ("127.0.0.1", 9)) as src:
        benchmark(src.encode_array, arr)


def test_dict_path(benchmark):
    schema, _, records = _setup()
    with Source("engine", schema, ("127.0.0.1", 9)) as src:
        benchmark(src.encode_records, records)


def test_ratios():
    result = measure()
    print("\n" + report(result))
    assert result["numpy_ratio"] > 0  # the figure is printed; targets live in docs


if __name__ == "__main__":
    print(report(measure(int(sys.argv[1]) if len(sys.argv) > 1 else N)))
