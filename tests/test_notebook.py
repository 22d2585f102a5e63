"""docs/notebook.md runs as written (issue 14): its ``python`` blocks, the cells of the
notebook it describes, run in order in one namespace, as Jupyter would run them, in a
folder whose ``data`` cache holds the demo's three channels over the last 40 seconds.

The cache is what ``speeddata up --demo`` leaves: the demo source's own signal
generators (``speeddata.demo.DemoChannel``) at the demo rates, records encoded by
fastavro and written by the reference ``SegmentWriter``, stamped up to the moment the
test starts (the walk tags "the last 20 seconds"). matplotlib draws with Agg. Other
blocks (``sh``: starting the relay and Jupyter) are text for the reader.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import speeddata
from _cachedata import write_channel
from conftest import SCHEMAS
from speeddata.demo import DEMO_RATES, DemoChannel
from speeddata.schema import Schema

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "notebook.md"
SPAN_S = 40  # seconds of demo data in the cache
LATENCY_NS = 300_000  # from a record's stamp to its datagram's receive time


def python_cells(text: str) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of every ```python block, in order."""
    cells = []
    for m in re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S):
        cells.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return cells


def test_python_cells_are_found():
    cells = python_cells(DOC.read_text())
    assert len(cells) >= 10
    assert all(not code.lstrip().startswith(("%", "!")) for _, code in cells)  # no magics
    assert python_cells("a\n```python\nx = 1\n```\n```sh\nls\n```\n") == [(2, "x = 1\n")]


def write_demo_cache(cache: Path, end_ns: int) -> dict[str, list[dict]]:
    """The demo's channels over the SPAN_S seconds before ``end_ns``, as the relay would
    have stored them: ~10 ms datagrams, blocks of a few datagrams, 10 s segments."""
    t0_ns = end_ns - SPAN_S * 1_000_000_000
    written = {}
    for name, rate in DEMO_RATES.items():
        schema = Schema(SCHEMAS / f"{name}.avsc")
        channel = DemoChannel(name, schema, rate, source=None)
        n = int(SPAN_S * rate)
        records = channel.records(channel.times(0, n), t0_ns)
        per_datagram = max(1, int(rate / 100))
        step_ns = int(per_datagram / rate * 1e9)
        w = write_channel(
            cache, name, schema, lambda k, rng, records=records: records[k], n,
            t_open_ns=t0_ns + step_ns - int(1e9 / rate) + LATENCY_NS,
            records_per_datagram=per_datagram, datagrams_per_block=4,
            blocks_per_segment=max(1, int(10 * rate / per_datagram / 4)),
            recv_step_ns=step_ns, segment_size=8 << 20,
        )
        written[name] = w
    return written


@pytest.fixture
def demo_folder(tmp_path, monkeypatch):
    written = write_demo_cache(tmp_path / "data", time.time_ns())
    monkeypatch.chdir(tmp_path)
    return tmp_path, written


def test_the_notebook_runs_from_a_tag_to_a_plot(demo_folder):
    folder, written = demo_folder
    matplotlib.use("Agg", force=True)
    ns: dict = {"__name__": "__notebook__"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the walk shows no warning (deprecations included)
        for line, code in python_cells(DOC.read_text()):
            try:
                exec(compile(code, f"docs/notebook.md, block at line {line}", "exec"), ns)
            except Exception as exc:
                raise AssertionError(f"docs/notebook.md: the block at line {line} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
    import matplotlib.pyplot as plt

    # the tag: the last 20 s of the cache, removed at the end
    tag = ns["tag"]
    assert tag.channels == ("engine", "power", "status")
    assert tag.end_ns - tag.start_ns == 20 * 1_000_000_000
    assert speeddata.list_tags("data") == []
    # what was read is exactly what the demo wrote in the tag's range
    w = written["engine"]
    times = np.array(w.time_ns)
    keep = (times >= tag.start_ns) & (times < tag.end_ns)
    assert 1000 < keep.sum() <= 2000  # 100 Hz; the end of the range is later than the data
    df = ns["df"]
    assert isinstance(df, pd.DataFrame) and str(df.index.tz) == "UTC"
    assert df.index.asi8.tolist() == times[keep].tolist()
    assert df["rpm"].tolist() == [r["rpm"] for r, k in zip(w.records, keep, strict=True) if k]
    assert isinstance(df["state"].dtype, pd.CategoricalDtype)
    assert df.attrs["units"]["rpm"] == "1/min"
    latency = ns["latency_ms"]
    assert latency.round(6).eq(LATENCY_NS / 1e6).all()
    per_second = ns["per_second"]
    # (the data ends when the test started, a moment before the tag's end)
    assert len(per_second) == len(np.unique(df.index.asi8 // 1_000_000_000)) > 10
    assert ("rpm", "mean") in per_second.columns
    # the figure: every record, the 1 s means, the states, the pivot's 100 ms means
    fig = ns["fig"]
    ax_rpm, ax_state = fig.axes
    lines = {ln.get_label(): ln for ln in ax_rpm.get_lines()}
    assert len(lines["every record"].get_xdata()) == len(df)
    assert len(lines["mean of each second"].get_ydata()) == len(per_second)
    assert len(lines["pivot: 100 ms mean"].get_ydata()) == len(ns["coarse"])
    assert [t.get_text() for t in ax_state.get_yticklabels()] == ["IDLE", "RUN", "FAULT"]
    png = folder / "walk.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # xarray: the labels on the axes come from the schema
    ds, smooth = ns["ds"], ns["smooth"]
    assert isinstance(ds, xr.Dataset) and ds.sizes["time"] == len(df)
    assert " ".join(ns["ax"].get_ylabel().split()) == "shaft torque (sine + noise) [N m]"
    assert smooth.sizes["time"] == len(np.unique(df.index.asi8 // 500_000_000))
    middles = smooth["time"].values.view(np.int64) % 500_000_000
    assert (middles == 250_000_000).all()  # each mean drawn at its bucket's middle
    # the HDF5 file: every channel, the same rows as the read
    tree, frames = ns["tree"], ns["frames"]
    assert set(tree.children) == {"engine", "power", "status"}
    assert tree.attrs["tag"] == "walk" and tree.attrs["note"] == "notebook walk"
    pd.testing.assert_frame_equal(frames["engine"], df.drop(columns="recv_time"),
                                  check_like=True)
    for channel, signal in (("power", "voltage"), ("status", "load"), ("status", "uptime")):
        w = written[channel]
        kept = [(t, r[signal]) for t, r in zip(w.time_ns, w.records, strict=True)
                if tag.start_ns <= t < tag.end_ns]
        frame = frames[channel]
        assert frame.index.asi8.tolist() == [t for t, _ in kept], channel
        want = np.array([np.nan if v is None else v for _, v in kept], np.float64)
        np.testing.assert_array_equal(frame[signal].to_numpy(np.float64), want,
                                      err_msg=f"{channel}.{signal}")
    assert frames["status"]["load"].isna().any() and frames["status"]["load"].notna().any()
    assert ns["coarse"]["count"].sum() == len(df)
    assert plt.get_fignums() == []  # closed by the last cell
