"""``speeddata pivot``: a time range of the cache (or a tag) -> one HDF5 file
(speeddata.pivot)."""

from __future__ import annotations

import argparse

from ..pivot import AGGREGATES, PivotError, pivot
from .options import add_cache_arguments, cache_dir_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    rng = parser.add_argument_group(
        "what to write (a tag, or --start and --end: the range [start, end), its end excluded)"
    )
    rng.add_argument("--tag", help="the tag's range, channels and note")
    rng.add_argument("--start", help="ISO time, ns since the epoch, 'now', 'now-5min' "
                     "(or --start=-5min: a leading '-' needs the '=')")
    rng.add_argument("--end", help="ISO time, ns since the epoch, 'now', 'now-1min'; "
                     "excluded: a record at exactly --end is not written")
    rng.add_argument("--channels", nargs="+", metavar="GLOB", help="channel names or globs")
    rng.add_argument("--signals", nargs="+", metavar="GLOB",
                     help="signals or globs, as SIGNAL or CHANNEL.SIGNAL (e.g. 'engine.*')")
    red = parser.add_argument_group("reduction (default: every record)")
    ex = red.add_mutually_exclusive_group()
    ex.add_argument("--every", type=int, metavar="N", help="keep every Nth record")
    ex.add_argument("--resample", metavar="PERIOD", help="time buckets, e.g. 10ms, 1s")
    red.add_argument("--agg", metavar="A,B",
                     help=f"with --resample: aggregates per bucket, from {','.join(AGGREGATES)} "
                          "(default mean,min,max)")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", required=True, metavar="FILE.h5")
    out.add_argument("--compression", default="gzip",
                     help="gzip (default: deflate+shuffle, any reader), gzip:N, none, lzf, "
                          "blosc, blosc:zstd, zstd, lz4 (last four need hdf5plugin)")
    out.add_argument("--recv-time", action="store_true", help="add /<channel>/recv_time")
    out.add_argument("--force", action="store_true", help="replace an existing output file")
    out.add_argument("--threads", type=int, help="compression threads (default: CPUs)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cache_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.tag is None and (args.start is None or args.end is None):
        raise PivotError("give --tag NAME, or both --start and --end")
    result = pivot(
        cache_dir_from_args(args),
        args.output,
        tag=args.tag,
        start=args.start,
        end=args.end,
        channels=args.channels,
        signals=args.signals,
        every=args.every,
        resample=args.resample,
        agg=args.agg,
        compression=args.compression,
        recv_time=args.recv_time,
        force=args.force,
        progress=False if args.no_progress else None,
        threads=args.threads,
    )
    rows = ", ".join(f"{c} {n} rows" for c, n in result.channels.items())
    print(
        f"wrote {result.path}: {rows}; {result.bytes_in / 1e6:.1f} MB of records -> "
        f"{result.bytes_out / 1e6:.1f} MB in {result.seconds:.2f} s"
    )
    return 0
