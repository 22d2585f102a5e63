"""Helpers for the relay tests: encode records with fastavro (the oracle), send them to
127.0.0.1, listen to multicast groups on interface 127.0.0.1, read the cache back."""

from __future__ import annotations

import io
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import fastavro

from conftest import SCHEMAS, free_udp_port, random_group
from speeddata import wire
from speeddata.cache import list_segments
from speeddata.config import ChannelConfig, MulticastConfig
from speeddata.control import ControlError, request, wait_for_relay
from speeddata.schema import Schema

LOOPBACK = "127.0.0.1"

#: ``--engine`` values to run the relay process with: the compiled one when it is built
ENGINE_NAMES = ["python", "compiled"]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def encode(schema, records) -> bytes:
    """Records -> their Avro binary encodings back to back (fastavro)."""
    parsed = fastavro.parse_schema(schema.avsc)
    out = io.BytesIO()
    for r in records:
        fastavro.schemaless_writer(out, parsed, r)
    return out.getvalue()


def single_object(schema, records, fingerprint: bytes | None = None) -> bytes:
    """Records in Avro single-object encoding: C3 01, fingerprint, record; back to back."""
    fp = schema.fingerprint if fingerprint is None else fingerprint
    return b"".join(b"\xc3\x01" + fp + encode(schema, [r]) for r in records)


def engine_record(i: int, t0: int = 1_700_000_000_000_000_000) -> dict:
    return {
        "time": t0 + i * 1_000_000,
        "rpm": 1000.0 + i,
        "torque": i * 0.25,
        "temperature": 80.5,
        "throttle": float(i % 100) * 0.5,
        "state": ["IDLE", "RUN", "FAULT"][i % 3],
        "counter": i,
    }


def status_record(i: int, message_len: int = 20, t0: int = 1_700_000_000_000_000_000) -> dict:
    return {
        "time": t0 + i * 1_000_000,
        "message": (f"line {i} " + "x" * message_len)[:message_len],
        "uptime": float(i),
        "load": None if i % 2 else i * 0.5,
        "host": {"cpu_temp": 40.5, "free_disk": 10**12 - i},
    }


def vibration_record(i: int) -> dict:
    return {"x": i * 0.5, "y": -i * 0.25, "z": 1.0, "ok": bool(i % 2)}


class Sender:
    """A UDP socket that sends only to 127.0.0.1."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, port: int, data: bytes) -> None:
        self.sock.sendto(data, (LOOPBACK, port))

    def close(self) -> None:
        self.sock.close()


class Subscriber:
    """Joins a multicast group on interface 127.0.0.1 and collects relay datagrams."""

    def __init__(self, group: str, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((group, port))
        self.sock.setsockopt(
            socket.IPPROTO_IP,
            socket.IP_ADD_MEMBERSHIP,
            socket.inet_aton(group) + socket.inet_aton(LOOPBACK),
        )
        self.sock.setblocking(False)
        self.data: list[tuple[wire.Header, bytes]] = []
        self.announces: list[tuple[wire.Header, dict]] = []

    def poll(self, timeout: float = 0.05) -> None:
        """Read what has arrived (waiting at most ``timeout`` for the first datagram)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        while ready:
            try:
                buf = self.sock.recv(70000)
            except BlockingIOError:
                return
            header = wire.unpack_header(buf)
            payload = buf[header.header_len :]
            if header.kind == wire.KIND_ANNOUNCE:
                self.announces.append((header, wire.parse_announce(payload)))
            else:
                self.data.append((header, payload))

    def collect_until(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out: {len(self.data)} data, {len(self.announces)} announces"
                )
            self.poll()

    def close(self) -> None:
        self.sock.close()


def read_channel(cache_dir: Path, channel: str) -> list[dict]:
    """Every record of a channel's segments, oldest first, read by fastavro."""
    records = []
    for seg in list_segments(cache_dir, channel):
        with open(seg.avro, "rb") as f:
            records.extend(fastavro.reader(f))
    return records


def read_all_cleanly(cache_dir: Path) -> int:
    """Read every segment of every channel with fastavro; return the record count."""
    n = 0
    for d in sorted(Path(cache_dir).iterdir()):
        if d.is_dir() and d.name not in ("tags", "rejected"):
            n += len(read_channel(cache_dir, d.name))
    return n


def write_config(
    path: Path,
    ipc_dir: Path,
    channels=(("engine", "engine", 10), ("status", "status", 1)),
    budget: str = "100 MB",
    segment_size: str = "64 KiB",
    shared: bool = True,
) -> dict:
    """Write a relay config on free ports; return what the test needs to know."""
    ports = {name: free_udp_port() for name, _, _ in channels}
    info = {
        "path": path,
        "cache": path.parent / "cache",
        "control": f"ipc://{ipc_dir}/control",
        "stats": f"ipc://{ipc_dir}/stats",
        "ports": ports,
        "shared_port": free_udp_port() if shared else 0,
        "full": (random_group(), free_udp_port()),
    }
    lines = [
        "[cache]",
        f'dir = "{info["cache"]}"',
        f'budget = "{budget}"',
        f'segment_size = "{segment_size}"',
        "[multicast]",
        'interface = "127.0.0.1"',
        "ttl = 1",
        f'full = "{info["full"][0]}:{info["full"][1]}"',
        f'decimated = "{random_group()}:{free_udp_port()}"',
        "[relay]",
        f'control = "{info["control"]}"',
        f'stats = "{info["stats"]}"',
        f"shared_port = {info['shared_port']}",
        'rcvbuf = "1 MiB"',
    ]
    for name, schema, decimation in channels:
        lines += [
            "[[channels]]",
            f'name = "{name}"',
            f"port = {ports[name]}",
            f'schema = "{SCHEMAS / (schema + ".avsc")}"',
            f"decimation = {decimation}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return info


def two_groups() -> tuple[tuple[str, int], tuple[str, int]]:
    full = random_group()
    decimated = random_group()
    while decimated == full:
        decimated = random_group()
    return (full, free_udp_port()), (decimated, free_udp_port())


class Harness:
    """An engine with channel sockets on 127.0.0.1, subscribers to both groups, a sender."""

    def __init__(self, engine_cls, tmp_path, cache=True, announce_interval=0.2, **kwargs):
        full, decimated = two_groups()
        self.multicast = MulticastConfig(
            interface=LOOPBACK,
            ttl=1,
            loop=True,
            full=full,
            decimated=decimated,
            announce_interval=announce_interval,
        )
        self.cache = tmp_path / "cache" if cache else None
        self.engine = engine_cls(self.cache, self.multicast, **kwargs)
        self.full = Subscriber(*full)
        self.decimated = Subscriber(*decimated)
        self.sender = Sender()
        self.sockets: list[socket.socket] = []
        self.thread: threading.Thread | None = None
        self.closed = False

    def bind(self, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf or 4 << 20)
        sock.bind((LOOPBACK, 0))
        self.sockets.append(sock)
        return sock

    def channel(
        self,
        schema_name: str | Schema,
        name: str | None = None,
        cid: int = 1,
        decimation: int = 1,
        with_port: bool = True,
        rcvbuf: int | None = None,
    ) -> ChannelConfig:
        schema = schema_name if isinstance(schema_name, Schema) else Schema(
            SCHEMAS / f"{schema_name}.avsc"
        )
        sock = self.bind(rcvbuf) if with_port else None
        ch = ChannelConfig(
            name=name or schema.name,
            port=sock.getsockname()[1] if sock else None,
            schema=schema,
            id=cid,
            decimation=decimation,
            time=schema.time_field,
        )
        self.engine.add_channel(ch, sock)
        return ch

    def shared(self) -> int:
        sock = self.bind()
        self.engine.set_shared_socket(sock)
        return sock.getsockname()[1]

    def start(self) -> None:
        self.thread = threading.Thread(target=self.engine.run, daemon=True)
        self.thread.start()

    def counter(self, cid: int, name: str) -> int:
        return self.engine.stats().get(cid, {}).get(name, 0)

    def processed(self, cid: int) -> int:
        s = self.engine.stats().get(cid, {})
        return s.get("datagrams", 0) + s.get("rejected", 0)

    def send_paced(self, port: int, datagrams: list[bytes], cid: int, chunk: int = 32) -> None:
        """Send in chunks, waiting for the engine to take each one (no kernel drops)."""
        base = self.processed(cid)
        for i in range(0, len(datagrams), chunk):
            for d in datagrams[i : i + chunk]:
                self.sender.send(port, d)
            target = base + min(i + chunk, len(datagrams))
            wait_for(lambda t=target: self.processed(cid) >= t)

    def stop(self) -> None:
        if self.thread is not None:
            self.engine.stop()
            self.thread.join(10)
            assert not self.thread.is_alive(), "run() did not return after stop()"
            self.thread = None
        if not self.closed:
            self.engine.close()
            self.closed = True

    def close(self) -> None:
        self.stop()
        for s in self.sockets:
            s.close()
        self.full.close()
        self.decimated.close()
        self.sender.close()


def harness_factory(cls, engine_cls, tmp_path):
    """Body of a fixture: yield a factory of ``cls`` harnesses, close them all after."""
    made = []

    def factory(**kwargs):
        h = cls(engine_cls, tmp_path, **kwargs)
        made.append(h)
        return h

    factory.engine_cls = engine_cls
    try:
        yield factory
    finally:
        for h in made:
            h.close()


class RelayProcess:
    """A relay child process (``python -m speeddata.relay``); its log goes to a file."""

    def __init__(self, info: dict, engine: str, log: Path):
        self.info = info
        self.engine = engine
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> RelayProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "speeddata.relay", "-c", str(self.info["path"])]
                + ["--engine", self.engine],
                stdout=log,
                stderr=log,
            )
        try:
            wait_for_relay(self.info["control"], timeout=timeout)
        except ControlError:
            self.kill()
            raise AssertionError(f"relay did not start:\n{self.log_text()[-4000:]}") from None
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, cmd: dict, check: bool = True, timeout: float = 5.0) -> dict:
        return request(self.info["control"], cmd, timeout=timeout, check=check)

    def status(self) -> dict:
        return self.request({"cmd": "status"})

    def channel(self, name: str, status: dict | None = None) -> dict:
        for ch in (status or self.status())["channels"]:
            if ch["name"] == name:
                return ch
        raise KeyError(name)

    def counters(self, name: str) -> dict:
        return self.channel(name)["counters"]

    def counter(self, name: str, counter: str) -> int:
        return self.counters(name).get(counter, 0)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
