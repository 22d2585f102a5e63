"""Guarded I/O of the pivot: the output file given to h5py (the first failed write
remembered, background writes, writeback started as it goes), the decode thread ahead
of the writes, and the helpers that make the final rename durable and name a full disk.
"""

from __future__ import annotations

import concurrent.futures
import errno
import io
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

try:  # compiled helpers: GIL-free writes, writeback (pure Python below if absent)
    from .. import _pivot as _native
except ImportError:  # pragma: no cover - built by setup.py; the references below run then
    _native = None

#: Start the disk's writeback of what was written every this many bytes, so that the
#: final fsync has little left to do (sync_file_range(2); 0: only the fsync).
WRITEBACK_BYTES = 8 * 1024 * 1024

#: Chunk bytes handed to the background writer and not yet written, at most (the
#: pivot waits for the oldest past this).
BACKGROUND_BYTES = 64 * 1024 * 1024


class GuardedFile(io.RawIOBase):
    """The temporary output file, given to h5py as a file object.

    HDF5 cannot close a file whose writes fail (a full disk: every flush fails again,
    and the process crashes at exit when h5py finally closes it). So the first failed
    write is remembered and every later write is discarded: HDF5 then closes cleanly,
    the pivot checks ``error`` after each step, removes the file and reports the error.

    Chunks in the background (``background(chunk)``): HDF5 writes a direct chunk in one
    ``write`` of the caller's own buffer; announced beforehand, that write is handed to a
    writer thread (``pwrite`` without the GIL: the copy into the page cache, a third of
    a ``none`` pivot's time, runs on the other core while this one makes the HDF5
    calls of the next chunks). The chunk's memory must then stay as it is until the
    returned future is done. Reads, truncation, sync and close wait for every pending
    write first.
    """

    def __init__(self, path: Path, writeback_bytes: int | None = None,
                 background_bytes: int | None = None):
        if writeback_bytes is None:
            writeback_bytes = WRITEBACK_BYTES
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.pos = 0
        self.error: BaseException | None = None  # the first failed write
        # Writeback: HDF5 appends the chunks (its metadata, rewritten in place near the
        # start of the file, is left to the fsync); every writeback_bytes past
        # `started`, the range [started, end) goes to the disk while the pivot works on.
        self.writeback_bytes = writeback_bytes if _native is not None else 0
        self.started = 0  # writeback started for [0, started)
        self.end = 0  # end of the furthest write
        # background writes (limit 0: all in the calling thread)
        self.limit = BACKGROUND_BYTES if background_bytes is None else background_bytes
        self.writer: threading.Thread | None = None
        self.cond = threading.Condition()
        self.queue: list = []  # (chunk, offset, future) for the writer thread
        self.closing = False
        self.pending: deque = deque()  # (future, bytes) of background writes, in order
        self.pending_bytes = 0
        self.announced: Any = None  # the chunk whose write goes to the background
        self.future: concurrent.futures.Future | None = None  # of the announced write
        self.bg_from = -1  # writer thread: writeback not started from here on
        self.staged: list = []  # (buffer, offset) streamed since the last flush_staged()
        self.streamed = False  # writes staged: the writer starts each one's writeback

    def streams(self) -> bool:
        """Whether ``stage`` writes go to the background writer (else: not available)."""
        return self.limit > 0 and _native is not None

    def stage(self, data: np.ndarray, offset: int) -> None:
        """Write ``data`` (contiguous) at ``offset`` on the writer thread, with the other
        staged writes, at the next ``flush_staged()``: the rows of a streamed dataset
        go straight to their place in the file's allocated chunks, no HDF5 call. The
        memory must stay as it is until the future of that flush is done."""
        self.staged.append((data, offset))

    def flush_staged(self) -> concurrent.futures.Future | None:
        """Queue the staged writes for the writer thread, in one ``pwrite_many`` (the
        writeback of each one's whole pages started right after it); returns their
        future (None: nothing staged)."""
        if not self.staged:
            return None
        staged, self.staged = self.staged, []
        if self.error is not None:
            return None
        self.streamed = True
        if self.writer is None:
            self.writer = threading.Thread(target=self._write_loop, name="pivot-write",
                                           daemon=True)
            self.writer.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        n = 0
        with self.cond:
            for data, offset in staged[:-1]:
                self.queue.append((data, offset, None))
                n += data.nbytes
            self.queue.append((staged[-1][0], staged[-1][1], future))
            n += staged[-1][0].nbytes
            self.cond.notify()
        self.pending.append((future, n))
        self.pending_bytes += n
        while self.pending_bytes > self.limit and len(self.pending) > 1:
            done, k = self.pending.popleft()
            done.result()
            self.pending_bytes -= k
        return future

    def background(self, chunk: np.ndarray) -> None:
        """Announce that HDF5's next write of exactly ``chunk``'s memory goes to the
        background; ``announced_future()`` then returns its future (None: written
        here, or not seen)."""
        if self.limit > 0 and _native is not None:
            self.announced = chunk
            self.future = None

    def announced_future(self) -> concurrent.futures.Future | None:
        future, self.future, self.announced = self.future, None, None
        return future

    def _write_loop(self) -> None:
        # The writer thread: every chunk queued meanwhile in one pwrite_many (the GIL
        # released once for them all), with the writeback every few MiB.
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                items, self.queue = self.queue, []
            try:
                if self.error is None:
                    if self.streamed:
                        # scattered over the chunks: each write's pages to the disk, in
                        # file order (a dataset's rows of consecutive batches queued
                        # meanwhile follow each other: one range) unless writes overlap
                        # (then the order they were staged in decides)
                        items = _in_file_order(items)
                        _native.pwrite_many(self.fd, [chunk for chunk, _, _ in items],
                                            [offset for _, offset, _ in items],
                                            -1, 0, bool(self.writeback_bytes))
                    else:
                        if self.writeback_bytes and self.bg_from < 0:
                            self.bg_from = items[0][1]
                        self.bg_from = _native.pwrite_many(
                            self.fd, [chunk for chunk, _, _ in items],
                            [offset for _, offset, _ in items],
                            self.bg_from if self.writeback_bytes else -1,
                            self.writeback_bytes)
            except BaseException as exc:  # noqa: BLE001 - reported by check(), as a write's
                if self.error is None:
                    self.error = exc
            finally:
                for _, _, future in items:
                    if future is not None:
                        future.set_result(None)

    def drain(self) -> None:
        """Wait for every background write (the staged ones queued first)."""
        self.flush_staged()
        while self.pending:
            self.pending.popleft()[0].result()
        self.pending_bytes = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            self.drain()
            self.pos = os.fstat(self.fd).st_size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        self.drain()
        n = os.preadv(self.fd, [buffer], self.pos)
        self.pos += n
        return n

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        chunk = self.announced
        if (chunk is not None and self.error is None and n == chunk.nbytes
                and np.frombuffer(view, np.uint8).ctypes.data == chunk.ctypes.data):
            self.announced = None
            if self.writer is None:
                self.writer = threading.Thread(target=self._write_loop, name="pivot-write",
                                               daemon=True)
                self.writer.start()
            self.future = concurrent.futures.Future()
            with self.cond:
                self.queue.append((chunk, self.pos, self.future))
                self.cond.notify()
            self.pending.append((self.future, n))
            self.pending_bytes += n
            while self.pending_bytes > self.limit:
                future, k = self.pending.popleft()
                future.result()
                self.pending_bytes -= k
            self.pos += n
            self.end = max(self.end, self.pos)
            return n
        if self.error is None:
            try:
                if _native is not None:
                    _native.pwrite_all(self.fd, view, self.pos)
                else:
                    done = 0
                    while done < n:  # write(2) may write less than asked
                        done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as exc:
                self.error = exc
        self.pos += n
        if self.pos > self.end:
            self.end = self.pos
            if (self.writeback_bytes and self.writer is None
                    and self.end - self.started >= self.writeback_bytes):
                _native.start_writeback(self.fd, self.started, self.end - self.started)
                self.started = self.end
        return n

    def truncate(self, size: int | None = None) -> int:
        self.drain()
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        self.drain()
        if self.error is None:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self.error = exc

    def check(self) -> None:
        """Raise the first write error, if any."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.writer is not None:
            with self.cond:
                self.closing = True
                self.cond.notify()
            self.writer.join()  # every pending write done (or failed)
            self.writer = None
            self.pending.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


def _in_file_order(items: list) -> list:
    """``(buffer, offset, future)`` items sorted by offset, or as they are if two of them
    overlap (a later write must land after an earlier one it overlaps)."""
    ordered = sorted(items, key=lambda item: item[1])
    end = -1
    for data, offset, _ in ordered:
        if offset < end:
            return items
        end = offset + memoryview(data).nbytes
    return ordered


class Prefetch:
    """Decode batches on a thread, up to ``depth`` ahead of the one being written (the
    decoder and the writes release the GIL: on two cores the two overlap). Started
    before the channel's datasets are created, so the first batches decode meanwhile;
    ``close()`` stops and joins the thread (call it on every path)."""

    def __init__(self, batches, depth: int = 2):
        import queue

        self._queue_full = queue.Full
        self.batches = batches
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="pivot-decode", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except self._queue_full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for batch in self.batches:
                if not self._put(batch):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


_DONE = object()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc)
    return any(s in text for s in ("No space left", "File too large", "errno = 28",
                                   "errno = 27", "Disk quota"))
