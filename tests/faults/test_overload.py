"""Overload (issue 10): a blast above capacity at a relay whose receive buffers are small,
so that the kernel drops datagrams. Right after the sender stops, with no further
datagram, every datagram sent is accounted for, exactly:

    sent = accepted (cached) + rejected + kernel drops

over the channel port and the shared port together, three times in a row on the same
relay (the counters are cumulative), each engine. A round in which the kernel dropped
packets before any socket (its backlog, /proc/net/softnet_stat: nobody's count, and
machine wide) is not counted and is blasted again, at most three times. The kernel drops
must be exact at the status read itself: counted from SO_RXQ_OVFL alone, the drops after
the last datagram received would show up only with the next datagram, which never comes
(issue 10, item 6).
Then the relay stops and fastavro reads every record it counted as stored.
"""

from __future__ import annotations

import socket
import time

import pytest

from conftest import SCHEMAS
from relay_helpers import ENGINE_NAMES, encode, engine_record, single_object
from speeddata.schema import Schema

from .faultlib import TALLY, read_fastavro, relay_config, scaled

ROUNDS = scaled(3, 10)
BLAST = scaled(40_000, 200_000)  # datagrams per round at most ...
BLAST_SECONDS = scaled(4.0, 15.0)  # ... and seconds at most


def softnet_drops() -> int:
    """Packets dropped by the kernel before any socket (backlog full, /proc/net/softnet_stat
    column 2): such a loss is nobody's count, and is reported when the sums differ."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f if line.strip())


def totals(status: dict) -> dict:
    ch = status["channels"][0]["counters"]
    sh = status["shared"]["counters"]
    return {
        "accepted": ch["datagrams"],
        "rejected": ch["rejected"] + sh["rejected"],
        "kernel_drops": ch["kernel_drops"] + sh["kernel_drops"],
        "records": ch["records"],
        "stored_records": ch["stored_records"],
        "store_failed": ch["store_failed"],
    }


def accounted(t: dict) -> int:
    return t["accepted"] + t["rejected"] + t["kernel_drops"]


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_overload_every_datagram_accounted_for(engine, relays, tmp_path, ipc_dir):
    info = relay_config(
        tmp_path / "relay.toml", ipc_dir, tmp_path / "cache", rcvbuf="16 KiB", shared=True,
        segment_size="1 MiB",
    )
    relay = relays(info, engine).start()
    schema = Schema(SCHEMAS / "engine.avsc")
    # a pool of datagrams: per channel port 1-20 records, 1 in 16 truncated (rejected);
    # on the shared port single-object encodings, 1 in 16 with an unknown fingerprint
    pool = []
    for i in range(256):
        recs = [engine_record(i * 20 + k) for k in range(1 + i % 20)]
        if i % 2 == 0:
            data = encode(schema, recs)
            pool.append((info["ports"]["engine"], data[:-1] if i % 32 == 0 else data))
        else:
            fp = b"\x00" * 8 if i % 32 == 1 else None
            pool.append((info["shared_port"], single_object(schema, recs, fingerprint=fp)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sent = 0
    rounds = retries = 0
    try:
        while rounds < ROUNDS:
            before = totals(relay.status())
            softnet_before = softnet_drops()
            n, t0 = 0, time.monotonic()
            while n < BLAST and time.monotonic() - t0 < BLAST_SECONDS:
                for port, data in pool:  # 256 sends between two looks at the clock
                    sock.sendto(data, ("127.0.0.1", port))
                n += len(pool)
            sent += n
            # no further datagram: the relay drains its queues; the status must add up
            deadline = time.monotonic() + 10
            while accounted(t := totals(relay.status())) != sent:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            lost = softnet_drops() - softnet_before
            if 0 < sent - accounted(t) <= lost and retries < 3:
                # the kernel dropped packets before any socket (its backlog, machine
                # wide: /proc/net/softnet_stat), which no socket can count: this round
                # proves nothing either way; count from here and blast again
                retries += 1
                sent = accounted(t)
                continue
            assert accounted(t) == sent, (
                f"sent {sent}, accounted {accounted(t)}: {t}; "
                f"softnet (backlog) drops meanwhile: {lost}"
            )
            assert t["kernel_drops"] > before["kernel_drops"], f"no overload: {t}"
            assert t["rejected"] > before["rejected"]
            rounds += 1
            TALLY["overload_rounds"] += 1
            TALLY["overload_datagrams_sent"] += n
            TALLY["overload_kernel_drops"] += t["kernel_drops"] - before["kernel_drops"]
            TALLY["overload_rejected"] += t["rejected"] - before["rejected"]
        TALLY["overload_rounds_redone_for_backlog_drops"] += retries
    finally:
        sock.close()
    # cached: every record of an accepted datagram is in the files, and reads back
    assert t["store_failed"] == 0 and t["stored_records"] == t["records"]
    assert relay.stop() == 0
    files = sorted((info["cache"] / "engine").glob("*.avro"))
    assert sum(len(read_fastavro(f)) for f in files) == t["records"]
    TALLY["overload_files_fastavro"] += len(files)
