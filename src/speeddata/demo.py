"""Demo signals and the demo source behind ``speeddata source --demo`` and ``speeddata up``.

Every generator is a pure function of time ``t`` (seconds, a float64 array), so a test
can evaluate it at chosen instants: sine, square, ramp, white noise, a slow random walk,
an enum state that changes now and then, a counter, a log message and a nullable value.
"Random" ones hash the time (and a seed), so they are deterministic.

:class:`DemoRunner` sends each configured channel at its rate until stopped: the known
demo fields (``engine``, ``power``, ``status`` schemas) get realistic signals, any other
field a generic one of its type. Sample ``k`` of a channel is at ``k / rate`` seconds after
the start and carries that time, so rates and time stamps do not drift. A channel is sent
at most every :data:`MIN_TICK` seconds: faster channels send the samples due since the last
tick together (``power`` at 1 kHz sends 10 records per 10 ms through the numpy path).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from .config import Config
from .schema import Schema, Signal
from .source import Source, SourceError

__all__ = [
    "DEMO_RATES",
    "DEFAULT_RATE",
    "MIN_TICK",
    "DemoChannel",
    "DemoRunner",
    "parse_rates",
    "sine",
    "square",
    "ramp",
    "noise",
    "random_walk",
    "enum_state",
    "counter",
    "message",
    "with_nulls",
]

#: records per second of the demo channels; other channel names get DEFAULT_RATE
DEMO_RATES = {"engine": 100.0, "power": 1000.0, "status": 1.0}
DEFAULT_RATE = 10.0
#: shortest interval between two sends of one channel (faster rates batch samples)
MIN_TICK = 0.01
#: a channel that falls further behind than this (a suspended process) skips ahead
MAX_BACKLOG = 1.0
MAX_RATE = 1e7


# -- signal generators: pure functions of time ------------------------------------------


def _hash(seed: int, keys: np.ndarray) -> np.ndarray:
    """splitmix64 of (seed, key) -> uniform uint64, vectorized."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(seed: int, keys: np.ndarray) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer key."""
    return (_hash(seed, keys) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _ns_keys(t: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(t, dtype=np.float64) * 1e9).astype(np.int64).view(np.uint64)


def sine(t, freq: float, amp: float = 1.0, offset: float = 0.0, phase: float = 0.0):
    """``offset + amp * sin(2 pi (freq t + phase))``; phase in cycles."""
    return offset + amp * np.sin(2 * np.pi * (freq * np.asarray(t, dtype=np.float64) + phase))


def square(t, freq: float, amp: float = 1.0, offset: float = 0.0, duty: float = 0.5):
    """``offset + amp`` for the first ``duty`` of each period, ``offset - amp`` after."""
    frac = np.mod(freq * np.asarray(t, dtype=np.float64), 1.0)
    return offset + np.where(frac < duty, amp, -amp)


def ramp(t, period: float, lo: float = 0.0, hi: float = 1.0):
    """A sawtooth from ``lo`` to ``hi`` every ``period`` seconds."""
    return lo + (hi - lo) * np.mod(np.asarray(t, dtype=np.float64) / period, 1.0)


def noise(t, seed: int = 0, scale: float = 1.0):
    """White Gaussian noise, one deterministic value per instant (Box-Muller of two hashes)."""
    keys = _ns_keys(t)
    u1 = _uniform(seed, keys)
    u2 = _uniform(seed + 7919, keys)
    return scale * np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)


def random_walk(t, seed: int = 0, scale: float = 1.0, tau: float = 60.0, octaves: int = 6):
    """A slow, continuous random wander of about ``scale`` over ``tau`` seconds.

    Value noise summed over octaves (step ``tau / 2**k``, amplitude ``~ sqrt(step)`` as a
    Brownian walk's spread), so it is a function of time yet looks like a random walk.
    """
    t = np.asarray(t, dtype=np.float64)
    total = np.zeros(t.shape)
    norm = 0.0
    for k in range(octaves):
        step = tau / 2**k
        x = t / step
        i = np.floor(x)
        f = x - i
        f = f * f * (3 - 2 * f)  # smoothstep: continuous slope at lattice points
        keys = i.astype(np.int64).view(np.uint64)
        a = _uniform(seed * 31 + k, keys) * 2 - 1
        b = _uniform(seed * 31 + k, keys + np.uint64(1)) * 2 - 1
        weight = math.sqrt(step / tau)
        total += weight * (a + (b - a) * f)
        norm += weight
    return scale * total / norm


def enum_state(t, n_symbols: int, seed: int = 0, dwell: float = 5.0, weights=None):
    """An index of ``n_symbols`` states held for ``dwell`` seconds, drawn by ``weights``."""
    w = np.ones(n_symbols) if weights is None else np.asarray(weights[:n_symbols], float)
    if len(w) < n_symbols:
        w = np.concatenate([w, np.full(n_symbols - len(w), w.min() if len(w) else 1.0)])
    cdf = np.cumsum(w / w.sum())
    keys = np.floor(np.asarray(t, dtype=np.float64) / dwell).astype(np.int64).view(np.uint64)
    idx = np.searchsorted(cdf, _uniform(seed, keys), side="right")
    return np.minimum(idx, n_symbols - 1).astype(np.int32)


def counter(t, rate: float):
    """The sample number at ``rate`` samples per second: ``round(t * rate)``."""
    return np.round(np.asarray(t, dtype=np.float64) * rate).astype(np.int64)


_MESSAGES = (
    "all systems nominal",
    "coolant pump cycling",
    "log rotated",
    "operator login",
    "calibration check passed",
    "fan speed raised",
)


def message(t, seed: int = 0):
    """A log line per instant: a phrase chosen by the second, plus the elapsed time."""
    t = np.asarray(t, dtype=np.float64)
    pick = _hash(seed, np.floor(t).astype(np.int64).view(np.uint64)) % np.uint64(len(_MESSAGES))
    return np.array(
        [f"{_MESSAGES[int(p)]} (t={x:.1f}s)" for p, x in zip(pick.ravel(), t.ravel(), strict=True)],
        dtype=object,
    ).reshape(t.shape)


def with_nulls(values, t, seed: int = 0, share: float = 0.2):
    """``values`` as float64 with NaN (sent as null) at about ``share`` of the instants."""
    out = np.array(values, dtype=np.float64)
    out[_uniform(seed, _ns_keys(t)) < share] = np.nan
    return out


# -- per-field choice -------------------------------------------------------------------

# Known demo fields -> f(t, rate); numeric unless the field's type says otherwise.
_KNOWN: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "rpm": lambda t, r: sine(t, 0.1, 1500.0, 2500.0),
    "torque": lambda t, r: sine(t, 0.1, 120.0, 200.0, 0.1) + noise(t, 1, 5.0),
    "temperature": lambda t, r: 85.0 + random_walk(t, 2, 6.0, 60.0),
    "throttle": lambda t, r: ramp(t, 20.0, 0.0, 100.0),
    "counter": lambda t, r: counter(t, r),
    "voltage": lambda t, r: sine(t, 50.0, 325.0),
    "current": lambda t, r: square(t, 50.0, 10.0),
    "noise": lambda t, r: noise(t, 3, 0.5),
    "uptime": lambda t, r: np.asarray(t, dtype=np.float64),
    "load": lambda t, r: np.clip(0.5 + random_walk(t, 4, 0.4, 10.0), 0.0, 1.0),
    "host.cpu_temp": lambda t, r: 55.0 + random_walk(t, 5, 8.0, 30.0),
    "host.free_disk": lambda t, r: 500e9 - 1e6 * np.asarray(t, dtype=np.float64),
}
_STATE_WEIGHTS = (0.2, 0.75, 0.05)  # IDLE, RUN, FAULT: mostly running


def _field_values(sig: Signal, t: np.ndarray, rate: float) -> np.ndarray:
    """The demo column of one signal at times ``t``: realistic for known fields, generic
    by type otherwise. Floats for numbers (NaN = null when nullable), enum indexes, str."""
    seed = sum(sig.name.encode()) % 1000
    if sig.type == "enum":
        weights = _STATE_WEIGHTS if sig.name.endswith("state") else None
        return enum_state(t, len(sig.symbols or ()), seed, 5.0, weights)
    if sig.type in ("string", "bytes"):
        text = message(t, seed)
        return text if sig.type == "string" else np.array([s.encode() for s in text], object)
    if sig.type == "fixed":
        size = sig.size or 1
        words = -(-size // 8)
        raw = _hash(seed, _ns_keys(t))[:, None] + np.arange(words, dtype=np.uint64)
        raw_bytes = np.ascontiguousarray(raw.view(np.uint8).reshape(len(t), 8 * words)[:, :size])
        return raw_bytes.view(f"S{size}").reshape(-1)
    gen = _KNOWN.get(sig.name)
    if gen is not None:
        values = gen(t, rate)
    elif sig.type == "boolean":
        values = square(t, 0.2) > 0
    elif sig.type in ("int", "long"):
        values = counter(t, rate)
    else:
        values = sine(t, 0.05 + (seed % 20) / 20.0, 1.0 + seed % 10, 0.0, seed / 1000.0)
    if sig.nullable:
        return with_nulls(values, t, seed, 0.2)
    if sig.type in ("int", "long"):
        info = np.iinfo(np.int32 if sig.type == "int" else np.int64)
        return np.clip(np.round(values), info.min, info.max).astype(sig.dtype)
    return np.asarray(values).astype(sig.dtype)


# -- a demo channel ---------------------------------------------------------------------


class DemoChannel:
    """One channel's demo signals and its :class:`~speeddata.source.Source`."""

    def __init__(self, name: str, schema: Schema, rate: float, source: Source):
        self.name = name
        self.schema = schema
        self.rate = float(rate)
        self.tick = max(1.0 / self.rate, MIN_TICK)
        self.source = source
        self.k = 0  # next sample number
        self.next_tick = 0.0  # seconds after the start
        self.numpy = not any(s.type in ("string", "bytes") for s in schema.signals)
        self.signals = [s for s in schema.signals if s.name != schema.time_field]
        if self.numpy:
            # nullable ints are sent through numpy as float columns with NaN -> null: use
            # the mask for them instead (NaN cannot live in an int column)
            self.dtype = np.dtype([(s.name, self._column_dtype(s)) for s in self.signals])

    @staticmethod
    def _column_dtype(sig: Signal) -> np.dtype:
        if sig.nullable and sig.type in ("float", "double"):
            return np.dtype("<f8")
        return sig.dtype

    def times(self, k0: int, k1: int) -> np.ndarray:
        """Seconds after the start of samples ``k0 .. k1 - 1``."""
        return np.arange(k0, k1, dtype=np.float64) / self.rate

    def array(self, t: np.ndarray) -> np.ndarray:
        """The samples at ``t`` as a structured array (numpy-path schemas only)."""
        values = {s.name: _field_values(s, t, self.rate) for s in self.signals}
        mask = {}
        arr = np.empty(len(t), dtype=self.dtype)
        for s in self.signals:
            col = values[s.name]
            if s.nullable and s.type not in ("float", "double"):
                mask[s.name] = np.isnan(col)
                col = np.where(mask[s.name], 0, col)
            arr[s.name] = col
        if mask:
            m = np.zeros(len(t), dtype=[(n, "?") for n in self.dtype.names])
            for name, flags in mask.items():
                m[name] = flags
            return np.ma.array(arr, mask=m)
        return arr

    def records(self, t: np.ndarray, t0_ns: int) -> list[dict[str, Any]]:
        """The samples at ``t`` as dicts (for schemas with strings or bytes)."""
        cols = {s.name: _field_values(s, t, self.rate) for s in self.signals}
        tf = self.schema.time_field
        stamps = self.stamps(t, t0_ns) // self.schema.time_scale
        out = []
        for row in range(len(t)):
            rec: dict[str, Any] = {}
            if tf is not None:
                _put(rec, tf, int(stamps[row]))
            for s in self.signals:
                v = cols[s.name][row]
                if s.type == "enum":
                    v = (s.symbols or ())[int(v)]
                elif s.type == "fixed":
                    v = cols[s.name][row : row + 1].tobytes()  # bytes(v) drops trailing NULs
                elif isinstance(v, np.generic):
                    v = v.item()
                if s.nullable and isinstance(v, float) and math.isnan(v):
                    v = None
                elif s.type in ("int", "long") and v is not None:
                    v = int(v)
                _put(rec, s.name, v)
            out.append(rec)
        return out

    @staticmethod
    def stamps(t: np.ndarray, t0_ns: int) -> np.ndarray:
        """Absolute ns since the epoch of seconds-after-start ``t``."""
        return t0_ns + np.round(t * 1e9).astype(np.int64)

    def send_due(self, elapsed: float, t0_ns: int) -> int:
        """Send every sample due at ``elapsed`` seconds after the start; returns how many."""
        k_end = math.floor(elapsed * self.rate) + 1
        if k_end - self.k > MAX_BACKLOG * self.rate + 1:
            self.k = k_end - int(MAX_BACKLOG * self.rate)  # fell behind: skip ahead
        k0, self.k = self.k, max(self.k, k_end)
        if self.k <= k0:
            return 0
        t = self.times(k0, self.k)
        if self.numpy:
            self.source.send_array(self.array(t), times=self.stamps(t, t0_ns))
        else:
            self.source.send_many(self.records(t, t0_ns))
        return self.k - k0


def _put(rec: dict, path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    while rest:
        rec = rec.setdefault(head, {})
        head, _, rest = rest.partition(".")
    rec[head] = value


# -- rates ------------------------------------------------------------------------------


def parse_rates(items: list[str]) -> tuple[float, dict[str, float]]:
    """``--rate`` values -> (multiplier, {channel: records/s}).

    A plain number multiplies every demo rate (several multiply together); ``CH=HZ`` sets
    one channel's rate, which the multiplier does not change.
    """
    multiplier = 1.0
    overrides: dict[str, float] = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            name, eq, value = part.partition("=")
            try:
                number = float(value if eq else name)
            except ValueError:
                number = float("nan")
            if not (0 < number <= MAX_RATE) or (eq and not name.strip()):
                raise SourceError(
                    f"--rate {part!r}: write a multiplier (e.g. 2) or CHANNEL=HZ (e.g. "
                    f"power=5000), with a number above 0 and at most {MAX_RATE:g}"
                )
            if eq:
                overrides[name.strip()] = number
            else:
                multiplier *= number
    return multiplier, overrides


# -- the runner -------------------------------------------------------------------------


class DemoRunner:
    """Send demo signals on a config's channels at their rates, until stopped.

    ``host`` receives everything (the relay's address); each channel goes to its port, or
    with ``shared=True`` (or when it has no port) to ``relay.shared_port`` with
    single-object encoding. ``channels`` picks a subset by name. ``out`` gets the per
    channel send rate once a second (a single updated line on a terminal).
    """

    def __init__(
        self,
        config: Config,
        host: str = "127.0.0.1",
        channels: list[str] | None = None,
        multiplier: float = 1.0,
        rates: dict[str, float] | None = None,
        shared: bool = False,
        max_datagram: int | None = None,
        out: IO[str] | None = None,
    ):
        rates = dict(rates or {})
        names = [c.name for c in config.channels]
        if not names:
            raise SourceError(f"{config.path or 'config'}: no channels to send")
        chosen = channels or names
        unknown = [n for n in list(chosen) + list(rates) if n not in names]
        if unknown:
            raise SourceError(f"no channel {unknown[0]!r} in the config; channels: {names}")
        self.out = out
        self.channels: list[DemoChannel] = []
        kwargs = {} if max_datagram is None else {"max_datagram": max_datagram}
        try:
            for ch in config.channels:
                if ch.name not in chosen:
                    continue
                single = shared or ch.port is None
                port = config.relay.shared_port if single else ch.port
                if port is None:
                    raise SourceError(
                        f"channel {ch.name!r} has no port and relay.shared_port is off: give "
                        "it a port, or set relay.shared_port"
                    )
                rate = rates.get(ch.name, DEMO_RATES.get(ch.name, DEFAULT_RATE) * multiplier)
                if not 0 < rate <= MAX_RATE:
                    raise SourceError(f"channel {ch.name!r}: rate {rate:g}/s is out of range")
                src = Source(ch.name, ch.schema, (host, port), single_object=single, **kwargs)
                self.channels.append(DemoChannel(ch.name, ch.schema, rate, src))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for ch in self.channels:
            ch.source.close()

    def __enter__(self) -> DemoRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, duration: float | None = None) -> None:
        """Send until ``duration`` seconds have passed (None: until KeyboardInterrupt).

        The loop sleeps until the next channel tick or report: it never spins.
        """
        tty = bool(self.out is not None and getattr(self.out, "isatty", lambda: False)())
        start = time.monotonic()
        t0_ns = time.time_ns()
        deadline = math.inf if duration is None else start + duration
        next_report = start + 1.0
        last = (start, [(c.source.n_records, c.source.n_datagrams) for c in self.channels])
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                elapsed = now - start
                for ch in self.channels:
                    if elapsed >= ch.next_tick:
                        ch.send_due(elapsed, t0_ns)
                        ch.next_tick = (math.floor(elapsed / ch.tick) + 1) * ch.tick
                if now >= next_report:
                    last = self._report(last, now, tty)
                    next_report = max(next_report + 1.0, now + 0.5)
                wake = min(min(c.next_tick for c in self.channels) + start, next_report, deadline)
                pause = wake - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        except KeyboardInterrupt:
            pass
        finally:
            self._summary(time.monotonic() - start, tty)

    def _report(self, last, now: float, tty: bool):
        counts = [(c.source.n_records, c.source.n_datagrams) for c in self.channels]
        if self.out is not None:
            dt = max(now - last[0], 1e-9)
            parts = [
                f"{c.name} {(n - n0) / dt:,.0f} rec/s {(d - d0) / dt:,.0f} dgram/s"
                for c, (n, d), (n0, d0) in zip(self.channels, counts, last[1], strict=True)
            ]
            line = "sending: " + " | ".join(parts)
            if tty:
                self.out.write("\r" + line + "\x1b[K")
            else:
                self.out.write(line + "\n")
            self.out.flush()
        return now, counts

    def _summary(self, elapsed: float, tty: bool) -> None:
        if self.out is None:
            return
        parts = [
            f"{c.name} {c.source.n_records} records in {c.source.n_datagrams} datagrams"
            for c in self.channels
        ]
        self.out.write(
            ("\n" if tty else "") + f"sent in {elapsed:.1f} s: " + ", ".join(parts) + "\n"
        )
        self.out.flush()
