"""Smoke test of benchmarks/bench_relay.py: every arm on a few hundred datagrams, checking
counts (the arms assert them: relayed, stored, multicast, no loss), never speed."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_relay.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_relay", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_relay"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_arm_counts(bench):
    arms = bench.make_arms(scale=0.001)
    assert [a.n for a in arms] == [200, 250, 200]
    for arm in arms:
        assert bench.run_bare(arm) > 0
        assert bench.run_bare(arm, timestamps=True) > 0
        for kwargs in ({}, {"cache": False}, {"gso": False}, {"fixed_fast": False}):
            result = bench.run_relay(arm, **kwargs)
            # the subscriber joined both groups: every datagram + every 10th + 2 announces
            assert result["subscriber"] == arm.n + (arm.n + 9) // 10 + 2
        assert bench.run_python_relay(arm) > 0
        z = bench.run_zero_loss(arm, rate=2000, seconds=0.2)
        assert z["ok"] and z["unaccounted"] == 0, z
        assert z["sent"] == 400


def test_table_prints(bench, capsys):
    row = {
        "arm": "x",
        "n": 1,
        "bytes": 8.0,
        "bare": 2.0,
        "relay": 1.0,
        "ratio": 0.5,
        "bare_ts": 1.5,
        "ratio_ts": 0.67,
        "no_cache": 1.0,
        "cache_ratio": 1.0,
        "pwritev": 1.0,
        "pwritev_ratio": 1.0,
        "no_gso": 1.0,
        "gso_ratio": 1.0,
        "walk": 1.0,
        "walk_ratio": 0.5,
        "python": 1.0,
        "py_ratio": 1.0,
        "zero_loss": {
            "sent": 1,
            "rate": 1.0,
            "datagrams": 1,
            "rejected": 0,
            "kernel_drops": 0,
            "backlog_drops": 0,
            "unaccounted": 0,
            "records_sent": 1,
            "records_in_cache": 1,
            "ok": True,
        },
    }
    bench.print_table([row])
    out = capsys.readouterr().out
    assert "R1" in out and "zero loss x" in out and "OK" in out
    assert "nan" in out  # no warm columns measured for this row
    row.update(ratio_warm=0.47, cache_ratio_warm=0.93)
    bench.print_table([row])
    assert "0.47" in capsys.readouterr().out


def test_run_all_smoke(bench, capsys):
    """The whole table on a few hundred datagrams (both memory conditions where the
    guest has free page reporting), every run checking its counts."""
    rows = bench.run_all(scale=0.001, repeat=1, zero_loss_seconds=0)
    assert [r["arm"] for r in rows] == [a.name for a in bench.make_arms(0.001)]
    for r in rows:
        assert r["cache_ratio"] > 0 and r["ratio"] > 0
        if bench.PAGE_REPORTING.exists():
            assert r["cache_ratio_warm"] > 0
    assert "R3 warm" in capsys.readouterr().out


def test_page_reporting_paused_and_restored(bench):
    knob = bench.PAGE_REPORTING
    before = knob.read_text() if knob.exists() else None
    with bench.page_reporting_paused() as paused:
        assert paused == (before is not None and os.access(knob, os.W_OK))
        if paused:
            assert knob.read_text().strip() == "11"
    assert (knob.read_text() if knob.exists() else None) == before


def test_best_paired_alternates(bench):
    calls = []
    a, b = bench.best_paired(lambda: calls.append("a") or len(calls),
                             lambda: calls.append("b") or -len(calls), 3)
    assert calls == ["a", "b"] * 3
    assert (a, b) == (5, -2)


def test_steady_rate_part_measures(bench):
    """benchmarks/relay_cost.py (C, T, L and the co-located subscriber table) on short
    runs at a low rate: the machinery counts every datagram, none is lost at 2k/s."""
    cost = bench.relay_cost
    rows = cost.cost_table(seconds=0.5, repeat=1, rates=(2000,), sizes=(92,))
    (row,) = rows
    assert row["relay_ok"] and row["forwarder_ok"], row
    assert row["relay_us"] > 0 and row["forwarder_us"] > 0 and row["gso_us"] > 0
    r = cost.run_relay(811, 2000, 0.5, subscriber=True)
    assert r["sent"] == 1000 and r["stored"] == 1000 and r["received"] >= 1000, r
    assert r["e2e_ok"] and r["multicast_sent"] == 1000
    f = cost.run_forwarder(811, 2000, 0.5, subscriber=True, gso=True)
    assert f["forwarded"] == 1000 and f["e2e_ok"], f
    steps = []
    assert cost.lossless_rate(lambda rate: steps.append(rate) or r, "e2e_ok", (1, 2), 3) == 2
    assert steps == [1, 2, 2, 2]  # one run a step going up, then the last one twice more
    lat = cost.latency(2000, 0.5)
    assert lat["n"] == 1000 and 0 < lat["p50_us"] <= lat["p99_us"] <= lat["max_us"]
