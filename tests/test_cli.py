"""The ``speeddata`` command: help, version, unknown subcommands, error handling."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import speeddata
from speeddata import commands as cli
from speeddata.errors import SpeedDataError

SPEEDDATA = Path(sys.executable).parent / "speeddata"  # the venv's console script


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SPEEDDATA), *args], capture_output=True, text=True, timeout=60, check=False
    )


def existing_commands() -> dict[str, str]:
    """Subcommands whose module is part of this build -> their one-line help."""
    return {
        name: help_text
        for name, (module, help_text) in cli.COMMANDS.items()
        if importlib.util.find_spec(module) is not None
    }


def test_entry_point_is_installed():
    assert SPEEDDATA.is_file()


def test_help_lists_the_subcommands_that_exist():
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: speeddata")
    listed = {}
    for line in proc.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in cli.COMMANDS:
            listed[parts[0]] = parts[1].strip()
    assert listed == existing_commands()
    assert proc.stderr == ""


def test_version():
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"speeddata {speeddata.__version__}"
    assert speeddata.__version__ == importlib.metadata.version("speeddata")


def test_unknown_subcommand_exits_2():
    proc = run("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice: 'no-such-command'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_subcommand_exits_2():
    proc = run()
    assert proc.returncode == 2
    assert "required: COMMAND" in proc.stderr


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_existing_subcommand_has_help(name, capsys):
    if name not in existing_commands():
        parser = cli.build_parser()
        with pytest.raises(SystemExit) as info:
            parser.parse_args([name])
        assert info.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: speeddata {name}")
    assert cli.COMMANDS[name][1] in out


@pytest.fixture
def fake_command(monkeypatch):
    """A subcommand ``fake`` whose run() does what the test puts in ``behaviour``."""
    module = types.ModuleType("speeddata_test_fake_command")
    behaviour = {}

    def add_arguments(parser):
        parser.add_argument("--value", type=int, default=0)

    def run_command(args):
        action = behaviour["action"]
        if isinstance(action, BaseException):
            raise action
        return action(args)

    module.add_arguments = add_arguments
    module.run = run_command
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli, "COMMANDS", {"fake": (module.__name__, "a fake command")})
    return behaviour


def test_run_result_is_the_exit_code(fake_command):
    fake_command["action"] = lambda args: args.value
    assert cli.main(["fake", "--value", "3"]) == 3
    fake_command["action"] = lambda args: None
    assert cli.main(["fake"]) == 0


def test_speeddata_error_is_printed_cleanly_with_exit_2(fake_command, capsys):
    fake_command["action"] = SpeedDataError("cache.dir: /nope is not writable; choose another")
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err == "speeddata fake: error: cache.dir: /nope is not writable; choose another\n"


def test_other_errors_are_not_hidden(fake_command):
    fake_command["action"] = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["fake"])


def test_ctrl_c_exits_130(fake_command):
    fake_command["action"] = KeyboardInterrupt()
    assert cli.main(["fake"]) == 130


def test_missing_modules_are_left_out(monkeypatch, capsys):
    monkeypatch.setattr(
        cli, "COMMANDS", {"ghost": ("speeddata.no_such_module_here", "not in this build")}
    )
    parser = cli.build_parser()
    parser.print_help()
    assert "ghost" not in capsys.readouterr().out


def test_broken_module_is_not_hidden(monkeypatch, tmp_path):
    (tmp_path / "speeddata_test_broken_cmd.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", {"broken": ("speeddata_test_broken_cmd", "broken")})
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        cli.build_parser()


@pytest.mark.parametrize("command", [["pivot"], ["tag", "add"]])
def test_help_says_the_end_of_a_range_is_excluded(command):
    """Issue 10, item 16: only read()'s docstring said so."""
    r = subprocess.run([sys.executable, "-m", "speeddata.commands", *command, "--help"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0
    assert "excluded" in r.stdout and "[start, end)" in r.stdout


def test_source_help_has_no_internal_note():
    """Issue 10, item 20: `source --help` showed a note for the project's own tests."""
    r = subprocess.run([sys.executable, "-m", "speeddata.commands", "source", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--host" in r.stdout
    assert "tests" not in r.stdout and "benchmarks" not in r.stdout and "loopback" not in r.stdout


def test_tag_rm_name_has_help():
    """Issue 10, item 20: `tag rm`'s name had no help text."""
    r = subprocess.run([sys.executable, "-m", "speeddata.commands", "tag", "rm", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "the tag to remove" in r.stdout
