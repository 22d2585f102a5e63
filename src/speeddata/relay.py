"""The relay process: config, engines in threads, crash recovery, retention, control plane.

``speeddata relay -c FILE`` (also ``python -m speeddata.relay -c FILE``) runs it;
``speeddata relay status`` asks a running relay for its counters and prints a table
(both in speeddata.commands.relay).
See docs/relay-internals.md for the engine contract and the control plane.

Threads of a running relay:

- ``--workers N`` engine threads, each running one engine (``speeddata._relay.Engine``,
  or the pure-Python ``speeddata.relay_ref.PyEngine``) over its share of the channels;
- the retention thread: deletes the oldest closed, unpinned segments beyond the cache
  budget every few seconds and whenever a segment was closed, and summarises what the
  cache holds per channel for ``status`` (so that the status never walks the disk);
- the control thread: answers requests on the ZeroMQ REP socket (``relay.control``) and
  publishes the status on the PUB socket (``relay.stats``) once a second;
- the main thread: waits for SIGINT/SIGTERM or a ``stop`` request, then stops the engines
  and closes (trims) every segment, and the process exits 0.

The control plane uses only the engine API, so it works with either engine.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import reprlib
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from . import cache as cachelib
from . import steering
from .config import RESERVED_NAMES, ChannelConfig, Config, channel_name_error
from .errors import SpeedDataError
from .schema import Schema, SchemaError
from .validate import validator_factory
from .wire import SHARED_CHANNEL_ID

__all__ = ["Relay", "RelayError", "engine_class", "die_with_parent", "check_multicast_interface"]

log = logging.getLogger("speeddata.relay")


def set_thread_nice(nice: int) -> bool:
    """Give the calling thread (and the threads it starts) the scheduling priority
    ``nice`` (setpriority(2) on the thread id). A receive loop takes the default -10 while
    it is behind (the engine's priority while behind, docs/relay-internals.md): it then
    runs above the kernel's writeback workers and a local sender; without it, on a machine
    with few cores, the page-cache writeback of a busy cache takes the loop's core for
    long enough to overflow its socket buffers (docs/performance.md, "Zero loss"). False
    when not permitted (with a warning, once per process: every worker's loop asks)."""
    global _nice_refused
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except PermissionError:
        if not _nice_refused:
            _nice_refused = True
            log.warning(
                "relay.nice = %d refused (it needs root or CAP_SYS_NICE): the receive "
                "loops run at normal priority; set relay.nice = 0 to silence this",
                nice,
            )
        return False
    return True


_nice_refused = False  # the refusal was logged

#: file, in the cache folder, of the channels added and removed at run time
CHANNELS_FILE = "relay-channels.json"
#: seconds between retention passes (also run whenever a segment was closed)
RETENTION_INTERVAL = 2.0
#: seconds between two status publications on relay.stats
PUBLISH_INTERVAL = 1.0
#: Relay.wait() is woken by its signals and by request_stop() (a wake-up socket); this
#: is only the longest it sleeps between two looks at the stop flags
WAIT_POLL = 5.0
#: the retention thread's longest sleep: it notices a new segment within this time
RETENTION_POLL = 1.0
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
#: set to "1" by a supervisor: the relay stops when its parent process dies
DIE_WITH_PARENT_ENV = "SPEEDDATA_DIE_WITH_PARENT"

#: a control request larger than this is answered with an error
CONTROL_REQUEST_LIMIT = 1 << 20
#: ZeroMQ drops the connection of a peer sending a larger message (ZMQ_MAXMSGSIZE)
CONTROL_MESSAGE_LIMIT = 64 << 20
#: error replies are cut to this many characters (they may quote what was sent)
ERROR_LIMIT = 1000
#: seconds between two summaries of rejects or storing failures of a channel in the log
PROBLEM_SUMMARY_INTERVAL = 60.0
#: keys of each control request besides "cmd"
_REQUEST_KEYS = {
    "status": (),
    "add": ("channel",),
    "remove": ("name",),
    "rotate": ("name",),
    "stop": (),
}
#: the smallest segment the relay fits to a small file system (cache.segment_size's minimum)
MIN_SEGMENT_SIZE = 64 * 1024

_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 80
_shown.maxlevel = 3


class RelayError(SpeedDataError, RuntimeError):
    """The relay cannot start or do what was asked; the message says why and the fix."""


def engine_class(choice: str | None) -> tuple[type, str]:
    """The engine class for ``--engine`` (compiled, python, or None: compiled if built)."""
    if choice == "python":
        from .relay_ref import PyEngine  # imported only when used: ~1 MB of RSS

        return PyEngine, "python"
    try:
        from ._relay import Engine
    except ImportError as exc:
        if choice == "compiled":
            raise RelayError(
                f"the compiled engine is not available ({exc}); build it with "
                "`make install` (or `python setup.py build_ext --inplace`), "
                "or run with --engine python"
            ) from exc
        log.warning("compiled engine not available (%s); using the pure-Python engine", exc)
        from .relay_ref import PyEngine

        return PyEngine, "python"
    return Engine, "compiled"


@dataclass
class _Served:
    """A channel the relay serves: its config, socket and engine."""

    config: ChannelConfig
    sock: socket.socket | None
    engine: int
    rcvbuf: int | None
    runtime: bool  # added over the control socket (persisted in relay-channels.json)


class _LiveOpenSegments:
    """``path in x`` asks the engines now, so retention never deletes a segment that was
    opened after it listed the cache."""

    def __init__(self, engines):
        self.engines = engines

    def __contains__(self, path) -> bool:
        return any(path in e.open_segments() for e in self.engines)


#: how to fix an address that is not this host's (relay.listen, multicast.interface,
#: the control and stats endpoints)
NOT_LOCAL_FIX = (
    "give the IPv4 address of this host's interface on the network it should use "
    "(`ip -4 addr` lists them), or 127.0.0.1 to stay on this host"
)


def check_multicast_interface(multicast) -> None:
    """Raise RelayError unless multicast to ``multicast.full`` can leave by
    ``multicast.interface``. ip(7) IP_MULTICAST_IF takes only an address of one of this
    host's interfaces, else EADDRNOTAVAIL; with 0.0.0.0 the routing table chooses, and a
    host without a route for the group (no default route, no 224.0.0.0/4) fails every
    send, counted as ``multicast_errors`` while nothing leaves. connect(2) on a UDP socket
    looks the route up the way a send does (for a multicast destination, by the
    IP_MULTICAST_IF interface) and sends nothing. Both engines set the option on their
    send sockets; checking once here names the key instead of failing in an engine."""
    interface = multicast.interface
    group = "{}:{}".format(*multicast.full)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
            )
        except OSError as exc:
            raise RelayError(
                f"multicast.interface {interface}: multicast cannot leave by it "
                f"({exc.strerror}); it is not an address of this host: {NOT_LOCAL_FIX}"
            ) from None
        try:
            sock.connect(multicast.full)
        except OSError as exc:
            raise RelayError(
                f"multicast.full {group}: no route to it by multicast.interface {interface} "
                f"({exc.strerror}): {NOT_LOCAL_FIX}, or add a route for 224.0.0.0/4"
            ) from None
    finally:
        sock.close()


class Relay:
    """One relay: call ``start()``, then ``wait()`` until stopped, then ``close()``."""

    def __init__(self, config: Config, engine: str | None = None, workers: int | None = None):
        self.config = config
        self.engine_cls, self.engine_name = engine_class(engine)
        self.workers = workers or config.relay.workers
        if self.workers < 1:
            raise RelayError(f"--workers {self.workers}: must be at least 1")
        self.cache_dir = config.cache.dir.resolve() if config.cache.enabled else None
        self.state_dir = config.cache.dir.resolve()
        self.engines: list = []
        self.channels: dict[str, _Served] = {}
        self.shared_socks: list[socket.socket] = []  # one, or one per engine when steered
        self.steered = False  # the kernel steers shared-port datagrams to their engine
        self.shared_rcvbuf: int | None = None
        self.removed: set[str] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._signalled = False  # set by stop_from_signal(), which may take no lock
        self._retention_wake = threading.Event()
        # request_stop() (and a signal, through signal.set_wakeup_fd) writes a byte here:
        # wait() and the control thread sleep on it instead of polling the flags
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._threads: list[threading.Thread] = []
        self._engine_threads: list[threading.Thread] = []
        self._cache_summary: dict[str, dict] = {}
        self._cache_total: dict = {}
        self._deleted_segments = 0
        self._ctx: zmq.Context | None = None
        self._cache_lock: int | None = None  # fd holding the cache folder's relay.lock
        self._rep = self._pub = None
        self.started_ns = time.time_ns()
        self.exit_code = 0
        self._started = False  # start() succeeded
        self.segment_size = config.cache.segment_size  # fitted to the space by start()
        self.problems = ProblemLog()

    # -- start -------------------------------------------------------------------------

    def start(self) -> None:
        """Recover the cache, bind every socket, start the threads. Raises RelayError."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._cache_lock = cachelib.lock_cache(self.state_dir)  # one relay per folder
        except cachelib.CacheBusy as exc:
            raise RelayError(str(exc)) from None
        try:
            if self.cache_dir is not None:
                self._recover()
            channels = self._channels_to_serve()
            if self.cache_dir is not None:
                self.segment_size = self._fit_segment_size(len(channels))
            self._bind_control()
            check_multicast_interface(self.config.multicast)
            self.engines = [self._make_engine() for _ in range(self.workers)]
            if self.config.relay.shared_port:
                self._bind_shared()
            for ch, runtime in channels:
                self._serve(ch, runtime)
            self._steer()
        except BaseException as exc:
            self._close_sockets()
            self.exit_code = 2
            log.error("failed to start: %s", exc if isinstance(exc, RelayError) else repr(exc))
            raise
        self._started = True
        for i, engine in enumerate(self.engines):
            t = threading.Thread(
                target=self._run_engine, args=(engine,), name=f"engine-{i}", daemon=True
            )
            t.start()
            self._engine_threads.append(t)
        for target, name in ((self._retention_loop, "retention"), (self._control_loop, "control")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        release_startup_memory()
        log.info(
            "relaying %d channel(s) with %d %s engine(s); control %s, stats %s",
            len(self.channels),
            self.workers,
            self.engine_name,
            self.config.relay.control,
            self.config.relay.stats,
        )

    def _bind_shared(self) -> None:
        """The shared port: one socket on engine 0, or with ``--workers N`` one socket per
        engine in a reuseport group that the kernel steers by fingerprint (steering.py).
        Where the kernel cannot steer, one socket on engine 0, which serves every
        channel without a port."""
        port, what = self.config.relay.shared_port, "the shared port (relay.shared_port)"
        if self.workers > 1:
            try:
                for _ in self.engines:
                    sock, rcvbuf = self._bind(port, what, reuseport=True)
                    self.shared_socks.append(sock)
                    self.shared_rcvbuf = self.shared_rcvbuf or rcvbuf
                steering.attach(self.shared_socks[0], {})  # all to engine 0 until _steer
                self.steered = True
            except (RelayError, OSError) as exc:
                for sock in self.shared_socks:
                    sock.close()
                self.shared_socks = []
                self.shared_rcvbuf = None
                log.warning(
                    "with --workers %d the shared port routes only to the channels of "
                    "worker 0 (channels without a port are all put there): %s",
                    self.workers,
                    exc,
                )
        if not self.steered:
            sock, self.shared_rcvbuf = self._bind(port, what)
            self.shared_socks = [sock]
        for engine, sock in zip(self.engines, self.shared_socks, strict=False):
            engine.set_shared_socket(sock)

    def _steer(self) -> None:
        """Point every served fingerprint at its engine (the lowest channel id wins a
        fingerprint that two channels share, as inside an engine)."""
        if not self.steered:
            return
        routes: dict[bytes, tuple[int, int]] = {}
        for s in self.channels.values():
            cid = s.config.id
            for fp in s.config.schema.fingerprints:
                if fp not in routes or cid < routes[fp][0]:
                    routes[fp] = (cid, s.engine)
        steering.attach(self.shared_socks[0], {fp: e for fp, (_, e) in routes.items()})

    def _recover(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        recovered = cachelib.recover_cache(self.cache_dir, validator_factory())
        for seg, good, dropped in recovered:
            log.info(
                "recovered %s: %d complete block(s) kept, %d index entr%s dropped",
                seg.avro,
                good,
                dropped,
                "y" if dropped == 1 else "ies",
            )

    def _fit_segment_size(self, n_channels: int) -> int:
        """cache.segment_size, or less when the cache's file system (or budget) cannot
        hold two segments per channel (the one being written and one closed, so that
        retention has something to delete): then the largest size that fits, with a
        warning. Raises RelayError when not even 64 KiB segments fit."""
        want = self.config.cache.segment_size
        st = os.statvfs(self.cache_dir)
        free = st.f_bavail * st.f_frsize
        held = sum(cachelib.segment_bytes(s) for s in cachelib.cache_segments(self.cache_dir))
        budget = cachelib.budget_bytes(self.config.cache.budget, self.cache_dir)
        space = min(free + held, budget)
        per_segment = space // (2 * max(1, n_channels))
        if want <= per_segment:
            return want
        fitted = per_segment // MIN_SEGMENT_SIZE * MIN_SEGMENT_SIZE
        where = (
            f"the cache {self.cache_dir} has {space:,} bytes to use "
            f"({free:,} free on its file system, {held:,} in segments, "
            f"budget {budget:,})"
        )
        if fitted < MIN_SEGMENT_SIZE:
            raise RelayError(
                f"{where}: too little for {n_channels} channel(s) of at least two "
                f"{MIN_SEGMENT_SIZE // 1024} KiB segments each; free space there, give "
                "cache.dir a larger file system, raise cache.budget, or turn the cache off "
                "(cache.enabled = false)"
            )
        log.warning(
            "%s: cache.segment_size %s does not fit twice per channel (%d channel(s)); "
            "using %d-byte segments. Set cache.segment_size to at most %d to silence this",
            where,
            f"{want:,}",
            n_channels,
            fitted,
            fitted,
        )
        return fitted

    def _make_engine(self):
        c = self.config
        engine = self.engine_cls(
            self.cache_dir,
            c.multicast,
            segment_size=self.segment_size,
            segment_age=c.cache.segment_age,
            flush_interval=c.cache.flush_interval,
            batch=c.relay.batch,
            coalesce=c.relay.coalesce,
            rejected_dir=self.cache_dir / "rejected"
            if c.relay.keep_rejected and self.cache_dir
            else None,
        )
        if not c.cache.segment_map and hasattr(engine, "_use_map"):
            engine._use_map = False  # blocks by pwritev: no populated map in the RSS
        return engine

    def _bind_control(self) -> None:
        self._ctx = zmq.Context()
        self._rep = self._ctx.socket(zmq.REP)
        self._pub = self._ctx.socket(zmq.PUB)
        for sock, endpoint, key in (
            (self._rep, self.config.relay.control, "relay.control"),
            (self._pub, self.config.relay.stats, "relay.stats"),
        ):
            sock.setsockopt(zmq.LINGER, 0)
            if sock is self._rep:
                sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_MESSAGE_LIMIT)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise RelayError(
                        f"cannot bind {key} {endpoint}: {exc}; its address is not one of "
                        f"this host's: {NOT_LOCAL_FIX}"
                    ) from exc
                raise RelayError(
                    f"cannot bind {key} {endpoint}: {exc}; is another relay running? "
                    f"pick another endpoint in the config"
                ) from exc

    def _bind(
        self, port: int, what: str, reuseport: bool = False
    ) -> tuple[socket.socket, int]:
        """A UDP socket on relay.listen:port with SO_RCVBUF = relay.rcvbuf -> (sock, effective)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        want = self.config.relay.rcvbuf
        try:
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
            # socket(7): the kernel doubles the value and caps it at net.core.rmem_max.
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 < want:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)
                except OSError:
                    pass  # not privileged: reported below
            effective = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
            if effective < want:
                log.warning(
                    "%s: receive buffer capped at %d bytes (relay.rcvbuf = %d); raise it "
                    "with `sysctl -w net.core.rmem_max=%d`",
                    what,
                    effective,
                    want,
                    want,
                )
            sock.bind((self.config.relay.listen, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRNOTAVAIL:
                raise RelayError(
                    f"cannot bind {what} to {self.config.relay.listen}:{port}: "
                    f"{exc.strerror}; relay.listen {self.config.relay.listen} is not an "
                    f"address of this host: {NOT_LOCAL_FIX}, or 0.0.0.0 for every interface"
                ) from exc
            raise RelayError(
                f"cannot bind {what} to {self.config.relay.listen}:{port}: {exc.strerror}; "
                "is another relay or program using it? pick another port"
            ) from exc
        return sock, effective

    # -- channels ----------------------------------------------------------------------

    def _channels_file(self) -> Path:
        return self.state_dir / CHANNELS_FILE

    def _channels_to_serve(self) -> list[tuple[ChannelConfig, bool]]:
        """The config's channels, less those removed at run time, plus those added."""
        added, self.removed = self._load_runtime_channels()
        out = [(ch, False) for ch in self.config.channels if ch.name not in self.removed]
        names = {ch.name for ch, _ in out}
        ports = {ch.port for ch, _ in out if ch.port} | {self.config.relay.shared_port}
        ids = {ch.id for ch, _ in out}
        for ch in added:
            if ch.name in names or (ch.port and ch.port in ports):
                log.warning(
                    "%s: channel %r added at run time clashes with the config (name or "
                    "port %s); not served. Remove it with "
                    '{"cmd": "remove", "name": %r} or edit the file',
                    self._channels_file(),
                    ch.name,
                    ch.port,
                    ch.name,
                )
                continue
            if ch.id in ids:
                ch = _replace_id(ch, max(ids | {0}) + 1)
            out.append((ch, True))
            names.add(ch.name)
            ports.add(ch.port)
            ids.add(ch.id)
        return out

    def _load_runtime_channels(self) -> tuple[list[ChannelConfig], set[str]]:
        path = self._channels_file()
        if not path.exists():
            return [], set()
        try:
            doc = json.loads(path.read_text())
            added = []
            for raw in doc.get("added", []):
                name = raw.get("name") if isinstance(raw, dict) else None
                if isinstance(name, str) and name.lower() in RESERVED_NAMES:
                    # added before names were checked: its files would mix with the cache's
                    log.warning(
                        "%s: channel %r added at run time has a reserved name (%s); not "
                        "served. Add it again under another name",
                        path,
                        name,
                        ", ".join(sorted(RESERVED_NAMES)),
                    )
                    continue
                added.append(_channel_from_json(raw, None))
            removed = set(doc.get("removed", []))
        except (SpeedDataError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise RelayError(
                f"{path}: cannot read the channels added at run time ({exc}); fix or delete "
                "the file (deleting it forgets runtime adds and removes)"
            ) from exc
        return added, removed

    def _save_runtime_channels(self) -> None:
        added = [_channel_to_json(s.config) for s in self.channels.values() if s.runtime]
        cachelib.write_json_atomic(
            self._channels_file(),
            {"added": sorted(added, key=lambda c: c["id"]), "removed": sorted(self.removed)},
        )

    def _serve(self, ch: ChannelConfig, runtime: bool) -> None:
        sock = rcvbuf = None
        if ch.port:
            sock, rcvbuf = self._bind(ch.port, f"channel {ch.name!r}")
        if self.workers == 1 or (ch.port is None and not self.steered):
            index = 0
        else:  # the engine with the fewest channels
            load = [0] * self.workers
            for s in self.channels.values():
                load[s.engine] += 1
            index = load.index(min(load))
        try:
            self.engines[index].add_channel(ch, sock)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        self.channels[ch.name] = _Served(ch, sock, index, rcvbuf, runtime)

    def add_channel(self, raw: dict) -> ChannelConfig:
        """Serve a channel described by a JSON object (an ``add`` request); persist it."""
        with self._lock:
            if not isinstance(raw, dict):
                raise RelayError('"channel" must be an object: {name, port, schema, ...}')
            used_ids = {s.config.id for s in self.channels.values()}
            if "id" not in raw:
                raw = dict(raw, id=max(used_ids | {0}) + 1)
            base = self.config.path.resolve().parent if self.config.path else Path.cwd()
            ch = _channel_from_json(raw, base)  # checks every field first
            if ch.name in self.channels:
                raise RelayError(f"channel {ch.name!r} exists already; remove it first")
            if ch.id in used_ids:
                raise RelayError(f"channel id {ch.id} is used by another channel")
            if ch.port is not None:
                if ch.port == self.config.relay.shared_port:
                    raise RelayError(f"port {ch.port} is the shared port (relay.shared_port)")
                for s in self.channels.values():
                    if s.config.port == ch.port:
                        raise RelayError(f"port {ch.port} is used by channel {s.config.name!r}")
            self._serve(ch, runtime=True)
            self._steer()
            self._save_runtime_channels()
            log.info("added channel %r (id %d, port %s)", ch.name, ch.id, ch.port)
            return ch

    def remove_channel(self, name: str) -> None:
        """Stop serving a channel (its segment is closed and kept); persist the removal."""
        with self._lock:
            served = self.channels.get(name)
            if served is None:
                raise RelayError(f"no channel {name!r}; channels: {sorted(self.channels)}")
            self.engines[served.engine].remove_channel(served.config.id)
            if served.sock is not None:
                served.sock.close()
            del self.channels[name]
            self._steer()
            if not served.runtime or any(c.name == name for c in self.config.channels):
                self.removed.add(name)
            self._save_runtime_channels()
            self._retention_wake.set()
            log.info("removed channel %r", name)

    def rotate(self, name: str | None = None) -> None:
        """Close the current segment of one channel, or of all."""
        with self._lock:
            if name is None:
                for engine in self.engines:
                    engine.rotate()
            else:
                served = self.channels.get(name)
                if served is None:
                    raise RelayError(f"no channel {name!r}; channels: {sorted(self.channels)}")
                self.engines[served.engine].rotate(served.config.id)
        self._retention_wake.set()

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict:
        """The status reply (docs/relay-internals.md, "Control plane")."""
        with self._lock:
            stats: dict[int, dict] = {}
            shared_stats: dict[str, int] | None = None
            rejects: dict[int, dict[str, int]] = {}
            unknown_fps: dict[str, int] = {}
            for engine in self.engines:
                for cid, reasons in engine.rejects().items():
                    total = rejects.setdefault(cid, {})
                    for reason, n in reasons.items():
                        total[reason] = total.get(reason, 0) + n
                for fp, n in engine.unknown_fingerprints().items():
                    unknown_fps[fp] = unknown_fps.get(fp, 0) + n
                engine_stats = engine.stats()
                shared = engine_stats.pop(SHARED_CHANNEL_ID, None)
                if shared is not None:  # summed over the engines' shared sockets
                    shared_stats = shared_stats or dict.fromkeys(shared, 0)
                    for key, value in shared.items():
                        shared_stats[key] = shared_stats.get(key, 0) + value
                stats.update(engine_stats)
            channels = []
            for s in sorted(self.channels.values(), key=lambda s: s.config.id):
                ch = s.config
                channels.append(
                    {
                        "name": ch.name,
                        "id": ch.id,
                        "port": ch.port,
                        "decimation": ch.decimation,
                        "time": ch.schema.time_field,
                        "fingerprint": ch.schema.fingerprint_hex,
                        "engine": s.engine,
                        "rcvbuf": s.rcvbuf,
                        "runtime": s.runtime,
                        "counters": stats.get(ch.id, {}),
                        "rejects": rejects.get(ch.id, {}),
                        "store_error": _errno_text(stats.get(ch.id, {}).get("store_errno")),
                        "cache": self._cache_summary.get(ch.name),
                    }
                )
            now = time.time_ns()
            return {
                "ok": True,
                "pid": os.getpid(),
                "engine": self.engine_name,
                "workers": self.workers,
                "started_ns": self.started_ns,
                "now_ns": now,
                "uptime": (now - self.started_ns) / 1e9,
                "rcvbuf_requested": self.config.relay.rcvbuf,
                # receive loop passes that took datagrams, and of them those that waited
                # relay.coalesce for more (docs/relay-internals.md, "Coalescing")
                "loop": {
                    "coalesce": self.config.relay.coalesce,
                    "wakeups": sum(e.wakeups for e in self.engines),
                    "coalesced": sum(e.coalesced for e in self.engines),
                    "boosts": sum(e.boosts for e in self.engines),
                },
                "multicast": {
                    "full": "{}:{}".format(*self.config.multicast.full),
                    "decimated": "{}:{}".format(*self.config.multicast.decimated),
                    "interface": self.config.multicast.interface,
                },
                "cache": dict(
                    self._cache_total,
                    enabled=self.cache_dir is not None,
                    dir=str(self.cache_dir) if self.cache_dir else None,
                    deleted_segments=self._deleted_segments,
                ),
                "shared": None
                if not self.shared_socks
                else {
                    "port": self.config.relay.shared_port,
                    "rcvbuf": self.shared_rcvbuf,
                    "counters": shared_stats or {},
                    "rejects": rejects.get(SHARED_CHANNEL_ID, {}),
                    "unknown_fingerprints": unknown_fps,
                },
                "channels": channels,
            }

    def answer(self, frames: list[bytes]) -> dict:
        """The reply to one request as received (its ZeroMQ frames), however malformed;
        never raises."""
        if len(frames) != 1:
            return _error(f"a request is one frame of JSON, not {len(frames)} frames")
        raw = frames[0]
        if len(raw) > CONTROL_REQUEST_LIMIT:
            return _error(
                f"a request is at most {CONTROL_REQUEST_LIMIT} bytes, this one has {len(raw)}"
            )
        try:
            req = json.loads(raw)
        except RecursionError:
            return _error("the request is not JSON the relay reads: nested too deeply")
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(f"the request is not JSON: {exc}")
        return self.handle(req)

    def handle(self, req) -> dict:
        """Answer one control request (a decoded JSON object); never raises."""
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return _error(
                'a request is a JSON object with "cmd": status, add, remove, rotate, stop'
            )
        cmd = req["cmd"]
        if cmd not in _REQUEST_KEYS:
            return _error(
                f"unknown cmd {_shown.repr(cmd)}; use status, add, remove, rotate or stop"
            )
        unknown = [k for k in req if k != "cmd" and k not in _REQUEST_KEYS[cmd]]
        if unknown:
            allowed = ", ".join(("cmd", *_REQUEST_KEYS[cmd]))
            return _error(
                f"{cmd}: unknown key(s) {_shown.repr(sorted(unknown))}; allowed: {allowed}"
            )
        name = req.get("name")
        if cmd in ("remove", "rotate") and not (
            isinstance(name, str) or (cmd == "rotate" and name is None)
        ):
            return _error(
                f'{cmd}: "name" must be a channel name (a string), not {_shown.repr(name)}'
            )
        try:
            if cmd == "status":
                return self.status()
            if cmd == "add":
                if "channel" not in req:
                    return _error('add: "channel" is missing: {name, port, schema, ...}')
                ch = self.add_channel(req["channel"])
                return {"ok": True, "name": ch.name, "id": ch.id, "port": ch.port}
            if cmd == "remove":
                self.remove_channel(name)
                return {"ok": True}
            if cmd == "rotate":
                self.rotate(name)
                return {"ok": True}
            self.request_stop()
            return {"ok": True}
        except (SpeedDataError, ValueError, KeyError, OSError) as exc:
            return _error(str(exc))
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("control request %s failed", _shown.repr(req))
            return _error(f"internal error: {_shown.repr(exc)} (see the relay's log)")

    # -- threads -----------------------------------------------------------------------

    def _run_engine(self, engine) -> None:
        nice = self.config.relay.nice
        tid = threading.get_native_id()
        base = os.getpriority(os.PRIO_PROCESS, tid)
        if nice < base:
            # a higher priority, taken only while behind (docs/relay-internals.md): asked
            # once here, so that a refusal is logged once and the loop never asks
            if set_thread_nice(nice):
                os.setpriority(os.PRIO_PROCESS, tid, base)
                engine._boost_nice = nice
        elif nice > base:
            set_thread_nice(nice)  # a lower priority holds for the whole run
        try:
            engine.run()
        except BaseException:
            log.exception("an engine failed; stopping the relay")
            self.exit_code = 1
            self.request_stop()

    def _control_loop(self) -> None:
        """Answer requests and publish the status once a second. No request, however
        malformed, stops or wedges it: each gets a reply (or, past ZMQ_MAXMSGSIZE, its
        connection is dropped by ZeroMQ), a refused one is logged, the next is served."""
        poller = self._control_poller()
        next_publish = time.monotonic()
        publish_failed = False
        try:
            while not self._stop.is_set():
                # asleep until a request, the next publication or request_stop()
                timeout = max(0.0, next_publish - time.monotonic())
                if poller.poll(int(timeout * 1000) + 1) and not self._serve_request():
                    poller = self._control_poller()  # the REP socket was replaced
                if time.monotonic() >= next_publish:
                    next_publish = time.monotonic() + PUBLISH_INTERVAL
                    try:
                        status = self.status()
                        self.problems.update(time.monotonic(), status)
                        self._pub.send(json.dumps(status).encode())
                        publish_failed = False
                    except Exception:
                        if not publish_failed:  # once until it works again
                            log.exception("publishing the status failed; trying every second")
                        publish_failed = True
        except BaseException:
            if not self._stop.is_set():
                log.exception("the control thread failed; stopping the relay")
                self.exit_code = 1
                self.request_stop()

    def _control_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self._rep, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        return poller

    def _serve_request(self) -> bool:
        """Receive one request, send its reply; False when the REP socket had to be
        replaced (a reply it could not send)."""
        try:
            frames = self._rep.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return True
        try:
            reply = self.answer(frames)
        except Exception as exc:  # answer() never raises; kept so that nothing can
            log.exception("control request failed")
            reply = _error(f"internal error: {_shown.repr(exc)} (see the relay's log)")
        if not reply.get("ok"):
            log.warning("control request refused: %s", reply.get("error"))
        try:
            self._rep.send(json.dumps(reply).encode())
        except zmq.ZMQError as exc:
            log.error("cannot send a control reply (%s); reopening %s", exc,
                      self.config.relay.control)
            self._reopen_rep()
            return False
        return True

    def _reopen_rep(self) -> None:
        """A fresh REP socket on relay.control (one that cannot reply is stuck for good)."""
        self._rep.close(linger=0)
        self._rep = self._ctx.socket(zmq.REP)
        self._rep.setsockopt(zmq.LINGER, 0)
        self._rep.setsockopt(zmq.MAXMSGSIZE, CONTROL_MESSAGE_LIMIT)
        for _ in range(50):  # tcp:// may need a moment until the old bind is gone
            try:
                self._rep.bind(self.config.relay.control)
                return
            except zmq.ZMQError:
                time.sleep(0.1)
        raise RelayError(f"cannot bind relay.control {self.config.relay.control} again")

    def _retention_loop(self) -> None:
        last_segments = -1
        next_pass = 0.0
        while not self._stop.is_set():
            opened = sum(c.get("segments", 0) for e in self.engines for c in e.stats().values())
            now = time.monotonic()
            if self._retention_wake.is_set() or opened != last_segments or now >= next_pass:
                self._retention_wake.clear()
                last_segments = opened
                next_pass = now + RETENTION_INTERVAL
                try:
                    self.retention_pass()
                except Exception:  # keep relaying; the next pass tries again
                    log.exception("retention pass failed")
            self._retention_wake.wait(RETENTION_POLL)

    def retention_pass(self) -> None:
        """Enforce the budget and age, then summarise the cache for ``status``."""
        if self.cache_dir is None:
            return
        budget = cachelib.budget_bytes(self.config.cache.budget, self.cache_dir)
        deleted = cachelib.enforce_retention(
            self.cache_dir,
            budget,
            self.config.cache.max_age,
            open_segments=_LiveOpenSegments(self.engines),
        )
        for seg in deleted:
            log.info("retention: deleted %s", seg.avro)
        with self._lock:
            names = list(self.channels)
        summary = {name: cachelib.channel_summary(self.cache_dir, name) for name in names}
        segments = cachelib.cache_segments(self.cache_dir)
        # bytes: of data; allocated: on disk (segments being written are pre-allocated)
        total = sum(cachelib.segment_data_bytes(s) for s in segments)
        allocated = sum(cachelib.segment_bytes(s) for s in segments)
        with self._lock:
            self._deleted_segments += len(deleted)
            self._cache_summary = summary
            self._cache_total = {"bytes": total, "allocated": allocated, "budget_bytes": budget}

    # -- stop --------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the relay to stop (any thread, signal handlers included)."""
        self._stop.set()
        self._retention_wake.set()
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # already woken (the pipe is full), or closed

    def stop_from_signal(self, signum=None, frame=None) -> None:
        """Signal handler: ask :meth:`wait` to return.

        It only sets a flag. A handler runs in the main thread between two bytecodes,
        possibly while that thread holds the lock inside ``self._stop`` (every
        ``Event.wait`` takes it for a moment), so ``Event.set()`` here could deadlock the
        relay with SIGTERM pending forever. :meth:`wait` looks at the flag when the
        signal's byte wakes it (``signal.set_wakeup_fd``)."""
        self._signalled = True

    def wait(self) -> None:
        """Block until :meth:`request_stop` (any thread) or :meth:`stop_from_signal`.

        Asleep on the wake-up socket, which request_stop() and (in the main thread, via
        ``signal.set_wakeup_fd``) every handled signal write to: no periodic wake-up."""
        try:
            previous = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        except ValueError:
            previous = None  # not the main thread: request_stop() still wakes it
        try:
            while not self._signalled and not self._stop.is_set():
                select.select([self._wake_r], [], [], WAIT_POLL)
                if not (self._signalled or self._stop.is_set()):
                    _drain(self._wake_r)  # a signal without a stop (none today)
        finally:
            if previous is not None:
                signal.set_wakeup_fd(previous)

    def close(self) -> None:
        """Stop the engines, close (trim) every segment, close every socket."""
        self.request_stop()
        for engine in self.engines:
            engine.stop()
        for t in self._engine_threads:
            t.join(10)
        for i, engine in enumerate(self.engines):
            t = self._engine_threads[i] if i < len(self._engine_threads) else None
            if t is None or not t.is_alive():
                engine.close()
            else:
                log.error("%s did not stop within 10 s; its segments stay open", t.name)
        for t in self._threads:
            t.join(5)
        self._close_sockets()
        if not self._started:
            log.error("stopped: the relay failed to start")
        elif self.exit_code:
            log.error("stopped after a failure (exit status %d)", self.exit_code)
        else:
            log.info("stopped")

    def _close_sockets(self) -> None:
        for s in self.channels.values():
            if s.sock is not None:
                s.sock.close()
        for sock in self.shared_socks:
            sock.close()
        for sock in (self._rep, self._pub):
            if sock is not None:
                sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._cache_lock is not None:
            os.close(self._cache_lock)
            self._cache_lock = None


def release_startup_memory() -> None:
    """Give back what starting left in the heap: the garbage of config parsing and schema
    compilation, and the free pages glibc keeps at the top of its arenas (malloc_trim(3)).
    About 2 MB of a relay's ~30 MB RSS (docs/scaling.md, "Footprint"); once, at start."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass  # empty (BlockingIOError) or closed


def _error(message: str) -> dict:
    if len(message) > ERROR_LIMIT:
        message = message[: ERROR_LIMIT - 3] + "..."
    return {"ok": False, "error": message}


def _errno_text(code: int | None) -> str | None:
    """``"ENOSPC: No space left on device"`` for an errno, None for 0/None."""
    if not code:
        return None
    return f"{errno.errorcode.get(code, f'errno {code}')}: {os.strerror(code)}"


class ProblemLog:
    """Says in the log why records are missing, from the status the control thread
    makes once a second (so the engines' loops never log): the first reject of each
    channel and reason, the first storing failure of a channel (with its errno), then
    at most one summary per channel every PROBLEM_SUMMARY_INTERVAL seconds while it goes
    on, and when storing works again."""

    def __init__(self, interval: float | None = None):
        self.interval = PROBLEM_SUMMARY_INTERVAL if interval is None else interval
        self.seen_reasons: set[tuple[str, str]] = set()
        self.rejects: dict[str, dict[str, int]] = {}  # at the last summary
        self.reject_due: dict[str, float] = {}
        self.failed: dict[str, int] = {}  # store_failed at the last summary
        self.failing: dict[str, bool] = {}
        self.store_due: dict[str, float] = {}
        self.last_failed: dict[str, int] = {}

    def update(self, now: float, status: dict) -> None:
        rows = [(ch["name"], ch) for ch in status.get("channels", [])]
        if status.get("shared"):
            rows.append(("(shared port)", status["shared"]))
        for name, row in rows:
            self._rejects(now, name, row.get("rejects") or {}, row)
            if name != "(shared port)":
                self._store(now, name, row.get("counters") or {})

    def _rejects(self, now: float, name: str, reasons: dict, row: dict) -> None:
        for reason in sorted(reasons):
            if (name, reason) not in self.seen_reasons:
                self.seen_reasons.add((name, reason))
                extra = ""
                if reason == "unknown_fingerprint" and row.get("unknown_fingerprints"):
                    fps = ", ".join(sorted(row["unknown_fingerprints"]))
                    extra = f" (fingerprints: {fps})"
                log.warning(
                    "channel %s: rejected a datagram: %s%s; the status counts rejects by "
                    "reason (speeddata relay status)",
                    name,
                    reason,
                    extra,
                )
                if name not in self.rejects:  # the summaries count from here
                    self.rejects[name] = dict(reasons)
                    self.reject_due[name] = now + self.interval
        last = self.rejects.get(name)
        if last is None or now < self.reject_due.get(name, now):
            return
        grown = {r: n - last.get(r, 0) for r, n in reasons.items() if n > last.get(r, 0)}
        if grown:
            log.warning(
                "channel %s: %d datagram(s) rejected in the last %.0f s: %s",
                name,
                sum(grown.values()),
                self.interval,
                ", ".join(f"{r} {n}" for r, n in sorted(grown.items())),
            )
        self.rejects[name] = dict(reasons)
        self.reject_due[name] = now + self.interval

    def _store(self, now: float, name: str, counters: dict) -> None:
        failed = counters.get("store_failed", 0)
        previous = self.last_failed.get(name, 0)
        self.last_failed[name] = failed
        why = _errno_text(counters.get("store_errno")) or "unknown error"
        if failed > previous and not self.failing.get(name):
            self.failing[name] = True
            hint = ""
            if counters.get("store_errno") in (errno.ENOSPC, errno.EDQUOT):
                hint = " (free space on the cache's file system, or lower cache.budget)"
            log.warning(
                "channel %s: cannot store datagrams: %s%s; multicast goes on, retrying "
                "every second",
                name,
                why,
                hint,
            )
            self.failed[name] = previous
            self.store_due[name] = now + self.interval
            return
        if not self.failing.get(name):
            return
        if failed == previous:  # nothing failed since the last look: storing again
            self.failing[name] = False
            log.warning(
                "channel %s: storing again (%d datagram(s) were not stored)",
                name,
                failed - self.failed.get(name, 0),
            )
            self.failed[name] = failed
            return
        if now >= self.store_due.get(name, now):
            log.warning(
                "channel %s: %d datagram(s) not stored in the last %.0f s: %s",
                name,
                failed - self.failed.get(name, 0),
                self.interval,
                why,
            )
            self.failed[name] = failed
            self.store_due[name] = now + self.interval


def _replace_id(ch: ChannelConfig, cid: int) -> ChannelConfig:
    import dataclasses

    return dataclasses.replace(ch, id=cid)


def _channel_from_json(raw: dict, base: Path | None) -> ChannelConfig:
    """A channel from an ``add`` request or relay-channels.json; RelayError names the key.

    Every field is checked for type and form before anything is used."""
    if not isinstance(raw, dict):
        raise RelayError('"channel" must be an object: {name, port, schema, ...}')
    unknown = set(raw) - {"name", "port", "schema", "decimation", "time", "id"}
    if unknown:
        raise RelayError(
            f"channel: unknown key(s) {_shown.repr(sorted(unknown))}; "
            "allowed: name, port, schema, decimation, time, id"
        )
    name = raw.get("name")
    why = channel_name_error(name)
    if why:
        raise RelayError(f"channel.name: {why}")
    port = raw.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise RelayError(
            f"channel.port {_shown.repr(port)}: must be 1..65535, or null for shared-port only"
        )
    decimation = raw.get("decimation", 1)
    if (
        isinstance(decimation, bool)
        or not isinstance(decimation, int)
        or not 1 <= decimation < 2**32
    ):
        raise RelayError(
            f"channel.decimation {_shown.repr(decimation)}: must be an integer from 1 to "
            "2**32-1"
        )
    cid = raw.get("id")
    if isinstance(cid, bool) or not isinstance(cid, int) or not 0 < cid < 2**32:
        raise RelayError(f"channel.id {_shown.repr(cid)}: must be an integer from 1 to 2**32-1")
    time_field = raw.get("time")
    if time_field is not None and (not isinstance(time_field, str) or len(time_field) > 256):
        raise RelayError(f"channel.time {_shown.repr(time_field)}: must be a field name")
    source = raw.get("schema")
    if isinstance(source, str) and not source.lstrip().startswith("{"):
        if not source or len(source) > 4096 or "\0" in source:
            raise RelayError(
                f"channel.schema {_shown.repr(source)}: not a file path (1 to 4096 "
                "characters, no NUL)"
            )
        path = Path(source)
        if not path.is_absolute() and base is not None:
            path = base / path
        source = path
    elif not isinstance(source, (dict, str)):
        raise RelayError(
            "channel.schema: give the schema as a JSON object or an .avsc path, not "
            f"{_shown.repr(source)}"
        )
    try:
        schema = Schema(source, time=time_field)
    except SchemaError as exc:
        raise RelayError(f"channel.schema: {exc}") from exc
    except RecursionError:
        raise RelayError("channel.schema: nested too deeply") from None
    if isinstance(source, Path):
        schema = Schema(schema.avsc, time=time_field)  # kept inline from now on
    return ChannelConfig(name, port, schema, cid, decimation, schema.time_field)


def _channel_to_json(ch: ChannelConfig) -> dict:
    return {
        "name": ch.name,
        "port": ch.port,
        "schema": ch.schema.avsc,
        "decimation": ch.decimation,
        "time": ch.schema.time_field,
        "id": ch.id,
    }


# -- process ----------------------------------------------------------------------------


def die_with_parent() -> None:
    """Under a supervisor (``speeddata up`` sets SPEEDDATA_DIE_WITH_PARENT=1), get SIGTERM
    when the supervisor dies, so that a killed ``up`` leaves no relay holding its ports
    (prctl(2), PR_SET_PDEATHSIG)."""
    if os.environ.get(DIE_WITH_PARENT_ENV) != "1" or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":  # python -m speeddata.relay: the command `speeddata relay`
    from .commands.relay import main

    sys.exit(main())
