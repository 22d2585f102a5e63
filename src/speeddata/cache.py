"""The disk cache: segment files, their indexes, recovery and listing (see docs/cache.md).

``SegmentWriter`` is the pure-Python reference writer: the relay's compiled writer
produces the same files, and tests compare the two. ``recover_segment`` trims a segment
left open by a crash to its last complete block.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import struct
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config
from .errors import SpeedDataError
from .schema import Schema

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "IDX_DTYPE",  # noqa: F822 (made on first use, by __getattr__)
    "RECV_DTYPE",  # noqa: F822
    "MAGIC",
    "Segment",
    "SegmentWriter",
    "ocf_header",
    "encode_long",
    "segment_stem",
    "segment_time_ns",
    "parse_header",
    "list_segments",
    "recover_segment",
    "cache_segments",
    "enforce_retention",
    "write_json_atomic",
    "preallocate",
    "segment_bytes",
    "segment_data_bytes",
    "segment_needs_recovery",
    "segment_schema_json",
    "recover_cache",
    "budget_bytes",
    "channel_summary",
    "CacheBusy",
    "lock_cache",
    "cache_writer_pid",
    "resolve_cache_dir",
    "cache_channels",
    "segment_candidates",
]

MAGIC = b"Obj\x01"

# The index entries as numpy dtypes (``IDX_DTYPE``, ``RECV_DTYPE``), made on first use:
# what the relay process itself reads of them (recovery, retention, the status summary)
# goes through ``struct``, so that it never loads numpy (~19 MB of RSS; docs/scaling.md).
_IDX_FIELDS = [
    ("offset", "<u8"),
    ("size", "<u4"),
    ("n_records", "<u4"),
    ("n_datagrams", "<u4"),
    ("seq_first", "<u4"),
    ("t_min", "<i8"),
    ("t_max", "<i8"),
]
_RECV_FIELDS = [("recv_ns", "<i8"), ("n_records", "<u4"), ("seq", "<u4")]
IDX_ENTRY = struct.Struct("<QIIIIqq")  # the fields of _IDX_FIELDS
IDX_SIZE = IDX_ENTRY.size
RECV_SIZE = 16
assert IDX_SIZE == 40


def __getattr__(name: str) -> Any:
    if name in ("IDX_DTYPE", "RECV_DTYPE"):
        import numpy as np

        idx, recv = np.dtype(_IDX_FIELDS), np.dtype(_RECV_FIELDS)
        assert idx.itemsize == IDX_SIZE and recv.itemsize == RECV_SIZE
        globals().update(IDX_DTYPE=idx, RECV_DTYPE=recv)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dtypes() -> tuple[np.dtype, np.dtype]:
    """(IDX_DTYPE, RECV_DTYPE), loading numpy."""
    return __getattr__("IDX_DTYPE"), __getattr__("RECV_DTYPE")


def _index_bytes(segment: Segment) -> bytes:
    """A segment's ``.idx``, whole entries only (empty when there is none)."""
    try:
        raw = segment.idx.read_bytes()
    except FileNotFoundError:
        return b""
    return raw[: len(raw) // IDX_SIZE * IDX_SIZE]


def _index_end(raw: bytes) -> int | None:
    """Where the last indexed block ends in the ``.avro`` (None: no entry)."""
    if not raw:
        return None
    offset, size = struct.unpack_from("<QI", raw, len(raw) - IDX_SIZE)
    return offset + size


def _index_datagrams(raw: bytes, n_entries: int | None = None) -> int:
    """The datagrams of the first ``n_entries`` (all) entries: the sum of n_datagrams."""
    raw = raw if n_entries is None else raw[: n_entries * IDX_SIZE]
    if sys.byteorder == "little":  # u32 number 4 of each 10: a C loop over a strided view
        return sum(memoryview(raw).cast("I")[4::10])
    return sum(e[0] for e in struct.iter_unpack("<16xI20x", raw))  # pragma: no cover


def encode_long(value: int) -> bytes:
    """Avro zigzag varint."""
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def ocf_header(schema: Schema, sync: bytes, channel: str, channel_id: int) -> bytes:
    """The Object Container File header: magic, metadata map, sync marker."""
    meta = {
        "avro.schema": schema.json.encode(),
        "avro.codec": b"null",
        "speeddata.channel": channel.encode(),
        "speeddata.channel_id": str(channel_id).encode(),
    }
    out = bytearray(MAGIC)
    out += encode_long(len(meta))
    for key, value in meta.items():
        k = key.encode()
        out += encode_long(len(k)) + k + encode_long(len(value)) + value
    out += encode_long(0)
    out += sync
    return bytes(out)


def segment_stem(t_ns: int) -> str:
    """UTC file stem that sorts by time: ``20261125T103100.123456789Z``."""
    sec, ns = divmod(t_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}.{ns:09d}Z"


@dataclass(frozen=True)
class Segment:
    """One segment of a channel: the three files sharing a stem."""

    avro: Path

    @property
    def idx(self) -> Path:
        return self.avro.with_suffix(".idx")

    @property
    def recv(self) -> Path:
        return self.avro.with_suffix(".recv")

    @property
    def channel(self) -> str:
        return self.avro.parent.name

    def files(self) -> list[Path]:
        return [self.avro, self.idx, self.recv]

    def read_index(self) -> np.ndarray:
        import numpy as np

        return np.frombuffer(_index_bytes(self), _dtypes()[0])

    def read_recv(self) -> np.ndarray:
        import numpy as np

        RECV_DTYPE = _dtypes()[1]
        try:
            raw = self.recv.read_bytes()
        except FileNotFoundError:
            return np.zeros(0, RECV_DTYPE)
        return np.frombuffer(raw[: len(raw) // RECV_SIZE * RECV_SIZE], RECV_DTYPE)

    def header_size(self) -> int:
        """Bytes up to and including the header's sync marker."""
        with open(self.avro, "rb") as f:
            head = f.read(64 * 1024)
        return parse_header(head)[0]

    def sync(self) -> bytes:
        with open(self.avro, "rb") as f:
            head = f.read(64 * 1024)
        return parse_header(head)[1]


def _read_long(buf, pos: int) -> tuple[int, int]:
    acc = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def parse_header(head: bytes) -> tuple[int, bytes, dict]:
    """An Avro object container file's header -> (header size including sync, sync
    marker, metadata)."""
    if head[:4] != MAGIC:
        raise ValueError("not an Avro object container file")
    pos = 4
    meta = {}
    while True:
        count, pos = _read_long(head, pos)
        if count == 0:
            break
        if count < 0:
            _, pos = _read_long(head, pos)  # block byte size, unused
            count = -count
        for _ in range(count):
            n, pos = _read_long(head, pos)
            key = head[pos : pos + n].decode()
            pos += n
            n, pos = _read_long(head, pos)
            meta[key] = head[pos : pos + n]
            pos += n
    sync = head[pos : pos + 16]
    if len(sync) != 16:
        raise ValueError("truncated header")
    return pos + 16, sync, meta


class SegmentWriter:
    """Reference writer of one segment: pre-allocated, memory-mapped, trimmed on close.

    ``append(datagrams, recv_ns, seqs, counts, t_ranges)`` writes one block holding the
    given datagrams (bytes of whole records, already validated).
    """

    def __init__(
        self,
        channel_dir: Path,
        schema: Schema,
        channel: str,
        channel_id: int,
        size: int,
        t_open_ns: int | None = None,
        sync: bytes | None = None,
    ):
        channel_dir.mkdir(parents=True, exist_ok=True)
        self.t_open_ns = t_open_ns if t_open_ns is not None else time.time_ns()
        self.segment = Segment(channel_dir / f"{segment_stem(self.t_open_ns)}.avro")
        self.sync = sync if sync is not None else os.urandom(16)
        header = ocf_header(schema, self.sync, channel, channel_id)
        self.capacity = max(size, len(header) + 64)
        self._fd = os.open(self.segment.avro, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._map = self._idx = self._recv = None
        try:
            # Reserve the blocks now: a full disk fails here with ENOSPC, not later as a
            # SIGBUS on a store into the map (mmap(2), "SIGBUS").
            preallocate(self._fd, self.capacity)
            self._map = mmap.mmap(self._fd, self.capacity)
            # 2 MiB page-cache folios: a reader maps and unmaps a 48 MB segment in
            # 0.15 ms instead of ~2 ms (docs/performance.md, "Reading the cache")
            if hasattr(mmap, "MADV_HUGEPAGE"):
                self._map.madvise(mmap.MADV_HUGEPAGE)
            self._map[: len(header)] = header
            self._idx = open(self.segment.idx, "wb", buffering=0)  # noqa: SIM115
            self._recv = open(self.segment.recv, "wb", buffering=0)  # noqa: SIM115
        except BaseException:
            self._abandon()
            raise
        self.end = len(header)
        self._idx_len = self._recv_len = 0
        self.n_blocks = 0
        self.n_records = 0
        self.closed = False

    def room(self, n_bytes: int) -> bool:
        """Whether a block of ``n_bytes`` of records fits."""
        return self.end + n_bytes + 20 + 16 <= self.capacity

    def append(
        self,
        datagrams: list[bytes],
        recv_ns: list[int],
        seqs: list[int],
        counts: list[int],
        t_min: int,
        t_max: int,
    ) -> None:
        data = b"".join(datagrams)
        n_records = sum(counts)
        block = encode_long(n_records) + encode_long(len(data)) + data + self.sync
        if self.end + len(block) > self.capacity:
            raise ValueError("block does not fit in the segment; rotate first")
        import numpy as np

        IDX_DTYPE, RECV_DTYPE = _dtypes()
        recv = np.zeros(len(datagrams), RECV_DTYPE)
        recv["recv_ns"] = recv_ns
        recv["n_records"] = counts
        recv["seq"] = [s & 0xFFFFFFFF for s in seqs]
        entry = np.zeros(1, IDX_DTYPE)
        seq_first = seqs[0] & 0xFFFFFFFF
        entry[0] = (self.end, len(block), n_records, len(datagrams), seq_first, t_min, t_max)
        # docs/cache.md, "Write order": receive times, then the index entry, then the block.
        # A failed write (ENOSPC) takes back what this block wrote, so that the segment
        # still ends with a complete block, and re-raises.
        try:
            _write_all(self._recv, recv.tobytes())
            _write_all(self._idx, entry.tobytes())
        except OSError:
            for f, length in ((self._recv, self._recv_len), (self._idx, self._idx_len)):
                f.truncate(length)
                f.seek(length)
            raise
        self._recv_len += recv.nbytes
        self._idx_len += entry.nbytes
        self._map[self.end : self.end + len(block)] = block
        self.end += len(block)
        self.n_blocks += 1
        self.n_records += n_records

    def _abandon(self) -> None:
        """Undo a half-done ``__init__``: close what is open and remove the files."""
        for f in (self._map, self._idx, self._recv):
            if f is not None:
                f.close()
        os.close(self._fd)
        for p in self.segment.files():
            p.unlink(missing_ok=True)
        self.closed = True

    def close(self) -> Segment:
        """Unmap and trim the segment to its last block."""
        if not self.closed:
            self._map.close()
            os.ftruncate(self._fd, self.end)
            os.close(self._fd)
            self._idx.close()
            self._recv.close()
            self.closed = True
        return self.segment

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def preallocate(fd: int, size: int) -> None:
    """Give the file ``size`` bytes of reserved disk blocks (posix_fallocate(3)).

    Raises OSError(ENOSPC) when the file system is full. File systems without fallocate
    fall back to ftruncate (sparse: a later write into the map may then hit a full disk).
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def _write_all(f, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (write(2) may write less)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        view = view[n:]


def list_segments(cache_dir: Path, channel: str) -> list[Segment]:
    """The channel's segments, oldest first."""
    d = Path(cache_dir) / channel
    if not d.is_dir():
        return []
    return [Segment(p) for p in sorted(d.glob("*.avro"))]


def recover_segment(segment: Segment, validator=None) -> tuple[int, int]:
    """Trim a segment (and its index files) to its last complete block, per docs/cache.md.

    ``validator`` (anything with ``count(bytes) -> int``) also checks each block's records;
    without it only framing is checked. Returns ``(good blocks, dropped index entries)``.
    """
    with open(segment.avro, "r+b") as f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size == 0:
            return (0, 0)
        mm = mmap.mmap(f.fileno(), 0)
        try:
            header_size, sync, _ = parse_header(mm[: min(file_size, 64 * 1024)])
            index = _index_bytes(segment)
            end = header_size
            good = 0
            for offset, size, entry_records, *_ in IDX_ENTRY.iter_unpack(index):
                if offset != end or end + size > file_size:
                    break
                try:
                    n_records, pos = _read_long(mm, end)
                    n_bytes, pos = _read_long(mm, pos)
                except (ValueError, IndexError):
                    break
                block_end = pos + n_bytes + 16
                if (
                    n_records != entry_records
                    or n_bytes < 0
                    or block_end != end + size
                    or mm[pos + n_bytes : block_end] != sync
                ):
                    break
                if validator is not None and validator.count(mm[pos : pos + n_bytes]) != n_records:
                    break
                end = block_end
                good += 1
        finally:
            mm.close()
        f.truncate(end)
    n_datagrams = _index_datagrams(index, good)
    with open(segment.idx, "r+b") if segment.idx.exists() else open(segment.idx, "wb") as f:
        f.truncate(good * IDX_SIZE)
    with open(segment.recv, "r+b") if segment.recv.exists() else open(segment.recv, "wb") as f:
        f.truncate(n_datagrams * RECV_SIZE)
    return good, len(index) // IDX_SIZE - good


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that a reader sees the old or the new file, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def cache_segments(cache_dir: Path) -> list[Segment]:
    """Every segment of every channel (not the tags' links), in no particular order."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return [
        Segment(p)
        for d in cache_dir.iterdir()
        if d.is_dir() and d.name not in ("tags", "rejected")
        for p in d.glob("*.avro")
    ]


def segment_bytes(segment: Segment) -> int:
    total = 0
    for p in segment.files():
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


#: segment_data_bytes() of segments whose three files have not changed since (size and
#: mtime of each): the relay's retention pass and status summary ask for every segment
#: every few seconds, and a closed segment never changes. When it reaches its limit, the
#: entries of deleted segments go; the limit doubles when the live ones fill half of it
#: (a cache of many segments), so it holds a few hundred bytes per segment at most.
_DATA_BYTES: dict[tuple, tuple[tuple, int]] = {}
_data_bytes_limit = 1024


def _files_key(segment: Segment) -> tuple | None:
    key = []
    for p in segment.files():
        try:
            st = p.stat()
        except FileNotFoundError:
            key.append(None)
            continue
        key.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(key) if key[0] is not None else None


def segment_data_bytes(segment: Segment, n_blocks: int | None = None) -> int:
    """The bytes of data a segment holds: its ``.avro`` up to the end of its last complete
    block (or of its first ``n_blocks``), its ``.idx`` and ``.recv``. Unlike
    :func:`segment_bytes` (the files' sizes), the pre-allocated rest of a segment being
    written is not counted. Remembered while the segment's files are unchanged: at low
    rates an index holds an entry per datagram, and reading every index of a full cache
    every pass would cost more than the relay's whole work."""
    key = _files_key(segment)
    if key is None:
        return 0
    memo = (str(segment.avro), n_blocks)
    hit = _DATA_BYTES.get(memo)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = _segment_data_bytes(segment, n_blocks)
    if len(_DATA_BYTES) >= _data_bytes_limit:
        _forget_deleted_segments()
    _DATA_BYTES[memo] = (key, value)
    return value


def _forget_deleted_segments() -> None:
    global _data_bytes_limit
    for memo in list(_DATA_BYTES):  # a copy: another thread may add meanwhile
        if not os.path.exists(memo[0]):
            _DATA_BYTES.pop(memo, None)
    if len(_DATA_BYTES) >= _data_bytes_limit // 2:
        _data_bytes_limit *= 2


def _segment_data_bytes(segment: Segment, n_blocks: int | None) -> int:
    try:
        size = segment.avro.stat().st_size
    except FileNotFoundError:
        return 0
    index = _index_bytes(segment)
    if n_blocks is not None:
        index = index[: n_blocks * IDX_SIZE]
    try:
        end = _index_end(index)
        if end is None:
            end = segment.header_size()
    except (OSError, ValueError, IndexError):
        end = size
    total = min(size, end) + len(index)
    n_datagrams = _index_datagrams(index)
    try:
        recv = segment.recv.stat().st_size
    except FileNotFoundError:
        recv = 0
    return total + min(recv, n_datagrams * RECV_SIZE)


def enforce_retention(
    cache_dir: Path,
    budget_bytes: int,
    max_age: float | None = None,
    open_segments: set[Path] = frozenset(),
    now_ns: int | None = None,
) -> list[Segment]:
    """Delete the oldest closed, unpinned segments until the cache fits its budget and age.

    A segment whose ``.avro`` has more than one link is pinned by a tag and never deleted;
    segments in ``open_segments`` (being written) are never deleted. Returns what went.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    segments = sorted(cache_segments(cache_dir), key=lambda s: s.avro.name)
    sizes = {s.avro: segment_bytes(s) for s in segments}
    total = sum(sizes.values())
    deleted = []
    for seg in segments:
        too_old = max_age is not None and segment_time_ns(seg) < now_ns - max_age * 1e9
        if total <= budget_bytes and not too_old:
            continue
        if seg.avro in open_segments:
            continue
        try:
            if seg.avro.stat().st_nlink > 1:
                continue  # pinned by a tag
        except FileNotFoundError:
            continue
        for p in seg.files():
            p.unlink(missing_ok=True)
        total -= sizes[seg.avro]
        deleted.append(seg)
    return deleted


def segment_time_ns(segment: Segment) -> int:
    """Open time of a segment, from its file name."""
    stem = segment.avro.stem
    whole, _, frac = stem.rstrip("Z").partition(".")
    t = datetime.strptime(whole, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return int(t.timestamp()) * 1_000_000_000 + int(frac or 0)


def segment_needs_recovery(segment: Segment) -> bool:
    """Whether a segment was left open (by a crash): its files disagree with its index.

    A cleanly closed segment ends exactly at the end of its last indexed block, its index
    holds whole entries, and its ``.recv`` one entry per indexed datagram.
    """
    try:
        file_size = segment.avro.stat().st_size
        idx_size = segment.idx.stat().st_size if segment.idx.exists() else 0
        recv_size = segment.recv.stat().st_size if segment.recv.exists() else 0
    except FileNotFoundError:
        return False
    if idx_size % IDX_SIZE or recv_size % RECV_SIZE:
        return True
    index = _index_bytes(segment)
    try:
        end = _index_end(index)
        if end is None:
            end = segment.header_size()
    except (ValueError, IndexError):
        return True  # no complete header
    return file_size != end or recv_size != _index_datagrams(index) * RECV_SIZE


def segment_schema_json(segment: Segment) -> str:
    """The ``avro.schema`` a segment's header carries (ValueError if it has no header)."""
    with open(segment.avro, "rb") as f:
        head = f.read(64 * 1024)
    return parse_header(head)[2]["avro.schema"].decode()


def recover_cache(cache_dir: Path, make_validator=None) -> list[tuple[Segment, int, int]]:
    """Recover every segment of every channel that a crash left open (docs/cache.md).

    ``make_validator(schema_json) -> validator`` builds the record validator for a
    segment from the schema in its own header (so channels no longer configured recover
    too); None checks framing only. A segment without a complete header holds no block
    and is removed. Returns ``(segment, good blocks, dropped index entries)`` for each
    segment that needed recovery.
    """
    validators: dict[str, object] = {}
    recovered = []
    for segment in sorted(cache_segments(cache_dir), key=lambda s: str(s.avro)):
        if not segment_needs_recovery(segment):
            continue
        try:
            schema_json = segment_schema_json(segment)
        except (ValueError, IndexError, KeyError, UnicodeDecodeError):
            # Crashed between creating the file and writing its header: nothing to keep.
            for p in segment.files():
                p.unlink(missing_ok=True)
            recovered.append((segment, 0, len(_index_bytes(segment)) // IDX_SIZE))
            continue
        validator = None
        if make_validator is not None:
            if schema_json not in validators:
                validators[schema_json] = make_validator(schema_json)
            validator = validators[schema_json]
        good, dropped = recover_segment(segment, validator)
        recovered.append((segment, good, dropped))
    return recovered


def budget_bytes(budget: tuple[str, float], cache_dir: Path) -> int:
    """A ``cache.budget`` in bytes: as given, or the share of the file system holding the cache."""
    kind, value = budget
    if kind != "share":
        return int(value)
    st = os.statvfs(cache_dir)
    return int(value * st.f_blocks * st.f_frsize)


def channel_summary(cache_dir: Path, channel: str) -> dict:
    """What the cache holds for a channel: segments, bytes (of data), allocated (bytes on
    disk, with the pre-allocated rest of the segment being written), oldest and newest
    time (ns).

    Times come from the block indexes (source time; receive time for channels without a
    time field); a segment without blocks yet counts by its open time. Reads only the
    first and last index entries, so it is cheap enough to run every few seconds.
    """
    segments = list_segments(cache_dir, channel)
    oldest = newest = None
    for seg in segments:
        first = _index_entry(seg, 0)
        if first is not None:
            oldest = first[5]  # t_min
            break
    for seg in reversed(segments):
        last = _index_entry(seg, -1)
        if last is not None:
            newest = last[6]  # t_max
            break
    return {
        "segments": len(segments),
        "bytes": sum(segment_data_bytes(s) for s in segments),
        "allocated": sum(segment_bytes(s) for s in segments),
        "oldest_ns": oldest,
        "newest_ns": newest,
    }


def _index_entry(segment: Segment, which: int) -> tuple | None:
    """The first (0) or last (-1) entry of a segment's index (IDX_ENTRY's fields), or None."""
    size = IDX_SIZE
    try:
        with open(segment.idx, "rb") as f:
            n = os.fstat(f.fileno()).st_size // size
            if n == 0:
                return None
            f.seek(0 if which == 0 else (n - 1) * size)
            return IDX_ENTRY.unpack(f.read(size))
    except (FileNotFoundError, ValueError, struct.error):
        return None


# ---------------------------------------------------------------------------- the lock

LOCK_FILE = "relay.lock"


class CacheBusy(SpeedDataError, RuntimeError):
    """Another relay writes this cache folder; ``pid`` is its process id (or None)."""

    def __init__(self, pid: int | None, message: str):
        super().__init__(message)
        self.pid = pid


def lock_cache(cache_dir: Path) -> int:
    """Take the cache folder's writer lock (``relay.lock``, flock(2)) for this process;
    returns the fd that holds it (close it to let go; the kernel lets go when the process
    dies, ``kill -9`` too). Raises CacheBusy, naming the holder's pid."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _lock_pid(fd)
        os.close(fd)
        raise CacheBusy(
            pid,
            f"{cache_dir} is written by another relay (pid {pid or '?'}): one relay per "
            "cache folder; stop it, or give this one another cache.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def cache_writer_pid(cache_dir: Path) -> int | None:
    """The pid of the relay writing ``cache_dir``, or None when none holds its lock."""
    try:
        fd = os.open(Path(cache_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _lock_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (ValueError, IndexError, OSError):
        return None


# ---------------------------------------------------------------------------- the cache folder


def resolve_cache_dir(cache: Any = None, config: Any = None) -> Path:
    """The cache folder: ``cache`` (a path or a Config), else the config's ``cache.dir``."""
    if isinstance(cache, Config):
        return Path(cache.cache.dir)
    if cache is not None:
        return Path(cache)
    if isinstance(config, Config):
        return Path(config.cache.dir)
    from .config import load_config

    return Path(load_config(config).cache.dir)


def cache_channels(cache_dir: Path) -> list[str]:
    """Channel names that have segments in the cache (channel folders or tag links)."""
    cache_dir = Path(cache_dir)
    names: set[str] = set()
    if cache_dir.is_dir():
        for d in cache_dir.iterdir():
            if d.is_dir() and d.name not in ("tags", "rejected") and any(d.glob("*.avro")):
                names.add(d.name)
        tags = cache_dir / "tags"
        if tags.is_dir():
            for d in tags.glob("*/*"):
                if d.is_dir() and any(d.glob("*.avro")):
                    names.add(d.name)
    return sorted(names)


def segment_candidates(cache_dir: Path, channel: str, tag: str | None) -> list[list[Path]]:
    """Per segment (by file name, oldest first), every path it is known by: the channel
    folder and the tags' links (retention or a user may have removed some names)."""
    dirs = [cache_dir / channel]
    tags = cache_dir / "tags"
    if tag is not None:
        dirs.insert(0, tags / tag / channel)
    elif tags.is_dir():
        dirs += sorted(p / channel for p in tags.iterdir() if p.is_dir())
    by_name: dict[str, list[Path]] = {}
    for d in dirs:
        try:
            paths = sorted(d.glob("*.avro")) if d.is_dir() else []
        except OSError:
            continue
        for p in paths:
            by_name.setdefault(p.name, []).append(p)
    return [by_name[k] for k in sorted(by_name)]
