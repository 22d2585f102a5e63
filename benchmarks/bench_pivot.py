"""Pivot write speed against a raw sequential write + fsync of the same bytes, same run.

The cache channels of ``bench_read`` (``wide``: 100 doubles; ``engine``: the demo
schema) are pivoted to HDF5 by ``speeddata.pivot.pivot`` (the whole pipeline: reading
the segments, decoding, chunking, compressing, writing, fsync, rename) with
``compression="none"``, with the default (deflate level 1 + shuffle, on every CPU; ISA-L
deflates when the ``isal`` package is installed) and with the default forced to zlib
(``gzip-zlib``: the fallback without ``isal``, and what the default was before).
The baseline writes the bytes of the same columns (time + every signal: what an
uncompressed file holds) to a file in 1 MiB writes and fsyncs it. A second raw arm
(``raw-wb``, for reference) also starts the disk's writeback every 8 MiB as the pivot
does (``sync_file_range``): what the same trick gives a bare write. Every arm writes a
new file: the previous output is removed, and the disk synced, before the clock starts.

MB/s here are the column bytes (uncompressed) over the wall time; ratios are pivot
MB/s / raw MB/s (P3: targets >= 0.9 uncompressed, >= 0.5 with the default compression).

    .venv/bin/python -m pytest benchmarks/bench_pivot.py -s      (pytest-benchmark + ratios)
    .venv/bin/python benchmarks/bench_pivot.py [SCALE]           (ratios only)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_read  # noqa: E402
import speeddata  # noqa: E402
import speeddata.pivot.compression as pivot_compression  # noqa: E402
from speeddata._pivot import start_writeback  # noqa: E402
from speeddata.pivot import WRITEBACK_BYTES, pivot  # noqa: E402

SIZES = {"wide": 150_000, "engine": 1_500_000}
NAMES = tuple(SIZES)
COMPRESSIONS = ("none", "gzip", "gzip-zlib")


def pivot_arm(cache: Path, output: Path, comp: str):
    """One pivot; ``gzip-zlib`` is the default gzip with ISA-L hidden (zlib deflates)."""
    if comp != "gzip-zlib":
        return pivot(cache, output, compression=comp, force=True, progress=False)
    isal, pivot_compression._isal_zlib = pivot_compression._isal_zlib, None
    try:
        return pivot(cache, output, compression="gzip", force=True, progress=False)
    finally:
        pivot_compression._isal_zlib = isal


def column_bytes(cache: Path, name: str) -> bytes:
    """The bytes of every column of the channel, back to back (time first)."""
    cols = speeddata.read(cache, name)
    return b"".join(np.ascontiguousarray(v).tobytes() for v in cols.values())


def raw_write(path: Path, data: bytes, writeback: int = 0) -> None:
    """``data`` in 1 MiB writes, then fsync; ``writeback``: start the disk's writeback
    every that many bytes (``sync_file_range``, as the pivot does)."""
    view = memoryview(data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        started = 0
        for i in range(0, len(view), 1 << 20):
            os.write(fd, view[i : i + (1 << 20)])
            end = min(i + (1 << 20), len(view))
            if writeback and end - started >= writeback:
                start_writeback(fd, started, end - started)
                started = end
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(workdir: Path, name: str, n_records: int, repeat: int = 5) -> dict:
    cache = workdir / "cache"
    bench_read.make_cache(cache, name, n_records)
    data = column_bytes(cache, name)
    mb = len(data) / 1e6
    out_dir = workdir / "out"
    out_dir.mkdir(exist_ok=True)
    arms = {
        "raw": lambda: raw_write(out_dir / "raw.bin", data),
        "raw-wb": lambda: raw_write(out_dir / "raw-wb.bin", data, WRITEBACK_BYTES),
    }
    for comp in COMPRESSIONS:
        arms[comp] = lambda comp=comp: pivot_arm(cache, out_dir / f"{comp}.h5", comp)
    outputs = {"raw": out_dir / "raw.bin", "raw-wb": out_dir / "raw-wb.bin",
               **{c: out_dir / f"{c}.h5" for c in COMPRESSIONS}}
    times = {k: float("inf") for k in arms}
    for _ in range(repeat):  # alternate arms: background load hits them alike
        for key, fn in arms.items():
            # every arm writes a new file: freeing the previous one's blocks (an unlink
            # for the pivot's rename, a truncate for the raw arm's O_TRUNC) is not timed
            outputs[key].unlink(missing_ok=True)
            os.sync()
            t0 = time.perf_counter()
            fn()
            times[key] = min(times[key], time.perf_counter() - t0)
    for comp in COMPRESSIONS:
        loaded = speeddata.load(out_dir / f"{comp}.h5", name)
        assert loaded.n_rows == n_records
    result = {"name": name, "records": n_records, "bytes": len(data)}
    for key, t in times.items():
        result[f"{key}_mbps"] = mb / t
    for comp in COMPRESSIONS:
        result[f"{comp}_ratio"] = times["raw"] / times[comp]
        result[f"{comp}_file_mb"] = (out_dir / f"{comp}.h5").stat().st_size / 1e6
    return result


def report(results: list[dict]) -> str:
    lines = ["pivot to HDF5 vs raw write + fsync of the column bytes (MB = 10^6 B):"]
    for r in results:
        lines.append(
            f"  {r['name']:<7} {r['records']:>10,} records, {r['bytes'] / 1e6:8.1f} MB of columns\n"
            f"    raw write + fsync   {r['raw_mbps']:8.0f} MB/s\n"
            f"    (raw + writeback    {r['raw-wb_mbps']:8.0f} MB/s, for reference)"
        )
        for comp in COMPRESSIONS:
            lines.append(
                f"    pivot {comp:<12}  {r[f'{comp}_mbps']:8.0f} MB/s"
                f"  = {r[f'{comp}_ratio']:.2f}x raw   (file {r[f'{comp}_file_mb']:.1f} MB;"
                f" {r[f'{comp}_mbps'] / r['raw-wb_mbps']:.2f}x raw + writeback)"
            )
    return "\n".join(lines)


# -- pytest-benchmark -------------------------------------------------------------------


@pytest.fixture(scope="module", params=NAMES)
def channel(request, tmp_path_factory):
    cache = tmp_path_factory.mktemp(f"pivot-{request.param}")
    bench_read.make_cache(cache, request.param, SIZES[request.param])
    return cache, request.param


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_pivot(benchmark, channel, compression, tmp_path):
    cache, name = channel
    result = benchmark.pedantic(pivot_arm, (cache, tmp_path / "out.h5", compression), rounds=3)
    assert result.channels[name] == SIZES[name]


def test_raw_write(benchmark, channel, tmp_path):
    cache, name = channel
    data = column_bytes(cache, name)
    benchmark.pedantic(raw_write, (tmp_path / "raw.bin", data), rounds=3)


def test_ratios(tmp_path):
    results = []
    for name in NAMES:
        (tmp_path / name).mkdir()
        results.append(measure(tmp_path / name, name, SIZES[name]))
    print("\n" + report(results))
    assert all(r["none_ratio"] > 0 for r in results)  # figures printed, not judged


if __name__ == "__main__":
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    with tempfile.TemporaryDirectory() as d:
        res = []
        for n in NAMES:
            (Path(d) / n).mkdir()
            res.append(measure(Path(d) / n, n, max(1000, int(SIZES[n] * scale))))
        print(report(res))
