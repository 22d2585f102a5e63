"""A real (non-editable) install works: build a wheel from a copy of the source tree,
install it into a fresh venv, and use it from there.

The copy keeps the build away from the shared checkout (no build/ or egg-info written
there). The wheel is built with SPEEDDATA_DEBUG=1 (-O0): the compiled modules and the
package layout are the same as a release build, in a quarter of the time; the -O3 build
is what every other test runs against. Dependencies (numpy, fastavro...) come from the
running venv through a .pth line, so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import speeddata

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "speeddata"
EXTENSIONS = sorted(p.stem for p in PACKAGE.glob("_*.pyx"))  # setup.py builds each of these
SCHEMAS = sorted(p.name for p in (PACKAGE / "schemas").glob("*.avsc"))


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(kwargs.pop("env", {}))
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env, **kwargs
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("packaging")
    tree = tmp / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "web", tree / "web")  # the web UI, installed as speeddata/web
    # Keep generated .c files (with their times, so Cython only redoes stale ones).
    shutil.copytree(
        ROOT / "src",
        tree / "src",
        ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info"),
    )
    (tree / "setup.cfg").write_text("[build_ext]\nparallel = 2\n")
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip"]
    run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, "."],
        cwd=tree,
        env={"SPEEDDATA_DEBUG": "1"},
    )
    (wheel,) = dist.glob("speeddata-*.whl")

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([*pip, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    site = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .stdout.strip()
    )
    # Dependencies from the running venv, after the new site-packages in sys.path. A .pth
    # line adds the folder only: the editable install's own .pth there is not processed.
    (site / "zz_speeddata_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return {"wheel": wheel, "venv": venv, "python": python, "site": site, "cwd": tmp}


def test_wheel_contents(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for ext in EXTENSIONS:
        assert any(n.startswith(f"speeddata/{ext}.") and n.endswith(".so") for n in names), ext
    for schema in SCHEMAS:
        assert f"speeddata/schemas/{schema}" in names
    assert "speeddata/default.toml" in names
    assert "speeddata/_validate.pyi" in names
    assert "speeddata/_avro.pxd" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_installed_files(installed):
    pkg = installed["site"] / "speeddata"
    for ext in EXTENSIONS:
        assert len(list(pkg.glob(f"{ext}.*.so"))) == 1, ext
    assert sorted(p.name for p in (pkg / "schemas").glob("*.avsc")) == SCHEMAS
    assert (pkg / "default.toml").read_text() == (PACKAGE / "default.toml").read_text()


def test_compiled_validator_and_default_config_work_from_the_install(installed):
    code = """
import speeddata
from speeddata._validate import Validator
from speeddata.config import load_config
import speeddata._validate as v

cfg = load_config()
engine = cfg.channel("engine").schema
record = bytes([0x02]) + bytes(28) + bytes([0x02, 0x04])  # time=1, zeros, RUN, counter=2
print(speeddata.__file__)
print(v.__file__)
print(cfg.path)
print(Validator(engine).check(record * 3))
"""
    out = run([installed["python"], "-c", code], cwd=installed["cwd"]).stdout.splitlines()
    site = str(installed["site"])
    assert out[0] == f"{site}/speeddata/__init__.py"
    assert out[1].startswith(f"{site}/speeddata/_validate.") and out[1].endswith(".so")
    assert out[2] == f"{site}/speeddata/default.toml"
    assert out[3] == "(3, -1, 1, 1)"


def test_console_script_from_the_install(installed):
    script = installed["venv"] / "bin" / "speeddata"
    assert script.is_file()
    assert str(installed["python"]) in script.read_text().splitlines()[0]
    help_out = run([script, "--help"], cwd=installed["cwd"]).stdout
    assert help_out.startswith("usage: speeddata")
    version = run([script, "--version"], cwd=installed["cwd"]).stdout.strip()
    assert version == f"speeddata {speeddata.__version__}"


def test_web_ui_is_installed_and_served_from_the_install(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    web = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "web").rglob("*") if p.is_file())
    assert web and "web/index.html" in web
    for name in web:
        assert f"speeddata/{name}" in names, name
    code = "from speeddata.server import web_root; print(web_root())"
    out = run([installed["python"], "-c", code], cwd=installed["cwd"]).stdout.strip()
    assert out == f"{installed['site']}/speeddata/web"
