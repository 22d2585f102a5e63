# cython: language_level=3
from libc.stdint cimport int32_t, int64_t, uint8_t


cdef struct validation:
    Py_ssize_t n_records   # whole records found (valid only when ok)
    Py_ssize_t bad_offset  # byte offset where parsing failed, or -1
    int64_t t_min          # smallest time-field value seen (INT64_MAX if none)
    int64_t t_max          # largest time-field value seen (INT64_MIN if none)
    int reason             # why it is not valid (speeddata._avro REJECT_*), else 0


# Walk ``n`` bytes of back-to-back records of ``program`` (``n_ops`` (op, arg) pairs).
# Returns the record count when the bytes are exactly whole valid records, else -1 and
# ``out.bad_offset`` says where and ``out.reason`` why. ``time_op`` is the pair index of
# the time field, or -1.
cdef Py_ssize_t validate_records(
    const uint8_t* data,
    Py_ssize_t n,
    const int32_t* program,
    Py_ssize_t n_ops,
    Py_ssize_t time_op,
    validation* out,
) noexcept nogil
