"""Several hosts on one machine for tests/test_netns.py: network namespaces joined by a
bridge that lives in a namespace of its own, processes started inside them, HTTP asked
from inside them, and a source that sends numbered engine records.

Network rule (docs/architecture.md): everything here stays inside namespaces this module
creates. The machine's own (root) namespace gets no device, address or route: the bridge
and one end of every veth pair live in the bridge's namespace, the other end in a host's.
No namespace has a default route; the test network is 10.77.0.0/24 on one bridge.

Run as a program inside a namespace: ``python netns_helpers.py send ...`` is the source
(it sends with :class:`speeddata.source.Source`), ``... ws URL SIGNAL`` a websocket
client that prints the server's ``hello`` and a signal's latest value.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

#: the test network; hosts get .1, .2, ... (the bridge has no address: a switch)
SUBNET_PREFIX = "10.77.0."
PREFIX_LEN = 24
#: namespace names: sdnet<pid>-<host>; a run's pid makes them unique and lets a later
#: run remove the leftovers of one that died without cleaning up
NAME_RE = re.compile(r"^sdnet(\d+)-")
#: the source of engine records: record i is at T0 + i ms, rpm 1000 + i, counter i
T0_NS = 1_700_000_000_000_000_000

_FETCH = """\
import json, sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    sys.stdout.write(json.dumps({"http_error": e.code, "body": e.read().decode()}))
except OSError as e:
    sys.stdout.write(json.dumps({"unreachable": str(e)}))
"""


class NetnsError(AssertionError):
    """A command that builds or drives the test network failed (its stderr included)."""


def run(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def netns_unavailable() -> str | None:
    """Why this machine cannot build the test network, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, bridge); CI runs as root"
    for tool in ("ip", "tc", "bridge"):
        if run("sh", "-c", f"command -v {tool}", check=False).returncode != 0:
            return f"needs `{tool}` (apt-get install iproute2)"
    return None


def remove_leftovers() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone, and stop what still
    runs in them; return their names."""
    out = run("ip", "netns", "list").stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NAME_RE.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # that run is still going
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        # its processes (the relay, the server) outlive the namespace's name: stop them
        for pid_text in run("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid_text), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run("ip", "netns", "del", name, check=False)
        removed.append(name)
    return removed


class Site:
    """One bridge (a switch) in its own namespace, and hosts plugged into it.

    ``host(name, n)`` makes namespace ``sdnet<pid>-<name>`` with ``lo`` up and one device
    ``eth0`` at 10.77.0.<n>/24, whose peer ``p-<name>`` is a port of the bridge (IGMP
snooping on, with a querier). ``close()``
    deletes every namespace made (the veth pairs and the bridge go with them).
    """

    def __init__(self):
        self.prefix = f"sdnet{os.getpid()}-"
        self.namespaces: list[str] = []
        self.hosts: dict[str, tuple[str, str]] = {}  # name -> (namespace, address)
        try:
            self.bridge = self._namespace("switch")
            # a managed switch: IGMP snooping with a querier on the segment, so multicast
            # goes only to the ports whose hosts joined the group (the reports of their
            # IP_ADD_MEMBERSHIP), as on a real site with a snooping switch and a querier
            run("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge",
                "mcast_snooping", "1", "mcast_querier", "1")
            run("ip", "-n", self.bridge, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _namespace(self, name: str) -> str:
        ns = self.prefix + name
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def host(self, name: str, n: int) -> str:
        """A host at 10.77.0.<n> on the bridge; returns its address."""
        ns = self._namespace(name)
        port = f"p-{name}"[:15]
        address = f"{SUBNET_PREFIX}{n}"
        run("ip", "-n", self.bridge, "link", "add", port, "type", "veth", "peer", "name",
            "eth0", "netns", ns)
        run("ip", "-n", self.bridge, "link", "set", port, "master", "br0")
        run("ip", "-n", self.bridge, "link", "set", port, "up")
        run("ip", "-n", ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        self.hosts[name] = (ns, address)
        return address

    def ns(self, host: str) -> str:
        return self.hosts[host][0]

    def address(self, host: str) -> str:
        return self.hosts[host][1]

    def port(self, host: str) -> str:
        """The bridge's port toward ``host`` (in the bridge's namespace)."""
        return f"p-{host}"[:15]

    def argv(self, host: str, *argv: str) -> list[str]:
        """``argv`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def routes(self, host: str) -> list[str]:
        return run("ip", "-n", self.ns(host), "-4", "route", "show").stdout.splitlines()

    def get_json(self, host: str, url: str):
        """GET ``url`` from inside ``host``: the parsed JSON; None when nothing answers."""
        r = run(*self.argv(host, sys.executable, "-S", "-c", _FETCH, url))
        doc = json.loads(r.stdout)
        if isinstance(doc, dict) and "unreachable" in doc:
            return None
        if isinstance(doc, dict) and "http_error" in doc:
            raise NetnsError(f"GET {url} from {host}: HTTP {doc['http_error']} {doc['body']}")
        return doc

    def members(self, group: str) -> set[str]:
        """The bridge's ports that IGMP snooping forwards ``group`` to (its mdb)."""
        out = run("bridge", "-n", self.bridge, "mdb", "show").stdout
        return {m.group(1) for m in re.finditer(rf"port (\S+) grp {re.escape(group)}\b", out)}

    # -- dropping packets on a bridge port

    def drop(self, host: str, percent: int) -> str:
        """Drop packets on the bridge's port toward ``host`` (egress: what ``host``
        receives): ``tc netem loss``; on a kernel built without netem, a token bucket
        (``tc tbf``) at a rate below what crosses the port drops the excess instead.
        Returns the qdisc as ``tc`` shows it."""
        dev = self.port(host)
        base = ("tc", "-n", self.bridge, "qdisc", "add", "dev", dev, "root")
        r = run(*base, "netem", "loss", f"{percent}%", check=False)
        if r.returncode != 0:
            if "unknown" not in r.stderr.lower():
                raise NetnsError(f"tc netem on {dev} failed: {r.stderr.strip()}")
            # the sources send ~4 Mbit/s (1000 datagrams/s of ~500 bytes): about a
            # quarter is dropped, in runs
            run(*base, "tbf", "rate", "3mbit", "burst", "3000", "limit", "3000")
        return run("tc", "-n", self.bridge, "qdisc", "show", "dev", dev).stdout.strip()

    def undrop(self, host: str) -> None:
        run("tc", "-n", self.bridge, "qdisc", "del", "dev", self.port(host), "root")

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


class Processes:
    """Processes started inside namespaces, each logging to ``<log_dir>/<name>.log``;
    ``stop()`` sends SIGTERM, then SIGKILL to the ones still running after 10 s.
    ``ip netns exec`` execs the program, so the pid is the program's own."""

    def __init__(self, site: Site, log_dir: Path):
        self.site = site
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, host: str, *argv: str) -> subprocess.Popen:
        # SIGTERM when the test process dies, finalizer or not (speeddata.relay's
        # die_with_parent, as under `speeddata up`)
        env = {**os.environ, "SPEEDDATA_DIE_WITH_PARENT": "1"}
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(self.site.argv(host, *argv), stdout=log, stderr=log,
                                    env=env)
        self.procs[name] = proc
        return proc

    def speeddata(self, name: str, host: str, *args: str) -> subprocess.Popen:
        return self.start(name, host, sys.executable, "-m", "speeddata.commands", *args)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self, *names: str) -> None:
        for name in names:
            code = self.procs[name].poll()
            if code is not None:
                raise AssertionError(f"{name} exited with {code}:\n{self.log(name)[-3000:]}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def send(site: Site, host: str, relay: str, port: int, channel: str, start: int, count: int,
         per_datagram: int = 10, schema: str = "engine", timeout: float = 60.0) -> dict:
    """Send datagrams ``start .. start+count-1`` (``per_datagram`` records each) from
    inside ``host`` to ``relay:port``; returns the sender's summary."""
    r = run(*site.argv(host, sys.executable, str(Path(__file__).resolve()), "send",
                       "--relay", f"{relay}:{port}", "--channel", channel,
                       "--schema", schema, "--start", str(start), "--count", str(count),
                       "--per-datagram", str(per_datagram)), timeout=timeout)
    return json.loads(r.stdout)


def record(schema: str, i: int) -> dict:
    """Record ``i`` of the test sources: its values say its number."""
    t = T0_NS + i * 1_000_000
    if schema == "engine":
        return {"time": t, "rpm": 1000.0 + i, "torque": i * 0.25, "temperature": 80.5,
                "throttle": float(i % 100) * 0.5, "state": ["IDLE", "RUN", "FAULT"][i % 3],
                "counter": i}
    if schema == "power":
        return {"time": t, "voltage": 230.0 + i, "current": -float(i), "noise": 0.5}
    raise ValueError(f"no test records for schema {schema!r}")


def ws_latest(site: Site, host: str, url: str, signal: str, timeout: float = 20.0) -> dict:
    """From inside ``host``: the ``hello`` of the websocket at ``url`` and the latest value
    of ``signal`` that a latest-values subscription brings (``python netns_helpers.py
    ws``, the `websockets` package as the client)."""
    r = run(*site.argv(host, sys.executable, str(Path(__file__).resolve()), "ws", url,
                       signal, "--timeout", str(timeout)), timeout=timeout + 10)
    return json.loads(r.stdout)


async def _ws(url: str, signal: str, timeout: float) -> dict:
    import asyncio

    import websockets

    from speeddata.server.ws import decode_frame

    async def session() -> dict:
        async with websockets.connect(url) as ws:
            hello = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "subscribe", "sub": 1, "signals": [signal],
                                      "pixels": 0}))
            while True:
                raw = await ws.recv()
                if not isinstance(raw, bytes):
                    continue
                for block in decode_frame(raw)["blocks"]:
                    if block["type"] == 2 and block["signal"] == 0:
                        return {"hello": hello, "value": block["value"],
                                "time_s": block["time_s"]}

    return await asyncio.wait_for(session(), timeout)


def _main(argv: list[str] | None = None) -> int:
    """``send``: numbered records to a relay, paced (20 datagrams, then 20 ms: about
    1000 datagrams/s, bursts far below the 1000-packet backlog of a veth's receiver)."""
    parser = argparse.ArgumentParser(prog="netns_helpers.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--relay", required=True)
    s.add_argument("--channel", required=True)
    s.add_argument("--schema", required=True)
    s.add_argument("--start", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--per-datagram", type=int, default=10)
    w = sub.add_parser("ws")
    w.add_argument("url")
    w.add_argument("signal")
    w.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.cmd == "ws":
        import asyncio

        print(json.dumps(asyncio.run(_ws(args.url, args.signal, args.timeout))))
        return 0
    from speeddata.source import Source

    schemas = Path(__file__).resolve().parents[1] / "src" / "speeddata" / "schemas"
    t_start = time.monotonic()
    n_records = 0
    with Source(args.channel, schemas / f"{args.schema}.avsc", relay=args.relay) as src:
        for d in range(args.count):
            first = (args.start + d) * args.per_datagram
            sent = src.send_many([record(args.schema, first + k)
                                  for k in range(args.per_datagram)])
            if sent != 1:
                raise SystemExit(f"expected one datagram per call, sent {sent}")
            n_records += args.per_datagram
            if d % 20 == 19:
                time.sleep(0.02)
        local = src.local_address
    print(json.dumps({"datagrams": args.count, "records": n_records,
                      "last": (args.start + args.count) * args.per_datagram - 1,
                      "from": local[0], "seconds": time.monotonic() - t_start}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
