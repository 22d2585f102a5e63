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

__all__ = ["PyValidator", "read_varint", "skip_value", "validator_factory"]


def read_varint(data: bytes, pos: int, max_bytes: int) -> tuple[int, int] | None:
    """Zigzag varint at ``pos`` -> ``(value, next_pos)``, or None as ``_avro.read_varint``."""
    acc = 0
    for i in range(max_bytes):
        if pos >= len(data):
            return None
        b = data[pos]
        pos += 1
        acc |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if (i == 4 and max_bytes == 5 and b > 0x0F) or (i == 9 and b > 0x01):
                return None
            return (acc >> 1) ^ -(acc & 1), pos
    return None


def skip_value(data: bytes, pos: int, op: int, arg: int) -> tuple[int, int | None] | None:
    """-> (next_pos, integer value or None), or None when invalid."""
    end = len(data)
    if op == OP_NULL:
        return pos, None
    if op == OP_BOOLEAN:
        return (pos + 1, None) if pos < end and data[pos] <= 1 else None
    if op in (OP_INT, OP_ENUM, OP_LONG):
        r = read_varint(data, pos, 10 if op == OP_LONG else 5)
        if r is None or (op == OP_ENUM and not 0 <= r[0] < arg):
            return None
        return r[1], r[0]
    if op in (OP_FLOAT, OP_DOUBLE, OP_FIXED):
        size = {OP_FLOAT: 4, OP_DOUBLE: 8}.get(op, arg)
        return (pos + size, None) if end - pos >= size else None
    if op in (OP_BYTES, OP_STRING):
        r = read_varint(data, pos, 10)
        if r is None or r[0] < 0 or r[0] > end - r[1]:
            return None
        n, pos = r
        if op == OP_STRING:
            try:
                data[pos : pos + n].decode("utf-8")
            except UnicodeDecodeError:
                return None
        return pos + n, None
    return None


class PyValidator:
    """Reference twin of ``speeddata._validate.Validator``."""

    def __init__(self, schema: Schema | dict | str):
        self.schema = Schema.load(schema)
        self.program = [tuple(pair) for pair in self.schema.program.tolist()]
        self.time_op = self.schema.time_op

    def check(self, data: bytes) -> tuple[int, int, int | None, int | None]:
        view = memoryview(data)
        # The compiled twin takes a contiguous buffer of bytes only: refuse the same.
        if not view.c_contiguous:
            raise ValueError("the data buffer is not C-contiguous")
        if view.itemsize != 1:
            raise ValueError(f"the data buffer holds items of {view.itemsize} bytes, not bytes")
        data = view.tobytes()
        if not data:
            return (-1, 0, None, None)
        pos = n_records = 0
        t_min = t_max = None
        program, n_ops = self.program, len(self.program)
        while pos < len(data):
            start, i = pos, 0
            while i < n_ops:
                op, arg = program[i]
                if op == OP_UNION:
                    r = read_varint(data, pos, 10)
                    if r is None or not 0 <= r[0] <= 1:
                        return (-1, start, None, None)
                    pos = r[1]
                    i += 2 if r[0] == arg else 1
                    continue
                r = skip_value(data, pos, op, arg)
                if r is None:
                    return (-1, start, None, None)
                pos, value = r
                if i == self.time_op:
                    t_min = value if t_min is None else min(t_min, value)
                    t_max = value if t_max is None else max(t_max, value)
                i += 1
            n_records += 1
        return (n_records, -1, t_min, t_max)

    def count(self, data: bytes) -> int:
        return self.check(data)[0]


def validator_factory():
    """Validators for recovery (``schema JSON -> validator``): compiled when built, else
    the reference."""
    try:
        from ._validate import Validator
    except ImportError:
        Validator = PyValidator  # noqa: N806
    return lambda schema_json: Validator(Schema(schema_json))
