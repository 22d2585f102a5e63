"""Memory the pivot keeps: the column memory of written batches handed back to the
decoder (``Buffers``), and the process's pool of batch and chunk buffers kept for the
next pivot (``POOL``, ``release_memory``)."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections import deque

import numpy as np

try:  # the compiled decoder's recycled column memory (release_memory)
    from .. import _columns as _native_columns
except ImportError:  # pragma: no cover - built by setup.py
    _native_columns = None

#: ``none``: batches decoded into at most this many buffers (the decoder waits for one
#: written rather than fault in a new one; see Buffers).
BATCH_BUFFERS = 4


class Buffers:
    """The column memory of written batches, given back to the decoder (``batches(out=)``)
    for the next ones: decoding into fresh memory made the kernel fault in and zero
    16 MiB for every batch (~13% of a ``wide`` pivot's profile), and the two cores share
    one memory bus. A batch's memory is free once every chunk written from it is
    (``give``'s futures). ``take`` runs on the decode thread, ``give`` on the writing one.

    ``limit``: once that many buffers exist, ``take`` waits for the oldest held one to be
    written rather than let the decoder fault in a new one (only where every future
    given is completed by another thread than the one that takes batches: ``none``'s
    background writer). With the disk the bottleneck, a decoder running further ahead
    gains nothing, and a fresh 16 MiB batch can cost ~40 ms of page faults (2-3 ms
    reused; see MemoryPool). Buffers come from the process's pool before new ones are
    made, and go back to it at ``close``."""

    #: at most this long waiting for a buffer, then a new one after all
    WAIT_SECONDS = 1.0

    def __init__(self, limit: int | None = None):
        self.lock = threading.Lock()
        self.free: list[np.ndarray] = []
        self.held: deque = deque()  # (buffer, futures of its chunks not yet written)
        self.limit = limit
        self.made = 0  # buffers the decoder was left to allocate, or taken from the pool

    def take(self) -> np.ndarray | None:
        waited = False
        while True:
            with self.lock:
                self._release()
                if self.free:
                    return self.free.pop()
                if waited or self.limit is None or self.made < self.limit or not self.held:
                    self.made += 1
                    return POOL.take()
                futures = list(self.held[0][1])
            concurrent.futures.wait(futures, timeout=self.WAIT_SECONDS)
            waited = not all(f.done() for f in futures)

    def give(self, memory: np.ndarray, futures: list) -> None:
        with self.lock:
            self.held.append((memory, futures))
            self._release()

    def _release(self) -> None:
        while self.held and all(f.done() for f in self.held[0][1]):
            self.free.append(self.held.popleft()[0])

    def close(self) -> None:
        """Hand the free buffers to the process's pool for the next pivot, after the
        channel's last batch (a buffer still held by a write is left to the garbage
        collector: after a failure, its write may never complete)."""
        with self.lock:
            self._release()
            free, self.free = self.free, []
            self.held = deque()
        for memory in free:
            POOL.give(memory)


class MemoryPool:
    """Batch memory and chunk buffers kept between pivots (and channels), up to
    ``limit`` bytes.

    New memory is expensive: the kernel faults in and zeroes every page, and in a virtual
    machine whose balloon reports free pages to the host (free page reporting), each
    first touch is also a fault in the host: 16 MiB took 35-45 ms there against 2-3 ms
    reused. A process that pivots more than once (a notebook exporting several tags, a
    server answering export requests) reuses the same memory. :func:`release_memory`
    empties the pool."""

    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.buffers: list[np.ndarray] = []  # batch memory, by size (the largest last)
        self.chunks: dict[int, list[np.ndarray]] = {}  # chunk buffers, by bytes
        self.nbytes = 0

    def take(self) -> np.ndarray | None:
        """The largest batch buffer kept, or None."""
        with self.lock:
            if not self.buffers:
                return None
            memory = self.buffers.pop()
            self.nbytes -= memory.nbytes
            return memory

    def take_chunk(self, nbytes: int) -> np.ndarray | None:
        """A chunk buffer of ``nbytes`` bytes (uint8) kept, or None."""
        with self.lock:
            kept = self.chunks.get(nbytes)
            if not kept:
                return None
            self.nbytes -= nbytes
            return kept.pop()

    def give(self, memory: np.ndarray | None, chunk: bool = False) -> None:
        """Keep ``memory`` (a batch buffer, or with ``chunk`` a chunk buffer) if the pool
        has room for it."""
        if memory is None:
            return
        memory = memory.view(np.uint8).reshape(-1)
        with self.lock:
            if self.nbytes + memory.nbytes > self.limit:
                return  # let it go: the pool holds enough
            if chunk:
                self.chunks.setdefault(memory.nbytes, []).append(memory)
            else:
                self.buffers.append(memory)
                self.buffers.sort(key=lambda m: m.nbytes)
            self.nbytes += memory.nbytes

    def clear(self) -> int:
        with self.lock:
            freed, self.buffers, self.chunks, self.nbytes = self.nbytes, [], {}, 0
        return freed


def _pool_bytes() -> int:
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        ram = 4 << 30
    return min(256 << 20, ram // 16)


#: batch and chunk memory kept for the next pivot: 256 MiB at most, and at most 1/16 of
#: the RAM (a ``wide`` pivot of 100 doubles uses ~180 MB of it)
POOL_BYTES = _pool_bytes()
POOL = MemoryPool(POOL_BYTES)


def release_memory() -> int:
    """Free the memory kept for the next pivot or read: the pivot's batch and chunk
    buffers (``POOL_BYTES``) and the column memory of reads (``speeddata._columns``,
    ``SLAB_POOL_BYTES``); returns the bytes released. Also ``speeddata.release_memory``."""
    freed = POOL.clear()  # (its buffers' column memory goes to the reads' pool: freed next)
    if _native_columns is not None:
        freed += _native_columns.release_slabs()
    return freed
