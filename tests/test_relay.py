"""The relay process (``python -m speeddata.relay -c FILE``) end to end, over real sockets.

Each test writes a config on kernel-chosen free ports, a tmp cache folder, ipc:// control
endpoints and a random 239.255.x.y group on 127.0.0.1, starts the relay as a child
process, and talks to it over the ZeroMQ control plane. Parametrized over the engines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import zmq

import speeddata.relay as relay_module
from conftest import SCHEMAS, free_udp_port
from relay_helpers import (
    ENGINE_NAMES as ENGINES,
)
from relay_helpers import (
    RelayProcess,
    Sender,
    encode,
    engine_record,
    read_all_cleanly,
    read_channel,
    single_object,
    status_record,
    vibration_record,
    wait_for,
    write_config,
)
from speeddata.cache import cache_segments, list_segments, segment_bytes, segment_needs_recovery
from speeddata.config import load_config
from speeddata.relay import Relay, RelayError
from speeddata.schema import Schema
from speeddata.validate import PyValidator


@pytest.fixture
def ipc_dir():
    # ipc:// paths are limited to ~107 bytes: keep them short, outside the pytest tmp tree
    d = Path(tempfile.mkdtemp(prefix="sd-relay-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sender():
    s = Sender()
    yield s
    s.close()


@pytest.fixture(params=ENGINES)
def relay(request, tmp_path, ipc_dir):
    """``relay(**config) -> (info, start())``: a factory of relay processes to start."""
    procs: list[RelayProcess] = []

    def make(**config) -> RelayProcess:
        info = write_config(tmp_path / "relay.toml", ipc_dir, **config)
        p = RelayProcess(info, request.param, tmp_path / "relay.log")
        procs.append(p)
        return p

    make.engine = request.param
    yield make
    for p in procs:
        p.kill()
    for p in procs[:1]:  # they share one log file
        log = p.log.read_text() if p.log.exists() else ""
        assert "Traceback" not in log and "Exception ignored" not in log, log


def send_paced(proc: RelayProcess, sender: Sender, name: str, datagrams, chunk: int = 20):
    port = proc.info["ports"].get(name) or proc.channel(name)["port"]
    base = proc.counter(name, "datagrams")
    for i in range(0, len(datagrams), chunk):
        for d in datagrams[i : i + chunk]:
            sender.send(port, d)
        target = base + min(i + chunk, len(datagrams))
        wait_for(lambda t=target: proc.counter(name, "datagrams") >= t)


def test_status_stats_and_sigterm(relay, tmp_path, sender):
    proc = relay().start()
    info = proc.info
    engine = Schema(SCHEMAS / "engine.avsc")
    status = Schema(SCHEMAS / "status.avsc")
    sent_engine = [engine_record(i) for i in range(60)]
    sent_status = [status_record(i) for i in range(5)]
    send_paced(
        proc, sender, "engine", [encode(engine, sent_engine[i : i + 3]) for i in range(0, 60, 3)]
    )
    send_paced(proc, sender, "status", [encode(status, [r]) for r in sent_status])
    sender.send(info["ports"]["engine"], b"not avro at all")
    wait_for(lambda: proc.counter("engine", "rejected") == 1)

    st = proc.status()
    assert st["ok"] and st["engine"] == relay.engine and st["workers"] == 1
    want = {"datagrams": 20, "records": 60, "multicast_sent": 20, "multicast_decimated": 2}

    def counted():  # an engine may count a datagram's steps one after the other
        ch = proc.channel("engine")
        return ch if {k: ch["counters"][k] for k in want} == want else None

    eng = wait_for(counted)
    assert eng["rcvbuf"] >= 1 << 20  # root may force the size past rmem_max
    assert st["shared"]["port"] == info["shared_port"]
    # the cache summary comes from the files, off the hot path
    wait_for(lambda: (proc.channel("engine")["cache"] or {}).get("newest_ns"))
    cache = proc.channel("engine")["cache"]
    assert cache["segments"] == 1 and cache["bytes"] > 0
    assert cache["oldest_ns"] == sent_engine[0]["time"]
    assert cache["newest_ns"] == sent_engine[-1]["time"]

    # the status CLI talks to the relay and prints the table
    out = subprocess.run(
        [sys.executable, "-m", "speeddata.commands", "relay", "status", "-c", str(info["path"])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "datagrams" in lines[2] and "drops" in lines[2] and "newest" in lines[2]
    assert max(len(line) for line in lines) <= 80
    row = next(line.split() for line in lines if line.startswith("engine "))
    # datagrams, records, rejected, kernel drops, multicast, data (number and unit)
    assert row[1:5] == ["20", "60", "1", "0"] and row[7] == "kB"
    # ... and says why: rejects by reason under the table, the first one in the log
    reason = PyValidator(engine).reason(b"not avro at all")
    assert proc.channel("engine")["rejects"] == {reason: 1}
    assert f"rejected engine: {reason} 1" in out.stdout
    wait_for(lambda: f"channel engine: rejected a datagram: {reason}" in proc.log.read_text())

    # the stats PUB socket publishes the status once a second
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(info["stats"])
    try:
        assert sub.poll(5000), "no status published on relay.stats"
        published = json.loads(sub.recv())
    finally:
        sub.close()
    assert {c["name"] for c in published["channels"]} == {"engine", "status"}

    # SIGTERM: exit 0, every segment trimmed and readable
    assert proc.stop() == 0
    segments = cache_segments(info["cache"])
    assert segments and not any(segment_needs_recovery(s) for s in segments)
    assert read_channel(info["cache"], "engine") == sent_engine
    assert read_channel(info["cache"], "status") == sent_status


def test_the_signal_handler_needs_no_lock(tmp_path, ipc_dir):
    """A Python signal handler runs in the main thread between two bytecodes, possibly
    while that thread holds the lock inside the relay's stop event (``Event.wait`` takes it
    for a moment on every pass). A handler that needed that lock would hang the relay with
    SIGTERM pending (a killed ``speeddata up`` once left such a relay behind)."""
    relay = Relay(load_config(write_config(tmp_path / "r.toml", ipc_dir)["path"]), "python")
    returned = threading.Event()

    def main_thread():
        with relay._stop._cond:  # the moment inside Event.wait when the signal lands
            relay.stop_from_signal(signal.SIGTERM, None)
        relay.wait()
        returned.set()

    threading.Thread(target=main_thread, daemon=True).start()
    assert returned.wait(10), "the signal handler blocked on a lock its own thread holds"


def test_control_add_remove_rotate_persisted(relay, tmp_path, sender):
    proc = relay().start()
    info = proc.info
    power = Schema(SCHEMAS / "power.avsc")
    port = free_udp_port()
    reply = proc.request(
        {
            "cmd": "add",
            "channel": {"name": "power", "port": port, "schema": power.avsc, "decimation": 5},
        }
    )
    assert reply["ok"] and reply["name"] == "power" and reply["id"] == 3
    # refused, with a reason
    bad = [
        (
            {
                "cmd": "add",
                "channel": {"name": "power", "port": free_udp_port(), "schema": power.avsc},
            },
            "exists",
        ),
        ({"cmd": "add", "channel": {"name": "x", "port": port, "schema": power.avsc}}, "used"),
        (
            {
                "cmd": "add",
                "channel": {
                    "name": "y",
                    "port": free_udp_port(),
                    "schema": {"type": "array", "items": "int"},
                },
            },
            "record",
        ),
        ({"cmd": "add", "channel": {"name": "z", "schema": "/no/such.avsc"}}, "such.avsc"),
        ({"cmd": "add", "channel": {"name": "bad name!", "schema": power.avsc}}, "name"),
        ({"cmd": "remove", "name": "nope"}, "no channel"),
        ({"cmd": "rotate", "name": "nope"}, "no channel"),
        ({"cmd": "launch"}, "unknown cmd"),
        ({"nothing": 1}, "cmd"),
    ]
    for req, why in bad:
        reply = proc.request(req, check=False)
        assert reply["ok"] is False and why in reply["error"], (req, reply)

    power_records = [
        {"time": 1_700_000_000_000_000_000 + i, "voltage": i * 1.5, "current": 2.0, "noise": 0.25}
        for i in range(10)
    ]
    send_paced(proc, sender, "power", [encode(power, power_records[:5])])
    proc.request({"cmd": "rotate", "name": "power"})
    send_paced(proc, sender, "power", [encode(power, power_records[5:])])
    proc.request({"cmd": "rotate"})
    assert len(list_segments(info["cache"], "power")) == 2
    assert read_channel(info["cache"], "power") == power_records  # rotated = trimmed
    assert proc.request({"cmd": "remove", "name": "status"})["ok"]
    names = {c["name"] for c in proc.status()["channels"]}
    assert names == {"engine", "power"}
    saved = json.loads((info["cache"] / "relay-channels.json").read_text())
    assert saved["removed"] == ["status"]
    assert saved["added"][0]["schema"] == power.avsc  # stored inline

    # a restart keeps the runtime changes
    assert proc.stop() == 0
    proc.start()
    st = proc.status()
    by_name = {c["name"]: c for c in st["channels"]}
    assert set(by_name) == {"engine", "power"}
    assert by_name["power"]["port"] == port and by_name["power"]["decimation"] == 5
    send_paced(proc, sender, "power", [encode(power, power_records[:1])])
    # removing a runtime channel forgets it
    assert proc.request({"cmd": "remove", "name": "power"})["ok"]
    saved = json.loads((info["cache"] / "relay-channels.json").read_text())
    assert saved == {"added": [], "removed": ["status"]}
    assert proc.request({"cmd": "stop"})["ok"]
    assert proc.proc.wait(20) == 0
    assert read_channel(info["cache"], "power") == power_records + power_records[:1]


def test_kill9_then_recovery(relay, tmp_path, sender):
    proc = relay().start()
    info = proc.info
    engine = Schema(SCHEMAS / "engine.avsc")
    send_paced(proc, sender, "engine", [encode(engine, [engine_record(i)]) for i in range(50)])
    # keep streaming while the relay is killed
    stop = threading.Event()

    def stream():
        i = 50
        t0 = time.monotonic()
        while not stop.is_set() and time.monotonic() - t0 < 10 and i < 5000:
            sender.send(info["ports"]["engine"], encode(engine, [engine_record(i)] * 5))
            i += 1
            time.sleep(0.001)

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.3)
    proc.proc.kill()
    proc.proc.wait(10)
    stop.set()
    t.join()
    segments = cache_segments(info["cache"])
    assert any(segment_needs_recovery(s) for s in segments)  # pre-allocated, untrimmed
    proc.start()
    assert not any(segment_needs_recovery(s) for s in cache_segments(info["cache"]))
    n = read_all_cleanly(info["cache"])  # every file reads cleanly with fastavro
    assert n >= 50
    records = read_channel(info["cache"], "engine")
    assert [r["counter"] for r in records[:50]] == list(range(50))
    assert "recovered" in (tmp_path / "relay.log").read_text()
    assert proc.stop() == 0


def test_retention_budget_keeps_pinned(relay, tmp_path, sender):
    proc = relay(budget="400 kB", segment_size="64 KiB").start()
    info = proc.info
    status = Schema(SCHEMAS / "status.avsc")
    pinned = None
    i = 0
    for seg_no in range(12):  # 12 segments of ~60 kB: three times the budget
        send_paced(
            proc,
            sender,
            "status",
            [encode(status, [status_record(i + k, message_len=6000)]) for k in range(9)],
            chunk=9,
        )
        i += 9
        proc.request({"cmd": "rotate", "name": "status"})
        if seg_no == 0:
            first = list_segments(info["cache"], "status")[0]
            tag_dir = info["cache"] / "tags" / "keep" / "status"
            tag_dir.mkdir(parents=True)
            for f in first.files():
                os.link(f, tag_dir / f.name)
            pinned = first

    def within_budget():
        # segment_bytes: a file retention deletes meanwhile counts 0
        total = sum(segment_bytes(s) for s in cache_segments(info["cache"]))
        return total <= 400_000

    wait_for(within_budget, timeout=10)
    remaining = list_segments(info["cache"], "status")
    assert pinned.avro.exists() and remaining[0] == pinned  # the tag pins it
    assert len(remaining) < 12
    # the oldest unpinned went first: what is left is the newest run of segments
    names = [s.avro.name for s in remaining[1:]]
    assert names == sorted(names)
    assert remaining[-1].avro.name == max(s.avro.name for s in remaining)
    wait_for(lambda: proc.status()["cache"].get("deleted_segments", 0) >= 1)
    assert proc.stop() == 0
    assert read_all_cleanly(info["cache"]) > 0


def test_bad_config_exits_2(tmp_path, ipc_dir):
    bad = tmp_path / "bad.toml"
    bad.write_text("[relay]\nworkerz = 2\n")
    r = subprocess.run(
        [sys.executable, "-m", "speeddata.relay", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "relay.workerz" in r.stderr and "unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_port_in_use_exits_2(tmp_path, ipc_dir):
    info = write_config(tmp_path / "relay.toml", ipc_dir)
    import socket

    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", info["ports"]["engine"]))
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "speeddata.relay",
                "-c",
                str(info["path"]),
                "--engine",
                "python",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        blocker.close()
    assert r.returncode == 2, r.stderr
    assert "cannot bind channel 'engine'" in r.stderr and "Traceback" not in r.stderr
    # issue 10, item 20: it said "INFO stopped"; the log says it failed, at ERROR
    assert "INFO stopped" not in r.stderr
    assert "ERROR failed to start: cannot bind channel 'engine'" in r.stderr
    assert "ERROR stopped: the relay failed to start" in r.stderr


#: an address no host has (TEST-NET-1, RFC 5737): never one of this machine's
NOT_LOCAL = "192.0.2.1"


def test_a_multicast_interface_not_on_this_host_is_a_clear_error(tmp_path, ipc_dir):
    """It was a traceback from inside the engine (OSError 99 on IP_MULTICAST_IF)."""
    info = write_config(tmp_path / "relay.toml", ipc_dir)
    text = info["path"].read_text().replace('interface = "127.0.0.1"',
                                            f'interface = "{NOT_LOCAL}"')
    info["path"].write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "speeddata.relay", "-c", str(info["path"])],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"speeddata relay: error: multicast.interface {NOT_LOCAL}: multicast cannot " \
        "leave by it (Cannot assign requested address); it is not an address of this " \
        "host" in r.stderr
    assert "ip -4 addr" in r.stderr


@pytest.mark.parametrize("key", ["relay.listen", "relay.control", "relay.stats"])
def test_an_address_not_on_this_host_names_its_key(tmp_path, ipc_dir, key):
    """relay.listen (or a TCP control or stats endpoint) on an address this host does not
    have said "is another relay using it? pick another port": the fix is another address."""
    info = write_config(tmp_path / "relay.toml", ipc_dir)
    text = info["path"].read_text()
    if key == "relay.listen":
        text = text.replace("[relay]\n", f'[relay]\nlisten = "{NOT_LOCAL}"\n')
    else:
        endpoint = info[key.split(".")[1]]
        text = text.replace(f'"{endpoint}"', f'"tcp://{NOT_LOCAL}:7100"')
    info["path"].write_text(text)
    relay = Relay(load_config(info["path"]), "python")
    try:
        with pytest.raises(RelayError) as err:
            relay.start()
    finally:
        relay.close()
    message = str(err.value)
    assert "is not an address of this host" in message or \
        "its address is not one of this host's" in message, message
    assert key in message and "ip -4 addr" in message
    assert "another relay" not in message and "pick another port" not in message


def test_status_without_relay_exits_2(ipc_dir):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "speeddata.commands",
            "relay",
            "status",
            "--control",
            f"ipc://{ipc_dir}/nobody",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "no relay answers" in r.stderr


def test_workers_spread_channels(relay, sender):
    proc = relay(shared=False)
    proc.info["path"].write_text(
        proc.info["path"].read_text().replace("[relay]\n", "[relay]\nworkers = 2\nnice = 3\n")
    )
    proc.start()
    st = proc.status()
    assert st["workers"] == 2
    # relay.nice applies to the receive loops (and threads they start), not the process
    pid = proc.proc.pid
    nices = {
        int(t.name): int((t / "stat").read_text().rsplit(")", 1)[1].split()[16])
        for t in Path(f"/proc/{pid}/task").iterdir()
    }
    assert nices[pid] == 0
    assert sum(n == 3 for n in nices.values()) >= 2, nices
    assert sorted(c["engine"] for c in st["channels"]) == [0, 1]
    engine = Schema(SCHEMAS / "engine.avsc")
    status = Schema(SCHEMAS / "status.avsc")
    send_paced(proc, sender, "engine", [encode(engine, [engine_record(i)]) for i in range(10)])
    send_paced(proc, sender, "status", [encode(status, [status_record(i)]) for i in range(10)])
    assert proc.stop() == 0
    assert len(read_channel(proc.info["cache"], "engine")) == 10
    assert len(read_channel(proc.info["cache"], "status")) == 10


def test_workers_shared_port_steered_by_fingerprint(relay, sender):
    """With two engines, the kernel steers each single-object datagram to the socket of the
    engine that serves its channel (steering.py): channels in both engines, and a shared-
    port-only channel added at run time, all get theirs; an unknown fingerprint is
    rejected once."""
    proc = relay()
    proc.info["path"].write_text(
        proc.info["path"].read_text().replace("[relay]\n", "[relay]\nworkers = 2\n")
    )
    proc.start()
    engine = Schema(SCHEMAS / "engine.avsc")
    status = Schema(SCHEMAS / "status.avsc")
    vib_schema = {"type": "record", "name": "vib", "fields": [
        {"name": n, "type": "double"} for n in ("x", "y", "z")] + [
        {"name": "ok", "type": "boolean"}]}
    reply = proc.request({"cmd": "add", "channel": {"name": "vib", "port": None,
                                                    "schema": vib_schema}})
    st = proc.status()
    engines = {c["name"]: c["engine"] for c in st["channels"]}
    assert sorted(engines.values()) == [0, 0, 1] or sorted(engines.values()) == [0, 1, 1]
    assert engines["engine"] != engines["status"]
    vibration = Schema(vib_schema)
    assert reply["port"] is None
    shared = proc.info["shared_port"]
    want = {"engine": (engine, engine_record), "status": (status, status_record),
            "vib": (vibration, vibration_record)}
    for i in range(0, 30, 10):
        for schema, make in want.values():
            for k in range(i, i + 10):
                sender.send(shared, single_object(schema, [make(k)]))
        for name in want:
            wait_for(lambda n=name, t=i + 10: proc.counter(n, "datagrams") >= t)
    # Apache avro for Python's fingerprints (logical types: not the spec's) are steered too
    assert len(engine.fingerprints) == len(status.fingerprints) == 2
    for schema, make in want.values():
        for k in range(30, 35):
            sender.send(shared, single_object(schema, [make(k)], schema.fingerprints[-1]))
    for name in want:
        wait_for(lambda n=name: proc.counter(n, "datagrams") >= 35)
    sender.send(shared, single_object(engine, [engine_record(0)], fingerprint=b"\x01" * 8))
    wait_for(lambda: proc.status()["shared"]["counters"].get("rejected") == 1)
    st = proc.status()
    assert {c["name"]: c["counters"]["datagrams"] for c in st["channels"]} == {
        "engine": 35, "status": 35, "vib": 35}
    assert st["shared"]["counters"]["rejected"] == 1
    assert proc.stop() == 0
    for name in want:
        assert len(read_channel(proc.info["cache"], name)) == 35


@pytest.mark.parametrize("engine", ENGINES)
def test_workers_shared_port_without_steering(tmp_path, ipc_dir, sender, monkeypatch, caplog,
                                              engine):
    """Where the kernel refuses the steering program, the relay says so and falls back to
    one shared socket on engine 0, which serves every channel without a port."""
    import speeddata.steering as steering

    def refuse(sock, routes):
        raise steering.SteeringError(22, "SO_ATTACH_REUSEPORT_CBPF: Invalid argument")

    monkeypatch.setattr(steering, "attach", refuse)
    info = write_config(tmp_path / "r.toml", ipc_dir)
    info["path"].write_text(info["path"].read_text().replace("[relay]\n", "[relay]\nworkers = 2\n"))
    relay = Relay(load_config(info["path"]), engine)
    relay.start()
    try:
        assert not relay.steered and len(relay.shared_socks) == 1
        assert "routes only to the channels of worker 0" in caplog.text
        assert "Invalid argument" in caplog.text
        power = Schema(SCHEMAS / "power.avsc")
        relay.add_channel({"name": "power", "port": None, "schema": power.avsc})
        assert relay.channels["power"].engine == 0
        rec = {"time": 1, "voltage": 1.0, "current": 0.5, "noise": 0.25}
        sender.send(info["shared_port"], single_object(power, [rec]))
        wait_for(lambda: relay.status()["channels"][-1]["counters"].get("datagrams") == 1)
    finally:
        relay.close()


def test_replay_a_segment_into_the_relay(relay, sender):
    """`speeddata source --replay` of a segment this relay wrote, into the same channel
    with --now: the cache then holds the records twice, the replayed ones restamped."""
    proc = relay().start()
    engine = Schema(SCHEMAS / "engine.avsc")
    sent = [engine_record(i) for i in range(50)]
    send_paced(proc, sender, "engine", [encode(engine, sent[i : i + 5]) for i in range(0, 50, 5)])
    proc.request({"cmd": "rotate"})
    segments = [s.avro for s in list_segments(proc.info["cache"], "engine")]
    before = time.time_ns()
    r = subprocess.run(
        [sys.executable, "-m", "speeddata.commands", "source", "--replay", *map(str, segments),
         "-c", str(proc.info["path"]), "--now", "--speed", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "replayed 50 records of 'engine'" in r.stdout
    wait_for(lambda: proc.counter("engine", "records") == 100)
    assert proc.stop() == 0
    got = read_channel(proc.info["cache"], "engine")
    assert got[:50] == read_all_segments(segments)
    replayed = got[50:]
    assert all(g["time"] >= before for g in replayed)
    assert [dict(g, time=0) for g in replayed] == [dict(g, time=0) for g in got[:50]]


def read_all_segments(paths) -> list[dict]:
    import fastavro

    out = []
    for p in paths:
        with open(p, "rb") as f:
            out.extend(fastavro.reader(f))
    return out


def test_status_watch_until_ctrl_c(relay):
    proc = relay().start()
    watch = subprocess.Popen(
        [sys.executable, "-m", "speeddata.commands", "relay", "status", "--watch"]
        + ["--control", proc.info["control"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    assert out.count("multicast") >= 2  # refreshed
    assert "Traceback" not in err
    assert proc.stop() == 0


def test_corrupt_channels_file_exits_2(tmp_path, ipc_dir):
    info = write_config(tmp_path / "relay.toml", ipc_dir)
    info["cache"].mkdir()
    (info["cache"] / "relay-channels.json").write_text('{"added": [{"name": "x"}]}')
    r = subprocess.run(
        [sys.executable, "-m", "speeddata.relay", "-c", str(info["path"]), "--engine", "python"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "relay-channels.json" in r.stderr and "Traceback" not in r.stderr


def test_add_schema_path_relative_to_config(relay, tmp_path):
    shutil.copy(SCHEMAS / "fixed.avsc", tmp_path / "vib.avsc")
    proc = relay().start()
    reply = proc.request(
        {"cmd": "add", "channel": {"name": "vib", "port": None, "schema": "vib.avsc"}}
    )
    assert reply["ok"] and reply["port"] is None
    ch = proc.channel("vib")
    assert ch["fingerprint"] == Schema(SCHEMAS / "fixed.avsc").fingerprint_hex
    assert ch["time"] is None and ch["port"] is None
    assert proc.stop() == 0


def test_set_thread_nice(monkeypatch, caplog):
    """The loop's priority is the calling thread's only; refused: a warning, no error."""
    from speeddata.relay import set_thread_nice

    got = {}

    def worker():
        got["ok"] = set_thread_nice(4)
        got["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert got == {"ok": True, "nice": 4}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0

    def refuse(*_args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    monkeypatch.setattr(relay_module, "_nice_refused", False)
    with caplog.at_level("WARNING", logger="speeddata.relay"):
        assert set_thread_nice(-10) is False
        assert set_thread_nice(-10) is False  # a second worker: refused, not logged again
    assert caplog.text.count("relay.nice = -10 refused") == 1


def _voluntary_switches(pid: int) -> int:
    """Times the process's threads went to sleep (each a wake-up later), all threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    return total


def test_an_idle_relay_sleeps(relay):
    """No thread of an idle relay polls: what wakes it is the once-a-second work (status
    publication, announces, the retention pass, the age sweep), a handful a second in all.
    (Before issue 13: 21 a second, from 0.1-0.25 s polls of flags.)"""
    proc = relay().start()
    time.sleep(1.0)  # start-up done
    before = _voluntary_switches(proc.proc.pid)
    time.sleep(4.0)
    woken = (_voluntary_switches(proc.proc.pid) - before) / 4.0
    status = proc.status()
    assert woken < 12, f"{woken:.1f} wake-ups a second"
    assert status["loop"]["wakeups"] == 0 and status["loop"]["coalesced"] == 0
    assert status["loop"]["coalesce"] == pytest.approx(0.0005)
