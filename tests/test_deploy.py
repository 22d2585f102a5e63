"""The systemd units in deploy/ (issue 14): valid for systemd, and what they run exists.

``systemd-analyze verify`` loads the units as systemd would (it needs no running systemd:
it works in a container) and reports unknown keys, bad values and missing programs. The
units run /opt/speeddata/bin/speeddata (deploy/README.md); here that path is replaced by
this venv's ``speeddata``, which must exist for verify to pass. CI installs systemd
(.ci/run) and sets SPEEDDATA_CI=1: there a missing systemd-analyze fails the test.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speeddata.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = ("speeddata-relay.service", "speeddata-server.service", "speeddata.target")
SERVICES = UNITS[:2]
INSTALLED = "/opt/speeddata/bin/speeddata"
CONFIG = "/etc/speeddata/speeddata.toml"
SPEEDDATA = Path(sys.prefix) / "bin" / "speeddata"


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("SPEEDDATA_CI") or os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing on CI: .ci/run must install systemd")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys keep their case
    parser.read(DEPLOY / name)
    return parser


def _verify(tmp_path: Path, texts: dict[str, str]) -> subprocess.CompletedProcess:
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    return subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", *(f"./{n}" for n in texts)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )


def _ours(output: str, names) -> list[str]:
    """The lines of verify's output about our units (a host's own units may warn too)."""
    return [line for line in output.splitlines() if any(n in line for n in names)]


def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    assert SPEEDDATA.is_file(), "run the tests with the venv's Python (make test)"
    texts = {n: (DEPLOY / n).read_text().replace(INSTALLED, str(SPEEDDATA)) for n in UNITS}
    r = _verify(tmp_path, texts)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _ours(r.stdout + r.stderr, UNITS) == [], r.stdout + r.stderr


def test_systemd_analyze_verify_would_see_a_mistake(tmp_path):
    """The check above can fail: a missing program fails verify, and a misspelt key is
    reported on our unit's line."""
    relay = (DEPLOY / SERVICES[0]).read_text()
    r = _verify(tmp_path, {SERVICES[0]: relay})  # /opt/speeddata is not installed here
    assert r.returncode != 0 and "is not executable" in r.stdout + r.stderr
    (tmp_path / SERVICES[0]).unlink()
    bad = relay.replace(INSTALLED, str(SPEEDDATA)).replace("Restart=", "Restrat=")
    r = _verify(tmp_path, {SERVICES[0]: bad})
    assert _ours(r.stdout + r.stderr, [SERVICES[0]]), r.stdout + r.stderr


@pytest.mark.parametrize(("unit", "command"), [(SERVICES[0], "relay"), (SERVICES[1], "serve")])
def test_services_run_the_installed_command_on_the_system_config(unit, command):
    service = _unit(unit)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv == [INSTALLED, command, "-c", CONFIG]
    # the command line is one `speeddata` understands (-c before --help: both parsed)
    r = subprocess.run([str(SPEEDDATA), *argv[1:], "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: speeddata"), r.stderr
    # a static user from sysusers.d, the cache in its state directory, restarted on failure
    (user,) = [line.split() for line in
               (DEPLOY / "sysusers.d" / "speeddata.conf").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert user[:2] == ["u", service["User"]] and user[-1] == "/var/lib/speeddata"
    assert service["StateDirectory"] == "speeddata"
    assert service["WorkingDirectory"] == "/var/lib/speeddata"
    assert service["Restart"] == "on-failure"
    assert service["CapabilityBoundingSet"] == "" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert _unit(unit)["Install"]["WantedBy"] == "speeddata.target"
    assert "speeddata.target" in _unit(unit)["Unit"]["PartOf"]


def test_the_relay_may_lower_its_nice_value_to_the_default_config():
    """relay.nice = -10 by default: LimitNICE lets the service do that without root."""
    service = _unit(SERVICES[0])["Service"]
    assert int(service["LimitNICE"]) <= load_config().relay.nice
    assert "AmbientCapabilities" in service and service["AmbientCapabilities"] == ""


def test_the_sysctl_file_raises_rmem_max_to_the_default_rcvbuf():
    text = (DEPLOY / "sysctl.d" / "60-speeddata.conf").read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("net.core.rmem_max")]
    assert int(line.split("=")[1]) >= load_config().relay.rcvbuf


def _expand(analyze: str, group: str, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    out = subprocess.run([analyze, "syscall-filter", group], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    calls = set()
    for line in out.splitlines():
        item = line.strip()
        if not line.startswith(" ") or not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                calls |= _expand(analyze, item, seen)
        else:
            calls.add(item)
    return calls


def test_the_system_call_filter_allows_what_the_relay_calls():
    """SystemCallFilter=@system-service must not kill the relay's hot loop (SIGSYS)."""
    analyze = _systemd_analyze()
    for unit in SERVICES:
        (group,) = _unit(unit)["Service"]["SystemCallFilter"].split()
        allowed = _expand(analyze, group)
        needed = {"recvmmsg", "sendmmsg", "mmap", "munmap", "msync", "madvise", "fallocate",
                  "ftruncate", "setpriority", "setsockopt", "epoll_wait", "linkat",
                  "renameat2", "sched_getaffinity", "clock_gettime"}
        assert needed - allowed == set(), unit
