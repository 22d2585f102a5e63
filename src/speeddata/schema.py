"""Channel schemas: an Avro ``record`` -> signals, time field, fingerprint, numpy dtype, program.

A channel's schema is an Avro record whose fields (nested records flattened to dotted
names) are its signals. Only types with a fixed, flat shape are supported, so that every
record maps to one row of columns:

    null, boolean, int, long, float, double, bytes, string, enum, fixed,
    unions of null and one of those, and nested records.

Arrays, maps, recursive records and unions of two non-null types are refused with an
error naming the field.

The schema is compiled into a *program*: a flat ``int32`` array of ``(op, arg)`` pairs,
one pair per encoded item in field order. The compiled validator, the encoder and the
column decoder all walk the same program, so they agree on the layout by construction.
"""

from __future__ import annotations

import json
import os
import stat
from array import array
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import parse_schema, to_parsing_canonical_form

from .errors import SpeedDataError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Schema",
    "SchemaError",
    "SCHEMA_FILE_LIMIT",
    "read_schema_file",
    "Signal",
    "apache_python_canonical_form",
    "OP_NULL",
    "OP_BOOLEAN",
    "OP_INT",
    "OP_LONG",
    "OP_FLOAT",
    "OP_DOUBLE",
    "OP_BYTES",
    "OP_STRING",
    "OP_ENUM",
    "OP_FIXED",
    "OP_UNION",
]

# Program opcodes. Keep in sync with ``_avro.pxd``.
OP_NULL = 0  # nothing encoded
OP_BOOLEAN = 1  # one byte, 0 or 1
OP_INT = 2  # zigzag varint, at most 5 bytes
OP_LONG = 3  # zigzag varint, at most 10 bytes
OP_FLOAT = 4  # 4 bytes little-endian IEEE 754
OP_DOUBLE = 5  # 8 bytes little-endian IEEE 754
OP_BYTES = 6  # long length, then that many bytes
OP_STRING = 7  # long length, then that many bytes of UTF-8
OP_ENUM = 8  # int index; arg = number of symbols
OP_FIXED = 9  # arg = size in bytes
OP_UNION = 10  # long branch index (0 or 1); arg = index of the null branch; the next
#                pair is the non-null branch's op, run only when that branch is chosen

_PRIMITIVE_OPS = {
    "null": OP_NULL,
    "boolean": OP_BOOLEAN,
    "int": OP_INT,
    "long": OP_LONG,
    "float": OP_FLOAT,
    "double": OP_DOUBLE,
    "bytes": OP_BYTES,
    "string": OP_STRING,
}

# Fixed-size ops and their numpy types, for the zero-parse layout.
_FIXED_LAYOUT = {OP_BOOLEAN: "?", OP_FLOAT: "<f4", OP_DOUBLE: "<f8"}
_FIXED_SIZE = {OP_BOOLEAN: 1, OP_FLOAT: 4, OP_DOUBLE: 8}

# Nanoseconds per unit of the time field, by logical type. A plain ``long`` is taken as ns.
_TIME_SCALE = {
    None: 1,
    "timestamp-nanos": 1,
    "local-timestamp-nanos": 1,
    "timestamp-micros": 1_000,
    "local-timestamp-micros": 1_000,
    "timestamp-millis": 1_000_000,
    "local-timestamp-millis": 1_000_000,
}


class SchemaError(SpeedDataError, ValueError):
    """A schema that SpeedData cannot use; the message names the field and the reason."""


@dataclass(frozen=True)
class Signal:
    """One named quantity: a (possibly nested, dotted) field of the channel record."""

    name: str
    type: str  # Avro type name: boolean, int, long, float, double, bytes, string, enum, fixed
    nullable: bool = False
    doc: str | None = None
    unit: str | None = None
    logical_type: str | None = None
    symbols: tuple[str, ...] | None = None  # enum
    size: int | None = None  # fixed
    op_index: int = 0  # position of this signal's value op in the program (pairs)

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of this signal's column (strings/bytes are objects)."""
        import numpy as np

        return np.dtype(
            {
                "boolean": "?",
                "int": "<i4",
                "long": "<i8",
                "float": "<f4",
                "double": "<f8",
                "enum": "<i4",
                "bytes": "O",
                "string": "O",
            }.get(self.type, f"S{self.size}")
        )


@dataclass
class _Compiler:
    named: dict[str, Any] = field(default_factory=dict)
    in_progress: set[str] = field(default_factory=set)
    ops: list[tuple[int, int]] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    #: enclosing namespace, for names that give none (Avro spec, "Names")
    namespace: str = ""

    def record(self, schema: dict, prefix: str) -> None:
        name = schema.get("name")
        if not name:
            raise SchemaError(f"{prefix or 'schema'}: a record needs a 'name'")
        full = _fullname(schema, self.namespace)
        self.in_progress.add(full)
        self.named[full] = schema
        self.named.setdefault(name, schema)
        fields = schema.get("fields")
        if not isinstance(fields, list) or not fields:
            raise SchemaError(f"{prefix or name}: a record needs a non-empty 'fields' list")
        outer_namespace, self.namespace = self.namespace, full.rpartition(".")[0]
        seen: set[str] = set()
        for fld in fields:
            if not isinstance(fld, dict) or "name" not in fld or "type" not in fld:
                raise SchemaError(f"{prefix or name}: every field needs a 'name' and a 'type'")
            path = f"{prefix}{fld['name']}"
            if fld["name"] in seen:
                raise SchemaError(f"field {path!r}: defined twice; field names must be unique")
            seen.add(fld["name"])
            self.field(fld, path)
        self.namespace = outer_namespace
        self.in_progress.discard(full)

    def field(self, fld: dict, path: str) -> None:
        ftype = fld["type"]
        nullable = False
        if isinstance(ftype, list):
            branches = [self.resolve(b, path) for b in ftype]
            non_null = [b for b in branches if _type_name(b) != "null"]
            if len(ftype) != 2 or len(non_null) != 1:
                raise SchemaError(
                    f"field {path!r}: union {json.dumps(ftype)} is not supported; "
                    "use a union of null and one type, e.g. [\"null\", \"double\"]"
                )
            value = non_null[0]
            if _type_name(value) == "record":
                raise SchemaError(
                    f"field {path!r}: a nullable record is not supported; "
                    "make its fields nullable instead"
                )
            null_index = 0 if _type_name(branches[0]) == "null" else 1
            self.ops.append((OP_UNION, null_index))
            ftype = value
            nullable = True
        else:
            ftype = self.resolve(ftype, path)

        tname = _type_name(ftype)
        if tname == "record":
            full = _fullname(ftype, self.namespace)
            if full in self.in_progress:
                raise SchemaError(f"field {path!r}: recursive record {full!r} is not supported")
            self.record(ftype, f"{path}.")
            return
        if tname in ("array", "map"):
            raise SchemaError(
                f"field {path!r}: type {tname!r} is not supported; a signal must be one value "
                "per record (flatten the elements into separate fields)"
            )
        spec = ftype if isinstance(ftype, dict) else {}
        op_index = len(self.ops)
        if tname in _PRIMITIVE_OPS:
            self.ops.append((_PRIMITIVE_OPS[tname], 0))
            symbols = size = None
        elif tname == "enum":
            symbols = tuple(spec.get("symbols") or ())
            if not symbols:
                raise SchemaError(f"field {path!r}: an enum needs a non-empty 'symbols' list")
            self.ops.append((OP_ENUM, len(symbols)))
            size = None
        elif tname == "fixed":
            size = spec.get("size")
            if not isinstance(size, int) or size < 1:
                raise SchemaError(f"field {path!r}: a fixed needs a positive integer 'size'")
            self.ops.append((OP_FIXED, size))
            symbols = None
        else:
            raise SchemaError(f"field {path!r}: unknown type {tname!r}")
        if tname == "null":
            return  # a null field carries no signal
        if any(sig.name == path for sig in self.signals):
            raise SchemaError(
                f"field {path!r}: two signals flatten to this name; rename one of the fields"
            )
        self.signals.append(
            Signal(
                name=path,
                type=tname,
                nullable=nullable,
                doc=fld.get("doc"),
                unit=fld.get("unit") or spec.get("unit"),
                logical_type=spec.get("logicalType"),
                symbols=symbols,
                size=size,
                op_index=op_index,
            )
        )

    def resolve(self, ftype: Any, path: str) -> Any:
        """Replace a named-type reference by its definition; register new named types."""
        if isinstance(ftype, str):
            if ftype in _PRIMITIVE_OPS:
                return ftype
            # A name without a dot is looked up in the enclosing namespace first.
            candidates = [ftype]
            if self.namespace and "." not in ftype:
                candidates.insert(0, f"{self.namespace}.{ftype}")
            for candidate in candidates:
                if candidate in self.in_progress:
                    raise SchemaError(
                        f"field {path!r}: recursive record {ftype!r} is not supported"
                    )
                if candidate in self.named:
                    return self.named[candidate]
            raise SchemaError(f"field {path!r}: unknown type {ftype!r}")
        if isinstance(ftype, dict):
            tname = ftype.get("type")
            if isinstance(tname, (dict, list)):
                return self.resolve(tname, path)
            if tname in ("enum", "fixed") and "name" in ftype:
                self.named[_fullname(ftype, self.namespace)] = ftype
                self.named.setdefault(ftype["name"], ftype)
            return ftype
        if isinstance(ftype, list):
            return ftype
        raise SchemaError(f"field {path!r}: cannot read type {ftype!r}")


def _type_name(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, dict):
        return t.get("type", "")
    return "union"


def _fullname(t: dict, enclosing: str = "") -> str:
    """Avro spec "Names": a dotted name is full; else its own namespace, else the enclosing one."""
    name = t["name"]
    if "." in name:
        return name
    ns = t.get("namespace")
    ns = enclosing if ns is None else ns
    return f"{ns}.{name}" if ns else name


class Schema:
    """A channel schema, loaded from a ``.avsc`` path, a JSON string or a dict.

    >>> s = Schema({"type": "record", "name": "engine", "fields": [
    ...     {"name": "time", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
    ...     {"name": "rpm", "type": "double"}]})
    >>> [sig.name for sig in s.signals], s.time_field
    (['time', 'rpm'], 'time')
    """

    def __init__(self, source: dict | str | PathLike, time: str | None = None):
        self.path: Path | None = None
        if isinstance(source, dict):
            avsc = source
        elif isinstance(source, PathLike) or (
            isinstance(source, str) and not source.lstrip().startswith("{")
        ):
            self.path = Path(source)
            avsc = _loads(read_schema_file(self.path), str(self.path))
        else:
            avsc = _loads(source, "schema")
        where = f"{self.path}: " if self.path else ""
        if not isinstance(avsc, dict) or avsc.get("type") != "record":
            raise SchemaError(f"{where}a channel schema must be an Avro record")
        compiler = _Compiler()
        try:
            compiler.record(avsc, "")
        except SchemaError as exc:
            raise SchemaError(f"{where}{exc}") from None
        except RecursionError:
            raise SchemaError(f"{where}records nested too deeply") from None
        try:
            self.parsed = parse_schema(avsc)
        except Exception as exc:  # fastavro raises several types for invalid schemas
            raise SchemaError(f"{where}invalid Avro schema: {exc}") from exc
        self.avsc: dict = avsc
        self.name: str = avsc["name"]
        self.signals: list[Signal] = compiler.signals
        #: The program as flat (op, arg) int32 pairs: what the compiled validator and relay
        #: take (a buffer, so that the relay process never needs numpy: docs/scaling.md)
        self.program_ops: array = array("i", [v for pair in compiler.ops for v in pair])
        self._program: np.ndarray | None = None
        if all(op == OP_NULL for op, _ in compiler.ops):
            raise SchemaError(f"{where}every field is null: a record must encode to 1+ bytes")
        self.canonical: str = to_parsing_canonical_form(avsc)
        #: CRC-64-AVRO of the parsing canonical form, as the 8 bytes of single-object encoding.
        self.fingerprint: bytes = _crc64(self.canonical)
        #: Every fingerprint the common Avro libraries compute for this schema, the spec's
        #: first (docs/wire.md, "Fingerprints"): the relay routes each to the channel.
        self.fingerprints: tuple[bytes, ...] = tuple(
            dict.fromkeys((self.fingerprint, _crc64(apache_python_canonical_form(avsc))))
        )
        self.time_field: str | None = self._find_time(time, where)
        #: nanoseconds per unit of the time field
        self.time_scale: int = 1
        self.time_op: int = -1  # program pair index of the time field's value, or -1
        if self.time_field is not None:
            sig = self.signal(self.time_field)
            self.time_scale = _TIME_SCALE.get(sig.logical_type, 1)
            self.time_op = sig.op_index

    @classmethod
    def load(cls, source: dict | str | PathLike, time: str | None = None) -> Schema:
        return source if isinstance(source, Schema) else cls(source, time)

    def _find_time(self, time: str | None, where: str) -> str | None:
        if time is not None:
            names = [s.name for s in self.signals]
            if time not in names:
                raise SchemaError(f"{where}time field {time!r} is not a field; fields: {names}")
            sig = self.signal(time)
            if sig.type != "long" or sig.nullable:
                raise SchemaError(
                    f"{where}time field {time!r} must be a non-null long "
                    "(logicalType timestamp-nanos, -micros or -millis); it is "
                    f"{'nullable ' if sig.nullable else ''}{sig.type}"
                )
            if sig.logical_type not in _TIME_SCALE:
                raise SchemaError(
                    f"{where}time field {time!r}: logicalType {sig.logical_type!r} is not a "
                    "timestamp; use timestamp-nanos, -micros or -millis"
                )
            return time
        for sig in self.signals:
            # A long named time that is not a timestamp (e.g. time-micros, a time of day)
            # is not the abscissa: fall through to the timestamp search.
            if (
                sig.name == "time"
                and sig.type == "long"
                and not sig.nullable
                and sig.logical_type in _TIME_SCALE
            ):
                return "time"
        for sig in self.signals:
            if (
                sig.type == "long"
                and not sig.nullable
                and (sig.logical_type or "").startswith(("timestamp-", "local-timestamp-"))
            ):
                return sig.name
        return None

    def signal(self, name: str) -> Signal:
        for sig in self.signals:
            if sig.name == name:
                return sig
        names = [s.name for s in self.signals]
        raise KeyError(f"{self.name}: no signal {name!r}; signals: {names}")

    @property
    def json(self) -> str:
        """The schema as given, as compact JSON (what the cache header and announces carry)."""
        return json.dumps(self.avsc, separators=(",", ":"))

    @property
    def program(self) -> np.ndarray:
        """The program as an (n_ops, 2) int32 array of (op, arg) pairs (see _Compiler)."""
        if self._program is None:
            import numpy as np

            self._program = np.array(self.program_ops, dtype=np.int32).reshape(-1, 2)
        return self._program

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def fixed_size(self) -> int | None:
        """Bytes per record when every record has the same size, else None."""
        size = 0
        ops = self.program_ops
        for i in range(0, len(ops), 2):
            op, arg = ops[i], ops[i + 1]
            if op in _FIXED_SIZE:
                size += _FIXED_SIZE[op]
            elif op == OP_FIXED:
                size += arg
            elif op != OP_NULL:
                return None
        return size

    @property
    def dtype(self) -> np.dtype | None:
        """A packed numpy dtype whose bytes *are* the Avro encoding, or None if varints occur.

        Only boolean, float, double and fixed fields (and null fields, which take no bytes)
        have a fixed layout.
        """
        if self.fixed_size is None:
            return None
        import numpy as np

        names, formats, offsets = [], [], []
        offset = 0
        for sig in self.signals:
            op, arg = self.program[sig.op_index]
            fmt = _FIXED_LAYOUT.get(int(op), f"S{int(arg)}")
            names.append(sig.name)
            formats.append(fmt)
            offsets.append(offset)
            offset += np.dtype(fmt).itemsize
        return np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": offset}
        )

    def __repr__(self) -> str:
        return f"<Schema {self.name} {len(self.signals)} signals fp={self.fingerprint_hex}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and other.canonical == self.canonical

    def __hash__(self) -> int:
        return hash(self.canonical)


def _crc64(canonical: str) -> bytes:
    """CRC-64-AVRO of a canonical form: the 8 bytes single-object encoding carries."""
    return bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))


#: Attributes Apache ``avro`` for Python reads itself (``SCHEMA_RESERVED_PROPS``); any
#: other attribute of a primitive type keeps it an object in that library's canonical form.
_APACHE_PY_RESERVED = frozenset(
    ("type", "name", "namespace", "fields", "items", "size", "symbols", "values", "doc")
)


def apache_python_canonical_form(avsc: Any) -> str:
    """The "parsing canonical form" as Apache ``avro`` for Python (1.10 to 1.12) writes it.

    ``avro.schema.Schema.fingerprint()`` hashes this text, and it differs from the spec's
    (which fastavro and Apache Avro Java's ``SchemaNormalization.toParsingForm`` follow)
    in two ways, so that library's single-object datagrams carry another fingerprint:

    - a primitive type written as an object with an attribute beyond the reserved ones
      (``logicalType``, ``unit``, ...) stays an object, ``{"type":"long"}``, where the
      spec's [PRIMITIVES] rule writes ``"long"``;
    - a ``fixed`` type is written out in full wherever it is used, where the spec writes
      its full name after its first use.

    Names resolve as in the spec ("Names"); the rest (attribute order, full names,
    stripped attributes) is the spec's form.
    """
    written: set[str] = set()
    fixed: dict[str, dict] = {}

    def walk(t: Any, namespace: str) -> Any:
        if isinstance(t, list):
            return [walk(b, namespace) for b in t]
        if isinstance(t, str):
            if t in _PRIMITIVE_OPS:
                return t
            full = t if "." in t or not namespace else f"{namespace}.{t}"
            if full not in written and full not in fixed:
                full = t  # a name of the null namespace, used inside a namespace
            return fixed.get(full, full)
        if not isinstance(t, dict):
            raise SchemaError(f"cannot read type {t!r}")
        kind = t.get("type")
        if isinstance(kind, (dict, list)):
            return walk(kind, namespace)
        if kind in _PRIMITIVE_OPS:
            return {"type": kind} if set(t) - _APACHE_PY_RESERVED else kind
        if kind == "array":
            return {"type": "array", "items": walk(t.get("items"), namespace)}
        if kind == "map":
            return {"type": "map", "values": walk(t.get("values"), namespace)}
        full = _fullname(t, namespace)
        if kind == "fixed":
            fixed[full] = {"name": full, "type": "fixed", "size": t.get("size")}
            return fixed[full]
        if full in written:
            return full
        written.add(full)
        if kind == "enum":
            return {"name": full, "type": "enum", "symbols": list(t.get("symbols") or ())}
        inner = full.rpartition(".")[0]
        return {
            "name": full,
            "type": kind,
            "fields": [
                {"name": f["name"], "type": walk(f["type"], inner)} for f in t.get("fields", [])
            ],
        }

    return json.dumps(walk(avsc, ""), separators=(",", ":"))


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{where}: not valid JSON: {exc}") from exc
    except RecursionError:
        raise SchemaError(f"{where}: JSON nested too deeply") from None


#: the largest .avsc file a schema is read from
SCHEMA_FILE_LIMIT = 1 << 20


def read_schema_file(path: Path) -> str:
    """The text of the schema file ``path``: a regular file of at most SCHEMA_FILE_LIMIT
    bytes of UTF-8, read so that nothing can block or flood the caller (a FIFO, a device
    such as /dev/zero, a directory are refused before a byte is read). SchemaError says
    what is wrong."""
    try:
        # O_NONBLOCK: opening a FIFO for reading never waits for a writer (fifo(7))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise SchemaError(f"{path}: cannot read schema file ({why})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise SchemaError(f"{path}: cannot read schema file ({kind}); give an .avsc file")
        if st.st_size > SCHEMA_FILE_LIMIT:
            raise SchemaError(
                f"{path}: a schema file is at most {SCHEMA_FILE_LIMIT} bytes, this one has "
                f"{st.st_size}"
            )
        chunks = []
        got = 0
        while got <= SCHEMA_FILE_LIMIT:  # the file may grow while it is read
            try:
                chunk = os.read(fd, SCHEMA_FILE_LIMIT + 1 - got)
            except OSError as exc:
                raise SchemaError(f"{path}: cannot read schema file ({exc.strerror})") from None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > SCHEMA_FILE_LIMIT:
            raise SchemaError(f"{path}: a schema file is at most {SCHEMA_FILE_LIMIT} bytes")
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: a schema file is UTF-8 JSON ({exc})") from None
