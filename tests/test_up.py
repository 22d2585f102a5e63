"""``speeddata up``: relay + demo source under one supervisor, status table, clean stops."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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
    # one line says what to open (issue 14), printed once the server listens
    host, port = _listen_of(info["path"])
    assert [line for line in r.stderr.splitlines() if "http" in line] == [
        f"speeddata up: open http://{host}:{port}/"
    ]
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


# -- a part that dies (issue 14): say which and why, restart it or stop everything -------


def _with_up_section(info, **keys) -> dict:
    """Append an [up] section (TOML values given as text) to the config of ``info``."""
    lines = [f"{k} = {v}" for k, v in keys.items()]
    info["path"].write_text(info["path"].read_text() + "\n[up]\n" + "\n".join(lines) + "\n")
    info["server"] = _listen_of(info["path"])
    return info


def _listen_of(path: Path) -> tuple[str, int]:
    from speeddata.config import load_config

    return load_config(path).server.listen


def _server_status(listen) -> dict | None:
    """The live server's /api/status, or None when it does not answer."""
    import json
    import urllib.request

    host, port = listen
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/api/status", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def _relay_pid(info) -> int | None:
    status = _status(info["control"])
    return status["pid"] if status else None


def _descendants(pid: int) -> set[int]:
    kids = _children_of(pid)
    return kids.union(*(_descendants(k) for k in kids)) if kids else set()


def test_up_restarts_a_relay_killed_by_sigkill_and_the_server_follows(tmp_path, ipc_dir):
    """kill -9 the relay under `up`: up says so (signal, last lines), restarts it after
    the back-off, the new relay recovers the killed one's segments, the live server (the
    same process) follows the new relay and keeps receiving data; SIGTERM to up then
    stops every process, the restarted relay included, segments trimmed."""
    info = _with_up_section(up_config(tmp_path, ipc_dir), restart_backoff='"300ms"')
    with _running_up(info, "--demo", "-q", "--no-status") as up:
        first = wait_for(lambda: _relay_pid(info), timeout=30)
        status = wait_for(lambda: _server_status(info["server"]), timeout=30)
        wait_for(lambda: (_server_status(info["server"]) or {}).get("relay"), timeout=20)
        kids = _children_of(up.pid)
        assert first in kids and len(kids) == 3  # relay, live server, demo source
        server_pid = next(p for p in kids if "serve" in Path(f"/proc/{p}/cmdline").read_text())
        # the relay has written blocks: its open segments need recovery once it is killed
        wait_for(lambda: any(len(s.read_index()) for s in cache_segments(info["cache"])),
                 timeout=20)
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (_relay_pid(info) or first) != first and _relay_pid(info),
                          timeout=30)
        assert time.monotonic() - killed_at >= 0.3  # after the back-off, not at once
        assert second in _children_of(up.pid) and server_pid in _children_of(up.pid)
        # the live server follows the new relay's stats and keeps receiving its data
        wait_for(lambda: ((_server_status(info["server"]) or {}).get("relay") or {})
                 .get("pid") == second, timeout=20)  # fmt: skip
        before = _server_status(info["server"])["channels"]["engine"]["records"]
        wait_for(lambda: _server_status(info["server"])["channels"]["engine"]["records"]
                 > before + 50, timeout=20)  # fmt: skip
        assert status["server"]["uptime_s"] < _server_status(info["server"])["server"]["uptime_s"]
        everyone = _descendants(up.pid)
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=30)
    assert up.returncode == 0, err
    assert "Traceback" not in err
    assert "speeddata up: relay was killed by SIGKILL after" in err
    assert "speeddata up: restarting relay in 0.3 s (restart 1 of 10 in a row" in err
    assert f"speeddata up: relay restarted (pid {second})" in err
    assert not any(_alive(pid) for pid in everyone | {first, second}), "a process is left"
    assert not any(segment_needs_recovery(s) for s in cache_segments(info["cache"]))
    assert read_all_cleanly(info["cache"]) > 0
    log = (info["cache"] / "up.log").read_text()
    assert "[relay]" in log and "recovered" in log, log  # the new relay recovered the segments


def _run_up_and_kill_relay(info, kills: int, *extra) -> tuple[subprocess.CompletedProcess, list]:
    """Run up (demo), kill -9 its relay ``kills`` times (waiting for each restart but the
    last), then wait for up to exit; -> (its result, every pid it ever had as a child)."""
    up = subprocess.Popen(_up(info, "--demo", "-q", "--no-status", *extra),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    try:
        pid = wait_for(lambda: _relay_pid(info), timeout=30)
        wait_for(lambda: len(_children_of(up.pid)) == 3, timeout=30)
        for i in range(kills):
            seen |= _descendants(up.pid)
            os.kill(pid, signal.SIGKILL)
            if i < kills - 1:
                pid = wait_for(lambda old=pid: (_relay_pid(info) or old) != old
                               and _relay_pid(info), timeout=30)
                wait_for(lambda: len(_children_of(up.pid)) == 3, timeout=30)
        out, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    return subprocess.CompletedProcess(up.args, up.returncode, out, err), sorted(seen)


def test_up_on_failure_stop_stops_everything_with_the_reason(tmp_path, ipc_dir):
    info = _with_up_section(up_config(tmp_path, ipc_dir), on_failure='"stop"')
    r, pids = _run_up_and_kill_relay(info, 1)
    assert r.returncode == 128 + signal.SIGKILL, r.stderr
    assert "speeddata up: relay was killed by SIGKILL after" in r.stderr
    assert "its last lines:\n    " in r.stderr and "speeddata relay: INFO relaying" in r.stderr
    assert 'speeddata up: stopping everything (up.on_failure = "stop")' in r.stderr
    assert "restart" not in r.stderr.replace('on_failure = "restart"', "")
    assert "Traceback" not in r.stderr
    assert len(pids) == 3 and not any(_alive(pid) for pid in pids)


def test_up_on_failure_option_overrides_the_config(tmp_path, ipc_dir):
    info = _with_up_section(up_config(tmp_path, ipc_dir), on_failure='"restart"')
    r, pids = _run_up_and_kill_relay(info, 1, "--on-failure", "stop")
    assert r.returncode == 137 and 'stopping everything (up.on_failure = "stop")' in r.stderr
    assert not any(_alive(pid) for pid in pids)


def test_up_backs_off_doubling_and_gives_up_after_max_restarts(tmp_path, ipc_dir):
    info = _with_up_section(up_config(tmp_path, ipc_dir), restart_backoff='"100ms"',
                            restart_backoff_max='"1min"', max_restarts="2")
    r, pids = _run_up_and_kill_relay(info, 3)
    assert r.returncode == 137, r.stderr
    assert r.stderr.count("speeddata up: relay was killed by SIGKILL") == 3
    assert "restarting relay in 0.1 s (restart 1 of 2 in a row" in r.stderr
    assert "restarting relay in 0.2 s (restart 2 of 2 in a row" in r.stderr
    assert r.stderr.count("speeddata up: relay restarted (pid ") == 2
    assert ("relay failed 3 times in a row; stopping everything (up.max_restarts = 2)"
            in r.stderr)
    assert not any(_alive(pid) for pid in pids)


def test_supervisor_reports_exit_status_and_last_lines_and_backs_off(tmp_path):
    """The supervisor alone, on small real processes: a child that always fails is
    restarted after 50, 100, 200, 200 ms (doubling up to the bound) with its status and
    last lines each time, then up gives up with its status."""
    import io

    from speeddata.config import UpConfig
    from speeddata.up import Supervisor

    out = io.StringIO()
    log = open(tmp_path / "log", "ab")  # noqa: SIM115
    code = "import sys; print('line one'); print('boom', file=sys.stderr); sys.exit(3)"
    policy = UpConfig("restart", 0.05, 0.2, 4)
    try:
        with Supervisor(out=out, policy=policy) as sup:
            sup.start("failing", [sys.executable, "-c", code], output=log)
            started = time.monotonic()
            assert sup.wait(duration=30) == 3
            took = time.monotonic() - started
    finally:
        log.close()
    text = out.getvalue()
    assert text.count("speeddata up: failing exited with status 3 after") == 5
    assert text.count("its last lines:\n    line one\n    boom\n") == 5
    delays = [float(d) for d in re.findall(r"restarting failing in ([0-9.]+) s", text)]
    assert delays == [0.05, 0.1, 0.2, 0.2]
    assert took >= sum(delays)
    assert "failing failed 5 times in a row; stopping everything (up.max_restarts = 4)" in text
    assert (tmp_path / "log").read_text().count("[failing] boom\n") == 5


@pytest.mark.parametrize(("code", "text"), [
    (0, "exited with status 0"), (3, "exited with status 3"),
    (-signal.SIGKILL, "was killed by SIGKILL"), (-signal.SIGSEGV, "was killed by SIGSEGV"),
    (-200, "was killed by signal 200"),
])
def test_describe_exit(code, text):
    from speeddata.up import describe_exit

    assert describe_exit(code) == text


def test_up_a_live_server_that_cannot_start_stops_up_with_its_reason(tmp_path, ipc_dir, capsys):
    """The live server's port is taken: a start failure, not restarted (nothing would
    change): up stops everything and says why, with the server's own words."""
    info = up_config(tmp_path, ipc_dir)
    host, port = _listen_of(info["path"])
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind((host, port))
    blocker.listen()  # another program serves that port: up must not take it for its own
    try:
        code = cli_main(["up", "-c", str(info["path"]), "--duration", "20"])
    finally:
        blocker.close()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "live server exited with status" in err and "while starting" in err
    assert "its last lines:" in err


def test_status_display_on_a_terminal_keeps_what_happened_on_screen(tmp_path):
    """The table is redrawn over the whole screen each second: a death and a restart
    must stay on it (they are also written once to stderr)."""
    import io

    from speeddata.commands.up import StatusDisplay

    out = io.StringIO()
    events = ["relay was killed by SIGKILL after 3.0 s; its last lines:",
              "restarting relay in 1 s (restart 1 of 10 in a row)"]
    display = StatusDisplay(f"ipc://{tmp_path / 'none'}", "speeddata up: header", out=out,
                            tty=True, events=events)
    display.refresh()
    screen = out.getvalue().split("\x1b[H\x1b[2J")[-1]
    assert screen.startswith("speeddata up: header\nspeeddata up: relay was killed by SIGKILL")
    assert "speeddata up: restarting relay in 1 s" in screen and "no status" in screen


def test_up_restarts_a_killed_live_server_on_its_port(tmp_path, ipc_dir):
    """kill -9 the live server: up restarts it, on the same port, and it sees the relay's
    channels again; the relay is not touched."""
    info = _with_up_section(up_config(tmp_path, ipc_dir), restart_backoff='"200ms"')
    with _running_up(info, "--demo", "-q", "--no-status") as up:
        relay = wait_for(lambda: _relay_pid(info), timeout=30)
        wait_for(lambda: (_server_status(info["server"]) or {}).get("channels"), timeout=30)
        (server,) = [p for p in _children_of(up.pid)
                     if "serve" in Path(f"/proc/{p}/cmdline").read_text()]
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: _server_status(info["server"]) is None, timeout=10)
        status = wait_for(lambda: (_server_status(info["server"]) or {}).get("channels")
                          and _server_status(info["server"]), timeout=30)
        assert {"engine", "power", "status"} <= set(status["channels"])
        assert status["server"]["uptime_s"] < 20 and _relay_pid(info) == relay
        (again,) = [p for p in _children_of(up.pid)
                    if "serve" in Path(f"/proc/{p}/cmdline").read_text()]
        assert again != server
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=30)
    assert up.returncode == 0, err
    assert "speeddata up: live server was killed by SIGKILL after" in err
    assert "speeddata up: restarting live server in 0.2 s" in err
    assert not any(_alive(pid) for pid in (relay, server, again))
