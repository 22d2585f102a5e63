"""Smoke run of benchmarks/bench_footprint.py and the small-device configuration it
measures: the machinery works (processes start, /proc is read, the relay takes the demo
stream); no time or CPU figure is asserted. One figure is: the relay process never maps
numpy (its ~19 MB are what kept it over 30 MB; docs/scaling.md, "Footprint")."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speeddata.config import SMALL_CONFIG, load_config
from speeddata.relay import Relay

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_footprint.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_footprint", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_footprint"] = module
    spec.loader.exec_module(module)
    return module


def test_small_config_loads(tmp_path):
    cfg = load_config(SMALL_CONFIG)
    assert cfg.server.group == "decimated"
    assert cfg.server.window <= 30 and cfg.server.memory <= 8 << 20
    assert cfg.cache.segment_size <= 4 << 20 and cfg.cache.budget[0] == "bytes"
    assert cfg.cache.segment_map is False
    assert cfg.multicast.interface == "127.0.0.1" and cfg.multicast.ttl == 1
    assert [c.name for c in cfg.channels] == ["engine", "power", "status"]
    assert all(c.schema_path.is_file() for c in cfg.channels)
    # segment_map = false reaches the engine: blocks by pwritev, no populated map
    small = cfg.replace(cache=type(cfg.cache)(**{**cfg.cache.__dict__, "dir": tmp_path}))
    relay = Relay(small)
    engine = relay._make_engine()
    assert engine._use_map is (relay.engine_name == "python")  # the compiled one: off
    engine.close()


def test_config_written_for_the_run_loads(bench, tmp_path):
    for name, base in bench.CONFIGS.items():
        info = bench.write_config(tmp_path, base)
        cfg = load_config(info["path"])
        assert cfg.cache.dir == tmp_path / "cache", name
        assert cfg.multicast.interface == "127.0.0.1" and cfg.multicast.ttl == 1
        assert [c.name for c in cfg.channels] == info["channels"]


def test_proc_readers(bench):
    m = bench.memory(os.getpid())
    assert m["VmRSS"] > 0 and m["Threads"] >= 1
    assert m["VmRSS"] >= m["RssAnon"] and m["VmRSS"] >= m["RssFile"]
    assert bench.cpu_ns(os.getpid()) > 0
    assert bench.maps_numpy(os.getpid()) == ("numpy" in sys.modules)


def test_run_small_briefly(bench, capsys):
    rows = bench.run_all(("small",), seconds=0.5, warm=0.5)
    by = {(r["phase"], r["process"]): r for r in rows}
    assert set(by) == {
        ("idle", "relay"), ("idle", "server"), ("idle", "bare python"),
        ("demo", "relay"), ("demo", "server"), ("demo", "bare python"),
        ("demo", "demo source"),
    }
    for r in rows:
        assert r["VmRSS"] > 0 and r["Threads"] >= 1 and r["cpu"] >= 0
    assert by["demo", "relay"]["datagrams"] > 0
    assert not by["idle", "relay"]["numpy"] and not by["demo", "relay"]["numpy"]
    # loose: the relay was ~41 MB with numpy; ~29 MiB without
    assert by["demo", "relay"]["VmRSS"] < 40 << 20
    out = capsys.readouterr().out
    assert "RSS MiB" in out and "us of CPU per datagram" in out


def test_relay_process_imports_no_numpy():
    """What the relay process imports (its command, config, schemas, engine, recovery
    and retention readers) leaves numpy out; the other commands still load."""
    code = """
import sys
from speeddata.commands import build_parser
build_parser("relay")
import speeddata.relay, speeddata._relay, speeddata._validate, speeddata.cache as c
from speeddata.config import SMALL_CONFIG, load_config
cfg = load_config(SMALL_CONFIG)
assert [s.schema.fixed_size for s in cfg.channels] and cfg.channels[0].schema.program_ops
speeddata._validate.Validator(cfg.channels[0].schema)
print("numpy" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    from speeddata.commands import COMMANDS, build_parser

    help_text = build_parser().format_help()
    assert all(name in help_text for name in COMMANDS)
