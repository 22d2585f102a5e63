"""Live server benchmarks W1-W5 (issue 11), each against a baseline in the same run.

A relay (compiled engine) and the server run as processes on one config: the demo
channels (demo source) plus ``wide`` (10 kHz, 100 doubles), ``fast`` (100 kHz, 4 doubles)
and ``w4`` (16 doubles, 100 Hz or 100 kHz), as many records per datagram as fit in
8 KiB, sent by a paced sender process. Websocket clients (the ``websockets`` package)
run in this process.

W1  server CPU (s/s, from /proc) with 10 clients, each watching 16 signals on a
    1,000-pixel chart, / CPU of a bare loop that only receives and decodes the same
    stream (recvmmsg slab + BlockDecoder per channel), a process running beside the
    server and measured over the same seconds.
W2  server CPU at 1, 10 and 50 clients; the cost of each added client.
W3  latency: source time of the newest record of a frame -> the client's receipt of it
    (p50, p99), with the W1 clients, after the bare loop has stopped.
W4  bytes/s to one client watching 16 signals (w4) on 1,000 pixels, source at 100 Hz
    and at 100 kHz (ratio), and the most points per pixel column seen (must be <= 4).
W5  M4 of one hour of a 1 kHz signal at 1,000 pixels from the cache (the server's
    scroll-back) / the reader reading that column alone.

Everything is sent to 127.0.0.1 and to multicast on interface 127.0.0.1, TTL 1; every
sender stops after its duration.

    .venv/bin/python benchmarks/bench_server.py [--quick] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "src" / "speeddata" / "schemas"
DATAGRAM = 8192
TICK = 0.01  # sender pacing step, s


def wide_schema(name: str, n: int) -> dict:
    return {"type": "record", "name": name, "fields": [
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
        *({"name": f"x{i:02d}", "type": "double"} for i in range(n))]}


def _free(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group() -> str:
    return f"239.255.{random.randint(0, 255)}.{random.randint(1, 254)}"


def write_config(tmp: Path) -> dict:
    for name, n in (("wide", 100), ("fast", 4), ("w4", 16)):
        (tmp / f"{name}.avsc").write_text(json.dumps(wide_schema(name, n)))
    ports = {name: _free() for name in ("engine", "power", "status", "wide", "fast", "w4")}
    http = _free(socket.SOCK_STREAM)
    lines = [
        "[cache]", f'dir = "{tmp / "cache"}"', 'budget = "4 GiB"',
        "[multicast]", 'interface = "127.0.0.1"', "ttl = 1",
        f'full = "{_group()}:{_free()}"', f'decimated = "{_group()}:{_free()}"',
        "[relay]", f'control = "ipc://{tmp}/control"', f'stats = "ipc://{tmp}/stats"',
        "shared_port = 0", 'rcvbuf = "16 MiB"',
        "[server]", f'listen = "127.0.0.1:{http}"', 'memory = "512 MiB"', 'window = "10 min"',
    ]
    for name, dec in (("engine", 10), ("power", 100), ("status", 1), ("wide", 10), ("fast", 100),
                      ("w4", 100)):
        schema = SCHEMAS / f"{name}.avsc" if name in ("engine", "power", "status") else \
            tmp / f"{name}.avsc"
        lines += ["[[channels]]", f'name = "{name}"', f"port = {ports[name]}",
                  f'schema = "{schema}"', f"decimation = {dec}"]
    path = tmp / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return {"path": path, "ports": ports, "http": http, "control": f"ipc://{tmp}/control"}


# ------------------------------------------------------------------------ child processes


def send_main(config: str, rates: dict[str, float], seconds: float) -> None:
    """Paced sender of the wide/fast/w4 channels: fresh rows stamped now, every TICK."""
    from speeddata.config import load_config
    from speeddata.source import Source

    cfg = load_config(config)
    sources, dtypes = {}, {}
    for name in rates:
        ch = cfg.channel(name)
        sources[name] = Source(name, ch.schema, ("127.0.0.1", ch.port), max_datagram=DATAGRAM)
        n = len(ch.schema.signals) - 1
        dtypes[name] = np.dtype([(f"x{i:02d}", "<f8") for i in range(n)])
    start = time.monotonic()
    sent = {name: 0 for name in rates}
    rng = np.random.default_rng(1)
    while (elapsed := time.monotonic() - start) < seconds:  # bounded in time
        for name, rate in rates.items():
            due = int(elapsed * rate) - sent[name]
            if due <= 0:
                continue
            arr = np.zeros(due, dtypes[name])
            phase = (sent[name] + np.arange(due)) / rate
            for i, f in enumerate(dtypes[name].names):
                arr[f] = np.sin(phase * (1 + i)) + 0.01 * rng.standard_normal(due)
            now = time.time_ns()
            times = now - ((due - 1 - np.arange(due)) * (1e9 / rate)).astype(np.int64)
            sources[name].send_array(arr, times)
            sent[name] += due
        time.sleep(TICK)
    for s in sources.values():
        s.close()


def bare_main(config: str, seconds: float) -> None:
    """The baseline: receive the server's group and decode every channel's batch (the
    server's intake without window, summaries or clients) until ``seconds`` pass or
    SIGINT; prints its CPU seconds, wall seconds and records as JSON."""
    import select

    from speeddata import wire
    from speeddata._columns import BlockDecoder
    from speeddata._mcast import SLOT, BatchReceiver
    from speeddata.config import load_config
    from speeddata.schema import Schema

    cfg = load_config(config)
    group = cfg.multicast.full
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(group)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton(group[0]) + socket.inet_aton("127.0.0.1"))
    sock.setblocking(False)
    rx = BatchReceiver(256)
    flat = rx.slab.reshape(-1)
    decoders: dict[int, BlockDecoder] = {}
    records = 0
    t_cpu0, t0 = time.process_time(), time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            select.select([sock], [], [], 0.1)
            while (n := rx.recv(sock.fileno())) > 0:
                length = rx.length[:n].astype(np.int64)
                hdr = np.ascontiguousarray(rx.slab[:n, :32]).view(wire.HEADER_DTYPE).reshape(n)
                hl = hdr["header_len"].astype(np.int64)
                for i in np.flatnonzero(hdr["kind"] == 1).tolist():
                    ann = wire.parse_announce(bytes(rx.slab[i, hl[i]:length[i]]))
                    key = (int(rx.source[i]) << 32) | int(ann["id"])
                    if key not in decoders:
                        decoders[key] = BlockDecoder(Schema(ann["schema"]), None, True, 1)
                data = np.flatnonzero(hdr["kind"] == 0)
                keys = (rx.source[data].astype(np.uint64) << np.uint64(32)) | \
                    hdr["channel_id"][data]
                for key in np.unique(keys).tolist():
                    dec = decoders.get(int(key))
                    if dec is None:
                        continue
                    rows = data[keys == key]
                    count = hdr["n_records"][rows].astype(np.int64)
                    start = rows.astype(np.int64) * SLOT + hl[rows]
                    size = length[rows] - hl[rows]
                    dec.reserve(int(count.sum()), int(size.sum()))
                    dec.decode(flat, start, size, count)
                    dec.finish()
                    records += int(count.sum())
                if n < rx.batch:
                    break
    except KeyboardInterrupt:
        pass
    print(json.dumps({"cpu_s": time.process_time() - t_cpu0,
                      "wall_s": time.monotonic() - t0, "records": records}), flush=True)


# ---------------------------------------------------------------------------- the run


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, *args], stdout=f, stderr=f)


def sender(info: dict, rates: dict, seconds: float, log: Path) -> subprocess.Popen:
    spec = ",".join(f"{k}={v}" for k, v in rates.items())
    return start([__file__, "--send", str(info["path"]), "--rates", spec, "--seconds",
                  str(seconds)], log)


class Clients:
    """Websocket clients in this process: subscribe, count bytes, note latencies."""

    def __init__(self, url: str):
        self.url = url
        self.bytes = 0
        self.latency: list[float] = []
        self.max_columns_over_pixels = 0.0
        self.tasks: list[asyncio.Task] = []
        self.conns = []

    async def add(self, n: int, signals: list[str], pixels: int = 1000, window_s: float = 30,
                  latency_signal: int | None = None) -> None:
        import websockets

        from speeddata.server.ws import decode_frame

        async def run(ws):
            async for msg in ws:
                now = time.time()
                if isinstance(msg, str):
                    continue
                self.bytes += len(msg)
                frame = decode_frame(msg)
                for b in frame["blocks"]:
                    if b["type"] == 1:
                        self.max_columns_over_pixels = max(self.max_columns_over_pixels,
                                                           len(b["count"]) / pixels)
                    elif b["type"] == 2 and b["signal"] == latency_signal:
                        self.latency.append(now - b["time_s"])

        for _ in range(n):
            ws = await websockets.connect(self.url, max_size=None)
            await ws.recv()  # hello
            await ws.send(json.dumps({"type": "subscribe", "sub": 1, "signals": signals,
                                      "pixels": pixels, "window_s": window_s}))
            self.conns.append(ws)
            self.tasks.append(asyncio.ensure_future(run(ws)))

    async def close(self) -> None:
        for ws in self.conns:
            await ws.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.conns, self.tasks = [], []


async def measure_both(pid_a: int, pid_b: int, seconds: float) -> tuple[float, float]:
    """CPU seconds per second of two processes over the same interval."""
    a0, b0, t0 = proc_cpu(pid_a), proc_cpu(pid_b), time.monotonic()
    await asyncio.sleep(seconds)
    dt = time.monotonic() - t0
    return (proc_cpu(pid_a) - a0) / dt, (proc_cpu(pid_b) - b0) / dt


async def measure_server(pid: int, seconds: float) -> float:
    c0, t0 = proc_cpu(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (proc_cpu(pid) - c0) / (time.monotonic() - t0)


def wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200 and json.loads(r.read())["channels"]:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no server at {url}")


def wait_channels(url: str, names: set[str], timeout: float = 30) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with urllib.request.urlopen(url + "/api/channels", timeout=2) as r:
            have = {c["name"] for c in json.loads(r.read())["channels"]}
        if names <= have:
            return
        time.sleep(0.2)
    raise RuntimeError(f"channels {names} never announced")


def live_benchmarks(seconds: float, quick: bool) -> dict:
    """W1-W4."""
    from speeddata.control import ControlError, request

    tmp = Path(tempfile.mkdtemp(prefix="sd-bench-srv-", dir="/tmp"))
    info = write_config(tmp)
    procs: list[subprocess.Popen] = []
    out: dict = {}
    rates = {"wide": 1000, "fast": 10000} if quick else {"wide": 10000, "fast": 100000}
    warm = 1.0 if quick else 3.0
    try:
        procs.append(start(["-m", "speeddata.relay", "-c", str(info["path"])], tmp / "relay.log"))
        end = time.monotonic() + 30
        while True:
            try:
                request(info["control"], {"cmd": "status"}, timeout=0.5)
                break
            except ControlError:
                if time.monotonic() > end:
                    raise
        total = seconds * (4 if quick else 6) + 60
        procs.append(start(["-m", "speeddata.commands", "source", "--demo", "-q", "-c",
                            str(info["path"]), "--duration", str(total)], tmp / "demo.log"))
        procs.append(sender(info, rates, total, tmp / "sender.log"))
        time.sleep(warm)
        # baseline: the bare receive + decode loop on the same stream, running beside
        # the server for the whole run: every CPU figure of the server is divided by
        # the bare loop's over the same seconds (the machine's other load hits both)
        bare = subprocess.Popen([sys.executable, __file__, "--bare", str(info["path"]),
                                 "--seconds", str(total)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        procs.append(bare)
        time.sleep(warm)
        out["bare_alone_cpu"] = asyncio.run(measure_server(bare.pid, seconds))
        server = start(["-m", "speeddata.server", "-c", str(info["path"])], tmp / "server.log")
        procs.append(server)
        url = f"http://127.0.0.1:{info['http']}"
        wait_http(url + "/api/channels")
        wait_channels(url, {"wide", "fast", "w4", "engine"})
        signals = [f"wide.x{i:02d}" for i in range(12)] + [f"fast.x{i:02d}" for i in range(4)]

        async def clients_phase():
            res = {}
            ws_url = f"ws://127.0.0.1:{info['http']}/ws"
            clients = Clients(ws_url)
            counts = (1, 2, 3) if quick else (1, 10, 50)
            have = 0
            bare_cpu = {}
            for n in counts:
                await clients.add(n - have, signals, latency_signal=12)
                have = n
                await asyncio.sleep(warm)
                clients.latency.clear()
                res[n], bare_cpu[n] = await measure_both(server.pid, bare.pid, seconds)
            first_max = clients.max_columns_over_pixels
            await clients.close()
            out["cpu_by_clients"] = res
            out["bare_cpu_by_clients"] = bare_cpu
            # W3 with the W1 clients, once the bare loop no longer takes a core's share
            bare.send_signal(signal.SIGINT)
            text = (await asyncio.get_running_loop().run_in_executor(
                None, lambda: bare.communicate(timeout=30)[0]))
            b = json.loads(text.strip().splitlines()[-1])
            out["bare_records_s"] = b["records"] / b["wall_s"]
            clients = Clients(ws_url)
            await clients.add(counts[1], signals, latency_signal=12)
            await asyncio.sleep(warm)
            clients.latency.clear()
            await asyncio.sleep(seconds)
            lat = np.array(clients.latency) * 1e3
            out["latency_ms"] = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                                 len(lat))
            out["max_columns_over_pixels"] = max(first_max, clients.max_columns_over_pixels)
            await clients.close()
            # W4: one client on w4 at a slow and a fast source rate
            for label, rate in (("slow", 100), ("fast", 10000 if quick else 100000)):
                p = sender(info, {"w4": rate}, seconds + warm + 2, tmp / f"w4-{label}.log")
                procs.append(p)
                one = Clients(ws_url)
                await one.add(1, [f"w4.x{i:02d}" for i in range(16)])
                await asyncio.sleep(warm)
                b0, t0 = one.bytes, time.monotonic()
                await asyncio.sleep(seconds)
                out[f"w4_{label}_bytes_s"] = (one.bytes - b0) / (time.monotonic() - t0)
                out["max_columns_over_pixels"] = max(out["max_columns_over_pixels"],
                                                     one.max_columns_over_pixels)
                await one.close()
                p.wait(seconds + warm + 30)

        asyncio.run(clients_phase())
        import urllib.request

        with urllib.request.urlopen(url + "/api/status", timeout=5) as r:
            status = json.loads(r.read())
        out["server_lost_datagrams"] = sum(v["datagrams"] for v in status["loss"].values())
        out["server_loss_gaps"] = sum(v["gaps"] for v in status["loss"].values())
        out["server_loss_by_channel"] = {k: v["datagrams"] for k, v in status["loss"].items()
                                         if v["datagrams"]}
        stats = request(info["control"], {"cmd": "status"}, timeout=2)
        out["relay_kernel_drops"] = sum(c["counters"]["kernel_drops"] for c in stats["channels"])
        out["relay_multicast_errors"] = sum(c["counters"]["multicast_errors"]
                                            for c in stats["channels"])
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def scrollback_benchmark(seconds_of_data: int, repeat: int = 3) -> dict:
    """W5: M4 of ``seconds_of_data`` of a 1 kHz channel from the cache vs the reader."""
    from speeddata.cache import SegmentWriter
    from speeddata.reader import read
    from speeddata.schema import Schema
    from speeddata.server.history import cache_m4
    from speeddata.server.live import ladder_width
    from speeddata.source import Source

    tmp = Path(tempfile.mkdtemp(prefix="sd-bench-w5-", dir="/tmp"))
    try:
        schema = Schema(wide_schema("one", 1))
        src = Source("one", schema, ("127.0.0.1", 9))
        t0 = 1_700_000_000_000_000_000
        n = seconds_of_data * 1000
        step = 10_000  # records per block (10 s)
        writer = SegmentWriter(tmp / "one", schema, "one", 1, 256 << 20, t_open_ns=t0)
        arr = np.zeros(step, [("x00", "<f8")])
        for i in range(0, n, step):
            k = min(step, n - i)
            arr["x00"][:k] = np.sin(np.arange(i, i + k) / 1000.0)
            times = t0 + (i + np.arange(k)) * 1_000_000
            data, ends = src.encode_array(arr[:k], times)
            writer.append([bytes(data)], [int(times[-1])], [i // step], [k], int(times[0]),
                          int(times[-1]))
        writer.close()
        src.close()
        t1 = t0 + n * 1_000_000
        width = ladder_width(t1 - t0, 1000)
        best_read = best_m4 = float("inf")
        for _ in range(repeat):
            a = time.perf_counter()
            cols = read(tmp, "one", t0, t1, ["x00"], threads=1)
            best_read = min(best_read, time.perf_counter() - a)
            a = time.perf_counter()
            m4 = cache_m4(tmp, "one", ["x00"], t0, t1, width)
            best_m4 = min(best_m4, time.perf_counter() - a)
        assert len(cols["time"]) == n and int(m4.count.sum()) == n
        return {"w5_records": n, "w5_read_s": best_read, "w5_m4_s": best_m4,
                "w5_ratio": best_m4 / best_read, "w5_columns": len(m4.count)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(r: dict) -> str:
    lines = ["live server benchmarks (same run; machine shared, ratios are what counts)"]
    if "cpu_by_clients" in r:
        cpu = r["cpu_by_clients"]
        bare = r["bare_cpu_by_clients"]
        counts = sorted(cpu)
        mid = counts[1]
        lines.append(f"baseline bare receive+decode: {r['bare_alone_cpu']:.3f} cores alone, "
                     f"{bare[mid]:.3f} beside the server ({r['bare_records_s']:,.0f} records/s)")
        lines.append(f"W1 server CPU, {mid} clients x 16 signals x 1000 px: {cpu[mid]:.3f} "
                     f"cores; ratio to bare (same seconds) {cpu[mid] / max(bare[mid], 1e-9):.2f}"
                     " (target <= 2.0, < 0.5 core)")
        per = (cpu[counts[-1]] - cpu[counts[0]]) / (counts[-1] - counts[0])
        lines.append("W2 server CPU by clients: " + ", ".join(
            f"{n}: {cpu[n]:.3f}" for n in counts) + f"; per added client {per * 100:.2f} % "
            "of a core (target < 1 %)")
        p50, p99, n_lat = r["latency_ms"]
        lines.append(f"W3 latency source -> client: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                     f"({n_lat} frames; target p99 < 67 ms)")
        lines.append(f"W4 bytes/s to one client: 100 Hz {r['w4_slow_bytes_s']:,.0f}, fast "
                     f"{r['w4_fast_bytes_s']:,.0f}; ratio "
                     f"{r['w4_fast_bytes_s'] / max(r['w4_slow_bytes_s'], 1):.2f} (target <= 2); "
                     f"most columns per pixel {r['max_columns_over_pixels']:.2f} "
                     "(4 points per column: <= 1 column per pixel)")
        lines.append(f"relay kernel drops during the run: {r['relay_kernel_drops']}, multicast "
                     f"send errors {r['relay_multicast_errors']}; datagrams the server lost "
                     f"(seq gaps): {r['server_lost_datagrams']} in {r['server_loss_gaps']} gaps "
                     f"{r.get('server_loss_by_channel') or ''}")
    if "w5_ratio" in r:
        lines.append(f"W5 scroll-back M4 of {r['w5_records']:,} records at "
                     f"{r['w5_columns']} columns: {r['w5_m4_s'] * 1e3:.1f} ms vs reader "
                     f"{r['w5_read_s'] * 1e3:.1f} ms; ratio {r['w5_ratio']:.2f} (target <= 1.5)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short phases, few clients (smoke)")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    p.add_argument("--send", metavar="CONFIG", help=argparse.SUPPRESS)
    p.add_argument("--bare", metavar="CONFIG", help=argparse.SUPPRESS)
    p.add_argument("--rates", default="", help=argparse.SUPPRESS)
    p.add_argument("--only", choices=("live", "scrollback"), help="run one part")
    args = p.parse_args(argv)
    if args.send:
        rates = {k: float(v) for k, v in (kv.split("=") for kv in args.rates.split(","))}
        send_main(args.send, rates, args.seconds)
        return 0
    if args.bare:
        bare_main(args.bare, args.seconds)
        return 0
    results: dict = {}
    if args.only in (None, "live"):
        results.update(live_benchmarks(args.seconds, args.quick))
    if args.only in (None, "scrollback"):
        results.update(scrollback_benchmark(60 if args.quick else 3600))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
