"""Smoke test of benchmarks/bench_web.py: a short run with two charts, both arms (normal and
CPU throttled 4x); checks that frames were timed and data arrived, never speed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_web.py"


def test_bench_web_smoke():
    spec = importlib.util.spec_from_file_location("bench_web", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_web"] = bench
    spec.loader.exec_module(bench)
    r = bench.run(seconds=2.0, charts=2, warmup=1.0, throttle=True)
    assert r["page_errors"] == []
    assert r["signals"] == [8, 8]  # every chart resolved its 8 signals, the 10 kHz ones too
    for arm in ("normal", "throttled_4x"):
        a = r[arm]
        assert a["frames"] > 0 and a["bytes_per_s"] > 0 and a["ws_frames_per_s"] > 0
        assert 0 <= a["median_ms"] <= a["p99_ms"] <= a["max_ms"]
        assert a["redraws_per_chart_s"] > 0
    assert "median" in bench.report(r)
