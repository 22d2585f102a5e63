# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled helpers of the pivot (``speeddata.pivot``): the output file's writes and
writeback, and HDF5's byte shuffle.

- ``pwrite_all``: ``pwrite(2)`` until every byte is written (EINTR retried), GIL released;
- ``pwrite_many``: several buffers at their offsets and the writeback after them, the
  GIL released once (the pivot's background writer);
- ``start_writeback``: ``sync_file_range(2)`` with ``SYNC_FILE_RANGE_WRITE``: the kernel
  starts writing a range to the disk and returns; the pivot calls it every few MiB so
  that the final ``fsync`` finds little left to write (the disk works while the pivot
  decodes and compresses the next batch);
- ``shuffle``: HDF5's shuffle filter (H5Zshuffle.c): the bytes of ``n`` elements of
  ``itemsize`` bytes regrouped by their position in the element, byte ``j`` of element
  ``i`` going to ``j * n + i``; GIL released, so the compression threads run it on every
  core (numpy's ``reshape(-1, k).T.tobytes()`` is the pure-Python reference).
"""

from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t
from libc.string cimport memcpy

from speeddata.includes.system cimport EINTR, errno, off_t, pwrite, ssize_t

from speeddata._pivot cimport SYNC_FILE_RANGE_WRITE, sync_file_range


cdef extern from *:
    """
    /* One loop per element size, all k output rows filled in the same pass; restrict
       tells the compiler the rows do not overlap the input, so it vectorizes the
       strided loads (byte j of element i -> row j, column i). */
    #define SD_SHUFFLE_K(K)                                                          \\
    static void sd_shuffle_##K(const unsigned char *restrict src,                    \\
                               unsigned char *restrict dst, Py_ssize_t n) {          \\
        for (Py_ssize_t i = 0; i < n; i++)                                           \\
            for (int j = 0; j < K; j++)                                              \\
                dst[(Py_ssize_t)j * n + i] = src[i * K + j];                         \\
    }
    SD_SHUFFLE_K(2)
    SD_SHUFFLE_K(4)

    /* 8-byte elements, 8 at a time: an 8x8 byte transpose in 64-bit registers (three
       rounds of masked swaps), then one 8-byte store per output row. */
    static inline unsigned long long sd_load64(const unsigned char *p) {
        unsigned long long v; memcpy(&v, p, 8); return v;
    }
    static inline void sd_store64(unsigned char *p, unsigned long long v) { memcpy(p, &v, 8); }
    static void sd_shuffle_8x8(const unsigned char *restrict src,
                               unsigned char *restrict dst, Py_ssize_t n) {
        Py_ssize_t i = 0, blocks = n & ~(Py_ssize_t)7;
        for (; i < blocks; i += 8) {
            unsigned long long r[8], t;
            for (int e = 0; e < 8; e++) r[e] = sd_load64(src + (i + e) * 8);
            /* r[e] byte b = byte b of element e (little-endian lanes); transpose so
               that r[b] byte e = byte b of element e. */
            for (int e = 0; e < 8; e += 2) {
                t = ((r[e] >> 8) ^ r[e + 1]) & 0x00FF00FF00FF00FFULL;
                r[e + 1] ^= t; r[e] ^= t << 8;
            }
            for (int e = 0; e < 8; e += 4)
                for (int d = 0; d < 2; d++) {
                    t = ((r[e + d] >> 16) ^ r[e + d + 2]) & 0x0000FFFF0000FFFFULL;
                    r[e + d + 2] ^= t; r[e + d] ^= t << 16;
                }
            for (int d = 0; d < 4; d++) {
                t = ((r[d] >> 32) ^ r[d + 4]) & 0x00000000FFFFFFFFULL;
                r[d + 4] ^= t; r[d] ^= t << 32;
            }
            for (int b = 0; b < 8; b++) sd_store64(dst + (Py_ssize_t)b * n + i, r[b]);
        }
        for (; i < n; i++)
            for (int j = 0; j < 8; j++) dst[(Py_ssize_t)j * n + i] = src[i * 8 + j];
    }
    """
    void sd_shuffle_2(const uint8_t* src, uint8_t* dst, Py_ssize_t n) nogil
    void sd_shuffle_4(const uint8_t* src, uint8_t* dst, Py_ssize_t n) nogil
    void sd_shuffle_8x8(const uint8_t* src, uint8_t* dst, Py_ssize_t n) nogil


cdef int write_fully(int fd, const char* p, Py_ssize_t n, off_t offset) noexcept nogil:
    """``pwrite(2)`` all ``n`` bytes at ``offset``, again after a short write or EINTR;
    0 or the errno."""
    cdef Py_ssize_t done = 0
    cdef ssize_t k
    while done < n:
        k = pwrite(fd, p + done, <size_t>(n - done), offset + done)
        if k < 0:
            if errno == EINTR:
                continue
            return errno
        done += k
    return 0


cdef int writeback(int fd, off_t offset, off_t nbytes) noexcept nogil:
    """``sync_file_range(2)`` with ``SYNC_FILE_RANGE_WRITE``, again after EINTR; 0 or the
    errno (advisory: the ``fsync`` that follows reports any real write error)."""
    cdef int rc = sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)
    while rc < 0 and errno == EINTR:
        rc = sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)
    return errno if rc < 0 else 0


def pwrite_all(int fd, const uint8_t[::1] data, off_t offset):
    """Write all of ``data`` at ``offset`` of ``fd`` (``pwrite(2)`` again after a short
    write or EINTR), without the GIL. Raises OSError (errno set) on failure."""
    cdef Py_ssize_t n = data.shape[0]
    cdef int err = 0
    if n == 0:
        return
    with nogil:
        err = write_fully(fd, <const char*>&data[0], n, offset)
    if err:
        raise OSError(err, f"pwrite: {_strerror(err)}")


def pwrite_many(int fd, list buffers not None, list offsets not None,
                off_t writeback_from=-1, off_t writeback_bytes=0, bint each=False):
    """Write each of ``buffers`` (contiguous buffers) at the offset of the same index
    (as ``pwrite_all``), all with the GIL released once, so that a writer thread is not
    held up reacquiring it after every chunk while another thread keeps it busy.

    Writeback (``writeback_from`` >= 0): whenever the furthest write ends at least
    ``writeback_bytes`` past ``writeback_from``, the disk's writeback of that range is
    started (``start_writeback``) and ``writeback_from`` moves to its end; returns the
    new ``writeback_from`` (-1 when given -1).

    ``each``: instead, the writeback of each buffer's whole pages is started right after
    it is written (the pages it ends inside of are left for the next write there, or
    the final ``fsync``): for buffers scattered over the file, each filling a region
    from where the last one there stopped. Buffers that follow each other in the file
    (the next one's offset is where this one ends) make one range: one writeback, the
    disk's requests larger. Raises OSError (errno set) at the first failed write; the
    ones before it are written."""
    cdef Py_ssize_t n = len(buffers)
    if len(offsets) != n:
        raise ValueError("pwrite_many: as many offsets as buffers, please")
    cdef Py_buffer* views = <Py_buffer*>PyMem_Malloc(max(n, 1) * sizeof(Py_buffer))
    cdef off_t* where = <off_t*>PyMem_Malloc(max(n, 1) * sizeof(off_t))
    cdef Py_ssize_t got = 0, i
    cdef int err = 0
    cdef off_t end = writeback_from
    cdef off_t lo, hi, run = -1
    if views == NULL or where == NULL:
        PyMem_Free(views)
        PyMem_Free(where)
        raise MemoryError()
    try:
        for i in range(n):
            where[i] = offsets[i]
            PyObject_GetBuffer(buffers[i], &views[i], PyBUF_C_CONTIGUOUS)
            got += 1
        with nogil:
            for i in range(n):
                err = write_fully(fd, <const char*>views[i].buf, views[i].len, where[i])
                if err:
                    break
                if each:
                    if run < 0:
                        run = where[i]  # a range of adjacent buffers starts
                    if i + 1 < n and where[i + 1] == where[i] + views[i].len:
                        continue  # the next one extends it
                    lo = run & ~(<off_t>4095)
                    hi = (where[i] + views[i].len) & ~(<off_t>4095)
                    run = -1
                    if hi > lo:
                        writeback(fd, lo, hi - lo)
                    continue
                if where[i] + views[i].len > end:
                    end = where[i] + views[i].len
                if writeback_from >= 0 and end - writeback_from >= writeback_bytes:
                    writeback(fd, writeback_from, end - writeback_from)
                    writeback_from = end
    finally:
        for i in range(got):
            PyBuffer_Release(&views[i])
        PyMem_Free(views)
        PyMem_Free(where)
    if err:
        raise OSError(err, f"pwrite: {_strerror(err)}")
    return writeback_from


def start_writeback(int fd, off_t offset, off_t nbytes) -> int:
    """Start writing ``nbytes`` at ``offset`` of ``fd`` to the disk and return at once
    (``sync_file_range(2)``, ``SYNC_FILE_RANGE_WRITE``; GIL released). Advisory: returns
    0, or the errno (the ``fsync`` that follows reports any real write error)."""
    cdef int rc
    with nogil:
        rc = writeback(fd, offset, nbytes)
    return rc


def shuffle(const uint8_t[::1] data, Py_ssize_t itemsize, uint8_t[::1] out=None):
    """HDF5's shuffle of ``data`` (whole elements of ``itemsize`` bytes): into ``out``
    (a writable buffer of at least as many bytes; returns the memoryview of the first
    ``len(data)`` bytes), or, without ``out``, as new bytes. A buffer reused from chunk to
    chunk spares the kernel a megabyte of fresh pages to fault in and zero each time."""
    cdef Py_ssize_t size = data.shape[0]
    if itemsize < 1:
        raise ValueError(f"shuffle: itemsize must be positive, not {itemsize}")
    if size % itemsize:
        raise ValueError(f"shuffle: {size} bytes are not whole {itemsize}-byte elements")
    cdef uint8_t* dst
    if out is None:
        result = PyBytes_FromStringAndSize(NULL, size)
        dst = <uint8_t*>PyBytes_AS_STRING(result)
    else:
        if out.shape[0] < size:
            raise ValueError(f"shuffle: the output holds {out.shape[0]} bytes, not {size}")
        result = out[:size]
        dst = &out[0] if size else NULL
    if size == 0:
        return result
    cdef const uint8_t* src = &data[0]
    cdef Py_ssize_t n = size // itemsize
    cdef Py_ssize_t i, j
    with nogil:
        if itemsize == 1:
            memcpy(dst, src, <size_t>size)
        elif itemsize == 2:
            sd_shuffle_2(src, dst, n)
        elif itemsize == 4:
            sd_shuffle_4(src, dst, n)
        elif itemsize == 8:
            sd_shuffle_8x8(src, dst, n)
        else:
            for i in range(n):
                for j in range(itemsize):
                    dst[j * n + i] = src[i * itemsize + j]
    return result


cdef str _strerror(int err):
    import os

    return os.strerror(err)
