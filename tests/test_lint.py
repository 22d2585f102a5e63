"""The code stays lint-clean: ruff for Python, cython-lint for .pyx/.pxd (STYLE.md), and the
imports keep the architecture (import-linter: pyproject.toml, docs/architecture.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_ruff_clean():
    r = _run(str(BIN / "ruff"), "check", "src", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_cython_lint_clean():
    r = _run(str(BIN / "cython-lint"), "src/speeddata", "src/speeddata/includes")
    assert r.returncode == 0, r.stdout + r.stderr


def test_imports_keep_the_architecture():
    """Layers, no circles, compiled modules imported only by their owners."""
    r = _run(str(BIN / "lint-imports"), "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
