"""End to end: a real relay, real multicast on 127.0.0.1, the server in its own process,
the `websockets` package as an independent client."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import websockets

from relay_helpers import Sender, encode, engine_record
from server_helpers import Processes, deadline, http_json, server_config
from speeddata.schema import Schema
from speeddata.server.ws import decode_frame

SCHEMAS = Path(__file__).resolve().parents[1] / "src" / "speeddata" / "schemas"


@pytest.fixture
def ipc_dir():
    d = Path(tempfile.mkdtemp(prefix="sd-srv-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop()


def send_engine(info, t0_ns: int, n_datagrams: int, per_datagram: int = 10, start: int = 0):
    schema = Schema(SCHEMAS / "engine.avsc")
    sender = Sender()
    try:
        for d in range(n_datagrams):
            base = start + d * per_datagram
            recs = [engine_record(base + i, t0=t0_ns) for i in range(per_datagram)]
            sender.send(info["ports"]["engine"], encode(schema, recs))
    finally:
        sender.close()


async def recv_until(ws, predicate, left):
    """Messages until predicate(msg) is true; returns (that message, all seen)."""
    seen = []
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout=left())
        msg = decode_frame(raw) if isinstance(raw, bytes) else json.loads(raw)
        seen.append(msg)
        if predicate(msg):
            return msg, seen


def test_live_columns_and_latest_over_websockets(tmp_path, ipc_dir, procs):
    info = server_config(tmp_path, ipc_dir)
    procs.relay(info)
    procs.server(info)
    import time

    t0 = (time.time_ns() // 10**9) * 10**9

    async def scenario():
        left = deadline(60)
        async with websockets.connect(info["ws"]) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), left()))
            assert hello["type"] == "hello" and hello["version"] == 1
            # the channels arrive with the relay's announce (about once a second)
            while not any(c["name"] == "engine" for c in hello["channels"]):
                send_engine(info, t0, 1)
                hello, _ = await recv_until(ws, lambda m: isinstance(m, dict) and
                                            m.get("type") == "hello", left)
            engine = next(c for c in hello["channels"] if c["name"] == "engine")
            assert engine["key"].startswith("127.0.0.1/")
            names = [s["name"] for s in engine["signals"]]
            assert "engine.rpm" in names and "engine.time" not in names
            state = next(s for s in engine["signals"] if s["name"] == "engine.state")
            assert state["kind"] == "enum" and state["symbols"] == ["IDLE", "RUN", "FAULT"]
            await ws.send(json.dumps({"type": "subscribe", "sub": 7,
                                      "signals": ["engine.rpm", "engine.torque"],
                                      "pixels": 100, "window_s": 10}))
            sub, _ = await recv_until(ws, lambda m: isinstance(m, dict) and
                                      m.get("type") == "subscribed", left)
            assert sub["signals"] == ["engine.rpm", "engine.torque"]
            assert sub["width_ns"] == 100_000_000 and sub["columns"] == 100 and sub["live"]
            send_engine(info, t0, 20, start=1000)  # 200 records, 1 ms apart
            rpm_cols = {}

            def got_all(m):
                if isinstance(m, dict) and "blocks" in m:
                    for b in m["blocks"]:
                        if b["type"] == 1 and b["signal"] == 0:
                            for i, c in enumerate(b["count"]):
                                rpm_cols[b["first_column"] + i] = (c, b["min"][i], b["max"][i])
                return sum(c for c, _, _ in rpm_cols.values()) >= 200

            frame, seen = await recv_until(ws, got_all, left)
            # columns of 100 ms: records 1000..1199 at t0 + i ms -> counts by column
            t = t0 + np.arange(1000, 1200) * 1_000_000
            cols = t // 100_000_000
            for c in np.unique(cols):
                sel = cols == c
                count, lo, hi = rpm_cols[int(c)]
                assert count >= sel.sum()
            latest = [b for m in seen if isinstance(m, dict) and "blocks" in m
                      for b in m["blocks"] if b["type"] == 2 and b["signal"] == 0]
            assert latest and latest[-1]["value"] == 1000.0 + 1199
            assert latest[-1]["time_s"] == pytest.approx((t0 + 1199 * 1_000_000) / 1e9)

    asyncio.run(scenario())
    # the relay's counters (its stats PUB socket, once a second) reach /metrics and status
    from relay_helpers import wait_for

    def relay_counted():
        status, text = http_json(info["url"] + "/metrics")
        line = [ln for ln in text.decode().splitlines()
                if ln.startswith('speeddata_relay_records_total{channel="engine"}')]
        return line and float(line[0].split()[-1]) >= 200 and text.decode()

    metrics = wait_for(relay_counted, timeout=15, interval=0.2)
    assert 'speeddata_server_records_total{channel="engine",relay="127.0.0.1"}' in metrics
    assert 'speeddata_relay_kernel_drops_total{channel="engine"} 0.0' in metrics
    assert 'speeddata_cache_bytes{channel="engine"}' in metrics
    status, st = http_json(info["url"] + "/api/status")
    assert st["relay"]["channels"][0]["name"] == "engine" and st["cache"]["budget_bytes"] > 0
    status, body = http_json(info["url"] + "/api/channels/engine")
    assert status == 200 and body["records"] >= 200
    assert body["latest"]["engine.rpm"]["value"] == 1000.0 + 1199


def test_tag_and_export_from_the_api_read_back_by_h5py(tmp_path, ipc_dir, procs):
    import time

    import h5py

    info = server_config(tmp_path, ipc_dir)
    procs.relay(info)
    procs.server(info)
    t0 = (time.time_ns() // 10**9 - 5) * 10**9
    send_engine(info, t0, 100, per_datagram=20)  # 2000 records, 1 ms apart: 2 s
    # the relay's status shows them stored (its cache index), then ask for a range
    from server_helpers import relay_status

    def stored():
        st = relay_status(info["control"]) or {}
        ch = next((c for c in st.get("channels", []) if c["name"] == "engine"), None)
        return ch and ch["counters"]["stored_records"] >= 2000 and (ch.get("cache") or {}).get(
            "newest_ns")

    from relay_helpers import wait_for

    wait_for(stored, timeout=30)
    start, end = t0 + 500_000_000, t0 + 1_500_000_000
    status, tag = http_json(info["url"] + "/api/tags", "POST",
                            {"name": "lap-1", "start_ns": start, "end_ns": end,
                             "channels": ["engine"], "note": "kept from the test"})
    assert status == 201, tag
    assert tag["name"] == "lap-1" and tag["channels"] == ["engine"]
    status, tags = http_json(info["url"] + "/api/tags")
    assert status == 200 and [t["name"] for t in tags["tags"]] == ["lap-1"]
    status, tag_again = http_json(info["url"] + "/api/tags", "POST",
                                  {"name": "lap-1", "start_ns": start, "end_ns": end})
    assert status == 409, tag_again
    for spec in ({"start_ns": start, "end_ns": end, "channels": ["engine"]},
                 {"tag": "lap-1"}):
        status, job = http_json(info["url"] + "/api/exports", "POST", spec)
        assert status == 202, job
        url = info["url"] + f"/api/exports/{job['id']}"
        job = wait_for(lambda u=url: (lambda s: s if s["state"] in ("done", "failed") else None)(
            http_json(u)[1]), timeout=90, interval=0.2)
        assert job["state"] == "done", job
        status, raw = http_json(url + "/file")
        assert status == 200 and raw[:8] == b"\x89HDF\r\n\x1a\n"
        path = tmp_path / f"{job['id']}.h5"
        path.write_bytes(raw)
        with h5py.File(path, "r") as f:
            t = f["engine/time"][()]
            rpm = f["engine/rpm"][()]
        assert len(t) == 1000 and t[0] == start and t[-1] == end - 1_000_000
        np.testing.assert_array_equal(rpm, 1000.0 + (t - t0) // 1_000_000)
        status, csv_text = http_json(url + "/file?format=csv&signals=engine.rpm")
        lines = csv_text.decode().splitlines()
        assert lines[0] == "channel,time_ns,rpm" and len(lines) == 1001
        assert lines[1] == f"engine,{start},{1000.0 + 500}"
    status, _ = http_json(info["url"] + "/api/tags/lap-1", "DELETE")
    assert status == 204
    assert http_json(info["url"] + "/api/tags/lap-1")[0] == 404


def test_up_runs_relay_server_and_demo_and_prints_the_url(tmp_path, ipc_dir):
    import subprocess
    import sys

    from relay_helpers import wait_for

    info = server_config(tmp_path, ipc_dir, channels=(
        ("engine", "engine", 10), ("power", "power", 100), ("status", "status", 1)))
    up = subprocess.Popen([sys.executable, "-m", "speeddata.commands", "up",
                           "-c", str(info["path"]),
                           "--demo", "-q", "--no-status", "--duration", "60"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def engine_live():
            status, body = http_json(info["url"] + "/api/channels/engine")
            return status == 200 and body["records"] > 0 and body

        body = wait_for(engine_live, timeout=40, interval=0.2)
        assert body["latest"]["engine.rpm"]["value"] is not None
        status, st = http_json(info["url"] + "/api/status")
        assert status == 200 and st["channels"]["engine"]["records"] > 0
    finally:
        up.terminate()
        out, err = up.communicate(timeout=30)
    assert up.returncode == 0, err
    assert f"open http://127.0.0.1:{info['http'][1]}/" in err
    log = (info["cache"] / "up.log").read_text()
    assert "Traceback" not in log and "Exception ignored" not in log


def test_serve_command_prints_the_url_and_stops_cleanly_on_ctrl_c(tmp_path, ipc_dir):
    import signal
    import subprocess
    import sys

    from relay_helpers import wait_for

    info = server_config(tmp_path, ipc_dir)
    proc = subprocess.Popen([sys.executable, "-m", "speeddata.server", "-c", str(info["path"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: http_json(info["url"] + "/api/status")[0] == 200, timeout=30)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == f"speeddata serve: open http://127.0.0.1:{info['http'][1]}/"
    assert "Traceback" not in err and "Exception ignored" not in err


def test_serve_refuses_a_public_address_without_a_token(tmp_path, ipc_dir, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("SPEEDDATA_TOKEN", raising=False)
    info = server_config(tmp_path, ipc_dir)
    r = subprocess.run([sys.executable, "-m", "speeddata.commands", "serve",
                        "-c", str(info["path"]),
                        "--listen", "0.0.0.0:1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "server.token" in r.stderr and "SPEEDDATA_TOKEN" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_channel_added_and_removed_through_the_api_comes_and_goes(tmp_path, ipc_dir, procs):
    from conftest import free_udp_port
    from relay_helpers import wait_for

    info = server_config(tmp_path, ipc_dir)
    procs.relay(info)
    procs.server(info)
    schema = {"type": "record", "name": "vib",
              "fields": [{"name": "time", "type": "long"}, {"name": "a", "type": "double"}]}
    status, body = http_json(info["url"] + "/api/channels", "POST",
                             {"name": "vib", "port": free_udp_port(), "schema": schema})
    assert status in (200, 201), body

    def listed():
        chans = http_json(info["url"] + "/api/channels")[1]["channels"]
        return any(c["name"] == "vib" for c in chans)

    assert wait_for(listed, timeout=15, interval=0.2)  # learnt from the relay's announce
    status, _ = http_json(info["url"] + "/api/channels/vib", "DELETE")
    assert status == 204
    assert not listed()
    assert http_json(info["url"] + "/api/channels/vib")[0] == 404

    async def hello_channels():
        async with websockets.connect(info["ws"]) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return [c["name"] for c in hello["channels"]]

    assert "vib" not in asyncio.run(hello_channels())
