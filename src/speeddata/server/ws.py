"""The websocket ``/ws``: subscriptions, binary M4 frames, flow control (docs/websocket.md).

Every client has one :class:`Client` state; the :class:`Hub` ticks at ``frame_hz`` and
builds each client's frame from what changed since the frame it last sent. One frame in
flight per client: while a write is pending nothing more is written, and the next frame
carries every column changed meanwhile (the state is "sent up to", so changes coalesce by
themselves). A frame pending longer than ``LAG_TIMEOUT`` gets ``lagging`` and a close
(4000). Frames of one tick share their M4 computations (a memo per tick), so ten clients
watching the same chart cost little more than one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tornado import websocket
from tornado.ioloop import PeriodicCallback

from .live import M4, LiveChannel, LiveSignal, ladder_width

__all__ = ["Hub", "Client", "Subscription", "WebSocket", "encode_frame", "decode_frame",
           "PROTOCOL_VERSION", "LAG_TIMEOUT", "MAX_MESSAGE"]

log = logging.getLogger("speeddata.server")

PROTOCOL_VERSION = 1
LAG_TIMEOUT = 10.0  # s a frame may stay pending before the client is closed
MAX_MESSAGE = 64 * 1024  # bytes of a client message
MAX_PIXELS = 16384
MAX_SUBSCRIPTIONS = 256
MAX_SIGNALS = 1024
#: signals x columns of one subscription, and of all of a connection's (a first frame
#: carries 40 bytes per cell: 40 MiB and 80 MiB at most)
MAX_CELLS = 1 << 20
MAX_CELLS_CONNECTION = 2 << 20
CLOSE_LAGGING = 4000
PING_INTERVAL = 10.0  # s between pings
PING_TIMEOUT = 30.0  # s without a pong before the connection is closed

FRAME_HEADER = struct.Struct("<4sId")
BLOCK_HEADER = struct.Struct("<HHIII")
COLUMNS_HEAD = struct.Struct("<dII")
LATEST_BODY = struct.Struct("<dd")
GAPS_HEAD = struct.Struct("<II")
MAGIC = b"SDF1"
T_COLUMNS, T_LATEST, T_GAPS = 1, 2, 3
#: a whole ``latest`` block as a numpy record: many are made with one ``tobytes``
LATEST_DTYPE = np.dtype([("type", "<u2"), ("reserved", "<u2"), ("length", "<u4"),
                         ("sub", "<u4"), ("signal", "<u4"), ("time_s", "<f8"),
                         ("value", "<f8")])
assert LATEST_DTYPE.itemsize == 32


# ----------------------------------------------------------------------------- framing


def columns_bodies(cols: list[int], m4: M4) -> list[bytes]:
    """The body of a ``columns`` block for each numeric column ``cols[i]`` of ``m4``."""
    n = len(m4.count)
    # (k, 5, n) float64: count, first, min, max, last per signal
    stack = np.empty((len(cols), 5, n), "<f8")
    stack[:, 0, :] = m4.count
    stack[:, 1, :] = m4.first[:, cols].T
    stack[:, 2, :] = m4.min[:, cols].T
    stack[:, 3, :] = m4.max[:, cols].T
    stack[:, 4, :] = m4.last[:, cols].T
    head2 = COLUMNS_HEAD.pack(float(m4.first_column), n, 0)
    return [head2 + stack[i].tobytes() for i in range(len(cols))]


def columns_blocks(sub: int, signals: list[int], cols: list[int], m4: M4,
                   bodies: list[bytes] | None = None) -> list[bytes]:
    """One ``columns`` block per signal: ``signals[i]`` is the subscription's index of
    the channel's numeric column ``cols[i]`` (``bodies``: made already, shared by the
    clients of a tick)."""
    n = len(m4.count)
    if n == 0 or not signals:
        return []
    length = BLOCK_HEADER.size + COLUMNS_HEAD.size + 40 * n
    if bodies is None:
        bodies = columns_bodies(cols, m4)
    return [BLOCK_HEADER.pack(T_COLUMNS, 0, length, sub, sig) + body
            for sig, body in zip(signals, bodies, strict=True)]


def latest_block(sub: int, sig: int, t_s: float, value: float) -> bytes:
    return BLOCK_HEADER.pack(T_LATEST, 0, 32, sub, sig) + LATEST_BODY.pack(t_s, value)


def gaps_block(sub: int, sig: int, gaps: list[tuple[int, int]]) -> bytes:
    n = len(gaps)
    arr = np.asarray(gaps, np.int64).reshape(n, 2).T.astype("<f8") / 1e9
    return (BLOCK_HEADER.pack(T_GAPS, 0, 24 + 16 * n, sub, sig) + GAPS_HEAD.pack(n, 0)
            + arr.tobytes())


def latest_blocks(sub: int, signals: np.ndarray, time_s: np.ndarray,
                  values: np.ndarray) -> bytes:
    """``latest`` blocks of several signals at once, back to back."""
    arr = np.zeros(len(signals), LATEST_DTYPE)
    arr["type"] = T_LATEST
    arr["length"] = 32
    arr["sub"] = sub
    arr["signal"] = signals
    arr["time_s"] = time_s
    arr["value"] = values
    return arr.tobytes()


def encode_frame(blocks: list[bytes], now_s: float, n_blocks: int | None = None) -> bytes:
    """A frame of ``blocks`` (``n_blocks`` when an item holds several blocks)."""
    n = len(blocks) if n_blocks is None else n_blocks
    return FRAME_HEADER.pack(MAGIC, n, now_s) + b"".join(blocks)


def decode_frame(data: bytes) -> dict:
    """Parse a frame (tests, benchmarks, and as the reference for web/js/client.js)."""
    magic, n_blocks, now_s = FRAME_HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise ValueError(f"bad frame magic {magic!r}")
    pos = FRAME_HEADER.size
    blocks = []
    for _ in range(n_blocks):
        btype, _res, length, sub, sig = BLOCK_HEADER.unpack_from(data, pos)
        body = pos + BLOCK_HEADER.size
        b: dict[str, Any] = {"type": btype, "sub": sub, "signal": sig, "length": length}
        if btype == T_COLUMNS:
            c0, n, _ = COLUMNS_HEAD.unpack_from(data, body)
            arr = np.frombuffer(data, "<f8", 5 * n, body + COLUMNS_HEAD.size).reshape(5, n)
            b.update(first_column=int(c0), count=arr[0], first=arr[1], min=arr[2],
                     max=arr[3], last=arr[4])
        elif btype == T_LATEST:
            b["time_s"], b["value"] = LATEST_BODY.unpack_from(data, body)
        elif btype == T_GAPS:
            n, _ = GAPS_HEAD.unpack_from(data, body)
            arr = np.frombuffer(data, "<f8", 2 * n, body + GAPS_HEAD.size).reshape(2, n)
            b["start_s"], b["end_s"] = arr[0], arr[1]
        if length % 8 or length < BLOCK_HEADER.size:
            raise ValueError(f"bad block length {length}")
        blocks.append(b)
        pos += length
    if pos != len(data):
        raise ValueError(f"frame of {len(data)} bytes, blocks end at {pos}")
    return {"now_s": now_s, "blocks": blocks}


# ----------------------------------------------------------------------- subscriptions


class RequestError(ValueError):
    """A client message the server cannot serve (answered with ``error``)."""


@dataclass
class _Part:
    """The signals of one subscription on one channel."""

    channel: LiveChannel
    indexes: list[int] = field(default_factory=list)  # positions in the subscription
    columns: list[int] = field(default_factory=list)  # the channel's numeric columns
    strings: list[tuple[int, LiveSignal]] = field(default_factory=list)
    sent_t: int | None = None  # channel t_newest at the last frame
    sent_version: int = -1
    sent_gaps: int = 0
    sent_strings: int = -1
    index_array: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    column_array: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class Subscription:
    sub: int
    signals: list[str]
    parts: list[_Part]
    pixels: int
    window_ns: int | None = None
    range_ns: tuple[int, int] | None = None
    width_ns: int = 0
    columns: int = 0
    paused: bool = False
    first_sent: bool = False
    history: Any = None  # asyncio Task reading the cache
    pending: list[bytes] | None = None  # blocks from history waiting for a frame
    complete: bool = False
    request: dict = field(default_factory=dict)  # the subscribe message

    @property
    def live(self) -> bool:
        return self.range_ns is None


def _int(msg: dict, key: str, lo: int, hi: int, default: Any = None) -> int:
    value = msg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not value.is_integer()):
        raise RequestError(f"'{key}' must be an integer, not {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise RequestError(f"'{key}' must be from {lo} to {hi}, not {value}")
    return value


def resolve_signals(patterns: Any, index: dict[str, tuple[LiveChannel, LiveSignal]]
                    ) -> list[str]:
    """Names and globs -> signal names, in the order asked, each once."""
    if isinstance(patterns, str):
        patterns = patterns.split()
    if not isinstance(patterns, list) or not patterns or \
            not all(isinstance(p, str) and 0 < len(p) <= 256 for p in patterns):
        raise RequestError("'signals' must be a non-empty list of signal names or globs")
    out: list[str] = []
    seen: set[str] = set()
    for p in patterns:
        if any(c in p for c in "*?["):
            hits = [n for n in index if fnmatch.fnmatchcase(n, p)]
        else:
            hits = [p] if p in index else []
        if not hits:
            raise RequestError(f"no signal matches {p!r}")
        for h in hits:
            if h not in seen:
                seen.add(h)
                out.append(h)
    if len(out) > MAX_SIGNALS:
        raise RequestError(f"{len(out)} signals: at most {MAX_SIGNALS} per subscription")
    return out


def make_subscription(msg: dict, index: dict[str, tuple[LiveChannel, LiveSignal]],
                      max_window_ns: int) -> Subscription:
    sub = _int(msg, "sub", 0, 2**32 - 1)
    pixels = _int(msg, "pixels", 0, MAX_PIXELS, 0)
    names = resolve_signals(msg.get("signals"), index)
    parts: dict[str, _Part] = {}
    for i, name in enumerate(names):
        ch, sig = index[name]
        part = parts.setdefault(ch.key, _Part(ch))
        if sig.kind == "string":
            part.strings.append((i, sig))
        else:
            part.indexes.append(i)
            part.columns.append(sig.column)
    for part in parts.values():
        part.index_array = np.asarray(part.indexes, np.int64)
        part.column_array = np.asarray(part.columns, np.int64)
    s = Subscription(sub, names, list(parts.values()), pixels, request=msg)
    if "range_ns" in msg:
        r = msg["range_ns"]
        if not (isinstance(r, list) and len(r) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in r)):
            raise RequestError("'range_ns' must be [t0, t1], integers in ns")
        t0, t1 = r
        if not 0 <= t0 < t1 < 2**63:
            raise RequestError("'range_ns' must have 0 <= t0 < t1")
        if pixels == 0:
            raise RequestError("a range subscription needs 'pixels' > 0")
        s.range_ns = (t0, t1)
        s.width_ns = ladder_width(t1 - t0, pixels)
        s.columns = (t1 - 1) // s.width_ns - t0 // s.width_ns + 1
    elif pixels > 0:
        w = msg.get("window_s", 30)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                or not 0.001 <= w <= max_window_ns / 1e9:
            raise RequestError(
                f"'window_s' must be a number from 0.001 to {max_window_ns / 1e9:g}, not {w!r}")
        s.window_ns = int(w * 1e9)
        s.width_ns = ladder_width(s.window_ns, pixels)
        s.columns = -(-s.window_ns // s.width_ns)
    cells = len(names) * s.columns
    if cells > MAX_CELLS:
        raise RequestError(f"{len(names)} signals x {s.columns} columns: at most {MAX_CELLS} "
                           "per subscription (fewer signals or pixels)")
    return s


# ----------------------------------------------------------------------------- clients


class Client:
    """One websocket connection's state."""

    def __init__(self, hub: Hub, handler: WebSocket):
        self.hub = hub
        self.handler = handler
        self.subs: dict[int, Subscription] = {}
        self.in_flight: asyncio.Future | None = None
        self.in_flight_since = 0.0
        self.frames = 0
        self.bytes = 0
        self.closed = False
        self.last_ping = time.monotonic()
        self.last_pong = time.monotonic()
        self._extra_blocks = 0

    def keepalive(self, now: float) -> None:
        """Ping every PING_INTERVAL; close when no pong came for PING_TIMEOUT (our own
        clock: tornado's ping timeout may not exceed its interval)."""
        if self.closed:
            return
        if now - self.last_pong > PING_TIMEOUT:
            self.closed = True
            self.handler.close(1001, "no answer to pings")
            return
        if now - self.last_ping >= PING_INTERVAL:
            self.last_ping = now
            try:
                self.handler.ping()
            except websocket.WebSocketClosedError:
                self.closed = True

    # -- control messages

    def on_message(self, text: str | bytes) -> None:
        if isinstance(text, bytes) or len(text) > MAX_MESSAGE:
            self.error(None, f"messages are JSON text of at most {MAX_MESSAGE} bytes")
            return
        try:
            msg = json.loads(text)
        except ValueError as exc:
            self.error(None, f"not JSON: {exc}")
            return
        if not isinstance(msg, dict):
            self.error(None, "a message must be a JSON object with 'type'")
            return
        kind = msg.get("type")
        sub = msg.get("sub") if isinstance(msg.get("sub"), int) else None
        try:
            if kind == "subscribe":
                self.subscribe(msg)
            elif kind == "unsubscribe":
                s = self.subs.pop(_int(msg, "sub", 0, 2**32 - 1), None)
                if s is not None and s.history is not None:
                    s.history.cancel()
            elif kind in ("pause", "resume"):
                if "sub" in msg:
                    number = _int(msg, "sub", 0, 2**32 - 1)
                    if number not in self.subs:
                        raise RequestError(f"no subscription {number}")
                    targets = [self.subs[number]]
                else:
                    targets = list(self.subs.values())
                for s in targets:
                    s.paused = kind == "pause"
                    if not s.paused:
                        self._reset(s)
            else:
                raise RequestError(f"unknown message type {kind!r}; known: subscribe, "
                                   "unsubscribe, pause, resume")
        except RequestError as exc:
            self.error(sub, str(exc))

    def subscribe(self, msg: dict) -> None:
        if len(self.subs) >= MAX_SUBSCRIPTIONS and msg.get("sub") not in self.subs:
            raise RequestError(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
        s = make_subscription(msg, self.hub.intake.signal_index(), self.hub.intake.window_ns)
        cells = s.columns * len(s.signals) + sum(
            o.columns * len(o.signals) for n, o in self.subs.items() if n != s.sub)
        if cells > MAX_CELLS_CONNECTION:
            raise RequestError(f"subscriptions of {cells} signal columns in all: at most "
                               f"{MAX_CELLS_CONNECTION} per connection")
        old = self.subs.pop(s.sub, None)
        if old is not None and old.history is not None:
            old.history.cancel()
        self.subs[s.sub] = s
        self.send_json({"type": "subscribed", "sub": s.sub, "signals": s.signals,
                        "width_ns": s.width_ns, "columns": s.columns, "live": s.live})
        if s.range_ns is not None:
            self.hub.start_range(self, s)

    def _reset(self, s: Subscription) -> None:
        s.first_sent = False
        for p in s.parts:
            p.sent_t, p.sent_version, p.sent_gaps, p.sent_strings = None, -1, 0, -1
        if s.range_ns is not None:
            s.complete = False
            self.hub.start_range(self, s)

    def error(self, sub: int | None, message: str) -> None:
        msg: dict[str, Any] = {"type": "error", "message": message}
        if sub is not None:
            msg["sub"] = sub
        self.send_json(msg)

    def send_json(self, obj: dict) -> None:
        if self.closed:
            return
        try:
            fut = self.handler.write_message(json.dumps(obj, separators=(",", ":")))
        except websocket.WebSocketClosedError:
            self.closed = True
            return
        fut.add_done_callback(_ignore_closed)

    # -- frames

    def tick(self, now_ns: int, memo: dict) -> None:
        """Send a frame if one is due and none is in flight; close a lagging client."""
        if self.closed:
            return
        if self.in_flight is not None:
            if not self.in_flight.done():
                if time.monotonic() - self.in_flight_since > self.hub.lag_timeout:
                    self.hub.n_lagging += 1
                    self.send_json({"type": "lagging", "message":
                                    f"no frame taken for {self.hub.lag_timeout:g} s; closing"})
                    self.handler.close(CLOSE_LAGGING, "lagging")
                    self.closed = True
                return
            self.in_flight = None
        blocks: list[bytes] = []
        self._extra_blocks = 0  # items of ``blocks`` holding several blocks add here
        for s in list(self.subs.values()):
            if not s.paused:
                blocks.extend(self._blocks(s, now_ns, memo))
        if not blocks:
            self._completes()
            return
        frame = encode_frame(blocks, now_ns / 1e9, len(blocks) + self._extra_blocks)
        try:
            fut = self.handler.write_message(frame, binary=True)
        except websocket.WebSocketClosedError:
            self.closed = True
            return
        self.in_flight = fut
        self.in_flight_since = time.monotonic()
        fut.add_done_callback(_ignore_closed)
        self.frames += 1
        self.bytes += len(frame)
        self.hub.count_frame(len(frame))
        self._completes()

    def _completes(self) -> None:
        """``complete`` for the range subscriptions whose columns have all been sent."""
        for s in list(self.subs.values()):
            if s.range_ns is not None and s.first_sent and not s.complete and \
                    s.pending is None and s.history is None:
                s.complete = True
                self.send_json({"type": "complete", "sub": s.sub})

    def refresh(self) -> None:
        """After the channels changed (a relay restarted with another schema, say):
        subscriptions on a channel that was replaced are made again from their request,
        or dropped with an ``error`` when their signals are gone."""
        live = {id(ch) for ch in self.hub.intake.channels.values()}
        for number, s in list(self.subs.items()):
            if all(id(p.channel) in live for p in s.parts):
                continue
            del self.subs[number]
            try:
                self.subscribe(s.request)
            except RequestError as exc:
                self.error(number, f"subscription dropped, its channel changed: {exc}")

    def _blocks(self, s: Subscription, now_ns: int, memo: dict) -> list[bytes]:
        out: list[bytes] = []
        if s.range_ns is not None:
            if s.pending is not None:
                out, s.pending = s.pending, None
                s.first_sent = True
            return out
        first = not s.first_sent
        for p in s.parts:
            ch = p.channel
            if p.indexes:
                if s.pixels > 0 and ch.t_newest is not None and (first or
                                                                  p.sent_t != ch.t_newest):
                    out.extend(self._columns(s, p, first, memo))
                if first or p.sent_version != ch.version:
                    cols = p.column_array
                    sel = np.flatnonzero(first | (ch.latest_version[cols] > p.sent_version))
                    if len(sel):
                        c = cols[sel]
                        out.append(latest_blocks(s.sub, p.index_array[sel], ch.latest_t[c],
                                                 ch.latest_v[c]))
                        self._extra_blocks += len(sel) - 1
                    p.sent_version = ch.version
                if s.pixels > 0 and (first or p.sent_gaps != ch.loss.n_gaps):
                    out.extend(self._gaps(s, p, first, now_ns))
            if p.strings and p.sent_strings != ch.strings_version:
                values = {sig.name: list(ch.strings_latest[sig.field])
                          for _, sig in p.strings if sig.field in ch.strings_latest}
                if values:
                    self.send_json({"type": "strings", "sub": s.sub, "values": values})
                p.sent_strings = ch.strings_version
            p.sent_t = ch.t_newest
        s.first_sent = True
        return out

    def _columns(self, s: Subscription, p: _Part, first: bool, memo: dict) -> list[bytes]:
        ch = p.channel
        w = s.width_ns
        end_col = ch.t_newest // w
        if first or p.sent_t is None:
            c0, n = end_col - s.columns + 1, s.columns
        else:
            c0 = min(p.sent_t // w, end_col)
            n = end_col - c0 + 1
            if n > s.columns:
                c0, n = end_col - s.columns + 1, s.columns
        key = (ch.key, ch.version, w, c0, n)
        m4 = memo.get(key)
        if m4 is None:
            m4 = memo[key] = ch.m4(c0, n, w)
        bkey = (key, tuple(p.columns))
        bodies = memo.get(bkey)
        if bodies is None:
            bodies = memo[bkey] = columns_bodies(p.columns, m4)
        return columns_blocks(s.sub, p.indexes, p.columns, m4, bodies)

    def _gaps(self, s: Subscription, p: _Part, first: bool, now_ns: int) -> list[bytes]:
        ch = p.channel
        gaps = list(ch.loss.gaps)
        if not first:
            new = ch.loss.n_gaps - p.sent_gaps
            gaps = gaps[-new:] if 0 < new <= len(gaps) else gaps
        else:
            t_end = ch.t_newest or now_ns
            gaps = [g for g in gaps if g[1] >= t_end - s.columns * s.width_ns]
        p.sent_gaps = ch.loss.n_gaps
        if not gaps:
            return []
        return [gaps_block(s.sub, i, gaps) for i in p.indexes]


def _ignore_closed(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        exc = fut.exception()
        if exc is not None and not isinstance(exc, (websocket.WebSocketClosedError,
                                                    asyncio.CancelledError)):
            log.debug("websocket write failed: %s", exc)


# --------------------------------------------------------------------------------- hub


class Hub:
    """Clients, the frame clock and the status clock."""

    def __init__(self, intake, frame_hz: float = 30.0, group: str = "full",
                 history=None, metrics=None, version: str = "0"):
        self.intake = intake
        self.frame_hz = frame_hz
        self.group = group
        self.history = history  # callable (sub, ranges) -> coroutine of blocks
        self.metrics = metrics
        self.version = version
        self.clients: set[Client] = set()
        self.relays: dict[str, dict] = {}
        self.n_frames = 0
        self.n_frame_bytes = 0
        self.n_lagging = 0
        self.lag_timeout = LAG_TIMEOUT
        self._hello_due = False
        self._timers: list[PeriodicCallback] = []

    def start(self) -> None:
        self._timers = [
            PeriodicCallback(self.tick, 1000.0 / self.frame_hz),
            PeriodicCallback(self.status_tick, 1000.0),
        ]
        for t in self._timers:
            t.start()

    def stop(self) -> None:
        for t in self._timers:
            t.stop()
        for c in list(self.clients):
            c.handler.close(1001, "server stopping")

    def channels_changed(self) -> None:
        self._hello_due = True

    def hello(self) -> dict:
        return {
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "server": {"version": self.version, "frame_hz": self.frame_hz,
                       "window_s": self.intake.window_ns / 1e9, "group": self.group,
                       "now_ns": time.time_ns()},
            "channels": [ch.describe() for ch in self.intake.channels.values()],
        }

    def count_frame(self, n_bytes: int) -> None:
        self.n_frames += 1
        self.n_frame_bytes += n_bytes

    def tick(self) -> None:
        # take what waits on the multicast socket now: the frames carry data up to this
        # moment, and the socket is drained once per frame period in large batches
        drain = getattr(self.intake, "drain", None)
        if drain is not None:
            drain()
        if self._hello_due:
            self._hello_due = False
            hello = self.hello()
            for c in list(self.clients):
                c.send_json(hello)
                c.refresh()
        if not self.clients:
            return
        now = time.time_ns()
        memo: dict = {}
        for c in list(self.clients):
            try:
                c.tick(now, memo)
            except Exception:  # one client's failure never stops the others
                log.exception("frame for a client failed")
                c.handler.close(1011, "server error")
                c.closed = True

    def status(self) -> dict:
        return {
            "type": "status",
            "now_ns": time.time_ns(),
            "channels": {ch.name: ch.status() for ch in self.intake.channels.values()},
            "relays": self.relays,
            "clients": len(self.clients),
        }

    def status_tick(self) -> None:
        for ch in self.intake.channels.values():
            ch.update_rate()
        now = time.monotonic()
        for c in list(self.clients):
            c.keepalive(now)
        if not self.clients:
            return
        st = self.status()
        for c in self.clients:
            c.send_json(st)

    def start_range(self, client: Client, s: Subscription) -> None:
        """Answer a range subscription: from memory when the live window holds it, else
        from the cache in an executor, with progress messages."""
        t0, t1 = s.range_ns
        w = s.width_ns
        c0 = t0 // w
        n = s.columns
        from_memory = all(p.channel.can_serve(t0, w) for p in s.parts)
        if from_memory or self.history is None:
            blocks = []
            for p in s.parts:
                if p.indexes:
                    blocks += columns_blocks(s.sub, p.indexes, p.columns, p.channel.m4(c0, n, w))
                    gaps = p.channel.gaps_in(t0, t1)
                    if gaps:
                        blocks += [gaps_block(s.sub, i, gaps) for i in p.indexes]
            s.pending = blocks
            return
        s.history = asyncio.ensure_future(self._history(client, s))

    async def _history(self, client: Client, s: Subscription) -> None:
        loop = asyncio.get_running_loop()

        def progress(done: float) -> None:  # called from the reader's thread
            loop.call_soon_threadsafe(
                client.send_json, {"type": "progress", "sub": s.sub, "done": round(done, 3)})

        try:
            blocks = await self.history(s, progress)
            s.pending = blocks
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the cache could not be read: tell the client
            client.error(s.sub, f"cannot read the cache: {exc}")
            s.pending = []
        finally:
            s.history = None


class WebSocket(websocket.WebSocketHandler):
    """``/ws``: JSON control in, JSON + binary frames out (docs/websocket.md)."""

    def initialize(self, hub: Hub, server: Any = None) -> None:
        self.hub = hub
        self.server = server
        self.client: Client | None = None

    def prepare(self) -> None:
        if self.server is not None:
            from .handlers import check_host

            check_host(self, self.server)

    def check_origin(self, origin: str) -> bool:
        # only pages served by this server (same host:port) may open the socket; a client
        # without an Origin header (not a browser) is not asked (tornado)
        return super().check_origin(origin)

    def open(self) -> None:
        self.client = Client(self.hub, self)
        self.hub.clients.add(self.client)
        self.client.send_json(self.hub.hello())

    def on_pong(self, data: bytes) -> None:
        if self.client is not None:
            self.client.last_pong = time.monotonic()

    def on_message(self, message: str | bytes) -> None:
        if self.client is not None:
            self.client.on_message(message)

    def on_close(self) -> None:
        if self.client is not None:
            self.client.closed = True
            for s in self.client.subs.values():
                if s.history is not None:
                    s.history.cancel()
            self.hub.clients.discard(self.client)
