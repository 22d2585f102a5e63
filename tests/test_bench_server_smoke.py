"""Smoke run of benchmarks/bench_server.py: every W on a short, slow stream; checks that
each figure is produced and the counts hold (no speed is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_server.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_server", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_server"] = module
    spec.loader.exec_module(module)
    return module


def test_live_benchmarks_quick(bench):
    r = bench.live_benchmarks(seconds=1.0, quick=True)
    assert r["bare_alone_cpu"] > 0 and r["bare_records_s"] > 0
    assert set(r["bare_cpu_by_clients"]) == {1, 2, 3}
    assert set(r["cpu_by_clients"]) == {1, 2, 3}
    assert r["latency_ms"][2] > 0  # frames were received and timed
    assert r["w4_slow_bytes_s"] > 0 and r["w4_fast_bytes_s"] > 0
    # never more than 4 points per pixel column per signal: at most one column a pixel
    assert 0 < r["max_columns_over_pixels"] <= 1.0
    text = bench.report(r)
    assert "W1" in text and "W2" in text and "W3" in text and "W4" in text


def test_scrollback_benchmark_quick(bench):
    r = bench.scrollback_benchmark(30, repeat=1)
    assert r["w5_records"] == 30_000 and r["w5_columns"] <= 1000
    assert "W5" in bench.report(r)
