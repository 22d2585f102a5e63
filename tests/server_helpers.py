"""Helpers for the live server tests: a relay process on a test config, a server on the
same config (in a process or on the test's IOLoop), websocket clients, frame parsing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_tcp_port
from relay_helpers import wait_for, write_config
from speeddata.control import ControlError, request


def server_config(tmp_path: Path, ipc_dir: Path, extra: str = "", **kwargs) -> dict:
    """A relay config (relay_helpers.write_config) with a [server] section on a free port."""
    info = write_config(tmp_path / "speeddata.toml", ipc_dir, **kwargs)
    port = free_tcp_port()
    info["http"] = ("127.0.0.1", port)
    info["url"] = f"http://127.0.0.1:{port}"
    info["ws"] = f"ws://127.0.0.1:{port}/ws"
    text = info["path"].read_text()
    text += f'\n[server]\nlisten = "127.0.0.1:{port}"\nframe_hz = 30\n{extra}\n'
    info["path"].write_text(text)
    return info


def relay_status(endpoint: str) -> dict | None:
    try:
        return request(endpoint, {"cmd": "status"}, timeout=0.5)
    except ControlError:
        return None


class Processes:
    """Child processes of a test, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, log_dir: Path):
        self.procs: list[subprocess.Popen] = []
        self.log_dir = log_dir

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def relay(self, info: dict) -> subprocess.Popen:
        proc = self.start("relay", "-m", "speeddata.relay", "-c", str(info["path"]))
        wait_for(lambda: relay_status(info["control"]), timeout=30)
        return proc

    def server(self, info: dict) -> subprocess.Popen:
        proc = self.start("server", "-m", "speeddata.server", "-c", str(info["path"]))
        wait_for(lambda: _http_ok(info["url"] + "/api/status") or proc.poll() is not None,
                 timeout=30)
        assert proc.poll() is None, self.log("server")
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def http_json(url: str, method: str = "GET", body=None, headers=None):
    """(status, parsed JSON or raw bytes) of a request to 127.0.0.1."""
    import urllib.error
    import urllib.request

    data = None if body is None else (body if isinstance(body, bytes) else
                                      json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except urllib.error.URLError:  # nothing listens (yet)
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def deadline(seconds: float):
    end = time.monotonic() + seconds

    def left() -> float:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {seconds} s")
        return remaining

    return left
