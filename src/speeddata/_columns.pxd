# cython: language_level=3
from libc.stdint cimport int32_t, int64_t, uint8_t


# Where the decoder writes one value op's column. Indexed by the op's pair index in the
# schema program; ops that carry no signal, and signals not asked for, have values_p NULL.
cdef struct column_out:
    char* values_p        # row 0 of the value column, or NULL when the value is skipped
    Py_ssize_t itemsize   # bytes per row in values_p (boolean 1, int/enum 4, long 8, fixed N)
    uint8_t* valid_p      # 1 where the union chose the value, 0 for null; NULL if not nullable
    int64_t* start_p      # bytes/string: offset of each row's bytes in the heap
    int64_t* length_p     # bytes/string: byte length of each row's value


# Decode ``n_records`` back-to-back records of ``program`` from ``[p, end)`` into row
# ``row`` onwards of ``cols``; bytes/string values are copied to ``heap_p`` at
# ``heap_used[0]`` (which advances; the caller sized the heap to hold every payload byte).
# Returns 0 when the bytes are exactly ``n_records`` whole records, else the 1-based index
# of the first record that does not parse (or n_records + 1 when bytes are left over).
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
) noexcept nogil


# Zero-parse path for fixed-layout schemas: scatter ``n_records`` records of
# ``record_size`` bytes into the columns of the ``n_fields`` fields (byte offset in the
# record, size, destination row 0). Sizes 1, 4 and 8 take one load and one store.
cdef void scatter_fixed(
    const uint8_t* p,
    Py_ssize_t n_records,
    Py_ssize_t record_size,
    Py_ssize_t n_fields,
    const Py_ssize_t* field_offset,
    const Py_ssize_t* field_size,
    char** dest_p,
    Py_ssize_t row,
) noexcept nogil
