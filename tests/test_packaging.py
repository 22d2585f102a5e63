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
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import speeddata

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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


# -- what `make up` installs (issue 14): running needs no test or lint tool -------------

#: tools that only tests, benchmarks and linters use: never a runtime dependency
DEV_TOOLS = {
    "pytest", "hypothesis", "playwright", "ruff", "cython-lint", "import-linter",
    "schemathesis", "websockets", "avro", "mypy", "coverage", "black", "flake8", "pylint",
}
#: their import names
DEV_MODULES = {
    "pytest", "_pytest", "pytest_benchmark", "pytest_timeout", "hypothesis", "playwright",
    "ruff", "cython_lint", "importlinter", "schemathesis", "websockets", "avro", "mypy",
    "coverage", "black", "flake8", "pylint",
}


def _name(requirement: str) -> str:
    """``"pytest-timeout>=2.2"`` -> ``"pytest-timeout"`` (PEP 503 normalised)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_dev_tool(name: str) -> bool:
    return name in DEV_TOOLS or name.startswith("pytest-")


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def test_runtime_dependencies_hold_no_test_or_lint_tool():
    project = _project()
    runtime = [_name(r) for r in project["dependencies"]]
    assert "numpy" in runtime and "tornado" in runtime
    assert [n for n in runtime if _is_dev_tool(n)] == []
    # the tools are where `make test` and `make lint` get them (and the check above
    # would see them: the names are spelled as the extras spell them)
    extras = project["optional-dependencies"]
    dev = {_name(r) for r in extras["test"] + extras["lint"]}
    assert {"pytest", "hypothesis", "playwright", "ruff", "cython-lint", "import-linter"} <= dev
    assert {_name(r) for r in extras["lint"]} <= dev and all(_is_dev_tool(n) for n in
                                                             map(_name, extras["lint"]))


def test_the_package_imports_no_test_or_lint_tool():
    """What runs (src/speeddata) never imports what only `make test` installs."""
    import ast

    found = []
    for path in sorted((ROOT / "src" / "speeddata").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
            found += [(path.name, n) for n in names if n.split(".")[0] in DEV_MODULES]
    assert found == []


def _make_dry_run(target: str, venv: Path) -> list[str]:
    """The commands `make TARGET` runs on a fresh machine (no venv yet), not run. (Under
    `make test` the parent make's variables would make this one print its directory.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={venv}",
                        "PYTHON=python3"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def _make_rule(target: str) -> list[str]:
    """The prerequisites of ``target`` as the Makefile writes them."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:(?!=)(.*)$", text, re.M)
    assert m, f"no rule for {target} in the Makefile"
    return m.group(1).split()


def test_make_up_depends_only_on_the_runtime_stamp():
    assert _make_rule("up") == ["$(RUNTIME_STAMP)"]
    assert _make_rule("$(RUNTIME_STAMP)") == ["$(PY)", "$(SOURCES)"]
    for target in ("test", "lint", "bench", "fuzz", "install"):
        assert _make_rule(target) == ["$(DEV_STAMP)"], target
    assert _make_rule("$(DEV_STAMP)") == ["$(RUNTIME_STAMP)"]


def test_make_up_on_a_fresh_machine_installs_only_what_running_needs(tmp_path):
    venv = tmp_path / "venv"
    up = _make_dry_run("up", venv)
    assert up[0] == f"python3 -m venv {venv}"
    # the build requirements into the venv, then SpeedData without extras, no isolation
    (build,) = [c for c in up if "Cython" in c]
    assert all(f'"{r}' in build for r in ("setuptools", "wheel", "Cython", "numpy"))
    assert f"{venv}/bin/python -m pip install --no-build-isolation -e ." in up
    assert up[-1] == f"{venv}/bin/speeddata up --demo"
    installs = " ".join(c for c in up if " pip install" in c)
    assert "[" not in installs and "-r " not in installs
    assert not any(_is_dev_tool(_name(word.strip('"'))) for c in up for word in c.split()
                   if word.strip('"')[:1].isalpha())


@pytest.mark.parametrize("target", ["test", "lint", "bench", "fuzz"])
def test_make_test_lint_bench_fuzz_install_the_extras_test_and_lint(tmp_path, target):
    venv = tmp_path / "venv"
    commands = _make_dry_run(target, venv)
    assert f"{venv}/bin/python -m pip install --no-build-isolation -e ." in commands
    (write,) = [c for c in commands if c.endswith(f"> {venv}/dev-requirements.txt")]
    assert f"{venv}/bin/python -m pip install -r {venv}/dev-requirements.txt" in commands
    # the requirements file the recipe writes (run here with this Python, into tmp_path)
    venv.mkdir()
    env = dict(os.environ, DEV_REQUIREMENTS=_make_variable("DEV_REQUIREMENTS"))
    subprocess.run(["bash", "-c", write.replace(f"{venv}/bin/python", sys.executable)],
                   cwd=ROOT, env=env, check=True, timeout=60)
    written = (venv / "dev-requirements.txt").read_text().splitlines()
    extras = _project()["optional-dependencies"]
    assert written == list(dict.fromkeys(extras["test"] + extras["lint"]))


def _make_variable(name: str) -> str:
    """The value of a Makefile variable, as make expands it."""
    r = subprocess.run(["make", "-s", "-f", "-", "print"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60,
                       input=f'include Makefile\nprint:\n\t@printf "%s" "$${name}"\n')
    assert r.returncode == 0, r.stderr
    return r.stdout
