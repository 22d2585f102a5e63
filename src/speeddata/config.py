"""Deployment configuration: one TOML file -> frozen dataclasses, with errors that say the fix.

Every error names the file, the key (as a dotted path such as ``channels[2].port``) and
what is allowed. Relative schema paths are resolved against the config file's folder;
the cache folder is resolved against the current directory.

The built-in default (``speeddata/default.toml``) runs three demo channels with
everything on 127.0.0.1, so ``speeddata up`` works with no file at all.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpeedDataError
from .schema import Schema, SchemaError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Config",
    "ConfigError",
    "CacheConfig",
    "ChannelConfig",
    "MulticastConfig",
    "RelayConfig",
    "ServerConfig",
    "UpConfig",
    "DEFAULT_CONFIG",
    "SMALL_CONFIG",
    "load_config",
    "parse_size",
    "parse_duration",
    "parse_budget",
    "parse_address",
    "RESERVED_NAMES",
    "channel_name_error",
]

DEFAULT_CONFIG = Path(__file__).with_name("default.toml")
#: the demo channels on a small device (docs/scaling.md, "Footprint")
SMALL_CONFIG = Path(__file__).with_name("raspberry-pi.toml")

log = logging.getLogger(__name__)


class ConfigError(SpeedDataError, ValueError):
    """A configuration that cannot be used; the message names file, key and fix."""


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "min": 60.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z%]*)\s*$")


def parse_size(value: int | str) -> int:
    """``"64 MiB"`` -> 67108864. Integers are bytes. SI (kB, MB) and IEC (KiB, MiB) units."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as '64 MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _NUMBER_UNIT.match(str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size; write bytes or e.g. '64 MiB', '2 GB', '512 kB'")
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not math.isfinite(size):
        raise ValueError(f"{value!r} is too large; write e.g. '64 MiB', '2 GB', '512 kB'")
    return int(size)


def parse_duration(value: int | float | str) -> float:
    """``"30s"``, ``"2h"``, ``"500ms"``, ``"7d"`` -> seconds. Plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration must be seconds or a string such as '30s'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _NUMBER_UNIT.match(str(value))
        unit = m.group(2).lower() if m else None
        if not m or (unit and unit not in _DURATION_UNITS):
            raise ValueError(
                f"{value!r} is not a duration; write e.g. '500ms', '30s', '5min', '2h', '7d'"
            )
        seconds = float(m.group(1)) * _DURATION_UNITS.get(unit or "s", 1.0)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds):  # TOML allows inf and nan
        raise ValueError(f"{value!r} is not a finite duration; write e.g. '30s', '2h', '7d'")
    return seconds


def parse_budget(value: int | str) -> tuple[str, float]:
    """``"80%"`` -> ``("share", 0.8)``; ``"20 GiB"`` -> ``("bytes", 21474836480)``."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1]) / 100.0
        except ValueError:
            share = -1.0
        if not 0.0 < share <= 1.0:
            raise ValueError(f"{value!r}: a share of the file system must be between 0% and 100%")
        return ("share", share)
    size = parse_size(value)
    if size == 0:
        raise ValueError("a budget of 0 bytes keeps nothing; write e.g. '20 GiB' or '80%'")
    return ("bytes", float(size))


def parse_address(value: str, multicast: bool = False) -> tuple[str, int]:
    """``"239.10.0.1:7000"`` -> ``("239.10.0.1", 7000)``, checking host and port."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. '127.0.0.1:8080')")
    host, _, port_s = value.partition(":")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"{value!r}: port {port_s!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{value!r}: port must be 1..65535")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        if multicast:
            raise ValueError(f"{value!r}: {host!r} is not an IPv4 address") from None
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError(f"{value!r}: {host!r} is not a host name or IPv4 address") from None
        return host, port
    if multicast and not ip.is_multicast:
        raise ValueError(f"{value!r}: {host} is not a multicast address (224.0.0.0/4)")
    return host, port


@dataclass(frozen=True)
class CacheConfig:
    dir: Path = Path("data")
    #: ("bytes", n) or ("share", fraction of the file system holding ``dir``)
    budget: tuple[str, float] = ("share", 0.8)
    segment_size: int = 64 * 1024**2
    segment_age: float = 3600.0  # rotate a segment after this many seconds
    max_age: float | None = None  # delete untagged segments older than this
    flush_interval: float = 0.2  # close a block at least this often (seconds)
    enabled: bool = True
    #: copy blocks into a shared map of the segment that a helper thread populates 4-8 MiB
    #: ahead (the fast path at high rates; those pages count in the relay's RSS); false:
    #: every block by pwritev, for small devices at low rates (docs/scaling.md)
    segment_map: bool = True

    def budget_bytes(self, total_fs_bytes: int) -> int:
        kind, value = self.budget
        return int(value * total_fs_bytes) if kind == "share" else int(value)


@dataclass(frozen=True)
class MulticastConfig:
    interface: str = "127.0.0.1"
    ttl: int = 1
    loop: bool = True
    full: tuple[str, int] = ("239.10.0.1", 7000)
    decimated: tuple[str, int] = ("239.10.0.2", 7001)
    announce_interval: float = 1.0


MAX_COALESCE = 0.1  # relay.coalesce: longer would hold datagrams for several frames


@dataclass(frozen=True)
class RelayConfig:
    control: str = "tcp://127.0.0.1:7100"  # ZeroMQ REP: status, add, remove, rotate
    stats: str = "tcp://127.0.0.1:7101"  # ZeroMQ PUB: stats once a second
    shared_port: int | None = 26000  # single-object encoded datagrams, routed by fingerprint
    listen: str = "127.0.0.1"  # address the channel ports bind to
    rcvbuf: int = 32 * 1024**2  # per channel socket; memory is used only by a backlog
    workers: int = 1
    batch: int = 256  # datagrams per recvmmsg (docs/performance.md: +3-7 % over 64)
    nice: int = -10  # scheduling priority of the receive loops (needs root/CAP_SYS_NICE)
    #: after a pass that took less than a batch while datagrams come faster than one per
    #: this time, wait this long so that the next pass takes many (docs/relay-internals.md)
    coalesce: float = 0.0005
    keep_rejected: bool = False  # keep rejected datagrams under <cache>/rejected/


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    #: required for state-changing requests when not on loopback; env SPEEDDATA_TOKEN
    token: str | None = None
    window: float = 600.0  # seconds of recent data kept per channel
    memory: int = 512 * 1024**2  # bound of the live window and its summaries, all channels
    group: str = "full"  # multicast group subscribed to: "full" or "decimated"
    frame_hz: float = 30.0  # websocket frames per second per client, at most
    dashboards: Path | None = None  # folder of HTML dashboards (/d/<name>)


#: what ``up.on_failure`` allows
ON_FAILURE = ("restart", "stop")


@dataclass(frozen=True)
class UpConfig:
    """How ``speeddata up`` treats a part (relay, live server, demo source) that dies."""

    on_failure: str = "restart"  # "restart" it after a back-off, or "stop" everything
    restart_backoff: float = 1.0  # seconds before the first restart; doubles each time...
    restart_backoff_max: float = 30.0  # ...up to this; a part that ran this long starts over
    max_restarts: int = 10  # failures in a row before up stops everything; 0: no limit


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    port: int | None
    schema: Schema
    id: int
    decimation: int = 1
    time: str | None = None

    @property
    def schema_path(self) -> Path | None:
        return self.schema.path


@dataclass(frozen=True)
class Config:
    cache: CacheConfig = field(default_factory=CacheConfig)
    multicast: MulticastConfig = field(default_factory=MulticastConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    channels: tuple[ChannelConfig, ...] = ()
    path: Path | None = None
    up: UpConfig = field(default_factory=UpConfig)

    def channel(self, name: str) -> ChannelConfig:
        for ch in self.channels:
            if ch.name == name:
                return ch
        raise KeyError(f"no channel {name!r}; channels: {[c.name for c in self.channels]}")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")

#: Names in the cache folder (and in a tag's folder) that are not channels
#: (docs/cache.md, "Layout"): a channel of one of these names would put its segments
#: among the cache's own files. ``shared`` is the shared port's (rejected/shared.rej).
#: Compared without case, for caches on case-insensitive file systems.
RESERVED_NAMES = frozenset(
    {
        "tags",
        "rejected",
        "shared",
        "relay.lock",
        "relay-channels.json",
        "relay-channels.json.tmp",
        "tag.json",
        "tag.json.tmp",
        "up.log",
    }
)


def channel_name_error(name: Any) -> str | None:
    """Why ``name`` cannot name a channel, or None when it can: 1 to 64 letters, digits,
    '_', '-', '.', starting with a letter or '_', and none of RESERVED_NAMES."""
    if not isinstance(name, str):
        return f"a channel name is a string, not {_toml_type(name)}"
    shown = repr(name) if len(name) <= 80 else repr(name[:80] + "...")
    if not _NAME.match(name):
        return (
            f"{shown}: use letters, digits, '_', '-', '.' (1 to 64), starting with a letter "
            "or '_'"
        )
    if name.lower() in RESERVED_NAMES:
        return (
            f"{shown} is reserved: the cache folder keeps its own files under "
            f"{', '.join(sorted(RESERVED_NAMES))}; give the channel another name"
        )
    return None


class _Section:
    """Reads one TOML table, tracking which keys were used so unknown ones are reported."""

    def __init__(self, where: str, key: str, table: Any, allowed: tuple[str, ...]):
        self.where = where
        self.key = key
        if not isinstance(table, dict):
            self.fail(key, f"must be a table ([{key}]), not {_toml_type(table)}")
        self.table = table
        for k in table:
            if k not in allowed:
                if key == _TOP:
                    self.fail(k, f"unknown key; allowed at the top level: {', '.join(allowed)}")
                self.fail(
                    f"{key}.{k}", f"unknown key; allowed keys in [{key}]: {', '.join(allowed)}"
                )

    def fail(self, key: str, why: str) -> None:
        raise ConfigError(f"{self.where}: {key}: {why}")

    def get(self, name: str, default: Any, parse=None, types: tuple = ()) -> Any:
        if name not in self.table:
            return default
        value = self.table[name]
        is_bool = isinstance(value, bool)
        if types and (not isinstance(value, types) or is_bool and bool not in types):
            allowed = " or ".join(_TOML_TYPES[t] for t in types)
            self.fail(f"{self.key}.{name}", f"must be {allowed}, not {_toml_type(value)} {value!r}")
        if parse is None:
            return value
        try:
            return parse(value)
        except ValueError as exc:
            self.fail(f"{self.key}.{name}", str(exc))


_TOP = "config"  # the _Section key of the document itself
_TOML_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _toml_type(value: Any) -> str:
    """The TOML name of a parsed value's type, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return _TOML_TYPES.get(type(value), type(value).__name__)


def _positive_int(value: Any, lo: int = 1, hi: int = 2**31) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"must be an integer from {lo} to {hi}, not {value!r}")
    return value


def load_config(path: str | Path | None = None, text: str | None = None) -> Config:
    """Load a deployment config from ``path`` (or TOML ``text``); None means the default."""
    if text is None:
        path = Path(path) if path is not None else DEFAULT_CONFIG
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    where = str(path) if path is not None else "<config>"
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    _Section(where, _TOP, doc, ("cache", "multicast", "relay", "server", "up", "channels"))

    c = _Section(where, "cache", doc.get("cache", {}), _field_names(CacheConfig))
    d = CacheConfig()
    cache = CacheConfig(
        dir=Path(c.get("dir", str(d.dir), types=(str,))),
        budget=c.get("budget", d.budget, parse_budget, (str, int)),
        segment_size=c.get("segment_size", d.segment_size, parse_size, (str, int)),
        segment_age=c.get("segment_age", d.segment_age, parse_duration, (str, int, float)),
        max_age=c.get("max_age", d.max_age, parse_duration, (str, int, float)),
        flush_interval=c.get("flush_interval", d.flush_interval, parse_duration, (str, int, float)),
        enabled=c.get("enabled", d.enabled, types=(bool,)),
        segment_map=c.get("segment_map", d.segment_map, types=(bool,)),
    )
    if not 64 * 1024 <= cache.segment_size <= 2**32 - 1:
        c.fail("cache.segment_size", "must be from 64 KiB to 4 GiB (block offsets are 32-bit)")

    m = _Section(
        where, "multicast", doc.get("multicast", {}),
        ("interface", "ttl", "loop", "full", "decimated", "announce_interval"),
    )
    d = MulticastConfig()
    multicast = MulticastConfig(
        interface=m.get("interface", d.interface, _ipv4, (str,)),
        ttl=m.get("ttl", d.ttl, lambda v: _positive_int(v, 0, 255)),
        loop=m.get("loop", d.loop, types=(bool,)),
        full=m.get("full", d.full, lambda v: parse_address(v, multicast=True), (str,)),
        decimated=m.get(
            "decimated", d.decimated, lambda v: parse_address(v, multicast=True), (str,)
        ),
        announce_interval=m.get(
            "announce_interval", d.announce_interval, parse_duration, (str, int, float)
        ),
    )
    if multicast.full == multicast.decimated:
        m.fail("multicast.decimated", "must differ from multicast.full (another group or port)")

    r = _Section(
        where, "relay", doc.get("relay", {}), (*_field_names(RelayConfig), "rejected_dir")
    )
    d = RelayConfig()
    keep_rejected = r.get("keep_rejected", d.keep_rejected, types=(bool,))
    if "rejected_dir" in r.table:  # the old name of keep_rejected: a boolean, not a path
        if "keep_rejected" in r.table:
            r.fail("relay.rejected_dir", "is the old name of relay.keep_rejected; keep only "
                   "relay.keep_rejected")
        keep_rejected = r.get("rejected_dir", d.keep_rejected, types=(bool,))
        log.warning(
            "%s: relay.rejected_dir is deprecated (it is true or false, not a folder): write "
            "relay.keep_rejected = %s", where, "true" if keep_rejected else "false"
        )
    relay = RelayConfig(
        control=r.get("control", d.control, _zmq_endpoint, (str,)),
        stats=r.get("stats", d.stats, _zmq_endpoint, (str,)),
        shared_port=r.get(
            "shared_port", d.shared_port, lambda v: _positive_int(v, 0, 65535) or None
        ),
        listen=r.get("listen", d.listen, _ipv4, (str,)),
        rcvbuf=r.get("rcvbuf", d.rcvbuf, parse_size, (str, int)),
        workers=r.get("workers", d.workers, lambda v: _positive_int(v, 1, 256)),
        batch=r.get("batch", d.batch, lambda v: _positive_int(v, 1, 1024)),
        nice=r.get("nice", d.nice, lambda v: _positive_int(v, -20, 19)),
        coalesce=r.get("coalesce", d.coalesce, parse_duration, (str, int, float)),
        keep_rejected=keep_rejected,
    )
    if relay.coalesce > MAX_COALESCE:
        r.fail(
            "relay.coalesce",
            f"must be at most {MAX_COALESCE * 1e3:g}ms (it delays datagrams by up to that "
            "much); write e.g. '500us', or 0 to turn coalescing off",
        )
    if not 4096 <= relay.rcvbuf <= 2**31 - 1:  # SO_RCVBUF takes a C int
        r.fail("relay.rcvbuf", "must be from 4 KiB to 2 GiB")
    if relay.control == relay.stats:
        r.fail("relay.stats", f"must differ from relay.control ({relay.control!r})")

    s = _Section(where, "server", doc.get("server", {}), _field_names(ServerConfig))
    d = ServerConfig()
    dashboards = s.get("dashboards", None, types=(str,))
    server = ServerConfig(
        listen=s.get("listen", d.listen, parse_address, (str,)),
        token=s.get("token", d.token, types=(str,)) or os.environ.get("SPEEDDATA_TOKEN") or None,
        window=s.get("window", d.window, parse_duration, (str, int, float)),
        memory=s.get("memory", d.memory, parse_size, (str, int)),
        group=s.get("group", d.group, types=(str,)),
        frame_hz=s.get("frame_hz", d.frame_hz, types=(int, float)),
        dashboards=None if dashboards is None else (
            Path(dashboards) if Path(dashboards).is_absolute() else base / dashboards
        ),
    )
    if server.token is not None and len(server.token) < 8:
        s.fail("server.token", "must be at least 8 characters (e.g. `openssl rand -hex 16`)")
    if not 1.0 <= server.window <= 86400.0:
        s.fail("server.window", f"must be from 1 s to 24 h, not {server.window:g} s")
    if not 1 << 20 <= server.memory <= 1 << 40:
        s.fail("server.memory", "must be from 1 MiB to 1 TiB (e.g. '512 MiB')")
    if server.group not in ("full", "decimated"):
        s.fail("server.group", f"must be 'full' or 'decimated', not {server.group!r}")
    if not 1.0 <= server.frame_hz <= 240.0:
        s.fail("server.frame_hz", f"must be from 1 to 240 per second, not {server.frame_hz!r}")
    if server.dashboards is not None and not server.dashboards.is_dir():
        s.fail("server.dashboards", f"folder {str(server.dashboards)!r} does not exist")

    up = _up_section(_Section(where, "up", doc.get("up", {}), _field_names(UpConfig)))

    raw_channels = doc.get("channels", [])
    if not isinstance(raw_channels, list):
        raise ConfigError(f"{where}: channels: must be an array of tables ([[channels]])")
    channels = []
    used_ports = {p: "relay.shared_port" for p in [relay.shared_port] if p}
    used_names: dict[str, str] = {}
    used_ids: dict[int, str] = {}
    for i, raw in enumerate(raw_channels):
        key = f"channels[{i}]"
        ch = _Section(where, key, raw, ("name", "port", "schema", "decimation", "time", "id"))
        if "name" not in raw:
            ch.fail(f"{key}.name", "missing; every channel needs a name")
        if "schema" not in raw:
            ch.fail(f"{key}.schema", "missing; give the path of the channel's .avsc file")
        name = ch.get("name", None, types=(str,))
        why = channel_name_error(name)
        if why:
            ch.fail(f"{key}.name", why)
        if name in used_names:
            ch.fail(f"{key}.name", f"{name!r} is already used by {used_names[name]}")
        used_names[name] = key
        port = ch.get("port", None, lambda v: _positive_int(v, 1, 65535))
        if port is not None:
            if port in used_ports:
                ch.fail(f"{key}.port", f"{port} is already used by {used_ports[port]}")
            used_ports[port] = key
        cid = ch.get("id", i + 1, lambda v: _positive_int(v, 1, 2**32 - 1))
        if cid in used_ids:
            ch.fail(f"{key}.id", f"{cid} is already used by {used_ids[cid]}")
        used_ids[cid] = key
        schema_path = Path(ch.get("schema", None, types=(str,)))
        if not schema_path.is_absolute():
            schema_path = base / schema_path
        if not schema_path.exists():
            ch.fail(f"{key}.schema", f"file {str(schema_path)!r} does not exist")
        if not schema_path.is_file():
            ch.fail(f"{key}.schema", f"{str(schema_path)!r} is not a regular file (an .avsc)")
        time_field = ch.get("time", None, types=(str,))
        try:
            schema = Schema(schema_path)
        except SchemaError as exc:
            ch.fail(f"{key}.schema", str(exc))
        if time_field is not None:
            try:
                schema = Schema(schema.avsc, time=time_field)
            except SchemaError as exc:
                ch.fail(f"{key}.time", str(exc))
            schema.path = schema_path
        channels.append(
            ChannelConfig(
                name=name,
                port=port,
                schema=schema,
                id=cid,
                decimation=ch.get("decimation", 1, lambda v: _positive_int(v, 1, 2**32 - 1)),
                time=schema.time_field,
            )
        )
    return Config(
        cache, multicast, relay, server, tuple(channels), Path(path) if path else None, up=up
    )


def _up_section(u: _Section) -> UpConfig:
    """[up]: what ``speeddata up`` does when one of its processes dies."""
    d = UpConfig()
    on_failure = u.get("on_failure", d.on_failure, types=(str,))
    if on_failure not in ON_FAILURE:
        u.fail("up.on_failure", f"must be \"restart\" (the part, after a back-off) or \"stop\" "
               f"(everything), not {on_failure!r}")
    up = UpConfig(
        on_failure=on_failure,
        restart_backoff=u.get(
            "restart_backoff", d.restart_backoff, parse_duration, (str, int, float)
        ),
        restart_backoff_max=u.get(
            "restart_backoff_max", d.restart_backoff_max, parse_duration, (str, int, float)
        ),
        max_restarts=u.get(
            "max_restarts", d.max_restarts, lambda v: _positive_int(v, 0, 1_000_000)
        ),
    )
    if not 0.01 <= up.restart_backoff <= 3600.0:
        u.fail("up.restart_backoff", f"must be from 10 ms to 1 h (e.g. '1s'), not "
               f"{up.restart_backoff:g} s")
    if not up.restart_backoff <= up.restart_backoff_max <= 86400.0:
        u.fail("up.restart_backoff_max", f"must be from up.restart_backoff "
               f"({up.restart_backoff:g} s) to 24 h (e.g. '30s'), not "
               f"{up.restart_backoff_max:g} s")
    return up


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address (e.g. '127.0.0.1')") from None


def _zmq_endpoint(value: str) -> str:
    if not re.match(r"^(tcp://[^:]+:\d+|ipc://.+|inproc://.+)$", value):
        raise ValueError(f"{value!r} is not a ZeroMQ endpoint (e.g. 'tcp://127.0.0.1:7100')")
    return value
