"""Disk full (issue 10): the cache on a small tmpfs, filled while a tag pins its first
segments. Each engine, and two ways for space to come back (the tmpfs remounted bigger,
or unpinned segments deleted):

- the relay stays up and answers; every datagram sent while the disk is full is counted
  as not stored (``store_failed``) and still multicast (a subscriber on 127.0.0.1 gets
  every one, in sequence);
- the log says what happened: the storing failure with its errno, then that storing
  works again;
- when space returns, storing resumes (within the engine's one-second retry) and every
  record sent after that is stored;
- the tagged data reads the same as before, and its files are byte for byte unchanged;
- at the end every segment file reads in fastavro, and holds exactly the records the
  relay counted as stored (less those of the segments the test deleted), each a sent
  record, in order.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from conftest import SCHEMAS
from relay_helpers import ENGINE_NAMES, Subscriber, encode, engine_record
from speeddata import wire
from speeddata.cache import list_segments
from speeddata.reader import read
from speeddata.schema import Schema
from speeddata.tags import add_tag

from .faultlib import TALLY, read_fastavro, relay_config, scaled, wait_for

PER_DATAGRAM = 20  # records (about 900 bytes)
CHUNK = 50  # datagrams sent before waiting for the relay to take them
T0 = time.time_ns() - 3600 * 1_000_000_000  # source time of record 0; 1 ms apart


def file_hashes(folder) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


class Feed:
    """Datagrams of PER_DATAGRAM records with consecutive counters, sent in chunks, each
    chunk waited for (taken by the relay: accepted), while a subscriber keeps up."""

    def __init__(self, relay, subscriber: Subscriber):
        self.relay = relay
        self.sub = subscriber
        self.schema = Schema(SCHEMAS / "engine.avsc")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.port = relay.info["ports"]["engine"]
        self.n = 0  # datagrams sent

    def datagram(self, i: int) -> bytes:
        first = i * PER_DATAGRAM
        return encode(
            self.schema, [engine_record(first + k, t0=T0) for k in range(PER_DATAGRAM)]
        )

    def send(self, n: int, until=None, max_seconds: float = 30.0) -> dict:
        """Send ``n`` datagrams (or until ``until(counters)`` holds); the last counters."""
        deadline = time.monotonic() + max_seconds
        sent = 0
        while sent < n:
            for _ in range(min(CHUNK, n - sent)):
                self.sock.sendto(self.datagram(self.n), ("127.0.0.1", self.port))
                self.n += 1
                sent += 1
            c = wait_for(
                lambda: (c := self.relay.counters("engine"))["datagrams"] >= self.n and c
            )
            self.sub.poll(0)
            if until is not None and until(c):
                return c
            assert time.monotonic() < deadline, f"{sent} datagrams in {max_seconds} s: {c}"
        return self.relay.counters("engine")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("free_by", ["remount", "delete"])
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_disk_full_with_pinned_tag(engine, free_by, relays, tmpfs, tmp_path, ipc_dir):
    mnt = tmpfs("4m")
    cache = mnt / "cache"
    info = relay_config(tmp_path / "relay.toml", ipc_dir, cache, segment_size="256 KiB")
    relay = relays(info, engine).start()
    sub = Subscriber(*info["full"])
    feed = Feed(relay, sub)
    try:
        # 1. about 1 MB stored, the segments closed, a tag pins them
        c = feed.send(1200)
        assert c["store_failed"] == 0
        assert relay.request({"cmd": "rotate"})["ok"]
        n_tagged = feed.n * PER_DATAGRAM
        tag = add_tag(cache, "pinned", T0, T0 + n_tagged * 1_000_000, ["engine"])
        assert tag.n_segments >= 3
        tag_dir = cache / "tags" / "pinned" / "engine"
        tag_files = file_hashes(tag_dir)
        tag_read = read(cache, "engine", tag="pinned")["counter"].tolist()
        assert tag_read == list(range(n_tagged))

        # 2. fill the file system: storing fails, the relay stays up
        c = feed.send(scaled(20_000, 40_000), until=lambda c: c["store_failed"] > 0)
        assert c["store_failed"] > 0, "the disk never filled"
        TALLY["disk_full_fills"] += 1
        wait_for(lambda: "cannot store datagrams: ENOSPC" in relay.log_text(), timeout=10)

        # 3. while full: every datagram multicast, none stored
        seq0 = relay.counters("engine")["datagrams"]  # seq of the next datagram
        full_n = scaled(300, 3000)
        before = relay.counters("engine")
        c = feed.send(full_n)
        assert c["store_failed"] - before["store_failed"] == full_n
        assert c["stored_records"] == before["stored_records"]
        assert relay.alive()

        def got_all(s) -> bool:
            seqs = {h.seq for h, _ in s.data if h.kind == wire.KIND_DATA}
            return seqs >= set(range(seq0, seq0 + full_n))

        sub.collect_until(got_all, timeout=10)
        TALLY["disk_full_datagrams_multicast_while_full"] += full_n

        # 4. space returns: storing resumes, and then every datagram is stored
        deleted_records = 0
        if free_by == "remount":
            tmpfs.resize(mnt, "64m")
        else:  # the two oldest segments that no tag pins and no engine writes
            unpinned = [
                s for s in list_segments(cache, "engine") if os.stat(s.avro).st_nlink == 1
            ][:2]
            assert len(unpinned) == 2
            for seg in unpinned:
                deleted_records += len(read_fastavro(seg.avro))
                for p in (seg.avro, seg.idx, seg.recv):
                    p.unlink()
        c = feed.send(10_000, until=lambda c: c["stored_records"] > before["stored_records"],
                      max_seconds=15)
        assert c["stored_records"] > before["stored_records"], "storing did not resume"
        wait_for(lambda: "storing again" in relay.log_text(), timeout=10)
        last = scaled(100, 1000) if free_by == "remount" else 100
        first_last = feed.n
        before = relay.counters("engine")
        c = feed.send(last)
        assert c["store_failed"] == before["store_failed"]
        assert c["stored_records"] - before["stored_records"] == last * PER_DATAGRAM

        # 5. the tag is intact
        assert file_hashes(tag_dir) == tag_files
        assert read(cache, "engine", tag="pinned")["counter"].tolist() == tag_read
        status = relay.status()
        assert relay.alive()
    finally:
        feed.close()
        sub.close()
    assert relay.stop() == 0

    # 6. every file reads; it holds what was counted as stored, each a sent record
    records = []
    files = [s.avro for s in list_segments(cache, "engine")]
    for path in files:
        records += read_fastavro(path)
    stored = relay.channel("engine", status)["counters"]["stored_records"]
    assert len(records) == stored - deleted_records
    counters = [r["counter"] for r in records]
    assert counters == sorted(set(counters))
    assert all(r == engine_record(r["counter"], t0=T0) for r in records)
    assert counters[-last * PER_DATAGRAM:] == list(
        range(first_last * PER_DATAGRAM, feed.n * PER_DATAGRAM)
    )
    assert counters[:n_tagged] == list(range(n_tagged))
    TALLY["disk_full_runs"] += 1
    TALLY["disk_full_datagrams_sent"] += feed.n
    TALLY["disk_full_store_failed"] += relay.channel("engine", status)["counters"]["store_failed"]
    TALLY["disk_full_files_fastavro"] += len(files)
