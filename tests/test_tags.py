"""Tags: create/list/remove, name and range checks, pinning against retention (hard
links, st_nlink > 1), reading a tag whose channel-folder names are gone, and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import speeddata
from _cachedata import T0, write_channel
from conftest import SCHEMAS
from speeddata.cache import cache_segments, enforce_retention, segment_bytes
from speeddata.schema import Schema
from speeddata.tags import TagError, add_tag, get_tag, list_tags, remove_tag, validate_tag_name

SECOND = 1_000_000_000


def engine_record(k, rng):
    return {"time": T0 + k * 10_000_000, "rpm": float(k), "torque": 0.5 * k,
            "temperature": 20.0, "throttle": 1.0, "state": "RUN", "counter": k}


def power_record(k, rng):
    return {"time": T0 + k * 10_000_000, "voltage": float(k), "current": 1.0, "noise": 0.0}


@pytest.fixture
def cache(tmp_path, schemas_dir):
    """Two channels, 10 s each (1000 records, 100 per segment: 10 segments of 1 s)."""
    for name, make, schema in (("engine", engine_record, "engine"), ("power", power_record,
                                                                      "power")):
        write_channel(tmp_path, name, Schema(schemas_dir / f"{schema}.avsc"), make, 1000,
                      records_per_datagram=5, datagrams_per_block=4, blocks_per_segment=5,
                      recv_step_ns=50_000_000)
    return tmp_path


def test_add_list_remove(cache):
    tag = add_tag(cache, "run-1", T0 + 2 * SECOND, T0 + 4 * SECOND, ["engine"], "first run",
                  now_ns=T0 + 100 * SECOND)
    assert tag.channels == ("engine",) and tag.note == "first run"
    assert tag.n_segments == 2  # the segments of [2 s, 3 s) and [3 s, 4 s)
    folder = cache / "tags" / "run-1"
    meta = json.loads((folder / "tag.json").read_text())
    assert meta["start_ns"] == T0 + 2 * SECOND and meta["channels"] == ["engine"]
    for avro in (folder / "engine").glob("*.avro"):
        assert avro.stat().st_nlink == 2
        assert (cache / "engine" / avro.name).samefile(avro)
        assert avro.with_suffix(".idx").stat().st_nlink == 2
        assert avro.with_suffix(".recv").stat().st_nlink == 2
    add_tag(cache, "all", T0, T0 + SECOND, note="", now_ns=T0 + 100 * SECOND)
    assert [t.name for t in list_tags(cache)] == ["all", "run-1"]
    assert get_tag(cache, "all").channels == ("engine", "power")
    with pytest.raises(TagError, match="exists"):
        add_tag(cache, "all", T0, T0 + SECOND, now_ns=T0 + 100 * SECOND)
    removed = remove_tag(cache, "run-1")
    assert removed.name == "run-1" and not folder.exists()
    assert all(p.avro.stat().st_nlink == 1 for p in cache_segments(cache)
               if p.channel == "engine" and p.avro.name > "20251124T160002")
    with pytest.raises(TagError, match=r"no tag 'run-1'; tags: \['all'\]"):
        remove_tag(cache, "run-1")
    assert not [p for p in (cache / "tags").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["../x", "/", "", "a/b", ".hidden", "x" * 65, "tab\tname",
                                  "..", None, 5])
def test_bad_names(cache, name):
    with pytest.raises(TagError, match="not a tag name"):
        add_tag(cache, name, T0, T0 + SECOND, now_ns=T0 + 100 * SECOND)
    assert not (cache / "tags").exists() or not any((cache / "tags").iterdir())
    assert not (cache.parent / "x").exists()


def test_good_names():
    for name in ["a", "A0", "run_1.2-b", "9" * 64]:
        assert validate_tag_name(name) == name


def test_range_must_be_in_the_cache(cache):
    later = T0 + 100 * SECOND
    with pytest.raises(TagError, match=r"before the oldest data.*available: 2025-11-24T16:00:00"):
        add_tag(cache, "early", T0 - SECOND, T0 + SECOND, now_ns=later)
    with pytest.raises(TagError, match="after the newest data.*available"):
        add_tag(cache, "late", T0 + 20 * SECOND, T0 + 30 * SECOND, now_ns=later)
    with pytest.raises(TagError, match="in the future"):
        add_tag(cache, "future", T0, later + 60 * SECOND, now_ns=later)
    with pytest.raises(TagError, match=r"no channel 'volts'.*\['engine', 'power'\]"):
        add_tag(cache, "x", T0, T0 + SECOND, ["volts"], now_ns=later)
    with pytest.raises(speeddata.SpeedDataError, match="empty time range"):
        add_tag(cache, "x", T0 + SECOND, T0, now_ns=later)
    with pytest.raises(TagError, match="needs both"):
        add_tag(cache, "x", None, T0, now_ns=later)
    assert list_tags(cache) == []


def test_a_range_without_data_is_refused_inside_the_span_as_outside(tmp_path, schemas_dir):
    """Issue 10, item 20: a range in a gap of the data was accepted (an empty tag) while
    one after the data was refused; both are refused now, with the range that holds data."""

    def gapped(k, rng):  # 5 s of data, a 10 s gap, 5 s of data
        return dict(engine_record(k, rng), time=T0 + k * 10_000_000 + (10 * SECOND if k >= 500
                                                                       else 0))

    write_channel(tmp_path, "engine", Schema(schemas_dir / "engine.avsc"), gapped, 1000,
                  records_per_datagram=5, datagrams_per_block=4, blocks_per_segment=5,
                  recv_step_ns=50_000_000)
    later = T0 + 100 * SECOND
    with pytest.raises(TagError, match=r"no data of engine from .* \(end excluded\).*available"):
        add_tag(tmp_path, "gap", T0 + 7 * SECOND, T0 + 12 * SECOND, now_ns=later)
    # the end is excluded: a range ending where the data resumes holds none of it
    with pytest.raises(TagError, match="no data of engine"):
        add_tag(tmp_path, "gap", T0 + 6 * SECOND, T0 + 15 * SECOND, now_ns=later)
    assert list_tags(tmp_path) == []
    tag = add_tag(tmp_path, "edge", T0 + 6 * SECOND, T0 + 15 * SECOND + 1, now_ns=later)
    assert tag.n_segments == 1
    assert speeddata.read(tmp_path, "engine", tag="edge")["counter"].tolist() == [500]


def test_tag_pins_segments_against_retention(cache):
    """Fill the cache past its budget: the tagged range survives retention, the rest
    rotates away; after the tag is removed it can go too."""
    segments = cache_segments(cache)
    total = sum(segment_bytes(s) for s in segments)
    tag = add_tag(cache, "keep", T0 + 3 * SECOND, T0 + 5 * SECOND, ["engine"],
                  now_ns=T0 + 100 * SECOND)
    pinned = {p.name for p in (cache / "tags" / "keep" / "engine").glob("*.avro")}
    assert len(pinned) == tag.n_segments >= 2
    before = speeddata.read(cache, "engine", T0 + 3 * SECOND, T0 + 5 * SECOND)
    deleted = enforce_retention(cache, budget_bytes=total // 10)
    assert deleted and not {s.avro.name for s in deleted if s.channel == "engine"} & pinned
    left = {s.avro.name for s in cache_segments(cache) if s.channel == "engine"}
    assert left == pinned
    assert not [s for s in cache_segments(cache) if s.channel == "power"]
    after = speeddata.read(cache, "engine", T0 + 3 * SECOND, T0 + 5 * SECOND)
    assert after["rpm"].tolist() == before["rpm"].tolist() and after.n_rows == 200
    assert speeddata.read(cache, "engine", tag="keep")["rpm"].tolist() == before["rpm"].tolist()
    # still over a zero budget while pinned; after tag rm the segments can go
    assert enforce_retention(cache, budget_bytes=0) == []
    remove_tag(cache, "keep")
    assert {s.avro.name for s in enforce_retention(cache, budget_bytes=0)} == pinned
    assert cache_segments(cache) == []


def test_tag_read_after_channel_folder_names_are_gone(cache):
    add_tag(cache, "keep", T0 + SECOND, T0 + 2 * SECOND, ["engine"], "n",
            now_ns=T0 + 100 * SECOND)
    expected = speeddata.read(cache, "engine", T0 + SECOND, T0 + 2 * SECOND)["rpm"].tolist()
    shutil.rmtree(cache / "engine")
    assert speeddata.read(cache, "engine", tag="keep")["rpm"].tolist() == expected
    # found without naming the tag too: read looks at the tags' links
    got = speeddata.read(cache, "engine", T0 + SECOND, T0 + 2 * SECOND)["rpm"].tolist()
    assert got == expected
    with pytest.raises(speeddata.SpeedDataError, match="holds channels"):
        speeddata.read(cache, "power", tag="keep")
    # a new tag inside the old one still finds the data through the first tag's links
    add_tag(cache, "inner", T0 + SECOND, T0 + SECOND + SECOND // 2, ["engine"],
            now_ns=T0 + 100 * SECOND)
    remove_tag(cache, "keep")
    inner = speeddata.read(cache, "engine", tag="inner")
    assert inner["rpm"].tolist() == expected[:50]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "speeddata.commands", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_cli_add_list_rm(cache):
    start = speeddata.reader.format_time(T0 + SECOND)
    end = speeddata.reader.format_time(T0 + 3 * SECOND)
    r = _cli("tag", "add", "cli-run", "--start", start, "--end", end, "--channels", "power",
             "--note", "from the CLI", "--cache", str(cache))
    assert r.returncode == 0, r.stderr
    assert "tag cli-run" in r.stdout and "pinned" in r.stdout
    r = _cli("tag", "list", "--json", "--cache", str(cache))
    listed = json.loads(r.stdout)
    assert [t["name"] for t in listed] == ["cli-run"] and listed[0]["note"] == "from the CLI"
    r = _cli("tag", "list", "--cache", str(cache))
    assert r.stdout.startswith("cli-run\t")
    r = _cli("tag", "add", "../evil", "--start", start, "--end", end, "--cache", str(cache))
    assert r.returncode == 2 and "not a tag name" in r.stderr and "Traceback" not in r.stderr
    r = _cli("tag", "add", "old", "--start", "2001-01-01T00:00:00Z", "--end", end,
             "--cache", str(cache))
    assert r.returncode == 2 and "available: " in r.stderr
    r = _cli("tag", "rm", "cli-run", "--cache", str(cache))
    assert r.returncode == 0 and "removed tag cli-run" in r.stdout
    assert list_tags(cache) == []


# -- a tag is what it kept ---------------------------------------------------------------


def test_tag_reads_what_it_kept_after_a_replay(tmp_path, schemas_dir):
    """The issue: `pivot --tag run2` gave 999 rows, 1,998 after old data was replayed into
    the same cache. Here the replay lands both in new segments and as blocks appended to
    the segment that was still being written when the tag was made; the tag (read and
    pivot) returns the same rows, while a read by time sees everything stored."""
    import io

    import fastavro
    import h5py

    from speeddata.pivot import pivot

    schema = Schema(schemas_dir / "engine.avsc")
    first = write_channel(tmp_path, "engine", schema, engine_record, 300,
                          records_per_datagram=5, datagrams_per_block=4,
                          blocks_per_segment=5, leave_open=True)
    assert first.writer is not None  # the newest segment is still being written
    start, end = T0 + SECOND, T0 + 3 * SECOND
    try:
        tag = add_tag(tmp_path, "run2", start, end, ["engine"], now_ns=T0 + 100 * SECOND)
        assert tag.segments == {"engine": {s.avro.name: 5 for s in first.segments[1:]}}
        assert get_tag(tmp_path, "run2").segments == tag.segments
        before = speeddata.read(tmp_path, "engine", tag="run2")
        assert before.n_rows == 200

        # replay: the same records again, appended to the open segment and in new segments
        parsed = fastavro.parse_schema(schema.avsc)
        buf = io.BytesIO()
        for k in range(150, 170):
            fastavro.schemaless_writer(buf, parsed, engine_record(k, None))
        first.writer.append([buf.getvalue()], [T0 + 50 * SECOND], [999], [20],
                            T0 + 150 * 10_000_000, T0 + 169 * 10_000_000)
    finally:
        if not first.writer.closed:
            first.writer.close()
    write_channel(tmp_path, "engine", schema, engine_record, 300, t_open_ns=T0 + 60 * SECOND,
                  records_per_datagram=5, datagrams_per_block=4, blocks_per_segment=5)

    assert speeddata.read(tmp_path, "engine", start, end).n_rows == 200 + 20 + 200
    after = speeddata.read(tmp_path, "engine", tag="run2")
    assert after.n_rows == 200
    for name in ("time", "rpm", "counter"):
        assert after[name].tolist() == before[name].tolist()
    pivot(tmp_path, tmp_path / "run2.h5", tag="run2", compression="none")
    with h5py.File(tmp_path / "run2.h5") as f:
        assert f["engine/time"].shape == (200,)
        assert f["engine/counter"][:].tolist() == list(range(100, 300))


def test_tag_made_before_segments_were_kept_reads_its_links(cache):
    """A tag.json without "segments" (older tags) reads its own links, not the channel
    folder's newer segments."""
    add_tag(cache, "old", T0 + 2 * SECOND, T0 + 4 * SECOND, ["engine"],
            now_ns=T0 + 100 * SECOND)
    meta_path = cache / "tags" / "old" / "tag.json"
    meta = json.loads(meta_path.read_text())
    del meta["segments"]
    meta_path.write_text(json.dumps(meta))
    assert get_tag(cache, "old").segments is None
    before = speeddata.read(cache, "engine", tag="old")["counter"].tolist()
    assert before == list(range(200, 400))
    write_channel(cache, "engine", Schema(SCHEMAS / "engine.avsc"), engine_record, 1000,
                  t_open_ns=T0 + 60 * SECOND, records_per_datagram=5, datagrams_per_block=4,
                  blocks_per_segment=5)
    assert speeddata.read(cache, "engine", tag="old")["counter"].tolist() == before


def test_tag_channel_without_kept_blocks_reads_no_rows(cache):
    """A channel of the tag with no block in its range: zero rows, not another range."""
    add_tag(cache, "half", T0 + 9 * SECOND, T0 + 10 * SECOND, now_ns=T0 + 100 * SECOND)
    write_channel(cache, "power", Schema(SCHEMAS / "power.avsc"), power_record, 100,
                  t_open_ns=T0 + 60 * SECOND)
    folder = cache / "tags" / "half"
    meta = json.loads((folder / "tag.json").read_text())
    meta["segments"]["power"] = {}
    (folder / "tag.json").write_text(json.dumps(meta))
    assert speeddata.read(cache, "power", tag="half").n_rows == 0


def test_a_tag_reports_its_data_not_the_preallocated_space(tmp_path, schemas_dir):
    """Issue 10, item 19: "3 segments (201.6 MB) pinned" for 0.7 MB of records: a segment
    still being written is pre-allocated; the tag reports its data, the allocation apart."""
    from relay_helpers import encode
    from relay_helpers import engine_record as relay_record
    from speeddata.cache import SegmentWriter

    schema = Schema(schemas_dir / "engine.avsc")
    w = SegmentWriter(tmp_path / "engine", schema, "engine", 1, 1024 * 1024, t_open_ns=T0)
    try:
        recs = [relay_record(i) for i in range(10)]
        times = [r["time"] for r in recs]
        w.append([encode(schema, [r]) for r in recs], times, list(range(10)), [1] * 10,
                 min(times), max(times))
        tag = add_tag(tmp_path, "open", min(times), max(times) + 1,
                      now_ns=max(times) + SECOND)
        assert tag.n_allocated >= 1024 * 1024 > 10 * tag.n_bytes
        assert tag.n_bytes == w.end + 40 + 10 * 16
        assert get_tag(tmp_path, "open").n_bytes == tag.n_bytes
        r = subprocess.run([sys.executable, "-m", "speeddata.commands", "tag", "list",
                            "--cache", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert "kB of data (1.0 MB on disk)" in r.stdout, r.stdout
    finally:
        w.close()
