"""Exports: the pivot of a tag or a range, in a worker process (never on the IOLoop).

``Exports.start(request)`` validates the request and submits ``run_export`` to a
one-process pool (spawned: no copy of the server's state or sockets); the worker writes
``<exports>/<id>.h5`` and a small ``<id>.json`` state file (state, progress, error) that
``GET /api/exports/{id}`` reads. Ids are server-made (hex), so a request can never name a
path; the CSV of chosen signals is made from the HDF5 file on request, in a thread.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import secrets
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["Exports", "ExportError", "run_export", "write_csv", "EXPORT_ID"]

EXPORT_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_KEPT = 64  # finished exports kept (older files removed)


class ExportError(ValueError):
    """A request that cannot be exported (the message says why): a 4xx."""


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


class ProgressSink(io.TextIOBase):
    """Stands in for the worker's stderr during a pivot: reads the fraction off the
    pivot's progress bar (``... 42.0% ...``) and writes it to the export's state file at
    most 5 times a second. Nothing else of the pivot's output is kept."""

    def __init__(self, state_path: Path, state: dict):
        self.state_path = state_path
        self.state = state
        self.last = 0.0

    def write(self, text: str) -> int:
        found = _PERCENT.findall(text)
        if found:
            done = min(float(found[-1]) / 100.0, 0.99)
            now = time.monotonic()
            if done > self.state["done"] and now - self.last >= 0.2:
                self.last = now
                self.state["done"] = done
                _write_state(self.state_path, self.state)
        return len(text)

    def isatty(self) -> bool:
        return False


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def run_export(cache_dir: str, folder: str, export_id: str, spec: dict) -> dict:
    """Worker process body: pivot ``spec`` into ``<folder>/<id>.h5``; returns the state."""
    import contextlib

    from ..pivot import pivot

    folder_p = Path(folder)
    state_path = folder_p / f"{export_id}.json"
    state = dict(spec=spec, id=export_id, state="running", done=0.0,
                 started=time.time(), error=None, bytes=0)
    _write_state(state_path, state)
    out = folder_p / f"{export_id}.h5"
    try:
        with contextlib.redirect_stderr(ProgressSink(state_path, state)):
            pivot(cache_dir, out, tag=spec.get("tag"), start=spec.get("start_ns"),
                  end=spec.get("end_ns"), channels=spec.get("channels"),
                  signals=spec.get("signals"), compression=spec.get("compression", "gzip"),
                  progress=True, threads=1, force=True)
        state.update(state="done", done=1.0, bytes=out.stat().st_size, finished=time.time())
    except Exception as exc:  # reported to the client as the export's error
        state.update(state="failed", error=str(exc), finished=time.time())
    _write_state(state_path, state)
    return state


def write_csv(h5_path: Path, out_path: Path, signals: list[str] | None) -> None:
    """The HDF5 set as CSV: ``channel, time_ns, <signals>`` rows, channel after channel.
    ``signals``: ``channel.signal`` names (None: every numeric and string signal)."""
    import h5py
    import numpy as np

    with h5py.File(h5_path, "r") as f, open(out_path, "w", newline="") as out:
        chosen: dict[str, list[str]] = {}
        for ch in f:
            group = f[ch]
            if not isinstance(group, h5py.Group):
                continue
            names = [n for n in group if n not in ("time", "recv_time")
                     and not n.endswith(".valid") and isinstance(group[n], h5py.Dataset)]
            if signals is not None:
                names = [n for n in names if f"{ch}.{n}" in signals]
            if names:
                chosen[ch] = names
        if signals is not None:
            known = {f"{c}.{n}" for c, ns in chosen.items() for n in ns}
            missing = [s for s in signals if s not in known]
            if missing:
                raise ExportError(f"the export holds no signal {missing[0]!r}")
        columns = sorted({n for ns in chosen.values() for n in ns},
                         key=lambda n: (n not in next(iter(chosen.values()), []), n))
        w = csv.writer(out)
        w.writerow(["channel", "time_ns", *columns])
        for ch, names in chosen.items():
            group = f[ch]
            t = group["time"][()]
            data = {}
            for n in names:
                v = group[n][()]
                if v.dtype.kind in "OSU":
                    v = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in v],
                                 dtype=object)
                data[n] = v
            step = 65536
            for i in range(0, len(t), step):
                rows = [[ch, int(tt)] for tt in t[i : i + step]]
                for n in columns:
                    v = data.get(n)
                    for r, row in enumerate(rows):
                        row.append("" if v is None else v[i + r])
                w.writerows(rows)


class Exports:
    """The export jobs of one server."""

    def __init__(self, folder: Path, cache_dir: Path):
        self.folder = Path(folder)
        self.cache_dir = Path(cache_dir)
        self.jobs: dict[str, Future] = {}
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def start(self, spec: dict) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._prune()
        export_id = secrets.token_hex(8)
        state = {"id": export_id, "state": "queued", "done": 0.0, "error": None,
                 "spec": spec, "bytes": 0, "started": time.time()}
        _write_state(self.folder / f"{export_id}.json", state)
        self.jobs[export_id] = self.pool().submit(
            run_export, str(self.cache_dir), str(self.folder), export_id, spec)
        return state

    def state(self, export_id: str) -> dict | None:
        if not EXPORT_ID.fullmatch(export_id):
            return None
        try:
            state = json.loads((self.folder / f"{export_id}.json").read_text())
        except (OSError, ValueError):
            return None
        job = self.jobs.get(export_id)
        if job is not None and job.done() and state.get("state") in ("queued", "running"):
            exc = job.exception()
            state.update(state="failed", error=f"the export worker failed: {exc}")
        return state

    def file(self, export_id: str) -> Path | None:
        if not EXPORT_ID.fullmatch(export_id):
            return None
        path = self.folder / f"{export_id}.h5"
        return path if path.is_file() else None

    def _prune(self) -> None:
        try:
            states = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        for p in states[:-MAX_KEPT] if len(states) > MAX_KEPT else []:
            for f in self.folder.glob(f"{p.stem}.*"):  # .json, .h5 and its CSVs
                try:
                    f.unlink()
                except OSError:
                    pass
            self.jobs.pop(p.stem, None)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __repr__(self) -> str:
        return f"<Exports {self.folder} {len(self.jobs)} jobs>"


def parse_spec(body: Any, now_ns: int | None = None) -> dict:
    """Validate a ``POST /api/exports`` body -> the spec for ``run_export``."""
    if not isinstance(body, dict):
        raise ExportError("the body must be a JSON object")
    allowed = {"tag", "start_ns", "end_ns", "channels", "signals", "compression"}
    unknown = set(body) - allowed
    if unknown:
        raise ExportError(f"unknown field {sorted(unknown)[0]!r}; allowed: {sorted(allowed)}")
    spec: dict[str, Any] = {}
    if "tag" in body:
        from ..tags import TagError, validate_tag_name

        try:
            spec["tag"] = validate_tag_name(body["tag"])
        except TagError as exc:
            raise ExportError(str(exc)) from None
    for key in ("start_ns", "end_ns"):
        if key in body:
            v = body[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
                raise ExportError(f"'{key}' must be an integer of ns since the epoch")
            spec[key] = v
    if "tag" not in spec and not ("start_ns" in spec and "end_ns" in spec):
        raise ExportError("give 'tag', or 'start_ns' and 'end_ns'")
    if "start_ns" in spec and "end_ns" in spec and spec["start_ns"] >= spec["end_ns"]:
        raise ExportError("'start_ns' must be before 'end_ns'")
    for key in ("channels", "signals"):
        if key in body:
            v = body[key]
            if not isinstance(v, list) or not v or len(v) > 1024 or not all(
                    isinstance(s, str) and 0 < len(s) <= 256 for s in v):
                raise ExportError(f"'{key}' must be a non-empty list of names or globs")
            spec[key] = v
    if "compression" in body:
        v = body["compression"]
        if v not in ("gzip", "none", "lzf"):
            raise ExportError("'compression' must be 'gzip', 'none' or 'lzf'")
        spec["compression"] = v
    return spec
