"""Fixtures of the fault suite (``tests/faults/``, issue 10; docs/reliability.md).

Long mode: ``SPEEDDATA_FUZZ=1`` (``make fuzz``): more rounds, longer loads (faultlib.FUZZ).
Every process a test starts is killed in teardown, every tmpfs unmounted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .faultlib import TALLY, JavaAvroReader, RelayProcess, short_tmpdir, tally_line


@pytest.fixture
def ipc_dir():
    d = short_tmpdir("sd-faults-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def relays(tmp_path):
    """``relays(info, engine) -> RelayProcess`` (not started); all are killed in teardown,
    and a log with a traceback fails the test."""
    made: list[RelayProcess] = []

    def make(info: dict, engine: str, log: Path | None = None) -> RelayProcess:
        p = RelayProcess(info, engine, log or tmp_path / "relay.log")
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill()
    for log in {p.log for p in made}:
        text = log.read_text(errors="replace") if log.exists() else ""
        assert "Traceback" not in text and "Exception ignored" not in text, text[-4000:]


@pytest.fixture(scope="session")
def java_reader():
    """Apache Avro Java (Debian's libavro-java), one JVM for the session."""
    reader = JavaAvroReader()
    yield reader
    reader.close()


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size) -> Path``: a tmpfs of ``size`` (mount(8) syntax, e.g. "6m") mounted
    on a fresh folder; ``tmpfs.resize(size)`` remounts it. Unmounted in teardown. Needs
    root (CI runs as root)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        assert os.geteuid() == 0, "the disk-full case mounts a tmpfs: run as root (CI does)"
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


def pytest_terminal_summary(terminalreporter):
    if TALLY:
        terminalreporter.write_line(f"fault suite tally: {tally_line()}")
        out = os.environ.get("SPEEDDATA_FAULTS_TALLY")
        if out:
            Path(out).write_text(tally_line() + "\n")
