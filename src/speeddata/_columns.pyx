# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled column decoder: Avro blocks of the cache -> preallocated numpy columns.

The batch loops build no Python objects and run without the GIL; a large decode is
split over threads (``BlockDecoder`` docstring). Two paths:

- fixed-layout schemas (``Schema.dtype`` is not None: only boolean, float, double and
  fixed fields) need no parsing at all: each record is ``record_size`` bytes whose
  layout is that structured dtype. Runs of 8 adjacent 8-byte fields are transposed 8
  records x 8 fields at a time in SIMD registers (AVX-512F or AVX2, chosen at run
  time) and written a whole cache line per column with non-temporal stores, a tile of
  records (~768 KiB) at a time; ``scatter_fixed`` copies the other fields record by
  record. ``contiguous=False``: one memcpy gathers each block's records instead;
- every other schema walks ``Schema.program`` (see schema.py) once per record with the
  inline helpers of ``_avro.pxd``.

Strings and bytes are copied into one heap (offset and length per row) and turned into
numpy arrays once, at ``finish``: ``StringDType`` on numpy >= 2 (through a fixed-width
``S`` buffer, which numpy casts from UTF-8 in C), else ``object`` arrays of ``str``;
bytes are always ``object`` arrays of ``bytes``.

``speeddata.reader.PyBlockDecoder`` is the pure-Python reference (fastavro) with the
same interface; tests compare the two.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.math cimport NAN
from libc.string cimport memcmp, memcpy, memset
from cpython.buffer cimport PyBUF_FORMAT
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdlib cimport free
from posix.stdlib cimport posix_memalign

from speeddata.includes.system cimport MADV_HUGEPAGE, madvise

cimport numpy as cnp

from speeddata._avro cimport (
    OP_BOOLEAN,
    OP_BYTES,
    OP_DOUBLE,
    OP_ENUM,
    OP_FIXED,
    OP_FLOAT,
    OP_INT,
    OP_LONG,
    OP_NULL,
    OP_STRING,
    OP_UNION,
    read_varint,
    utf8_valid,
)

import os
import threading

import numpy as np

from speeddata.schema import Schema

cnp.import_array()

# Transposing fixed-layout records into columns, 8 fields x 8 records at a time: eight
# unaligned loads of 64 bytes (8 records, 8 adjacent double/long fields), a transpose in
# registers, and eight stores of one whole cache line each, one per column, non-temporal
# (the line is written whole, so the CPU need not read it first: a record-by-record
# scatter reads every output line from memory before writing it). AVX-512F or AVX2,
# chosen at run time; level 0 (other CPUs, other compilers) leaves it to scatter_fixed.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #include <immintrin.h>
    #define SD_X86 1
    #else
    #define SD_X86 0
    #endif

    static int sd_simd_level(void) {
    #if SD_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) return 2;
        if (__builtin_cpu_supports("avx2")) return 1;
    #endif
        return 0;
    }

    #if SD_X86
    __attribute__((target("avx512f")))
    static void sd_t8_avx512(const uint8_t* s, Py_ssize_t rs, char* const* d, Py_ssize_t off) {
        __m512d a0 = _mm512_loadu_pd(s), a1 = _mm512_loadu_pd(s + rs);
        __m512d a2 = _mm512_loadu_pd(s + 2 * rs), a3 = _mm512_loadu_pd(s + 3 * rs);
        __m512d a4 = _mm512_loadu_pd(s + 4 * rs), a5 = _mm512_loadu_pd(s + 5 * rs);
        __m512d a6 = _mm512_loadu_pd(s + 6 * rs), a7 = _mm512_loadu_pd(s + 7 * rs);
        /* b0 = a0[0] a1[0] a0[2] a1[2] a0[4] a1[4] a0[6] a1[6] */
        __m512d b0 = _mm512_unpacklo_pd(a0, a1), b1 = _mm512_unpackhi_pd(a0, a1);
        __m512d b2 = _mm512_unpacklo_pd(a2, a3), b3 = _mm512_unpackhi_pd(a2, a3);
        __m512d b4 = _mm512_unpacklo_pd(a4, a5), b5 = _mm512_unpackhi_pd(a4, a5);
        __m512d b6 = _mm512_unpacklo_pd(a6, a7), b7 = _mm512_unpackhi_pd(a6, a7);
        const __m512i i1 = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
        const __m512i i2 = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
        /* c0 = a0[0] a1[0] a2[0] a3[0] a0[4] a1[4] a2[4] a3[4] */
        __m512d c0 = _mm512_permutex2var_pd(b0, i1, b2), c1 = _mm512_permutex2var_pd(b1, i1, b3);
        __m512d c2 = _mm512_permutex2var_pd(b0, i2, b2), c3 = _mm512_permutex2var_pd(b1, i2, b3);
        __m512d c4 = _mm512_permutex2var_pd(b4, i1, b6), c5 = _mm512_permutex2var_pd(b5, i1, b7);
        __m512d c6 = _mm512_permutex2var_pd(b4, i2, b6), c7 = _mm512_permutex2var_pd(b5, i2, b7);
        const __m512i j1 = _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0);
        const __m512i j2 = _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4);
        /* e<k> = field k of the 8 records */
        _mm512_stream_pd((double*)(d[0] + off), _mm512_permutex2var_pd(c0, j1, c4));
        _mm512_stream_pd((double*)(d[1] + off), _mm512_permutex2var_pd(c1, j1, c5));
        _mm512_stream_pd((double*)(d[2] + off), _mm512_permutex2var_pd(c2, j1, c6));
        _mm512_stream_pd((double*)(d[3] + off), _mm512_permutex2var_pd(c3, j1, c7));
        _mm512_stream_pd((double*)(d[4] + off), _mm512_permutex2var_pd(c0, j2, c4));
        _mm512_stream_pd((double*)(d[5] + off), _mm512_permutex2var_pd(c1, j2, c5));
        _mm512_stream_pd((double*)(d[6] + off), _mm512_permutex2var_pd(c2, j2, c6));
        _mm512_stream_pd((double*)(d[7] + off), _mm512_permutex2var_pd(c3, j2, c7));
    }

    __attribute__((target("avx2")))
    static inline void sd_t4_avx2(const uint8_t* s, Py_ssize_t rs, char* const* d,
                                  Py_ssize_t off) {
        /* 4 records x 4 fields */
        __m256d a0 = _mm256_loadu_pd((const double*)s);
        __m256d a1 = _mm256_loadu_pd((const double*)(s + rs));
        __m256d a2 = _mm256_loadu_pd((const double*)(s + 2 * rs));
        __m256d a3 = _mm256_loadu_pd((const double*)(s + 3 * rs));
        __m256d t0 = _mm256_unpacklo_pd(a0, a1), t1 = _mm256_unpackhi_pd(a0, a1);
        __m256d t2 = _mm256_unpacklo_pd(a2, a3), t3 = _mm256_unpackhi_pd(a2, a3);
        _mm256_stream_pd((double*)(d[0] + off), _mm256_permute2f128_pd(t0, t2, 0x20));
        _mm256_stream_pd((double*)(d[1] + off), _mm256_permute2f128_pd(t1, t3, 0x20));
        _mm256_stream_pd((double*)(d[2] + off), _mm256_permute2f128_pd(t0, t2, 0x31));
        _mm256_stream_pd((double*)(d[3] + off), _mm256_permute2f128_pd(t1, t3, 0x31));
    }

    __attribute__((target("avx2")))
    static void sd_t8_avx2(const uint8_t* s, Py_ssize_t rs, char* const* d, Py_ssize_t off) {
        /* each column's line is written whole, its two halves one after the other */
        sd_t4_avx2(s, rs, d, off);
        sd_t4_avx2(s + 4 * rs, rs, d, off + 32);
        sd_t4_avx2(s + 32, rs, d + 4, off);
        sd_t4_avx2(s + 32 + 4 * rs, rs, d + 4, off + 32);
    }
    #endif

    /* Records [0, n) at s (record size rs, the group's first field at s) into rows
       row.. of the 8 columns d[0..7] (8-byte values, 64-byte aligned columns): rows up
       to a multiple of 8 and the last n % 8 one by one, the others 8 at a time. */
    static void sd_group8(const uint8_t* s, Py_ssize_t n, Py_ssize_t rs, char* const* d,
                          Py_ssize_t row, int level) {
        Py_ssize_t r = 0, k;
        uint64_t v;
        Py_ssize_t head = (8 - (row & 7)) & 7;
        if (level == 0) head = n;
        if (head > n) head = n;
        for (; r < head; r++)
            for (k = 0; k < 8; k++) {
                memcpy(&v, s + r * rs + 8 * k, 8);
                memcpy(d[k] + (row + r) * 8, &v, 8);
            }
    #if SD_X86
        if (level == 2)
            for (; r + 8 <= n; r += 8) sd_t8_avx512(s + r * rs, rs, d, (row + r) * 8);
        else if (level == 1)
            for (; r + 8 <= n; r += 8) sd_t8_avx2(s + r * rs, rs, d, (row + r) * 8);
    #endif
        for (; r < n; r++)
            for (k = 0; k < 8; k++) {
                memcpy(&v, s + r * rs + 8 * k, 8);
                memcpy(d[k] + (row + r) * 8, &v, 8);
            }
    }

    /* Orders the non-temporal stores of this thread before what follows (the pool's
       hand-over of the result). */
    static void sd_store_fence(int level) {
    #if SD_X86
        if (level > 0) _mm_sfence();
    #endif
    }
    """
    int sd_simd_level() noexcept nogil
    void sd_group8(const uint8_t* s, Py_ssize_t n, Py_ssize_t rs, char* const* d,
                   Py_ssize_t row, int level) noexcept nogil
    void sd_store_fence(int level) noexcept nogil

# the transpose used: 2 AVX-512F, 1 AVX2, 0 none (see _set_simd_level)
cdef int _simd_level = sd_simd_level()

# Bytes of records per tile of the fixed-layout transpose: a tile stays in L2 (1 MiB a
# core here) while each group of 8 fields is taken out of it. Measured on the 800-byte
# `wide` record: 256 records 8.8 ms, 512 8.7, 1024 8.6, 2048 8.7 (one 48 MB read).
cdef Py_ssize_t _TILE_BYTES = 768 * 1024


def _set_simd_level(int level):
    """Use the transpose of ``level`` (2 AVX-512F, 1 AVX2, 0 none) in decoders reserved
    from now on, if this CPU has it; returns the level now in use. For tests and
    measurements."""
    global _simd_level
    _simd_level = max(0, min(level, sd_simd_level()))
    return _simd_level


def _get_simd_level():
    """The transpose used by decoders reserved from now on (2 AVX-512F, 1 AVX2, 0 none)."""
    return _simd_level


def _set_tile_bytes(Py_ssize_t n_bytes):
    """Bytes of records per tile of the fixed-layout transpose (at least 8 records);
    returns the previous value. For tests (tile boundaries) and measurements."""
    global _TILE_BYTES
    old = _TILE_BYTES
    _TILE_BYTES = max(1, n_bytes)
    return old


try:  # numpy >= 2
    from numpy.dtypes import StringDType as _StringDType
except ImportError:  # pragma: no cover - numpy 1.x
    _StringDType = None

# Rows of a string column converted per step: bounds the fixed-width buffer to ~8 MiB.
cdef Py_ssize_t _STRING_STEP_BYTES = 8 * 1024 * 1024

# A decode of fewer payload bytes than this runs on the calling thread alone: handing a
# part to a pool thread costs some 50 us, a decode of 4 MiB about 1 ms.
cdef Py_ssize_t _PARALLEL_MIN_BYTES = 4 * 1024 * 1024

_pool = None
_pool_lock = threading.Lock()


def _forget_pool():
    # a forked child has none of the parent's threads: it starts its own pool
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def default_threads():
    """Decode threads used when none are given: the CPUs this process may run on."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


cdef object _get_pool(Py_ssize_t n_workers):
    """The module's decode thread pool, with at least ``n_workers`` threads."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n_workers:
            import concurrent.futures

            old = _pool
            _pool = concurrent.futures.ThreadPoolExecutor(
                n_workers, thread_name_prefix="speeddata-decode"
            )
            if old is not None:
                old.shutdown(wait=False)
        return _pool


cdef inline void _write_null(
    column_out* c, Py_ssize_t row, int32_t op, int64_t heap_used
) noexcept nogil:
    cdef char* dst
    if c.valid_p != NULL:
        c.valid_p[row] = 0
    if c.start_p != NULL:
        c.start_p[row] = heap_used
        c.length_p[row] = 0
    if c.values_p == NULL:
        return
    dst = c.values_p + row * c.itemsize
    if op == OP_DOUBLE:
        (<double*>dst)[0] = NAN
    elif op == OP_FLOAT:
        (<float*>dst)[0] = <float>NAN
    else:
        memset(dst, 0, c.itemsize)


cdef Py_ssize_t decode_records(
    const uint8_t* p,
    const uint8_t* end,
    Py_ssize_t n_records,
    const int32_t* program,
    Py_ssize_t n_ops,
    column_out* cols,
    Py_ssize_t row,
    uint8_t* heap_p,
    int64_t* heap_used,
) noexcept nogil:
    cdef Py_ssize_t r, i
    cdef int32_t op, arg
    cdef int64_t v = 0
    cdef int64_t n = 0
    cdef uint32_t u32
    cdef uint64_t u64
    cdef column_out* c
    cdef char* dst
    for r in range(n_records):
        i = 0
        while i < n_ops:
            op = program[2 * i]
            arg = program[2 * i + 1]
            if op == OP_UNION:
                p = read_varint(p, end, &v, 5)  # the branch index is an int
                if p == NULL or v < 0 or v > 1:
                    return r + 1
                if v == arg:
                    # the null branch: nothing encoded; the value op is skipped
                    _write_null(&cols[i + 1], row, program[2 * i + 2], heap_used[0])
                    i += 2
                    continue
                c = &cols[i + 1]
                if c.valid_p != NULL:
                    c.valid_p[row] = 1
                i += 1
                continue
            c = &cols[i]
            dst = c.values_p + row * c.itemsize if c.values_p != NULL else NULL
            if op == OP_DOUBLE:
                if end - p < 8:
                    return r + 1
                if dst != NULL:
                    memcpy(&u64, p, 8)
                    memcpy(dst, &u64, 8)
                p += 8
            elif op == OP_LONG:
                p = read_varint(p, end, &v, 10)
                if p == NULL:
                    return r + 1
                if dst != NULL:
                    (<int64_t*>dst)[0] = v
            elif op == OP_FLOAT:
                if end - p < 4:
                    return r + 1
                if dst != NULL:
                    memcpy(&u32, p, 4)
                    memcpy(dst, &u32, 4)
                p += 4
            elif op == OP_INT or op == OP_ENUM:
                p = read_varint(p, end, &v, 5)
                if p == NULL or (op == OP_ENUM and (v < 0 or v >= arg)):
                    return r + 1
                if dst != NULL:
                    (<int32_t*>dst)[0] = <int32_t>v
            elif op == OP_BOOLEAN:
                if p >= end or p[0] > 1:
                    return r + 1
                if dst != NULL:
                    dst[0] = <char>p[0]
                p += 1
            elif op == OP_STRING or op == OP_BYTES:
                p = read_varint(p, end, &n, 10)
                if p == NULL or n < 0 or n > end - p:
                    return r + 1
                if c.start_p != NULL:
                    memcpy(heap_p + heap_used[0], p, <size_t>n)
                    c.start_p[row] = heap_used[0]
                    c.length_p[row] = n
                    heap_used[0] += n
                p += n
            elif op == OP_FIXED:
                if end - p < arg:
                    return r + 1
                if dst != NULL:
                    memcpy(dst, p, <size_t>arg)
                p += arg
            elif op != OP_NULL:
                return r + 1
            i += 1
        row += 1
    if p != end:
        return n_records + 1
    return 0


cdef void scatter_fixed(
    const uint8_t* p,
    Py_ssize_t n_records,
    Py_ssize_t record_size,
    Py_ssize_t n_fields,
    const Py_ssize_t* field_offset,
    const Py_ssize_t* field_size,
    char** dest_p,
    Py_ssize_t row,
) noexcept nogil:
    # Record by record: the source is read once, in order (the prefetcher streams it),
    # and each column's current cache line stays in L1 for the next records (64 bytes =
    # 8 doubles), so a 100-column record costs 100 stores to lines already there.
    cdef Py_ssize_t r, f, size
    cdef const uint8_t* src
    cdef char* d
    cdef uint64_t u64
    cdef uint32_t u32
    for r in range(n_records):
        src = p + r * record_size
        for f in range(n_fields):
            d = dest_p[f]
            size = field_size[f]
            d += (row + r) * size
            if size == 8:
                memcpy(&u64, src + field_offset[f], 8)
                memcpy(d, &u64, 8)
            elif size == 4:
                memcpy(&u32, src + field_offset[f], 4)
                memcpy(d, &u32, 4)
            elif size == 1:
                d[0] = <char>src[field_offset[f]]
            else:
                memcpy(d, src + field_offset[f], <size_t>size)


def verify_blocks(
    const uint8_t[::1] segment not None,
    const uint64_t[::1] offset not None,
    const uint32_t[::1] size not None,
    const uint32_t[::1] n_records not None,
    Py_ssize_t header_size,
    bytes sync not None,
):
    """Check the blocks that a segment's index lists against the segment's bytes.

    A block is complete when it starts where the previous one ended (the first right
    after the header), its two varints give the indexed record count and a byte count
    that ends, with the 16-byte sync marker, exactly ``size`` bytes later inside the
    file. The first entry that fails ends the walk: in a segment still being written the
    entries after it (and it) are blocks not yet copied (docs/cache.md, "Write order").

    Returns ``(n_good, payload_start, payload_size)``: int64 arrays of the good blocks'
    record bytes.
    """
    cdef Py_ssize_t n_entries = offset.shape[0]
    if size.shape[0] != n_entries or n_records.shape[0] != n_entries:
        raise ValueError("index columns differ in length")
    if len(sync) != 16:
        raise ValueError("a sync marker is 16 bytes")
    cdef const uint8_t* sync_p = sync
    cdef Py_ssize_t file_size = segment.shape[0]
    cdef const uint8_t* base = &segment[0] if file_size > 0 else NULL
    cdef cnp.ndarray starts = np.empty(n_entries, np.int64)
    cdef cnp.ndarray sizes = np.empty(n_entries, np.int64)
    cdef int64_t* start_p = <int64_t*>cnp.PyArray_DATA(starts)
    cdef int64_t* size_p = <int64_t*>cnp.PyArray_DATA(sizes)
    cdef Py_ssize_t i, good = 0
    cdef int64_t expected = header_size
    cdef int64_t count = 0, n_bytes = 0
    cdef int64_t block_end
    cdef const uint8_t* q
    cdef const uint8_t* end = base + file_size if base != NULL else NULL
    with nogil:
        for i in range(n_entries):
            if <int64_t>offset[i] != expected or expected + <int64_t>size[i] > file_size:
                break
            q = read_varint(base + expected, end, &count, 10)
            if q == NULL or count != <int64_t>n_records[i]:
                break
            q = read_varint(q, end, &n_bytes, 10)
            if q == NULL or n_bytes < 0 or n_bytes > end - q:
                break
            block_end = (q - base) + n_bytes + 16
            if block_end != expected + <int64_t>size[i]:
                break
            if memcmp(q + n_bytes, sync_p, 16) != 0:
                break
            start_p[good] = q - base
            size_p[good] = n_bytes
            good += 1
            expected = block_end
    return good, starts[:good], sizes[:good]


# What a decoder needs of a schema, per Schema object (the reader keeps one per schema
# JSON): computing Schema.dtype and fixed_size takes ~0.2 ms, a good part of a small
# read. Each entry holds its schema, so an id is not reused while it is here.
_FACTS = {}


cdef tuple _schema_facts(schema):
    entry = _FACTS.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    if len(_FACTS) >= 64:
        _FACTS.clear()
    program = np.ascontiguousarray(schema.program, dtype=np.int32)
    program.flags.writeable = False
    facts = (
        {s.name: None for s in schema.signals},  # ordered, with fast membership
        program,
        schema.dtype,
        schema.fixed_size,
        [(sig, sig.dtype) for sig in schema.signals],
    )
    _FACTS[id(schema)] = (schema, facts)
    return facts


cdef class BlockDecoder:
    """Decode blocks of one schema into preallocated numpy columns.

    ``BlockDecoder(schema, names=None)`` decodes the signals ``names`` (all when None);
    ``reserve(n_rows, heap_bytes)`` allocates the columns (``heap_bytes``: room for the
    bytes/string values, at most the sum of the payload bytes); ``decode(buffer, start,
    size, count)`` appends the records of the blocks whose record bytes are
    ``buffer[start[i]:start[i] + size[i]]`` holding ``count[i]`` records each;
    ``finish()`` returns ``(columns, valid)`` where ``columns`` maps signal names to
    arrays and ``valid`` maps each nullable non-floating signal to its validity mask
    (True where a value is present; float and double nulls are NaN instead).

    ``contiguous=False`` (fixed-layout schemas only) skips the scatter into columns:
    the records are gathered into one buffer and the columns are strided views of it
    as the structured ``Schema.dtype`` (``np.frombuffer``): about memcpy speed, but each
    column keeps the whole buffer alive and a pass over one column reads every record.
    ``records()`` then returns that structured array itself.

    ``threads`` (None: the CPUs this process may use, see ``default_threads``): a
    ``decode`` of at least 4 MiB of records is split into that many runs of whole blocks
    of about equal bytes, decoded at once without the GIL (each block's rows, and its
    share of the string heap, are known before it is decoded), the calling thread
    taking the first run and a module-wide thread pool the others. A fixed-layout
    schema into columns is split by columns instead (every thread reads every block,
    each writes its own columns): each thread then takes the page faults of its own
    part of the fresh column memory, where runs of rows would both fault every page.
    """

    cdef readonly object schema
    cdef readonly list names
    cdef readonly bint fixed_layout
    cdef object record_dtype     # Schema.dtype (computed once)
    cdef list signal_dtypes      # (Signal, its column dtype) of every signal
    cdef readonly bint contiguous
    cdef readonly Py_ssize_t n_rows
    cdef readonly Py_ssize_t capacity
    cdef object program_array
    cdef const int32_t* program_p
    cdef Py_ssize_t n_ops
    cdef object cols_buffer      # uint8 ndarray backing the column_out array
    cdef column_out* cols
    cdef dict values             # name -> ndarray (values, or start offsets of bytes/string)
    cdef dict lengths            # name -> ndarray of byte lengths (bytes/string)
    cdef dict valid              # name -> uint8 ndarray (nullable signals)
    cdef readonly object slab    # uint8 ndarray holding every column (reserve's out=)
    cdef object record_buffer    # uint8 ndarray of gathered records (contiguous=False)
    cdef object heap
    cdef uint8_t* heap_p
    cdef int64_t heap_used
    cdef int64_t heap_capacity
    # fixed layout
    cdef Py_ssize_t record_size
    cdef object field_offset     # intp: byte offset of each field in the record
    cdef object field_size       # intp: bytes of each field
    cdef object field_dest       # uintp: address of each field's column
    cdef Py_ssize_t n_fields     # fields scattered one by one (not in a group of 8)
    cdef object group_offset     # intp: byte offset of each group's first field
    cdef object group_dest       # uintp: the 8 columns of each group
    cdef readonly Py_ssize_t n_groups  # runs of 8 adjacent 8-byte fields, transposed 8x8
    cdef int simd_level
    cdef const Py_ssize_t* group_offset_p
    cdef char** group_dest_p
    cdef const Py_ssize_t* field_offset_p
    cdef const Py_ssize_t* field_size_p
    cdef char** field_dest_p
    cdef char* records_p
    cdef readonly int threads
    # the blocks of the decode() in progress, for _run on any thread
    cdef const uint8_t* d_base
    cdef const int64_t* d_start
    cdef const int64_t* d_size
    cdef const int64_t* d_count
    cdef const int64_t* d_row    # first row of each block
    cdef const int64_t* d_heap   # heap offset of each block's bytes/string values
    cdef Py_ssize_t d_n_blocks

    def __init__(self, schema, names=None, bint contiguous=True, threads=None):
        self.schema = Schema.load(schema)
        self.contiguous = contiguous
        self.threads = default_threads() if threads is None else max(1, int(threads))
        all_names, self.program_array, self.record_dtype, fixed_size, self.signal_dtypes = (
            _schema_facts(self.schema)
        )
        if names is None:
            self.names = list(all_names)
        else:
            wanted = set(names)
            unknown = [n for n in names if n not in all_names]
            if unknown:
                raise KeyError(
                    f"{self.schema.name}: no signal {unknown[0]!r}; signals: {list(all_names)}"
                )
            self.names = [n for n in all_names if n in wanted]
        self.n_ops = self.program_array.shape[0]
        self.program_p = <const int32_t*>cnp.PyArray_DATA(self.program_array)
        self.cols_buffer = np.zeros(max(self.n_ops, 1) * sizeof(column_out), np.uint8)
        self.cols = <column_out*>cnp.PyArray_DATA(self.cols_buffer)
        self.fixed_layout = self.record_dtype is not None
        self.record_size = fixed_size or 0
        self.n_rows = 0
        self.capacity = 0
        self.values = {}
        self.lengths = {}
        self.valid = {}
        self.heap = None
        self.heap_p = NULL
        self.heap_used = 0
        self.heap_capacity = 0

    def reserve(self, Py_ssize_t n_rows, Py_ssize_t heap_bytes=0, out=None):
        """Allocate columns for ``n_rows`` records; any earlier result is dropped.

        ``out``: a writable 1-D uint8 ndarray to hold the columns instead of new memory
        (``slab`` is then a view of it), used when it holds enough bytes, else ignored:
        a buffer given back by the consumer of an earlier result spares the kernel
        faulting in and zeroing fresh pages for every batch. The columns of ``finish``
        are views of it; it must not be reused while they are. A 64-byte aligned start
        (as ``slab`` always has) keeps the fastest transpose of fixed-layout records.
        """
        cdef column_out* c
        cdef cnp.ndarray arr
        memset(self.cols, 0, max(self.n_ops, 1) * sizeof(column_out))
        self.values = {}
        self.lengths = {}
        self.valid = {}
        self.n_rows = 0
        self.capacity = n_rows
        self.heap_used = 0
        if self.fixed_layout and not self.contiguous:
            # strided views of one record buffer: the blocks' bytes are only gathered
            self.record_buffer = np.empty(max(n_rows * self.record_size, 1), np.uint8)
            self.records_p = <char*>cnp.PyArray_DATA(self.record_buffer)
            self.heap_capacity = 0
            return
        wanted = set(self.names)
        has_var = False
        # One allocation for every column: numpy backs a large one with huge pages,
        # where a hundred separate columns would each take a 4 KiB page fault per page
        # on first write (measured: 72 ms against 17 ms for 160 MB).
        layout = []  # (kind, signal, dtype, offset)
        total = 0
        for sig, sig_dtype in self.signal_dtypes:
            if sig.name not in wanted:
                continue
            if sig.type in ("string", "bytes"):
                parts = [("start", np.dtype(np.int64)), ("length", np.dtype(np.int64))]
            else:
                parts = [("values", sig_dtype)]
            if sig.nullable:
                parts.append(("valid", np.dtype(np.uint8)))
            for kind, dtype in parts:
                layout.append((kind, sig, dtype, total))
                total += (n_rows * dtype.itemsize + 63) // 64 * 64
        if out is not None:
            if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 1
                    and out.flags.c_contiguous and out.flags.writeable):
                raise TypeError("reserve: out must be a writable contiguous 1-D uint8 array")
            if out.shape[0] < max(total, 1):
                out = None
        self.slab = _aligned_empty(total) if out is None else out[: max(total, 1)]
        for kind, sig, dtype, offset in layout:
            arr = self.slab[offset : offset + n_rows * dtype.itemsize].view(dtype)
            c = &self.cols[sig.op_index]
            if kind == "start":
                has_var = True
                self.values[sig.name] = arr
                c.start_p = <int64_t*>cnp.PyArray_DATA(arr)
                c.itemsize = 0
            elif kind == "length":
                self.lengths[sig.name] = arr
                c.length_p = <int64_t*>cnp.PyArray_DATA(arr)
            elif kind == "values":
                self.values[sig.name] = arr
                c.values_p = <char*>cnp.PyArray_DATA(arr)
                c.itemsize = dtype.itemsize
            else:
                self.valid[sig.name] = arr
                c.valid_p = <uint8_t*>cnp.PyArray_DATA(arr)
        self.heap = np.empty(max(heap_bytes, 1) if has_var else 1, np.uint8)
        self.heap_p = <uint8_t*>cnp.PyArray_DATA(self.heap)
        self.heap_capacity = heap_bytes if has_var else 0
        if self.fixed_layout:
            self._plan_fixed()

    cdef _plan_fixed(self):
        # Runs of 8 adjacent 8-byte fields (doubles, 8-byte fixed) in the record become
        # groups, transposed 8 records at a time (sd_group8); the other fields are
        # scattered record by record (scatter_fixed).
        cdef Py_ssize_t f, k
        dtype = self.record_dtype
        fields = [
            (dtype.fields[name][1], dtype.fields[name][0].itemsize,
             <size_t>cnp.PyArray_DATA(<cnp.ndarray>self.values[name]))
            for name in dtype.names if name in self.values
        ]
        self.simd_level = _simd_level
        groups, singles = [], []
        f = 0
        while f < len(fields):
            run = fields[f : f + 8]
            if (
                self.simd_level > 0
                and len(run) == 8
                and all(size == 8 and off == run[0][0] + 8 * k and dest % 64 == 0
                        for k, (off, size, dest) in enumerate(run))
            ):
                groups.append(run)
                f += 8
            else:
                singles.append(fields[f])
                f += 1
        self.n_groups = len(groups)
        self.group_offset = np.array([g[0][0] for g in groups] or [0], np.intp)
        self.group_dest = np.array([dest for g in groups for _, _, dest in g] or [0], np.uintp)
        self.group_offset_p = <const Py_ssize_t*>cnp.PyArray_DATA(self.group_offset)
        self.group_dest_p = <char**>cnp.PyArray_DATA(self.group_dest)
        self.n_fields = len(singles)
        self.field_offset = np.array([x[0] for x in singles] or [0], np.intp)
        self.field_size = np.array([x[1] for x in singles] or [0], np.intp)
        self.field_dest = np.array([x[2] for x in singles] or [0], np.uintp)
        self.field_offset_p = <const Py_ssize_t*>cnp.PyArray_DATA(self.field_offset)
        self.field_size_p = <const Py_ssize_t*>cnp.PyArray_DATA(self.field_size)
        self.field_dest_p = <char**>cnp.PyArray_DATA(self.field_dest)

    cdef Py_ssize_t _run(self, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t* bad) noexcept nogil:
        # Decode blocks [b0, b1) of the decode() in progress into their rows; returns
        # the first block that does not parse (its result in bad[0]) or -1. Runs on any
        # thread: runs of blocks write disjoint rows and disjoint parts of the heap.
        cdef Py_ssize_t b, r
        cdef int64_t heap_used
        if self.fixed_layout and not self.contiguous:
            for b in range(b0, b1):
                memcpy(self.records_p + self.d_row[b] * self.record_size,
                       self.d_base + self.d_start[b], <size_t>self.d_size[b])
            return -1
        if self.fixed_layout:
            self._run_fixed(b0, b1, 0, self.n_groups, 0, self.n_fields)
            return -1
        for b in range(b0, b1):
            heap_used = self.d_heap[b]
            r = decode_records(
                self.d_base + self.d_start[b], self.d_base + self.d_start[b] + self.d_size[b],
                self.d_count[b], self.program_p, self.n_ops, self.cols, self.d_row[b],
                self.heap_p, &heap_used,
            )
            if r:
                bad[0] = r
                return b
        return -1

    cdef void _run_fixed(
        self, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t g0, Py_ssize_t g1, Py_ssize_t s0,
        Py_ssize_t s1,
    ) noexcept nogil:
        # Blocks [b0, b1), groups [g0, g1) and single fields [s0, s1) of a fixed-layout
        # decode, a tile of records at a time: each group takes its 64 bytes out of
        # every record of the tile while the tile is in L2.
        cdef Py_ssize_t b, t, n, g
        cdef const uint8_t* src
        cdef Py_ssize_t rs = self.record_size
        cdef Py_ssize_t tile = max(8, _TILE_BYTES // rs) if rs > 0 else 1
        for b in range(b0, b1):
            t = 0
            while t < self.d_count[b]:
                n = min(tile, self.d_count[b] - t)
                src = self.d_base + self.d_start[b] + t * rs
                for g in range(g0, g1):
                    sd_group8(src + self.group_offset_p[g], n, rs, self.group_dest_p + 8 * g,
                              self.d_row[b] + t, self.simd_level)
                if s1 > s0:
                    scatter_fixed(src, n, rs, s1 - s0, self.field_offset_p + s0,
                                  self.field_size_p + s0, self.field_dest_p + s0,
                                  self.d_row[b] + t)
                t += n
        sd_store_fence(self.simd_level)

    def _decode_fixed_run(self, Py_ssize_t g0, Py_ssize_t g1, Py_ssize_t s0, Py_ssize_t s1):
        # one share of the columns of every block, without the GIL
        cdef Py_ssize_t n_blocks = self.d_n_blocks
        with nogil:
            self._run_fixed(0, n_blocks, g0, g1, s0, s1)
        return -1, 0

    def _decode_run(self, Py_ssize_t b0, Py_ssize_t b1):
        # one run of blocks, without the GIL: (first bad block or -1, its result)
        cdef Py_ssize_t bad = 0, b
        with nogil:
            b = self._run(b0, b1, &bad)
        return b, bad

    def decode(
        self,
        const uint8_t[::1] buffer not None,
        const int64_t[::1] start not None,
        const int64_t[::1] size not None,
        const int64_t[::1] count not None,
    ):
        """Append the records of the given blocks; returns the rows decoded so far.

        Raises ValueError naming the block when its bytes are not exactly ``count``
        records of the schema (a corrupt cache file), and when the rows would exceed the
        reserved capacity.
        """
        cdef Py_ssize_t n_blocks = start.shape[0]
        cdef Py_ssize_t b, bad = 0, bad_block = -1, total = 0
        cdef Py_ssize_t buffer_size = buffer.shape[0]
        cdef const uint8_t* base = &buffer[0] if buffer_size > 0 else NULL
        cdef int64_t payload = 0
        if size.shape[0] != n_blocks or count.shape[0] != n_blocks:
            raise ValueError("start, size and count differ in length")
        for b in range(n_blocks):
            if start[b] < 0 or size[b] < 0 or start[b] + size[b] > buffer_size or count[b] < 0:
                raise ValueError(f"block {b}: bytes {start[b]}+{size[b]} outside the buffer")
            total += count[b]
            payload += size[b]
        if self.n_rows + total > self.capacity:
            raise ValueError(
                f"{total} more rows do not fit: {self.n_rows} of {self.capacity} reserved"
            )
        if self.heap_capacity and self.heap_used + payload > self.heap_capacity:
            raise ValueError("the heap reserved for bytes/string values is too small")
        if self.fixed_layout:
            for b in range(n_blocks):
                if size[b] != count[b] * self.record_size:
                    raise ValueError(
                        f"block {b}: {size[b]} bytes are not {count[b]} records of "
                        f"{self.record_size} bytes"
                    )
        if n_blocks == 0:
            return self.n_rows
        # where each block goes: its first row, and its share of the heap (a block's
        # values take at most its payload bytes)
        cdef cnp.ndarray rows = np.empty(n_blocks, np.int64)
        cdef cnp.ndarray heaps = np.empty(n_blocks, np.int64)
        cdef int64_t* rows_p = <int64_t*>cnp.PyArray_DATA(rows)
        cdef int64_t* heaps_p = <int64_t*>cnp.PyArray_DATA(heaps)
        cdef int64_t row_at = self.n_rows, heap_at = self.heap_used
        for b in range(n_blocks):
            rows_p[b] = row_at
            heaps_p[b] = heap_at
            row_at += count[b]
            heap_at += size[b]
        self.d_base = base
        self.d_start = &start[0]
        self.d_size = &size[0]
        self.d_count = &count[0]
        self.d_row = rows_p
        self.d_heap = heaps_p
        self.d_n_blocks = n_blocks
        try:
            results = self._decode_runs(n_blocks, size, payload)
        finally:
            self.d_base = NULL
            self.d_start = self.d_size = self.d_count = self.d_row = self.d_heap = NULL
            self.d_n_blocks = 0
        for run_bad_block, run_bad in results:  # runs are in block order: the first
            if run_bad_block >= 0:
                bad_block, bad = run_bad_block, run_bad
                break
        if bad_block >= 0:
            what = (
                "bytes are left after the last record" if bad > count[bad_block]
                else f"record {bad - 1} does not parse"
            )
            raise ValueError(
                f"block at byte {start[bad_block]}: {what} "
                f"({count[bad_block]} records of {self.schema.name} expected)"
            )
        self.n_rows += total
        self.heap_used += payload
        return self.n_rows

    cdef list _decode_runs(self, Py_ssize_t n_blocks, const int64_t[::1] size, int64_t payload):
        # Split the blocks into runs of about equal bytes, one per thread; the calling
        # thread decodes the first while the pool decodes the others.
        cdef Py_ssize_t n_runs = min(<Py_ssize_t>self.threads, n_blocks)
        cdef Py_ssize_t k, b = 0, last = 0
        cdef int64_t used = 0
        if self.fixed_layout and self.contiguous and payload >= _PARALLEL_MIN_BYTES:
            return self._decode_fixed_runs()
        if payload < _PARALLEL_MIN_BYTES or n_runs < 2:
            return [self._decode_run(0, n_blocks)]
        bounds = [0]
        for k in range(1, n_runs):
            while b < n_blocks and used < payload * k // n_runs:
                used += size[b]
                b += 1
            if last < b < n_blocks:
                bounds.append(b)
                last = b
        bounds.append(n_blocks)
        if len(bounds) < 3:
            return [self._decode_run(0, n_blocks)]
        pool = _get_pool(len(bounds) - 2)
        futures = [
            pool.submit(self._decode_run, bounds[k], bounds[k + 1])
            for k in range(1, len(bounds) - 1)
        ]
        try:
            results = [self._decode_run(bounds[0], bounds[1])]
        finally:
            # never return (and let the buffers go) while a pool thread still decodes
            import concurrent.futures

            concurrent.futures.wait(futures)
        return results + [f.result() for f in futures]

    cdef list _decode_fixed_runs(self):
        # Fixed layout, into columns: the threads share the columns rather than the
        # blocks, so that each writes (and takes the page faults of) its own part of
        # the column memory. Shares of about equal bytes: groups first, then singles.
        cdef Py_ssize_t n_runs = self.threads
        cdef Py_ssize_t u, k, n_units = self.n_groups + self.n_fields
        weights = [64] * self.n_groups + [
            int(self.field_size[f]) for f in range(self.n_fields)
        ]
        total = sum(weights)
        cuts = [0]
        used = 0
        k = 1
        for u in range(n_units):
            used += weights[u]
            if k < n_runs and used * n_runs >= total * k and u + 1 < n_units:
                cuts.append(u + 1)
                k += 1
        cuts.append(n_units)
        runs = []
        for k in range(len(cuts) - 1):
            u0, u1 = cuts[k], cuts[k + 1]
            runs.append((
                min(u0, self.n_groups), min(u1, self.n_groups),
                max(u0 - self.n_groups, 0), max(u1 - self.n_groups, 0),
            ))
        if len(runs) < 2:
            return [self._decode_fixed_run(*runs[0])]
        pool = _get_pool(len(runs) - 1)
        futures = [pool.submit(self._decode_fixed_run, *run) for run in runs[1:]]
        try:
            results = [self._decode_fixed_run(*runs[0])]
        finally:
            import concurrent.futures

            concurrent.futures.wait(futures)
        return results + [f.result() for f in futures]

    def records(self):
        """The decoded rows as one structured array of ``Schema.dtype`` (every field,
        whichever were asked for), with ``contiguous=False``; None otherwise."""
        if not (self.fixed_layout and not self.contiguous) or self.record_buffer is None:
            return None
        return np.frombuffer(self.record_buffer, self.record_dtype, count=self.n_rows)

    def finish(self):
        """``(columns, valid)`` for the rows decoded: see the class docstring."""
        cdef Py_ssize_t n = self.n_rows
        columns = {}
        valid = {}
        if self.fixed_layout and not self.contiguous:
            # zero-parse: the record bytes *are* the structured dtype
            view = np.frombuffer(self.record_buffer, self.record_dtype, count=n)
            return {name: view[name] for name in self.names}, {}
        heap = self.heap[: self.heap_used]
        for sig in self.schema.signals:
            if sig.name not in self.values:
                continue
            arr = self.values[sig.name]
            if sig.type in ("string", "bytes"):
                columns[sig.name] = materialize(
                    heap, arr[:n], self.lengths[sig.name][:n], sig.type == "string"
                )
            else:
                columns[sig.name] = arr[:n]
            if sig.name in self.valid and sig.type not in ("float", "double"):
                valid[sig.name] = self.valid[sig.name][:n].view(np.bool_)
        return columns, valid


def _aligned_empty(Py_ssize_t n_bytes):
    # uint8 array of n_bytes starting on a 64-byte line (the transpose writes whole lines
    # of each column), or, from 4 MiB, a slab on a 2 MiB boundary (huge pages, the first
    # one included), recycled from an earlier read when one is free (_Slab).
    if n_bytes >= SLAB_MIN_BYTES:
        return np.frombuffer(_Slab(n_bytes), np.uint8)
    raw = np.empty(max(n_bytes, 1) + 64, np.uint8)
    cdef size_t addr = <size_t>cnp.PyArray_DATA(raw)
    cdef Py_ssize_t shift = (64 - addr % 64) % 64
    return raw[shift : shift + max(n_bytes, 1)]


# -- column memory recycled between reads ------------------------------------------------
#
# A large read's columns are views of one slab. New memory costs its page faults: the
# kernel zeroes every page (~5 ms of a 48 MB read on bare metal; 30-90 ms in a VM whose
# balloon reports free pages to the host, which then faults them in again: see
# docs/performance.md). So a slab whose arrays are all gone goes to a pool, and the next
# read of about its size takes it back: still mapped, no fault, no zeroing. The pool
# keeps the most recently freed slabs, SLAB_POOL_BYTES at most; release_slabs() frees
# them. Lifetime: the slab is the buffer exporter numpy's arrays keep alive (their base),
# so it is pooled only once no array, view or memoryview of it is left.

SLAB_MIN_BYTES = 4 * 1024 * 1024
SLAB_ALIGN = 2 * 1024 * 1024
SLAB_POOL_BYTES = 256 * 1024 * 1024
_free_slabs = []  # [(capacity, address)], the most recently freed last
_free_bytes = 0


cdef class _Slab:
    """``size`` bytes of column memory (a buffer exporter: ``np.frombuffer(slab)``)."""
    cdef char* data
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self, Py_ssize_t size):
        global _free_bytes
        cdef Py_ssize_t want = (max(size, 1) + SLAB_ALIGN - 1) // SLAB_ALIGN * SLAB_ALIGN
        cdef Py_ssize_t i, best = -1
        cdef void* mem = NULL
        # a free slab large enough and not much larger (best fit, at most 1/4 more)
        for i in range(len(_free_slabs)):
            cap = _free_slabs[i][0]
            if want <= cap <= want + want // 4 and (best < 0 or cap < _free_slabs[best][0]):
                best = i
        if best >= 0:
            cap, addr = _free_slabs.pop(best)
            _free_bytes -= cap
            self.data = <char*><size_t>addr
            self.capacity = cap
        else:
            if posix_memalign(&mem, SLAB_ALIGN, want) != 0:
                raise MemoryError(f"cannot allocate {want} bytes of column memory")
            madvise(mem, want, MADV_HUGEPAGE)  # as numpy does for large arrays
            self.data = <char*>mem
            self.capacity = want
        self.size = max(size, 1)
        self.shape[0] = self.size
        self.strides[0] = 1

    def __getbuffer__(self, Py_buffer* view, int flags):
        view.buf = self.data
        view.obj = self
        view.len = self.size
        view.readonly = 0
        view.itemsize = 1
        view.format = NULL
        if flags & PyBUF_FORMAT:
            view.format = b"B"
        view.ndim = 1
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __dealloc__(self):
        global _free_bytes
        if self.data == NULL:
            return
        try:
            _free_slabs.append((self.capacity, <size_t>self.data))
        except Exception:  # the module torn down at exit: no pool any more
            free(self.data)
            self.data = NULL
            return
        self.data = NULL
        _free_bytes += self.capacity
        while _free_bytes > SLAB_POOL_BYTES and _free_slabs:  # the oldest go
            cap, addr = _free_slabs.pop(0)
            _free_bytes -= cap
            free(<void*><size_t>addr)


def release_slabs():
    """Free the column memory kept for later reads; returns the bytes freed."""
    global _free_bytes
    freed = _free_bytes
    while _free_slabs:
        free(<void*><size_t>_free_slabs.pop()[1])
    _free_bytes = 0
    return freed


def slab_pool():
    """``(free slabs, their bytes)`` kept for later reads."""
    return len(_free_slabs), _free_bytes


def string_dtype():
    """The dtype of string columns: ``StringDType()`` on numpy >= 2, else ``object``."""
    return _StringDType() if _StringDType is not None else np.dtype(object)


def materialize(heap, start, length, bint is_string):
    """Rows ``heap[start[i]:start[i] + length[i]]`` as a string or bytes column.

    Strings become ``StringDType`` (numpy >= 2) or ``object`` arrays of ``str``; bytes
    become ``object`` arrays of ``bytes``. Invalid UTF-8 raises UnicodeDecodeError.
    """
    cdef const uint8_t[::1] heap_v = np.ascontiguousarray(heap, np.uint8)
    cdef const int64_t[::1] start_v = np.ascontiguousarray(start, np.int64)
    cdef const int64_t[::1] length_v = np.ascontiguousarray(length, np.int64)
    cdef Py_ssize_t n = start_v.shape[0]
    cdef Py_ssize_t i
    cdef const char* base = <const char*>&heap_v[0] if heap_v.shape[0] > 0 else NULL
    for i in range(n):
        if start_v[i] < 0 or length_v[i] < 0 or start_v[i] + length_v[i] > heap_v.shape[0]:
            raise ValueError(f"row {i}: bytes outside the heap")
    cdef cnp.ndarray out
    cdef object[::1] out_v
    if not is_string or _StringDType is None:
        out = np.empty(n, object)
        out_v = out
        for i in range(n):
            if is_string:
                out_v[i] = PyUnicode_DecodeUTF8(base + start_v[i], length_v[i], NULL)
            else:
                out_v[i] = PyBytes_FromStringAndSize(base + start_v[i], length_v[i])
        return out
    return _strings_numpy2(heap_v, start_v, length_v)


cdef _strings_numpy2(const uint8_t[::1] heap_v, const int64_t[::1] start_v,
                     const int64_t[::1] length_v):
    # numpy casts a fixed-width ``S`` array to StringDType in C, decoding UTF-8; an ``S``
    # value loses trailing NUL bytes, so rows ending in NUL are set one by one after.
    cdef Py_ssize_t n = start_v.shape[0]
    out = np.empty(n, _StringDType())
    lengths = np.asarray(length_v)
    cdef Py_ssize_t r0 = 0, r1, r, width, rows, bad
    cdef cnp.ndarray step
    cdef char* dst
    cdef const char* base = <const char*>&heap_v[0] if heap_v.shape[0] > 0 else NULL
    trailing_nul = []
    while r0 < n:
        r1 = min(n, r0 + 65536)
        width = max(int(lengths[r0:r1].max()), 1)
        rows = max(1, min(r1 - r0, _STRING_STEP_BYTES // width))
        r1 = r0 + rows
        width = max(int(lengths[r0:r1].max()), 1)
        step = np.empty(rows, f"S{width}")
        dst = <char*>cnp.PyArray_DATA(step)
        bad = -1
        with nogil:
            for r in range(rows):
                # numpy's S -> StringDType cast does not check UTF-8: check it here
                if not utf8_valid(<const uint8_t*>base + start_v[r0 + r], length_v[r0 + r]):
                    bad = r0 + r
                    break
                memcpy(dst + r * width, base + start_v[r0 + r], <size_t>length_v[r0 + r])
                memset(dst + r * width + length_v[r0 + r], 0, <size_t>(width - length_v[r0 + r]))
        if bad >= 0:
            # raises UnicodeDecodeError with the position, as the numpy 1.x path does
            PyUnicode_DecodeUTF8(base + start_v[bad], length_v[bad], NULL)
        for r in range(rows):
            if length_v[r0 + r] and base[start_v[r0 + r] + length_v[r0 + r] - 1] == 0:
                trailing_nul.append(r0 + r)
        out[r0:r1] = step
        r0 = r1
    for r in trailing_nul:
        out[r] = PyUnicode_DecodeUTF8(base + start_v[r], length_v[r], NULL)
    return out
