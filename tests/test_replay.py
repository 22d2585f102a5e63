"""``speeddata source --replay``: recorded .avro files sent again, over real UDP sockets on
127.0.0.1 (a plain receiving socket, and a relay), decoded by fastavro (the oracle)."""

from __future__ import annotations

import io
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import fastavro
import pytest

from _cachedata import write_channel
from conftest import SCHEMAS
from relay_helpers import engine_record
from speeddata.cache import list_segments
from speeddata.replay import replay
from speeddata.schema import Schema
from speeddata.source import SourceError

ENGINE = Schema(SCHEMAS / "engine.avsc")
T0 = 1_700_000_000_000_000_000


def write_avro(path: Path, schema: Schema, records: list[dict], channel: str = "engine") -> Path:
    with open(path, "wb") as f:
        fastavro.writer(f, schema.parsed, records, metadata={"speeddata.channel": channel})
    return path


SO_TIMESTAMPNS = 35  # socket(7); SCM_TIMESTAMPNS is the same number


def receiver() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # arrival times, kept by the kernel
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def receive(sock: socket.socket, schema: Schema, n_records: int) -> tuple[list[dict], list[float]]:
    """Records (fastavro) and each datagram's kernel arrival time (s), until
    ``n_records`` came."""
    records, arrivals = [], []
    while len(records) < n_records:
        data, anc, _, _ = sock.recvmsg(65536, 64)
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                arrivals.append(sec + nsec / 1e9)
        buf = io.BytesIO(data)
        while buf.tell() < len(data):
            records.append(fastavro.schemaless_reader(buf, schema.parsed))
    return records, arrivals


def spaced(n: int, step_ns: int) -> list[dict]:
    return [dict(engine_record(i), time=T0 + i * step_ns) for i in range(n)]


def test_replay_as_fast_as_possible(tmp_path):
    records = spaced(3000, 10_000_000)  # 30 s of recording, sent at once
    a = write_avro(tmp_path / "a.avro", ENGINE, records[:1000])
    b = write_avro(tmp_path / "b.avro", ENGINE, records[1000:])
    with receiver() as sock:
        t0 = time.monotonic()
        stats = replay([a, b], sock.getsockname(), speed=0)
        assert time.monotonic() - t0 < 20  # not paced (30 s at speed 1)
        got, _ = receive(sock, ENGINE, 3000)
    assert got == records
    assert (stats.files, stats.records, stats.paced_by) == (2, 3000, "nothing")
    assert stats.datagrams > 1 and stats.bytes > 0


def test_replay_paced_by_time_field(tmp_path):
    records = spaced(40, 10_000_000)  # 0.39 s
    path = write_avro(tmp_path / "e.avro", ENGINE, records)
    with receiver() as sock:
        stats = replay([path], sock.getsockname(), speed=1)
        got, arrivals = receive(sock, ENGINE, 40)
    assert got == records and stats.paced_by == "time field"
    assert arrivals[-1] - arrivals[0] >= 0.3  # spread as recorded, not in one burst
    assert stats.seconds >= 0.35


def test_replay_twice_as_fast_and_now(tmp_path):
    """--now --speed 2: stamped on the replay's clock, the recorded spacing halved."""
    records = spaced(40, 10_000_000)
    path = write_avro(tmp_path / "e.avro", ENGINE, records)
    with receiver() as sock:
        before = time.time_ns()
        stats = replay([path], sock.getsockname(), speed=2, now=True)
        after = time.time_ns()
        got, _ = receive(sock, ENGINE, 40)
    assert 0.15 <= stats.seconds < 5
    assert before <= got[0]["time"] <= after
    for g, r in zip(got, records, strict=True):  # at most 5 ms early (clock vs pacing)
        ideal = (r["time"] - T0) // 2
        assert ideal - 5_000_000 <= g["time"] - got[0]["time"] <= ideal
    assert [dict(g, time=0) for g in got] == [dict(r, time=0) for r in records]


@pytest.mark.parametrize("speed", [10, 3, 0])
def test_replay_now_never_stamps_ahead_of_sending(tmp_path, speed):
    """The issue: --now --speed 10 stamped records up to 74 s ahead of their arrival
    (recorded spacing kept, sent ten times faster). Every stamp is at most the kernel's
    arrival time of its datagram; the stamps keep the records' order."""
    records = spaced(60, 20_000_000)  # 1.18 s recorded
    path = write_avro(tmp_path / "e.avro", ENGINE, records)
    with receiver() as sock:
        before = time.time_ns()
        replay([path], sock.getsockname(), speed=speed, now=True, max_datagram=200)
        got, arrivals = [], []
        while len(got) < 60:
            recs, (arrival,) = receive(sock, ENGINE, 1)
            got += recs
            arrivals += [arrival] * len(recs)
    assert len(got) == 60
    stamps = [g["time"] for g in got]
    assert stamps == sorted(stamps) and stamps[0] >= before
    late = [(s - a * 1e9) / 1e6 for s, a in zip(stamps, arrivals, strict=True)]
    assert max(late) <= 0.01, f"stamped up to {max(late):.3f} ms after arrival"
    if speed:  # the replay's spacing: the recorded one divided by the speed
        span = (stamps[-1] - stamps[0]) / 1e9
        assert span == pytest.approx(1.18 / speed, abs=0.05)


def test_replay_cache_segments_paced_by_receive_times(tmp_path):
    """A schema without a time field: a cache segment's .recv paces the replay."""
    schema = Schema(
        {
            "type": "record",
            "name": "vib",
            "fields": [{"name": "x", "type": "double"}, {"name": "n", "type": "int"}],
        }
    )
    written = write_channel(
        tmp_path / "cache", "vib", schema, lambda k, rng: {"x": k / 2, "n": k}, 60,
        recv_step_ns=15_000_000, blocks_per_segment=2,
    )
    segs = [s.avro for s in list_segments(tmp_path / "cache", "vib")]
    assert len(segs) >= 2
    with receiver() as sock:
        stats = replay(segs, sock.getsockname(), speed=1)
        got, _ = receive(sock, schema, 60)
    assert got == written.records and stats.paced_by == "receive times"
    span = (written.recv_ns[-1] - written.recv_ns[0]) / 1e9
    assert stats.seconds >= 0.8 * span


def test_replay_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        replay([tmp_path / "missing.avro"], ("127.0.0.1", 9))
    (tmp_path / "noise.avro").write_bytes(b"not avro at all" * 10)
    with pytest.raises(SourceError, match="not an Avro container file"):
        replay([tmp_path / "noise.avro"], ("127.0.0.1", 9))
    good = write_avro(tmp_path / "e.avro", ENGINE, spaced(2, 1))
    other = Schema(SCHEMAS / "status.avsc")
    with pytest.raises(SourceError, match="not the one the relay has"):
        replay([good], ("127.0.0.1", 9), channel="engine", expect_schema=other)
    with pytest.raises(SourceError, match="speed"):
        replay([good], ("127.0.0.1", 9), speed=-1)
    with pytest.raises(SourceError, match="nothing to replay"):
        replay([], ("127.0.0.1", 9))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "speeddata.commands", "source", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_cli_replay_to_config_channel(tmp_path):
    """The file names its channel; the config gives the port (and the schema to check)."""
    records = spaced(100, 1_000_000)
    path = write_avro(tmp_path / "e.avro", ENGINE, records)
    with receiver() as sock:
        port = sock.getsockname()[1]
        config = tmp_path / "site.toml"
        config.write_text(
            "[[channels]]\n"
            'name = "engine"\n'
            f"port = {port}\n"
            f'schema = "{SCHEMAS / "engine.avsc"}"\n'
            "[[channels]]\n"
            'name = "status"\n'
            f"port = {port + 1 if port < 65535 else port - 1}\n"
            f'schema = "{SCHEMAS / "status.avsc"}"\n'
        )
        r = cli("--replay", str(path), "-c", str(config), "--speed", "0", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "replayed 100 records of 'engine'" in r.stdout
        got, _ = receive(sock, ENGINE, 100)
    assert got == records
    # the file's schema is not the status channel's: refused before sending
    r = cli("--replay", str(path), "-c", str(config), "--channel", "status", cwd=tmp_path)
    assert r.returncode == 2 and "not the one the relay has for channel 'status'" in r.stderr
    r = cli("--replay", str(path), "-c", str(config), "--channel", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "'nope' is not in" in r.stderr and "engine, status" in r.stderr
    assert "-c FILE" not in r.stderr  # a config was given
    # without -c, the built-in config is used: the message says how to give another
    r = cli("--replay", str(path), "--channel", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "is not in the built-in config" in r.stderr
    assert "give the config that has it with -c FILE" in r.stderr  # issue 10, item 20
    r = cli("--replay", str(path), "--demo", cwd=tmp_path)
    assert r.returncode == 2 and "not both" in r.stderr


def test_replay_a_segment_still_being_written(tmp_path):
    """Pre-allocated, zeros after its last block: replayed up to its last complete block."""
    written = write_channel(
        tmp_path / "cache", "engine", ENGINE, lambda k, rng: engine_record(k), 30,
        leave_open=True,
    )
    segs = list_segments(tmp_path / "cache", "engine")
    last = segs[-1].avro
    index = segs[-1].read_index()
    assert last.stat().st_size > int(index["offset"][-1] + index["size"][-1])  # pre-allocated
    with open(last, "rb") as f:
        with pytest.raises(Exception):  # noqa: B017 - fastavro alone stumbles on the zeros
            list(fastavro.reader(f))
    with receiver() as sock:
        stats = replay([s.avro for s in segs], sock.getsockname(), speed=0)
        got, _ = receive(sock, ENGINE, 30)
    assert got == written.records and stats.records == 30
    written.writer.close()


@pytest.fixture(params=["compiled", "python"])
def rig(request, tmp_path):
    from relay_helpers import harness_factory
    from speeddata._relay import Engine
    from speeddata.relay_ref import PyEngine
    from test_engine import Rig

    engine = Engine if request.param == "compiled" else PyEngine
    yield from harness_factory(Rig, engine, tmp_path)


def test_replay_into_the_same_cache_leaves_a_tag_as_it_was(rig):
    """The issue: a tag had 999 rows, 1,998 after its data was replayed into the same
    cache. Through a relay (both engines): records, a tag over them, a replay of the
    channel's segment (still being written) into the same relay; the tag reads the same
    rows, a read by time finds both copies."""
    import speeddata
    from relay_helpers import wait_for
    from speeddata.source import Source
    from speeddata.tags import add_tag

    r = rig()
    port = r.channel(ENGINE, "engine", cid=1).port
    r.start()
    records = spaced(100, 10_000_000)
    with Source("engine", ENGINE, ("127.0.0.1", port), max_datagram=500) as src:
        src.send_many(records)

    def stored():
        try:
            return speeddata.read(r.cache, "engine").n_rows
        except speeddata.SpeedDataError:
            return 0

    wait_for(lambda: stored() == 100)
    add_tag(r.cache, "run2", T0, T0 + 1_000_000_000, ["engine"])
    before = speeddata.read(r.cache, "engine", tag="run2")
    assert before.n_rows == 100
    segments = [s.avro for s in list_segments(r.cache, "engine")]
    replay(segments, ("127.0.0.1", port), speed=0)
    wait_for(lambda: stored() == 200)
    r.stop()
    after = speeddata.read(r.cache, "engine", tag="run2")
    assert after.n_rows == 100
    assert after["counter"].tolist() == before["counter"].tolist() == list(range(100))
    assert speeddata.read(r.cache, "engine", T0, T0 + 1_000_000_000).n_rows == 200
