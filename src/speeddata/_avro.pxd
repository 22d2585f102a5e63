# cython: language_level=3
"""Inline Avro binary primitives shared by every compiled module.

Avro 1.11 spec, "Binary Encoding": int and long are zigzag varints (at most 5 and 10
bytes); float and double are little-endian IEEE 754; bytes and string are a long length
then the bytes. Readers here never read past ``end`` and report failure by returning
NULL, so a caller validates lengths once and needs no exceptions in its loop.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

# Program opcodes: keep in sync with speeddata/schema.py.
cdef enum:
    OP_NULL = 0
    OP_BOOLEAN = 1
    OP_INT = 2
    OP_LONG = 3
    OP_FLOAT = 4
    OP_DOUBLE = 5
    OP_BYTES = 6
    OP_STRING = 7
    OP_ENUM = 8
    OP_FIXED = 9
    OP_UNION = 10

# Why a datagram was rejected: keep in sync with speeddata/validate.py (REJECT_REASONS),
# whose names the status reports (docs/relay-internals.md, "Counters").
cdef enum:
    REJECT_NONE = 0
    REJECT_EMPTY = 1                # a datagram of 0 bytes
    REJECT_TRUNCATED = 2            # the first record runs past the end of the datagram
    REJECT_TRAILING = 3             # whole records, then bytes that are not a whole record
    REJECT_VARINT = 4               # an int > 5 bytes or beyond int32, a long > 10 or int64
    REJECT_LENGTH = 5               # a negative bytes/string length
    REJECT_BOOLEAN = 6              # a boolean byte other than 0 or 1
    REJECT_ENUM = 7                 # an enum index outside the symbols
    REJECT_UNION = 8                # a union branch index outside the branches
    REJECT_UTF8 = 9                 # a string that is not strict UTF-8
    REJECT_OVERSIZE = 10            # larger than the receive slot (MSG_TRUNC)
    REJECT_FRAMING = 11             # shared port: not C3 01 + fingerprint + record
    REJECT_FINGERPRINT = 12         # shared port: a fingerprint no channel has
    REJECT_MIXED = 13               # shared port: more than one fingerprint
    N_REJECT_REASONS = 14


cdef inline const uint8_t* read_varint_why(
    const uint8_t* p, const uint8_t* end, int64_t* out, int max_bytes, int* why
) noexcept nogil:
    """Decode a zigzag varint of at most ``max_bytes`` (5 for int, 10 for long).

    Returns the pointer past it, or NULL if it is truncated (``why``: REJECT_TRUNCATED),
    too long, or its last byte carries bits beyond 32 (int) or 64 (long) bits (``why``:
    REJECT_VARINT): such a value has no Avro meaning (spec, "Binary Encoding": an int is
    at most 5 bytes and in int32, a long at most 10 bytes and in int64).
    """
    cdef uint64_t acc = 0
    cdef uint64_t b
    cdef int shift = 0
    cdef int i
    for i in range(max_bytes):
        if p >= end:
            why[0] = REJECT_TRUNCATED
            return NULL
        b = p[0]
        p += 1
        acc |= (b & 0x7f) << shift
        if not (b & 0x80):
            if (i == 4 and max_bytes == 5 and b > 0x0f) or (i == 9 and b > 0x01):
                why[0] = REJECT_VARINT
                return NULL
            out[0] = <int64_t>((acc >> 1) ^ (0 - (acc & 1)))
            return p
        shift += 7
    why[0] = REJECT_VARINT
    return NULL


cdef inline const uint8_t* read_varint(
    const uint8_t* p, const uint8_t* end, int64_t* out, int max_bytes
) noexcept nogil:
    """``read_varint_why`` without the reason."""
    cdef int why = 0
    return read_varint_why(p, end, out, max_bytes, &why)


cdef inline uint8_t* write_varint(uint8_t* p, int64_t v) noexcept nogil:
    """Zigzag-encode ``v`` at ``p`` (room for 10 bytes needed); returns the pointer past it."""
    cdef uint64_t z = (<uint64_t>v << 1) ^ <uint64_t>(v >> 63)
    while z >= 0x80:
        p[0] = <uint8_t>((z & 0x7f) | 0x80)
        p += 1
        z >>= 7
    p[0] = <uint8_t>z
    return p + 1


cdef inline int varint_size(int64_t v) noexcept nogil:
    """Bytes that ``write_varint`` takes for ``v``."""
    cdef uint64_t z = (<uint64_t>v << 1) ^ <uint64_t>(v >> 63)
    cdef int n = 1
    while z >= 0x80:
        z >>= 7
        n += 1
    return n


cdef inline bint utf8_valid(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Strict UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF).

    Same acceptance as Python's ``bytes.decode('utf-8')``, which fastavro uses, so a
    string the relay stores is a string every reader can decode. ASCII runs go 8 bytes
    at a time.
    """
    cdef Py_ssize_t i = 0
    cdef uint8_t c, c1
    cdef uint64_t word
    while i < n:
        if i + 8 <= n:
            memcpy(&word, p + i, 8)  # unaligned-safe; compiles to one load
            if (word & <uint64_t>0x8080808080808080) == 0:
                i += 8
                continue
        c = p[i]
        if c < 0x80:
            i += 1
        elif c < 0xc2:
            return False  # continuation byte or overlong 2-byte lead
        elif c < 0xe0:
            if i + 1 >= n or (p[i + 1] & 0xc0) != 0x80:
                return False
            i += 2
        elif c < 0xf0:
            if i + 2 >= n:
                return False
            c1 = p[i + 1]
            if (c1 & 0xc0) != 0x80 or (p[i + 2] & 0xc0) != 0x80:
                return False
            if c == 0xe0 and c1 < 0xa0:
                return False  # overlong
            if c == 0xed and c1 >= 0xa0:
                return False  # surrogate
            i += 3
        elif c < 0xf5:
            if i + 3 >= n:
                return False
            c1 = p[i + 1]
            if (
                (c1 & 0xc0) != 0x80
                or (p[i + 2] & 0xc0) != 0x80
                or (p[i + 3] & 0xc0) != 0x80
            ):
                return False
            if c == 0xf0 and c1 < 0x90:
                return False  # overlong
            if c == 0xf4 and c1 >= 0x90:
                return False  # above U+10FFFF
            i += 4
        else:
            return False
    return True


cdef inline const uint8_t* skip_value(
    const uint8_t* p,
    const uint8_t* end,
    int32_t op,
    int32_t arg,
    int64_t* value,
    int* why,
) noexcept nogil:
    """Check and step over one encoded value of ``op``; NULL if it is not valid there, and
    ``why`` (REJECT_*) says why.

    ``value`` receives the integer of int/long/enum ops (for the time field).
    """
    cdef int64_t n
    if op == OP_NULL:
        return p
    if op == OP_BOOLEAN:
        if p >= end:
            why[0] = REJECT_TRUNCATED
            return NULL
        if p[0] > 1:
            why[0] = REJECT_BOOLEAN
            return NULL
        return p + 1
    if op == OP_INT:
        return read_varint_why(p, end, value, 5, why)
    if op == OP_LONG:
        return read_varint_why(p, end, value, 10, why)
    if op == OP_FLOAT or op == OP_DOUBLE or op == OP_FIXED:
        n = 4 if op == OP_FLOAT else (8 if op == OP_DOUBLE else arg)
        if end - p < n:
            why[0] = REJECT_TRUNCATED
            return NULL
        return p + n
    if op == OP_ENUM:
        p = read_varint_why(p, end, value, 5, why)  # the index is an int
        if p == NULL:
            return NULL
        if value[0] < 0 or value[0] >= arg:
            why[0] = REJECT_ENUM
            return NULL
        return p
    if op == OP_BYTES or op == OP_STRING:
        p = read_varint_why(p, end, &n, 10, why)  # the length is a long
        if p == NULL:
            return NULL
        if n < 0:
            why[0] = REJECT_LENGTH
            return NULL
        if n > end - p:
            why[0] = REJECT_TRUNCATED
            return NULL
        if op == OP_STRING and not utf8_valid(p, <Py_ssize_t>n):
            why[0] = REJECT_UTF8
            return NULL
        return p + n
    why[0] = REJECT_VARINT  # an op the schema compiler never emits
    return NULL


cdef inline const uint8_t* skip_record(
    const uint8_t* p,
    const uint8_t* end,
    const int32_t* program,
    Py_ssize_t n_ops,
    Py_ssize_t time_op,
    int64_t* time_value,
    int* why,
) noexcept nogil:
    """Check and step over one record of ``program`` (``n_ops`` (op, arg) pairs); NULL if
    it is not a valid record there, and ``why`` (REJECT_*) says why. ``time_value``
    receives the integer of pair ``time_op`` (-1: none). The one walk of the program
    shared by every checker."""
    cdef Py_ssize_t i = 0
    cdef int32_t op, arg
    cdef int64_t value = 0, branch = 0
    while i < n_ops:
        op = program[2 * i]
        arg = program[2 * i + 1]
        if op == OP_UNION:
            # spec, "Binary Encoding", unions: the branch index is an int (<= 5 bytes)
            p = read_varint_why(p, end, &branch, 5, why)
            if p == NULL:
                return NULL
            if branch < 0 or branch > 1:
                why[0] = REJECT_UNION
                return NULL
            i += 1
            if branch == arg:
                i += 1  # the null branch: nothing encoded, skip the value op
            continue
        p = skip_value(p, end, op, arg, &value, why)
        if p == NULL:
            return NULL
        if i == time_op:
            time_value[0] = value
        i += 1
    return p
