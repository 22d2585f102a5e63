"""``--workers N``: drain rate of two channels with one and with two engines, same run.

R1-style (docs/performance.md, "Relay"): for each run, N pre-encoded datagrams per channel
wait in two 256 MiB socket buffers (one per channel port) while no engine runs, so the
sender's cost never overlaps the measurement; then the compiled engines drain them
(validation, cache on, multicast of every datagram to the full-rate group and of every
10th to the decimated group, one subscriber joined to both):

w1    one engine serving both channels (``--workers 1``), in one thread;
w2    two engines, one channel each, in two threads (``--workers 2``: what the relay
      process does, each engine's loop releasing the GIL);
bare  the bare recvmmsg loop (``_relay.bare_drain``, counting only) over the same two
      sockets: one thread draining both one after the other, and two threads at once.

Ratios: w2 / w1 (what the second worker buys), w1 / bare 1 thread, w2 / bare 2 threads.
Arms: 800 B datagrams (one 800 B record each) and 8000 B datagrams (ten 800 B records,
the size of a jumbo-frame datagram). Runs alternate w1, w2, bare, ...; best of
``repeat``. On a 2-core machine two workers have no core left for the kernel's other
work (softirq delivery to the subscriber, writeback of the cache): that is measured too.

Run as root (it raises net.core.rmem_max for the run, as bench_relay does). Network rule:
127.0.0.1 and multicast on interface 127.0.0.1, TTL 1; every send is bounded by count.

    .venv/bin/python benchmarks/bench_workers.py [--quick] [--repeat 3]
    .venv/bin/python -m pytest benchmarks/bench_workers.py -s
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_relay", Path(__file__).with_name("bench_relay.py")
)
br = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_relay", br)
_spec.loader.exec_module(br)

from speeddata._relay import Engine, bare_drain  # noqa: E402
from speeddata.config import ChannelConfig  # noqa: E402

DECIMATION = br.DECIMATION


def make_arms(scale: float = 1.0) -> list:
    """(800 B, 8000 B) datagrams of the 100-double schema; ``n`` per channel."""
    rec800 = br.make_arms()[0]
    d100 = rec800.schema
    jumbo = [b"".join(rec800.datagrams[(i + j) % 64] for j in range(10)) for i in range(64)]
    return [
        br.Arm("800 B", d100, rec800.datagrams, max(200, int(100_000 * scale))),
        br.Arm("8000 B", d100, jumbo, max(200, int(15_000 * scale))),
    ]


def run_engines(arm, workers: int) -> float:
    """Datagrams/s for two channels of ``arm.n`` datagrams each, drained by ``workers``
    engines (1: one engine with both channels; 2: one engine per channel)."""
    mc = br.groups()
    tmp = Path(tempfile.mkdtemp(prefix="sd-bench-w-"))
    try:
        with br.receiver() as s1, br.receiver() as s2, br.subscriber(mc) as sub:
            engines = [Engine(tmp, mc) for _ in range(workers)]
            socks = (s1, s2)
            for i, sock in enumerate(socks):
                ch = ChannelConfig(f"ch{i + 1}", sock.getsockname()[1], arm.schema, i + 1,
                                   DECIMATION)
                engines[i % workers].add_channel(ch, sock)
            for sock in socks:
                br.fill(sock, arm)
            for e in engines:
                e._stop_after = 2 * arm.n // workers
            threads = [threading.Thread(target=e.run) for e in engines]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            dt = time.perf_counter() - t0
            stats = {}
            for e in engines:
                e.close()
                stats.update(e.stats())
            bare_drain(sub)
        for cid in (1, 2):
            s = stats[cid]
            assert s["datagrams"] == arm.n and s["kernel_drops"] == 0, s
            assert s["multicast_sent"] == arm.n and s["rejected"] == 0, s
            assert s["stored_records"] == arm.records(arm.n), s
        return 2 * arm.n / dt
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_bare(arm, threads: int) -> float:
    """Datagrams/s of the bare loop over two filled sockets: one thread draining both in
    turn, or two threads at once."""
    with br.receiver() as s1, br.receiver() as s2:
        for sock in (s1, s2):
            br.fill(sock, arm)
        counts = [0, 0]

        def drain(i, sock):
            counts[i], _ = bare_drain(sock, batch=br.BATCH)

        t0 = time.perf_counter()
        if threads == 1:
            drain(0, s1)
            drain(1, s2)
        else:
            ts = [threading.Thread(target=drain, args=(i, s)) for i, s in enumerate((s1, s2))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        dt = time.perf_counter() - t0
    assert counts == [arm.n, arm.n], counts
    return 2 * arm.n / dt


def run_all(scale: float = 1.0, repeat: int = 3) -> list[dict]:
    rows = []
    with br.big_socket_buffers():
        for arm in make_arms(scale):
            r = {"w1": [], "w2": [], "bare1": [], "bare2": []}
            for _ in range(repeat):
                r["w1"].append(run_engines(arm, 1))
                r["w2"].append(run_engines(arm, 2))
                r["bare1"].append(run_bare(arm, 1))
                r["bare2"].append(run_bare(arm, 2))
            best = {k: max(v) for k, v in r.items()}
            rows.append(
                dict(
                    best,
                    arm=arm.name,
                    n=arm.n,
                    bytes=arm.mean_bytes,
                    scaling=best["w2"] / best["w1"],
                    bare_scaling=best["bare2"] / best["bare1"],
                    r1_w1=best["w1"] / best["bare1"],
                    r1_w2=best["w2"] / best["bare2"],
                )
            )
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    print()
    print(f"{'arm':<8}{'N/ch':>8}{'w1/s':>11}{'w2/s':>11}{'w2/w1':>7}{'bare1/s':>11}"
          f"{'bare2/s':>11}{'b2/b1':>7}{'w1/b1':>7}{'w2/b2':>7}{'w1 Gbit/s':>10}"
          f"{'w2 Gbit/s':>10}")
    for r in rows:
        gbit = r["bytes"] * 8 / 1e9
        print(f"{r['arm']:<8}{r['n']:>8}{r['w1']:>11,.0f}{r['w2']:>11,.0f}{r['scaling']:>7.2f}"
              f"{r['bare1']:>11,.0f}{r['bare2']:>11,.0f}{r['bare_scaling']:>7.2f}"
              f"{r['r1_w1']:>7.2f}{r['r1_w2']:>7.2f}{r['w1'] * gbit:>10.2f}"
              f"{r['w2'] * gbit:>10.2f}")


def test_workers():
    """The benchmark under pytest (``-s`` shows the table); rates reported, not asserted
    (each run asserts its counts: every datagram relayed, stored, multicast)."""
    rows = run_all()
    assert all(r["w1"] > 0 and r["w2"] > 0 for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tenth of the datagrams, 1 repeat")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    scale, repeat = (0.1, 1) if args.quick else (1.0, args.repeat)
    run_all(scale, repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
