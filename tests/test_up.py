"""``speeddata up``: relay + demo source under one supervisor, status table, clean stops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import free_tcp_port
from relay_helpers import ENGINE_NAMES, read_all_cleanly, read_channel, wait_for, write_config
from speeddata.cache import cache_segments, segment_needs_recovery
from speeddata.commands import main as cli_main
from speeddata.control import ControlError, request


def up_config(tmp_path, ipc_dir) -> dict:
    info = write_config(
        tmp_path / "up.toml",
        ipc_dir,
        channels=(("engine", "engine", 10), ("power", "power", 100), ("status", "status", 1)),
    )
    text = info["path"].read_text()
    info["path"].write_text(text + f'\n[server]\nlisten = "127.0.0.1:{free_tcp_port()}"\n')
    return info


@pytest.fixture
def ipc_dir():
    d = Path(tempfile.mkdtemp(prefix="sd-up-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _up(info, *extra) -> list[str]:
    return [sys.executable, "-m", "speeddata.commands", "up", "-c", str(info["path"]), *extra]


@contextmanager
def _running_up(info, *extra, **popen) -> Iterator[subprocess.Popen]:
    """``speeddata up`` as a child with piped text output, killed if left running."""
    up = subprocess.Popen(_up(info, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **popen)  # fmt: skip
    try:
        yield up
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def _stop_cleanly(up: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to up: it must exit 0 without a traceback."""
    up.send_signal(sig)
    _, err = up.communicate(timeout=30)
    assert up.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_up_demo_duration(tmp_path, ipc_dir, engine):
    info = up_config(tmp_path, ipc_dir)
    r = subprocess.run(
        _up(info, "--demo", "-q", "--duration", "3", "--engine", engine),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    log = (info["cache"] / "up.log").read_text()
    assert "Traceback" not in r.stderr + log and "Exception ignored" not in r.stderr + log
    # the status table was shown (refreshed), one row per channel
    assert r.stdout.count("multicast") >= 2
    # ... and fits an 80-column terminal (issue 10, item 19)
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    rows = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    assert {"engine", "power", "status"} <= rows
    # the relay was stopped cleanly: every segment trimmed, readable by fastavro
    segments = cache_segments(info["cache"])
    assert segments and not any(segment_needs_recovery(s) for s in segments)
    assert read_all_cleanly(info["cache"]) > 0
    records = read_channel(info["cache"], "engine")
    assert records and [r["counter"] for r in records] == sorted(r["counter"] for r in records)


def test_up_ctrl_c_stops_all_children(tmp_path, ipc_dir):
    info = up_config(tmp_path, ipc_dir)
    with _running_up(info, "--demo", "-q", "--engine", "python") as up:
        status = wait_for(lambda: _status(info["control"]), timeout=30)
        relay_pid = status["pid"]
        wait_for(lambda: (_status(info["control"]) or {}).get("channels", [{}])[0]["counters"]
                 .get("datagrams", 0) > 0, timeout=20)  # fmt: skip
        _stop_cleanly(up, signal.SIGINT)
    with pytest.raises(ProcessLookupError):  # the relay is gone (stopped and reaped)
        os.kill(relay_pid, 0)
    assert not any(segment_needs_recovery(s) for s in cache_segments(info["cache"]))


def _children_of(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(x) for x in f.read().split()}
    except FileNotFoundError:
        return set()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_started_with_sigint_ignored_stops_on_sigint_and_sigterm(tmp_path, ipc_dir, sig):
    """Issue 10, item 10: started from a script in the background (`speeddata up &`),
    SIGINT is ignored at start and Python installs no KeyboardInterrupt handler; up
    installs its own, stops on SIGINT (and SIGTERM) and leaves no child behind."""
    info = up_config(tmp_path, ipc_dir)
    with _running_up(info, "--demo", "-q", "--engine", "python",
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) as up:
        wait_for(lambda: _status(info["control"]), timeout=30)
        # the relay and the demo source both run
        wait_for(lambda: len(_children_of(up.pid)) >= 2, timeout=20)
        kids = _children_of(up.pid)
        _stop_cleanly(up, sig)
    assert not any(_alive(pid) for pid in kids), "a child of up is left running"
    assert not any(segment_needs_recovery(s) for s in cache_segments(info["cache"]))


def _status(endpoint):
    try:
        return request(endpoint, {"cmd": "status"}, timeout=0.5)
    except ControlError:
        return None


def test_up_relay_cannot_start(tmp_path, ipc_dir, capsys):
    info = up_config(tmp_path, ipc_dir)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", info["ports"]["power"]))
    try:
        code = cli_main(["up", "-c", str(info["path"]), "--duration", "5", "--engine", "python"])
    finally:
        blocker.close()
    err = capsys.readouterr().err
    assert code == 2
    assert "relay exited with status 2" in err
    assert "cannot bind channel 'power'" in err  # the log tail says why


def test_up_bad_duration(tmp_path, ipc_dir, capsys):
    info = up_config(tmp_path, ipc_dir)
    assert cli_main(["up", "-c", str(info["path"]), "--duration", "-1"]) == 2
    assert "--duration" in capsys.readouterr().err


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "Z" not in state.split()[1]


def test_up_without_demo_runs_the_relay_and_killed_up_leaves_no_relay(tmp_path, ipc_dir):
    info = up_config(tmp_path, ipc_dir)
    up = subprocess.Popen(
        _up(info, "--no-status", "--engine", "python"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = None
    try:
        status = wait_for(lambda: _status(info["control"]), timeout=30)
        assert {c["name"] for c in status["channels"]} == {"engine", "power", "status"}
        up.kill()  # SIGKILL: no chance to stop its children
        up.wait(10)
        wait_for(lambda: not _alive(status["pid"]), timeout=10)  # SIGTERM from the kernel
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if status is not None and _alive(status["pid"]):
            os.kill(status["pid"], signal.SIGKILL)


def test_status_display_fits_80_columns_on_a_terminal(tmp_path):
    """Issue 10, item 19: what `speeddata up` shows (header, table or why there is none)
    fits an 80-column terminal."""
    import io

    from speeddata.commands.up import StatusDisplay

    out = io.StringIO()
    header = f"speeddata up: relay, demo source; output in {tmp_path / ('x' * 60)}/up.log; " \
             "Ctrl-C stops"
    ipc = tmp_path / "nobody-here"
    display = StatusDisplay(f"ipc://{ipc}", header, out=out, tty=True)
    display.refresh()  # no relay: "(no status: no relay answers on ...)"
    text = out.getvalue().replace("\x1b[H\x1b[2J", "")
    assert "no status" in text and len(text.splitlines()) > 2
    assert max(len(line) for line in text.splitlines()) <= 80, text
