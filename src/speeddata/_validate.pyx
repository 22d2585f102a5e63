# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled record validator: how many whole records of a schema do these bytes hold?

The relay runs it on every datagram before anything reaches the cache; it builds no
Python objects and holds no GIL. ``speeddata.validate`` is the pure-Python reference
with the same behaviour; tests run both.
"""

from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t

from speeddata._avro cimport (
    N_REJECT_REASONS,
    REJECT_EMPTY,
    REJECT_NONE,
    REJECT_TRAILING,
    REJECT_TRUNCATED,
    skip_record,
)

from speeddata.schema import Schema
from speeddata.validate import REJECT_REASONS

assert len(REJECT_REASONS) == N_REJECT_REASONS


cdef Py_ssize_t validate_records(
    const uint8_t* data,
    Py_ssize_t n,
    const int32_t* program,
    Py_ssize_t n_ops,
    Py_ssize_t time_op,
    validation* out,
) noexcept nogil:
    cdef const uint8_t* p = data
    cdef const uint8_t* end = data + n
    cdef const uint8_t* q
    cdef Py_ssize_t n_records = 0
    cdef int64_t value = 0
    cdef int why = REJECT_NONE
    out.t_min = INT64_MAX
    out.t_max = INT64_MIN
    out.bad_offset = -1
    out.n_records = 0
    out.reason = REJECT_NONE
    if n <= 0:
        out.bad_offset = 0
        out.reason = REJECT_EMPTY
        return -1  # an empty datagram carries no record
    while p < end:
        q = skip_record(p, end, program, n_ops, time_op, &value, &why)
        if q == NULL:
            out.bad_offset = p - data
            # the end came inside a record after whole ones: bytes trail the records
            out.reason = REJECT_TRAILING if why == REJECT_TRUNCATED and p > data else why
            return -1
        if time_op >= 0:
            if value < out.t_min:
                out.t_min = value
            if value > out.t_max:
                out.t_max = value
        p = q
        n_records += 1
    out.n_records = n_records
    return n_records


cdef class Validator:
    """Validate datagrams of one schema: ``Validator(schema).count(data)``."""

    cdef readonly object schema
    cdef const int32_t[::1] program  # (op, arg) pairs, flat
    cdef Py_ssize_t time_op

    def __init__(self, schema):
        self.schema = Schema.load(schema)
        self.program = self.schema.program_ops  # a buffer: no numpy in the relay process
        self.time_op = self.schema.time_op

    cdef void _validate(self, const uint8_t[::1] data, validation* out) noexcept:
        """Walk ``data`` with this schema's program (without the GIL) into ``out``."""
        cdef Py_ssize_t n = data.shape[0]
        cdef const uint8_t* p = &data[0] if n > 0 else NULL
        with nogil:
            validate_records(
                p, n, &self.program[0], self.program.shape[0] // 2, self.time_op, out
            )

    def count(self, const uint8_t[::1] data not None):
        """Number of whole records in ``data``, or -1 if it is not exactly whole records."""
        cdef validation v
        self._validate(data, &v)
        return v.n_records if v.bad_offset < 0 else -1

    def check(self, const uint8_t[::1] data not None):
        """``(n_records, bad_offset, t_min, t_max)``; bad_offset is -1 when valid and
        t_min/t_max are None when the schema has no time field or nothing was valid."""
        cdef validation v
        self._validate(data, &v)
        if v.bad_offset >= 0 or self.time_op < 0:
            return (v.n_records if v.bad_offset < 0 else -1, v.bad_offset, None, None)
        return (v.n_records, -1, v.t_min, v.t_max)

    def reason(self, const uint8_t[::1] data not None):
        """Why ``data`` would be rejected (a name of ``speeddata.validate.REJECT_REASONS``),
        or None when it is exactly whole valid records."""
        cdef validation v
        self._validate(data, &v)
        return None if v.bad_offset < 0 else REJECT_REASONS[v.reason]
