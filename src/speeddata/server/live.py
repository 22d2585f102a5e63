"""Multicast intake and the live state of every channel: recent window, summaries, loss.

:class:`Intake` joins the relay's multicast group with a non-blocking socket on the
IOLoop (``add_handler``), drains it in batches with the compiled receive
(``speeddata._mcast.BatchReceiver``: ``recvmmsg`` into a slab), reads the batch's 32-byte
headers as one numpy structured array, and hands each channel its datagrams at once:
:meth:`LiveChannel.ingest` decodes them with the compiled column decoder
(``speeddata._columns.BlockDecoder``) straight from the slab. No Python object is made
per datagram or per record; announces (one a second per channel) are the exception.

A :class:`LiveChannel` is keyed by (relay address, channel id) and keeps:

- the recent window: a ring of (time, values) rows for its numeric signals, allocated
  once at its share of ``server.memory`` (pages are touched as rows arrive);
- summaries: :class:`Level` rings of per-bucket count/first/min/max/last at decade
  widths (10 ms ... 10 s), updated per batch with ``downsample.bucketize``/``merge``, so
  that the M4 columns of a chart cost in proportion to its pixel columns;
- the latest value of every signal, and loss as gap intervals from ``seq`` jumps.

See docs/server.md.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import downsample, wire
from ..errors import SpeedDataError
from ..schema import Schema, SchemaError

__all__ = [
    "Intake",
    "IntakeError",
    "LiveChannel",
    "LiveSignal",
    "Level",
    "M4",
    "ladder_width",
    "SUMMARY_WIDTHS",
]

log = logging.getLogger("speeddata.server")

#: bucket widths of the summary levels (ns): decades from 10 ms to 10 s
SUMMARY_WIDTHS = (10_000_000, 100_000_000, 1_000_000_000, 10_000_000_000)
#: a chart column is made from at most this many summary buckets (else a coarser level)
MAX_MERGE = 100
#: gap intervals kept per channel
MAX_GAPS = 4096
#: rows not yet summarized that trigger a fold into the summaries without a chart asking
SYNC_ROWS = 1 << 16
NUMERIC_TYPES = ("int", "long", "float", "double", "boolean")
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
#: seconds between two drains of the socket: datagrams arriving meanwhile wait in the
#: kernel and are taken in one batch (fewer, larger batches: the per-batch cost of numpy
#: is paid ~100 times a second, not once per datagram)
DRAIN_INTERVAL = 0.01


def ladder_width(span_ns: int, pixels: int) -> int:
    """The smallest width on the 1-2-5 ladder (1, 2, 5, 10, 20, 50 ... ns) with
    ``span_ns / width <= pixels``: never more columns than pixels."""
    need = max(1, -(-int(span_ns) // max(1, int(pixels))))
    decade = 1
    while True:
        for step in (1, 2, 5):
            if step * decade >= need:
                return step * decade
        decade *= 10


@dataclass
class LiveSignal:
    """One signal of a live channel as the websocket names it (``channel.signal``)."""

    name: str  # "<channel name>.<signal>"
    field: str  # the schema's signal name
    type: str
    kind: str  # number, enum or string
    column: int  # index among the channel's numeric columns (-1 for strings)
    units: str | None = None
    doc: str | None = None
    symbols: tuple[str, ...] | None = None

    def describe(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "type": self.type, "kind": self.kind}
        if self.units:
            d["units"] = self.units
        if self.doc:
            d["doc"] = self.doc
        if self.symbols is not None:
            d["symbols"] = list(self.symbols)
        return d


@dataclass
class M4:
    """Dense M4 columns of a channel's numeric signals: ``count`` (n,), the others (n, k)."""

    first_column: int
    count: np.ndarray
    first: np.ndarray
    min: np.ndarray
    max: np.ndarray
    last: np.ndarray


class Level:
    """A ring of summary buckets of one width for all numeric signals of a channel.

    Slot ``i % capacity`` holds bucket ``i`` (``index`` says which bucket a slot holds):
    writing a batch's buckets and reading a chart's columns both cost in proportion to
    the buckets touched, whatever the rate behind them.
    """

    def __init__(self, width: int, capacity: int, n_signals: int):
        self.width = int(width)
        self.capacity = int(capacity)
        self.index = np.full(capacity, np.iinfo(np.int64).min, np.int64)
        self.count = np.zeros(capacity, np.int64)
        shape = (capacity, n_signals)
        self.first = np.full(shape, np.nan)
        self.min = np.full(shape, np.nan)
        self.max = np.full(shape, np.nan)
        self.last = np.full(shape, np.nan)
        self.newest = None  # newest bucket index written
        self.oldest = None  # oldest bucket index ever written

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.index, self.count, self.first, self.min,
                                      self.max, self.last))

    def covers_from(self) -> int | None:
        """Start time (ns) from which every bucket up to the newest is still held."""
        if self.newest is None:
            return None
        return max(self.oldest, self.newest - self.capacity + 1) * self.width

    def add(self, b: downsample.Buckets) -> None:
        """Fold a batch's buckets (this width, origin 0, sorted) into the ring."""
        if len(b) == 0:
            return
        idx = b.index
        slot = idx % self.capacity
        same = self.index[slot] == idx
        if same.any():
            s = slot[same]
            self.min[s] = np.fmin(self.min[s], b.min[same])
            self.max[s] = np.fmax(self.max[s], b.max[same])
            self.last[s] = b.last[same]
            self.count[s] += b.count[same]
        fresh = ~same
        if fresh.any():
            s = slot[fresh]
            self.index[s] = idx[fresh]
            self.count[s] = b.count[fresh]
            self.first[s] = b.first[fresh]
            self.min[s] = b.min[fresh]
            self.max[s] = b.max[fresh]
            self.last[s] = b.last[fresh]
        top, bottom = int(idx[-1]), int(idx[0])
        self.newest = top if self.newest is None else max(self.newest, top)
        self.oldest = bottom if self.oldest is None else min(self.oldest, bottom)

    def columns(self, c0: int, n: int, factor: int) -> M4:
        """M4 of columns ``c0 .. c0 + n - 1`` of width ``factor * self.width``."""
        k = self.first.shape[1]
        idx = np.arange(c0 * factor, (c0 + n) * factor, dtype=np.int64)
        slot = idx % self.capacity
        have = (self.index[slot] == idx) & (self.count[slot] > 0)
        count = np.where(have, self.count[slot], 0).reshape(n, factor).sum(axis=1)
        h3 = have[:, None]

        def gather(a):
            return np.where(h3, a[slot], np.nan).reshape(n, factor, k)

        mn = np.fmin.reduce(gather(self.min), axis=1)
        mx = np.fmax.reduce(gather(self.max), axis=1)
        hv = have.reshape(n, factor)
        any_ = hv.any(axis=1)
        j_first = np.argmax(hv, axis=1)
        j_last = factor - 1 - np.argmax(hv[:, ::-1], axis=1)
        rows = np.arange(n)
        first = gather(self.first)[rows, j_first]
        last = gather(self.last)[rows, j_last]
        first[~any_] = np.nan
        last[~any_] = np.nan
        return M4(c0, count.astype(np.float64), first, mn, mx, last)


def _bucket_m4(t: np.ndarray, x: np.ndarray, c0: int, n: int, width: int) -> M4:
    """Dense M4 of rows (sorted ``t``, values ``x`` (rows, k)) in columns c0..c0+n-1.

    Many rows per column (scroll-back): the column edges are found by binary search
    (O(columns log rows)) and each aggregate is one ``reduceat``; few rows per column:
    ``downsample.bucketize``.
    """
    k = x.shape[1]
    count = np.zeros(n, np.float64)
    out = [np.full((n, k), np.nan) for _ in range(4)]
    lo, hi = np.searchsorted(t, [c0 * width, (c0 + n) * width])
    if hi <= lo:
        return M4(c0, count, *out)
    if hi - lo < 8 * n:
        b = downsample.bucketize(t[lo:hi], x[lo:hi], width, 0)
        pos = b.index - c0
        count[pos] = b.count
        for dense, sparse in zip(out, (b.first, b.min, b.max, b.last), strict=True):
            dense[pos] = sparse
        return M4(c0, count, *out)
    edges = np.searchsorted(t, (c0 + np.arange(n + 1, dtype=np.int64)) * width)
    per = np.diff(edges)
    full = np.flatnonzero(per > 0)
    starts = edges[full]
    ends = edges[full + 1]
    count[full] = per[full]
    out[0][full] = x[starts]
    xs = x[: edges[-1]]  # the last reduceat segment runs to the end of its input
    out[1][full] = np.fmin.reduceat(xs, starts, axis=0)
    out[2][full] = np.fmax.reduceat(xs, starts, axis=0)
    out[3][full] = x[ends - 1]
    return M4(c0, count, *out)


def join_m4(parts: list[M4], c0: int, n: int, k: int) -> M4:
    """Combine M4 pieces over the same columns (e.g. cache batches in time order)."""
    count = np.zeros(n)
    first, mn, mx, last = (np.full((n, k), np.nan) for _ in range(4))
    for p in parts:
        sl = slice(p.first_column - c0, p.first_column - c0 + len(p.count))
        has = p.count > 0
        new = has & (count[sl] == 0)
        f = first[sl]
        f[new] = p.first[new]
        first[sl] = f
        mn[sl] = np.fmin(mn[sl], p.min)
        mx[sl] = np.fmax(mx[sl], p.max)
        la = last[sl]
        la[has] = p.last[has]
        last[sl] = la
        count[sl] += p.count
    return M4(c0, count, first, mn, mx, last)


class IntakeError(SpeedDataError):
    """The multicast group cannot be joined as configured; the message names the key."""


@dataclass
class Loss:
    """Loss seen by the server on one channel: datagrams missing from ``seq``."""

    datagrams: int = 0
    gaps: deque = field(default_factory=lambda: deque(maxlen=MAX_GAPS))  # (start, end) ns
    n_gaps: int = 0  # gaps ever seen (the deque keeps the last MAX_GAPS)
    resets: int = 0  # seq went backwards: the relay restarted


class LiveChannel:
    """The live state of one relay channel (see the module docstring)."""

    def __init__(self, relay: str, announce: dict, name: str, step: int, budget: int,
                 window_ns: int):
        self.relay = relay
        self.id = int(announce["id"])
        self.key = f"{relay}/{self.id}"
        self.base_name = str(announce["name"])
        self.name = name
        self.announce = announce
        time_field = announce.get("time")
        self.schema = Schema(announce["schema"], time=time_field or None)
        self.fingerprint = announce.get("fingerprint") or self.schema.fingerprint_hex
        self.decimation = int(announce.get("decimation", 1) or 1)
        self.time_field = self.schema.time_field
        self.time_scale = int(self.schema.time_scale)
        self.step = step  # expected seq step: 1 on the full group, decimation on the other
        self.window_ns = int(window_ns)
        self.signals: list[LiveSignal] = []
        numeric: list[str] = []
        strings: list[str] = []
        for sig in self.schema.signals:
            if sig.name == self.time_field:
                continue
            full = f"{name}.{sig.name}"
            if sig.type in NUMERIC_TYPES or sig.type == "enum":
                kind = "enum" if sig.type == "enum" else "number"
                self.signals.append(LiveSignal(full, sig.name, sig.type, kind, len(numeric),
                                               sig.unit, sig.doc, sig.symbols))
                numeric.append(sig.name)
            elif sig.type == "string":
                self.signals.append(LiveSignal(full, sig.name, sig.type, "string", -1,
                                               sig.unit, sig.doc))
                strings.append(sig.name)
        self.numeric = numeric
        self.strings = strings
        #: every numeric signal a non-null double: the decoder's columns can be copied
        #: into the ring as one block (``_column_block``)
        self._layouts_checked: set[int] = set()
        self.plain_doubles = bool(numeric) and all(
            sig.type == "double" and not sig.nullable
            for sig in self.schema.signals if sig.name in set(numeric))
        names = list(numeric) + list(strings)
        if self.time_field:
            names.append(self.time_field)
        from .._columns import BlockDecoder

        self.decoder = BlockDecoder(self.schema, names, True, 1) if names else None
        k = len(numeric)
        self.k = k
        self.levels: list[Level] = []
        self.capacity = 0
        self.ring_t = np.empty(0, np.int64)
        self.ring_x = np.empty((k, 0), np.float64)  # one row per signal: columns
        self.n_rows = 0  # rows ever written
        self.n_summarized = 0  # rows folded into the summaries
        self.in_order = True  # every row's time >= the one before (binary search works)
        self.budget = 0
        self.resize(budget)
        # latest values
        self.latest_t = np.full(k, np.nan)  # seconds
        self.latest_v = np.full(k, np.nan)
        self.latest_version = np.zeros(k, np.int64)
        self.strings_latest: dict[str, tuple[int, str]] = {}
        self.strings_version = 0
        # counters
        self.version = 0  # +1 per ingested batch
        self.datagrams = 0
        self.records = 0
        self.rejected = 0  # datagrams the decoder refused
        self.t_newest: int | None = None  # ns
        self.t_oldest: int | None = None
        self.last_seq: int | None = None
        self.last_t: int | None = None  # time of the last record (gap starts)
        self.loss = Loss()
        self.last_recv_ns = 0
        self._rate_mark = (time.monotonic(), 0)
        self.rate_hz = 0.0

    def resize(self, budget: int) -> None:
        """(Re)allocate the summaries and the ring within ``budget`` bytes: at most half
        for the summaries (coarse levels first), the rest for the ring. Rows and buckets
        that still fit are kept (a shrink keeps the newest)."""
        if self.capacity:
            self.sync_summaries()  # rows that may not fit are summarized first
        self.budget = int(budget)
        k = self.k
        per_bucket = 8 * 2 + 32 * k
        old_levels = {lv.width: lv for lv in self.levels}
        levels = []
        left = self.budget // 2
        for width in reversed(SUMMARY_WIDTHS):
            want = self.window_ns // width + 2
            cap = int(min(want, max(left // per_bucket, 0)))
            if cap < 16:
                continue
            lv = old_levels.get(width)
            if lv is None or lv.capacity != cap:
                new = Level(width, cap, k)
                if lv is not None and lv.newest is not None:
                    # the newest buckets that fit, through the M4 of the old ring
                    first = max(lv.newest - min(cap, lv.capacity) + 1,
                                lv.oldest if lv.oldest is not None else lv.newest)
                    m4 = lv.columns(first, lv.newest - first + 1, 1)
                    have = m4.count > 0
                    idx = np.arange(first, lv.newest + 1, dtype=np.int64)[have]
                    if len(idx):
                        z = np.zeros(len(idx), np.int64)
                        new.add(downsample.Buckets(
                            width, 0, idx, m4.count[have].astype(np.int64), z,
                            m4.first[have], m4.min[have], m4.max[have], m4.last[have], z))
                lv = new
            levels.append(lv)
            left -= cap * per_bucket
        self.levels = sorted(levels, key=lambda lv: lv.width)
        row_bytes = 8 + 8 * k
        raw_budget = max(self.budget - sum(lv.nbytes for lv in self.levels), 1024 * row_bytes)
        capacity = max(1024, raw_budget // row_bytes)
        if capacity == self.capacity:
            return
        held = min(self.n_rows - self.first_row, capacity) if self.n_rows else 0
        t_keep, x_keep = self._rows(self.n_rows - held, self.n_rows) if held else (None, None)
        # np.empty: the kernel hands out pages as rows reach them
        self.ring_t = np.empty(capacity, np.int64)
        self.ring_x = np.empty((k, capacity), np.float64)
        self.capacity = capacity
        if held:
            # rows keep their logical numbers: re-place them at their new slots
            pos = np.arange(self.n_rows - held, self.n_rows) % capacity
            self.ring_t[pos] = t_keep
            self.ring_x[:, pos] = x_keep.T
        self.n_summarized = max(self.n_summarized, self.n_rows - held)

    @property
    def reserved(self) -> int:
        """Bytes the ring and the summaries can take."""
        return self.capacity * (8 + 8 * self.k) + sum(lv.nbytes for lv in self.levels)

    # -- description

    def describe(self) -> dict:
        return {
            "key": self.key,
            "name": self.name,
            "id": self.id,
            "relay": self.relay,
            "time": self.time_field,
            "decimation": self.decimation,
            "rate_hz": round(self.rate_hz, 3),
            "loss": {"datagrams": self.loss.datagrams, "gaps": self.loss.n_gaps},
            "signals": [s.describe() for s in self.signals],
        }

    def status(self) -> dict:
        return {
            "key": self.key,
            "rate_hz": round(self.rate_hz, 3),
            "datagrams": self.datagrams,
            "records": self.records,
            "rejected": self.rejected,
            "loss": {"datagrams": self.loss.datagrams, "gaps": self.loss.n_gaps},
            "last_ns": self.t_newest,
        }

    def update_rate(self) -> None:
        now = time.monotonic()
        t0, n0 = self._rate_mark
        if now - t0 >= 0.5:
            self.rate_hz = (self.records - n0) / (now - t0)
            self._rate_mark = (now, self.records)

    @property
    def first_row(self) -> int:
        """Logical index of the oldest row the ring holds."""
        return max(0, self.n_rows - self.capacity)

    @property
    def window_start(self) -> int | None:
        """Oldest time (ns) of the raw window."""
        if self.n_rows == 0:
            return None
        if self.in_order:
            oldest = int(self.ring_t[self.first_row % self.capacity])
        else:
            oldest = min(int(self.ring_t[a:b].min()) for a, b in self._segments())
        return max(oldest, (self.t_newest or oldest) - self.window_ns)

    @property
    def raw_bytes(self) -> int:
        return (self.n_rows - self.first_row) * (8 + 8 * self.k)

    @property
    def nbytes(self) -> int:
        """Memory bound of the window and summaries (the ring's pages count once used)."""
        ring = min(self.n_rows, self.capacity) * (8 + 8 * self.k)
        return ring + sum(lv.nbytes for lv in self.levels)

    # -- intake

    def ingest(self, buffer: np.ndarray, start: np.ndarray, size: np.ndarray,
               count: np.ndarray, seq: np.ndarray, recv_ns: np.ndarray) -> None:
        """Decode one batch of this channel's datagrams (payloads at ``buffer[start:
        start+size]``, in arrival order) and fold it into the window and summaries."""
        n_dg = len(start)
        if n_dg == 0:
            return
        cols = self._decode(buffer, start, size, count)
        if cols is None:
            return
        columns, valid, count = cols
        n = int(count.sum())
        if self.time_field:
            t = columns[self.time_field].astype(np.int64, copy=False)
            if self.time_scale != 1:
                t = t * np.int64(self.time_scale)
        else:
            t = np.repeat(recv_ns.astype(np.int64), count)
        self._loss(seq, t, count)
        order = None
        if n and np.any(t[1:] < t[:-1]):
            order = np.argsort(t, kind="stable")
            t = t[order]
        self.datagrams += n_dg
        self.records += n
        self.last_recv_ns = int(recv_ns[-1])
        if n == 0:
            return
        self._strings(columns, t)
        self._window(t, columns, valid, order)
        self._latest(t)
        t_hi, t_lo = int(t[-1]), int(t[0])
        self.t_newest = t_hi if self.t_newest is None else max(self.t_newest, t_hi)
        self.t_oldest = t_lo if self.t_oldest is None else min(self.t_oldest, t_lo)
        self.version += 1

    def _decode(self, buffer, start, size, count):
        dec = self.decoder
        if dec is None:
            return {}, {}, count
        try:
            dec.reserve(int(count.sum()), int(size.sum()))
            dec.decode(buffer, start, size, count)
            columns, valid = dec.finish()
            return columns, valid, count
        except ValueError:
            pass
        # a datagram that is not whole records of the announced schema (a schema changed
        # under the same id, or corruption): decode the others, count the bad ones
        good = np.ones(len(start), bool)
        for i in range(len(start)):
            try:
                dec.reserve(int(count[i]), int(size[i]))
                dec.decode(buffer, start[i : i + 1], size[i : i + 1], count[i : i + 1])
            except ValueError:
                good[i] = False
        self.rejected += int((~good).sum())
        if not good.any():
            return None
        dec.reserve(int(count[good].sum()), int(size[good].sum()))
        dec.decode(buffer, start[good], size[good], count[good])
        columns, valid = dec.finish()
        return columns, valid, count[good]

    def _loss(self, seq: np.ndarray, t: np.ndarray, count: np.ndarray) -> None:
        seq = seq.astype(np.int64)
        prev = np.concatenate(([self.last_seq if self.last_seq is not None else seq[0]
                                - self.step], seq[:-1]))
        d = seq - prev
        resets = d <= 0
        if resets.any():
            self.loss.resets += int(resets.sum())
        jumps = np.flatnonzero(d > self.step)
        if len(jumps):
            lost = (d[jumps] - self.step) // self.step
            self.loss.datagrams += int(lost.sum())
            self.loss.n_gaps += len(jumps)
            # records before datagram j end at row ends[j - 1]
            ends = np.cumsum(count)
            for j in jumps.tolist():
                first_row = int(ends[j - 1]) if j > 0 else 0
                if first_row >= len(t):
                    continue
                before = int(t[first_row - 1]) if first_row > 0 else self.last_t
                after = int(t[first_row])
                self.loss.gaps.append((before if before is not None else after, after))
        self.last_seq = int(seq[-1])
        if len(t):
            self.last_t = int(t[-1])

    def _strings(self, columns: dict, t: np.ndarray) -> None:
        for name in self.strings:
            v = columns.get(name)
            if v is None or len(v) == 0:
                continue
            text = str(v[-1])
            old = self.strings_latest.get(name)
            if old is None or old[1] != text:
                self.strings_version += 1
            self.strings_latest[name] = (int(t[-1]), text)

    def _latest(self, t: np.ndarray) -> None:
        ts = float(t[-1]) / 1e9
        v = self.ring_x[:, (self.n_rows - 1) % self.capacity].copy()  # the newest row
        changed = ~((v == self.latest_v) | (np.isnan(v) & np.isnan(self.latest_v)))
        changed |= self.latest_t != ts
        self.latest_version[changed] = self.version + 1
        self.latest_v = v
        self.latest_t[:] = ts

    def _matrix(self, columns: dict, valid: dict, order: np.ndarray | None) -> np.ndarray:
        """The batch's numeric signals as one (rows, signals) float64 array."""
        n = len(next(iter(columns.values()))) if columns else 0
        x = np.empty((n, self.k), np.float64)
        for j, name in enumerate(self.numeric):
            x[:, j] = columns[name]
            m = valid.get(name)
            if m is not None:
                x[~m, j] = np.nan
        return x if order is None else x[order]

    def _column_block(self, columns: dict, order: np.ndarray | None, n: int
                      ) -> np.ndarray | None:
        """The decoder's columns of the numeric signals as one (signals, rows) view, when
        they lie in its slab at equal distances (they do when all are non-null doubles:
        the decoder lays out columns one after the other); else None."""
        if order is not None or self.k == 0:
            return None
        cols = [columns[name] for name in self.numeric]
        first = cols[0]
        if len(first) < n or first.strides != (8,):
            return None
        if self.k == 1:
            return first[None, :]
        p0 = first.__array_interface__["data"][0]
        step = cols[1].__array_interface__["data"][0] - p0
        if step < 8 * len(first) or \
                cols[-1].__array_interface__["data"][0] - p0 != step * (self.k - 1):
            return None
        # the layout is a function of the rows reserved: every pointer is checked the
        # first time a batch size is seen, the two ends after that
        if len(first) not in self._layouts_checked:
            ptrs = np.fromiter((c.__array_interface__["data"][0] for c in cols), np.int64,
                               self.k)
            if np.any(np.diff(ptrs) != step):
                return None
            if len(self._layouts_checked) < 4096:
                self._layouts_checked.add(len(first))
        return np.lib.stride_tricks.as_strided(first, (self.k, len(first)), (step, 8),
                                               writeable=False)

    def _window(self, t: np.ndarray, columns: dict, valid: dict,
                order: np.ndarray | None) -> None:
        """Write the batch into the ring, each signal's column straight from the
        decoder's (one copy; invalid values as NaN)."""
        n = len(t)
        if self.n_rows and int(t[0]) < int(self.ring_t[(self.n_rows - 1) % self.capacity]):
            self.in_order = False
        if self.n_rows + n - self.n_summarized > self.capacity:
            self.sync_summaries()  # rows about to be overwritten are summarized first
        skip = 0
        if n > self.capacity:  # one batch larger than the ring: summarize, keep the newest
            skip = n - self.capacity
            x = self._matrix(columns, valid, order)
            self._summarize(t[:skip], x[:skip])
            self.n_rows += skip
            self.n_summarized = self.n_rows
        pos = self.n_rows % self.capacity
        m = n - skip
        first = min(m, self.capacity - pos)
        spans = [(pos, skip, first)]  # (ring position, batch row, rows)
        if first < m:
            spans.append((0, skip + first, m - first))
        for at, row, rows in spans:
            self.ring_t[at : at + rows] = t[row : row + rows]
        block = self._column_block(columns, order, m) if self.plain_doubles else None
        if block is not None:  # every signal in one strided copy per span
            for at, row, rows in spans:
                self.ring_x[:, at : at + rows] = block[:, row : row + rows]
            self.n_rows += m
            if self.n_rows - self.n_summarized >= SYNC_ROWS:
                self.sync_summaries()
            return
        for j, name in enumerate(self.numeric):
            v = columns[name]
            mask = valid.get(name)
            if order is not None:
                v = v[order]
                mask = None if mask is None else mask[order]
            for at, row, rows in spans:
                dst = self.ring_x[j, at : at + rows]
                dst[:] = v[row : row + rows]
                if mask is not None:
                    dst[~mask[row : row + rows]] = np.nan
        self.n_rows += m
        if self.n_rows - self.n_summarized >= SYNC_ROWS:
            self.sync_summaries()

    def _rows(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Logical rows ``lo .. hi-1`` (held by the ring), as arrays (a copy when they
        wrap around the ring's end, else views)."""
        a, b = lo % self.capacity, hi % self.capacity or self.capacity
        if hi - lo <= 0:
            return self.ring_t[:0], self.ring_x[:, :0].T
        if a < b:
            return self.ring_t[a:b], self.ring_x[:, a:b].T
        return (np.concatenate((self.ring_t[a:], self.ring_t[:b])),
                np.concatenate((self.ring_x[:, a:].T, self.ring_x[:, :b].T)))

    def sync_summaries(self) -> None:
        """Fold the rows not yet summarized into the summary levels: done when a chart
        asks for columns, before rows are overwritten, and every SYNC_ROWS rows, so a
        channel pays for its summaries in large batches."""
        lo = max(self.n_summarized, self.first_row)
        if lo >= self.n_rows:
            return
        t, x = self._rows(lo, self.n_rows)
        self.n_summarized = self.n_rows
        self._summarize(t, x)

    def _summarize(self, t: np.ndarray, x: np.ndarray) -> None:
        if not self.levels or len(t) == 0:
            return
        if np.any(t[1:] < t[:-1]):
            order = np.argsort(t, kind="stable")
            t, x = t[order], x[order]
        b = downsample.bucketize(t, x, self.levels[0].width, 0)
        self.levels[0].add(b)
        for lower, upper in zip(self.levels, self.levels[1:], strict=False):
            b = downsample.merge(b, upper.width // lower.width)
            upper.add(b)

    # -- reading

    def _segments(self) -> list[tuple[int, int]]:
        """The ring's held rows as at most two slices, oldest first."""
        lo, hi = self.first_row, self.n_rows
        if hi <= lo:
            return []
        a, b = lo % self.capacity, hi % self.capacity or self.capacity
        return [(a, b)] if a < b else [(a, self.capacity), (0, b)]

    def raw_rows(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        """The window's rows with ``t0 <= t < t1`` (and within ``window`` of the newest),
        in time order; copies only the rows selected."""
        if self.t_newest is not None:
            t0 = max(t0, self.t_newest - self.window_ns)
        ts, xs = [], []
        for a, b in self._segments():
            seg_t = self.ring_t[a:b]
            if self.in_order:
                i, j = np.searchsorted(seg_t, [t0, t1])
                if j > i:
                    ts.append(seg_t[i:j])
                    xs.append(self.ring_x[:, a + i : a + j].T)
            else:
                keep = (seg_t >= t0) & (seg_t < t1)
                ts.append(seg_t[keep])
                xs.append(self.ring_x[:, a:b][:, keep].T)
        if not ts:
            return np.zeros(0, np.int64), np.zeros((0, self.k))
        t = ts[0] if len(ts) == 1 else np.concatenate(ts)
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        if not self.in_order:
            order = np.argsort(t, kind="stable")
            t, x = t[order], x[order]
        return t, x

    def can_serve(self, t0: int, width: int) -> bool:
        """Whether memory holds this channel from ``t0`` on at columns of ``width``: the
        raw window reaches back that far, or a summary level that divides ``width`` does;
        else the cache has to be read."""
        ws = self.window_start
        if ws is not None and t0 >= ws:
            return True
        self.sync_summaries()
        return any(lv.covers_from() is not None and lv.covers_from() <= t0
                   and width % lv.width == 0 and width // lv.width <= MAX_MERGE
                   for lv in self.levels)

    def m4(self, c0: int, n: int, width: int) -> M4:
        """M4 of columns ``c0 .. c0+n-1`` of ``width`` ns for all numeric signals: from
        the finest summary level that holds the range and divides the width, else from
        the raw window."""
        self.sync_summaries()
        t0 = c0 * width
        ws = self.window_start
        if ws is None or t0 < ws:
            for lv in self.levels:
                if width % lv.width or width // lv.width > MAX_MERGE:
                    continue
                cov = lv.covers_from()
                if cov is not None and cov <= max(t0, self.t_oldest or t0):
                    return lv.columns(c0, n, width // lv.width)
        else:
            # the raw window holds the range: summaries still cost less when they divide
            for lv in self.levels:
                if width % lv.width == 0 and width // lv.width <= MAX_MERGE:
                    cov = lv.covers_from()
                    if cov is not None and cov <= t0:
                        return lv.columns(c0, n, width // lv.width)
        t, x = self.raw_rows(t0, (c0 + n) * width)
        return _bucket_m4(t, x, c0, n, width)

    def gaps_in(self, t0: int, t1: int) -> list[tuple[int, int]]:
        return [g for g in self.loss.gaps if g[1] >= t0 and g[0] < t1]


class Intake:
    """Receive the relay's multicast group on the IOLoop and feed the channels.

    ``on_change()`` is called when the set of channels (or a schema) changes.
    """

    def __init__(self, group: tuple[str, int], interface: str = "127.0.0.1",
                 decimated: bool = False, memory: int = 512 << 20, window: float = 600.0,
                 batch: int = 256, rcvbuf: int = 32 << 20, on_change=None):
        from .._mcast import SLOT, BatchReceiver

        self.group = group
        self.interface = interface
        self.decimated = decimated
        self.memory = int(memory)
        self.window_ns = int(window * 1e9)
        self.channels: dict[int, LiveChannel] = {}  # (addr << 32 | id) -> channel
        self.on_change = on_change
        self.rx = BatchReceiver(batch)
        self.slot = SLOT
        self.flat = self.rx.slab.reshape(-1)
        self.n_unknown = 0  # data datagrams of channels not yet announced
        self.n_invalid = 0  # datagrams that are not SpeedData multicast
        self.n_received = 0
        self.n_batches = 0
        self.sock = self._open(rcvbuf)
        self._loop = None
        self._watching = False
        self._timer = None
        self._last_drain = 0.0
        self.drain_interval = DRAIN_INTERVAL
        #: server.memory is split in this many equal shares, one per channel (doubled,
        #: and every channel shrunk to the new share, when channels outnumber it)
        self.shares = 4

    def _open(self, rcvbuf: int) -> socket.socket:
        addr, port = self.group
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:  # past net.core.rmem_max when allowed (CAP_NET_ADMIN), as the relay does
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            try:
                sock.bind((addr, port))
            except OSError as exc:
                raise IntakeError(
                    f"cannot bind the multicast socket to {addr}:{port} ({exc.strerror}); "
                    "multicast.full and multicast.decimated are the relays' groups "
                    "(server.group picks one)") from None
            try:
                sock.setsockopt(
                    socket.IPPROTO_IP,
                    socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton(addr) + socket.inet_aton(self.interface),
                )
            except OSError as exc:
                # ip(7): the membership's interface is looked up by address; one that
                # is not this host's gives ENODEV (EADDRNOTAVAIL on older kernels)
                raise IntakeError(
                    f"cannot join multicast group {addr} on multicast.interface "
                    f"{self.interface} ({exc.strerror}): give the IPv4 address of this "
                    "host's interface on the relays' network (`ip -4 addr` lists them), "
                    "or 127.0.0.1 when the relay runs on this host") from None
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self, loop=None) -> None:
        from tornado.ioloop import IOLoop

        self._loop = loop or IOLoop.current()
        self._watch()

    def _watch(self) -> None:
        from tornado.ioloop import IOLoop

        self._watching = True
        self._loop.add_handler(self.sock.fileno(), self._on_readable, IOLoop.READ)

    def close(self) -> None:
        if self._loop is not None:
            if self._watching:
                self._loop.remove_handler(self.sock.fileno())
            if self._timer is not None:
                self._loop.remove_timeout(self._timer)
            self._loop = None
        self.sock.close()

    def _on_readable(self, fd, events) -> None:
        # Drain now, or (if the last drain was less than DRAIN_INTERVAL ago) stop
        # watching and drain when the interval is over: batches grow with the rate.
        now = time.monotonic()
        wait = self._last_drain + self.drain_interval - now
        if wait <= 0:
            self.drain()
            return
        self._loop.remove_handler(fd)
        self._watching = False
        self._timer = self._loop.call_later(wait, self._drain_later)

    def _drain_later(self) -> None:
        self._timer = None
        if self._loop is None:
            return
        self.drain()
        self._watch()

    def drain(self) -> None:
        """Take what waits on the socket, a bounded number of batches (the IOLoop serves
        clients in between; the handler is level-triggered and comes back)."""
        if self._loop is None:
            return
        self._last_drain = time.monotonic()
        fd = self.sock.fileno()
        for _ in range(16):
            try:
                n = self.rx.recv(fd)
            except OSError as exc:
                log.warning("multicast receive failed: %s", exc)
                return
            if n == 0:
                return
            self.process(n)
            if n < self.rx.batch:
                return

    def process(self, n: int) -> None:
        """Handle the first ``n`` datagrams of the receive slab."""
        self.n_received += n
        self.n_batches += 1
        length = self.rx.length[:n].astype(np.int64)
        source = self.rx.source[:n]
        hdr = np.ascontiguousarray(self.rx.slab[:n, : wire.HEADER_SIZE]).view(
            wire.HEADER_DTYPE).reshape(n)
        header_len = hdr["header_len"].astype(np.int64)
        ok = (
            (length >= wire.HEADER_SIZE)
            & (hdr["magic"] == wire.MAGIC)
            & (hdr["version"] == wire.VERSION)
            & (header_len >= wire.HEADER_SIZE)
            & (header_len <= length)
        )
        self.n_invalid += int(n - ok.sum())
        kind = hdr["kind"]
        for i in np.flatnonzero(ok & (kind == wire.KIND_ANNOUNCE)).tolist():
            payload = bytes(self.rx.slab[i, header_len[i] : length[i]])
            self._announce(int(source[i]), payload)
        data = np.flatnonzero(ok & (kind == wire.KIND_DATA))
        if len(data) == 0:
            return
        keys = (source[data].astype(np.uint64) << np.uint64(32)) | hdr["channel_id"][data]
        if len(data) > 1 and np.any(keys != keys[0]):
            uniq, inverse = np.unique(keys, return_inverse=True)
            groups = [(int(u), data[inverse == j]) for j, u in enumerate(uniq)]
        else:
            groups = [(int(keys[0]), data)]
        for key, rows in groups:
            ch = self.channels.get(key)
            if ch is None:
                self.n_unknown += len(rows)
                continue
            h = hdr[rows]
            hl = header_len[rows]
            ch.ingest(
                self.flat,
                rows.astype(np.int64) * self.slot + hl,
                length[rows] - hl,
                h["n_records"].astype(np.int64),
                h["seq"],
                h["recv_ns"],
            )

    def _announce(self, source: int, payload: bytes) -> None:
        try:
            ann = wire.parse_announce(payload)
            cid = int(ann["id"])
            decimation = int(ann.get("decimation", 1) or 1)
            if decimation < 1:
                raise ValueError(f"decimation {decimation}")
        except (wire.WireError, KeyError, TypeError, ValueError, AttributeError):
            self.n_invalid += 1  # a malformed announce is counted, never fatal
            return
        key = (source << 32) | cid
        old = self.channels.get(key)
        if old is not None and old.fingerprint == ann.get("fingerprint") and \
                old.base_name == ann.get("name") and old.decimation == decimation:
            return
        relay = socket.inet_ntoa(source.to_bytes(4, "big"))
        name = str(ann.get("name"))
        taken = {c.name for k, c in self.channels.items() if k != key}
        if name in taken:
            name = f"{name}@{relay}"
        step = decimation if self.decimated else 1
        n = len(self.channels) + (0 if old else 1)
        if n > self.shares:  # more channels than shares: halve every channel's share
            while n > self.shares:
                self.shares *= 2
            for c in self.channels.values():
                c.resize(self.share)
        try:
            ch = LiveChannel(relay, ann, name, step, self.share, self.window_ns)
        except (SchemaError, KeyError, TypeError, ValueError) as exc:
            self.n_invalid += 1
            log.warning("announce of channel %s from %s refused: %s", cid, relay, exc)
            return
        self.channels[key] = ch
        log.info("channel %s (%s) from %s: %d signals", ch.name, ch.key, relay,
                 len(ch.signals))
        if self.on_change is not None:
            self.on_change()

    def forget(self, name: str) -> bool:
        """Drop the channel ``name`` (its window and summaries) after the relay stopped
        serving it; a later announce of it is learnt again as new."""
        key = next((k for k, c in self.channels.items() if c.name == name), None)
        if key is None:
            return False
        del self.channels[key]
        log.info("channel %s forgotten (removed from the relay)", name)
        if self.on_change is not None:
            self.on_change()
        return True

    # -- lookups

    def by_name(self, name: str) -> LiveChannel | None:
        for ch in self.channels.values():
            if ch.name == name or ch.key == name:
                return ch
        return None

    def signal_index(self) -> dict[str, tuple[LiveChannel, LiveSignal]]:
        return {s.name: (ch, s) for ch in self.channels.values() for s in ch.signals}

    def now_ns(self) -> int:
        return time.time_ns()

    @property
    def share(self) -> int:
        return self.memory // self.shares

    def memory_used(self) -> int:
        """Bytes of the windows in use and of the summaries, all channels."""
        return sum(ch.nbytes for ch in self.channels.values())

    def memory_reserved(self) -> int:
        """Bytes the windows and summaries can grow to, all channels (<= server.memory)."""
        return sum(ch.reserved for ch in self.channels.values())
