"""Hostile control requests: deep JSON, several frames, huge bodies, special files as
schema paths, wrong types. The relay (a child process, both engines) stays up, answers
each with an error, logs it, and serves the next request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import zmq

from relay_helpers import ENGINE_NAMES, write_config
from speeddata.control import ControlError, wait_for_relay
from speeddata.relay import CONTROL_MESSAGE_LIMIT


@pytest.fixture(params=ENGINE_NAMES)
def relay(request, tmp_path):
    ipc = Path(tempfile.mkdtemp(prefix="sd-fault-", dir="/tmp"))
    info = write_config(tmp_path / "relay.toml", ipc)
    log = tmp_path / "relay.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "speeddata.relay", "-c", str(info["path"]),
             "--engine", request.param],
            stdout=f,
            stderr=f,
        )
    try:
        try:
            wait_for_relay(info["control"], timeout=20)
        except ControlError:
            raise AssertionError(f"relay did not start:\n{log.read_text()}") from None
        info["proc"], info["log"] = proc, log
        yield info
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(ipc, ignore_errors=True)
    text = log.read_text()
    assert "Traceback" not in text and "Exception ignored" not in text, text


def ask(endpoint: str, frames: list[bytes], timeout: float = 5.0) -> dict | None:
    """Send raw frames on a fresh REQ socket; the decoded reply, or None if none came."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        return json.loads(sock.recv())
    finally:
        sock.close()


def still_serving(info) -> None:
    assert info["proc"].poll() is None, info["log"].read_text()
    reply = ask(info["control"], [b'{"cmd": "status"}'])
    assert reply is not None and reply["ok"], reply


def add_with_schema(path) -> bytes:
    return json.dumps({"cmd": "add", "channel": {"name": "hostile", "schema": str(path)}}).encode()


@pytest.mark.timeout(120)
def test_hostile_requests_are_answered(relay, tmp_path):
    fifo = tmp_path / "schema.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.avsc"
    big.write_text(" " * (2 << 20) + "{}")
    link = tmp_path / "zero.avsc"
    link.symlink_to("/dev/zero")
    cases = [
        ([b"[" * 100_000 + b"]" * 100_000], "nested too deeply"),
        ([b'{"cmd": "add", "channel": ' * 20_000 + b"}" * 20_000], "nested too deeply"),
        ([b'{"cmd": "status"}', b'{"cmd": "status"}'], "one frame"),
        ([b'{"cmd": "status"}', b"", b"x" * 1000], "one frame"),
        ([b'{"cmd": "' + b"x" * (2 << 20) + b'"}'], "at most"),
        ([b"\xff\xfe\x00"], "not JSON"),
        ([b""], "not JSON"),
        ([b"null"], '"cmd"'),
        ([add_with_schema("/dev/zero")], "not a regular file"),
        ([add_with_schema(link)], "not a regular file"),
        ([add_with_schema(fifo)], "not a regular file"),
        ([add_with_schema(tmp_path)], "a folder"),
        ([add_with_schema(big)], "at most"),
        ([add_with_schema("/nonexistent/x.avsc")], "cannot read schema file"),
        ([b'{"cmd": "add", "channel": {"name": ["a"], "schema": {}}}'], "channel.name"),
        ([b'{"cmd": "add", "channel": {"name": {"a": 1}, "schema": {}}}'], "channel.name"),
        ([b'{"cmd": "add", "channel": {"name": "relay.lock", "schema": {}}}'], "reserved"),
        ([b'{"cmd": "add", "channel": {"name": "rejected", "schema": {}}}'], "reserved"),
        ([b'{"cmd": "add", "channel": {"name": "x", "port": 1e300, "schema": {}}}'], "port"),
        ([b'{"cmd": "add", "channel": {"name": "x", "decimation": 1e999}}'], "decimation"),
        ([b'{"cmd": "remove", "name": [1]}'], '"name"'),
        ([b'{"cmd": "rotate", "name": {"a": []}}'], '"name"'),
        ([b'{"cmd": 1}'], '"cmd"'),
    ]
    for frames, says in cases:
        reply = ask(relay["control"], frames)
        assert reply is not None, (frames[0][:60], relay["log"].read_text()[-2000:])
        assert reply["ok"] is False and says in reply["error"], (frames[0][:60], reply)
        still_serving(relay)
    log = relay["log"].read_text()
    assert log.count("control request refused") >= len(cases)


@pytest.mark.timeout(120)
def test_a_body_past_the_message_limit_drops_only_that_connection(relay):
    """Past ZMQ_MAXMSGSIZE ZeroMQ drops the sender's connection (no reply); the relay
    is not touched and answers the next request."""
    reply = ask(relay["control"], [b" " * (CONTROL_MESSAGE_LIMIT + 1)], timeout=3)
    assert reply is None
    still_serving(relay)
