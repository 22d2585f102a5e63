"""The suite fails on "Exception ignored" in a test's stderr (tests/conftest.py), without
getting in the way of tests that use capfd or capsys themselves."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

INNER_TESTS = """
import gc
import subprocess
import sys

import pytest

CHILD = [sys.executable, "-c",
         "import sys; sys.stderr.write('Exception ignored in: <object at 0x1>\\\\n')"]


def test_child_prints_exception_ignored():
    subprocess.run(CHILD, check=True)


def test_other_stderr_is_fine():
    print("warning: nothing ignored here", file=sys.stderr)
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('hello\\\\n')"])


def test_capsys_still_works(capsys):
    print("hello")
    print("oops", file=sys.stderr)
    assert capsys.readouterr() == ("hello\\n", "oops\\n")


def test_capfd_still_works(capfd):
    subprocess.run([sys.executable, "-c", "print('from child')"], check=True)
    assert capfd.readouterr().out == "from child\\n"


def test_capfd_reads_the_message_itself(capfd):
    subprocess.run(CHILD, check=True)
    assert "Exception ignored" in capfd.readouterr().err


def test_capfd_leaves_the_message_unread(capfd):
    subprocess.run(CHILD, check=True)


def test_in_process_unraisable():
    class Boom:
        def __del__(self):
            raise RuntimeError("boom in __del__")

    Boom()
    gc.collect()


def test_own_failure_is_kept():
    subprocess.run(CHILD, check=True)
    assert 1 == 2, "the test's own failure"


@pytest.fixture
def noisy_teardown():
    yield
    subprocess.run(CHILD, check=True)


def test_in_teardown(noisy_teardown):
    pass
"""

EXPECTED = {
    "test_child_prints_exception_ignored": "FAILED",
    "test_other_stderr_is_fine": "PASSED",
    "test_capsys_still_works": "PASSED",
    "test_capfd_still_works": "PASSED",
    "test_capfd_reads_the_message_itself": "PASSED",
    "test_capfd_leaves_the_message_unread": "FAILED",  # pytest puts it back in the call
    "test_in_process_unraisable": "FAILED",
    "test_own_failure_is_kept": "FAILED",
    "test_in_teardown": "ERROR",
}


def test_exception_ignored_in_stderr_fails_the_test(tmp_path: Path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rA",
            "-q",
            "-p",
            "no:randomly",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    outcomes = {}
    for status, name in re.findall(r"^(PASSED|FAILED|ERROR) test_inner\.py::(\w+)", out, re.M):
        outcomes.setdefault(name, set()).add(status)
    # a test that passes its call but errors in teardown is listed twice
    got = {
        name: ("ERROR" if "ERROR" in s else "FAILED" if "FAILED" in s else "PASSED")
        for name, s in outcomes.items()
    }
    assert got == EXPECTED, out
    assert "'Exception ignored' in stderr during call" in out
    assert "'Exception ignored' in stderr during teardown" in out
    assert "the test's own failure" in out
    assert "boom in __del__" in out
