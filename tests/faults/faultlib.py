"""Helpers of the fault suite (issue 10): relay child processes on their own configs, the
three Avro readers (fastavro, Apache ``avro`` for Python, Apache Avro Java), a tally of
what was checked (docs/reliability.md), and the long mode.

Network rule as everywhere in the tests: UDP to 127.0.0.1 only, multicast on interface
127.0.0.1 with TTL 1, kernel-chosen ports, random 239.255.x.y groups.

Long mode: ``SPEEDDATA_FUZZ=1`` (``make fuzz``) runs every case longer and more often;
``SPEEDDATA_FUZZ_SEED`` fixes the random choices (kill moments, clock steps) of a run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import fastavro

from conftest import SCHEMAS, free_udp_port, random_group
from relay_helpers import RelayProcess, wait_for

#: the long mode of ``make fuzz``
FUZZ = os.environ.get("SPEEDDATA_FUZZ", "") not in ("", "0")
#: the seed of this run's random choices (printed in the tally)
SEED = int(os.environ.get("SPEEDDATA_FUZZ_SEED") or random.randrange(1 << 32))

#: what the suite checked in this process; printed at the end (conftest.py)
TALLY: Counter = Counter()


def scaled(normal, fuzz):
    """``normal`` in ``make test``, ``fuzz`` in ``make fuzz``."""
    return fuzz if FUZZ else normal


def rng(name: str) -> random.Random:
    """A random generator per test, from the run's seed (reproducible with the seed)."""
    return random.Random(f"{SEED}-{name}")


def relay_config(
    path: Path,
    ipc_dir: Path,
    cache_dir: Path,
    channels=(("engine", "engine"),),
    *,
    rcvbuf: str = "8 MiB",
    segment_size: str = "256 KiB",
    budget: str = "1 GB",
    shared: bool = False,
    extra: tuple[str, ...] = (),
) -> dict:
    """Write a relay config on free ports; return what a test needs to know of it."""
    info = {
        "path": path,
        "cache": cache_dir,
        "control": f"ipc://{ipc_dir}/control",
        "stats": f"ipc://{ipc_dir}/stats",
        "ports": {name: free_udp_port() for name, _ in channels},
        "shared_port": free_udp_port() if shared else 0,
        "full": (random_group(), free_udp_port()),
        "decimated": (random_group(), free_udp_port()),
    }
    lines = [
        "[cache]",
        f'dir = "{cache_dir}"',
        f'budget = "{budget}"',
        f'segment_size = "{segment_size}"',
        "[multicast]",
        'interface = "127.0.0.1"',
        "ttl = 1",
        'full = "{}:{}"'.format(*info["full"]),
        'decimated = "{}:{}"'.format(*info["decimated"]),
        "[relay]",
        f'control = "{info["control"]}"',
        f'stats = "{info["stats"]}"',
        f"shared_port = {info['shared_port']}",
        f'rcvbuf = "{rcvbuf}"',
        *extra,
    ]
    for name, schema in channels:
        lines += [
            "[[channels]]",
            f'name = "{name}"',
            f"port = {info['ports'][name]}",
            f'schema = "{SCHEMAS / (schema + ".avsc")}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    return info


def short_tmpdir(prefix: str) -> Path:
    """A folder for ipc:// endpoints (their paths are limited to ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class BoundedSender(threading.Thread):
    """Sends ``make(i)`` for i = 0, 1, ... to 127.0.0.1:``port`` from a thread, at most
    ``max_datagrams`` and ``max_seconds``, paced at ``rate`` datagrams a second, until
    ``stop()``. ``sent`` is how many went out (a send refused by the kernel is not
    counted: it never left)."""

    def __init__(self, sock, port: int, make, rate: float, max_datagrams: int,
                 max_seconds: float):
        super().__init__(daemon=True)
        self.sock, self.port, self.make = sock, port, make
        self.rate, self.max_datagrams, self.max_seconds = rate, max_datagrams, max_seconds
        self.sent = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        chunk = max(1, int(self.rate / 100))
        while self.sent < self.max_datagrams and not self._stop_event.is_set():
            elapsed = time.monotonic() - t0
            if elapsed > self.max_seconds:
                break
            ahead = self.sent / self.rate - elapsed
            if ahead > 0:
                time.sleep(min(ahead, 0.05))
                continue
            for _ in range(min(chunk, self.max_datagrams - self.sent)):
                try:
                    self.sock.sendto(self.make(self.sent), ("127.0.0.1", self.port))
                except OSError:  # e.g. ECONNREFUSED reported after the relay died
                    break
                self.sent += 1

    def stop(self) -> int:
        self._stop_event.set()
        self.join(10)
        assert not self.is_alive()
        return self.sent


# -- readers -------------------------------------------------------------------------------


def read_fastavro(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        return list(fastavro.reader(f))


def read_apache_python(path: Path) -> list[dict]:
    """Every record of an object container file, read by the Apache ``avro`` package."""
    import avro.errors
    from avro.datafile import DataFileReader
    from avro.io import DatumReader

    with warnings.catch_warnings():
        # avro 1.12 knows no timestamp-nanos and reads it as the long it is: not a fault
        warnings.simplefilter("ignore", avro.errors.IgnoredLogicalType)
        with open(path, "rb") as f, DataFileReader(f, DatumReader()) as reader:
            return list(reader)


JAVA_JARS = (
    "avro",
    "jackson-core-asl",
    "jackson-mapper-asl",
    "slf4j-api",
    "slf4j-nop",
    "paranamer",
    "commons-compress",
    "xz",
    "snappy-java",
)
JAVA_SOURCE = Path(__file__).with_name("AvroCount.java")


def java_classpath(share: Path = Path("/usr/share/java")) -> str:
    """Debian's libavro-java jar and its dependencies (installed by .ci/run)."""
    jars = [share / f"{name}.jar" for name in JAVA_JARS]
    missing = [str(j) for j in jars if not j.exists()]
    assert not missing and shutil.which("java"), (
        f"Apache Avro Java is not installed (missing {missing or 'java'}): "
        "apt-get install libavro-java default-jre-headless (.ci/run does)"
    )
    return os.pathsep.join(str(j) for j in jars)


class JavaAvroReader:
    """One JVM running AvroCount.java in single-file source mode (java(1), JEP 330: the JRE
    compiles it in memory, no javac needed): a path in, one line out, ``(records, first
    counter, last counter)``, or an AssertionError with Java's exception."""

    def __init__(self):
        cp = java_classpath()
        self.proc = subprocess.Popen(
            ["java", "-cp", cp, str(JAVA_SOURCE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()

    def read(self, path: Path) -> tuple[int, int, int]:
        with self._lock:
            self.proc.stdin.write(f"{path}\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline().strip()
        assert line.startswith("OK "), f"Apache Avro Java cannot read {path}: {line or 'died'}"
        n, first, last = (int(x) for x in line.split()[1:])
        return n, first, last

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()


def tally_line() -> str:
    return json.dumps({"fuzz": FUZZ, "seed": SEED, **dict(sorted(TALLY.items()))})


def wait_quiet(read, timeout: float = 5.0, settle: float = 0.3):
    """Call ``read()`` until its value stays the same for ``settle`` seconds; return it."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return now
    return last


__all__ = [
    "FUZZ",
    "SEED",
    "TALLY",
    "BoundedSender",
    "JavaAvroReader",
    "RelayProcess",
    "read_apache_python",
    "read_fastavro",
    "relay_config",
    "rng",
    "scaled",
    "short_tmpdir",
    "tally_line",
    "wait_for",
    "wait_quiet",
]
