"""speeddata.downsample against a plain-Python reference (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speeddata.downsample import bucketize, columns, concat, merge


def reference(t, values, width, origin=0):
    """Row by row: {k: (count, n_values, first, min, max, last, sum)}."""
    out: dict[int, list] = {}
    for ti, v in zip(t, values, strict=True):
        k = (ti - origin) // width
        b = out.setdefault(k, [0, 0, v, None, None, v, 0])
        b[0] += 1
        b[5] = v
        if isinstance(v, float) and math.isnan(v):
            continue
        b[1] += 1
        b[3] = v if b[3] is None else min(b[3], v)
        b[4] = v if b[4] is None else max(b[4], v)
        b[6] += v
    return out


def same(a, b) -> bool:
    if b is None:
        return math.isnan(a)
    if isinstance(b, float) and math.isnan(b):
        return math.isnan(a)
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def check(b, ref):
    assert list(b.index) == sorted(ref)
    for i, k in enumerate(b.index):
        count, n_values, first, lo, hi, last, total = ref[int(k)]
        assert b.count[i] == count and b.n_values[i] == n_values
        assert same(b.first[i], first) and same(b.last[i], last)
        assert same(b.min[i], lo) and same(b.max[i], hi)
        assert same(b.sum[i], total if n_values else 0.0)
        assert same(b.mean[i], total / n_values if n_values else None)


times = st.lists(st.integers(-10**6, 10**6), max_size=200).map(sorted)
floats = st.floats(-1e6, 1e6) | st.just(math.nan)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), width=st.integers(1, 5000), origin=st.integers(-1000, 1000))
def test_float_buckets_match_reference(data, width, origin):
    t = data.draw(times)
    v = data.draw(st.lists(floats, min_size=len(t), max_size=len(t)))
    b = bucketize(np.array(t, np.int64), np.array(v, np.float64), width, origin)
    check(b, reference(t, v, width, origin))
    assert np.array_equal(b.start, origin + b.index * width)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), width=st.integers(1, 5000))
def test_integer_buckets_are_exact(data, width):
    t = data.draw(times)
    v = data.draw(st.lists(st.integers(-2**40, 2**40), min_size=len(t), max_size=len(t)))
    b = bucketize(np.array(t, np.int64), np.array(v, np.int64), width)
    assert b.sum.dtype == np.int64 and b.min.dtype == np.int64
    check(b, reference(t, v, width))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), width=st.integers(1, 500), factor=st.integers(1, 7),
       cut=st.integers(0, 200))
def test_merge_and_concat_equal_bucketing_the_rows(data, width, factor, cut):
    t = data.draw(times)
    v = data.draw(st.lists(floats, min_size=len(t), max_size=len(t)))
    t_a, v_a = np.array(t, np.int64), np.array(v, np.float64)
    whole = bucketize(t_a, v_a, width * factor)
    check(merge(bucketize(t_a, v_a, width), factor), reference(t, v, width * factor))
    cut = min(cut, len(t))
    joined = concat(bucketize(t_a[:cut], v_a[:cut], width * factor),
                    bucketize(t_a[cut:], v_a[cut:], width * factor))
    check(joined, reference(t, v, width * factor))
    assert np.array_equal(joined.index, whole.index)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), t0=st.integers(-10**6, 10**6), width=st.integers(1, 10**5),
       n=st.integers(1, 50))
def test_columns_are_dense_and_clip_to_the_range(data, t0, width, n):
    t = data.draw(times)
    v = data.draw(st.lists(floats, min_size=len(t), max_size=len(t)))
    c = columns(np.array(t, np.int64), np.array(v, np.float64), t0, width, n)
    inside = [(ti, vi) for ti, vi in zip(t, v, strict=True) if t0 <= ti < t0 + n * width]
    ref = reference([x for x, _ in inside], [y for _, y in inside], width, t0)
    assert len(c) == n and list(c.index) == list(range(n))
    assert int(c.count.sum()) == len(inside)
    for k in range(n):
        if k in ref:
            assert c.count[k] == ref[k][0] and same(c.max[k], ref[k][4])
        else:
            assert c.count[k] == 0 and math.isnan(c.first[k]) and math.isnan(c.max[k])


def test_valid_mask_and_bools():
    t = np.array([0, 1, 2, 10, 11])
    b = bucketize(t, np.array([1, 5, 3, 7, 9]), 10, valid=np.array([1, 0, 1, 0, 0], bool))
    assert list(b.count) == [3, 2] and list(b.n_values) == [2, 0]
    assert b.max[0] == 3.0 and math.isnan(b.max[1]) and b.mean[0] == 2.0
    flags = bucketize(t, np.array([True, False, True, True, True]), 10)
    assert list(flags.sum) == [2, 2] and list(flags.min) == [0, 1]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="positive"):
        bucketize(np.arange(3), np.arange(3), 0)
    with pytest.raises(ValueError, match="3 times but 2 values"):
        bucketize(np.arange(3), np.arange(2), 5)
    with pytest.raises(TypeError, match="numbers or booleans"):
        bucketize(np.arange(2), np.array(["a", "b"]), 5)
    a = bucketize(np.arange(10, 20), np.arange(10.0), 5)
    with pytest.raises(ValueError, match="start before"):
        concat(a, bucketize(np.arange(3), np.arange(3.0), 5))
    with pytest.raises(ValueError, match="width or origin"):
        concat(a, bucketize(np.arange(3), np.arange(3.0), 7))
    with pytest.raises(ValueError, match="unknown aggregate"):
        a.aggregate("median")
