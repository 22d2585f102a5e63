"""Pure-Python reference of the compiled record validator (``speeddata._validate``).

Same behaviour, byte for byte: tests run both on the same inputs. Slow; use
``speeddata.Validator(schema)`` (``speeddata._validate``) for the compiled one, or
``validator_factory()``, which picks the compiled one when it is built.
"""

from __future__ import annotations

from .schema import (
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
    Schema,
)

__all__ = ["PyValidator", "REJECT_REASONS", "read_varint", "skip_value", "validator_class",
           "validator_factory"]

#: Why a datagram is rejected, by code (speeddata/_avro.pxd REJECT_*, same order): the
#: names the relay's status counts rejects under (docs/relay-internals.md, "Counters").
REJECT_REASONS = (
    "none",
    "empty",  # a datagram of 0 bytes
    "truncated",  # the first record runs past the end of the datagram
    "trailing_bytes",  # whole records, then bytes that are not a whole record
    "bad_varint",  # an int > 5 bytes or beyond int32, a long > 10 bytes or beyond int64
    "bad_length",  # a negative bytes/string length
    "bad_boolean",  # a boolean byte other than 0 or 1
    "bad_enum",  # an enum index outside the symbols
    "bad_union",  # a union branch index outside the branches
    "bad_utf8",  # a string that is not strict UTF-8
    "oversize",  # larger than the relay's receive slot
    "not_single_object",  # shared port: not C3 01 + fingerprint + record
    "unknown_fingerprint",  # shared port: no channel has this fingerprint
    "mixed_fingerprints",  # shared port: more than one fingerprint in a datagram
)

def _read_varint(data: bytes, pos: int, max_bytes: int) -> tuple[int, int] | str:
    """Zigzag varint at ``pos`` -> ``(value, next_pos)``, or the reject reason's name, as
    ``_avro.read_varint_why``: at most 5 bytes in int32 (int), 10 bytes in int64 (long)."""
    acc = 0
    for i in range(max_bytes):
        if pos >= len(data):
            return "truncated"
        b = data[pos]
        pos += 1
        acc |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if (i == 4 and max_bytes == 5 and b > 0x0F) or (i == 9 and b > 0x01):
                return "bad_varint"
            return (acc >> 1) ^ -(acc & 1), pos
    return "bad_varint"


def read_varint(data: bytes, pos: int, max_bytes: int) -> tuple[int, int] | None:
    """Zigzag varint at ``pos`` -> ``(value, next_pos)``, or None as ``_avro.read_varint``."""
    r = _read_varint(data, pos, max_bytes)
    return None if isinstance(r, str) else r


def skip_value(data: bytes, pos: int, op: int, arg: int) -> tuple[int, int | None] | str:
    """-> (next_pos, integer value or None), or the reject reason's name."""
    end = len(data)
    if op == OP_NULL:
        return pos, None
    if op == OP_BOOLEAN:
        if pos >= end:
            return "truncated"
        return (pos + 1, None) if data[pos] <= 1 else "bad_boolean"
    if op in (OP_INT, OP_ENUM, OP_LONG):
        r = _read_varint(data, pos, 10 if op == OP_LONG else 5)
        if isinstance(r, str):
            return r
        if op == OP_ENUM and not 0 <= r[0] < arg:
            return "bad_enum"
        return r[1], r[0]
    if op in (OP_FLOAT, OP_DOUBLE, OP_FIXED):
        size = {OP_FLOAT: 4, OP_DOUBLE: 8}.get(op, arg)
        return (pos + size, None) if end - pos >= size else "truncated"
    if op in (OP_BYTES, OP_STRING):
        r = _read_varint(data, pos, 10)
        if isinstance(r, str):
            return r
        n, pos = r
        if n < 0:
            return "bad_length"
        if n > end - pos:
            return "truncated"
        if op == OP_STRING:
            try:
                data[pos : pos + n].decode("utf-8")
            except UnicodeDecodeError:
                return "bad_utf8"
        return pos + n, None
    return "bad_varint"  # an op the schema compiler never emits


class PyValidator:
    """Reference twin of ``speeddata._validate.Validator``."""

    def __init__(self, schema: Schema | dict | str):
        self.schema = Schema.load(schema)
        self.program = [tuple(pair) for pair in self.schema.program.tolist()]
        self.time_op = self.schema.time_op

    def record(self, data: bytes, pos: int) -> tuple[int, int | None] | str:
        """One record at ``pos`` -> ``(end, time-field value or None)``, or the name of
        the reject reason (as ``_avro.skip_record``)."""
        program, n_ops = self.program, len(self.program)
        i = 0
        t = None
        while i < n_ops:
            op, arg = program[i]
            if op == OP_UNION:
                # spec, "Binary Encoding", unions: the branch index is an int (<= 5 bytes)
                r = _read_varint(data, pos, 5)
                if isinstance(r, str):
                    return r
                if not 0 <= r[0] <= 1:
                    return "bad_union"
                pos = r[1]
                i += 2 if r[0] == arg else 1
                continue
            r = skip_value(data, pos, op, arg)
            if isinstance(r, str):
                return r
            pos, value = r
            if i == self.time_op:
                t = value
            i += 1
        return pos, t

    def check_with_reason(self, data) -> tuple[int, int, int | None, int | None, str | None]:
        view = memoryview(data)
        # The compiled twin takes a contiguous buffer of bytes only: refuse the same.
        if not view.c_contiguous:
            raise ValueError("the data buffer is not C-contiguous")
        if view.itemsize != 1:
            raise ValueError(f"the data buffer holds items of {view.itemsize} bytes, not bytes")
        data = view.tobytes()
        if not data:
            return (-1, 0, None, None, "empty")
        pos = n_records = 0
        t_min = t_max = None
        while pos < len(data):
            r = self.record(data, pos)
            if isinstance(r, str):
                if r == "truncated" and pos > 0:
                    r = "trailing_bytes"  # the end came inside a record after whole ones
                return (-1, pos, None, None, r)
            pos, value = r
            if self.time_op >= 0:
                t_min = value if t_min is None else min(t_min, value)
                t_max = value if t_max is None else max(t_max, value)
            n_records += 1
        return (n_records, -1, t_min, t_max, None)

    def check(self, data: bytes) -> tuple[int, int, int | None, int | None]:
        return self.check_with_reason(data)[:4]

    def count(self, data: bytes) -> int:
        return self.check(data)[0]

    def reason(self, data: bytes) -> str | None:
        """Why ``data`` would be rejected (a name of REJECT_REASONS), or None if valid."""
        return self.check_with_reason(data)[4]


def validator_class() -> type:
    """The compiled ``Validator`` when built, else the reference ``PyValidator``."""
    try:
        from ._validate import Validator
    except ImportError:  # pragma: no cover - only when the extension is not built
        return PyValidator
    return Validator


def validator_factory():
    """Validators for recovery (``schema JSON -> validator``): compiled when built, else
    the reference."""
    cls = validator_class()
    return lambda schema_json: cls(Schema(schema_json))
