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
    status, body = http_json(info["url"] + "/api/channels/engine")
    assert status == 200 and body["records"] >= 200
    assert body["latest"]["engine.rpm"]["value"] == 1000.0 + 1199
