"""Fixtures of the fault suite (``tests/faults/``, issue 10; docs/reliability.md).

Long mode: ``SPEEDDATA_FUZZ=1`` (``make fuzz``): more rounds, longer loads (faultlib.FUZZ).
Every process a test starts is killed in teardown, every tmpfs unmounted.
"""

from __future__ import annotations

import os
import shutil
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


def pytest_terminal_summary(terminalreporter):
    if TALLY:
        terminalreporter.write_line(f"fault suite tally: {tally_line()}")
        out = os.environ.get("SPEEDDATA_FAULTS_TALLY")
        if out:
            Path(out).write_text(tally_line() + "\n")
