"""Shared fixtures. Network rule: everything here talks to 127.0.0.1 only, multicast
always on interface 127.0.0.1 with TTL 1, and every port is chosen by the kernel so
test runs never collide."""

from __future__ import annotations

import os
import random
import socket
import subprocess
from pathlib import Path

import pytest

SCHEMAS = Path(__file__).resolve().parents[1] / "src" / "speeddata" / "schemas"


@pytest.fixture
def schemas_dir() -> Path:
    return SCHEMAS


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_group() -> str:
    """A multicast group in the administratively scoped 239.255/16 range, per test."""
    return f"239.255.{random.randint(0, 255)}.{random.randint(1, 254)}"


@pytest.fixture
def udp_port() -> int:
    return free_udp_port()


@pytest.fixture
def group() -> str:
    return random_group()


@pytest.fixture
def receiver():
    """``receiver()`` -> a UDP socket on 127.0.0.1 (kernel-chosen port, 4 MiB receive
    buffer), closed after the test."""
    socks = []

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close()


# --- Fail on "Exception ignored" ------------------------------------------------------------
# Python prints "Exception ignored in: ..." when an exception cannot propagate (a __del__, a
# callback from C, a thread or child process at exit). In-process ones already fail the test
# through pytest's unraisable-exception warning and filterwarnings=error; this also catches
# the ones that reach the captured stderr, such as those of child processes started by a
# test. It reads the report's captured output, so it works beside tests that use capfd or
# capsys (what a test reads from those is its own business; what it leaves unread is put
# back into the captured output by pytest and checked here).
UNRAISABLE_MARKER = "Exception ignored"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    title = f"Captured stderr {call.when}"
    for name, content in report.sections:
        if name != title or UNRAISABLE_MARKER not in content:
            continue
        if report.passed:  # never hide the test's own failure behind this one
            start = content.index(UNRAISABLE_MARKER)
            report.outcome = "failed"
            report.longrepr = (
                f"{UNRAISABLE_MARKER!r} in stderr during {call.when} of {item.nodeid}:\n"
                + content[start : start + 2000]
            )
        break


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size) -> Path``: a tmpfs of ``size`` (mount(8) syntax, e.g. "6m") mounted
    on a fresh folder; ``tmpfs.resize(size)`` remounts it. Unmounted in teardown. Needs
    root (CI runs as root)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        assert os.geteuid() == 0, "a tmpfs is mounted: run as root (CI does)"
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       check=True, capture_output=True)
        mounted.append(d)
        return d

    def resize(d: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(d)], check=True,
                       capture_output=True)

    mount.resize = resize
    yield mount
    for d in reversed(mounted):
        r = subprocess.run(["umount", str(d)], capture_output=True)
        if r.returncode != 0:  # still busy (a process we could not end): detach it
            subprocess.run(["umount", "-l", str(d)], capture_output=True)
