"""The cache folder's writer lock (one relay per folder) and ``speeddata cache info|recover``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import fastavro
import pytest

from _cachedata import write_channel
from conftest import SCHEMAS
from relay_helpers import engine_record, write_config
from speeddata.cache import (
    CacheBusy,
    cache_writer_pid,
    list_segments,
    lock_cache,
    segment_needs_recovery,
)
from speeddata.config import load_config
from speeddata.relay import Relay, RelayError
from speeddata.schema import Schema

ENGINE = Schema(SCHEMAS / "engine.avsc")


@pytest.fixture
def ipc_dirs():
    dirs = [Path(tempfile.mkdtemp(prefix="sd-cc-", dir="/tmp")) for _ in range(2)]
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "speeddata.commands", "cache", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_lock_is_exclusive_and_names_the_holder(tmp_path):
    fd = lock_cache(tmp_path)
    try:
        assert cache_writer_pid(tmp_path) == os.getpid()
        with pytest.raises(CacheBusy, match=f"another relay \\(pid {os.getpid()}\\)"):
            lock_cache(tmp_path)
    finally:
        os.close(fd)
    assert cache_writer_pid(tmp_path) is None
    os.close(lock_cache(tmp_path))  # free again


def test_second_relay_on_one_cache_folder_is_refused(tmp_path, ipc_dirs):
    a = write_config(tmp_path / "a.toml", ipc_dirs[0], shared=False)
    b = write_config(tmp_path / "b.toml", ipc_dirs[1], shared=False)
    assert a["cache"] == b["cache"]
    first = Relay(load_config(a["path"]), "python")
    first.start()
    try:
        second = Relay(load_config(b["path"]), "python")
        with pytest.raises(RelayError, match="written by another relay .pid " + str(os.getpid())):
            second.start()
        second.close()
        r = cli("recover", "--cache", str(a["cache"]))
        assert r.returncode == 2 and "another cache.dir" not in r.stderr  # issue 10, item 20
        assert f"being written by a running relay (pid {os.getpid()}): stop the relay first" \
            in r.stderr and "recovers the cache when it starts" in r.stderr
        r = cli("info", "--cache", str(a["cache"]), "--json")
        assert json.loads(r.stdout)["relay_pid"] == os.getpid()
    finally:
        first.close()
    assert cache_writer_pid(a["cache"]) is None  # closing the relay let go
    second = Relay(load_config(b["path"]), "python")
    second.start()
    second.close()


def crash(writer) -> None:
    """Let go of a SegmentWriter's files as a killed relay does: nothing trimmed."""
    writer._map.close()
    os.close(writer._fd)
    writer._idx.close()
    writer._recv.close()
    writer.closed = True


def test_cache_recover_and_info(tmp_path):
    cache = tmp_path / "cache"
    written = write_channel(cache, "engine", ENGINE, lambda k, rng: engine_record(k), 40,
                            leave_open=True)
    crash(written.writer)
    segs = list_segments(cache, "engine")
    assert segment_needs_recovery(segs[-1])
    r = cli("info", "--cache", str(cache))
    assert r.returncode == 0, r.stderr
    assert "no relay writing it" in r.stdout
    assert f"engine\t{len(segs)} segments" in r.stdout and "\t1 open\t" in r.stdout
    r = cli("recover", "--cache", str(cache))
    assert r.returncode == 0, r.stderr
    assert f"recovered {segs[-1].avro}" in r.stdout
    records = []
    for seg in list_segments(cache, "engine"):
        assert not segment_needs_recovery(seg)
        with open(seg.avro, "rb") as f:
            records.extend(fastavro.reader(f))
    assert records == written.records
    info = json.loads(cli("info", "--cache", str(cache), "--json").stdout)
    (engine,) = info["channels"]
    assert (engine["name"], engine["open"], info["relay_pid"]) == ("engine", 0, None)
    assert engine["oldest_ns"] == written.time_ns[0] and engine["newest_ns"] == written.time_ns[-1]
    r = cli("recover", "--cache", str(cache))
    assert "every segment is complete" in r.stdout
    r = cli("info", "--cache", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no cache folder there" in r.stderr
