"""Points in time as SpeedData takes and shows them: int ns since the epoch (UTC).

``parse_time`` accepts ``datetime`` (naive = local time, as Python does),
``numpy.datetime64``, ISO 8601 strings (``"2026-11-25T10:31:00.5Z"``; no offset = local
time), ints (ns since the epoch), ``"now"`` and relative forms: ``"-5min"``,
``"now-30s"``, ``"+1h"`` (relative to now), or a ``timedelta`` (added to now).
``parse_range`` checks both ends of a range; ``format_time`` shows one point, to the ns.
A time that cannot be parsed raises :class:`~speeddata.errors.ReadError`.
"""

from __future__ import annotations

import re
import time as _time
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np

from .config import parse_duration
from .errors import ReadError

__all__ = ["parse_time", "parse_range", "format_time"]

_RELATIVE = re.compile(r"^\s*(now)?\s*(?:([+-])\s*([0-9.]+\s*[a-zA-Z]*))?\s*$")
_ISO_FRACTION = re.compile(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$")


def parse_time(value: Any, now_ns: int | None = None) -> int | None:
    """A time as int ns since the epoch (UTC); None stays None. See the module docstring."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ReadError(f"{value!r} is not a time")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ReadError("NaT is not a time")
        return int(value.astype("datetime64[ns]").astype(np.int64))
    if isinstance(value, datetime):
        return _datetime_ns(value)
    if isinstance(value, date):
        return _datetime_ns(datetime(value.year, value.month, value.day))
    now_ns = _time.time_ns() if now_ns is None else now_ns
    if isinstance(value, timedelta):
        return now_ns + (value // timedelta(microseconds=1)) * 1000
    if isinstance(value, float):
        raise ReadError(
            f"{value!r}: a float time is ambiguous; give int ns since the epoch, a datetime, "
            "an ISO string or a relative time such as '-5min'"
        )
    if not isinstance(value, str):
        raise ReadError(f"{value!r} is not a time")
    text = value.strip()
    if re.fullmatch(r"-?\d+", text) and len(text.lstrip("-")) > 8:
        return int(text)  # ns since the epoch (a date like 20261125 has 8 digits)
    m = _RELATIVE.match(text)
    if m and (m.group(1) or m.group(2)):
        if not m.group(2):
            return now_ns
        try:
            seconds = parse_duration(m.group(3).replace(" ", ""))
        except ValueError as exc:
            raise ReadError(f"{value!r}: {exc}") from None
        delta = round(seconds * 1e9)
        return now_ns + delta if m.group(2) == "+" else now_ns - delta
    return _iso_ns(text, value)


def _datetime_ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.astimezone()  # naive: local time, as datetime.timestamp() does
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta // timedelta(microseconds=1)) * 1000


def _iso_ns(text: str, original: Any) -> int:
    extra_ns = 0
    m = _ISO_FRACTION.match(text)
    if m:
        digits = m.group(2)
        extra_ns = int((digits + "000000000")[:9])
        text = m.group(1) + m.group(3)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ReadError(
            f"{original!r} is not a time; use an ISO time ('2026-11-25T10:31:00Z'), "
            "ns since the epoch, 'now' or a relative time ('-5min', 'now-30s')"
        ) from None
    return _datetime_ns(dt.replace(microsecond=0)) + extra_ns


def format_time(t_ns: int | None) -> str:
    """ns since the epoch -> ``2026-11-25T10:31:00.123456789Z`` (UTC)."""
    if t_ns is None:
        return "-"
    sec, ns = divmod(int(t_ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns:09d}Z"


def parse_range(start: Any, end: Any, now_ns: int | None = None) -> tuple[int | None, int | None]:
    """Both ends of a time range, checked: ``start < end`` when both are given."""
    now_ns = _time.time_ns() if now_ns is None else now_ns
    s, e = parse_time(start, now_ns), parse_time(end, now_ns)
    if s is not None and e is not None and s >= e:
        raise ReadError(
            f"empty time range: start {format_time(s)} is not before end {format_time(e)}"
        )
    return s, e
