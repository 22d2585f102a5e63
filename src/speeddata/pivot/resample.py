"""Resampling: records grouped in time buckets of a fixed length (aligned on the epoch)
and aggregated per bucket (``mean``, ``min``, ``max``, ``first``, ``last``, ``sum``);
and the row selections the pivot makes of a batch of columns."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..reader import Columns
from .plan import is_numeric

AGGREGATES = ("mean", "min", "max", "first", "last", "sum")


def concat_columns(a: Columns, b: Columns) -> Columns:
    out = Columns({k: _cat(a[k], b[k]) for k in b}, channel=b.channel, schema=b.schema,
                  valid={k: np.concatenate([a.valid[k], b.valid[k]]) for k in b.valid},
                  start_ns=b.start_ns, end_ns=b.end_ns)
    return out


def _cat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return y
    if len(y) == 0:
        return x
    return np.concatenate([x, y])


def take_rows(cols: Columns, sel: Any) -> Columns:
    return Columns({k: v[sel] for k, v in cols.items()}, channel=cols.channel,
                   schema=cols.schema, valid={k: v[sel] for k, v in cols.valid.items()},
                   start_ns=cols.start_ns, end_ns=cols.end_ns)


def resample_columns(cols: Columns, period_ns: int, aggs: list[str]) -> dict[str, np.ndarray]:
    """Bucket ``cols`` by ``time // period_ns``; returns ``time`` (bucket start), ``count``
    and ``<signal>.<agg>`` columns (see speeddata.pivot). Rows must be time-sorted."""
    t = cols["time"]
    out: dict[str, np.ndarray] = {}
    if len(t) == 0:
        return out
    bucket = t // period_ns
    starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
    ends = np.concatenate([starts[1:], [len(t)]])
    out["time"] = bucket[starts] * period_ns
    out["count"] = (ends - starts).astype(np.int64)
    for name, sig in cols.signals.items():
        if name in ("time", "recv_time") or name not in cols:
            continue  # the abscissa, or a signal not asked for
        values = cols[name]
        if is_numeric(sig):
            x = values.astype(np.float64) if (sig.nullable or sig.type in ("float", "double")) \
                else values
            if name in cols.valid:
                x = np.where(cols.valid[name], x, np.nan)
            for agg in aggs:
                out[f"{name}.{agg}"] = _aggregate(x, starts, ends, agg)
        else:
            wanted = [a for a in aggs if a in ("first", "last")] or ["last"]
            for agg in wanted:
                out[f"{name}.{agg}"] = values[starts if agg == "first" else ends - 1]
    return out


def _aggregate(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, agg: str) -> np.ndarray:
    if agg == "first":
        return x[starts]
    if agg == "last":
        return x[ends - 1]
    if x.dtype.kind == "f":
        nan = np.isnan(x)
        if agg in ("mean", "sum"):
            total = np.add.reduceat(np.where(nan, 0.0, x), starts)
            if agg == "sum":
                return total
            n = np.add.reduceat((~nan).astype(np.int64), starts)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(n > 0, total / np.maximum(n, 1), np.nan)
        # fmin/fmax ignore NaN unless a whole bucket is NaN
        return (np.fmin if agg == "min" else np.fmax).reduceat(x, starts)
    if x.dtype == np.bool_:
        x = x.astype(np.int64)
    if agg == "mean":
        return np.add.reduceat(x.astype(np.float64), starts) / (ends - starts)
    if agg == "sum":
        return np.add.reduceat(x.astype(np.int64 if x.dtype.kind in "iub" else x.dtype), starts)
    return (np.minimum if agg == "min" else np.maximum).reduceat(x, starts)


def is_sorted(t: np.ndarray) -> bool:
    return len(t) < 2 or bool(np.all(t[1:] >= t[:-1]))
