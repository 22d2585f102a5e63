"""A strict reading of the Avro 1.11 spec ("Binary Encoding", "Object Container Files"),
written for the fault suite independently of the relay's validators: ints are at most 5
bytes within int32, longs at most 10 bytes within int64, lengths are non-negative and
within the data, booleans are 0 or 1, enum and union indexes are ints in range, strings
are strict UTF-8. Any violation raises StrictError."""

from __future__ import annotations

import struct


class StrictError(ValueError):
    pass


def read_int(data: bytes, pos: int, max_bytes: int = 5, bits: int = 32) -> tuple[int, int]:
    acc = 0
    for i in range(max_bytes):
        if pos + i >= len(data):
            raise StrictError("varint runs past the end")
        b = data[pos + i]
        acc |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if acc >> bits:
                raise StrictError(f"varint beyond {bits} bits")
            return (acc >> 1) ^ -(acc & 1), pos + i + 1
    raise StrictError(f"varint longer than {max_bytes} bytes")


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    return read_int(data, pos, 10, 64)


def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if n < 0:
        raise StrictError("negative length")
    if pos + n > len(data):
        raise StrictError("value runs past the end")
    return data[pos : pos + n], pos + n


def read_value(schema, data: bytes, pos: int):
    """-> (value, next position)."""
    if isinstance(schema, list):  # a union: the branch index is an int
        index, pos = read_int(data, pos)
        if not 0 <= index < len(schema):
            raise StrictError(f"union index {index} of {len(schema)} branches")
        return read_value(schema[index], data, pos)
    if isinstance(schema, dict):
        t = schema["type"]
        if t == "record":
            out = {}
            for f in schema["fields"]:
                out[f["name"]], pos = read_value(f["type"], data, pos)
            return out, pos
        if t == "enum":
            index, pos = read_int(data, pos)
            if not 0 <= index < len(schema["symbols"]):
                raise StrictError(f"enum index {index}")
            return schema["symbols"][index], pos
        if t == "fixed":
            return _take(data, pos, schema["size"])
        return read_value(t, data, pos)  # {"type": "long", "logicalType": ...}
    if schema == "null":
        return None, pos
    if schema == "boolean":
        raw, pos = _take(data, pos, 1)
        if raw[0] > 1:
            raise StrictError("boolean byte not 0 or 1")
        return bool(raw[0]), pos
    if schema == "int":
        return read_int(data, pos)
    if schema == "long":
        return read_long(data, pos)
    if schema == "float":
        raw, pos = _take(data, pos, 4)
        return struct.unpack("<f", raw)[0], pos
    if schema == "double":
        raw, pos = _take(data, pos, 8)
        return struct.unpack("<d", raw)[0], pos
    if schema in ("bytes", "string"):
        n, pos = read_long(data, pos)
        raw, pos = _take(data, pos, n)
        if schema == "string":
            try:
                return raw.decode("utf-8"), pos
            except UnicodeDecodeError as exc:
                raise StrictError("string not UTF-8") from exc
        return raw, pos
    raise StrictError(f"type {schema!r} not read here")


def split_records(schema: dict, data: bytes) -> list[bytes]:
    """The bytes of each record in ``data``, which must be one or more whole records."""
    if not data:
        raise StrictError("no record")
    out, pos = [], 0
    while pos < len(data):
        _, end = read_value(schema, data, pos)
        out.append(data[pos:end])
        pos = end
    return out


def container_records(path, schema: dict) -> list[bytes]:
    """Every record of an Object Container File (codec null), strictly, as bytes."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"Obj\x01":
        raise StrictError("not an object container file")
    pos = 4
    while True:  # the metadata map
        count, pos = read_long(data, pos)
        if count == 0:
            break
        if count < 0:
            _, pos = read_long(data, pos)
            count = -count
        for _ in range(count):
            for _ in range(2):
                n, pos = read_long(data, pos)
                _, pos = _take(data, pos, n)
    sync, pos = _take(data, pos, 16)
    out = []
    while pos < len(data):
        count, pos = read_long(data, pos)
        size, pos = read_long(data, pos)
        block, pos = _take(data, pos, size)
        marker, pos = _take(data, pos, 16)
        if marker != sync:
            raise StrictError("sync marker")
        records = split_records(schema, block)
        if len(records) != count:
            raise StrictError(f"block says {count} records, holds {len(records)}")
        out += records
    return out
