"""Demo signals, the demo runner, ``speeddata source --demo`` and ``speeddata up --demo``.

Everything sends to 127.0.0.1 on kernel-chosen ports, to sockets the test owns; counts are
asserted with loose bounds (never wall-clock time).
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import fastavro
import numpy as np
import pytest
from fastavro.validation import validate

from conftest import SCHEMAS, free_tcp_port, free_udp_port, random_group
from speeddata import demo
from speeddata.commands import main as cli_main
from speeddata.config import load_config
from speeddata.schema import Schema
from speeddata.source import SINGLE_OBJECT_MARKER, Source, SourceError

# -- generators: functions of time -----------------------------------------------------


def test_sine_square_ramp_counter():
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(demo.sine(t, 1.0, 2.0, 10.0), [10, 12, 10, 8, 10], atol=1e-12)
    np.testing.assert_allclose(demo.sine(t, 1.0, phase=0.25), [1, 0, -1, 0, 1], atol=1e-12)
    assert demo.square(t, 1.0, 3.0).tolist() == [3, 3, -3, -3, 3]
    assert demo.square(t, 1.0, duty=0.3).tolist() == [1, 1, -1, -1, 1]
    np.testing.assert_allclose(demo.ramp(t, 2.0, 0, 100), [0, 12.5, 25, 37.5, 50])
    assert demo.ramp(np.array([1.999, 2.0]), 2.0, 0, 1)[1] == 0.0  # wraps each period
    assert demo.counter(np.arange(5) / 100.0, 100.0).tolist() == [0, 1, 2, 3, 4]
    assert demo.counter(np.arange(5) / 100.0, 100.0).dtype == np.int64


def test_noise_is_deterministic_and_gaussian():
    t = np.arange(20000) / 1000.0
    a = demo.noise(t, seed=1, scale=2.0)
    assert np.array_equal(a, demo.noise(t, seed=1, scale=2.0))
    assert not np.array_equal(a, demo.noise(t, seed=2, scale=2.0))
    assert abs(a.mean()) < 0.1 and 1.9 < a.std() < 2.1
    assert demo.noise(t[:1], 1)[0] == demo.noise(np.array([0.0, 5.0]), 1)[0]  # per instant


def test_random_walk_is_slow_continuous_and_bounded():
    t = np.arange(0, 600, 0.01)
    w = demo.random_walk(t, seed=3, scale=5.0, tau=60.0)
    assert np.array_equal(w, demo.random_walk(t, seed=3, scale=5.0, tau=60.0))
    assert np.abs(np.diff(w)).max() < 0.05  # continuous at 100 Hz: no jumps
    assert np.abs(w).max() <= 5.0  # bounded by its scale
    assert w.std() > 0.5  # but it does wander
    assert not np.allclose(w, demo.random_walk(t, seed=4, scale=5.0, tau=60.0))


def test_enum_state_dwells_and_weights():
    t = np.arange(0, 1000, 0.5)
    s = demo.enum_state(t, 3, seed=1, dwell=5.0, weights=(0.2, 0.75, 0.05))
    assert s.dtype == np.int32 and set(s.tolist()) <= {0, 1, 2}
    blocks = s.reshape(-1, 10)  # 10 samples = one 5 s dwell
    assert (blocks == blocks[:, :1]).all()
    share = np.bincount(blocks[:, 0], minlength=3) / len(blocks)
    assert share[1] > 0.6 and share[2] < 0.15


def test_message_and_nulls():
    t = np.array([0.2, 0.7, 1.5])
    m = demo.message(t)
    assert m.tolist() == demo.message(t).tolist()
    assert all(isinstance(x, str) for x in m) and "(t=1.5s)" in m[2]
    assert m[0].split(" (")[0] == m[1].split(" (")[0]  # same phrase within a second
    v = demo.with_nulls(np.ones(10000), np.arange(10000) / 100.0, share=0.2)
    assert 0.15 < np.isnan(v).mean() < 0.25


def test_parse_rates():
    assert demo.parse_rates([]) == (1.0, {})
    assert demo.parse_rates(["2", "power=5000,engine=1.5", "0.5"]) == (
        1.0,
        {"power": 5000.0, "engine": 1.5},
    )
    for bad in ["fast", "0", "power=", "=5", "-1", "power=nan", "1e9"]:
        with pytest.raises(SourceError, match="--rate"):
            demo.parse_rates([bad])


# -- demo channels produce valid records -----------------------------------------------


@pytest.mark.parametrize("name", ["engine", "power", "status", "fixed"])
def test_demo_channel_values_encode(name):
    schema = Schema(SCHEMAS / f"{name}.avsc")
    t = np.arange(0, 30, 0.25)
    ch = demo.DemoChannel(name, schema, 4.0, source=None)
    if ch.numpy:
        with Source(name, schema, ("127.0.0.1", 9)) as src:  # encodes only, never sends
            data, ends = src.encode_array(ch.array(t), times=ch.stamps(t, 0))
        recs = decode_all([data.tobytes()], schema)
        assert len(recs) == len(t) == len(ends)
        if schema.time_field:
            assert [r["time"] for r in recs] == (t * 1e9).astype(np.int64).tolist()
        if name == "engine":
            assert {r["state"] for r in recs} <= {"IDLE", "RUN", "FAULT"}
            assert [r["counter"] for r in recs] == list(range(len(t)))
        return
    recs = ch.records(t, 1_700_000_000_000_000_000)
    for r in recs:
        assert validate(r, schema.parsed, raise_errors=True)
    loads = [r["load"] for r in recs]
    assert None in loads and any(x is not None for x in loads)


def test_generic_fields_for_unknown_schema():
    avsc = {
        "type": "record",
        "name": "misc",
        "fields": [
            {"name": "a", "type": "boolean"},
            {"name": "b", "type": "int"},
            {"name": "c", "type": ["null", "long"]},
            {"name": "d", "type": {"type": "fixed", "name": "F", "size": 11}},
            {"name": "e", "type": "bytes"},
            {"name": "f", "type": ["null", "float"]},
        ],
    }
    schema = Schema(avsc)
    ch = demo.DemoChannel("misc", schema, 10.0, source=None)
    recs = ch.records(np.arange(50) / 10.0, 0)
    for r in recs:
        assert validate(r, schema.parsed, raise_errors=True)
    assert {r["a"] for r in recs} == {True, False}
    assert any(r["c"] is None for r in recs) and any(r["c"] is not None for r in recs)


# -- the runner in process --------------------------------------------------------------


@pytest.fixture
def sockets():
    made = []

    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def decode_all(datagrams: list[bytes], schema: Schema, single: bool = False) -> list[dict]:
    recs = []
    for d in datagrams:
        buf = io.BytesIO(d)
        while buf.tell() < len(d):
            if single:
                assert buf.read(2) == SINGLE_OBJECT_MARKER
                assert buf.read(8) == schema.fingerprint
            recs.append(fastavro.schemaless_reader(buf, schema.parsed))
    return recs


def write_config(path: Path, ports: dict[str, int], shared_port: int = 0) -> Path:
    text = f"""
[cache]
dir = "{path / "cache"}"

[multicast]
full = "{random_group()}:{free_udp_port()}"
decimated = "{random_group()}:{free_udp_port()}"

[relay]
shared_port = {shared_port}
control = "tcp://127.0.0.1:{free_tcp_port()}"
stats = "tcp://127.0.0.1:{free_tcp_port()}"

[server]
listen = "127.0.0.1:{free_tcp_port()}"
"""
    for name, port in ports.items():
        schema = SCHEMAS / f"{name if name in ('engine', 'power', 'status') else 'fixed'}.avsc"
        text += f'\n[[channels]]\nname = "{name}"\nport = {port}\nschema = "{schema}"\n'
    cfg = path / "speeddata.toml"
    cfg.write_text(text)
    return cfg


def test_runner_shared_port_single_object(tmp_path, sockets):
    shared = sockets()
    cfg = load_config(
        write_config(tmp_path, {"engine": 1, "vib": 2}, shared_port=shared.getsockname()[1])
    )
    out = io.StringIO()
    with demo.DemoRunner(cfg, shared=True, rates={"vib": 200.0}, out=out) as runner:
        runner.run(duration=0.3)
        counts = {c.name: c.source.n_records for c in runner.channels}
    got = drain(shared)
    engine, vib = Schema(SCHEMAS / "engine.avsc"), Schema(SCHEMAS / "fixed.avsc")
    by_fp = {engine.fingerprint: [], vib.fingerprint: []}
    for d in got:
        by_fp[d[2:10]].append(d)  # one fingerprint per datagram
    e_recs = decode_all(by_fp[engine.fingerprint], engine, single=True)
    v_recs = decode_all(by_fp[vib.fingerprint], vib, single=True)
    assert len(e_recs) == counts["engine"] and 10 <= len(e_recs) <= 60
    assert len(v_recs) == counts["vib"] and 20 <= len(v_recs) <= 120
    assert [r["counter"] for r in e_recs] == list(range(len(e_recs)))
    assert np.all(np.diff([r["time"] for r in e_recs]) == 10_000_000)  # exactly 1/rate apart
    assert "engine" in out.getvalue() and "records in" in out.getvalue()


def test_runner_send_sockets_bound_to_the_sending_address(tmp_path, sockets):
    """Each demo channel's socket is bound to the address it sends from (127.0.0.1 towards
    a relay on loopback), not to 0.0.0.0, before and after sending; datagrams come from it."""
    receivers = {"engine": sockets(), "vib": sockets()}
    cfg = load_config(
        write_config(tmp_path, {n: s.getsockname()[1] for n, s in receivers.items()})
    )
    with demo.DemoRunner(cfg, rates={"vib": 100.0}) as runner:
        bound = {c.name: c.source.local_address for c in runner.channels}
        assert {n: a[0] for n, a in bound.items()} == {"engine": "127.0.0.1", "vib": "127.0.0.1"}
        assert all(port > 0 for _, port in bound.values())
        runner.run(duration=0.2)
        for c in runner.channels:
            assert c.source.local_address == bound[c.name]
            assert c.source.n_datagrams > 0
    for name, sock in receivers.items():
        deadline = time.monotonic() + 5
        while True:
            try:
                _, sender = sock.recvfrom(65536)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"nothing from {name}"
                time.sleep(0.01)
        assert sender == bound[name]


def test_runner_refuses_unknown_channel_and_missing_port(tmp_path):
    cfg = load_config(write_config(tmp_path, {"engine": 9}))
    with pytest.raises(SourceError, match=r"no channel 'nope'.*\['engine'\]"):
        demo.DemoRunner(cfg, channels=["nope"])
    with pytest.raises(SourceError, match="no channel 'nope'"):
        demo.DemoRunner(cfg, rates={"nope": 5.0})
    with pytest.raises(SourceError, match="shared_port is off"):
        demo.DemoRunner(cfg, shared=True)


# -- the commands -----------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "speeddata.commands", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_source_demo_subprocess(tmp_path, sockets):
    socks = {name: sockets() for name in ("engine", "power", "status")}
    cfg = write_config(tmp_path, {n: s.getsockname()[1] for n, s in socks.items()})
    proc = run_cli("source", "--demo", "--duration", "1", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    counts = {}
    for name, sock in socks.items():
        schema = Schema(SCHEMAS / f"{name}.avsc")
        datagrams = drain(sock)
        recs = decode_all(datagrams, schema)
        assert all(len(d) <= 1400 for d in datagrams)
        counts[name] = (len(recs), len(datagrams))
    # configured: engine 100/s, one per datagram (2 when a tick is late); power 1000/s
    # batched; status 1/s
    assert (
        40 <= counts["engine"][0] <= 150
        and counts["engine"][0] / 2 <= counts["engine"][1] <= counts["engine"][0]
    )
    assert 400 <= counts["power"][0] <= 1500 and counts["power"][1] < counts["power"][0] / 4
    assert 1 <= counts["status"][0] <= 3
    assert f"engine {counts['engine'][0]} records" in proc.stdout


def test_source_demo_subset_and_rate(tmp_path, sockets):
    socks = {name: sockets() for name in ("engine", "power")}
    cfg = write_config(tmp_path, {n: s.getsockname()[1] for n, s in socks.items()})
    code = cli_main(
        ["source", "--demo", "--duration", "0.3", "-c", str(cfg), "--channels", "engine",
         "--rate", "0.5", "-q", "--max-datagram", "300"]
    )  # fmt: skip
    assert code == 0
    assert drain(socks["power"]) == []
    engine = decode_all(drain(socks["engine"]), Schema(SCHEMAS / "engine.avsc"))
    assert 5 <= len(engine) <= 30  # 50/s for 0.3 s


@pytest.mark.parametrize(
    "args, message",
    [
        (["--channels", "nope"], "no channel 'nope'"),
        (["--rate", "fast"], "--rate 'fast'"),
        (["--duration", "-1"], "--duration"),
        (["--max-datagram", "0"], "max_datagram"),
    ],
)
def test_source_cli_errors(tmp_path, capsys, args, message):
    cfg = write_config(tmp_path, {"engine": free_tcp_port()})
    assert cli_main(["source", "--demo", "-c", str(cfg), "--duration", "0", *args]) == 2
    assert message in capsys.readouterr().err


def test_source_without_demo_explains():
    assert cli_main(["source"]) == 2


def test_up_demo_duration_exits_zero(tmp_path):
    # up now starts the relay too: the channel ports are the relay's, the cache in tmp_path
    ports = {name: free_udp_port() for name in ("engine", "power", "status")}
    cfg = write_config(tmp_path, ports)
    proc = run_cli("up", "--demo", "--duration", "3", "--no-status", "-c", str(cfg), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    log = (tmp_path / "cache" / "up.log").read_text()
    assert "Traceback" not in log
    sent = re.search(r"engine (\d+) records in (\d+) datagrams", log)
    assert sent is not None, log  # the demo source ran under the supervisor, stopped cleanly


def test_source_demo_started_with_sigint_ignored_stops_on_sigint(tmp_path, sockets):
    """Issue 10, item 10 for `speeddata source --demo &` in a script: SIGINT ignored at
    start; the source installs its own handler and stops cleanly, with its totals."""
    import signal

    socks = {name: sockets() for name in ("engine", "power", "status")}
    cfg = write_config(tmp_path, {n: s.getsockname()[1] for n, s in socks.items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "speeddata.commands", "source", "--demo", "-c", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 30
        while not drain(socks["engine"]) and time.monotonic() < deadline:
            time.sleep(0.1)  # sending
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
