"""Pivot: a time range of the cache -> one HDF5 file, one dataset per signal.

Layout of the file (one per set)::

    /                          attrs: format, start_ns, end_ns, start, end, tag, note,
                                      channels, mode, compression, created
    /<channel>                 group; attrs: schema (JSON), schema_name, fingerprint,
                                      time_field, n_records, loss and gap counts
    /<channel>/time            int64 ns since the epoch (UTC)
    /<channel>/recv_time       int64 ns, kernel receive time (with --recv-time)
    /<channel>/<signal>        one dataset per signal; attrs avro_type, units, doc, ...
    /<channel>/<signal>.valid  bool validity of a nullable non-float signal (floats: NaN)

Types: numbers as themselves, booleans as HDF5's numpy-bool enum, enums as HDF5 enum
types (every HDF5 reader shows the symbol names; the ``symbols`` attribute repeats them),
strings as variable-length UTF-8, bytes as variable-length uint8, fixed(N) as N-byte
strings.

Decimation (``every=N``) keeps records 0, N, 2N... of each channel's range. Resampling
(``resample="10ms"``, ``agg="mean,min,max"``) groups records in buckets of that length
aligned on the epoch and writes ``/<channel>/time`` (bucket start), ``/<channel>/count``
(records per bucket; empty buckets are not written) and ``<signal>.<agg>`` per numeric
signal; NaN/null values are ignored. Enum, string, bytes and fixed signals take
``first``/``last`` only (``last`` when neither is asked for). Resampling assumes the
time of each channel does not go backwards.

Loss and gaps per channel (group attributes), from the ``.recv`` entries of the blocks
read: ``lost_datagrams`` (missing relay sequence numbers: datagrams the relay accepted
but did not store), ``seq_gaps`` (places where that happened), ``seq_resets`` (the
sequence restarted: a relay restart), and ``recv_gaps`` (receive-time intervals longer
than ``gap_factor`` x the median interval, with ``recv_gap_max_ns`` and
``recv_gap_total_ns``).

Chunks hold about 1 MiB of one dataset along time. Compression: ``gzip`` (deflate level
1 + shuffle: every HDF5 reader opens it; the default), ``gzip:N`` (level N), ``none``
(fastest to write and read, largest), ``lzf`` (+shuffle; fast, but only h5py and
readers with the LZF plugin open it), and with the ``hdf5plugin`` package: ``blosc``
(= ``blosc:lz4``), ``blosc:zstd``, ``zstd``, ``lz4`` (fast and small; readers need the
plugin, e.g. ``import hdf5plugin`` or ``HDF5_PLUGIN_PATH``). ``none`` and ``gzip`` write
chunks directly (``write_direct_chunk``), compressing on several threads.

``gzip`` at level 1 (the default) compresses with ISA-L (the ``isal`` package, its
fastest level 0) when it is installed, else with zlib level 1; other levels use zlib.
Both write the same standard deflate stream, which every HDF5 reader decodes; ISA-L is
4-8x faster and its files ~15-35% larger. A chunk that deflate does not make smaller
(random doubles, say) is stored as it is, with the chunk's filter mask telling readers
that shuffle and deflate were skipped for it (standard HDF5: every reader honours it).

The file is written as a temporary file beside the output, fsynced, then renamed: a
failed pivot (bad input, full disk, Ctrl-C) leaves no file behind. Every 8 MiB written,
the disk's writeback of them is started (``sync_file_range``), so the disk works while
the pivot decodes and compresses and the final fsync has little left to do. With
``none``, fixed-size datasets are made with every chunk allocated up front and no fill
value ever written (``H5D_ALLOC_TIME_EARLY``, ``H5D_FILL_TIME_NEVER``); each decoded
batch's rows are written straight to their place in those chunks by a background
thread (one ``pwrite`` per chunk part, no HDF5 call, no copy; the writeback of each
part's pages started after it), and the datasets are shrunk to the rows written at
the end (rows of the last chunk past the end are never read; HDF5 frees whole chunks
past it). Other ``none`` chunks (resampling) go through ``write_direct_chunk``, their
bytes written by the same thread. The decoder writes each batch into the memory of
one already written; that memory and the chunk buffers are kept for the next pivot in
the process (``POOL_BYTES``; ``speeddata.release_memory()`` frees them). Attributes are
written once the rows are on their way, and the metadata is flushed while the last rows
are written. docs/pivot.md describes the file and the order of the work.

The package, by concern: ``setfile`` (``pivot()``: the file, channel by channel),
``plan`` (channels, signals, datasets), ``resample`` (time buckets, through
``speeddata.downsample``), ``writer`` (HDF5 datasets and attributes), ``compression``
(specs, shuffle + deflate), ``fileio`` (the guarded output file, background writes, the
decode thread), ``memory`` (buffers and the pool kept between pivots), ``errors``. The
tuning constants are re-exported here to be read; to change one, set it on the module
that uses it (``speeddata.pivot.writer.CHUNK_BYTES``, ``pivot.fileio.WRITEBACK_BYTES``...).
"""

from __future__ import annotations

from .compression import COMPRESSIONS
from .errors import PivotError
from .fileio import BACKGROUND_BYTES, WRITEBACK_BYTES
from .memory import BATCH_BUFFERS, POOL_BYTES, release_memory
from .resample import AGGREGATES, resample_columns
from .setfile import BATCH_BYTES, FIRST_DATASETS, FORMAT, TIME_UNITS, PivotResult, pivot
from .writer import CHUNK_BYTES

__all__ = ["pivot", "PivotError", "PivotResult", "COMPRESSIONS", "AGGREGATES", "release_memory",
           "resample_columns", "FORMAT", "TIME_UNITS", "CHUNK_BYTES", "BATCH_BYTES",
           "WRITEBACK_BYTES", "BACKGROUND_BYTES", "POOL_BYTES", "BATCH_BUFFERS", "FIRST_DATASETS"]
