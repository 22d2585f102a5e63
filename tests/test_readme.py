"""The README's examples run as written on a fresh clone (issue 10, items 14 and 15).

Every fenced block of the README in ``sh``, ``python``, ``toml`` or ``json`` is taken:

- ``sh`` and ``python`` blocks run, in the README's order, as one bash script, in a
  temporary folder that looks like a fresh clone after ``make install`` (``src`` and
  ``.venv`` are links to this checkout's), with ``.venv/bin`` *not* on ``PATH``: the
  README's own ``. .venv/bin/activate`` must put it there. The script runs in a network
  namespace of its own (``unshare -n``, loopback only), so that the README's default
  ports and multicast groups are used as written without meeting anything else on this
  machine. Background jobs the README starts (``speeddata up ... &``) are stopped with
  SIGINT at the end, which also checks that ``up`` started that way obeys it (item 10).
- the ``toml`` block is the documented configuration: it must load, and its values must
  be the defaults, as the README says.
- ``json`` blocks are schemas: they must load.

A block that cannot run in a test says so with an HTML comment on the line before it,
``<!-- readme-test: skip (why) -->``; the reason is required. Untagged blocks (command
listings, sample output) are text and are not run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speeddata.config import (
    CacheConfig,
    Config,
    MulticastConfig,
    RelayConfig,
    ServerConfig,
    UpConfig,
    load_config,
)
from speeddata.schema import Schema

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RUNNABLE = ("sh", "python")
CHECKED = ("sh", "python", "toml", "json")
MARK = re.compile(r"<!--\s*readme-test:\s*(?P<what>\w+)\s*(?P<why>\(.*\))?\s*-->")


@dataclasses.dataclass
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    text: str
    mark: str | None = None  # "skip" when marked
    why: str | None = None


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text``, each with the readme-test mark on the line before."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang = lines[i][3:].strip()
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            prev = lines[i - 1] if i > 0 else ""
            m = MARK.search(prev)
            blocks.append(Block(lang, i + 1, "\n".join(lines[i + 1 : j]),
                                m["what"] if m else None, m["why"] if m else None))
            i = j + 1
        else:
            i += 1
    return blocks


def test_blocks_are_found_and_marks_are_explained():
    blocks = [b for b in readme_blocks(README.read_text()) if b.lang in CHECKED]
    runnable = [b for b in blocks if b.lang in RUNNABLE and b.mark is None]
    # most examples really run: every sh/python block except the marked ones
    assert len(runnable) >= 7, [(b.lang, b.line) for b in runnable]
    for b in blocks:
        assert b.mark in (None, "skip"), f"README line {b.line}: unknown mark {b.mark!r}"
        if b.mark == "skip":
            assert b.why and len(b.why) > 10, f"README line {b.line}: say why it is skipped"
    assert "readme-test" not in "".join(b.text for b in blocks)


def test_parse_marks_and_languages():
    text = "a\n<!-- readme-test: skip (no way) -->\n```sh\nmake up\n```\n```\nlisting\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.mark, b.why, b.text, b.line) for b in blocks] == [
        ("sh", "skip", "(no way)", "make up", 3), ("", None, None, "listing", 6)
    ]


def test_the_config_block_loads_and_shows_the_defaults(tmp_path):
    (block,) = [b for b in readme_blocks(README.read_text()) if b.lang == "toml"]
    (tmp_path / "schemas").symlink_to(REPO / "src" / "speeddata" / "schemas")
    path = tmp_path / "readme.toml"
    path.write_text(block.text)
    cfg = load_config(path)
    assert cfg.cache == CacheConfig()
    assert cfg.multicast == MulticastConfig()
    assert cfg.relay == RelayConfig()
    assert cfg.server == ServerConfig()
    assert cfg.up == UpConfig()
    # every key of the sections is shown (commented out when it has no default value)
    for section, cls in (("cache", CacheConfig), ("multicast", MulticastConfig),
                         ("relay", RelayConfig), ("server", ServerConfig), ("up", UpConfig)):
        for f in dataclasses.fields(cls):
            assert re.search(rf"^#? ?{f.name} = ", _section(block.text, section), re.M), (
                f"README config block: {section}.{f.name} is missing"
            )
    (engine,) = cfg.channels
    assert (engine.name, engine.port, engine.decimation, engine.id) == ("engine", 26001, 10, 1)
    for key in ("id", "time"):
        assert re.search(rf"^# {key} = ", _section(block.text, "[channels]"), re.M)


def _section(toml: str, name: str) -> str:
    m = re.search(rf"^\[{re.escape(name)}\][^\n]*\n(.*?)(?=^\[|\Z)", toml, re.M | re.S)
    assert m, f"README config block: no [{name}]"
    return m.group(1)


def test_schema_blocks_load():
    blocks = [b for b in readme_blocks(README.read_text()) if b.lang == "json"]
    assert blocks
    for b in blocks:
        schema = Schema(json.loads(b.text))
        assert schema.time_field == "time", f"README line {b.line}"


def _netns_prefix() -> list[str]:
    """Run in a network namespace of our own: root needs no user namespace."""
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]


def test_shell_and_python_examples_run_as_written(tmp_path):
    venv = Path(sys.prefix)
    assert (venv / "bin" / "activate").is_file() and (venv / "bin" / "speeddata").is_file(), (
        "run the tests with the venv's Python (make test)"
    )
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "src").symlink_to(REPO / "src")
    (clone / ".venv").symlink_to(venv)
    blocks = [b for b in readme_blocks(README.read_text())
              if b.lang in RUNNABLE and b.mark is None]
    script = ["set -e", "ip link set lo up"]
    for b in blocks:
        script.append(f"echo '### README.md line {b.line}' >&2")
        if b.lang == "sh":
            script.append(b.text)
        else:
            assert "README_PY" not in b.text
            script.append(f"python - <<'README_PY'\n{b.text}\nREADME_PY")
    # the README's background jobs: SIGINT (ignored by background jobs of a
    # non-interactive shell unless the program installs its own handler), then wait
    script.append("echo '### stopping background jobs' >&2")
    script.append("for p in $(jobs -p); do kill -INT $p; done")
    script.append("wait")
    script.append("echo README-DONE")
    (clone / "readme.sh").write_text("\n".join(script) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        p for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if p and Path(p).resolve() != (venv / "bin").resolve()
    )
    assert shutil.which("speeddata", path=env["PATH"]) is None or \
        Path(shutil.which("speeddata", path=env["PATH"])).resolve().parent != venv / "bin"
    r = subprocess.run(
        [*_netns_prefix(), "bash", "readme.sh"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    where = [line for line in r.stderr.splitlines() if line.startswith("### ")]
    assert r.returncode == 0 and "README-DONE" in r.stdout, (
        f"README example failed after {where[-1] if where else '?'}:\n"
        f"--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"
    )
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    # what the examples made is there
    for name in ("my.toml", "schemas/engine.avsc", "run42.h5", "last.h5", "run42-raw.h5"):
        assert (clone / name).exists(), name
    assert load_config(clone / "my.toml").channels
    assert not (clone / "data" / "tags" / "run42").exists()  # removed by the last example
    up_log = (clone / "data" / "up.log").read_text()
    assert "Traceback" not in up_log and "ERROR" not in up_log, up_log[-3000:]


@pytest.mark.parametrize("marker", ["speeddata", "python"])
def test_readme_says_where_the_command_is(marker):
    """Item 14: after `make up` the command is in .venv/bin, not on PATH."""
    text = README.read_text()
    assert ". .venv/bin/activate" in text and f".venv/bin/{marker}" in text


def test_readme_covers_what_a_new_user_needs():
    """Issue 14: the README's sections, from a new user's point of view."""
    text = README.read_text()
    headings = re.findall(r"^##+ (.+)$", text, re.M)
    for wanted in ("Two commands", "A source in ten lines", "A dashboard in five lines",
                   "Keep and export", "Configure", "Sizing the cache", "Running as a service",
                   "What to expect on a Raspberry Pi and on a many-core server"):
        assert wanted in headings, wanted
    assert "![" in text.split("## Two commands")[0]  # the screenshot, before anything else
    assert "make up" in text and "make test" in text
    # every section of the config is named in the configuration reference
    configure = text.split("## Configure", 1)[1].split("\n## ", 1)[0]
    sections = [f.name for f in dataclasses.fields(Config) if f.name != "path"]
    for name in sections:
        shown = "[[channels]]" if name == "channels" else f"[{name}]"
        assert shown in configure, shown
    # the ten and five lines are that short
    blocks = readme_blocks(text)
    source = next(b for b in blocks if b.lang == "python" and "Source(" in b.text)
    dashboard = next(b for b in blocks if b.lang == "html")
    assert len(source.text.splitlines()) <= 10 and len(dashboard.text.splitlines()) <= 5
    # what it points to is there (docs/scaling.md comes with its own change)
    assert (REPO / "deploy" / "README.md").is_file()
    assert "docs/scaling.md" in text.split("many-core server", 1)[1].split("\n## ", 1)[0]
