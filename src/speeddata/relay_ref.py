"""The pure-Python reference relay engine (docs/relay-internals.md).

``PyEngine`` has the API and the observable behaviour of the compiled
``speeddata._relay.Engine``: the same segment files, multicast datagrams and counters. It
is written to be read, not to be fast: one ``recvmsg`` per datagram, one ``sendto`` per
multicast copy, blocks written through ``speeddata.cache.SegmentWriter``, records checked
by ``speeddata.validate.PyValidator``. Tests run both engines on the same traffic.

One loop iteration:

1. wait (epoll, via ``selectors``) for datagrams on the channel sockets, the shared
   socket or the wake-up socket that ``stop()`` writes to;
2. from each ready socket receive up to ``batch`` datagrams; validate each, count it,
   and send the accepted ones to the multicast groups at once;
3. append one block per channel holding the datagrams it accepted in this iteration
   (rotating when the segment is full, or splitting the block over two segments);
4. announce channels that are due, close segments older than ``segment_age``.

Every change of state (steps 2-4 and the API calls from other threads) happens under one
lock, so ``add_channel``, ``remove_channel``, ``rotate`` and ``stats`` are safe while
``run()`` executes: they take effect between iterations.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import wire
from .cache import SegmentWriter, ocf_header
from .config import ChannelConfig, MulticastConfig
from .validate import PyValidator

__all__ = ["PyEngine", "COUNTERS", "FUTURE_NS", "SHARED_CHANNEL_ID"]

#: The per-channel counters of ``stats()``, in the order of docs/relay-internals.md.
COUNTERS = (
    "datagrams",
    "records",
    "bytes",
    "rejected",
    "kernel_drops",
    "multicast_sent",
    "multicast_decimated",
    "multicast_errors",
    "stored_records",
    "store_failed",
    "blocks",
    "segments",
    "t_newest",
    "time_backwards",
    "time_future",
    "store_errno",
)

#: A source time more than this far ahead of its datagram's receive time counts as
#: ``time_future`` (docs/relay-internals.md, "Source clocks"): well above clock skew and
#: batching, below every time-zone offset (30 min and more) stamped as UTC.
FUTURE_NS = 600 * 1_000_000_000

#: ``stats()`` key of the shared port's pseudo channel.
SHARED_CHANNEL_ID = wire.SHARED_CHANNEL_ID

# socket(7): SO_TIMESTAMPNS puts the kernel receive time of each datagram in a control
# message of type SCM_TIMESTAMPNS (= SO_TIMESTAMPNS) holding a struct timespec;
# SO_RXQ_OVFL adds a u32 cumulative count of datagrams dropped on the socket.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
# socket(7) SO_MEMINFO: u32[SK_MEMINFO_VARS]; entry SK_MEMINFO_DROPS (linux/sock_diag.h) is
# the socket's drop count now (sk_drops), which SO_RXQ_OVFL hands out only with the next
# datagram.
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8
#: distinct unknown fingerprints counted on the shared port (as the compiled engine)
UNKNOWN_FP_SLOTS = 16
_TIMESPEC = struct.Struct("@qq")
_U32 = struct.Struct("@I")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_U32.size)
_MAX_DATAGRAM = 65536

#: Single-object encoding (Avro spec): marker, 8-byte fingerprint, then the record.
_SINGLE_OBJECT_MARKER = b"\xc3\x01"
_SINGLE_OBJECT_PREFIX = 10

#: Rejected datagrams file entry (docs/cache.md): u32 length, i64 recv_ns, the bytes.
_REJECTED_ENTRY = struct.Struct("<Iq")
_REJECTED_FILE_LIMIT = 64 * 1024**2  # stop keeping rejected datagrams past this, per file

# Blocks: varints of n_records and n_bytes (at most 10 bytes each), then the 16-byte sync.
_BLOCK_OVERHEAD = 20 + 16


@dataclass
class _Accepted:
    """One accepted datagram, waiting for its block."""

    payload: bytes
    recv_ns: int
    seq: int
    n_records: int
    t_min: int
    t_max: int


class _Drops:
    """A socket's drop count from SO_MEMINFO, read at every ``stats()`` (the compiled
    engine's ``read_drops``)."""

    def __init__(self):
        self.last = 0  # SK_MEMINFO_DROPS at the last read (u32)
        self.seen = 0  # drops counted from those reads

    def read(self, sock: socket.socket | None) -> None:
        if sock is None or sock.fileno() < 0:
            return
        try:
            mem = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
        except OSError:
            return  # kernels before 4.6: SO_RXQ_OVFL's count only
        if len(mem) < 4 * (SK_MEMINFO_DROPS + 1):
            return
        now = _U32.unpack_from(mem, 4 * SK_MEMINFO_DROPS)[0]
        self.seen += (now - self.last) & 0xFFFFFFFF
        self.last = now


@dataclass
class _Channel:
    """Engine state of one channel."""

    config: ChannelConfig
    sock: socket.socket | None
    validator: PyValidator
    counters: dict = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    seq: int = 0
    t_last: int = 0  # largest source time of the previous accepted datagram
    announce_seq: int = 0
    next_announce: float = 0.0  # time.monotonic() of its next announce
    writer: SegmentWriter | None = None
    retry_open_at: float = 0.0  # time.monotonic() before which no segment is opened
    last_open_ns: int = 0
    pending: list = field(default_factory=list)
    rejected_file: object = None
    rejects: dict = field(default_factory=dict)  # reason -> datagrams
    drops: _Drops = field(default_factory=_Drops)

    @property
    def id(self) -> int:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name


#: short passes in a row after which a loop raised to relay.nice while behind goes back
BOOST_HOLD = 16


class _Boost:
    """Priority while behind, as the compiled engine's ``_boost`` (docs/relay-internals.md):
    a pass that took a full batch raises the calling thread to ``nice``; BOOST_HOLD short
    passes in a row lower it back; a refused raise turns it off."""

    def __init__(self, nice: int | None):
        self.nice = nice
        self.tid = threading.get_native_id()
        self.base = os.getpriority(os.PRIO_PROCESS, self.tid)
        self.boosted = False
        self.n_short = 0

    def update(self, short: bool) -> bool:
        """After a pass; True when it raised the priority."""
        if self.nice is None:
            return False
        if not short:
            self.n_short = 0
            if not self.boosted:
                try:
                    os.setpriority(os.PRIO_PROCESS, self.tid, self.nice)
                except OSError:
                    self.nice = None
                    return False
                self.boosted = True
                return True
        elif self.boosted:
            self.n_short += 1
            if self.n_short >= BOOST_HOLD:
                self.end()
        return False

    def end(self) -> None:
        if self.boosted:
            os.setpriority(os.PRIO_PROCESS, self.tid, self.base)
            self.boosted = False
            self.n_short = 0


class PyEngine:
    """The relay loop in pure Python: receive, validate, cache, multicast.

    See docs/relay-internals.md for the API contract and the counters; the compiled
    ``speeddata._relay.Engine`` behaves the same.
    """

    def __init__(
        self,
        cache_dir: Path | None,
        multicast: MulticastConfig,
        segment_size: int = 64 << 20,
        segment_age: float = 3600.0,
        flush_interval: float = 0.2,
        batch: int = 256,
        rejected_dir: Path | None = None,
        coalesce: float = 0.0,
    ):
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        if not 0 <= coalesce <= 1:
            raise ValueError(f"coalesce must be 0 to 1 seconds, not {coalesce}")
        self.coalesce = float(coalesce)
        self.wakeups = 0  # loop passes that received datagrams
        self.coalesced = 0  # of which ended in a coalescing wait
        self._last_pass = 0.0  # when the last pass that received datagrams ended
        self._boost_nice: int | None = None  # priority while behind (relay.nice), or None
        self.boosts = 0  # times the loop took it
        self._gap = 1.0  # moving average of the time between datagrams, seconds
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.multicast = multicast
        self.segment_size = int(segment_size)
        self.segment_age = float(segment_age)
        self.flush_interval = float(flush_interval)
        self.batch = int(batch)
        self.rejected_dir = Path(rejected_dir) if rejected_dir is not None else None
        self._lock = threading.RLock()
        self._channels: dict[int, _Channel] = {}
        self._shared: socket.socket | None = None
        self._shared_counters = dict.fromkeys(COUNTERS, 0)
        self._shared_rejects: dict[str, int] = {}
        self._shared_drops = _Drops()
        self._unknown_fps: dict[bytes, int] = {}
        self._shared_rejected_file = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._stopping = False
        self._running = False
        self._closed = False
        self._full = (multicast.full[0], multicast.full[1])
        self._decimated = (multicast.decimated[0], multicast.decimated[1])
        self._mcast = _multicast_socket(multicast)

    # -- API ---------------------------------------------------------------------------

    def add_channel(self, channel: ChannelConfig, sock: socket.socket | None) -> None:
        """Serve ``channel``, receiving on ``sock`` (a bound UDP socket, or None when the
        channel is fed through the shared port only)."""
        if channel.id == SHARED_CHANNEL_ID:
            raise ValueError("channel id 0 is reserved for the shared port's counters")
        with self._lock:
            if channel.id in self._channels:
                raise ValueError(f"channel id {channel.id} is already served by this engine")
            ch = _Channel(channel, sock, PyValidator(channel.schema))
            if sock is not None:
                _set_receive_options(sock)
                self._selector.register(sock, selectors.EVENT_READ, ("channel", ch))
            self._channels[channel.id] = ch

    def set_shared_socket(self, sock: socket.socket) -> None:
        """Receive single-object encoded datagrams on ``sock``, routed by fingerprint."""
        with self._lock:
            if self._shared is not None:
                self._selector.unregister(self._shared)
                self._shared_drops.read(self._shared)  # what it dropped stays counted
                self._shared_drops.last = 0
            _set_receive_options(sock)
            self._shared = sock
            self._selector.register(sock, selectors.EVENT_READ, ("shared", None))

    def remove_channel(self, channel_id: int) -> None:
        """Stop serving a channel and close (trim) its segment; the caller closes the socket."""
        with self._lock:
            ch = self._channels.pop(channel_id, None)
            if ch is None:
                raise KeyError(f"channel id {channel_id} is not served by this engine")
            if ch.sock is not None:
                self._selector.unregister(ch.sock)
            self._close_segment(ch)
            if ch.rejected_file is not None:
                ch.rejected_file.close()

    def rotate(self, channel_id: int | None = None) -> None:
        """Close the current segment of one channel (or all); the next datagram opens a new one."""
        with self._lock:
            if channel_id is None:
                channels = list(self._channels.values())
            elif channel_id in self._channels:
                channels = [self._channels[channel_id]]
            else:
                raise KeyError(f"channel id {channel_id} is not served by this engine")
            for ch in channels:
                self._close_segment(ch)

    def run(self) -> None:
        """Run the loop until ``stop()``; call it in its own thread."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._running:
                raise RuntimeError("the engine is already running")
            self._running = True
        boost = _Boost(self._boost_nice)
        try:
            while not self._stopping:
                events = self._selector.select(self._timeout())
                got, short = 0, True
                with self._lock:
                    for key, _ in events:
                        kind, ch = key.data
                        n = 0
                        if kind == "channel":
                            if self._channels.get(ch.id) is ch:  # not removed meanwhile
                                n = self._receive_channel(ch)
                        elif kind == "shared":
                            if self._shared is not None:
                                n = self._receive_shared()
                        else:
                            _drain(self._wake_r)
                        got += n
                        short = short and n < self.batch
                    self._store_pending()
                    self._tick()
                if got:
                    # coalescing, as the compiled engine's _loop (docs/relay-internals.md)
                    self.wakeups += 1
                    if boost.update(short):
                        self.boosts += 1
                    now = time.monotonic()
                    gap = min((now - self._last_pass) / got, 1.0)
                    self._last_pass = now
                    self._gap += (gap - self._gap) / 8
                    if short and 2 * self._gap <= self.coalesce and not self._stopping:
                        self.coalesced += 1
                        time.sleep(self.coalesce)
        finally:
            boost.end()
            with self._lock:
                self._running = False

    def stop(self) -> None:
        """Make ``run()`` return soon; safe from any thread (and before ``run()``)."""
        self._stopping = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken, or closed

    def stats(self) -> dict[int, dict[str, int]]:
        """``{channel_id: {counter: value}}``; the shared port's pseudo channel is ``0``."""
        with self._lock:
            out = {}
            for cid, ch in self._channels.items():
                ch.drops.read(ch.sock)
                out[cid] = _with_drops(ch.counters, ch.drops)
            if self._shared is not None:
                self._shared_drops.read(self._shared)
                out[SHARED_CHANNEL_ID] = _with_drops(self._shared_counters, self._shared_drops)
            return out

    def rejects(self) -> dict[int, dict[str, int]]:
        """``{channel_id: {reason: n}}``: rejected datagrams by reason (names of
        ``speeddata.validate.REJECT_REASONS``); the shared port's pseudo channel is 0."""
        with self._lock:
            out = {cid: dict(ch.rejects) for cid, ch in self._channels.items()}
            if self._shared is not None:
                out[SHARED_CHANNEL_ID] = dict(self._shared_rejects)
            return out

    def unknown_fingerprints(self) -> dict[str, int]:
        """``{fingerprint hex: datagrams}`` that came to the shared port with a fingerprint
        no channel has (the first 16 distinct ones)."""
        with self._lock:
            return {fp.hex(): n for fp, n in self._unknown_fps.items()}

    def open_segments(self) -> set[Path]:
        """Paths of the ``.avro`` files being written."""
        with self._lock:
            return {ch.writer.segment.avro for ch in self._channels.values() if ch.writer}

    def close(self) -> None:
        """After ``run()`` returned: close (trim) every segment and release resources."""
        with self._lock:
            if self._closed:
                return
            if self._running:
                raise RuntimeError("close() while run() executes; stop() and join first")
            self._closed = True
            for ch in self._channels.values():
                ch.drops.read(ch.sock)  # the sockets' last word, before letting go
                self._close_segment(ch)
                if ch.rejected_file is not None:
                    ch.rejected_file.close()
            if self._shared_rejected_file is not None:
                self._shared_rejected_file.close()
            self._shared_drops.read(self._shared)
            self._selector.close()
            self._mcast.close()
            self._wake_r.close()
            self._wake_w.close()

    # -- receiving ---------------------------------------------------------------------

    def _receive_channel(self, ch: _Channel) -> int:
        """Up to a batch of datagrams from the channel's socket; how many there were."""
        for i in range(self.batch):
            got = _receive(ch.sock, ch.counters)
            if got is None:
                return i
            data, recv_ns = got[:2]
            if got[2]:
                reason = "oversize"
            else:
                n_records, _, t_min, t_max, reason = ch.validator.check_with_reason(data)
            if reason is not None:
                ch.counters["rejected"] += 1
                ch.rejects[reason] = ch.rejects.get(reason, 0) + 1
                ch.rejected_file = self._keep_rejected(ch.rejected_file, ch.name, data, recv_ns)
                continue
            self._accept(ch, data, recv_ns, n_records, t_min, t_max)
        return self.batch

    def _receive_shared(self) -> int:
        """Up to a batch of datagrams from the shared socket; how many there were."""
        counters = self._shared_counters
        for i in range(self.batch):
            got = _receive(self._shared, counters)
            if got is None:
                return i
            data, recv_ns = got[:2]
            routed = "oversize" if got[2] else self._route(data)
            if isinstance(routed, str):
                counters["rejected"] += 1
                self._shared_rejects[routed] = self._shared_rejects.get(routed, 0) + 1
                self._shared_rejected_file = self._keep_rejected(
                    self._shared_rejected_file, "shared", data, recv_ns
                )
                continue
            ch, payload, (n_records, _, t_min, t_max) = routed
            self._accept(ch, payload, recv_ns, n_records, t_min, t_max)
        return self.batch

    def _route(self, data: bytes):
        """Strip the single-object framing -> ``(channel, records, check)``, or the name
        of the reject reason (as the compiled engine's ``_route``).

        Every record must be preceded by ``C3 01`` and one and the same fingerprint, one of
        a channel's (``Schema.fingerprints``), and be a valid record of that channel's schema.
        """
        end = len(data)
        if end == 0:
            return "empty"
        if end < _SINGLE_OBJECT_PREFIX or data[:2] != _SINGLE_OBJECT_MARKER:
            return "not_single_object"
        fingerprint = data[2:_SINGLE_OBJECT_PREFIX]
        ch = self._channel_by_fingerprint(fingerprint)
        if ch is None:
            if fingerprint in self._unknown_fps or len(self._unknown_fps) < UNKNOWN_FP_SLOTS:
                self._unknown_fps[fingerprint] = self._unknown_fps.get(fingerprint, 0) + 1
            return "unknown_fingerprint"
        pos = 0
        records = []
        while pos < end:
            if end - pos < _SINGLE_OBJECT_PREFIX:
                return "trailing_bytes"  # after whole objects: pos > 0 here
            if data[pos : pos + 2] != _SINGLE_OBJECT_MARKER:
                return "not_single_object"
            if data[pos + 2 : pos + _SINGLE_OBJECT_PREFIX] != fingerprint:
                return "mixed_fingerprints"
            r = ch.validator.record(data, pos + _SINGLE_OBJECT_PREFIX)
            if isinstance(r, str):
                return "trailing_bytes" if r == "truncated" and pos > 0 else r
            records.append(data[pos + _SINGLE_OBJECT_PREFIX : r[0]])
            pos = r[0]
        payload = b"".join(records)
        return ch, payload, ch.validator.check(payload)

    def _channel_by_fingerprint(self, fingerprint: bytes) -> _Channel | None:
        # Two channels with the same schema share a fingerprint: the lowest id gets the data.
        matches = [
            ch for ch in self._channels.values() if fingerprint in ch.config.schema.fingerprints
        ]
        return min(matches, key=lambda ch: ch.id) if matches else None

    def _accept(
        self,
        ch: _Channel,
        payload: bytes,
        recv_ns: int,
        n_records: int,
        t_min: int | None,
        t_max: int | None,
    ) -> None:
        """Count an accepted datagram, multicast it and queue it for this iteration's block."""
        c = ch.counters
        seq = ch.seq
        ch.seq += 1
        if t_min is None:  # no time field: the receive time stands in (docs/cache.md)
            t_min = t_max = recv_ns
        else:
            scale = ch.config.schema.time_scale
            t_min, t_max = t_min * scale, t_max * scale
            # Source clocks (docs/relay-internals.md): flagged, stored as sent.
            if c["datagrams"] and t_min < ch.t_last:
                c["time_backwards"] += 1
            if t_max > recv_ns + FUTURE_NS:
                c["time_future"] += 1
            ch.t_last = t_max
        c["datagrams"] += 1
        c["records"] += n_records
        c["bytes"] += len(payload)
        c["t_newest"] = max(c["t_newest"], t_max)
        datagram = wire.pack_header(ch.id, n_records, seq, recv_ns) + payload
        self._send(datagram, self._full, c, "multicast_sent")
        if seq % ch.config.decimation == 0:
            self._send(datagram, self._decimated, c, "multicast_decimated")
        if self.cache_dir is not None:
            ch.pending.append(_Accepted(payload, recv_ns, seq, n_records, t_min, t_max))

    def _send(self, datagram: bytes, group: tuple[str, int], counters: dict, key: str) -> None:
        try:
            self._mcast.sendto(datagram, group)
        except OSError:
            counters["multicast_errors"] += 1
        else:
            if key:
                counters[key] += 1

    def _keep_rejected(self, f, name: str, data: bytes, recv_ns: int):
        """Append a rejected datagram to ``<rejected_dir>/<name>.rej`` when that is on."""
        if self.rejected_dir is None:
            return f
        try:
            if f is None:
                self.rejected_dir.mkdir(parents=True, exist_ok=True)
                f = open(self.rejected_dir / f"{name}.rej", "ab")  # noqa: SIM115
            if f.tell() < _REJECTED_FILE_LIMIT:
                f.write(_REJECTED_ENTRY.pack(len(data), recv_ns) + data)
                f.flush()
        except OSError:
            pass  # keeping rejects is best effort; they are counted either way
        return f

    # -- storing -----------------------------------------------------------------------

    def _store_pending(self) -> None:
        for ch in self._channels.values():
            if ch.pending:
                items, ch.pending = ch.pending, []
                self._store(ch, items)

    def _store(self, ch: _Channel, items: list[_Accepted]) -> None:
        """Append ``items`` as one block, or as two when the segment fills up in between."""
        c = ch.counters
        i = 0
        while i < len(items):
            if ch.writer is None and not self._open_segment(ch, items[i]):
                c["store_failed"] += len(items) - i
                return
            writer = ch.writer
            j, n_bytes = i, 0
            while j < len(items) and writer.room(n_bytes + len(items[j].payload)):
                n_bytes += len(items[j].payload)
                j += 1
            if j == i:  # the segment is full: the rest goes to a new one
                self._close_segment(ch)
                continue
            block = items[i:j]
            try:
                writer.append(
                    [a.payload for a in block],
                    [a.recv_ns for a in block],
                    [a.seq for a in block],
                    [a.n_records for a in block],
                    min(a.t_min for a in block),
                    max(a.t_max for a in block),
                )
            except OSError as exc:
                self._store_failed(ch, exc)
                self._close_segment(ch)
                c["store_failed"] += len(items) - i
                return
            c["blocks"] += 1
            c["stored_records"] += sum(a.n_records for a in block)
            i = j

    def _open_segment(self, ch: _Channel, first: _Accepted) -> bool:
        now = time.monotonic()
        if now < ch.retry_open_at:
            return False
        # A datagram larger than a whole segment gets a segment of its own size.
        header_size = len(ocf_header(ch.config.schema, bytes(16), ch.name, ch.id))
        size = max(self.segment_size, header_size + len(first.payload) + _BLOCK_OVERHEAD)
        # Stems must differ: a segment opened in the same nanosecond moves one ns on.
        t_open_ns = max(time.time_ns(), ch.last_open_ns + 1)
        try:
            ch.writer = SegmentWriter(
                self.cache_dir / ch.name, ch.config.schema, ch.name, ch.id, size, t_open_ns
            )
        except OSError as exc:
            ch.retry_open_at = now + 1.0
            self._store_failed(ch, exc)
            return False
        ch.last_open_ns = t_open_ns
        ch.counters["segments"] += 1
        return True

    def _store_failed(self, ch: _Channel, exc: OSError) -> None:
        """Retry in a second; the relay logs the failure from ``store_errno``."""
        ch.retry_open_at = time.monotonic() + 1.0
        ch.counters["store_errno"] = exc.errno or errno.EIO

    def _close_segment(self, ch: _Channel) -> None:
        if ch.writer is not None:
            writer, ch.writer = ch.writer, None
            try:
                writer.close()
            except OSError as exc:  # trimming frees space, so this is unexpected
                ch.counters["store_errno"] = exc.errno or errno.EIO

    # -- periodic ----------------------------------------------------------------------

    def _timeout(self) -> float:
        with self._lock:
            due = min((ch.next_announce for ch in self._channels.values()), default=None)
        timeout = 0.25
        if due is not None:
            timeout = min(timeout, max(0.0, due - time.monotonic()))
        return timeout

    def _tick(self) -> None:
        """Announce the channels that are due; close segments past ``segment_age``."""
        now = time.monotonic()
        now_ns = time.time_ns()
        interval = self.multicast.announce_interval
        for ch in self._channels.values():
            if now >= ch.next_announce:
                datagram = wire.announce_datagram(ch.config, ch.announce_seq, now_ns)
                ch.announce_seq += 1
                self._send(datagram, self._full, ch.counters, "")
                self._send(datagram, self._decimated, ch.counters, "")
                ch.next_announce = now + interval
            if ch.writer is not None and now_ns - ch.writer.t_open_ns >= self.segment_age * 1e9:
                self._close_segment(ch)


def _multicast_socket(multicast: MulticastConfig) -> socket.socket:
    """The sending socket: leaves by ``multicast.interface`` with ``multicast.ttl``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(multicast.interface)
        )
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, multicast.ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(multicast.loop))
    except BaseException:
        sock.close()
        raise
    return sock


def _set_receive_options(sock: socket.socket) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)


def _receive(sock: socket.socket, counters: dict) -> tuple[bytes, int, bool] | None:
    """One datagram, its kernel receive time (ns) and whether it was larger than the
    receive buffer (MSG_TRUNC), or None when none is queued.

    Updates ``counters["kernel_drops"]`` from SO_RXQ_OVFL (a cumulative count the kernel
    attaches once the socket has dropped something).
    """
    try:
        data, ancillary, flags, _addr = sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    recv_ns = None
    for level, kind, value in ancillary:
        if level != socket.SOL_SOCKET:
            continue
        if kind == SCM_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(value)
            recv_ns = sec * 1_000_000_000 + nsec
        elif kind == SO_RXQ_OVFL and len(value) >= _U32.size:
            drops = _U32.unpack_from(value)[0]
            counters["kernel_drops"] = max(counters["kernel_drops"], drops)
    if recv_ns is None:
        recv_ns = time.time_ns()
    return data, recv_ns, bool(flags & socket.MSG_TRUNC)


def _with_drops(counters: dict, drops: _Drops) -> dict:
    """The counters, with the larger of SO_RXQ_OVFL's and SO_MEMINFO's drop counts."""
    out = dict(counters)
    out["kernel_drops"] = max(out["kernel_drops"], drops.seen)
    return out


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError, OSError):
        pass
