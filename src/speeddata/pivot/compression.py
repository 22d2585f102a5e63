"""Compression of the set file's datasets: the ``compression`` specs (``gzip``, ``gzip:N``,
``none``, ``lzf``, and with hdf5plugin ``blosc``, ``blosc:zstd``, ``zstd``, ``lz4``) and
the shuffle + deflate of the chunks written directly (``none`` and ``gzip``).

``gzip`` at level 1 (the default) compresses with ISA-L (the ``isal`` package, its
fastest level 0) when it is installed, else with zlib level 1; other levels use zlib.
Both write the same standard deflate stream, which every HDF5 reader decodes. A chunk
that deflate does not make smaller is stored as it is, with the chunk's filter mask
telling readers that shuffle and deflate were skipped for it.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

import numpy as np

try:  # ISA-L's deflate: the same zlib streams as zlib, 4-8x faster (optional)
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _isal_zlib = None

try:  # compiled shuffle (GIL released); numpy's below if absent
    from .. import _pivot as _native
except ImportError:  # pragma: no cover - built by setup.py; the reference below runs then
    _native = None

from .errors import PivotError

COMPRESSIONS = ("none", "gzip", "gzip:N", "lzf", "blosc", "blosc:lz4", "blosc:zstd", "zstd", "lz4")
#: the shuffle's output buffer of a thread is at least this big (a chunk: CHUNK_BYTES)
SCRATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Compression:
    name: str
    kwargs: dict  # for create_dataset
    direct: bool  # chunks written with write_direct_chunk
    level: int = 0  # the deflate level asked for (and recorded in the file)
    engine: str = "zlib"  # who deflates the direct chunks: "zlib" or "isal"
    engine_level: int = 0  # the level given to that engine


def _deflate_engine(level: int) -> tuple[str, int]:
    """Who deflates ``gzip:level`` chunks: ISA-L's level 0 for level 1 (the default; 4-8x
    zlib level 1's speed, files ~15-35% larger) when ``isal`` is installed, zlib otherwise
    and for every other level (0 = stored blocks; 2-9 are asked for to get smaller files,
    and ISA-L's levels 1-3 are no better than zlib's there)."""
    if level == 1 and _isal_zlib is not None:
        return "isal", 0
    return "zlib", level


def parse_compression(spec: str) -> Compression:
    spec = (spec or "gzip").strip().lower()
    if spec == "none":
        return Compression("none", {}, True)
    if spec == "gzip" or spec.startswith("gzip:"):
        level = 1
        if ":" in spec:
            try:
                level = int(spec.split(":", 1)[1])
            except ValueError:
                level = -1
            if not 0 <= level <= 9:
                raise PivotError(f"compression {spec!r}: the gzip level is 0 to 9")
        return Compression(
            f"gzip:{level}", {"compression": "gzip", "compression_opts": level, "shuffle": True},
            True, level, *_deflate_engine(level),
        )
    if spec == "lzf":
        return Compression("lzf", {"compression": "lzf", "shuffle": True}, False)
    plugin = {"blosc": "blosc:lz4", "blosc:lz4": "blosc:lz4", "blosc:zstd": "blosc:zstd",
              "zstd": "zstd", "lz4": "lz4"}.get(spec)
    if plugin is None:
        raise PivotError(
            f"unknown compression {spec!r}; choose one of: {', '.join(COMPRESSIONS)}"
        )
    try:
        import hdf5plugin
    except ImportError:
        raise PivotError(
            f"compression {spec!r} needs the hdf5plugin package: pip install hdf5plugin "
            "(or use gzip, lzf or none)"
        ) from None
    if plugin.startswith("blosc:"):
        filt = hdf5plugin.Blosc(cname=plugin.split(":")[1], clevel=5,
                                shuffle=hdf5plugin.Blosc.SHUFFLE)
    elif plugin == "zstd":
        filt = hdf5plugin.Zstd()
    else:
        filt = hdf5plugin.LZ4()
    return Compression(plugin, dict(filt), False)


def shuffle_deflate(data: bytes, itemsize: int, level: int, engine: str = "zlib",
                     raw_mask: int = 0) -> tuple[bytes, int]:
    """What HDF5's shuffle + deflate filters make of one chunk: bytes grouped by their
    position in the element (H5Zshuffle.c), then a zlib stream (H5Zdeflate.c), by zlib or
    ISA-L (``engine``). Returns (chunk bytes, filter mask): mask 0 with every filter
    applied, or, when deflate does not make the chunk smaller, the chunk as it is with
    ``raw_mask`` (the bits of every filter of the dataset: all skipped)."""
    shuffled = _shuffle(data, itemsize) if itemsize > 1 else data
    if engine == "isal":
        packed = _isal_zlib.compress(shuffled, level)
    else:
        packed = zlib.compress(shuffled, level)
    if raw_mask and len(packed) >= len(data):
        return data, raw_mask
    return packed, 0


_scratch = threading.local()  # per compression thread: the shuffle's output buffer


def _shuffle(data, itemsize: int):
    """HDF5's shuffle filter (bytes grouped by their position in the element): compiled
    (GIL released, 2-8x numpy's speed) into this thread's reused buffer (valid until the
    thread's next call), or numpy's bytes."""
    if _native is None:
        return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()
    n = memoryview(data).nbytes
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < n:
        buf = _scratch.buf = bytearray(max(n, SCRATCH_BYTES))
    return _native.shuffle(data, itemsize, buf)
