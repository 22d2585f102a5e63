# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled record encoder: numpy columns -> back-to-back Avro records, no GIL.

``Source.send_array`` prepares one column per program op (converted, range-checked,
null flags computed, all vectorized in numpy) and calls ``encode_columns``, which walks
the schema program over the rows and writes Avro binary into one preallocated buffer,
with the end offset of every record so datagrams can be cut at record boundaries.
``speeddata.source.encode_columns_py`` is the pure-Python reference with the same
behaviour; tests run both against fastavro.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.string cimport memcpy

cimport numpy as cnp

from speeddata._avro cimport (
    OP_BOOLEAN,
    OP_DOUBLE,
    OP_ENUM,
    OP_FIXED,
    OP_FLOAT,
    OP_INT,
    OP_LONG,
    OP_NULL,
    OP_UNION,
    write_varint,
)

import numpy as np

cnp.import_array()


cdef Py_ssize_t max_record_size(const int32_t* program, Py_ssize_t n_ops) noexcept nogil:
    cdef Py_ssize_t i, size = 0
    cdef int32_t op
    for i in range(n_ops):
        op = program[2 * i]
        if op == OP_BOOLEAN or op == OP_UNION:
            size += 1  # a union's branch index is 0 or 1: one varint byte
        elif op == OP_INT or op == OP_ENUM:
            size += 5
        elif op == OP_LONG:
            size += 10
        elif op == OP_FLOAT:
            size += 4
        elif op == OP_DOUBLE:
            size += 8
        elif op == OP_FIXED:
            size += program[2 * i + 1]
        elif op != OP_NULL:
            return -1
    return size


cdef Py_ssize_t encode_records(
    const int32_t* program,
    Py_ssize_t n_ops,
    const uint8_t* const* columns,
    const Py_ssize_t* strides,
    Py_ssize_t n_records,
    const uint8_t* prefix,
    Py_ssize_t prefix_len,
    uint8_t* out,
    Py_ssize_t out_size,
    int64_t* ends,
) noexcept nogil:
    cdef Py_ssize_t max_size = max_record_size(program, n_ops)
    cdef uint8_t* p = out
    cdef uint8_t* end = out + out_size
    cdef const uint8_t* src
    cdef Py_ssize_t r, i
    cdef int32_t op, arg
    cdef int32_t v32
    cdef int64_t v64
    if max_size < 0:
        return -1
    max_size += prefix_len
    for r in range(n_records):
        if end - p < max_size:
            return -1
        if prefix_len:
            memcpy(p, prefix, prefix_len)
            p += prefix_len
        i = 0
        while i < n_ops:
            op = program[2 * i]
            arg = program[2 * i + 1]
            if op == OP_NULL:
                i += 1
                continue
            src = columns[i] + r * strides[i]
            if op == OP_UNION:
                # Avro spec, "Unions": the branch index as a long, then the value.
                if src[0]:
                    p[0] = <uint8_t>(2 * arg)  # zigzag of 0 or 1, one byte
                    i += 2  # null branch: the value op encodes nothing
                else:
                    p[0] = <uint8_t>(2 * (1 - arg))
                    i += 1
                p += 1
                continue
            if op == OP_DOUBLE:
                memcpy(p, src, 8)
                p += 8
            elif op == OP_LONG:
                memcpy(&v64, src, 8)  # unaligned-safe: a packed struct field
                p = write_varint(p, v64)
            elif op == OP_INT or op == OP_ENUM:
                memcpy(&v32, src, 4)
                p = write_varint(p, v32)
            elif op == OP_FLOAT:
                memcpy(p, src, 4)
                p += 4
            elif op == OP_BOOLEAN:
                p[0] = 1 if src[0] else 0
                p += 1
            else:  # OP_FIXED (max_record_size refused every other op)
                memcpy(p, src, arg)
                p += arg
            i += 1
        ends[r] = p - out
    return p - out


def _expected_itemsize(int op, int arg):
    if op == OP_BOOLEAN or op == OP_UNION:
        return 1
    if op == OP_INT or op == OP_ENUM or op == OP_FLOAT:
        return 4
    if op == OP_LONG or op == OP_DOUBLE:
        return 8
    if op == OP_FIXED:
        return arg
    return 0


_EXPECTED_DTYPE = {
    OP_INT: np.dtype("=i4"),
    OP_ENUM: np.dtype("=i4"),
    OP_LONG: np.dtype("=i8"),
    OP_FLOAT: np.dtype("<f4"),
    OP_DOUBLE: np.dtype("<f8"),
}


def encode_columns(program, columns, prefix=b""):
    """Encode records from one column per program op; returns ``(data, ends)``.

    ``program`` is ``Schema.program``; ``columns[i]`` is a 1-D array for op ``i``: a
    ``bool``/``uint8`` null flag for a union op, ``None`` for a null op, else the value
    column (``?`` boolean, ``=i4`` int/enum, ``=i8`` long, ``<f4`` float, ``<f8``
    double, ``S``/``V`` of the fixed size). Every column has the same length (strides
    may be 0). ``data`` is a ``uint8`` array of the records back to back, each preceded
    by ``prefix``; ``ends`` (``int64``) the offset just past each record.
    """
    cdef const int32_t[:, ::1] prog = np.ascontiguousarray(program, dtype=np.int32)
    cdef Py_ssize_t n_ops = prog.shape[0]
    cdef Py_ssize_t i, n = -1, max_size, written
    cdef int op, arg
    cdef const uint8_t[::1] prefix_view = bytes(prefix)
    cdef Py_ssize_t prefix_len = prefix_view.shape[0]
    cdef cnp.ndarray col
    if n_ops == 0 or prog.shape[1] != 2:
        raise ValueError("program must be a non-empty (n_ops, 2) array")
    max_size = max_record_size(&prog[0, 0], n_ops)
    if max_size < 0:
        raise ValueError("program has a string or bytes op; they are not encoded from columns")
    if len(columns) != n_ops:
        raise ValueError(f"need one column per program op ({n_ops}), got {len(columns)}")
    cols = []
    for i in range(n_ops):
        op = prog[i, 0]
        arg = prog[i, 1]
        c = columns[i]
        if op == OP_NULL:
            cols.append(None)
            continue
        if c is None or not isinstance(c, np.ndarray) or (<cnp.ndarray>c).ndim != 1:
            raise TypeError(f"column {i} (op {op}) must be a 1-D numpy array")
        col = <cnp.ndarray>c
        expected = _EXPECTED_DTYPE.get(op)
        if expected is not None:
            if col.dtype != expected:
                raise TypeError(f"column {i} (op {op}) must have dtype {expected}, not {col.dtype}")
        elif col.dtype.itemsize != _expected_itemsize(op, arg) or (
            op == OP_FIXED and col.dtype.kind not in "SV"
        ) or (op != OP_FIXED and col.dtype.kind not in "bu"):
            raise TypeError(f"column {i} (op {op}) has the wrong dtype {col.dtype}")
        if n < 0:
            n = col.shape[0]
        elif col.shape[0] != n:
            raise ValueError(f"column {i} has {col.shape[0]} rows, column 0 has {n}")
        cols.append(col)
    if n < 0:
        n = 0
    data = np.empty(n * (max_size + prefix_len), dtype=np.uint8)
    ends = np.empty(n, dtype=np.int64)
    cdef uint8_t[::1] data_view = data
    cdef int64_t[::1] ends_view = ends
    cdef const uint8_t** col_p = <const uint8_t**>PyMem_Malloc(n_ops * sizeof(uint8_t*))
    cdef Py_ssize_t* stride_p = <Py_ssize_t*>PyMem_Malloc(n_ops * sizeof(Py_ssize_t))
    if col_p == NULL or stride_p == NULL:
        PyMem_Free(col_p)
        PyMem_Free(stride_p)
        raise MemoryError()
    try:
        for i in range(n_ops):
            if cols[i] is None:
                col_p[i] = NULL
                stride_p[i] = 0
            else:
                col = <cnp.ndarray>cols[i]
                col_p[i] = <const uint8_t*>cnp.PyArray_DATA(col)
                stride_p[i] = cnp.PyArray_STRIDES(col)[0]
        if n == 0:
            return data, ends
        with nogil:
            written = encode_records(
                &prog[0, 0], n_ops, col_p, stride_p, n,
                &prefix_view[0] if prefix_len else NULL, prefix_len,
                &data_view[0], data_view.shape[0], &ends_view[0],
            )
    finally:
        PyMem_Free(col_p)
        PyMem_Free(stride_p)
    if written < 0:  # cannot happen: the buffer is sized by max_record_size
        raise RuntimeError("encode buffer too small")
    return data[:written], ends


def record_size_bound(program):
    """Bytes one record of ``program`` takes at most, or -1 with a string/bytes op."""
    cdef const int32_t[:, ::1] prog = np.ascontiguousarray(program, dtype=np.int32)
    if prog.shape[0] == 0:
        return 0
    return max_record_size(&prog[0, 0], prog.shape[0])
