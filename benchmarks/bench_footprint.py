"""Footprint of the relay and the live server: RSS and CPU, idle and at the demo rate.

The real processes run as ``speeddata up`` starts them (``python -m speeddata.relay``,
``python -m speeddata.commands serve``) on the small-device configuration shipped with
the package (``speeddata/raspberry-pi.toml``, ``speeddata.config.SMALL_CONFIG``) and, for
comparison, on the default one (``default.toml``); only ports, groups, endpoints and the
cache folder are changed. Two phases each:

idle  relay and server running, nothing sent (the relay still announces its channels
      once a second, the server draws no client);
demo  the demo source (``speeddata source --demo``, its default rates: engine 100/s,
      power 1000/s, status 1/s) sending to the relay.

Per process: RSS from /proc/PID/status (VmRSS = RssAnon + RssFile + RssShmem) at the end
of the phase, threads, whether numpy is mapped, and CPU as a share of one core over the
phase (every thread's /proc/PID/task/*/schedstat run time). Baseline, same run: a bare
``python`` interpreter that imports nothing (the RSS floor of any Python process here);
ratios are RSS / bare. Targets (issue 14): relay < 30 MB RSS and < 1 % of a core idle,
server < 60 MB RSS. Reported, not asserted.

Network rule: everything on 127.0.0.1, multicast on interface 127.0.0.1 with TTL 1; the
demo source stops after its ``--duration``.

    .venv/bin/python benchmarks/bench_footprint.py [--seconds 10] [--config small|default]
    .venv/bin/python -m pytest benchmarks/bench_footprint.py -s
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_cost import free_port as _free  # noqa: E402
from relay_cost import random_group as _group  # noqa: E402
from relay_cost import task_cpu_ns as cpu_ns  # noqa: E402
from speeddata.config import DEFAULT_CONFIG, SMALL_CONFIG  # noqa: E402
from speeddata.control import ControlError, request

LOOPBACK = "127.0.0.1"
CONFIGS = {"small": SMALL_CONFIG, "default": DEFAULT_CONFIG}
#: issue 14's targets: (RSS bytes, share of a core idle) per process
TARGETS = {"relay": (30 * 2**20, 0.01), "server": (60 * 2**20, None)}
MB = 2**20  # MiB: /proc counts in KiB




def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string is a JSON string for these values


def to_toml(doc: dict) -> str:
    """The few TOML shapes a SpeedData config uses: tables of scalars, [[channels]]."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        lines.append("")
    return "\n".join(lines)


def write_config(tmp: Path, base: Path) -> dict:
    """``base`` with fresh ports, groups, endpoints and a cache folder in ``tmp``."""
    doc = tomllib.loads(base.read_text())
    doc.setdefault("cache", {})["dir"] = str(tmp / "cache")
    mc = doc.setdefault("multicast", {})
    mc.update(interface=LOOPBACK, ttl=1, full=f"{_group()}:{_free()}",
              decimated=f"{_group()}:{_free()}")
    relay = doc.setdefault("relay", {})
    relay.update(control=f"ipc://{tmp}/control", stats=f"ipc://{tmp}/stats",
                 shared_port=_free())
    http = _free(socket.SOCK_STREAM)
    doc.setdefault("server", {})["listen"] = f"{LOOPBACK}:{http}"
    for ch in doc.get("channels", []):
        ch["port"] = _free()
        ch["schema"] = str((base.parent / ch["schema"]).resolve())
    path = tmp / "footprint.toml"
    path.write_text(to_toml(doc))
    return {"path": path, "http": http, "control": relay["control"],
            "channels": [ch["name"] for ch in doc.get("channels", [])]}


# ------------------------------------------------------------------- /proc measurements


def memory(pid: int) -> dict:
    """VmRSS, RssAnon, RssFile, RssShmem (bytes) and Threads of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
        elif key == "Threads":
            out[key] = int(value)
    return out




def maps_numpy(pid: int) -> bool:
    """Whether numpy's extension is mapped into the process."""
    return "numpy" in Path(f"/proc/{pid}/maps").read_text()


def measure(procs: dict[str, int], seconds: float) -> dict[str, dict]:
    """CPU (share of a core) of each process over ``seconds``; memory at the end."""
    c0 = {name: cpu_ns(pid) for name, pid in procs.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    out = {}
    for name, pid in procs.items():
        out[name] = dict(memory(pid), cpu=(cpu_ns(pid) - c0[name]) / 1e9 / dt,
                         numpy=maps_numpy(pid))
    return out


# --------------------------------------------------------------------------- processes


def _start(args: list[str], log: Path, **kw) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, *args], stdout=f, stderr=f, **kw)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.stdin is not None:
            p.stdin.close()  # the bare interpreter's: it ends reading
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_relay(control: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            request(control, {"cmd": "status"}, timeout=0.5)
            return
        except ControlError:
            if time.monotonic() > end:
                raise


def _wait_server(http: int, names: list[str], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    url = f"http://{LOOPBACK}:{http}/api/channels"
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                have = {c["name"] for c in json.loads(r.read())["channels"]}
            if set(names) <= have:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} never listed {names}")


def relay_datagrams(control: str) -> int:
    status = request(control, {"cmd": "status"}, timeout=5)
    return sum(c["counters"].get("datagrams", 0) for c in status["channels"])


def run_config(name: str, seconds: float = 10.0, warm: float = 3.0) -> list[dict]:
    """Both phases on one configuration; one row per (process, phase)."""
    tmp = Path(tempfile.mkdtemp(prefix="sd-footprint-", dir="/tmp"))
    info = write_config(tmp, CONFIGS[name])
    cfg = str(info["path"])
    procs: list[subprocess.Popen] = []
    rows = []
    try:
        bare = _start(["-c", "import sys; sys.stdin.read()"], tmp / "bare.log",
                      stdin=subprocess.PIPE)
        procs.append(bare)
        relay = _start(["-m", "speeddata.relay", "-c", cfg], tmp / "relay.log")
        procs.append(relay)
        _wait_relay(info["control"])
        server = _start(["-m", "speeddata.commands", "serve", "-c", cfg], tmp / "server.log")
        procs.append(server)
        _wait_server(info["http"], info["channels"])
        pids = {"relay": relay.pid, "server": server.pid, "bare python": bare.pid}
        time.sleep(warm)
        phases = {"idle": measure(pids, seconds)}
        source = _start(["-m", "speeddata.commands", "source", "--demo", "-q", "-c", cfg,
                         "--duration", str(2 * warm + seconds + 5)], tmp / "source.log")
        procs.append(source)
        time.sleep(warm)
        n0 = relay_datagrams(info["control"])
        phases["demo"] = measure(dict(pids, **{"demo source": source.pid}), seconds)
        n_datagrams = relay_datagrams(info["control"]) - n0
        for phase, by_proc in phases.items():
            floor = by_proc["bare python"]["VmRSS"]
            for proc, m in by_proc.items():
                row = dict(m, config=name, phase=phase, process=proc,
                           rss_ratio=m["VmRSS"] / floor, seconds=seconds)
                if phase == "demo" and proc == "relay":
                    row["datagrams"] = n_datagrams
                    row["us_per_datagram"] = m["cpu"] * seconds / max(n_datagrams, 1) * 1e6
                rows.append(row)
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def run_all(configs=("small", "default"), seconds: float = 10.0, warm: float = 3.0) -> list[dict]:
    rows = []
    for name in configs:
        rows += run_config(name, seconds, warm)
    print_table(rows)
    return rows


def _target(row: dict) -> str:
    rss, cpu = TARGETS.get(row["process"], (None, None))
    if rss is None:
        return ""
    parts = [f"RSS < {rss / MB:.0f} MiB: {'met' if row['VmRSS'] < rss else 'NOT met'}"]
    if cpu is not None and row["phase"] == "idle":
        parts.append(f"CPU < {cpu:.0%}: {'met' if row['cpu'] < cpu else 'NOT met'}")
    return "; ".join(parts)


def print_table(rows: list[dict]) -> None:
    print()
    print(f"{'config':<8}{'phase':<6}{'process':<13}{'RSS MiB':>8}{'anon':>7}{'file':>7}"
          f"{'x bare':>8}{'thr':>5}{'CPU':>8}{'numpy':>7}  target")
    for r in rows:
        print(f"{r['config']:<8}{r['phase']:<6}{r['process']:<13}{r['VmRSS'] / MB:>8.1f}"
              f"{r['RssAnon'] / MB:>7.1f}{r['RssFile'] / MB:>7.1f}{r['rss_ratio']:>8.2f}"
              f"{r['Threads']:>5}{r['cpu']:>8.2%}{'yes' if r['numpy'] else 'no':>7}  "
              f"{_target(r)}")
    for r in rows:
        if "datagrams" in r:
            print(f"{r['config']}: relay took {r['datagrams']:,} datagrams in "
                  f"{r['seconds']:g} s at the demo rate: {r['us_per_datagram']:.1f} us of CPU "
                  "per datagram (every thread, announces and status included)")


def test_footprint():
    """The benchmark under pytest (``-s`` shows the table); figures reported, not
    asserted, except that every process was measured and the relay took datagrams."""
    rows = run_all()
    assert all(r["VmRSS"] > 0 and r["Threads"] >= 1 for r in rows)
    assert all(r["datagrams"] > 0 for r in rows if "datagrams" in r)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    p.add_argument("--warm", type=float, default=3.0, help="settling time before a phase")
    p.add_argument("--config", choices=sorted(CONFIGS), action="append",
                   help="configuration(s) to measure (default: small and default)")
    args = p.parse_args(argv)
    run_all(tuple(args.config or ("small", "default")), args.seconds, args.warm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
