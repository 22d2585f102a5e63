"""The relay process's checks (issue 10): request fields checked for type and form,
channel names that cannot collide with the cache's own files, the segment size fitted to
a small file system, and the log saying why records are missing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from relay_helpers import Sender, encode, engine_record, wait_for, write_config
from speeddata.config import RESERVED_NAMES, ConfigError, load_config
from speeddata.control import format_status
from speeddata.relay import ProblemLog, Relay, RelayError


@pytest.fixture
def ipc_dir():
    d = Path(tempfile.mkdtemp(prefix="sd-trust-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def relay_obj(tmp_path, ipc_dir):
    """A Relay that is configured but not started: handle() checks requests."""
    info = write_config(tmp_path / "relay.toml", ipc_dir)
    return Relay(load_config(info["path"]), engine="python")


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ({"cmd": "add", "channel": {"name": ["x"], "schema": {}}}, "a channel name is a string"),
        ({"cmd": "add", "channel": {"name": {"a": 1}, "schema": {}}}, "not a table"),
        ({"cmd": "add", "channel": {"name": "relay.lock", "schema": {}}}, "reserved"),
        ({"cmd": "add", "channel": {"name": "Tags", "schema": {}}}, "reserved"),
        ({"cmd": "add", "channel": {"name": "x", "port": "1"}}, "channel.port"),
        ({"cmd": "add", "channel": {"name": "x", "port": 1.5}}, "channel.port"),
        ({"cmd": "add", "channel": {"name": "x", "decimation": 2**40}}, "channel.decimation"),
        ({"cmd": "add", "channel": {"name": "x", "id": -1}}, "channel.id"),
        ({"cmd": "add", "channel": {"name": "x", "time": 5}}, "channel.time"),
        ({"cmd": "add", "channel": {"name": "x", "schema": 5}}, "channel.schema"),
        ({"cmd": "add", "channel": {"name": "x", "schema": "a\0b"}}, "channel.schema"),
        ({"cmd": "add", "channel": {"name": "x", "schema": "x" * 5000}}, "channel.schema"),
        ({"cmd": "add", "channel": {"name": "x", "nope": 1}}, "unknown key"),
        ({"cmd": "add", "channel": [1]}, '"channel" must be an object'),
        ({"cmd": "add"}, '"channel" is missing'),
        ({"cmd": "remove", "name": ["x"]}, '"name" must be a channel name'),
        ({"cmd": "remove"}, '"name" must be a channel name'),
        ({"cmd": "rotate", "name": {"x": 1}}, '"name" must be a channel name'),
        ({"cmd": "status", "extra": 1}, "unknown key"),
        ({"cmd": ["status"]}, '"cmd"'),
        ({"cmd": "nope"}, "unknown cmd"),
        ([1, 2], '"cmd"'),
    ],
)
def test_request_fields_checked(relay_obj, request_, says):
    reply = relay_obj.handle(request_)
    assert reply["ok"] is False and says in reply["error"], reply
    assert "internal error" not in reply["error"]


def test_answer_refuses_malformed_requests(relay_obj):
    deep = b"[" * 100_000 + b"]" * 100_000
    assert "nested too deeply" in relay_obj.answer([deep])["error"]
    assert "one frame" in relay_obj.answer([b'{"cmd": "status"}', b"x"])["error"]
    assert "at most" in relay_obj.answer([b" " * (2 << 20)])["error"]
    assert "not JSON" in relay_obj.answer([b"\xff\xfe{"])["error"]
    long_error = relay_obj.answer([json.dumps({"cmd": "x" * 100_000}).encode()])["error"]
    assert len(long_error) < 2000


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_reserved_names_refused_by_the_config(tmp_path, schemas_dir, name):
    path = tmp_path / "c.toml"
    path.write_text(
        f'[[channels]]\nname = "{name.upper()}"\nschema = "{schemas_dir / "engine.avsc"}"\n'
    )
    with pytest.raises(ConfigError, match="reserved"):
        load_config(path)


def test_reserved_runtime_channel_skipped_with_a_warning(relay_obj, caplog):
    state = relay_obj.state_dir
    state.mkdir(parents=True, exist_ok=True)
    schema = {"type": "record", "name": "r", "fields": [{"name": "x", "type": "double"}]}
    added = [
        {"name": "tags", "port": None, "schema": schema, "decimation": 1, "id": 9},
        {"name": "fine", "port": None, "schema": schema, "decimation": 1, "id": 10},
    ]
    (state / "relay-channels.json").write_text(json.dumps({"added": added, "removed": []}))
    with caplog.at_level(logging.WARNING, logger="speeddata.relay"):
        served = [ch.name for ch, _ in relay_obj._channels_to_serve()]
    assert "fine" in served and "tags" not in served
    assert "reserved name" in caplog.text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ["compiled", "python"])
def test_segment_size_fitted_to_a_small_file_system(tmpfs, ipc_dir, caplog, engine):
    """64 MiB segments on an 8 MiB file system never stored a record; the relay now uses
    segments that fit (two per channel), says so, and stores."""
    folder = tmpfs("8m")
    info = write_config(folder / "relay.toml", ipc_dir, segment_size="64 MiB", budget="80%")
    relay = Relay(load_config(info["path"]), engine=engine)
    sender = Sender()
    try:
        with caplog.at_level(logging.WARNING, logger="speeddata.relay"):
            relay.start()
        # 80 % of 8 MiB, less what the config and lock take, / (2 channels x 2 segments)
        assert relay.segment_size == 25 * 64 * 1024
        assert "does not fit twice per channel" in caplog.text
        assert f"cache.segment_size to at most {25 * 64 * 1024}" in caplog.text
        from speeddata.schema import Schema

        schema = Schema(relay.config.channel("engine").schema.avsc)
        for i in range(20):
            sender.send(info["ports"]["engine"], encode(schema, [engine_record(i)]))

        def stored():
            c = [ch for ch in relay.status()["channels"] if ch["name"] == "engine"][0]
            return c["counters"].get("stored_records", 0) == 20

        wait_for(stored)
        counters = [ch for ch in relay.status()["channels"] if ch["name"] == "engine"][0]
        assert counters["counters"]["store_failed"] == 0
    finally:
        sender.close()
        relay.close()


def test_too_small_a_file_system_is_refused_naming_the_fix(tmpfs, ipc_dir):
    folder = tmpfs("128k")
    info = write_config(folder / "relay.toml", ipc_dir, segment_size="64 MiB", budget="1 GB")
    relay = Relay(load_config(info["path"]), engine="python")
    try:
        with pytest.raises(RelayError, match="too little for 2 channel") as exc:
            relay.start()
        assert "cache.enabled = false" in str(exc.value)
    finally:
        relay.close()


def status_with(rejects=None, counters=None, shared=None) -> dict:
    ch = {"name": "engine", "rejects": rejects or {}, "counters": counters or {}}
    return {"channels": [ch], "shared": shared}


def test_problem_log_first_reject_then_a_summary(caplog):
    plog = ProblemLog(interval=60)
    with caplog.at_level(logging.WARNING, logger="speeddata.relay"):
        plog.update(0, status_with({"truncated": 1}))
        plog.update(1, status_with({"truncated": 5}))
        plog.update(2, status_with({"truncated": 9, "bad_utf8": 1}))
        plog.update(30, status_with({"truncated": 500, "bad_utf8": 1}))
        assert caplog.text.count("rejected a datagram: truncated") == 1
        assert caplog.text.count("rejected a datagram: bad_utf8") == 1
        assert "rejected in the last" not in caplog.text  # rate-limited
        plog.update(61, status_with({"truncated": 600, "bad_utf8": 3}))
        assert "engine: 602 datagram(s) rejected in the last 60 s: bad_utf8 3, truncated 599" in (
            caplog.text
        )
        plog.update(200, status_with({"truncated": 600, "bad_utf8": 3}))
        assert caplog.text.count("rejected in the last") == 1  # nothing new: no summary


def test_problem_log_unknown_fingerprint_named(caplog):
    plog = ProblemLog()
    shared = {"rejects": {"unknown_fingerprint": 2}, "unknown_fingerprints": {"0011": 2}}
    with caplog.at_level(logging.WARNING, logger="speeddata.relay"):
        plog.update(0, status_with(shared=shared))
    assert "(shared port): rejected a datagram: unknown_fingerprint (fingerprints: 0011)" in (
        caplog.text
    )


def test_problem_log_storing(caplog):
    plog = ProblemLog(interval=60)
    with caplog.at_level(logging.WARNING, logger="speeddata.relay"):
        plog.update(0, status_with(counters={"store_failed": 0, "store_errno": 0}))
        plog.update(1, status_with(counters={"store_failed": 3, "store_errno": 28}))
        plog.update(2, status_with(counters={"store_failed": 7, "store_errno": 28}))
        assert caplog.text.count("cannot store datagrams: ENOSPC: No space left on device") == 1
        assert "free space on the cache's file system" in caplog.text
        plog.update(62, status_with(counters={"store_failed": 9, "store_errno": 28}))
        assert "engine: 9 datagram(s) not stored in the last 60 s: ENOSPC" in caplog.text
        plog.update(63, status_with(counters={"store_failed": 9, "store_errno": 28}))
        assert "engine: storing again" in caplog.text


def test_status_table_says_why():
    status = {
        "channels": [
            {
                "name": "engine",
                "counters": {"rejected": 3, "store_failed": 2},
                "rejects": {"truncated": 2, "bad_utf8": 1},
                "store_error": "ENOSPC: No space left on device",
            }
        ],
        "shared": {
            "port": 26000,
            "counters": {"rejected": 4},
            "rejects": {"unknown_fingerprint": 4},
            "unknown_fingerprints": {"00112233": 4},
        },
    }
    text = format_status(status)
    assert "rejected engine: bad_utf8 1, truncated 2" in text
    assert "rejected shared :26000: unknown_fingerprint 4 (00112233: 4)" in text
    assert "not stored engine: 2 datagram(s) (ENOSPC: No space left on device)" in text


def test_a_reply_that_cannot_be_sent_reopens_the_control_socket(relay_obj, caplog):
    """A REP socket that failed to send is stuck (its state machine wants a send): the
    relay replaces it and serves the next request."""
    import zmq

    relay_obj._bind_control()
    ctx = zmq.Context.instance()
    try:
        first = ctx.socket(zmq.REQ)
        first.setsockopt(zmq.LINGER, 0)
        first.connect(relay_obj.config.relay.control)
        first.send(b'{"cmd": "status"}')
        assert relay_obj._rep.poll(5000)

        def refuse(*args, **kwargs):
            raise zmq.ZMQError(zmq.EFSM)

        relay_obj._rep.send = refuse
        with caplog.at_level(logging.ERROR, logger="speeddata.relay"):
            assert relay_obj._serve_request() is False
        assert "cannot send a control reply" in caplog.text
        first.close()
        second = ctx.socket(zmq.REQ)
        second.setsockopt(zmq.LINGER, 0)
        second.connect(relay_obj.config.relay.control)
        second.send(b'{"cmd": "status"}')
        assert relay_obj._rep.poll(5000)
        assert relay_obj._serve_request() is True
        assert second.poll(5000)
        assert json.loads(second.recv())["ok"]
        second.close()
    finally:
        relay_obj._close_sockets()


def test_deeply_nested_schema_answered(relay_obj):
    inner: dict = {"type": "record", "name": "r0", "fields": [{"name": "x", "type": "int"}]}
    for i in range(1, 3000):
        inner = {"type": "record", "name": f"r{i}", "fields": [{"name": "f", "type": inner}]}
    reply = relay_obj.handle({"cmd": "add", "channel": {"name": "deep", "schema": inner}})
    assert reply["ok"] is False and "nested too deeply" in reply["error"], reply


def test_config_schema_that_is_not_a_file(tmp_path):
    fifo = tmp_path / "s.fifo"
    os.mkfifo(fifo)
    path = tmp_path / "c.toml"
    path.write_text(f'[[channels]]\nname = "x"\nschema = "{fifo}"\n')
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(path)


def _wide_status(name: str, n: int) -> dict:
    counters = {"datagrams": n, "records": 10 * n, "bytes": 300 * n, "rejected": n // 7,
                "kernel_drops": n // 3, "multicast_sent": n}
    cache = {"segments": 12345, "bytes": 10**12 + 7, "allocated": 10**12 + 67 * 10**6,
             "oldest_ns": 1_780_000_000 * 10**9, "newest_ns": 1_790_000_000 * 10**9}
    return {
        "pid": 4194304, "engine": "compiled", "workers": 16, "uptime": 3.6e6,
        "cache": {"enabled": True, "dir": "/srv/telemetry/" + "deep/" * 20 + "cache",
                  "bytes": 31_000, "allocated": 67_100_000, "budget_bytes": 4 * 10**12},
        "channels": [
            {"name": name, "counters": counters, "cache": cache},
            {"name": "engine", "counters": counters, "cache": cache},
        ],
        "shared": {"port": 26000, "counters": {"rejected": n, "kernel_drops": n}},
    }


@pytest.mark.parametrize("name", ["engine", "a_long_channel_name_0123456789", "x" * 64])
@pytest.mark.parametrize("n", [0, 12_345, 987_654_321, 2**63 - 1])
def test_status_table_fits_80_columns(name, n):
    """Issue 10, item 19: the table was 107 columns wide and wrapped."""
    text = format_status(_wide_status(name, n))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n" + text
    assert sum(line.startswith("engine ") for line in lines) >= 1
    if n == 12_345:  # exact counts while they fit
        assert "123,450" in text


def test_status_reports_data_and_allocation_apart():
    """Issue 10, item 19: "cache 67.1 MB" for 31 kB of data."""
    text = format_status(_wide_status("engine", 5))
    assert "31.0 kB of data (67.1 MB allocated)" in text
    assert "1.0 TB" in text  # the channel's data column
