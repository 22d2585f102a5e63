"""Send records to a relay over UDP: the library for custom sources (and for the demo
source and replay of ``speeddata source``).

>>> from speeddata import Source
>>> with Source("engine", "engine.avsc", relay=("127.0.0.1", 26001)) as src:  # doctest: +SKIP
...     src.send({"rpm": 812.5, "torque": 3.1, ...})        # one record, one datagram
...     src.send_many(list_of_dicts)                          # packed, whole records only
...     src.send_array(structured_array, times=times_ns)      # numpy columns, compiled

Three ways in, one wire format (``docs/wire.md``): each datagram holds whole Avro records of
the channel schema back to back, at most ``max_datagram`` bytes (default 1400, which fits
a WiFi/Ethernet MTU without IP fragmentation). A record that alone exceeds the limit is
still sent, alone, when it fits a UDP datagram (65507 bytes); a larger one is an error
raised before anything of that call is sent.

- ``send`` / ``send_many`` take dicts (nested records as nested dicts, enums as symbol
  strings, nullable fields as None) and encode them with fastavro.
- ``send_array`` takes a numpy structured array (field names as the schema's dotted
  signal names, or nested structured fields) and encodes it without Python work per
  record: when ``Schema.dtype`` exists the array's bytes are the encoding; otherwise the
  compiled encoder (``speeddata._encode``) walks the schema program over the columns.
  Only numeric fields go this way (boolean, int, long, float, double, enum as an int index
  or symbol strings, fixed as ``S<size>``); a schema with a string or bytes field is refused
  with an error pointing to ``send_many``. Nullable fields are null where the array is
  masked (``numpy.ma``) or, for float and double fields, where the value is NaN.

The time field (``Schema.time_field``) is filled with the current time when a record
leaves it out (scaled to the field's unit); ``send_array(times=...)`` gives per-row times
in ns since the epoch (or ``datetime64``) instead.

With ``single_object=True`` every record is preceded by the Avro single-object header
(``C3 01`` and the 8-byte schema fingerprint), for the relay's shared port.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

import numpy as np
from fastavro import schemaless_writer

from .cache import encode_long
from .errors import SpeedDataError
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
    Signal,
)

try:
    from ._encode import encode_columns
except ImportError:  # pragma: no cover - only when the extension is not built
    encode_columns = None

__all__ = [
    "Source",
    "SourceError",
    "DEFAULT_MAX_DATAGRAM",
    "MAX_UDP_PAYLOAD",
    "SINGLE_OBJECT_MARKER",
    "datagram_bounds",
    "encode_columns_py",
    "lookup_path",
    "with_path",
    "MISSING",
]

#: Largest UDP payload over IPv4: 65535 - 20 (IP header) - 8 (UDP header).
MAX_UDP_PAYLOAD = 65507
#: Default datagram payload limit: fits a 1500-byte MTU (WiFi, Ethernet) unfragmented.
DEFAULT_MAX_DATAGRAM = 1400
#: Avro single-object encoding marker (Avro 1.11 spec, "Single-object encoding").
SINGLE_OBJECT_MARKER = b"\xc3\x01"

_INT_RANGE = {OP_INT: (-(2**31), 2**31 - 1), OP_LONG: (-(2**63), 2**63 - 1)}
_COLUMN_DTYPE = {
    OP_BOOLEAN: np.dtype("?"),
    OP_INT: np.dtype("=i4"),
    OP_ENUM: np.dtype("=i4"),
    OP_LONG: np.dtype("=i8"),
    OP_FLOAT: np.dtype("<f4"),
    OP_DOUBLE: np.dtype("<f8"),
}


class SourceError(SpeedDataError, ValueError):
    """A record, array or setting a Source cannot send; the message names field and fix."""


# -- pure-Python reference of the compiled encoder --------------------------------------


def encode_columns_py(
    program: np.ndarray, columns: list[np.ndarray | None], prefix: bytes = b""
) -> tuple[np.ndarray, np.ndarray]:
    """Reference twin of ``speeddata._encode.encode_columns``: same inputs, same bytes."""
    ops = [tuple(pair) for pair in np.asarray(program).tolist()]
    n = next((len(c) for c in columns if c is not None), 0)
    out = bytearray()
    ends = np.empty(n, dtype=np.int64)
    for r in range(n):
        out += prefix
        i = 0
        while i < len(ops):
            op, arg = ops[i]
            col = columns[i]
            if op == OP_NULL:
                i += 1
                continue
            if op == OP_UNION:
                is_null = bool(col[r])
                out += encode_long(arg if is_null else 1 - arg)
                i += 2 if is_null else 1
                continue
            if op in (OP_STRING, OP_BYTES):
                raise ValueError(
                    "program has a string or bytes op; they are not encoded from columns"
                )
            if op == OP_BOOLEAN:
                out.append(1 if col[r] else 0)
            elif op in (OP_INT, OP_ENUM, OP_LONG):
                out += encode_long(int(col[r]))
            elif op == OP_FLOAT:
                out += np.asarray(col[r], dtype="<f4").tobytes()
            elif op == OP_DOUBLE:
                out += np.asarray(col[r], dtype="<f8").tobytes()
            elif op == OP_FIXED:
                out += col[r : r + 1].view(np.uint8).tobytes()
            i += 1
        ends[r] = len(out)
    return np.frombuffer(bytes(out), dtype=np.uint8), ends


def datagram_bounds(ends: np.ndarray | list[int], limit: int) -> list[tuple[int, int, int]]:
    """Cut records ending at ``ends`` into datagrams of at most ``limit`` bytes.

    Greedy: each datagram takes as many whole records as fit; a record longer than
    ``limit`` goes alone. Returns ``(start, stop, n_records)`` per datagram, byte offsets.
    """
    ends = np.asarray(ends, dtype=np.int64)
    n = len(ends)
    bounds = []
    start = i = 0
    while i < n:
        # At most ``limit`` records fit (each takes at least one byte): search only those.
        j = i + int(np.searchsorted(ends[i : i + limit], start + limit, side="right"))
        if j == i:
            j = i + 1  # a record larger than the limit goes alone
        stop = int(ends[j - 1])
        bounds.append((start, stop, j - i))
        start, i = stop, j
    return bounds


# -- helpers ----------------------------------------------------------------------------


def _parse_relay(relay: tuple[str, int] | str) -> tuple[str, int]:
    if isinstance(relay, str):
        host, sep, port_s = relay.rpartition(":")
        if not sep or not port_s.isdigit():
            raise SourceError(f"relay {relay!r} is not HOST:PORT (e.g. '127.0.0.1:26001')")
        relay = (host, int(port_s))
    try:
        host, port = relay
    except (TypeError, ValueError):
        raise SourceError(f"relay {relay!r} must be (host, port) or 'HOST:PORT'") from None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise SourceError(f"relay port {port!r} must be an integer from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise SourceError(f"relay host {host!r} cannot be resolved ({exc.strerror})") from None
    return infos[0][4][0], port


def _type_text(t: Any) -> str:
    """An Avro type as a short human phrase for error messages."""
    if isinstance(t, str):
        return t
    if isinstance(t, dict):
        kind = t.get("type")
        if kind == "enum":
            return f"enum {t.get('name', '')} (one of {', '.join(t.get('symbols', []))})".replace(
                "  ", " "
            )
        if kind == "fixed":
            return f"fixed of {t.get('size')} bytes"
        if kind == "record":
            return f"record {t.get('name', '')}"
        if isinstance(kind, (str, dict)):
            return _type_text(kind)
    if isinstance(t, list):
        return " or ".join(_type_text(b) for b in t)
    return str(t)


def _fastavro_field_names(avsc: dict) -> dict[str, str]:
    """fastavro's ``<record fullname>.<field>`` names -> our dotted signal paths."""
    names: dict[str, str] = {}

    def walk(record: dict, namespace: str | None, prefix: str) -> None:
        name = record.get("name", "")
        ns = record.get("namespace", namespace)
        full = name if "." in name or not ns else f"{ns}.{name}"
        ns = full.rpartition(".")[0] or None
        for fld in record.get("fields", []):
            path = f"{prefix}{fld['name']}"
            names.setdefault(f"{full}.{fld['name']}", path)
            ftype = fld["type"]
            for t in ftype if isinstance(ftype, list) else [ftype]:
                if isinstance(t, dict) and t.get("type") == "record":
                    walk(t, ns, f"{path}.")

    walk(avsc, None, "")
    return names


#: what :func:`lookup_path` returns for a path the record does not have
MISSING = object()


def lookup_path(record: Any, path: str) -> Any:
    """The value at ``path`` (dotted, into nested records) of a record dict, or
    :data:`MISSING`."""
    for part in path.split("."):
        if not isinstance(record, Mapping) or part not in record:
            return MISSING
        record = record[part]
    return record


def with_path(record: Mapping, path: str, value: int) -> dict:
    """A shallow copy of ``record`` with ``path`` (dotted) set; the caller's dict is kept."""
    head, _, rest = path.partition(".")
    out = dict(record)
    if rest:
        inner = record.get(head)
        out[head] = with_path(inner if isinstance(inner, Mapping) else {}, rest, value)
    else:
        out[head] = value
    return out


def _structured_field(arr: np.ndarray, path: str) -> np.ndarray | None:
    """Column ``path`` of a structured array: a flat 'a.b' field or nested 'a' -> 'b'."""
    names = arr.dtype.names or ()
    if path in names:
        return arr[path]
    head, _, rest = path.partition(".")
    if rest and head in names and arr.dtype[head].names:
        return _structured_field(arr[head], rest)
    return None


# -- the Source -------------------------------------------------------------------------


class Source:
    """Send records of one channel to a relay over UDP.

    ``channel`` is the channel name (for messages and rate reports); ``schema`` a
    :class:`~speeddata.schema.Schema`, an Avro schema dict or JSON string, or a ``.avsc``
    path; ``relay`` is ``(host, port)`` or ``"HOST:PORT"``: the channel's port, or the
    relay's shared port with ``single_object=True``. ``max_datagram`` is the payload limit
    of one datagram (1..65507 bytes). ``time`` names the time field if the schema's default
    is not wanted.

    Counters ``n_datagrams``, ``n_records`` and ``n_bytes`` (payload bytes) grow with every
    datagram sent. Close the socket with :meth:`close` or use ``with Source(...) as src``.
    """

    def __init__(
        self,
        channel: str,
        schema: Schema | dict | str | PathLike,
        relay: tuple[str, int] | str,
        *,
        single_object: bool = False,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        time: str | None = None,
    ):
        if (
            isinstance(max_datagram, bool)
            or not isinstance(max_datagram, int)
            or not (1 <= max_datagram <= MAX_UDP_PAYLOAD)
        ):
            raise SourceError(
                f"max_datagram {max_datagram!r} must be an integer from 1 to {MAX_UDP_PAYLOAD} "
                f"(the UDP payload limit); {DEFAULT_MAX_DATAGRAM} fits a 1500-byte MTU"
            )
        self.channel = channel
        if isinstance(schema, Schema) and time is not None and time != schema.time_field:
            schema = Schema(schema.avsc, time)
        self.schema = Schema.load(schema, time)
        self.relay = _parse_relay(relay)
        self.single_object = bool(single_object)
        self.max_datagram = max_datagram
        self.prefix = SINGLE_OBJECT_MARKER + self.schema.fingerprint if single_object else b""
        self.n_datagrams = 0
        self.n_records = 0
        self.n_bytes = 0
        self._buf = io.BytesIO()
        self._time_field = self.schema.time_field
        self._time_scale = self.schema.time_scale
        self._field_names = _fastavro_field_names(self.schema.avsc)
        by_op = {sig.op_index: sig for sig in self.schema.signals}
        #: one (op, arg, signal or None) per program pair
        self._plan: list[tuple[int, int, Signal | None]] = []
        for i, (op, arg) in enumerate(self.schema.program.tolist()):
            sig = by_op.get(i + 1 if op == OP_UNION else i)
            self._plan.append((op, arg, sig))
        self._not_numeric = [s for s in self.schema.signals if s.type in ("string", "bytes")]
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    # -- life cycle

    def close(self) -> None:
        """Close the socket. Sending afterwards raises ``OSError``."""
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self.relay
        mode = " single-object" if self.single_object else ""
        return (
            f"<Source {self.channel!r} -> {host}:{port}{mode} schema={self.schema.name} "
            f"sent {self.n_records} records in {self.n_datagrams} datagrams>"
        )

    # -- dict records

    def encode(self, record: Mapping) -> bytes:
        """One record (a dict) as the bytes ``send`` puts in its datagram."""
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        self._write(buf, record, 0)
        return buf.getvalue()

    def encode_records(self, records: Iterable[Mapping]) -> tuple[bytes, list[int]]:
        """Dicts -> ``(data, ends)``: the records back to back and the end offset of each."""
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        ends: list[int] = []
        # The loop is _write inlined: a call per record costs ~8% of fastavro's own time.
        append, tell, bwrite = ends.append, buf.tell, buf.write
        parsed, prefix, tf = self.schema.parsed, self.prefix, self._time_field
        fill = tf is not None and "." not in tf
        for index, record in enumerate(records):
            try:  # zero-cost in CPython 3.11+ unless raised
                if fill and tf not in record:
                    record = {**record, tf: time.time_ns() // self._time_scale}
                elif tf is not None and not fill:
                    record = self._fill_nested_time(record)
                if prefix:
                    bwrite(prefix)
                schemaless_writer(buf, parsed, record)
            except Exception as exc:  # fastavro raises many types; explain with its validator
                raise self._record_error(index, record, exc) from None
            append(tell())
        return buf.getvalue(), ends

    def _write(self, buf: io.BytesIO, record: Mapping, index: int) -> None:
        tf = self._time_field
        try:
            if tf is not None and tf not in record:
                if "." in tf:
                    record = self._fill_nested_time(record)
                else:
                    record = {**record, tf: time.time_ns() // self._time_scale}
            if self.prefix:
                buf.write(self.prefix)
            schemaless_writer(buf, self.schema.parsed, record)
        except Exception as exc:  # fastavro raises many types; explain with its validator
            raise self._record_error(index, record, exc) from None

    def _fill_nested_time(self, record: Mapping) -> Mapping:
        if lookup_path(record, self._time_field) is MISSING:
            return with_path(record, self._time_field, time.time_ns() // self._time_scale)
        return record

    def _record_error(self, index: int, record: Any, exc: Exception) -> SourceError:
        where = f"channel {self.channel!r}, record {index}"
        if not isinstance(record, Mapping):
            return SourceError(
                f"{where}: a record must be a dict of field values, not {type(record).__name__}"
            )
        from fastavro.validation import ValidationError, validate

        try:
            validate(record, self.schema.parsed, raise_errors=True)
        except ValidationError as verr:
            merged: dict[str, tuple[Any, list]] = {}
            for err in verr.errors:
                path = self._field_names.get(err.field, err.field)
                merged.setdefault(path, (err.datum, []))[1].append(err.schema)
            problems = []
            for path, (datum, types) in merged.items():
                value = lookup_path(record, path)
                got = "missing" if value is MISSING else f"got {datum!r} ({type(datum).__name__})"
                problems.append(f"field {path!r}: {got}, expected {_type_text(types)}")
            return SourceError(f"{where}: " + "; ".join(problems))
        except Exception:  # the validator itself failed: fall back to the writer's message
            pass
        return SourceError(f"{where}: cannot encode ({type(exc).__name__}: {exc})")

    def send(self, record: Mapping) -> int:
        """Encode one record (a dict) and send it as one datagram; returns its size."""
        data = self.encode(record)
        if len(data) > MAX_UDP_PAYLOAD:
            raise SourceError(
                f"channel {self.channel!r}: the record encodes to {len(data)} bytes; a UDP "
                f"datagram holds at most {MAX_UDP_PAYLOAD} (shorten its strings or bytes)"
            )
        self._sendto(data, 1)
        return len(data)

    def send_many(self, records: Iterable[Mapping]) -> int:
        """Encode dicts and send them packed into as few datagrams as ``max_datagram``
        allows, never splitting a record. All records are encoded before anything is sent,
        so a bad record raises with nothing of the call sent. Returns datagrams sent."""
        data, ends = self.encode_records(records)
        return self.send_encoded(data, ends)

    # -- numpy arrays

    def encode_array(self, arr: np.ndarray, times: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """A structured array -> ``(data, ends)`` as ``uint8`` and ``int64`` arrays."""
        if self._not_numeric:
            sig = self._not_numeric[0]
            raise SourceError(
                f"channel {self.channel!r}: field {sig.name!r} is a {sig.type}; strings and "
                "bytes cannot be sent from a numpy array: send dicts with send_many() instead"
            )
        mask = None
        if isinstance(arr, np.ma.MaskedArray):
            mask = np.ma.getmaskarray(arr)
            arr = arr.data
        arr = np.asarray(arr)
        if arr.dtype.names is None:
            raise SourceError(
                f"channel {self.channel!r}: send_array needs a structured array (fields named "
                f"as the signals {[s.name for s in self.schema.signals]}), not dtype {arr.dtype}"
            )
        if arr.ndim != 1:
            arr = arr.reshape(-1)
            mask = mask.reshape(-1) if mask is not None else None
        n = len(arr)
        fixed = self.schema.dtype
        if fixed is not None:
            return self._encode_fixed(arr, mask, fixed, n)
        columns: list[np.ndarray | None] = []
        for op, arg, sig in self._plan:
            if op == OP_NULL:
                columns.append(None)
            elif op == OP_UNION:
                columns.append(self._null_flags(arr, mask, sig, n))
            else:
                columns.append(self._column(arr, mask, sig, op, arg, n, times))
        encoder = encode_columns if encode_columns is not None else encode_columns_py
        return encoder(self.schema.program, columns, self.prefix)

    def _encode_fixed(
        self, arr: np.ndarray, mask: np.ndarray | None, dtype: np.dtype, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # Schema.dtype is packed: its bytes are the Avro encoding (no varints in it).
        if mask is None and arr.dtype == dtype and arr.flags.c_contiguous:
            packed = arr
            for sig in self.schema.signals:
                if sig.type == "boolean" and n and packed[sig.name].view(np.uint8).max() > 1:
                    packed = packed.copy()  # raw bytes other than 0/1: normalise below
                    packed[sig.name] = packed[sig.name].view(np.uint8) != 0
        else:
            packed = np.empty(n, dtype=dtype)
            for sig in self.schema.signals:
                op, arg = (int(v) for v in self.schema.program[sig.op_index])
                packed[sig.name] = self._column(arr, mask, sig, op, arg, n, None)
        size = dtype.itemsize
        data = packed.view(np.uint8).reshape(n, size)
        if self.prefix:
            prefixed = np.empty((n, len(self.prefix) + size), dtype=np.uint8)
            prefixed[:, : len(self.prefix)] = np.frombuffer(self.prefix, dtype=np.uint8)
            prefixed[:, len(self.prefix) :] = data
            data, size = prefixed, prefixed.shape[1]
        return data.reshape(-1), np.arange(1, n + 1, dtype=np.int64) * size

    def _null_flags(
        self, arr: np.ndarray, mask: np.ndarray | None, sig: Signal, n: int
    ) -> np.ndarray:
        flags = None
        col = _structured_field(arr, sig.name)
        if col is not None and col.dtype.kind == "f":
            flags = np.isnan(col)  # NaN in a nullable float/double field is sent as null
        if mask is not None:
            m = _structured_field(mask, sig.name)
            if m is not None and m.any():
                flags = m if flags is None else flags | m
        if flags is None:
            return np.broadcast_to(np.False_, (n,))
        return flags

    def _column(
        self,
        arr: np.ndarray,
        mask: np.ndarray | None,
        sig: Signal,
        op: int,
        arg: int,
        n: int,
        times: Any,
    ) -> np.ndarray:
        name = sig.name
        where = f"channel {self.channel!r}: field {name!r}"
        if name == self._time_field and (times is not None or _structured_field(arr, name) is None):
            return self._time_column(times, n)
        col = _structured_field(arr, name)
        if col is None:
            raise SourceError(
                f"{where} is missing from the array; its fields are {list(arr.dtype.names)}, "
                f"the schema's signals {[s.name for s in self.schema.signals]}"
            )
        if mask is not None and not sig.nullable:
            m = _structured_field(mask, name)
            if m is not None and m.any():
                raise SourceError(
                    f"{where} is masked at row {int(np.argmax(m))} but is not nullable "
                    f'(schema type {sig.type}); only ["null", ...] fields can be null'
                )
        kind = col.dtype.kind
        if op == OP_FIXED:
            if kind not in "SV" or col.dtype.itemsize != arg:
                raise SourceError(
                    f"{where} is a fixed of {arg} bytes: give it dtype 'S{arg}' or 'V{arg}', "
                    f"not {col.dtype}"
                )
            return col
        if op == OP_BOOLEAN:
            if kind == "b":
                return col
            if kind in "iu":
                bad = (col != 0) & (col != 1)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise SourceError(f"{where}: value {col[i]} at row {i} is not a boolean (0/1)")
                return col.astype("?")
            raise SourceError(f"{where} is a boolean: give it dtype bool, not {col.dtype}")
        target = _COLUMN_DTYPE[op]
        if op in (OP_FLOAT, OP_DOUBLE):
            if kind not in "biuf":
                raise SourceError(
                    f"{where} is a {sig.type}: give it a numeric dtype, not {col.dtype}"
                )
            return np.asarray(col, dtype=target)
        # int, long, enum
        if op == OP_ENUM and kind in "USO":
            return self._enum_indexes(col, sig, where)
        if kind == "M" and name == self._time_field:
            return self._time_column(col, n)
        if kind not in "biu":
            raise SourceError(
                f"{where} is {'an' if sig.type == 'int' else 'a'} {sig.type}: dtype {col.dtype} "
                f"cannot be sent without losing data; convert it, e.g. "
                f"arr[{name!r}].astype(np.int{64 if op == OP_LONG else 32})"
            )
        lo, hi = (0, arg - 1) if op == OP_ENUM else _INT_RANGE[op]
        if n and (op == OP_ENUM or not np.can_cast(col.dtype, target, "safe")):
            if int(col.min()) < lo or int(col.max()) > hi:
                values = col.tolist()
                i = next(k for k, v in enumerate(values) if not lo <= v <= hi)
                what = f"an index of {list(sig.symbols or ())}" if op == OP_ENUM else sig.type
                raise SourceError(
                    f"{where}: value {values[i]} at row {i} is out of range for {what} ({lo}..{hi})"
                )
        return np.asarray(col, dtype=target)

    def _enum_indexes(self, col: np.ndarray, sig: Signal, where: str) -> np.ndarray:
        symbols = list(sig.symbols or ())
        uniq, inverse = np.unique(col, return_inverse=True)
        index = {s: i for i, s in enumerate(symbols)}
        lut = np.empty(len(uniq), dtype=np.int32)
        for k, u in enumerate(uniq.tolist()):
            key = u.decode() if isinstance(u, bytes) else u
            if key not in index:
                raise SourceError(f"{where}: {key!r} is not a symbol of the enum {symbols}")
            lut[k] = index[key]
        return lut[inverse.reshape(-1)]

    def _time_column(self, times: Any, n: int) -> np.ndarray:
        where = f"channel {self.channel!r}: times"
        if times is None:
            return np.broadcast_to(np.int64(time.time_ns() // self._time_scale), (n,))
        t = np.asarray(times)
        if t.dtype.kind == "M":
            ns = t.astype("datetime64[ns]").view(np.int64)
        elif t.dtype.kind in "iu":
            ns = t.astype(np.int64)
        else:
            raise SourceError(
                f"{where} must be integer ns since the epoch or datetime64, not {t.dtype}"
            )
        if ns.ndim == 0:
            return np.broadcast_to(ns // self._time_scale, (n,))
        if ns.shape != (n,):
            raise SourceError(f"{where} has shape {ns.shape}; the array has {n} rows")
        return ns // self._time_scale if self._time_scale != 1 else ns

    def send_array(self, arr: np.ndarray, times: Any = None) -> int:
        """Send the rows of a structured array, packed as ``send_many``; returns datagrams.

        ``times`` (ns since the epoch, or ``datetime64``; one per row or one for all) fills
        the time field, overriding an array column of that name; without it a missing time
        column is filled with the current time.
        """
        data, ends = self.encode_array(arr, times)
        return self.send_encoded(data, ends)

    # -- datagrams

    def send_encoded(self, data: bytes | np.ndarray, ends: np.ndarray | list[int]) -> int:
        """Send already encoded records (``data`` with record ``ends``) packed into
        datagrams of at most ``max_datagram`` bytes; returns the number of datagrams."""
        ends = np.asarray(ends, dtype=np.int64)
        n = len(ends)
        if n == 0:
            return 0
        sizes = np.diff(ends, prepend=0)
        biggest = int(sizes.max())
        if biggest > MAX_UDP_PAYLOAD:
            i = int(np.argmax(sizes))
            raise SourceError(
                f"channel {self.channel!r}: record {i} encodes to {biggest} bytes; a UDP "
                f"datagram holds at most {MAX_UDP_PAYLOAD} (nothing of this call was sent)"
            )
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        bounds = datagram_bounds(ends, self.max_datagram)
        for start, stop, n_records in bounds:
            self._sendto(view[start:stop], n_records)
        return len(bounds)

    def _sendto(self, payload: bytes | memoryview, n_records: int) -> None:
        try:
            self._sock.sendto(payload, self.relay)
        except OSError as exc:
            if self.closed:
                raise
            host, port = self.relay
            raise SourceError(
                f"channel {self.channel!r}: sending {len(payload)} bytes to {host}:{port} "
                f"failed: {exc.strerror or exc}"
            ) from exc
        self.n_datagrams += 1
        self.n_records += n_records
        self.n_bytes += len(payload)
