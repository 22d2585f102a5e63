"""Time buckets: a sorted time column and its values -> count/first/min/max/last/mean/sum
per fixed-width bucket, vectorised over numpy.

One operation serves two users: the pivot's ``--resample`` (buckets of a chosen period,
only the non-empty ones written) and the live server's charts (M4: first/min/max/last
per pixel column, Jugel et al., VLDB 2014, and the summary pyramids behind them).

Bucket ``k`` holds the rows with ``origin + k * width <= t < origin + (k + 1) * width``
(floor division, so times before ``origin`` get negative ``k``). Rows must be sorted by
time. NaN values (and rows whose ``valid`` flag is false) count as rows but are skipped
by min/max/sum/mean; a bucket of NaN only has NaN for those. ``first`` and ``last`` are
the first and last rows' values as they are.

Integer and boolean values keep exact sums (int64) and min/max in their own dtype;
everything else is computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AGGREGATES", "Buckets", "bucketize", "columns", "merge", "concat"]

AGGREGATES = ("count", "first", "min", "max", "last", "mean", "sum")


@dataclass(frozen=True)
class Buckets:
    """Per-bucket summaries; every array has one entry per bucket, in bucket order.

    ``index`` is the bucket number ``k`` (int64); ``count`` the rows in it; ``n_values``
    the rows that carried a number (not NaN, not invalid), which ``mean`` divides by.
    """

    width: int
    origin: int
    index: np.ndarray
    count: np.ndarray
    n_values: np.ndarray
    first: np.ndarray
    min: np.ndarray
    max: np.ndarray
    last: np.ndarray
    sum: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def start(self) -> np.ndarray:
        """Each bucket's start time."""
        return self.origin + self.index * self.width

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_values > 0, self.sum / np.maximum(self.n_values, 1), np.nan)

    def aggregate(self, name: str) -> np.ndarray:
        """The column of one of :data:`AGGREGATES` by name."""
        if name not in AGGREGATES:
            raise ValueError(f"unknown aggregate {name!r}; choose from {', '.join(AGGREGATES)}")
        return getattr(self, name)


def _prepare(values: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The values to reduce (bools as int64; invalid rows as NaN, which makes them float)
    and the mask of rows that carry a number."""
    x = np.asarray(values)
    if x.dtype == np.bool_:
        x = x.astype(np.int64)
    if x.dtype.kind not in "iuf":
        raise TypeError(f"cannot bucket values of dtype {x.dtype}: numbers or booleans only")
    if valid is not None:
        x = np.where(valid, x, np.nan)
    if x.dtype.kind == "f":
        return x, ~np.isnan(x)
    return x, np.ones(len(x), dtype=bool)


def _empty(width: int, origin: int, dtype: np.dtype) -> Buckets:
    i = np.zeros(0, np.int64)
    f = np.zeros(0, np.float64)
    v = np.zeros(0, dtype)
    return Buckets(width, origin, i, i, i, v, v, v, v, f if dtype.kind == "f" else i)


def bucketize(
    t: np.ndarray,
    values: np.ndarray,
    width: int,
    origin: int = 0,
    valid: np.ndarray | None = None,
) -> Buckets:
    """Summaries of the non-empty buckets of width ``width`` (same unit as ``t``)."""
    width = int(width)
    if width <= 0:
        raise ValueError(f"bucket width must be positive, not {width}")
    t = np.asarray(t)
    x, has_value = _prepare(values, valid)
    if len(t) != len(x):
        raise ValueError(f"{len(t)} times but {len(x)} values")
    if len(t) == 0:
        return _empty(width, origin, x.dtype)
    k = (t.astype(np.int64, copy=False) - origin) // width
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    ends = np.concatenate((starts[1:], [len(t)]))
    n_values = np.add.reduceat(has_value.astype(np.int64), starts)
    if x.dtype.kind == "f":
        total = np.add.reduceat(np.where(has_value, x, 0.0), starts)
        lo = np.fmin.reduceat(x, starts)  # fmin/fmax skip NaN unless all of a bucket is NaN
        hi = np.fmax.reduceat(x, starts)
    else:
        total = np.add.reduceat(x.astype(np.int64), starts)
        lo = np.minimum.reduceat(x, starts)
        hi = np.maximum.reduceat(x, starts)
    return Buckets(
        width, int(origin), k[starts], (ends - starts).astype(np.int64), n_values,
        x[starts], lo, hi, x[ends - 1], total,
    )


def columns(
    t: np.ndarray,
    values: np.ndarray,
    t0: int,
    width: int,
    n: int,
    valid: np.ndarray | None = None,
) -> Buckets:
    """Dense M4 columns: exactly ``n`` buckets from ``t0`` (index 0..n-1), empty ones with
    count 0 and NaN values; rows outside ``[t0, t0 + n * width)`` are left out."""
    t = np.asarray(t)
    lo, hi = np.searchsorted(t, [t0, t0 + n * width])
    b = bucketize(t[lo:hi], np.asarray(values)[lo:hi], width, t0,
                  None if valid is None else np.asarray(valid)[lo:hi])
    count = np.zeros(n, np.int64)
    n_values = np.zeros(n, np.int64)
    out = [np.full(n, np.nan) for _ in range(5)]
    count[b.index] = b.count
    n_values[b.index] = b.n_values
    for dense, sparse in zip(out, (b.first, b.min, b.max, b.last, b.sum), strict=True):
        dense[b.index] = sparse
    return Buckets(int(width), int(t0), np.arange(n, dtype=np.int64), count, n_values, *out)


def merge(b: Buckets, factor: int) -> Buckets:
    """Coarser buckets of ``factor * b.width`` (same origin) made from ``b`` alone: the
    step from one pyramid level to the next without touching the rows again."""
    factor = int(factor)
    if factor <= 0:
        raise ValueError(f"merge factor must be positive, not {factor}")
    if len(b) == 0:
        return Buckets(b.width * factor, b.origin, b.index, b.count, b.n_values,
                       b.first, b.min, b.max, b.last, b.sum)
    k = b.index // factor
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    ends = np.concatenate((starts[1:], [len(k)]))
    if b.min.dtype.kind == "f":
        lo, hi = np.fmin.reduceat(b.min, starts), np.fmax.reduceat(b.max, starts)
    else:
        lo, hi = np.minimum.reduceat(b.min, starts), np.maximum.reduceat(b.max, starts)
    return Buckets(
        b.width * factor, b.origin, k[starts],
        np.add.reduceat(b.count, starts), np.add.reduceat(b.n_values, starts),
        b.first[starts], lo, hi, b.last[ends - 1], np.add.reduceat(b.sum, starts),
    )


def concat(a: Buckets, b: Buckets) -> Buckets:
    """``a`` followed by ``b`` (later rows, same width and origin); when ``b`` starts in
    ``a``'s last bucket, that bucket is combined: how a live summary grows batch by batch."""
    if (a.width, a.origin) != (b.width, b.origin):
        raise ValueError("buckets of different width or origin cannot be joined")
    if len(a) == 0:
        return b
    if len(b) == 0:
        return a
    if b.index[0] < a.index[-1]:
        raise ValueError("the later buckets start before the earlier ones end")
    if b.index[0] != a.index[-1]:
        return Buckets(a.width, a.origin, *(
            np.concatenate((getattr(a, f), getattr(b, f))) for f in _FIELDS))
    head = merge(Buckets(a.width, a.origin, *(
        np.concatenate((getattr(a, f)[-1:], getattr(b, f)[:1])) for f in _FIELDS)), 1)
    return Buckets(a.width, a.origin, *(
        np.concatenate((getattr(a, f)[:-1], getattr(head, f), getattr(b, f)[1:]))
        for f in _FIELDS))


_FIELDS = ("index", "count", "n_values", "first", "min", "max", "last", "sum")
