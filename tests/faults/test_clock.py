"""Clock faults (issue 10): source times that go backwards or far into the future are
stored as sent, flagged in the status (``time_backwards``, ``time_future``: the rule is in
docs/relay-internals.md, "Source clocks"), and time-range reads still work.

Both engines (the compiled one and the pure-Python reference) against a plain-Python model
of the rule; then one relay process per engine shows the flags in ``speeddata relay
status``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import SCHEMAS
from relay_helpers import (
    ENGINE_NAMES,
    Harness,
    Sender,
    encode,
    engine_record,
    harness_factory,
    single_object,
)
from speeddata import _relay
from speeddata.reader import read
from speeddata.relay_ref import FUTURE_NS, PyEngine
from speeddata.schema import Schema

from .faultlib import TALLY, read_fastavro, relay_config, rng, scaled, wait_for

S = 1_000_000_000
MINUTE, HOUR, DAY, YEAR = 60 * S, 3600 * S, 86400 * S, 365 * 86400 * S
#: stay this far from the time_future threshold, so that the few ms between sending and
#: the kernel's receive time never decide a case
MARGIN = 2 * MINUTE


@pytest.fixture(params=["python", "compiled"])
def harness(request, tmp_path):
    engine_cls = PyEngine if request.param == "python" else _relay.Engine
    yield from harness_factory(Harness, engine_cls, tmp_path)


def fixed_steps(now: int) -> list[list[int]]:
    """Datagrams of source times (ns) covering each kind of step once."""
    return [
        [now - 10 * S, now - 9 * S],  # normal
        [now - 8 * S],
        [now - 60 * S],  # backwards by 52 s
        [now - 7 * S],  # forwards again (after a step back)
        [now + DAY],  # far future
        [now - 6 * S],  # back from the future
        [now + 5 * MINUTE],  # ahead, below the threshold: not future
        [now - 5 * S, now + 30 * DAY],  # future inside a datagram; its min goes back
        [now + 100 * YEAR],  # year ~2126
        [0],  # the epoch
        [-5 * YEAR, now - 4 * S],  # before 1970, in one datagram with a normal one
        [now - 4 * S],  # equal to the previous maximum: not backwards
        [now - 3 * S, now - 3 * S, now - 2 * S],
    ]


def random_steps(r, now: int, n: int) -> list[list[int]]:
    """``n`` datagrams of 1-5 source times: mostly forwards, with steps back (1 ms to a
    year), jumps ahead (20 min to 100 years) and small leads (under 5 min)."""
    out, t = [], now - HOUR
    for _ in range(n):
        times = []
        for _ in range(r.randint(1, 5)):
            kind = r.random()
            if kind < 0.7:
                t += r.randint(0, 10 * 1_000_000)
                times.append(t)
            elif kind < 0.85:
                times.append(t - r.randint(1_000_000, YEAR))
            elif kind < 0.95:
                times.append(now + r.randint(FUTURE_NS + MARGIN, 100 * YEAR))
            else:
                times.append(now + r.randint(0, FUTURE_NS - MARGIN))
        out.append(times)
    return out


def model(datagrams: list[list[int]], now: int) -> tuple[int, int]:
    """The rule: a datagram goes back when its smallest source time is before the largest
    of the previous datagram; it is in the future when its largest is more than FUTURE_NS
    ahead of its receive time (about ``now``: the steps keep MARGIN away from that)."""
    back = future = 0
    last = None
    for times in datagrams:
        lo, hi = min(times), max(times)
        if last is not None and lo < last:
            back += 1
        if hi > now + FUTURE_NS:
            assert hi > now + FUTURE_NS + MARGIN // 2
            future += 1
        last = hi
    return back, future


def test_clock_steps_are_stored_flagged_and_readable(harness, tmp_path):
    r = rng("clock")
    h = harness()
    ch = h.channel("engine")
    shared_port = h.shared()
    h.start()
    now = time.time_ns()
    rounds = scaled(1, 5)
    datagrams = fixed_steps(now)
    for _ in range(rounds):
        datagrams += random_steps(r, now, scaled(200, 2000))
    schema = Schema(SCHEMAS / "engine.avsc")
    sent, payloads = [], []
    for i, times in enumerate(datagrams):
        recs = [dict(engine_record(len(sent) + k), time=t) for k, t in enumerate(times)]
        sent += recs
        # a third of the datagrams (runs of 8) through the shared port, in single-object
        # encoding: the engines read their times on another path
        if i // 8 % 3 == 2:
            payloads.append((shared_port, single_object(schema, recs)))
        else:
            payloads.append((ch.port, encode(schema, recs)))
    # paced, so that the kernel drops nothing, and taken in the order sent: two sockets
    # have no order between them, so each run on one port is waited for before the next
    i = 0
    while i < len(payloads):
        port = payloads[i][0]
        j = i
        while j < len(payloads) and j - i < 16 and payloads[j][0] == port:
            h.sender.send(port, payloads[j][1])
            j += 1
        wait_for(lambda n=j: h.processed(ch.id) >= n)
        i = j
    stats = h.engine.stats()[ch.id]
    back, future = model(datagrams, now)
    assert back > 0 and future > 0
    assert (stats["time_backwards"], stats["time_future"]) == (back, future)
    assert stats["datagrams"] == len(payloads) and stats["rejected"] == 0
    assert h.engine.stats()[0]["rejected"] == 0  # the shared port's
    assert stats["t_newest"] == max(max(t) for t in datagrams)
    h.stop()  # closes (trims) the segment

    # stored as sent: every record, in order, byte for byte what fastavro reads back
    stored = []
    for avro in sorted((h.cache / "engine").glob("*.avro")):
        stored += read_fastavro(avro)
    assert [s["counter"] for s in stored] == [s["counter"] for s in sent]
    assert [s["time"] for s in stored] == [s["time"] for s in sent]

    # time-range reads: exactly the records whose source time is in [start, end), in
    # the order they were stored, whichever way the clock went
    times = np.array([s["time"] for s in sent], np.int64)
    counters = np.array([s["counter"] for s in sent], np.int64)
    edges = sorted({int(t) for t in times})
    ranges = [(None, None), (now - 9 * S, now), (now, now + 200 * YEAR), (-10 * YEAR, 1)]
    for _ in range(scaled(30, 300)):
        a, b = sorted(r.sample(edges, 2))
        ranges.append((a, b if r.random() < 0.5 else b + 1))
    for a, b in ranges:
        cols = read(h.cache, "engine", a, b, decoder=r.choice(["compiled", "python"]))
        keep = np.ones(len(times), bool)
        if a is not None:
            keep &= times >= a
        if b is not None:
            keep &= times < b
        assert cols["counter"].tolist() == counters[keep].tolist(), (a, b)
        assert cols["time"].tolist() == times[keep].tolist(), (a, b)
    TALLY["clock_datagrams"] += len(payloads)
    TALLY["clock_time_backwards"] += back
    TALLY["clock_time_future"] += future
    TALLY["clock_range_reads"] += len(ranges)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_clock_flags_in_relay_status(engine, relays, tmp_path, ipc_dir):
    info = relay_config(tmp_path / "relay.toml", ipc_dir, tmp_path / "cache")
    relay = relays(info, engine).start()
    schema = Schema(SCHEMAS / "engine.avsc")
    now = time.time_ns()
    sender = Sender()
    try:
        for i, t in enumerate([now - 2 * S, now - HOUR, now + DAY, now - S]):
            sender.send(info["ports"]["engine"], encode(schema, [engine_record(i, t0=t)]))
    finally:
        sender.close()
    c = wait_for(lambda: (c := relay.counters("engine"))["datagrams"] == 4 and c)
    assert (c["time_backwards"], c["time_future"]) == (2, 1)  # -1 h, then back from +1 day
    status = subprocess.run(
        [sys.executable, "-m", "speeddata.relay", "status", "--control", info["control"]],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert FUTURE_NS == 10 * MINUTE  # what the status text says
    line = "clock engine: 2 datagram(s) back in time, 1 over 10 min ahead (stored as sent)"
    assert line in status.splitlines()
    raw = subprocess.run(
        [sys.executable, "-m", "speeddata.relay", "status", "--control", info["control"],
         "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    counters = json.loads(raw)["channels"][0]["counters"]
    assert (counters["time_backwards"], counters["time_future"]) == (2, 1)
    assert relay.stop() == 0

