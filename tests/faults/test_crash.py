"""Crash (issue 10): ``kill -9`` of the relay process at random moments under load, five
times (25 in ``make fuzz``), each engine. After each restart (which recovers the segments
the kill left open):

- every segment file reads to its end in fastavro, in the Apache ``avro`` package for
  Python and in Apache Avro Java (DataFileReader, Debian's libavro-java), and the three
  agree on the records;
- every stored record is one the sender sent, byte for byte as fastavro reads it, in the
  order sent, and a run's stored records are the first ones of that run with none missing
  (the load stays far below capacity, so the kernel drops nothing), at least as many as
  the relay had counted as stored (``stored_records``: blocks complete in the segment)
  just before the kill;
- what earlier rounds stored is still there, unchanged.

The kill moments are random: under load a kill lands inside a receive batch, a block
write, a rotation (segments of 64 KiB fill several times a second) or the
populate thread's work on the segment map.
"""

from __future__ import annotations

import socket
import time

import fastavro
import pytest

from conftest import SCHEMAS
from relay_helpers import ENGINE_NAMES, encode, engine_record
from speeddata.cache import list_segments
from speeddata.schema import Schema

from .faultlib import (
    TALLY,
    BoundedSender,
    read_apache_python,
    read_fastavro,
    relay_config,
    rng,
    scaled,
    wait_for,
)

KILLS = scaled(5, 25)
PER_DATAGRAM = 4  # records


def check_cache(cache, java_reader) -> tuple[list[dict], int]:
    """Read every segment file with the three readers -> (every record, oldest first;
    the number of files)."""
    records = []
    files = [seg.avro for seg in list_segments(cache, "engine")]
    for path in files:
        fa = read_fastavro(path)
        ap = read_apache_python(path)
        n, first, last = java_reader.read(path)
        counters = [r["counter"] for r in fa]
        assert [r["counter"] for r in ap] == counters, f"avro (Python) differs on {path}"
        assert ap == fa, f"avro (Python) differs from fastavro on {path}"
        assert n == len(fa), f"Avro Java reads {n} records in {path}, fastavro {len(fa)}"
        if fa:
            assert (first, last) == (counters[0], counters[-1]), path
        records += fa
    return records, len(files)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_kill9_under_load(engine, relays, tmp_path, ipc_dir, java_reader):
    r = rng(f"crash-{engine}")
    info = relay_config(
        tmp_path / "relay.toml", ipc_dir, tmp_path / "cache", segment_size="64 KiB"
    )
    relay = relays(info, engine).start()
    schema = Schema(SCHEMAS / "engine.avsc")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    runs: list[tuple[int, int, int]] = []  # (first counter, records sent, stored acked)
    stored_before: list[int] = []  # per earlier run: records found after its restart
    next_counter = 0
    try:
        for _ in range(KILLS):
            start = next_counter

            def make(i, start=start):
                first = start + i * PER_DATAGRAM
                return encode(schema, [engine_record(first + k) for k in range(PER_DATAGRAM)])

            sender = BoundedSender(
                sock, info["ports"]["engine"], make, rate=r.uniform(500, 2000),
                max_datagrams=20_000, max_seconds=scaled(8.0, 20.0),
            )
            sender.start()
            try:
                # under load: the relay has stored some of this run; then a random moment
                wait_for(lambda: relay.counters("engine")["stored_records"] > 0, timeout=10)
                time.sleep(r.uniform(0.0, scaled(0.8, 3.0)))
                acked = relay.counters("engine")["stored_records"]
                relay.kill9()
            finally:
                n_sent = sender.stop()
            runs.append((start, n_sent * PER_DATAGRAM, acked))
            next_counter = start + n_sent * PER_DATAGRAM
            recovered_before = relay.log_text().count("recovered ")
            relay.start()  # recovers what the kill left open, before it answers
            assert relay.log_text().count("recovered ") > recovered_before, "nothing recovered"

            records, n_files = check_cache(info["cache"], java_reader)
            for reader in ("fastavro", "avro_python", "avro_java"):
                TALLY[f"crash_files_{reader}"] += n_files
            TALLY["crash_records_read"] += len(records)
            counters = [rec["counter"] for rec in records]
            assert counters == sorted(set(counters)), "records out of order or repeated"
            for rec in records:
                assert rec == engine_record(rec["counter"]), "a record that was not sent"
            for i, (first, n_run, acked_run) in enumerate(runs):
                got = [c for c in counters if first <= c < first + n_run]
                assert got == list(range(first, first + len(got))), f"run {i}: records missing"
                assert len(got) >= acked_run, (
                    f"run {i}: {len(got)} records after recovery, {acked_run} counted as "
                    "stored before the kill"
                )
                if i < len(stored_before):
                    assert len(got) == stored_before[i], f"run {i} changed after a later kill"
            stored_before.append(len([c for c in counters if c >= start]))
            TALLY["crash_kills"] += 1
            TALLY["crash_datagrams_sent"] += n_sent
    finally:
        sock.close()
    assert relay.stop() == 0
    TALLY["crash_records_stored"] += len(counters)


def test_the_readers_catch_a_broken_segment(tmp_path, java_reader):
    """The oracle can fail: a segment left pre-allocated (zeros after its last block) or
    cut inside its last block is refused by at least one of the three readers, or they
    disagree, and check_cache fails on it."""
    schema = Schema(SCHEMAS / "engine.avsc")
    good = tmp_path / "good.avro"
    with open(good, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(schema.avsc), map(engine_record, range(10)))
    data = good.read_bytes()
    folder = tmp_path / "cache" / "engine"
    folder.mkdir(parents=True)
    seg = folder / "20261206T000000.000000000Z.avro"
    seg.write_bytes(data)
    records, _ = check_cache(tmp_path / "cache", java_reader)
    assert [r["counter"] for r in records] == list(range(10))
    for broken in (data + bytes(4096), data[:-5]):
        seg.write_bytes(broken)
        with pytest.raises(Exception):  # noqa: B017 - any reader's error, or a mismatch
            check_cache(tmp_path / "cache", java_reader)
    seg.write_bytes(data + bytes(4096))  # untrimmed: Java refuses it
    with pytest.raises(AssertionError, match="Apache Avro Java cannot read"):
        java_reader.read(seg)
    seg.write_bytes(data[:-5])  # cut in the last block: Java reads fewer records
    assert java_reader.read(seg)[0] < 10
