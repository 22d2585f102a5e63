"""The column decoder: compiled (_columns.BlockDecoder) and reference (PyBlockDecoder)
against the values fastavro encoded, block framing checks, and string materialization."""

from __future__ import annotations

import io
import random

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _cachedata import ALL_TYPES, WIDE, all_types_record, assert_column_equal, flat
from speeddata import _columns
from speeddata.cache import encode_long
from speeddata.reader import PyBlockDecoder
from speeddata.schema import Schema

DECODERS = {"compiled": _columns.BlockDecoder, "python": PyBlockDecoder}


@pytest.fixture(params=sorted(DECODERS))
def decoder_cls(request):
    return DECODERS[request.param]


def encode_blocks(schema: Schema, records: list[dict], per_block: int):
    """Record bytes of blocks of ``per_block`` records, back to back in one buffer."""
    parsed = fastavro.parse_schema(schema.avsc)
    buf = bytearray(b"junk before")
    starts, sizes, counts = [], [], []
    for i in range(0, len(records), per_block):
        out = io.BytesIO()
        for rec in records[i : i + per_block]:
            fastavro.schemaless_writer(out, parsed, rec)
        starts.append(len(buf))
        sizes.append(len(out.getvalue()))
        counts.append(len(records[i : i + per_block]))
        buf += out.getvalue() + b"\x00" * 3  # gaps between payloads, as in a segment
    return bytes(buf), [np.array(x, np.int64) for x in (starts, sizes, counts)]


def decode(cls, schema, buf, blocks, names=None):
    dec = cls(schema, names)
    dec.reserve(int(blocks[2].sum()), int(blocks[1].sum()))
    dec.decode(buf, *blocks)
    return dec.finish()


def test_all_types_round_trip(decoder_cls):
    schema = Schema(ALL_TYPES)
    rng = random.Random(3)
    records = [all_types_record(k, rng) for k in range(300)]
    buf, blocks = encode_blocks(schema, records, 7)
    columns, valid = decode(decoder_cls, schema, buf, blocks)
    assert sorted(columns) == sorted(s.name for s in schema.signals)
    for sig in schema.signals:
        assert_column_equal(schema, sig.name, columns[sig.name], records, valid.get(sig.name))
    # float and double nulls are NaN, with no mask; the others have a mask
    assert set(valid) == {"ni", "nl", "ns", "nb", "ne", "nfx", "nbool"}
    assert columns["e"].dtype == np.int32 and columns["fx"].dtype == np.dtype("S4")
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert columns["s"].dtype == np.dtypes.StringDType()
    assert columns["by"].dtype == object


def test_compiled_equals_reference_on_demo_schemas(schemas_dir):
    for name in ("engine", "status", "power", "fixed"):
        schema = Schema(schemas_dir / f"{name}.avsc")
        parsed = fastavro.parse_schema(schema.avsc)
        rng = random.Random(name)
        records = [_random_record(parsed, rng) for _ in range(200)]
        buf, blocks = encode_blocks(schema, records, 16)
        a, av = decode(_columns.BlockDecoder, schema, buf, blocks)
        b, bv = decode(PyBlockDecoder, schema, buf, blocks)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}.{key}")
        assert av.keys() == bv.keys()


def _random_record(parsed, rng):
    def value(t):
        if isinstance(t, list):
            t = rng.choice(t)
        if isinstance(t, dict):
            kind = t["type"]
            if kind == "record":
                return {f["name"]: value(f["type"]) for f in t["fields"]}
            if kind == "enum":
                return rng.choice(t["symbols"])
            if kind == "fixed":
                return bytes(rng.randrange(256) for _ in range(t["size"]))
            return value(kind)
        return {
            "null": None,
            "boolean": rng.random() < 0.5,
            "int": rng.randint(-(2**31), 2**31 - 1),
            "long": rng.randint(-(2**63), 2**63 - 1),
            "float": float(np.float32(rng.gauss(0, 1e3))),
            "double": rng.gauss(0, 1e6),
            "string": "".join(rng.choice("abcé日 ") for _ in range(rng.randrange(20))),
            "bytes": bytes(rng.randrange(256) for _ in range(rng.randrange(10))),
        }[t]

    return value(parsed)


def test_fixed_layout_path_is_taken_and_exact(decoder_cls):
    schema = Schema(
        {
            "type": "record",
            "name": "fx",
            "fields": [
                {"name": "a", "type": "double"},
                {"name": "ok", "type": "boolean"},
                {"name": "f", "type": "float"},
                {"name": "tag", "type": {"type": "fixed", "name": "T3", "size": 3}},
                {"name": "z", "type": "null"},
                {"name": "w", "type": "double"},
            ],
        }
    )
    assert schema.dtype is not None
    rng = np.random.default_rng(5)
    records = [
        {"a": float(rng.normal()), "ok": bool(i % 3 == 0), "f": float(np.float32(i / 3)),
         "tag": bytes([i % 256, 0, 7]), "z": None, "w": float(i)}
        for i in range(1000)
    ]
    buf, blocks = encode_blocks(schema, records, 33)
    dec = decoder_cls(schema, ["a", "ok", "tag", "w"])
    if decoder_cls is _columns.BlockDecoder:
        assert dec.fixed_layout
    dec.reserve(1000, 0)
    dec.decode(buf, *blocks)
    columns, valid = dec.finish()
    assert sorted(columns) == ["a", "ok", "tag", "w"] and valid == {}
    for name in columns:
        assert_column_equal(schema, name, columns[name], records)
    # the zero-parse path equals a numpy structured view of the same record bytes
    payload = b"".join(buf[s : s + n] for s, n in zip(blocks[0], blocks[1], strict=True))
    view = np.frombuffer(payload, schema.dtype)
    for name in columns:
        np.testing.assert_array_equal(columns[name], view[name])


def test_wide_fixed_schema_matches_fastavro():
    schema = Schema(WIDE)
    rng = np.random.default_rng(1)
    values = rng.normal(size=(500, 100))
    records = [{f"v{i:03d}": float(x) for i, x in enumerate(row)} for row in values]
    buf, blocks = encode_blocks(schema, records, 50)
    columns, _ = decode(_columns.BlockDecoder, schema, buf, blocks)
    got = np.stack([columns[f"v{i:03d}"] for i in range(100)], axis=1)
    np.testing.assert_array_equal(got, values)


def test_subset_of_signals(decoder_cls):
    schema = Schema(ALL_TYPES)
    rng = random.Random(9)
    records = [all_types_record(k, rng) for k in range(50)]
    buf, blocks = encode_blocks(schema, records, 10)
    columns, valid = decode(decoder_cls, schema, buf, blocks, ["ns", "rec.deep.z", "d"])
    assert list(columns) == ["d", "ns", "rec.deep.z"]
    assert list(valid) == ["ns"]
    for name in columns:
        assert_column_equal(schema, name, columns[name], records, valid.get(name))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-1], "does not parse"),  # truncated last record
        (lambda b: b + b"\x00", "left after"),  # one byte too many
    ],
)
def test_corrupt_block_is_named(decoder_cls, damage, message):
    schema = Schema(ALL_TYPES)
    rng = random.Random(2)
    records = [all_types_record(k, rng) for k in range(5)]
    buf, _ = encode_blocks(schema, records, 5)
    payload = damage(buf[len(b"junk before") : -3])
    dec = decoder_cls(schema)
    dec.reserve(5, len(payload))
    with pytest.raises(ValueError, match=message):
        dec.decode(payload, np.array([0]), np.array([len(payload)]), np.array([5]))


def test_bad_enum_index_and_capacity(decoder_cls):
    schema = Schema({"type": "record", "name": "e", "fields": [
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}]})
    payload = encode_long(2)  # index 2 of 2 symbols
    dec = decoder_cls(schema)
    dec.reserve(1, 1)
    with pytest.raises(ValueError):
        dec.decode(payload, np.array([0]), np.array([1]), np.array([1]))
    dec = decoder_cls(schema)
    dec.reserve(1, 2)
    good = encode_long(1) + encode_long(0)
    with pytest.raises(ValueError, match="do not fit"):
        dec.decode(good, np.array([0]), np.array([2]), np.array([2]))


def test_unknown_signal_name(decoder_cls, schemas_dir):
    with pytest.raises(KeyError, match="no signal 'nope'"):
        decoder_cls(Schema(schemas_dir / "engine.avsc"), ["rpm", "nope"])


def _segment_bytes(sync: bytes, payloads: list[tuple[int, bytes]], header=b"H" * 10):
    buf = bytearray(header)
    entries = []
    for n, data in payloads:
        start = len(buf)
        block = encode_long(n) + encode_long(len(data)) + data + sync
        buf += block
        entries.append((start, len(block), n))
    return buf, entries


def test_verify_blocks_keeps_the_complete_prefix():
    sync = bytes(range(16))
    buf, entries = _segment_bytes(sync, [(2, b"ab"), (1, b"c"), (3, b"def")])
    offsets = np.array([e[0] for e in entries], np.uint64)
    sizes = np.array([e[1] for e in entries], np.uint32)
    counts = np.array([e[2] for e in entries], np.uint32)
    good, start, size = _columns.verify_blocks(bytes(buf), offsets, sizes, counts, 10, sync)
    assert good == 3 and start.tolist() == [12, 32, 51] and size.tolist() == [2, 1, 3]
    # a segment being written: the last block's bytes not there yet (zeros, pre-allocated)
    partial = bytes(buf[: entries[2][0]]) + b"\x00" * 40
    good, _, _ = _columns.verify_blocks(partial, offsets, sizes, counts, 10, sync)
    assert good == 2
    # copied but for its sync marker
    torn = bytes(buf[:-16]) + b"\x00" * 16
    assert _columns.verify_blocks(torn, offsets, sizes, counts, 10, sync)[0] == 2
    # index entry beyond the file
    assert _columns.verify_blocks(bytes(buf[:-1]), offsets, sizes, counts, 10, sync)[0] == 2
    # wrong count in the index, wrong offset, wrong sync
    bad = counts.copy()
    bad[1] = 5
    assert _columns.verify_blocks(bytes(buf), offsets, sizes, bad, 10, sync)[0] == 1
    assert _columns.verify_blocks(bytes(buf), offsets + 1, sizes, counts, 10, sync)[0] == 0
    assert _columns.verify_blocks(bytes(buf), offsets, sizes, counts, 10, bytes(16))[0] == 0
    assert _columns.verify_blocks(b"", offsets[:0], sizes[:0], counts[:0], 0, sync)[0] == 0


def test_materialize_strings_bytes_and_long_values():
    values = ["", "a\x00", "\x00mid", "é" * 3, "z" * 200_000] + [f"s{i}" for i in range(100)]
    raw = [v.encode() for v in values]
    heap = np.frombuffer(b"".join(raw), np.uint8)
    lengths = np.array([len(r) for r in raw], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    col = _columns.materialize(heap, starts, lengths, True)
    assert col.dtype == _columns.string_dtype()
    assert [str(x) for x in col] == values
    col = _columns.materialize(heap, starts, lengths, False)
    assert col.dtype == object and col.tolist() == raw
    with pytest.raises(ValueError, match="outside the heap"):
        _columns.materialize(heap, starts + 1, lengths, True)
    with pytest.raises(UnicodeDecodeError):
        _columns.materialize(np.frombuffer(b"\xff", np.uint8), np.array([0]), np.array([1]), True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 40), per_block=st.integers(1, 9))
def test_property_compiled_equals_reference(seed, n, per_block):
    schema = Schema(ALL_TYPES)
    rng = random.Random(seed)
    records = [all_types_record(k, rng) for k in range(n)]
    if n == 0:
        buf, blocks = b"", [np.zeros(0, np.int64)] * 3
    else:
        buf, blocks = encode_blocks(schema, records, per_block)
    a, av = decode(_columns.BlockDecoder, schema, buf, blocks)
    b, bv = decode(PyBlockDecoder, schema, buf, blocks)
    for key in a:
        assert a[key].dtype == b[key].dtype
        if a[key].dtype.kind == "f":
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key].tolist() == b[key].tolist(), key
    for key in av:
        assert av[key].tolist() == bv[key].tolist()
    assert [flat(r)["rec.a"] for r in records] == a["rec.a"].tolist()


# -- decoding on several threads (decodes of >= 4 MiB are split by whole blocks) ---------


def _repeated_blocks(schema: Schema, records: list[dict], per_block: int, copies: int):
    """The blocks of ``records`` repeated ``copies`` times in one buffer (> 4 MiB)."""
    buf, (starts, sizes, counts) = encode_blocks(schema, records, per_block)
    step = len(buf)
    big = buf * copies
    shift = np.repeat(np.arange(copies, dtype=np.int64) * step, len(starts))
    return big, [np.tile(starts, copies) + shift, np.tile(sizes, copies), np.tile(counts, copies)]


def _threaded(schema, buf, blocks, threads, contiguous=True):
    dec = _columns.BlockDecoder(schema, None, contiguous, threads)
    assert dec.threads == threads
    dec.reserve(int(blocks[2].sum()), int(blocks[1].sum()))
    assert dec.decode(buf, *blocks) == int(blocks[2].sum())
    return dec, dec.finish()


def test_threads_all_types_equal_single_thread():
    schema = Schema(ALL_TYPES)
    rng = random.Random(11)
    records = [all_types_record(k, rng) for k in range(600)]
    buf, blocks = _repeated_blocks(schema, records, 37, 80)
    assert len(buf) > 4 * 1024 * 1024  # large enough to be split
    _, (one, one_valid) = _threaded(schema, buf, blocks, 1)
    _, (two, two_valid) = _threaded(schema, buf, blocks, 3)
    assert one.keys() == two.keys() and one_valid.keys() == two_valid.keys()
    for key in one:
        if one[key].dtype.kind == "f":
            np.testing.assert_array_equal(one[key], two[key])
        else:
            assert one[key].tolist() == two[key].tolist(), key
    for key in one_valid:
        np.testing.assert_array_equal(one_valid[key], two_valid[key])
    # and both are the values fastavro encoded (the last copy of the records)
    tail = {k: v[-len(records) :] for k, v in two.items()}
    for sig in schema.signals:
        assert_column_equal(schema, sig.name, tail[sig.name], records,
                            two_valid[sig.name][-len(records) :] if sig.name in two_valid else None)


@pytest.mark.parametrize("contiguous", [True, False])
def test_threads_fixed_layout_equal_records(contiguous):
    schema = Schema(WIDE)
    values = np.random.default_rng(5).normal(size=(7000, 100))
    # a fixed-layout record is its packed little-endian doubles: blocks of 700 records
    raw = values.astype("<f8").tobytes()
    per = 700 * 800
    buf = b"".join(b"hdr" + raw[i : i + per] for i in range(0, len(raw), per))
    starts = np.arange(10, dtype=np.int64) * (per + 3) + 3
    blocks = [starts, np.full(10, per, np.int64), np.full(10, 700, np.int64)]
    dec, (cols, valid) = _threaded(schema, buf, blocks, 2, contiguous)
    assert valid == {}
    for i in (0, 42, 99):
        np.testing.assert_array_equal(cols[f"v{i:03d}"], values[:, i])
    records = dec.records()
    if contiguous:
        assert records is None
    else:
        assert records.dtype == schema.dtype and len(records) == 7000
        np.testing.assert_array_equal(records["v042"], values[:, 42])


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_corrupt_block_named_as_on_one_thread(threads):
    schema = Schema(ALL_TYPES)
    rng = random.Random(12)
    records = [all_types_record(k, rng) for k in range(400)]
    buf, blocks = _repeated_blocks(schema, records, 40, 120)
    bad = len(blocks[0]) - 3  # a block in the last run
    blocks[2] = blocks[2].copy()
    blocks[2][bad] += 1  # one record more than the bytes hold
    dec = _columns.BlockDecoder(schema, None, True, threads)
    dec.reserve(int(blocks[2].sum()), int(blocks[1].sum()))
    with pytest.raises(ValueError, match=f"block at byte {blocks[0][bad]}: record"):
        dec.decode(buf, *blocks)
    assert dec.n_rows == 0


# A fixed-layout record whose 8-byte fields make runs of 8 (transposed in SIMD registers)
# and leftovers (scattered one by one): 3 doubles, a float, 17 doubles, a boolean, 9
# doubles, a fixed of 8 bytes, 8 doubles: 309 bytes.
MIXED = {
    "type": "record",
    "name": "mixed",
    "fields": (
        [{"name": f"a{i}", "type": "double"} for i in range(3)]
        + [{"name": "f", "type": "float"}]
        + [{"name": f"b{i:02d}", "type": "double"} for i in range(17)]
        + [{"name": "ok", "type": "boolean"}]
        + [{"name": f"c{i}", "type": "double"} for i in range(9)]
        + [{"name": "fx", "type": {"type": "fixed", "name": "F8", "size": 8}}]
        + [{"name": f"d{i}", "type": "double"} for i in range(8)]
    ),
}


def _mixed_records(n: int, seed: int) -> np.ndarray:
    schema = Schema(MIXED)
    rng = np.random.default_rng(seed)
    rec = np.zeros(n, schema.dtype)
    for name in schema.dtype.names:
        kind = schema.dtype.fields[name][0]
        if kind == np.float64:
            rec[name] = rng.normal(size=n)
        elif kind == np.float32:
            rec[name] = rng.normal(size=n).astype(np.float32)
        elif kind == np.bool_:
            rec[name] = rng.random(n) < 0.5
        else:
            rec[name] = rng.integers(0, 256, size=(n, 8), dtype=np.uint8).view("S8")[:, 0]
    return rec


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("tile_bytes", [1, 309 * 21, None])
@pytest.mark.parametrize("names", [None, ["a1", "b00", "b01", "b02", "b04", "b05", "b06",
                                          "b07", "b08", "b09", "b10", "b11", "b12", "ok",
                                          "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8",
                                          "fx", "d0", "d1", "d2", "d3", "d4", "d5", "d7"]])
def test_fixed_transpose_levels_tiles_and_row_offsets(level, tile_bytes, names):
    """The SIMD transpose (each level this CPU has), at tile sizes of 8 records, 21
    records and the default, into rows that start anywhere (blocks of 0..300 records,
    several decode calls, the first large enough to be split over two threads) equals
    the record bytes field by field; fastavro agrees with those bytes."""
    schema = Schema(MIXED)
    if _columns._set_simd_level(level) != level:
        _columns._set_simd_level(2)
        pytest.skip(f"this CPU has no SIMD level {level}")
    old_tile = _columns._set_tile_bytes(tile_bytes) if tile_bytes else None
    try:
        rec = _mixed_records(16_000, level)
        # the record bytes are the Avro encoding: fastavro says so for a sample
        out = io.BytesIO()
        parsed = fastavro.parse_schema(schema.avsc)
        for row in rec[:40]:
            fastavro.schemaless_writer(out, parsed, {
                k: (bytes(row[k]).ljust(8, b"\0") if k == "fx" else row[k].item())
                for k in schema.dtype.names
            })
        assert out.getvalue() == rec[:40].tobytes()
        rng = np.random.default_rng(7)
        counts = []
        while sum(counts) < len(rec):
            counts.append(min(int(rng.integers(0, 301)), len(rec) - sum(counts)))
        buf = bytearray(b"x" * 5)
        starts = []
        at = 0
        for c in counts:
            buf += b"gap"
            starts.append(len(buf))
            buf += rec[at : at + c].tobytes()
            at += c
        starts = np.array(starts, np.int64)
        counts = np.array(counts, np.int64)
        sizes = counts * 309
        dec = _columns.BlockDecoder(schema, names, True, 2)
        dec.reserve(len(rec))
        assert (dec.n_groups > 0) == (level > 0)
        n_blocks = len(counts)
        cuts = [0, n_blocks * 9 // 10, n_blocks * 9 // 10 + 3, n_blocks]
        assert int(sizes[: cuts[1]].sum()) > 4 * 1024 * 1024  # split over two threads
        for b0, b1 in zip(cuts[:-1], cuts[1:], strict=True):
            dec.decode(bytes(buf), starts[b0:b1], sizes[b0:b1], counts[b0:b1])
        columns, valid = dec.finish()
    finally:
        _columns._set_simd_level(2)
        if old_tile is not None:
            _columns._set_tile_bytes(old_tile)
    assert valid == {} and list(columns) == (names or list(schema.dtype.names))
    for name, col in columns.items():
        assert col.dtype == rec.dtype.fields[name][0] and col.flags.c_contiguous
        assert col.tobytes() == np.ascontiguousarray(rec[name]).tobytes(), name


@pytest.mark.parametrize("schema_def", [ALL_TYPES, WIDE], ids=["all_types", "wide"])
def test_reserve_into_given_memory(schema_def):
    """reserve(out=): the columns are decoded into the given buffer (reused from batch to
    batch, the same values as into new memory); a buffer too small is not used, and one
    that is not a writable contiguous uint8 array is refused."""
    schema = Schema(schema_def)
    if schema_def is WIDE:
        rng = np.random.default_rng(4)
        records = [{f"v{i:03d}": float(x) for i, x in enumerate(row)}
                   for row in rng.normal(size=(300, 100))]
    else:
        rng = random.Random(5)
        records = [all_types_record(k, rng) for k in range(300)]
    buf, blocks = encode_blocks(schema, records, 9)
    expect, expect_valid = decode(_columns.BlockDecoder, schema, buf, blocks)
    n_rows, heap = int(blocks[2].sum()), int(blocks[1].sum())
    memory = _columns._aligned_empty(1 << 20)
    dec = _columns.BlockDecoder(schema)
    for _ in range(2):  # the same memory twice: nothing left over from the first decode
        memory[:] = 0xA5
        dec.reserve(n_rows, heap, out=memory)
        assert np.shares_memory(dec.slab, memory)
        dec.decode(buf, *blocks)
        columns, valid = dec.finish()
        for name, col in columns.items():
            if col.dtype != object and col.dtype.kind != "T":
                assert np.shares_memory(col, memory), name
            np.testing.assert_array_equal(col, expect[name])
        for name in expect_valid:
            np.testing.assert_array_equal(valid[name], expect_valid[name])
    small = np.zeros(64, np.uint8)
    dec.reserve(n_rows, heap, out=small)  # too small: new memory
    assert not np.shares_memory(dec.slab, small)
    dec.decode(buf, *blocks)
    columns, _ = dec.finish()
    np.testing.assert_array_equal(columns[schema.signals[0].name], expect[schema.signals[0].name])
    for bad in (bytearray(1 << 20), np.zeros(1 << 17, np.float64),
                np.zeros((2, 1 << 19), np.uint8), np.zeros(1 << 21, np.uint8)[::2]):
        with pytest.raises(TypeError, match="writable contiguous 1-D uint8"):
            dec.reserve(n_rows, heap, out=bad)
    readonly = np.zeros(1 << 20, np.uint8)
    readonly.flags.writeable = False
    with pytest.raises(TypeError):
        dec.reserve(n_rows, heap, out=readonly)
    PyBlockDecoder(schema).reserve(n_rows, heap, out=memory)  # accepted, not used


def test_column_memory_is_recycled_only_once_unused(monkeypatch):
    """A large read's columns are views of one slab; the slab goes back to the pool only
    when no array or view of it is left, and the next read of about its size decodes into
    it (no new pages); the pool keeps at most SLAB_POOL_BYTES and release_slabs empties
    it. Values are never shared between two live results."""
    _columns.release_slabs()
    schema = Schema(WIDE)
    rng = np.random.default_rng(8)
    records = [{f"v{i:03d}": float(x) for i, x in enumerate(row)}
               for row in rng.normal(size=(8000, 100))]  # 6.4 MB of columns: a slab
    buf, blocks = encode_blocks(schema, records, 500)
    expect, _ = decode(PyBlockDecoder, schema, buf, blocks)

    def read():
        columns, _ = decode(_columns.BlockDecoder, schema, buf, blocks)
        return columns

    first = read()
    kept = first["v042"][10:20]  # a view outlives the result
    address = first["v000"].__array_interface__["data"][0]
    del first
    assert _columns.slab_pool() == (0, 0)  # the view still uses it
    second = read()  # so this one gets other memory
    assert second["v000"].__array_interface__["data"][0] != address
    np.testing.assert_array_equal(kept, expect["v042"][10:20])  # untouched
    del kept
    count, nbytes = _columns.slab_pool()
    assert count == 1 and nbytes >= 6_400_000 and nbytes % _columns.SLAB_ALIGN == 0
    third = read()  # takes the freed slab back
    assert third["v000"].__array_interface__["data"][0] == address
    assert _columns.slab_pool() == (0, 0)
    for name in expect:
        np.testing.assert_array_equal(third[name], expect[name])
        np.testing.assert_array_equal(second[name], expect[name])
    monkeypatch.setattr(_columns, "SLAB_POOL_BYTES", nbytes)  # room for one slab
    del second, third
    assert _columns.slab_pool() == (1, nbytes)  # the older of the two let go
    assert _columns.release_slabs() == nbytes and _columns.slab_pool() == (0, 0)


def test_release_memory_frees_column_memory_too():
    """speeddata.release_memory(): the pivot's pool and the reads' free column memory."""
    import speeddata

    _columns.release_slabs()
    a = _columns._aligned_empty(5 << 20)
    del a
    count, nbytes = _columns.slab_pool()
    assert count == 1
    assert speeddata.release_memory() >= nbytes and _columns.slab_pool() == (0, 0)
