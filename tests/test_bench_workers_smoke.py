"""Smoke run of benchmarks/bench_workers.py: one and two engines over two channels on a
few hundred datagrams each, checking counts (the runs assert them), never speed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_workers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_workers", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_workers"] = module
    spec.loader.exec_module(module)
    return module


def test_workers_count(bench):
    for arm in bench.make_arms(scale=0.001):
        assert arm.n == 200
        for workers in (1, 2):
            assert bench.run_engines(arm, workers) > 0
        for threads in (1, 2):
            assert bench.run_bare(arm, threads) > 0


def test_table_prints(bench, capsys):
    rows = bench.run_all(scale=0.001, repeat=1)
    assert [r["arm"] for r in rows] == ["800 B", "8000 B"]
    assert "w2/w1" in capsys.readouterr().out
