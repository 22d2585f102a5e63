"""What a pivot writes: the channels and signals chosen (globs), a reader per channel,
and how each signal becomes datasets (types, attributes, values), plus the loss and gap
counts of a channel's group."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import parse_duration
from ..reader import ChannelReader, ReadError, column_names
from ..schema import Schema
from .errors import PivotError


def h5_types(sig, mode: str) -> tuple[np.dtype, Any]:
    """(numpy dtype of the column, HDF5 dtype of the dataset) of a signal."""
    import h5py

    if sig.type == "string":
        return np.dtype(object), h5py.string_dtype("utf-8")
    if sig.type == "bytes":
        return np.dtype(object), h5py.vlen_dtype(np.dtype(np.uint8))
    if sig.type == "enum":
        n = len(sig.symbols)
        base = np.int8 if n <= 127 else np.int16 if n <= 32767 else np.int32
        return np.dtype(base), h5py.enum_dtype({s: i for i, s in enumerate(sig.symbols)}, base)
    return sig.dtype, sig.dtype


def signal_attrs(sig, schema: Schema) -> dict:
    attrs = {
        "avro_type": sig.type,
        "signal": sig.name,
        "doc": sig.doc,
        "units": sig.unit,
        "logical_type": sig.logical_type,
        "nullable": bool(sig.nullable),
    }
    if sig.symbols is not None:
        attrs["symbols"] = list(sig.symbols)
    if sig.name == schema.time_field:
        attrs["time_field"] = True
    return attrs


def to_dataset(sig, values: np.ndarray) -> np.ndarray:
    if sig.type == "enum":
        n = len(sig.symbols)
        return values.astype(np.int8 if n <= 127 else np.int16 if n <= 32767 else np.int32)
    if sig.type == "bytes":
        out = np.empty(len(values), object)
        out[:] = [np.frombuffer(v, np.uint8) for v in values]
        return out
    return values


def is_numeric(sig) -> bool:
    return sig.type in ("boolean", "int", "long", "float", "double")


@dataclass
class Plan:
    channel: str
    reader: ChannelReader
    names: list[str]


def loss_counts(datagrams: np.ndarray, gap_factor: float) -> dict:
    """Loss and gap counts from the receive-time entries of a channel's datagrams."""
    out = {
        "n_datagrams": len(datagrams),
        "lost_datagrams": 0,
        "seq_gaps": 0,
        "seq_resets": 0,
        "recv_gaps": 0,
        "recv_gap_max_ns": 0,
        "recv_gap_total_ns": 0,
        "recv_interval_median_ns": 0,
        "recv_gap_threshold_ns": 0,
        "gap_factor": float(gap_factor),
    }
    if len(datagrams) < 2:
        return out
    seq = datagrams["seq"].astype(np.int64)
    step = (seq[1:] - seq[:-1]) % (1 << 32)
    resets = (step == 0) | (step >= (1 << 31))
    gaps = (step > 1) & ~resets
    out["seq_resets"] = int(resets.sum())
    out["seq_gaps"] = int(gaps.sum())
    out["lost_datagrams"] = int((step[gaps] - 1).sum())
    recv = np.sort(datagrams["recv_ns"])
    interval = np.diff(recv)
    positive = interval[interval > 0]
    if len(positive):
        median = int(np.median(positive))
        threshold = int(median * gap_factor)
        big = interval[interval > threshold]
        out.update(
            recv_interval_median_ns=median,
            recv_gap_threshold_ns=threshold,
            recv_gaps=len(big),
            recv_gap_max_ns=int(big.max()) if len(big) else 0,
            recv_gap_total_ns=int(big.sum()),
        )
    return out


def parse_period(resample: Any) -> int:
    if isinstance(resample, (int, np.integer)) and not isinstance(resample, bool):
        period = int(resample)
    else:
        try:
            period = round(parse_duration(str(resample)) * 1e9)
        except ValueError as exc:
            raise PivotError(f"--resample: {exc}") from None
    if period <= 0:
        raise PivotError(f"--resample must be a positive duration, not {resample!r}")
    return period


def match_channels(available: list[str], patterns: Any) -> list[str]:
    if patterns is None or len(patterns) == 0:
        return list(available)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: list[str] = []
    for pat in patterns:
        hits = [c for c in available if fnmatch.fnmatchcase(c, pat)]
        if not hits:
            raise PivotError(f"no channel matches {pat!r}; channels: {available}")
        chosen += [c for c in hits if c not in chosen]
    return [c for c in available if c in chosen]


def plan_channels(
    cache: Path, chosen: list[str], signals: Any, start_ns, end_ns, tag, decoder
) -> list[Plan]:
    """Open a reader per channel and apply the signal globs.

    A glob must match a signal of some chosen channel; channels none of whose signals
    match are left out (``--signals engine.rpm`` writes only engine).
    """
    patterns = [signals] if isinstance(signals, str) else list(signals or [])
    plans: list[Plan] = []
    matched = {p: False for p in patterns}
    available: list[str] = []  # CHANNEL.SIGNAL of every chosen channel, for errors
    try:
        for channel in chosen:
            try:
                reader = ChannelReader(cache, channel, start_ns, end_ns, None, tag=tag,
                                       decoder=decoder)
            except ReadError as exc:
                raise PivotError(str(exc)) from None
            names = [s.name for s in reader.schema.signals]
            available += [f"{channel}.{n}" for n in column_names(reader.schema)]
            if patterns:
                hit = []
                for pat in patterns:
                    h = [n for n in names if fnmatch.fnmatchcase(n, pat)
                         or fnmatch.fnmatchcase(f"{channel}.{n}", pat)]
                    matched[pat] = matched[pat] or bool(h)
                    hit += h
                names = [n for n in names if n in set(hit)]
                if not names:
                    reader.close()
                    continue
            reader.names = names
            plans.append(Plan(channel, reader, names))
        missing = [p for p, ok in matched.items() if not ok]
        if missing:
            raise PivotError(
                f"no signal matches {missing[0]!r}; signals: {', '.join(available) or 'none'}"
            )
    except BaseException:
        for p in plans:
            p.reader.close()
        raise
    return plans
