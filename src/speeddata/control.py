"""Client side of the relay's ZeroMQ control plane (docs/relay-internals.md, "Control plane").

``request(endpoint, {"cmd": "status"})`` sends one JSON request to the relay's REP socket
and returns its JSON reply; ``format_status(status)`` renders a status reply as the table
``speeddata relay status`` and ``speeddata up`` print.
"""

from __future__ import annotations

import json
import textwrap
import time
from datetime import datetime, timezone

import zmq

from .errors import SpeedDataError

__all__ = [
    "ControlError", "request", "format_status", "format_bytes", "format_count", "format_compact"
]


class ControlError(SpeedDataError, RuntimeError):
    """The relay did not answer, or refused a request; the message says why."""


def request(endpoint: str, payload: dict, timeout: float = 3.0, check: bool = True) -> dict:
    """Send ``payload`` to the relay's control socket and return the reply.

    Raises ControlError when nothing answers within ``timeout`` seconds, and (with
    ``check``) when the reply is ``{"ok": false, "error": ...}``.
    """
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise ControlError(f"cannot connect to {endpoint}: {exc}") from exc
        sock.send(json.dumps(payload).encode())
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise ControlError(
                f"no relay answers on {endpoint} within {timeout:g} s; is it running "
                "(`speeddata relay -c FILE`) with this relay.control endpoint?"
            )
        reply = json.loads(sock.recv())
    finally:
        sock.close()
    if check and not reply.get("ok"):
        raise ControlError(f"the relay refused {payload.get('cmd')!r}: {reply.get('error')}")
    return reply


def format_count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def format_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def format_time(ns: int | None) -> str:
    if not ns:
        return "-"
    t = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


#: the status table fits a terminal of this many columns (issue 10, item 19)
WIDTH = 80

COLUMNS = (
    ("channel", "<"),
    ("datagrams", ">"),
    ("records", ">"),
    ("rejected", ">"),
    ("drops", ">"),  # kernel drops (receive buffer overflows)
    ("multicast", ">"),
    ("data", ">"),  # bytes of data in the cache (not the pre-allocated space)
    ("newest", "<"),  # newest record's time, UTC
)


def format_compact(n: int | None) -> str:
    """A count in at most 6 characters: ``987``, ``12.3k``, ``4.56M``."""
    if n is None:
        return "-"
    if abs(n) < 10_000:
        return f"{n:,}"
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        v = n / scale
        if abs(v) < 999.5 or unit == "T":
            return f"{v:.3g}{unit}"
    return f"{n:.3g}"  # pragma: no cover


def _clock(ns: int | None) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%H:%M:%S")


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, its middle elided."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "~" + text[len(text) - (keep - keep // 2) :]


def format_status(status: dict, width: int = WIDTH) -> str:
    """The relay status (a ``status`` reply) as a text table, one row per channel, that
    fits ``width`` columns (80: a default terminal). Counts are exact while they fit,
    else shortened (``12.3M``); ``data`` is the bytes of records the cache holds, the
    space allocated on disk is in the head line."""
    channels = status.get("channels", [])

    def rows(count) -> list[tuple[str, ...]]:
        out = []
        for ch in channels:
            c = ch.get("counters", {})
            cache = ch.get("cache") or {}
            out.append(
                (
                    str(ch["name"]),
                    count(c.get("datagrams")),
                    count(c.get("records")),
                    count(c.get("rejected")),
                    count(c.get("kernel_drops")),
                    count(c.get("multicast_sent")),
                    format_bytes(cache.get("bytes")) if cache else "-",
                    _clock(cache.get("newest_ns")),
                )
            )
        shared = status.get("shared")
        if shared:
            c = shared.get("counters", {})
            out.append(
                (
                    f"shared:{shared.get('port')}",
                    "-",
                    "-",
                    count(c.get("rejected")),
                    count(c.get("kernel_drops")),
                    "-",
                    "-",
                    "-",
                )
            )
        return out

    def table(body) -> list[str]:
        widths = [
            max(len(name), *(len(r[i]) for r in body)) if body else len(name)
            for i, (name, _) in enumerate(COLUMNS)
        ]
        rest = sum(widths[1:]) + 2 * (len(COLUMNS) - 1)
        widths[0] = max(7, min(widths[0], width - rest))  # long names are cut

        def line(cells) -> str:
            cells = [_fit(cells[0], widths[0]), *cells[1:]]
            return "  ".join(
                f"{cell:{align}{w}}"
                for cell, (_, align), w in zip(cells, COLUMNS, widths, strict=True)
            ).rstrip()

        return [line([name for name, _ in COLUMNS])] + [line(r) for r in body]

    lines = table(rows(format_count))
    if max(len(x) for x in lines) > width:
        lines = table(rows(format_compact))

    cache = status.get("cache") or {}
    head = [
        f"relay pid {status.get('pid')}, {status.get('engine')} engine, "
        f"{status.get('workers')} worker(s), up {_duration(status.get('uptime', 0))}"
    ]
    if cache.get("enabled"):
        text = (
            f": {format_bytes(cache.get('bytes'))} of data"
            f" ({format_bytes(cache.get('allocated'))} allocated),"
            f" budget {format_bytes(cache.get('budget_bytes'))}"
        )
        head.append("cache " + _fit(str(cache.get("dir")), max(10, width - 6 - len(text))) + text)
    else:
        head.append("cache off")
    out = head + lines
    if not channels and not status.get("shared"):
        out.append("(no channels)")
    for note in _why_lines(status) + _clock_notes(status):
        out.extend(textwrap.wrap(note, width, subsequent_indent="  ", break_on_hyphens=False))
    return "\n".join(out)


def _why_lines(status: dict) -> list[str]:
    """Why records are missing: rejects by reason, unknown fingerprints, storing errors."""
    out = []
    rows = [(ch.get("name"), ch) for ch in status.get("channels", [])]
    if status.get("shared"):
        rows.append((f"shared :{status['shared'].get('port')}", status["shared"]))
    for name, row in rows:
        reasons = row.get("rejects") or {}
        if reasons:
            text = ", ".join(f"{r} {format_count(n)}" for r, n in sorted(reasons.items()))
            fps = row.get("unknown_fingerprints") or {}
            if fps:
                text += " (" + ", ".join(
                    f"{fp}: {format_count(n)}" for fp, n in sorted(fps.items())
                ) + ")"
            out.append(f"rejected {name}: {text}")
        failed = (row.get("counters") or {}).get("store_failed")
        if failed:
            why = row.get("store_error") or "unknown error"
            out.append(f"not stored {name}: {format_count(failed)} datagram(s) ({why})")
    return out


def _clock_notes(status: dict) -> list[str]:
    """One line per channel whose source clock was flagged (time_backwards, time_future:
    docs/relay-internals.md, "Source clocks"); none when all is well."""
    notes = []
    for ch in status.get("channels", []):
        c = ch.get("counters", {})
        back, future = c.get("time_backwards", 0), c.get("time_future", 0)
        if back or future:
            notes.append(  # within 80 columns for names up to 16 characters
                f"clock {ch['name']}: {format_count(back)} datagram(s) back in time, "
                f"{format_count(future)} over 10 min ahead (stored as sent)"
            )
    return notes


def wait_for_relay(endpoint: str, timeout: float = 10.0) -> dict:
    """Poll ``status`` until the relay answers (it may still be starting); its reply."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return request(endpoint, {"cmd": "status"}, timeout=min(1.0, timeout))
        except ControlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
