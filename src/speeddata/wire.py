"""The relay's multicast wire format (docs/wire.md): a 32-byte header, then the payload.

Pure Python, shared by the compiled engine (``speeddata._relay``), the reference engine
(``speeddata.relay_ref``) and every subscriber (live server, tests).

Header, little-endian, ``struct`` format ``<4sBBHIIQq``:

    magic "SpDa", version 1, kind (0 data, 1 announce), header_len 32,
    channel_id, n_records, seq (per channel), recv_ns (kernel receive time)
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

__all__ = [
    "HEADER_STRUCT",
    "HEADER_SIZE",
    "HEADER_DTYPE",  # noqa: F822 (made on first use, by __getattr__)
    "MAGIC",
    "VERSION",
    "KIND_DATA",
    "KIND_ANNOUNCE",
    "SHARED_CHANNEL_ID",
    "Header",
    "WireError",
    "pack_header",
    "unpack_header",
    "announce_payload",
    "announce_datagram",
    "parse_announce",
]

HEADER_STRUCT = struct.Struct("<4sBBHIIQq")
HEADER_SIZE = HEADER_STRUCT.size
MAGIC = b"SpDa"
VERSION = 1
KIND_DATA = 0
KIND_ANNOUNCE = 1
#: the channel id under which engines report the shared port's counters (never a
#: channel's: ids start at 1)
SHARED_CHANNEL_ID = 0

#: the header as a numpy structured dtype (``HEADER_DTYPE``), made on first use: the
#: relay process packs headers with ``struct`` and never loads numpy (docs/scaling.md)
_HEADER_FIELDS = [
    ("magic", "S4"),
    ("version", "u1"),
    ("kind", "u1"),
    ("header_len", "<u2"),
    ("channel_id", "<u4"),
    ("n_records", "<u4"),
    ("seq", "<u8"),
    ("recv_ns", "<i8"),
]
assert HEADER_SIZE == 32


def __getattr__(name: str) -> Any:
    if name == "HEADER_DTYPE":
        import numpy as np

        dtype = np.dtype(_HEADER_FIELDS)
        assert dtype.itemsize == HEADER_SIZE
        globals()["HEADER_DTYPE"] = dtype
        return dtype
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class WireError(ValueError):
    """A multicast datagram that is not a SpeedData datagram (bad magic, version, size)."""


class Header(NamedTuple):
    """A decoded multicast header; ``header_len`` says where the payload starts."""

    magic: bytes
    version: int
    kind: int
    header_len: int
    channel_id: int
    n_records: int
    seq: int
    recv_ns: int


def pack_header(
    channel_id: int, n_records: int, seq: int, recv_ns: int, kind: int = KIND_DATA
) -> bytes:
    """The 32-byte header of one multicast datagram."""
    return HEADER_STRUCT.pack(
        MAGIC,
        VERSION,
        kind,
        HEADER_SIZE,
        channel_id & 0xFFFFFFFF,
        n_records & 0xFFFFFFFF,
        seq & 0xFFFFFFFFFFFFFFFF,
        recv_ns,
    )


def unpack_header(buf: bytes | bytearray | memoryview) -> Header:
    """Decode the header at the start of ``buf``; raises WireError if it is not ours.

    A subscriber reads the payload at ``buf[header.header_len:]`` (a later version may
    grow the header; version 1 readers still find the payload).
    """
    if len(buf) < HEADER_SIZE:
        raise WireError(
            f"datagram of {len(buf)} bytes is shorter than the {HEADER_SIZE}-byte header"
        )
    header = Header(*HEADER_STRUCT.unpack_from(buf, 0))
    if header.magic != MAGIC:
        raise WireError(f"bad magic {header.magic!r}, expected {MAGIC!r}")
    if header.version != VERSION:
        raise WireError(f"unsupported wire version {header.version} (this reader knows {VERSION})")
    if header.header_len < HEADER_SIZE or header.header_len > len(buf):
        raise WireError(f"bad header_len {header.header_len}")
    return header


def announce_payload(channel: Any) -> bytes:
    """The UTF-8 JSON payload announcing ``channel`` (a ``config.ChannelConfig``)."""
    schema = channel.schema
    return json.dumps(
        {
            "id": int(channel.id),
            "name": channel.name,
            "schema": schema.avsc,
            "fingerprint": schema.fingerprint_hex,
            "decimation": int(channel.decimation),
            "time": schema.time_field,
            "time_scale": int(schema.time_scale),
        },
        separators=(",", ":"),
    ).encode()


def announce_datagram(channel: Any, seq: int, now_ns: int) -> bytes:
    """A whole announce datagram (header of kind 1 + JSON payload)."""
    return pack_header(channel.id, 0, seq, now_ns, KIND_ANNOUNCE) + announce_payload(channel)


def parse_announce(payload: bytes | bytearray | memoryview) -> dict:
    """Decode an announce payload (the bytes after the header) -> dict; WireError if bad."""
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"announce payload is not UTF-8 JSON: {exc}") from exc
    missing = {"id", "name", "schema"} - set(obj) if isinstance(obj, dict) else {"id"}
    if missing:
        raise WireError(f"announce lacks {sorted(missing)}")
    return obj
