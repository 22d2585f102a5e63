"""Smoke test of benchmarks/bench_validate.py: tiny batches, both validators count right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from speeddata.validate import PyValidator

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_validate.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_validate", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["engine", "status"])
def test_make_batch_holds_whole_records(name):
    bench = load_bench()
    schema, data, n = bench.make_batch(name, 2000)
    assert 0 < len(data) <= 2000 and n > 10

    assert PyValidator(schema).check(data)[:2] == (n, -1)


def test_bench_validate_smoke():
    bench = load_bench()
    results = [bench.measure(name, size=4096, repeat=1) for name in bench.NAMES]
    for r in results:  # measure() asserts both validators count the records encoded
        assert 0 < r["bytes"] <= 4096 and r["records"] > 0
        for key in ("memcpy_mbps", "compiled_mbps", "reference_mbps"):
            assert r[key] > 0
    text = bench.report(results)
    assert text.count("x memcpy") == 2 and "x the reference" in text
