"""The relay engines with real sockets and files: compiled ``_relay.Engine`` and, when it
imports, the reference ``relay_ref.PyEngine`` (docs/relay-internals.md, docs/cache.md,
docs/wire.md). fastavro is the oracle for the cache; ``speeddata.wire`` for multicast.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fastavro
import numpy as np
import pytest

from conftest import SCHEMAS, free_udp_port, random_group
from relay_helpers import (
    LOOPBACK,
    Harness,
    Sender,
    encode,
    engine_record,
    harness_factory,
    read_all_cleanly,
    read_channel,
    single_object,
    wait_for,
)
from speeddata import Source, _relay, wire
from speeddata._relay import Engine
from speeddata._validate import Validator
from speeddata.cache import (
    IDX_DTYPE,
    RECV_DTYPE,
    SegmentWriter,
    list_segments,
    recover_segment,
    segment_time_ns,
)
from speeddata.relay_ref import PyEngine
from speeddata.schema import Schema

ENGINES = [pytest.param(Engine, id="compiled"), pytest.param(PyEngine, id="python")]

# 100 doubles: the fixed-layout schema of the benchmarks (any 800 bytes are a record)
DOUBLES = Schema(
    {
        "type": "record",
        "name": "doubles",
        "fields": [{"name": f"v{i}", "type": "double"} for i in range(100)],
    }
)


def schema(name: str) -> Schema:
    return Schema(SCHEMAS / f"{name}.avsc")


def decode_all(schema_: Schema, payload: bytes) -> list[dict]:
    """Records back to back -> dicts, by fastavro."""
    import io

    buf = io.BytesIO(payload)
    out = []
    while buf.tell() < len(payload):
        out.append(fastavro.schemaless_reader(buf, schema_.parsed))
    return out


class Rig(Harness):
    """The shared relay test harness, with this file's short names."""

    def __init__(self, engine_cls, tmp_path: Path, cache=True, announce=0.2, **kwargs):
        super().__init__(engine_cls, tmp_path, cache=cache, announce_interval=announce, **kwargs)
        self.mc, self.dec, self.socks = self.multicast, self.decimated, self.sockets

    def channel(self, sch, name, cid=1, decimation=1, port=True, rcvbuf=4 << 20):
        return super().channel(sch, name, cid, decimation, with_port=port, rcvbuf=rcvbuf)

    def stats(self, cid: int) -> dict:
        return self.engine.stats().get(cid, {})

    def send(self, port: int, datagrams: list[bytes], cid: int, chunk: int = 64):
        self.send_paced(port, datagrams, cid, chunk)


@pytest.fixture(params=ENGINES)
def rig(request, tmp_path):
    yield from harness_factory(Rig, request.param, tmp_path)


def read_segments(cache: Path, channel: str):
    """(records, idx, recv) of every segment, with the index checked against the data."""
    records, idxs, recvs = [], [], []
    for seg in list_segments(cache, channel):
        with open(seg.avro, "rb") as f:
            seg_records = list(fastavro.reader(f))
        idx = np.fromfile(seg.idx, dtype=IDX_DTYPE)
        recv = np.fromfile(seg.recv, dtype=RECV_DTYPE)
        assert int(idx["offset"][0]) == seg.header_size()
        assert np.array_equal(idx["offset"][1:], idx["offset"][:-1] + idx["size"][:-1])
        assert seg.avro.stat().st_size == int(idx["offset"][-1] + idx["size"][-1])
        assert int(idx["n_records"].sum()) == len(seg_records) == int(recv["n_records"].sum())
        assert int(idx["n_datagrams"].sum()) == len(recv)
        records += seg_records
        idxs.append(idx)
        recvs.append(recv)
    return records, np.concatenate(idxs), np.concatenate(recvs)


# -- end to end ------------------------------------------------------------------------


def test_source_to_cache_and_multicast(rig):
    """speeddata.Source -> engine -> cache (fastavro) + .idx/.recv + multicast subscriber."""
    r = rig()
    sch = schema("engine")
    ch = r.channel(sch, "engine", cid=7)
    r.start()
    t0 = time.time_ns()
    records = [engine_record(i) for i in range(3000)]
    with Source("engine", sch, (LOOPBACK, ch.port), max_datagram=1400) as src:
        for i in range(0, len(records), 500):  # paced: nothing may be dropped
            src.send_many(records[i : i + 500])
            wait_for(lambda n=src.n_datagrams: r.processed(7) >= n)
        n_datagrams = src.n_datagrams
    t1 = time.time_ns()
    r.full.collect_until(lambda s: len(s.data) >= n_datagrams)
    r.stop()

    expected = decode_all(sch, encode(sch, records))
    stored, idx, recv = read_segments(r.cache, "engine")
    assert stored == expected

    # multicast: the header of docs/wire.md, payloads exactly the records as sent
    heads = [h for h, _ in r.full.data]
    assert all(h.magic == b"SpDa" and h.version == 1 and h.kind == 0 for h in heads)
    assert all(h.header_len == 32 and h.channel_id == 7 for h in heads)
    assert [h.seq for h in heads] == list(range(n_datagrams))
    assert b"".join(p for _, p in r.full.data) == encode(sch, records)
    assert [h.n_records for h in heads] == [len(decode_all(sch, p)) for _, p in r.full.data]
    # .recv: one entry per datagram, the same receive time and count as its header
    assert len(recv) == n_datagrams
    assert recv["seq"].tolist() == list(range(n_datagrams))
    assert recv["n_records"].tolist() == [h.n_records for h in heads]
    assert recv["recv_ns"].tolist() == [h.recv_ns for h in heads]
    assert t0 - 10**9 < recv["recv_ns"].min() and recv["recv_ns"].max() < t1 + 10**9
    # .idx: t_min/t_max are the time fields of the block's records (timestamp-nanos)
    times = np.array([rec["time"] for rec in records])
    ends = np.cumsum(idx["n_records"])
    for entry, end in zip(idx, ends, strict=True):
        block = times[end - entry["n_records"] : end]
        assert (entry["t_min"], entry["t_max"]) == (block.min(), block.max())
    firsts = np.concatenate([[0], np.cumsum(idx["n_datagrams"])[:-1]]).astype(int)
    assert idx["seq_first"].tolist() == recv["seq"][firsts].tolist()

    s = r.engine.stats()[7]
    assert s["datagrams"] == n_datagrams and s["records"] == 3000
    assert s["bytes"] == len(encode(sch, records))
    assert s["stored_records"] == 3000 and s["multicast_sent"] == n_datagrams
    assert s["blocks"] == len(idx) and s["segments"] == 1
    assert s["t_newest"] == times.max()
    assert s["rejected"] == s["kernel_drops"] == s["store_failed"] == 0
    assert s["multicast_errors"] == 0


def test_decimation_and_announces(rig):
    r = rig(announce=0.1)
    sch = schema("power")
    ch = r.channel(sch, "power", cid=2, decimation=3)
    r.start()
    datagrams = [
        encode(sch, [{"time": i, "voltage": 1.0, "current": 2.0, "noise": 0.5}]) for i in range(20)
    ]
    r.send(ch.port, datagrams, 2)
    r.full.collect_until(lambda s: len(s.data) >= 20 and len(s.announces) >= 2)
    r.dec.collect_until(lambda s: len(s.data) >= 7 and len(s.announces) >= 2)
    r.stop()
    assert [h.seq for h, _ in r.dec.data] == [0, 3, 6, 9, 12, 15, 18]
    assert [p for _, p in r.dec.data] == [datagrams[i] for i in range(0, 20, 3)]
    s = r.engine.stats()[2]
    assert s["multicast_decimated"] == 7 and s["multicast_sent"] == 20
    for sub in (r.full, r.dec):
        heads = [h for h, _ in sub.announces]
        assert all(h.kind == wire.KIND_ANNOUNCE and h.n_records == 0 for h in heads)
        assert [h.seq for h in heads] == list(range(len(heads)))
        a = sub.announces[0][1]
        assert a["id"] == 2 and a["name"] == "power" and a["decimation"] == 3
        assert a["schema"] == sch.avsc and a["fingerprint"] == sch.fingerprint_hex
        assert a["time"] == "time" and a["time_scale"] == 1


def test_rotation_by_size(rig):
    r = rig(segment_size=16 * 1024)
    sch = schema("engine")
    ch = r.channel(sch, "engine")
    r.start()
    records = [engine_record(i) for i in range(2000)]
    datagrams = [encode(sch, records[i : i + 5]) for i in range(0, 2000, 5)]
    r.send(ch.port, datagrams, 1, chunk=16)
    r.stop()
    segs = list_segments(r.cache, "engine")
    assert len(segs) >= 3
    assert all(seg.avro.stat().st_size <= 16 * 1024 for seg in segs)
    stored, _, recv = read_segments(r.cache, "engine")
    assert stored == decode_all(sch, b"".join(datagrams))
    assert recv["seq"].tolist() == list(range(len(datagrams)))
    assert r.engine.stats()[1]["segments"] == len(segs)


def test_malformed_datagrams(rig, tmp_path):
    r = rig(rejected_dir=tmp_path / "cache" / "rejected")
    sch = schema("engine")
    ch = r.channel(sch, "engine", cid=3)
    r.start()
    good = encode(sch, [engine_record(1)])
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 65507, dtype=np.uint8).tobytes()
    bad = [
        good[:-1],  # truncated
        good + b"\x00",  # trailing byte
        encode(
            schema("status"),
            [
                {
                    "time": 1,
                    "message": "m" * 40,
                    "uptime": 1.0,
                    "load": None,
                    "host": {"cpu_temp": 1.0, "free_disk": 2},
                }
            ],
        ),
        b"",  # empty
        noise,  # 64 KiB of noise
        b"\xff" * 10,
    ]
    v = Validator(sch)
    assert all(v.count(b) == -1 for b in bad), "every sample must be invalid"
    r.send(ch.port, bad + [good], 3, chunk=1)
    r.full.collect_until(lambda s: len(s.data) >= 1)
    time.sleep(0.1)
    r.full.poll()
    r.stop()
    s = r.engine.stats()[3]
    assert s["rejected"] == len(bad) and s["datagrams"] == 1 and s["multicast_sent"] == 1
    assert [(h.seq, p) for h, p in r.full.data] == [(0, good)]
    assert read_channel(r.cache, "engine") == decode_all(sch, good)
    # rejected/<channel>.rej: (u32 length, i64 recv_ns, bytes) per rejected datagram
    raw = (tmp_path / "cache" / "rejected" / "engine.rej").read_bytes()
    kept, pos = [], 0
    while pos < len(raw):
        n = int.from_bytes(raw[pos : pos + 4], "little")
        recv_ns = int.from_bytes(raw[pos + 4 : pos + 12], "little", signed=True)
        assert abs(recv_ns - time.time_ns()) < 60 * 10**9
        kept.append(raw[pos + 12 : pos + 12 + n])
        pos += 12 + n
    assert kept == bad


@pytest.mark.parametrize("fixed_fast", [True, False])
def test_fixed_layout_counting(tmp_path, fixed_fast):
    """The compiled engine counts fixed-layout records without walking them: same verdicts."""
    r = Rig(Engine, tmp_path)
    try:
        r.engine._fixed_fast = fixed_fast
        ch = r.channel(DOUBLES, "doubles")
        r.start()
        sizes = [800, 0, 799, 801, 1600, 8000, 65000, 64800]
        r.send(
            ch.port, [bytes(range(256)) * (n // 256) + bytes(n % 256) for n in sizes], 1, chunk=1
        )
        r.stop()
        s = r.engine.stats()[1]
        assert s["datagrams"] == 4 and s["rejected"] == 4
        assert s["records"] == (800 + 1600 + 8000 + 64800) // 800
        assert len(read_channel(r.cache, "doubles")) == s["records"]
    finally:
        r.close()


def test_shared_port(rig, tmp_path):
    r = rig(rejected_dir=tmp_path / "rej")
    eng, pwr = schema("engine"), schema("power")
    e = r.channel(eng, "engine", cid=1)
    r.channel(pwr, "power", cid=2, port=False)
    shared = r.bind()
    r.engine.set_shared_socket(shared)
    port = shared.getsockname()[1]
    r.start()
    e_recs = [engine_record(i) for i in range(4)]
    p_recs = [{"time": i, "voltage": 1.0 * i, "current": 0.5, "noise": 0.25} for i in range(3)]
    good = [
        single_object(eng, e_recs[:2]),
        single_object(pwr, p_recs),
        single_object(eng, e_recs[2:]),
    ]
    bad = [
        b"",
        encode(eng, e_recs[:1]),  # no marker
        single_object(eng, e_recs[:1]) + single_object(pwr, p_recs[:1]),  # two fingerprints
        single_object(eng, e_recs[:1], fingerprint=b"\x01" * 8),  # unknown fingerprint
        single_object(eng, e_recs[:1])[:-1],  # truncated record
        single_object(eng, e_recs[:1]) + b"\xc3",  # trailing byte
    ]
    for d in good + bad:
        r.sender.send(port, d)
    wait_for(lambda: sum(r.processed(c) for c in (0, 1, 2)) >= len(good + bad))
    r.full.collect_until(lambda s: len(s.data) >= 3)
    r.stop()
    st = r.engine.stats()
    assert st[0]["rejected"] == len(bad) and st[0]["datagrams"] == 0
    assert (st[1]["datagrams"], st[1]["records"]) == (2, 4)
    assert (st[2]["datagrams"], st[2]["records"]) == (1, 3)
    # markers stripped: multicast and cache carry plain records
    payloads = {(h.channel_id, h.seq): pl for h, pl in r.full.data}
    assert payloads == {
        (1, 0): encode(eng, e_recs[:2]),
        (2, 0): encode(pwr, p_recs),
        (1, 1): encode(eng, e_recs[2:]),
    }
    assert read_channel(r.cache, "engine") == decode_all(eng, encode(eng, e_recs))
    assert read_channel(r.cache, "power") == decode_all(pwr, encode(pwr, p_recs))
    # counted while stripped: each block's source-time range, as a channel port's would be
    for name, sch, recs, cid in (("engine", eng, e_recs, 1), ("power", pwr, p_recs, 2)):
        idx = np.concatenate([np.fromfile(s.idx, IDX_DTYPE) for s in list_segments(r.cache, name)])
        times = [rec["time"] * sch.time_scale for rec in recs]
        assert (idx["t_min"].min(), idx["t_max"].max()) == (min(times), max(times))
        assert idx["n_records"].sum() == len(recs) and st[cid]["t_newest"] == max(times)
    assert (tmp_path / "rej" / "shared.rej").stat().st_size == sum(12 + len(b) for b in bad)
    assert e.port != port


def test_kernel_drops_counted(rig):
    r = rig(cache=False)
    sch = DOUBLES
    ch = r.channel(sch, "doubles", rcvbuf=64 * 1024)
    payload = bytes(8000)
    for _ in range(300):  # the engine is not running yet: the small buffer overflows
        r.sender.send(ch.port, payload)
    r.start()
    wait_for(lambda: r.processed(1) > 0)
    time.sleep(0.2)
    r.sender.send(ch.port, payload)  # the next datagram carries the cumulative drop count
    # a stats read may fall between a pass's receive and its send: wait for both
    s = wait_for(
        lambda: (
            (st := r.stats(1))["kernel_drops"] > 0
            and st["datagrams"] + st["kernel_drops"] >= 301
            and st["multicast_sent"] == st["datagrams"]
            and st
        )
    )
    assert s["datagrams"] + s["kernel_drops"] == 301


def test_control_while_running(rig):
    r = rig()
    sch = schema("power")
    a = r.channel(sch, "a", cid=1)
    r.start()
    b = r.channel(sch, "b", cid=2)  # added while run() executes
    rec = [{"time": 5, "voltage": 1.0, "current": 2.0, "noise": 0.5}]
    r.send(b.port, [encode(sch, rec)], 2)
    r.send(a.port, [encode(sch, rec)], 1)
    assert len(r.engine.open_segments()) == 2
    r.engine.rotate(1)
    assert {p.parent.name for p in r.engine.open_segments()} == {"b"}
    r.engine.remove_channel(2)
    assert 2 not in r.engine.stats() and r.engine.open_segments() == set()
    with pytest.raises(KeyError):
        r.engine.remove_channel(2)
    r.stop()
    assert len(read_channel(r.cache, "a")) == len(read_channel(r.cache, "b")) == 1


# -- cache files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "use_map,huge_map", [(True, False), (True, True), (False, False)],
    ids=["map", "map-2MiB-folios", "pwritev"],
)
def test_byte_identical_with_segment_writer(tmp_path, use_map, huge_map):
    """Same datagrams, blocks and sync marker: the compiled writer's files are byte for
    byte those of ``cache.SegmentWriter``, whether blocks are copied into the populated
    segment map (on 4 KiB pages, the default, or 2 MiB folios) or written with pwritev
    (the engine uses both: pwritev until the populate thread is ahead)."""
    r = Rig(Engine, tmp_path, segment_size=16 * 1024)
    sch = schema("engine")
    try:
        r.engine._sync = bytes(range(16))
        r.engine._use_map = use_map
        r.engine._huge_map = huge_map
        ch = r.channel(sch, "engine", cid=4)
        r.start()
        records = [engine_record(i) for i in range(900)]
        datagrams = [encode(sch, records[i : i + 1 + i % 7]) for i in range(0, 900, 9)]
        r.send(ch.port, datagrams, 4, chunk=8)
        r.stop()
    finally:
        r.close()
    blocks = r.engine.stats()[4]["blocks"]
    if use_map:
        assert 0 < r.engine._map_blocks <= blocks
    else:
        assert r.engine._map_blocks == 0
    segs = list_segments(r.cache, "engine")
    assert len(segs) >= 2  # rotation by size happened
    k = 0
    for seg in segs:
        idx = np.fromfile(seg.idx, dtype=IDX_DTYPE)
        recv = np.fromfile(seg.recv, dtype=RECV_DTYPE)
        ref_dir = tmp_path / "ref" / seg.avro.stem
        w = SegmentWriter(
            ref_dir,
            sch,
            "engine",
            4,
            16 * 1024,
            t_open_ns=segment_time_ns(seg),
            sync=bytes(range(16)),
        )
        j = 0
        for entry in idx:
            n = int(entry["n_datagrams"])
            block = datagrams[k : k + n]
            times = [rec["time"] for d in block for rec in decode_all(sch, d)]
            w.append(
                block,
                recv["recv_ns"][j : j + n].tolist(),
                list(range(k, k + n)),
                [len(decode_all(sch, d)) for d in block],
                min(times),
                max(times),
            )
            k += n
            j += n
        ref = w.close()
        assert ref.avro.name == seg.avro.name
        for mine, theirs in zip(seg.files(), ref.files(), strict=True):
            assert mine.read_bytes() == theirs.read_bytes(), mine.name
    assert k == len(datagrams)


KILL_SCRIPT = textwrap.dedent(
    """
    import socket, sys, threading
    from pathlib import Path
    from speeddata.config import ChannelConfig, MulticastConfig
    from speeddata.schema import Schema
    engine_cls = sys.argv[1]
    if engine_cls == "compiled":
        from speeddata._relay import Engine
    else:
        from speeddata.relay_ref import PyEngine as Engine
    mc = MulticastConfig("127.0.0.1", 1, True, (sys.argv[3], int(sys.argv[4])),
                         (sys.argv[3], int(sys.argv[4])), 1.0)
    eng = Engine(Path(sys.argv[2]), mc, segment_size=32 * 1024)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    eng.add_channel(ChannelConfig("engine", sock.getsockname()[1], Schema(sys.argv[5]), 1), sock)
    print(sock.getsockname()[1], flush=True)
    eng.run()
    """
)


@pytest.mark.parametrize("engine_id", [p.id for p in ENGINES])
def test_kill_9_then_recover(tmp_path, engine_id):
    """SIGKILL mid-stream: recover_segment makes every segment read cleanly, and what
    is there is exactly the records sent, in order, from the first one on."""
    sch = schema("engine")
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILL_SCRIPT,
            engine_id,
            str(cache),
            random_group(),
            str(free_udp_port()),
            str(SCHEMAS / "engine.avsc"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())
        records = [engine_record(i) for i in range(4000)]
        sender = Sender()
        deadline = time.monotonic() + 20
        for i in range(0, 4000, 4):
            sender.send(port, encode(sch, records[i : i + 4]))
            if i % 200 == 0:
                time.sleep(0.002)
            if i == 2000:  # mid-stream: wait until blocks are on disk, keep sending
                wait_for(
                    lambda: (
                        len(list(cache.glob("engine/*.idx"))) >= 2 and time.monotonic() < deadline
                    )
                )
            if i == 3000:
                os.kill(proc.pid, signal.SIGKILL)
        sender.close()
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    validator = Validator(sch)
    segs = list_segments(cache, "engine")
    assert len(segs) >= 2
    for seg in segs:
        recover_segment(seg, validator)
    stored, _, recv = read_segments(cache, "engine")
    assert len(stored) > 1000
    assert stored == decode_all(sch, encode(sch, records[: len(stored)]))
    assert recv["seq"].tolist() == list(range(len(recv)))


# -- disk full -------------------------------------------------------------------------


@pytest.fixture
def tmpfs_2m(tmpfs):
    return tmpfs("2M")


@pytest.mark.parametrize("engine_cls", ENGINES)
def test_disk_full(tmpfs_2m, tmp_path, engine_cls):
    """ENOSPC at pre-allocation (and on .idx/.recv appends): counted as store_failed,
    multicast goes on, storing resumes once space is back, the cache reads cleanly."""
    cache = tmpfs_2m / "cache"
    r = Rig(engine_cls, tmp_path, segment_size=512 * 1024)
    r.engine.close()
    r.engine = engine_cls(cache, r.mc, segment_size=512 * 1024)
    r.cache = cache
    sch = DOUBLES
    try:
        ch = r.channel(sch, "doubles")
        r.start()
        sent = 0
        payload = bytes(8000)
        for _ in range(400):  # 2 MiB fill up after ~4 segments; bounded either way
            r.send(ch.port, [payload] * 8, 1, chunk=8)
            sent += 8
            if r.stats(1)["store_failed"]:
                break
        s = r.stats(1)
        assert s["store_failed"] > 0, "the file system never filled up"
        assert s["store_errno"] == errno.ENOSPC  # what the relay logs and the status shows
        assert s["multicast_sent"] == sent
        # free space: a stored segment goes away, storing resumes within about a second
        stored_before = s["stored_records"]
        victim = list_segments(cache, "doubles")[0]
        assert victim.avro not in r.engine.open_segments()
        victim_n = len(read_channel_segment(victim))
        for f in victim.files():
            f.unlink()
        deadline = time.monotonic() + 5
        while r.stats(1)["stored_records"] == stored_before and time.monotonic() < deadline:
            r.send(ch.port, [payload], 1)
            sent += 1
            time.sleep(0.05)
        assert r.stats(1)["stored_records"] > stored_before
        r.stop()
        s = r.engine.stats()[1]
    finally:
        r.close()
    assert s["datagrams"] == s["multicast_sent"] == sent
    assert s["stored_records"] + s["store_failed"] * 10 == sent * 10
    assert read_all_cleanly(cache) == s["stored_records"] - victim_n


def read_channel_segment(seg) -> list:
    with open(seg.avro, "rb") as f:
        return list(fastavro.reader(f))


@pytest.mark.parametrize("connect", [True, False], ids=["connected", "addressed"])
@pytest.mark.parametrize("gso", [True, False])
def test_gso_on_off_same_multicast(tmp_path, monkeypatch, gso, connect):
    """UDP GSO (runs of one size in one send, the last possibly shorter; the decimated
    group's datagrams too) changes nothing a subscriber sees: same datagrams, same order,
    same headers, decimation included. Likewise send sockets that could not be connected
    to their group (the engine then sends with the group's address)."""
    calls = []
    real_connect = _relay._connect

    def fake_connect(sock, group):
        calls.append(real_connect(sock, group) if connect else False)
        return calls[-1]

    monkeypatch.setattr(_relay, "_connect", fake_connect)
    r = Rig(Engine, tmp_path, cache=False)
    assert calls == [connect, connect]  # one send socket per group
    try:
        r.engine._gso = gso
        ch = r.channel(DOUBLES, "doubles", decimation=4)
        datagrams = [i.to_bytes(8, "little") * 100 for i in range(150)]
        datagrams += [bytes(1600)] * 3 + [bytes(800), bytes(range(200)) * 4]
        # shorter ends of runs, a longer one after a run, sizes that repeat every 4th
        # (the decimated group's runs)
        sizes = [3, 2, 1, 1, 3, 3, 1, 2, 2, 2, 3, 1, 1, 1, 1, 2] * 4
        datagrams += [bytes([k]) * 800 * n for k, n in enumerate(sizes)]
        n_dec = (len(datagrams) + 3) // 4
        for d in datagrams:  # queued before the engine runs: its batches hold long runs
            r.sender.send(ch.port, d)
        r.start()
        r.full.collect_until(lambda s: len(s.data) >= len(datagrams))
        r.dec.collect_until(lambda s: len(s.data) >= n_dec)
        time.sleep(0.05)
        r.full.poll()
        r.dec.poll()
        r.stop()
        assert [(h.seq, h.n_records, p) for h, p in r.full.data] == [
            (i, len(d) // 800, d) for i, d in enumerate(datagrams)
        ]
        assert [(h.seq, h.n_records, p) for h, p in r.dec.data] == [
            (i, len(d) // 800, d) for i, d in enumerate(datagrams) if i % 4 == 0
        ]
        s = r.engine.stats()[1]
        assert s["multicast_sent"] == len(datagrams) and s["multicast_decimated"] == n_dec
        assert s["multicast_errors"] == 0
    finally:
        r.close()


# -- coalescing (relay.coalesce, docs/relay-internals.md) ------------------------------


def _power_datagrams(sch: Schema, n: int) -> list[bytes]:
    """``n`` one-record datagrams of the power channel."""
    return [
        encode(sch, [{"time": i, "voltage": 1.0, "current": 2.0, "noise": 0.5}])
        for i in range(n)
    ]


def _send_spaced(r, port: int, datagrams: list[bytes], spacing: float) -> None:
    """One datagram every ``spacing`` seconds (a steady source), bounded by the list."""
    t0 = time.monotonic()
    for i, d in enumerate(datagrams):
        pause = t0 + i * spacing - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        r.sender.send(port, d)


@pytest.mark.parametrize("coalesce", [0.03, 0.0])
def test_coalescing_takes_many_datagrams_per_pass(rig, coalesce):
    """A steady stream faster than two datagrams per coalescing time is taken in few
    passes, each of many datagrams; every datagram is still stored and multicast, in
    order. Without coalescing no pass waits."""
    sch = schema("power")
    datagrams = _power_datagrams(sch, 300)
    r = rig(coalesce=coalesce)
    ch = r.channel(sch, "power", cid=2)
    r.start()
    _send_spaced(r, ch.port, datagrams, 0.001)
    wait_for(lambda: r.processed(2) >= len(datagrams))
    r.full.collect_until(lambda s: len(s.data) >= len(datagrams))
    r.stop()
    assert [p for _, p in r.full.data] == datagrams
    assert [h.seq for h, _ in r.full.data] == list(range(len(datagrams)))
    stored, _, _ = read_segments(r.cache, "power")
    assert len(stored) == len(datagrams)
    wakeups, coalesced = r.engine.wakeups, r.engine.coalesced
    if coalesce:
        # ~35 passes while the moving average learns the rate, then ~30 datagrams a pass
        assert coalesced > 0 and wakeups < 150, (wakeups, coalesced)
    else:
        assert coalesced == 0 and wakeups > 0


def test_coalescing_never_holds_a_slow_stream(rig):
    """Datagrams further apart than half the coalescing time are never waited for."""
    sch = schema("power")
    datagrams = _power_datagrams(sch, 15)
    r = rig(coalesce=0.02)
    ch = r.channel(sch, "power", cid=2)
    r.start()
    _send_spaced(r, ch.port, datagrams, 0.05)
    wait_for(lambda: r.processed(2) >= len(datagrams))
    r.stop()
    assert r.engine.coalesced == 0 and 0 < r.engine.wakeups <= len(datagrams)


def test_coalesce_out_of_range(rig):
    r = rig()
    with pytest.raises(ValueError, match="coalesce"):
        rig.engine_cls(None, r.multicast, coalesce=2.0)


def _thread_nice(tid: int) -> int:
    return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(os.geteuid() != 0, reason="a raised priority is lowered back: root")
def test_priority_while_behind(rig):
    """The loop takes ``_boost_nice`` (relay.nice) when a pass finds a full batch waiting
    and gives it back after 16 short passes in a row. (A lower priority than the
    thread's stands in for relay.nice here: the mechanism is the same.)"""
    sch = schema("power")
    datagrams = _power_datagrams(sch, 600)
    r = rig(batch=64)
    ch = r.channel(sch, "power", cid=2)
    for d in datagrams[:300]:  # a backlog before the loop starts: full batches
        r.sender.send(ch.port, d)
    r.engine._boost_nice = 7
    r.start()
    wait_for(lambda: r.processed(2) >= 300)
    tid = r.thread.native_id
    assert r.engine.boosts == 1
    _send_spaced(r, ch.port, datagrams[300:340], 0.005)  # short passes
    wait_for(lambda: r.processed(2) >= 340)
    wait_for(lambda: _thread_nice(tid) == 0)
    r.stop()
    assert r.engine.boosts == 1 and r.engine.wakeups >= 16 + 300 // 64
