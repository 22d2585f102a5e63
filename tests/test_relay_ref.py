"""The relay engines end to end with real sockets and files (docs/relay-internals.md).

Every test runs on the pure-Python ``PyEngine`` and, when it is built, on the compiled
``speeddata._relay.Engine``: same traffic, same files, same multicast, same counters.
fastavro is the oracle for the cache, ``speeddata.wire`` decodes the multicast side.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import threading
import time

import fastavro
import numpy as np
import pytest

from conftest import SCHEMAS
from relay_helpers import (
    LOOPBACK,
    Harness,
    Sender,
    Subscriber,
    encode,
    engine_record,
    harness_factory,
    read_all_cleanly,
    read_channel,
    single_object,
    status_record,
    two_groups,
    vibration_record,
    wait_for,
)
from speeddata import relay_ref, wire
from speeddata._relay import Engine as CompiledEngine
from speeddata.cache import list_segments
from speeddata.config import ChannelConfig, MulticastConfig
from speeddata.relay_ref import COUNTERS, PyEngine
from speeddata.schema import Schema

ENGINES = [pytest.param(PyEngine, id="python"), pytest.param(CompiledEngine, id="compiled")]


def _schema(name: str) -> Schema:
    return Schema(SCHEMAS / f"{name}.avsc")


@pytest.fixture(params=ENGINES)
def make(request, tmp_path):
    yield from harness_factory(Harness, request.param, tmp_path)


def _records_in(payload: bytes, schema: Schema) -> list[dict]:
    """Decode records back to back (fastavro has no iterator over schemaless records)."""
    buf = io.BytesIO(payload)
    parsed = fastavro.parse_schema(schema.avsc)
    out = []
    while buf.tell() < len(payload):
        out.append(fastavro.schemaless_reader(buf, parsed))
    return out


def _check_segment_files(cache_dir, channel: str) -> tuple[list, np.ndarray, np.ndarray]:
    """Every segment reads with fastavro and agrees with its .idx and .recv files."""
    all_recv, all_idx, records = [], [], []
    for seg in list_segments(cache_dir, channel):
        with open(seg.avro, "rb") as f:
            seg_records = list(fastavro.reader(f))
        records.extend(seg_records)
        idx, recv = seg.read_index(), seg.read_recv()
        assert int(idx["n_records"].sum()) == len(seg_records)
        assert int(idx["n_datagrams"].sum()) == len(recv)
        assert int(recv["n_records"].sum()) == len(seg_records)
        assert seg.avro.stat().st_size == int(idx["offset"][-1] + idx["size"][-1])
        # consecutive blocks, the first right after the header
        assert int(idx["offset"][0]) == seg.header_size()
        assert np.all(idx["offset"][1:] == idx["offset"][:-1] + idx["size"][:-1])
        # seq_first of each block is the seq of its first datagram
        firsts = np.concatenate([[0], np.cumsum(idx["n_datagrams"])[:-1]]).astype(int)
        assert np.all(idx["seq_first"] == recv["seq"][firsts])
        all_idx.append(idx)
        all_recv.append(recv)
    return records, np.concatenate(all_idx), np.concatenate(all_recv)


# -- end to end ------------------------------------------------------------------------


def test_end_to_end_cache_and_multicast(make):
    h = make()
    ch = h.channel("engine", decimation=3)
    h.start()
    # 40 datagrams of 1..4 records each
    sent_records, datagrams = [], []
    i = 0
    for k in range(40):
        recs = [engine_record(i + j) for j in range(1 + k % 4)]
        i += len(recs)
        sent_records.extend(recs)
        datagrams.append(encode(ch.schema, recs))
    h.send_paced(ch.port, datagrams, ch.id)
    h.full.collect_until(lambda s: len(s.data) >= 40 and s.announces)
    h.decimated.collect_until(lambda s: len(s.data) >= 14 and s.announces)
    h.stop()  # counters are final once run() returned
    stats = h.engine.stats()[ch.id]

    assert set(stats) == set(COUNTERS)
    assert stats["datagrams"] == 40
    assert stats["records"] == len(sent_records)
    assert stats["bytes"] == sum(map(len, datagrams))
    assert stats["rejected"] == 0
    assert stats["kernel_drops"] == 0
    assert stats["multicast_sent"] == 40
    assert stats["multicast_decimated"] == 14  # seq 0, 3, ..., 39
    assert stats["multicast_errors"] == 0
    assert stats["stored_records"] == len(sent_records)
    assert stats["store_failed"] == 0
    assert stats["segments"] == 1
    assert stats["t_newest"] == sent_records[-1]["time"]

    # multicast: header fields and payload exactly as received
    assert [hd.seq for hd, _ in h.full.data] == list(range(40))
    for (hd, payload), d in zip(h.full.data, datagrams, strict=True):
        assert hd.magic == wire.MAGIC and hd.version == 1 and hd.header_len == 32
        assert hd.kind == wire.KIND_DATA and hd.channel_id == ch.id
        assert payload == d
        assert hd.n_records == len(_records_in(payload, ch.schema))
    assert [hd.seq for hd, _ in h.decimated.data] == list(range(0, 40, 3))
    assert [p for _, p in h.decimated.data] == datagrams[::3]
    # announces on both groups
    for sub in (h.full, h.decimated):
        hd, ann = sub.announces[0]
        assert hd.channel_id == ch.id and hd.n_records == 0
        assert ann["name"] == "engine" and ann["id"] == ch.id and ann["decimation"] == 3
        assert ann["schema"] == ch.schema.avsc
        assert ann["fingerprint"] == ch.schema.fingerprint_hex
        assert ann["time"] == "time" and ann["time_scale"] == 1
    assert [hd.seq for hd, _ in h.full.announces] == list(range(len(h.full.announces)))

    # cache: fastavro reads exactly what was sent; index and receive times agree
    records, idx, recv = _check_segment_files(h.cache, "engine")
    assert records == sent_records
    assert stats["blocks"] == len(idx)
    assert list(recv["seq"]) == list(range(40))
    assert list(recv["n_records"]) == [1 + k % 4 for k in range(40)]
    # receive times are kernel timestamps of this run, in order
    now = time.time_ns()
    assert np.all(np.diff(recv["recv_ns"]) >= 0)
    assert now - 60e9 < recv["recv_ns"][0] <= now
    # block time ranges are the source times (timestamp-nanos: scale 1)
    times = np.array([r["time"] for r in sent_records])
    starts = np.concatenate([[0], np.cumsum(idx["n_records"])[:-1]]).astype(int)
    for e, s in zip(idx, starts, strict=True):
        block_times = times[s : s + int(e["n_records"])]
        assert (e["t_min"], e["t_max"]) == (block_times.min(), block_times.max())
    # the multicast receive times are the stored ones
    assert [hd.recv_ns for hd, _ in h.full.data] == list(recv["recv_ns"])


def test_no_time_field_uses_receive_time(make):
    h = make()
    ch = h.channel("fixed", name="vibration")
    h.start()
    datagrams = [encode(ch.schema, [vibration_record(i), vibration_record(i + 1)]) for i in (0, 2)]
    h.send_paced(ch.port, datagrams, ch.id)
    h.stop()  # counters are final once run() returned
    stats = h.engine.stats()[ch.id]
    records, idx, recv = _check_segment_files(h.cache, "vibration")
    assert len(records) == 4
    starts = np.concatenate([[0], np.cumsum(idx["n_datagrams"])[:-1]]).astype(int)
    for e, s in zip(idx, starts, strict=True):
        block_recv = recv["recv_ns"][s : s + int(e["n_datagrams"])]
        assert (e["t_min"], e["t_max"]) == (block_recv.min(), block_recv.max())
    assert stats["t_newest"] == int(recv["recv_ns"].max())


def test_time_scale_millis(make, tmp_path):
    avsc = {
        "type": "record",
        "name": "slow",
        "fields": [
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "v", "type": "double"},
        ],
    }
    h = make()
    schema = Schema(avsc)
    sock = h.bind()
    ch = ChannelConfig("slow", sock.getsockname()[1], schema, 5, 1, schema.time_field)
    h.engine.add_channel(ch, sock)
    h.start()
    h.send_paced(ch.port, [encode(schema, [{"t": 1_700_000_000_123, "v": 1.0}])], 5)
    h.stop()  # counters are final once run() returned
    stats = h.engine.stats()[5]
    idx = list_segments(h.cache, "slow")[0].read_index()
    assert int(idx["t_min"][0]) == 1_700_000_000_123 * 1_000_000
    assert stats["t_newest"] == 1_700_000_000_123 * 1_000_000


def test_cache_off_still_multicasts(make):
    h = make(cache=False)
    ch = h.channel("engine")
    h.start()
    h.send_paced(ch.port, [encode(ch.schema, [engine_record(i)]) for i in range(5)], ch.id)
    h.full.collect_until(lambda s: len(s.data) >= 5)
    stats = h.engine.stats()[ch.id]
    assert h.engine.open_segments() == set()
    assert stats["datagrams"] == 5 and stats["multicast_sent"] == 5
    assert stats["stored_records"] == stats["segments"] == stats["store_failed"] == 0


# -- rotation --------------------------------------------------------------------------


def test_rotation_by_size(make):
    h = make(segment_size=64 * 1024, batch=8)
    ch = h.channel("status")
    h.start()
    sent = [status_record(i, message_len=900) for i in range(300)]
    datagrams = [encode(ch.schema, sent[i : i + 3]) for i in range(0, 300, 3)]
    h.send_paced(ch.port, datagrams, ch.id, chunk=8)
    h.stop()  # counters are final once run() returned
    stats = h.engine.stats()[ch.id]
    segments = list_segments(h.cache, "status")
    assert len(segments) == stats["segments"] >= 4  # ~280 KB of records in 64 KiB segments
    for seg in segments:
        assert seg.avro.stat().st_size <= 64 * 1024
    records, idx, recv = _check_segment_files(h.cache, "status")
    assert records == sent
    assert list(recv["seq"]) == list(range(100))
    assert stats["blocks"] == len(idx) and stats["store_failed"] == 0


def test_datagram_larger_than_a_segment(make):
    h = make(segment_size=64 * 1024)
    ch = h.channel("status")
    h.start()
    # two datagrams of ~60 KB: they cannot share a 64 KiB segment
    sent = [status_record(i, message_len=30_000) for i in range(4)]
    datagrams = [encode(ch.schema, sent[:2]), encode(ch.schema, sent[2:])]
    h.send_paced(ch.port, datagrams, ch.id, chunk=1)
    h.stop()
    records, idx, _ = _check_segment_files(h.cache, "status")
    assert records == sent
    assert len(list_segments(h.cache, "status")) == 2


def test_rotate_and_age(make):
    h = make(segment_age=0.5)
    ch = h.channel("engine")
    h.start()
    h.send_paced(ch.port, [encode(ch.schema, [engine_record(0)])], ch.id)
    first = wait_for(h.engine.open_segments)
    assert len(first) == 1
    h.engine.rotate(ch.id)
    assert h.engine.open_segments() == set()
    # closed by rotate(): trimmed, readable
    assert len(read_channel(h.cache, "engine")) == 1
    h.send_paced(ch.port, [encode(ch.schema, [engine_record(1)])], ch.id)
    second = wait_for(h.engine.open_segments)
    assert second != first
    # the age limit closes the idle segment without any new datagram
    wait_for(lambda: not h.engine.open_segments(), timeout=5)
    h.send_paced(ch.port, [encode(ch.schema, [engine_record(2)])], ch.id)
    wait_for(h.engine.open_segments)
    wait_for(lambda: h.counter(ch.id, "segments") == 3)  # stats() may lag a little
    h.stop()
    assert [r["counter"] for r in read_channel(h.cache, "engine")] == [0, 1, 2]


def test_add_remove_while_running(make):
    h = make()
    engine_ch = h.channel("engine")
    h.start()
    power_ch = h.channel("power", cid=2)  # added while run() executes
    p = power_ch.schema
    power = [{"time": i, "voltage": 1.0 * i, "current": 2.0, "noise": 0.5} for i in range(6)]
    h.send_paced(power_ch.port, [encode(p, power[:3]), encode(p, power[3:])], 2)
    h.send_paced(engine_ch.port, [encode(engine_ch.schema, [engine_record(0)])], 1)
    assert len(h.engine.open_segments()) == 2
    h.engine.remove_channel(2)
    assert 2 not in h.engine.stats()
    assert len(h.engine.open_segments()) == 1
    assert read_channel(h.cache, "power") == power  # trimmed on removal
    with pytest.raises(KeyError):
        h.engine.remove_channel(2)
    h.stop()
    assert len(read_channel(h.cache, "engine")) == 1


# -- bad input -------------------------------------------------------------------------


def test_malformed_datagrams_counted_and_kept_out(make, tmp_path):
    h = make(rejected_dir=tmp_path / "rejected")
    ch = h.channel("engine")
    h.start()
    good = encode(ch.schema, [engine_record(0), engine_record(1)])
    wrong_schema = encode(_schema("status"), [status_record(0)])
    as_int = dict(
        ch.schema.avsc,
        fields=[
            dict(f, type="int") if f["name"] == "state" else f for f in ch.schema.avsc["fields"]
        ],
    )
    bad_enum = encode(Schema(as_int), [dict(engine_record(0), state=7)])
    noise = np.random.default_rng(7).integers(0, 256, 65507, dtype=np.uint8).tobytes()
    bad = [
        good[:-3],  # truncated
        good + b"\x00",  # trailing byte
        wrong_schema,
        b"",  # empty
        noise,  # 64 KiB of noise
        bad_enum,  # enum index 7 of 3 symbols
    ]
    h.send_paced(ch.port, bad + [good], ch.id, chunk=1)
    h.full.collect_until(lambda s: len(s.data) >= 1)
    h.full.poll(0.2)
    h.stop()  # counters are final once run() returned
    stats = h.engine.stats()[ch.id]
    assert stats["rejected"] == len(bad)
    assert stats["datagrams"] == 1 and stats["records"] == 2
    assert [p for _, p in h.full.data] == [good]
    assert h.full.data[0][0].seq == 0  # rejected datagrams take no sequence number
    records, _, _ = _check_segment_files(h.cache, "engine")
    assert records == [engine_record(0), engine_record(1)]
    # rejected datagrams kept: u32 length, i64 recv_ns, the bytes (docs/cache.md)
    raw = (tmp_path / "rejected" / "engine.rej").read_bytes()
    kept, pos = [], 0
    while pos < len(raw):
        n = int.from_bytes(raw[pos : pos + 4], "little")
        kept.append(raw[pos + 12 : pos + 12 + n])
        pos += 12 + n
    assert kept == bad


def test_shared_port_routing(make, tmp_path):
    h = make(rejected_dir=tmp_path / "rejected")
    engine_ch = h.channel("engine", cid=1)
    status_ch = h.channel("status", cid=2, with_port=False)  # reachable by fingerprint only
    port = h.shared()
    h.start()
    e, s = engine_ch.schema, status_ch.schema
    eng = [engine_record(i) for i in range(4)]
    sta = [status_record(i) for i in range(3)]
    good = [single_object(e, eng[:2]), single_object(s, sta), single_object(e, eng[2:])]
    bad = [
        single_object(e, eng[:1]) + single_object(s, sta[:1]),  # two fingerprints
        single_object(e, eng[:1], fingerprint=b"\x01" * 8),  # unknown fingerprint
        encode(e, eng[:1]),  # no framing
        single_object(e, eng[:1])[:-2],  # truncated record
        single_object(e, eng[:1]) + b"\xc3\x01",  # trailing partial marker
        b"",
        b"\xc3\x01" + e.fingerprint,  # marker without a record
    ]
    for d in good + bad:
        h.sender.send(port, d)
    wait_for(lambda: h.processed(0) + h.processed(1) + h.processed(2) >= len(good + bad))
    h.full.collect_until(lambda s: len(s.data) >= 3)
    h.stop()  # counters are final once run() returned
    stats = h.engine.stats()
    assert stats[0]["rejected"] == len(bad)
    assert stats[0]["datagrams"] == 0
    assert stats[1]["datagrams"] == 2 and stats[1]["records"] == 4 and stats[1]["rejected"] == 0
    assert stats[2]["datagrams"] == 1 and stats[2]["records"] == 3
    # stored and multicast as plain records, markers stripped
    assert stats[1]["bytes"] == len(encode(e, eng))
    assert read_channel(h.cache, "engine") == eng
    assert read_channel(h.cache, "status") == sta
    by_channel = {}
    for hd, payload in h.full.data:
        by_channel.setdefault(hd.channel_id, []).append((hd.seq, payload))
    assert by_channel[1] == [(0, encode(e, eng[:2])), (1, encode(e, eng[2:]))]
    assert by_channel[2] == [(0, encode(s, sta))]
    assert (tmp_path / "rejected" / "shared.rej").stat().st_size == sum(12 + len(b) for b in bad)


def test_kernel_drops_counted(make):
    h = make()
    ch = h.channel("engine", rcvbuf=4096)
    d = encode(ch.schema, [engine_record(0)] * 10)
    n_sent = 500
    for _ in range(n_sent):  # the engine is not running: the queue overflows
        h.sender.send(ch.port, d)
    h.start()
    wait_for(lambda: h.counter(ch.id, "datagrams") > 0)
    time.sleep(0.2)
    received = h.counter(ch.id, "datagrams")
    assert 0 < received < n_sent
    h.send_paced(ch.port, [d], ch.id)  # carries the drop count (SO_RXQ_OVFL)
    wait_for(lambda: h.counter(ch.id, "kernel_drops") == n_sent - received, timeout=3)


# -- disk full -------------------------------------------------------------------------


# The injection replaces the reference engine's SegmentWriter; the compiled engine's
# disk-full path is tested on a real tmpfs in test_engine.py.
@pytest.mark.parametrize("make", [ENGINES[0]], indirect=True)
def test_disk_full_injected(make, monkeypatch):
    real = relay_ref.SegmentWriter
    failing = {"on": True, "attempts": 0}

    def writer(*args, **kwargs):
        if failing["on"]:
            failing["attempts"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(relay_ref, "SegmentWriter", writer)
    h = make()
    ch = h.channel("engine")
    h.start()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 1.5:  # bounded: ~1.5 s of traffic while the disk is full
        h.send_paced(ch.port, [encode(ch.schema, [engine_record(n)])], ch.id)
        n += 1
        time.sleep(0.01)
    stats = h.engine.stats()[ch.id]
    assert stats["store_failed"] == n and stats["stored_records"] == 0
    assert stats["multicast_sent"] == n  # multicast goes on
    assert 1 <= failing["attempts"] <= 3  # at most one attempt a second
    failing["on"] = False
    time.sleep(1.1)
    h.send_paced(ch.port, [encode(ch.schema, [engine_record(n)])], ch.id)
    assert h.counter(ch.id, "stored_records") == 1
    h.stop()
    assert [r["counter"] for r in read_channel(h.cache, "engine")] == [n]


def test_disk_full_append_rolls_back(tmp_path, monkeypatch):
    """A write error in the middle of a block leaves the segment ending at a complete block."""
    from speeddata import cache

    schema = _schema("engine")
    w = cache.SegmentWriter(tmp_path / "engine", schema, "engine", 1, 64 * 1024)
    d = encode(schema, [engine_record(0)])
    w.append([d], [1], [0], [1], 0, 0)
    calls = {"n": 0}
    real = cache._write_all

    def flaky(f, data):
        calls["n"] += 1
        if calls["n"] == 2:  # the .idx write of the second block fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(cache, "_write_all", flaky)
    with pytest.raises(OSError):
        w.append([d], [2], [1], [1], 0, 0)
    monkeypatch.setattr(cache, "_write_all", real)
    w.append([encode(schema, [engine_record(2)])], [3], [2], [1], 0, 0)
    w.close()
    assert [r["counter"] for r in read_channel(tmp_path, "engine")] == [0, 2]
    assert list(w.segment.read_recv()["seq"]) == [0, 2]
    assert len(w.segment.read_index()) == 2


@pytest.fixture
def small_tmpfs(tmpfs):
    return tmpfs("1M")


def test_disk_full_real_tmpfs(small_tmpfs):
    """A real full file system: counted, multicast goes on, storing resumes when space
    returns, and every segment reads cleanly. Reference engine only: an engine bug here
    could end in SIGBUS, which would take the whole test session down."""
    filler = small_tmpfs / "filler"
    full, decimated = two_groups()
    mc = MulticastConfig(LOOPBACK, 1, True, full, decimated, 1.0)
    engine = PyEngine(small_tmpfs / "cache", mc, segment_size=128 * 1024)
    schema = _schema("status")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    ch = ChannelConfig("status", sock.getsockname()[1], schema, 1, 1, "time")
    engine.add_channel(ch, sock)
    sub = Subscriber(*full)
    sender = Sender()
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        # leave room for about two segments
        with open(filler, "wb") as f:
            f.write(b"\0" * (1024 * 1024 - 300 * 1024))

        def count(name):
            return engine.stats()[1][name]

        sent = 0
        for _ in range(200):  # bounded; ends as soon as storing fails
            d = encode(schema, [status_record(sent, message_len=4000)])
            before = count("datagrams")
            sender.send(ch.port, d)
            sent += 1
            wait_for(lambda b=before: count("datagrams") > b)
            if count("store_failed"):
                break
        assert count("store_failed") > 0, "the file system never filled up"
        stored_before = count("stored_records")
        assert count("multicast_sent") == sent
        filler.unlink()  # space comes back: storing resumes within about a second
        t0 = time.monotonic()
        while count("stored_records") == stored_before and time.monotonic() - t0 < 5:
            before = count("datagrams")
            sender.send(ch.port, encode(schema, [status_record(sent, message_len=100)]))
            sent += 1
            wait_for(lambda b=before: count("datagrams") > b)
            time.sleep(0.05)
        assert count("stored_records") > stored_before
        sub.collect_until(lambda s: len(s.data) >= sent)
        assert [hd.seq for hd, _ in sub.data] == list(range(sent))
    finally:
        engine.stop()
        thread.join(10)
        engine.close()
        sock.close()
        sub.close()
        sender.close()
    n = read_all_cleanly(small_tmpfs / "cache")
    assert n == engine.stats()[1]["stored_records"]
    assert n == sent - engine.stats()[1]["store_failed"]


# -- API contract ----------------------------------------------------------------------


def test_stop_before_run_and_close_idempotent(make):
    h = make()
    h.channel("engine")
    h.engine.stop()
    h.start()
    h.thread.join(5)
    assert not h.thread.is_alive()
    h.thread = None
    h.engine.close()
    h.closed = True
    h.engine.close()


def test_duplicate_channel_id_refused(make):
    h = make()
    h.channel("engine", cid=1)
    with pytest.raises(ValueError):
        h.channel("power", cid=1)
