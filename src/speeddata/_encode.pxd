# cython: language_level=3
from libc.stdint cimport int32_t, int64_t, uint8_t


# Bytes one record of ``program`` takes at most (varints at their longest), or -1 if the
# program has a string or bytes op (variable length, not on the numpy path).
cdef Py_ssize_t max_record_size(const int32_t* program, Py_ssize_t n_ops) noexcept nogil


# Encode ``n_records`` records of ``program`` (``n_ops`` (op, arg) pairs) read from
# columns into ``out``, each preceded by ``prefix_len`` bytes of ``prefix``.
#
# ``columns[i]`` points at record 0's value of op ``i`` and ``strides[i]`` is the byte
# step between records (0 broadcasts one value). Value ops read: boolean 1 byte (non-zero
# is true), int and enum a native int32, long a native int64, float and double
# little-endian IEEE 754, fixed ``arg`` bytes. A union op reads a 1-byte null flag
# (non-zero: the null branch). OP_NULL reads nothing (its column may be NULL).
#
# ``ends[r]`` receives the offset in ``out`` just past record ``r``. Returns the bytes
# written, or -1 if ``out_size`` could be too small (checked against max_record_size
# before each record, so nothing is ever written past ``out + out_size``).
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
) noexcept nogil
