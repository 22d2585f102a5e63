"""Scroll-back: M4 columns of a range from the cache, read with ``speeddata.reader`` in
an executor thread (never on the IOLoop), a few blocks at a time with progress."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..reader import ChannelReader, ReadError
from .live import M4, _bucket_m4, join_m4
from .ws import columns_blocks, gaps_block

__all__ = ["History", "cache_m4"]

#: bytes of records decoded per step (a progress message after each)
BATCH_BYTES = 16 << 20


def cache_m4(cache_dir: Any, channel: str, fields: list[str], t0: int, t1: int, width: int,
             progress=None, time_field: str | None = None) -> M4:
    """M4 columns (``width`` ns, absolute grid) of ``fields`` of ``channel`` over
    ``[t0, t1)`` from the cache; ``progress(fraction)`` after each step."""
    c0 = t0 // width
    n = (t1 - 1) // width - c0 + 1
    parts: list[M4] = []
    try:
        reader = ChannelReader(cache_dir, channel, t0, t1, fields, time_field=time_field,
                               threads=1)
    except ReadError:
        if progress:
            progress(1.0)
        return join_m4([], c0, n, len(fields))
    with reader:
        total = max(reader.payload_bytes, 1)
        names = [reader.schema.signal(f).name for f in fields]
        for batch in reader.batches(BATCH_BYTES):
            t = batch["time"]
            if len(names) == 1 and batch[names[0]].dtype == np.float64 and \
                    batch.valid.get(names[0]) is None:
                x = batch[names[0]].reshape(-1, 1)  # no copy
            else:
                x = np.empty((len(t), len(fields)), np.float64)
                for j, name in enumerate(names):
                    x[:, j] = batch[name]
                    valid = batch.valid.get(name)
                    if valid is not None:
                        x[~valid, j] = np.nan
            if len(t) and np.any(t[1:] < t[:-1]):
                order = np.argsort(t, kind="stable")
                t, x = t[order], x[order]
            parts.append(_bucket_m4(t, x, c0, n, width))
            if progress:
                progress(min(0.99, len(parts) * BATCH_BYTES / total))
    if progress:
        progress(1.0)
    return join_m4(parts, c0, n, len(fields))


class History:
    """``await history(subscription, progress)`` -> the frame blocks of a range."""

    def __init__(self, server: Any, threads: int = 2):
        self.server = server
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="speeddata-history")

    async def __call__(self, s: Any, progress) -> list[bytes]:
        t0, t1 = s.range_ns
        loop = asyncio.get_running_loop()
        blocks: list[bytes] = []
        n_parts = max(1, sum(1 for p in s.parts if p.indexes))
        for i, p in enumerate(q for q in s.parts if q.indexes):
            ch = p.channel
            fields = [ch.numeric[c] for c in p.columns]

            def step(done: float, i=i) -> None:
                progress((i + done) / n_parts)

            m4 = await loop.run_in_executor(
                self.pool, cache_m4, self.server.cache_dir, ch.base_name, fields, t0, t1,
                s.width_ns, step, ch.time_field)
            blocks += columns_blocks(s.sub, p.indexes, list(range(len(fields))), m4)
            gaps = ch.gaps_in(t0, t1)
            if gaps:
                blocks += [gaps_block(s.sub, j, gaps) for j in p.indexes]
        return blocks

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
