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

Nothing the relay would refuse is sent, and no value is changed on the way: every value
is checked before anything of a call is sent (integers within their type's range, whole
numbers only for int and long fields, booleans True/False/0/1, enum symbols, UTF-8 text,
nullable fields null or a value), and the encoded records go through the relay's own
validator. A bad value raises ``SourceError`` naming the record (row), the field and the
value. Each call is all or nothing: ``send_many`` and ``send_array`` send nothing when one
record is bad, so good records are never lost in a datagram the relay would reject; the
counters count only datagrams that were sent (a send that fails midway says how many of
the call's records went).

The time field (``Schema.time_field``) is filled with the current time when a record
leaves it out (scaled to the field's unit); ``send_array(times=...)`` gives per-row times
in ns since the epoch (or ``datetime64``) instead.

With ``single_object=True`` every record is preceded by the Avro single-object header
(``C3 01`` and the 8-byte schema fingerprint), for the relay's shared port.
"""

from __future__ import annotations

import bisect
import io
import math
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
from .validate import validator_class

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
_NOT_SENT = "nothing of this call was sent"
_PRIMITIVE_OP = {"int": OP_INT, "long": OP_LONG, "boolean": OP_BOOLEAN}
_COLUMN_DTYPE = {
    OP_BOOLEAN: np.dtype("?"),
    OP_INT: np.dtype("=i4"),
    OP_ENUM: np.dtype("=i4"),
    OP_LONG: np.dtype("=i8"),
    OP_FLOAT: np.dtype("<f4"),
    OP_DOUBLE: np.dtype("<f8"),
}


class SourceError(SpeedDataError, ValueError):
    """A record, array or setting a Source cannot send; the message names field and fix.

    For a bad value, ``record`` is its index in the call (the row of an array), ``field``
    the signal and ``value`` the value; they are None otherwise.
    """

    def __init__(
        self, message: str, *, record: int | None = None, field: str | None = None,
        value: Any = None,
    ):
        super().__init__(message)
        self.record = record
        self.field = field
        self.value = value


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


def _source_address(relay: tuple[str, int]) -> str:
    """The local address datagrams to ``relay`` leave from (the route's source address).

    A send socket left unbound is bound by the kernel to 0.0.0.0 on its first send,
    listening on every interface; binding it to this address keeps it on the one it
    uses. connect(2) on a UDP socket only looks the route up: nothing is sent.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(relay)
        return probe.getsockname()[0]
    except OSError as exc:
        host, port = relay
        raise SourceError(
            f"relay {host}:{port} cannot be reached from this host ({exc.strerror or exc})"
        ) from None
    finally:
        probe.close()


def _nothing_sent(exc: SourceError) -> SourceError:
    """``exc`` with "nothing of this call was sent" added, its attributes kept."""
    return SourceError(
        f"{exc}; {_NOT_SENT}", record=exc.record, field=exc.field, value=exc.value
    )


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        #: (signal, op, nullable, flat) of the fields whose values fastavro would change
        #: without a word (3.7 -> 3 in an int, "no" -> true in a boolean) or encode so that
        #: the relay refuses them (2**31 in an int): checked before encoding
        self._guards: list[tuple[str, int, bool, bool]] = [
            (sig.name, op, sig.nullable, "." not in sig.name)
            for sig in self.schema.signals
            if (op := _PRIMITIVE_OP.get(sig.type)) is not None
        ]
        # the same split for the loop of encode_records: (name, flat, lo, hi) per int or
        # long field; (name, flat) per boolean
        self._int_guards = [
            (name, flat, *_INT_RANGE[op]) for name, op, _, flat in self._guards if op != OP_BOOLEAN
        ]
        self._bool_guards = [(name, flat) for name, op, _, flat in self._guards if op == OP_BOOLEAN]
        self._guard_of = {g[0]: g for g in self._guards}
        #: the relay's own validator: encoded records are checked with it before sending
        self._validator = validator_class()(self.schema)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((_source_address(self.relay), 0))
        except BaseException:
            self._sock.close()
            raise

    # -- life cycle

    def close(self) -> None:
        """Close the socket. Sending afterwards raises ``OSError``."""
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    @property
    def local_address(self) -> tuple[str, int]:
        """``(host, port)`` the datagrams leave from: the socket is bound to the address
        of the route to the relay (not 0.0.0.0), on a port the kernel chose."""
        return self._sock.getsockname()

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
        """One record (a dict) as the bytes ``send`` puts in its datagram.

        Raises SourceError (naming the field and the value) for a record the relay would
        refuse or that fastavro would change on the way (see ``encode_records``).
        """
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        self._write(buf, record, 0)
        data = buf.getvalue()
        self._check_encoded(data, [len(data)], [record])
        return data

    def encode_records(self, records: Iterable[Mapping]) -> tuple[bytes, list[int]]:
        """Dicts -> ``(data, ends)``: the records back to back and the end offset of each.

        Every record is checked before it is encoded: an int or long field takes an
        integer (or an integral float) within its range, a boolean True, False, 0 or 1;
        fastavro's own checks cover the other types. The bytes are then checked with the
        relay's validator. The first bad record raises SourceError naming the record,
        the field and the value (``.record``, ``.field``, ``.value``).
        """
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        ends: list[int] = []
        if not isinstance(records, (list, tuple)):
            records = list(records)  # kept to name a record the validator refuses
        # The loop is _write inlined: a call per record costs ~8% of fastavro's own time.
        append, tell, bwrite = ends.append, buf.tell, buf.write
        parsed, prefix, tf = self.schema.parsed, self.prefix, self._time_field
        fill = tf is not None and "." not in tf
        int_guards, bool_guards = self._int_guards, self._bool_guards
        for index, record in enumerate(records):
            try:  # zero-cost in CPython 3.11+ unless raised
                if fill and tf not in record:
                    record = {**record, tf: time.time_ns() // self._time_scale}
                elif tf is not None and not fill:
                    record = self._fill_nested_time(record)
                for name, flat, lo, hi in int_guards:
                    value = record.get(name) if flat else lookup_path(record, name)
                    if not (type(value) is int and lo <= value <= hi):
                        self._check_field(index, record, name)
                for name, flat in bool_guards:
                    value = record.get(name) if flat else lookup_path(record, name)
                    if type(value) is not bool:
                        self._check_field(index, record, name)
                if prefix:
                    bwrite(prefix)
                schemaless_writer(buf, parsed, record)
            except SourceError:
                raise
            except Exception as exc:  # fastavro raises many types; explain with its validator
                raise self._record_error(index, record, exc) from None
            append(tell())
        data = buf.getvalue()
        self._check_encoded(data, ends, records)
        return data, ends

    def _write(self, buf: io.BytesIO, record: Mapping, index: int) -> None:
        tf = self._time_field
        try:
            if tf is not None and tf not in record:
                if "." in tf:
                    record = self._fill_nested_time(record)
                else:
                    record = {**record, tf: time.time_ns() // self._time_scale}
            for name, _, _, _ in self._guards:
                self._check_field(index, record, name)
            if self.prefix:
                buf.write(self.prefix)
            schemaless_writer(buf, self.schema.parsed, record)
        except SourceError:
            raise
        except Exception as exc:  # fastavro raises many types; explain with its validator
            raise self._record_error(index, record, exc) from None

    def _check_field(self, index: int, record: Mapping, name: str) -> None:
        _, op, nullable, flat = self._guard_of[name]
        value = record.get(name, MISSING) if flat else lookup_path(record, name)
        self._check_value(index, name, op, nullable, value)

    def _check_value(self, index: int, name: str, op: int, nullable: bool, value: Any) -> None:
        """Raise SourceError if an int, long or boolean ``value`` would be refused by the
        relay or changed by fastavro without a word; other types are fastavro's to check."""
        if value is MISSING or value is None and nullable:
            return  # missing: fastavro says so; None in a union: null
        sig_type = {OP_INT: "int", OP_LONG: "long", OP_BOOLEAN: "boolean"}[op]
        if op == OP_BOOLEAN:
            if isinstance(value, (bool, np.bool_)):
                return
            if isinstance(value, (int, np.integer)) and value in (0, 1):
                return
            why = "is not a boolean (True, False, 0 or 1)"
        else:
            if isinstance(value, (int, np.integer)):
                number = int(value)
            elif isinstance(value, (float, np.floating)):
                if not (math.isfinite(value) and float(value).is_integer()):
                    self._raise_value(index, name, value, f"is not an integer ({sig_type})")
                number = int(value)
            else:
                return  # None, str, ...: fastavro refuses them and its validator explains
            lo, hi = _INT_RANGE[op]
            if lo <= number <= hi:
                return
            why = f"is out of range for {sig_type} ({lo}..{hi})"
        self._raise_value(index, name, value, why)

    def _raise_value(self, index: int, name: str, value: Any, why: str) -> None:
        raise SourceError(
            f"channel {self.channel!r}, record {index}: field {name!r}: {value!r} {why}",
            record=index,
            field=name,
            value=value,
        )

    def _check_encoded(self, data: bytes, ends: list[int], records: Any) -> None:
        """Run the relay's validator over encoded records (belt and braces: what the
        checks before encoding let through must still be what the relay accepts)."""
        if not ends:
            return
        index = None
        if not self.prefix:
            bad = self._validator.check(data)[1]
            if bad >= 0:
                index = bisect.bisect_right(ends, bad)
        else:
            view, start, skip = memoryview(data), 0, len(self.prefix)
            for i, end in enumerate(ends):
                if self._validator.count(view[start + skip : end]) != 1:
                    index = i
                    break
                start = end
        if index is None:
            return
        record = records[index]
        raise SourceError(
            f"channel {self.channel!r}, record {index}: the relay would refuse its encoding "
            f"({_short(record)}); check its values against the schema",
            record=index,
        )

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
            first, (datum, _) = next(iter(merged.items()))
            return SourceError(
                f"{where}: " + "; ".join(problems), record=index, field=first, value=datum
            )
        except Exception:  # the validator itself failed: fall back to the writer's message
            pass
        for sig in self.schema.signals:
            value = lookup_path(record, sig.name)
            if sig.type == "string" and isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as err:  # lone surrogates: not UTF-8
                    return SourceError(
                        f"{where}: field {sig.name!r}: {_short(value)} is not valid UTF-8 text "
                        f"({err.reason} at position {err.start})",
                        record=index,
                        field=sig.name,
                        value=value,
                    )
        return SourceError(
            f"{where}: cannot encode ({type(exc).__name__}: {exc})", record=index
        )

    def send(self, record: Mapping) -> int:
        """Encode one record (a dict) and send it as one datagram; returns its size.

        A record the relay would refuse raises SourceError and is not sent.
        """
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
        allows, never splitting a record. Returns datagrams sent.

        All or nothing: every record is encoded and checked (``encode_records``) before
        anything is sent, so one bad record raises SourceError naming it, its field and
        its value, with nothing of the call sent; drop or fix it and call again. No good
        record is ever lost in a datagram the relay would refuse.
        """
        try:
            data, ends = self.encode_records(records)
        except SourceError as exc:
            raise _nothing_sent(exc) from None
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
        null = None  # the null flags of the union just before a value op
        for op, arg, sig in self._plan:
            if op == OP_NULL:
                columns.append(None)
            elif op == OP_UNION:
                null = self._null_flags(arr, mask, sig, n)
                columns.append(null)
            else:
                columns.append(self._column(arr, mask, sig, op, arg, n, times, null))
                null = None
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
        null: np.ndarray | None = None,
    ) -> np.ndarray:
        """The column of one signal, in the encoder's dtype, checked: a value the relay
        would refuse, or one that the conversion would change, raises SourceError naming
        the row and the value. ``null``: rows sent as null (their values are not sent,
        nor checked)."""
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
        sent = None if null is None or not null.any() else ~null  # rows whose value is sent
        if op == OP_BOOLEAN:
            if kind == "b":
                return col
            if kind in "iu":
                bad = (col != 0) & (col != 1)
                if sent is not None:
                    bad &= sent
                if bad.any():
                    i = int(np.argmax(bad))
                    raise SourceError(
                        f"{where}: value {col[i]} at row {i} is not a boolean (0/1)",
                        record=i, field=name, value=col[i].item(),
                    )
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
        if kind == "f" and op != OP_ENUM:
            return self._integral_column(col, sig, op, target, null, where)
        if kind not in "biu":
            raise SourceError(
                f"{where} is {'an' if sig.type in ('int', 'enum') else 'a'} {sig.type}: "
                f"dtype {col.dtype} "
                f"cannot be sent without losing data; convert it, e.g. "
                f"arr[{name!r}].astype(np.int{64 if op == OP_LONG else 32})"
            )
        lo, hi = (0, arg - 1) if op == OP_ENUM else _INT_RANGE[op]
        if n and (op == OP_ENUM or not np.can_cast(col.dtype, target, "safe")):
            checked = col if sent is None else col[sent]
            if len(checked) and (int(checked.min()) < lo or int(checked.max()) > hi):
                values = col.tolist()
                i = next(
                    k for k, v in enumerate(values)
                    if not lo <= v <= hi and (sent is None or sent[k])
                )
                what = f"an index of {list(sig.symbols or ())}" if op == OP_ENUM else sig.type
                raise SourceError(
                    f"{where}: value {values[i]} at row {i} is out of range for {what} "
                    f"({lo}..{hi})",
                    record=i, field=name, value=values[i],
                )
            if sent is not None:
                col = np.where(sent, col, 0)  # null rows: any value in range (not sent)
        return np.asarray(col, dtype=target)

    def _integral_column(
        self,
        col: np.ndarray,
        sig: Signal,
        op: int,
        target: np.dtype,
        null: np.ndarray | None,
        where: str,
    ) -> np.ndarray:
        """A float column for an int or long field: every value sent must be a whole
        number within the type's range (NaN is null in a nullable field, as for floats)."""
        lo, hi = _INT_RANGE[op]
        with np.errstate(invalid="ignore"):
            # hi + 1 (2**31, 2**63) is exact in a float; hi itself is not for a long
            bad = ~np.isfinite(col) | (col != np.floor(col)) | (col < lo) | (col >= hi + 1)
        if null is not None:
            bad &= ~null
        if bad.any():
            i = int(np.argmax(bad))
            value = col[i].item()
            if math.isfinite(value) and value == math.floor(value):
                why = f"is out of range for {sig.type} ({lo}..{hi})"
            else:
                why = f"is not a whole number ({sig.type} takes integers)"
            raise SourceError(
                f"{where}: value {value!r} at row {i} {why}", record=i, field=sig.name, value=value
            )
        if null is not None and null.any():
            col = np.where(null, 0, col)
        return col.astype(target)

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
            nat = np.isnat(t)
            if nat.any():
                i = int(np.argmax(nat.reshape(-1)))
                raise SourceError(f"{where}: NaT (not a time) at row {i}", record=i)
            ns = t.astype("datetime64[ns]").view(np.int64)
        elif t.dtype.kind in "iu":
            if t.dtype.kind == "u" and t.size and int(t.max()) > _INT_RANGE[OP_LONG][1]:
                i = int(np.argmax(t.reshape(-1) > _INT_RANGE[OP_LONG][1]))
                raise SourceError(
                    f"{where}: {int(t.reshape(-1)[i])} at row {i} is out of range for ns "
                    "since the epoch (a long)",
                    record=i,
                )
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

        All or nothing, as ``send_many``: the columns are checked (vectorised) before
        anything is sent, and a value the relay would refuse raises SourceError naming the
        field, the row and the value, with nothing of the call sent.
        """
        try:
            data, ends = self.encode_array(arr, times)
        except SourceError as exc:
            raise _nothing_sent(exc) from None
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
        sent = 0
        for start, stop, n_records in bounds:
            try:
                self._sendto(view[start:stop], n_records)
            except SourceError as exc:  # say how much of the call went, never more
                raise SourceError(
                    f"{exc}; {sent} of the call's {n} records were sent before, the rest "
                    "were not"
                ) from exc.__cause__
            sent += n_records
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
