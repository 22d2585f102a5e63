"""Smoke test of benchmarks/bench_encode.py: tiny sizes, every arm's bytes equal fastavro's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_encode.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_encode", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_encode_smoke():
    bench = load_bench()
    result = bench.measure(n=300, repeat=1)  # asserts the arms' bytes equal fastavro's
    assert result["n"] == 300 and result["bytes"] > 300 * 30
    assert result["numpy_rps"] > 0 and result["dict_rps"] > 0 and result["fastavro_rps"] > 0
    text = bench.report(result)
    assert "x fastavro" in text and "numpy path" in text
