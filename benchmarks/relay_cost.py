"""The relay's cost at steady rates, against a bare forwarder run in the same script.

Part of ``bench_relay`` (docs/performance.md, "Relay cost at steady rates"). A paced
sender (``_relay.blast``) sends datagrams of 811 or 92 bytes (one record each: a
``time`` long and a ``bytes`` payload) to one channel port on 127.0.0.1 for a few seconds;
meanwhile either

- the relay runs as the real process (``python -m speeddata.relay -c FILE``) on its
  default configuration (only ports, groups and the cache folder set), or
- the bare forwarder (``_relay.bare_forward``: poll, recvmmsg, sendmmsg to the full-rate
  group; no cache, no validation, no timestamps, no GSO) runs in a thread here, at
  normal priority (the relay's loop takes ``relay.nice`` only while it is behind).

C   CPU per datagram: the relay process's CPU time (every thread, from
    /proc/PID/task/*/schedstat, in ns) over the paced window, divided by the datagrams
    sent, and the same for the forwarder's thread. Ratio = relay / forwarder.
L   lossless rates, stepping the paced rate up until a run loses:
    "end to end": every datagram stored and received by a subscriber on this host with a
    4 MiB SO_RCVBUF joined to the full-rate group (subscriber drops from SO_MEMINFO);
    "stored": the relay on its default configuration (its default receive buffer), no
    subscriber; kernel drops counted by the relay. The forwarder's steps have the same
    rule (its socket's drops, the subscriber's drops); its receive buffer is 8 MiB, the
    relay's default before issue 13 (an operator's usual choice).
    A step is lossless when 3 of 3 runs are.
T   the latency the relay adds: p99 of (subscriber kernel receive time of the multicast
    datagram - relay kernel receive time, from the wire header) at 1k/s.

Network rule: everything goes to 127.0.0.1 and to multicast groups on interface
127.0.0.1 with TTL 1; every send loop is bounded by count and time.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speeddata import wire
from speeddata._relay import bare_drain, bare_forward, blast
from speeddata.control import request, wait_for_relay

LOOPBACK = "127.0.0.1"
SO_MEMINFO = 55
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SK_MEMINFO_DROPS = 8
SUBSCRIBER_RCVBUF = 4 << 20
FORWARDER_RCVBUF = 8 << 20
SCHEMA = {
    "type": "record",
    "name": "cost",
    "fields": [
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
        {"name": "payload", "type": "bytes"},
    ],
}
T0 = 1_700_000_000_000_000_000


def fine_timer_slack() -> None:
    """prctl(2) PR_SET_TIMERSLACK 1 us for the calling thread: the paced sender's sleeps
    end on time (the default slack, 50 us, is the spacing of 20k/s)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)


def zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def datagrams(size: int, n: int = 64) -> list[bytes]:
    """``n`` one-record datagrams of exactly ``size`` bytes, times 1 ms apart."""
    out = []
    for i in range(n):
        head = zigzag(T0 + i * 1_000_000)
        k = size - len(head) - 1
        while len(head) + len(zigzag(k)) + k != size:
            k -= 1
        out.append(head + zigzag(k) + bytes([i]) * k)
    assert all(len(d) == size for d in out)
    return out


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def random_group() -> str:
    return f"239.255.{random.randint(0, 255)}.{random.randint(1, 254)}"


def meminfo_drops(sock: socket.socket) -> int:
    """The socket's drop count (socket(7) SO_MEMINFO, SK_MEMINFO_DROPS)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 16)
    return struct.unpack(f"<{len(raw) // 4}I", raw)[SK_MEMINFO_DROPS]


def task_cpu_ns(pid: int, tid: int | None = None) -> int:
    """CPU time in ns of one thread, or of every thread of ``pid`` (schedstat field 1)."""
    base = Path(f"/proc/{pid}/task")
    tasks = [base / str(tid)] if tid is not None else list(base.iterdir())
    total = 0
    for t in tasks:
        try:
            total += int((t / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Subscriber:
    """A thread draining the full-rate group (C loop) with a 4 MiB receive buffer."""

    def __init__(self, group: tuple[str, int], idle: float = 2.0):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SUBSCRIBER_RCVBUF)
        s.bind((group[0], group[1]))
        s.setsockopt(
            socket.IPPROTO_IP,
            socket.IP_ADD_MEMBERSHIP,
            socket.inet_aton(group[0]) + socket.inet_aton(LOOPBACK),
        )
        self.sock = s
        self.idle = idle
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.count, _ = bare_drain(self.sock, batch=64, idle_timeout=self.idle)

    def start(self) -> Subscriber:
        self.thread.start()
        return self

    def finish(self) -> tuple[int, int]:
        """Wait until it has been idle; (datagrams received, drops)."""
        self.thread.join(60)
        drops = meminfo_drops(self.sock)
        self.sock.close()
        return self.count, drops


@dataclass
class Relay:
    """The relay process on a one-channel config in a fresh folder."""

    folder: Path
    extra: str = ""  # more [relay] keys, TOML

    def start(self) -> Relay:
        self.port = free_port()
        self.full = (random_group(), free_port())
        self.decimated = (random_group(), free_port())
        self.control = f"tcp://{LOOPBACK}:{free_port(socket.SOCK_STREAM)}"
        stats = f"tcp://{LOOPBACK}:{free_port(socket.SOCK_STREAM)}"
        (self.folder / "cost.avsc").write_text(json.dumps(SCHEMA))
        config = self.folder / "relay.toml"
        config.write_text(
            f'[cache]\ndir = "{self.folder / "cache"}"\n\n'
            f'[multicast]\ninterface = "{LOOPBACK}"\nttl = 1\n'
            f'full = "{self.full[0]}:{self.full[1]}"\n'
            f'decimated = "{self.decimated[0]}:{self.decimated[1]}"\n\n'
            f'[relay]\ncontrol = "{self.control}"\nstats = "{stats}"\nshared_port = 0\n'
            f"{self.extra}\n\n"
            f'[[channels]]\nname = "cost"\nport = {self.port}\nschema = "cost.avsc"\n'
            "decimation = 10\n"
        )
        self.log = open(self.folder / "relay.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "speeddata.relay", "-c", str(config)],
            stdout=self.log,
            stderr=self.log,
        )
        try:
            wait_for_relay(self.control, timeout=30)
        except Exception:
            self.stop()
            raise
        return self

    def counters(self) -> dict:
        status = request(self.control, {"cmd": "status"}, timeout=5)
        return next(c["counters"] for c in status["channels"] if c["name"] == "cost")

    def cpu_ns(self) -> int:
        return task_cpu_ns(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def stored_records(cache: Path) -> int:
    from speeddata.cache import IDX_DTYPE, list_segments

    return sum(
        int(np.fromfile(seg.idx, dtype=IDX_DTYPE)["n_records"].sum())
        for seg in list_segments(cache, "cost")
    )


def settle(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)


def run_relay(
    size: int, rate: float, seconds: float, subscriber: bool, extra: str = ""
) -> dict:
    """One paced run through the relay process; CPU per datagram and every loss count."""
    data = datagrams(size)
    n = max(1, int(rate * seconds))
    with tempfile.TemporaryDirectory(prefix="sd-cost-") as tmp:
        relay = Relay(Path(tmp), extra).start()
        sub = None
        try:
            if subscriber:
                sub = Subscriber(relay.full).start()
            time.sleep(0.3)  # the relay's threads settle after start
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                cpu0 = relay.cpu_ns()
                t0 = time.perf_counter()
                fine_timer_slack()
                sent = blast(
                    tx, (LOOPBACK, relay.port), data, n, rate=rate, duration=2 * seconds,
                    smooth=True,
                )
                # the relay's CPU until it has taken the last datagram in
                settle(lambda: sum(_taken(relay.counters())) >= sent)
                cpu = relay.cpu_ns() - cpu0
                dt = time.perf_counter() - t0
            c = relay.counters()
            rss = rss_bytes(relay.proc.pid)
        finally:
            relay.stop()
        got, sub_drops = sub.finish() if sub else (0, 0)
        stored = stored_records(Path(tmp) / "cache")
    taken, drops = _taken(c)
    return {
        "arm": "relay",
        "sent": sent,
        "rate": sent / dt,
        "cpu_ns": cpu,
        "ns_per_dgram": cpu / sent,
        "kernel_drops": drops,
        "stored": stored,
        "multicast_sent": c["multicast_sent"],
        "received": got,
        "sub_drops": sub_drops,
        "rss": rss,
        "stored_ok": stored == sent and drops == 0,
        "e2e_ok": stored == sent and drops == 0 and sub_drops == 0 and got >= sent,
    }


def _taken(c: dict) -> tuple[int, int]:
    return c["datagrams"] + c["rejected"], c["kernel_drops"]


def run_forwarder(
    size: int, rate: float, seconds: float, subscriber: bool, gso: bool = False
) -> dict:
    """The same paced run through the bare forwarder, in a thread of this process."""
    data = datagrams(size)
    n = max(1, int(rate * seconds))
    full = (random_group(), free_port())
    result = {}
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FORWARDER_RCVBUF)
        rx.bind((LOOPBACK, 0))
        out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sub = Subscriber(full).start() if subscriber else None

        def forward():
            result["tid"] = threading.get_native_id()
            result["count"] = bare_forward(rx, out, full, idle_timeout=1.0, gso=gso)

        thread = threading.Thread(target=forward)
        thread.start()
        settle(lambda: "tid" in result)
        time.sleep(0.3)
        cpu0 = task_cpu_ns(os.getpid(), result["tid"])
        t0 = time.perf_counter()
        fine_timer_slack()
        sent = blast(
            tx, rx.getsockname(), data, n, rate=rate, duration=2 * seconds, smooth=True
        )
        dt = time.perf_counter() - t0
        time.sleep(0.05)  # the last batches; the thread's /proc entry goes when it ends
        cpu = task_cpu_ns(os.getpid(), result["tid"]) - cpu0
        thread.join(60)
        drops = meminfo_drops(rx)
    got, sub_drops = sub.finish() if sub else (0, 0)
    count = result["count"]
    return {
        "arm": "forwarder",
        "sent": sent,
        "rate": sent / dt,
        "cpu_ns": cpu,
        "ns_per_dgram": cpu / sent,
        "kernel_drops": drops,
        "forwarded": count,
        "received": got,
        "sub_drops": sub_drops,
        "stored_ok": count == sent and drops == 0,
        "e2e_ok": count == sent and drops == 0 and sub_drops == 0 and got >= sent,
    }


def cost_table(seconds: float = 5.0, repeat: int = 2, rates=(1_000, 20_000, 100_000),
               sizes=(811, 92), extra: str = "", subscriber: bool = False) -> list[dict]:
    """C: CPU per datagram of relay, forwarder and forwarder with GSO at each rate and
    size (least of ``repeat``, alternated), and the ratios."""
    rows = []
    for size in sizes:
        for rate in rates:
            relay, fwd, gso = [], [], []
            for _ in range(repeat):
                relay.append(run_relay(size, rate, seconds, subscriber, extra=extra))
                fwd.append(run_forwarder(size, rate, seconds, subscriber))
                gso.append(run_forwarder(size, rate, seconds, subscriber, gso=True))
            r = min(relay, key=lambda x: x["ns_per_dgram"])
            f = min(fwd, key=lambda x: x["ns_per_dgram"])
            g = min(gso, key=lambda x: x["ns_per_dgram"])
            rows.append(
                {
                    "size": size,
                    "rate": rate,
                    "relay_us": r["ns_per_dgram"] / 1e3,
                    "forwarder_us": f["ns_per_dgram"] / 1e3,
                    "gso_us": g["ns_per_dgram"] / 1e3,
                    "ratio": r["ns_per_dgram"] / f["ns_per_dgram"],
                    "gso_ratio": r["ns_per_dgram"] / g["ns_per_dgram"],
                    "relay_core": r["cpu_ns"] / 1e9 / (r["sent"] / r["rate"]),
                    "relay_ok": all(x["e2e_ok" if subscriber else "stored_ok"] for x in relay),
                    "forwarder_ok": all(
                        x["e2e_ok" if subscriber else "stored_ok"] for x in fwd
                    ),
                    "rss_mb": r["rss"] / 2**20,
                }
            )
            print_cost_row(rows[-1], flush=True)
    return rows


def print_cost_header() -> None:
    print(
        f"{'bytes':>6}{'rate/s':>9}{'relay us':>10}{'fwd us':>9}{'ratio':>7}"
        f"{'fwd+GSO us':>11}{'ratio':>7}{'relay core':>11}{'RSS MB':>8}  lossless relay/fwd"
    )


def print_cost_row(r: dict, flush: bool = False) -> None:
    print(
        f"{r['size']:>6}{r['rate']:>9,}{r['relay_us']:>10.2f}{r['forwarder_us']:>9.2f}"
        f"{r['ratio']:>7.2f}{r['gso_us']:>11.2f}{r['gso_ratio']:>7.2f}"
        f"{r['relay_core']:>11.1%}{r['rss_mb']:>8.1f}  "
        f"{'yes' if r['relay_ok'] else 'LOSS'}/{'yes' if r['forwarder_ok'] else 'LOSS'}",
        flush=flush,
    )


def lossless_rate(run, ok: str, steps, runs: int = 3) -> float:
    """The highest of ``steps`` (ascending) where ``runs`` of ``runs`` runs are lossless
    by ``ok``; 0 when none is. ``run(rate)`` -> result dict.

    One run a step going up, until one loses; then the last lossless step gets the other
    ``runs - 1`` runs, stepping down while one of those loses."""
    passed = -1
    for i, rate in enumerate(steps):
        if not run(rate)[ok]:
            break
        passed = i
    while passed >= 0:
        if all(run(steps[passed])[ok] for _ in range(runs - 1)):
            return steps[passed]
        passed -= 1
    return 0.0


def latency(rate: float = 1000.0, seconds: float = 5.0, extra: str = "") -> dict:
    """T: p50/p99/max of (subscriber kernel receive time - relay kernel receive time)."""
    data = datagrams(811)
    n = int(rate * seconds)
    delays = []
    with tempfile.TemporaryDirectory(prefix="sd-lat-") as tmp:
        relay = Relay(Path(tmp), extra).start()
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SUBSCRIBER_RCVBUF)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.bind(relay.full)
            s.setsockopt(
                socket.IPPROTO_IP,
                socket.IP_ADD_MEMBERSHIP,
                socket.inet_aton(relay.full[0]) + socket.inet_aton(LOOPBACK),
            )
            s.settimeout(2.0)
            time.sleep(0.3)

            def send():
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                    fine_timer_slack()
                    blast(
                        tx, (LOOPBACK, relay.port), data, n, rate=rate,
                        duration=2 * seconds, smooth=True,
                    )

            sender = threading.Thread(target=send)
            sender.start()
            got = 0
            try:
                while got < n:
                    msg, anc, _flags, _addr = s.recvmsg(65536, 64)
                    h = wire.unpack_header(msg)
                    if h.kind != 0:
                        continue  # an announce
                    for level, kind, payload in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("<qq", payload[:16])
                            delays.append(sec * 1_000_000_000 + nsec - h.recv_ns)
                    got += 1
            except TimeoutError:
                pass
            sender.join()
            s.close()
        finally:
            relay.stop()
    d = np.array(delays, dtype=np.int64) / 1e3
    return {
        "n": int(d.size),
        "p50_us": float(np.percentile(d, 50)),
        "p99_us": float(np.percentile(d, 99)),
        "max_us": float(d.max()),
    }


STEPS = (25_000, 50_000, 75_000, 100_000, 125_000, 150_000, 175_000, 200_000, 250_000)


def lossless_table(seconds: float = 10.0, runs: int = 3, sizes=(811, 92), steps=STEPS,
                   extra: str = "") -> list[dict]:
    """L: lossless rates of relay and forwarder, end to end and stored only."""
    rows = []
    for size in sizes:
        row = {"size": size}
        for key, sub, ok in (("e2e", True, "e2e_ok"), ("stored", False, "stored_ok")):
            relay = lossless_rate(
                lambda r, s=sub, z=size: run_relay(z, r, seconds, s, extra=extra), ok, steps, runs
            )
            fwd = lossless_rate(
                lambda r, s=sub, z=size: run_forwarder(z, r, seconds, s), ok, steps, runs
            )
            row[f"{key}_relay"] = relay
            row[f"{key}_forwarder"] = fwd
            row[f"{key}_ratio"] = relay / fwd if fwd else float("nan")
        rows.append(row)
        print_lossless_row(row, flush=True)
    return rows


def print_lossless_header() -> None:
    print(
        f"{'bytes':>6}{'e2e relay':>11}{'e2e fwd':>9}{'ratio':>7}"
        f"{'stored relay':>14}{'stored fwd':>12}{'ratio':>7}"
    )


def print_lossless_row(r: dict, flush: bool = False) -> None:
    print(
        f"{r['size']:>6}{r['e2e_relay']:>11,.0f}{r['e2e_forwarder']:>9,.0f}"
        f"{r['e2e_ratio']:>7.2f}{r['stored_relay']:>14,.0f}{r['stored_forwarder']:>12,.0f}"
        f"{r['stored_ratio']:>7.2f}",
        flush=flush,
    )


def cause_table(seconds: float = 5.0, size: int = 811, rates=(100_000, 150_000, 200_000),
                extra: str = "") -> list[dict]:
    """Who loses when a co-located subscriber does: one run each of the relay (its
    defaults: -10 while behind), the relay with ``relay.nice = 0`` (never raised), and
    the forwarder with and without GSO, every one with the subscriber; the relay's (or
    forwarder's) own socket drops beside the subscriber's."""
    arms = (
        ("relay", lambda r: run_relay(size, r, seconds, True, extra=extra)),
        ("relay nice 0", lambda r: run_relay(size, r, seconds, True, extra=extra + "\nnice = 0")),
        ("forwarder", lambda r: run_forwarder(size, r, seconds, True)),
        ("forwarder GSO", lambda r: run_forwarder(size, r, seconds, True, gso=True)),
    )
    rows = []
    print(f"{'arm':<15}{'rate/s':>9}{'sent':>10}{'own drops':>11}{'sub drops':>11}"
          f"{'us/dgram':>10}")
    for rate in rates:
        for name, run in arms:
            x = run(rate)
            row = {"arm": name, "rate": rate, "sent": x["sent"], "drops": x["kernel_drops"],
                   "sub_drops": x["sub_drops"], "us": x["ns_per_dgram"] / 1e3}
            rows.append(row)
            print(f"{name:<15}{rate:>9,}{row['sent']:>10,}{row['drops']:>11,}"
                  f"{row['sub_drops']:>11,}{row['us']:>10.2f}", flush=True)
    return rows


def run_all(seconds: float = 5.0, lossless_seconds: float = 10.0, repeat: int = 2) -> dict:
    """Every table of this part of bench_relay (about 25 minutes with the defaults)."""
    out = {}
    print("\nC: CPU per datagram, relay process vs bare forwarder thread (no subscriber)")
    print_cost_header()
    out["cost"] = cost_table(seconds, repeat)
    print("\nC (coalesce 0): the same, coalescing off (the relay before issue 13)")
    print_cost_header()
    out["cost_off"] = cost_table(seconds, repeat, rates=(1_000, 20_000), sizes=(811,),
                                 extra="coalesce = 0")
    print("\nT: latency added by the relay (subscriber receive - relay receive), 811 B")
    out["latency"] = {}
    for rate in (1_000, 20_000):
        for label, extra in (("coalesce 500us (default)", ""), ("coalesce 0", "coalesce = 0")):
            lat = latency(rate, seconds, extra)
            out["latency"][(rate, label)] = lat
            print(f"{rate:>7,}/s {label:<25} p50 {lat['p50_us']:8.1f} us  "
                  f"p99 {lat['p99_us']:8.1f} us  max {lat['max_us']:8.1f} us  (n={lat['n']})",
                  flush=True)
    print("\nwho loses beside a co-located subscriber (one run each)")
    out["cause"] = cause_table(seconds)
    print(f"\nL: lossless rates ({lossless_seconds:g} s runs, 3 of 3)")
    print_lossless_header()
    out["lossless"] = lossless_table(lossless_seconds)
    return out
