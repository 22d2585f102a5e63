"""Resampling: records grouped in time buckets of a fixed length (aligned on the epoch)
and aggregated per bucket (``mean``, ``min``, ``max``, ``first``, ``last``, ``sum``) by
speeddata.downsample, the same operation as the live server's charts; and the row
selections the pivot makes of a batch of columns."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..downsample import bucketize
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
    and ``<signal>.<agg>`` columns (see speeddata.pivot). Rows must be time-sorted.

    Numeric signals are summarised by :func:`speeddata.downsample.bucketize` (buckets
    aligned on the epoch: origin 0); enum, string, bytes and fixed signals take the first
    or last row of each bucket."""
    t = cols["time"]
    out: dict[str, np.ndarray] = {}
    if len(t) == 0:
        return out
    names = [n for n in cols.signals if n not in ("time", "recv_time") and n in cols]
    summaries = {n: _summaries(cols, n, period_ns, aggs) for n in names
                 if is_numeric(cols.signals[n])}
    # every column of a batch shares its buckets (one time column)
    base = next((b for pair in summaries.values() for b in pair if b is not None), None)
    if base is None:
        base = bucketize(t, t, period_ns)
    out["time"] = base.start
    out["count"] = base.count
    ends = np.cumsum(base.count)
    starts = ends - base.count
    for name in names:
        if name in summaries:
            exact, as_float = summaries[name]
            for agg in aggs:
                b = as_float if (agg == "mean" and as_float is not None) else exact
                out[f"{name}.{agg}"] = b.aggregate(agg)
        else:
            values = cols[name]
            wanted = [a for a in aggs if a in ("first", "last")] or ["last"]
            for agg in wanted:
                out[f"{name}.{agg}"] = values[starts if agg == "first" else ends - 1]
    return out


def _summaries(cols: Columns, name: str, period_ns: int, aggs: list[str]) -> tuple:
    """(buckets of a numeric signal's values, buckets of them as float64 for the mean of
    integers), each None when no aggregate asked for needs it. Nullable and floating
    signals are summarised as float64 (null: NaN, skipped); the mean of integers comes
    from a float64 sum, as the pivot has always written it (an int64 sum of large values
    may wrap around)."""
    t = cols["time"]
    sig = cols.signals[name]
    floating = sig.nullable or sig.type in ("float", "double")
    x = cols[name].astype(np.float64) if floating else cols[name]
    valid = cols.valid.get(name)
    mean_as_float = not floating and "mean" in aggs
    exact = as_float = None
    if not mean_as_float or any(a != "mean" for a in aggs):
        exact = bucketize(t, x, period_ns, valid=valid)
    if mean_as_float:
        as_float = bucketize(t, x.astype(np.float64), period_ns, valid=valid)
    return exact, as_float


def is_sorted(t: np.ndarray) -> bool:
    return len(t) < 2 or bool(np.all(t[1:] >= t[:-1]))
