"""speeddata.config: unit parsing, the default config, an example config, and every error."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from speeddata.config import (
    DEFAULT_CONFIG,
    CacheConfig,
    Config,
    ConfigError,
    UpConfig,
    load_config,
    parse_address,
    parse_budget,
    parse_duration,
    parse_size,
)
from speeddata.errors import SpeedDataError
from speeddata.schema import Schema

# ---------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("64 MiB", 64 * 1024**2),
        ("64MiB", 64 * 1024**2),
        ("64 mib", 64 * 1024**2),
        ("512 kB", 512_000),
        ("1 KiB", 1024),
        ("2 GB", 2_000_000_000),
        ("1.5 GiB", 3 * 1024**3 // 2),
        ("1 TiB", 1024**4),
        ("10 b", 10),
    ],
)
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-1, "negative"),
        (True, "number of bytes"),
        ("64 MiBs", "not a size.*'64 MiB'"),
        ("lots", "not a size"),
        ("-3 MiB", "not a size"),
        ("1e400 GiB", "too large"),
    ],
)
def test_parse_size_errors(value, match):
    with pytest.raises(ValueError, match=match):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30s", 30.0),
        ("2h", 7200.0),
        ("500ms", 0.5),
        ("5min", 300.0),
        ("5m", 300.0),
        ("7d", 7 * 86400.0),
        ("1w", 7 * 86400.0),
        ("250us", 250e-6),
        (" 1.5 h ", 5400.0),
        ("12", 12.0),
        (12, 12.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(value, expected):
    assert parse_duration(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("30 parsecs", "not a duration.*'30s'"),
        ("soon", "not a duration"),
        (-1, "negative"),
        (False, "such as '30s'"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("1e400s", "finite"),
    ],
)
def test_parse_duration_errors(value, match):
    with pytest.raises(ValueError, match=match):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("80%", ("share", 0.8)),
        ("100%", ("share", 1.0)),
        (" 2.5 % ", ("share", 0.025)),
        ("20 GiB", ("bytes", 20.0 * 1024**3)),
        (10_000_000, ("bytes", 10_000_000.0)),
    ],
)
def test_parse_budget(value, expected):
    kind, amount = parse_budget(value)
    assert kind == expected[0] and amount == pytest.approx(expected[1])


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("0%", "between 0% and 100%"),
        ("150%", "between 0% and 100%"),
        ("lots%", "between 0% and 100%"),
        (0, "keeps nothing"),
        ("0 GiB", "keeps nothing"),
        ("big", "not a size"),
    ],
)
def test_parse_budget_errors(value, match):
    with pytest.raises(ValueError, match=match):
        parse_budget(value)


def test_budget_bytes():
    assert CacheConfig(budget=("share", 0.5)).budget_bytes(1000) == 500
    assert CacheConfig(budget=("bytes", 123.0)).budget_bytes(1000) == 123


@pytest.mark.parametrize(
    ("value", "multicast", "expected"),
    [
        ("127.0.0.1:8080", False, ("127.0.0.1", 8080)),
        ("localhost:1", False, ("localhost", 1)),
        ("239.10.0.1:7000", True, ("239.10.0.1", 7000)),
        ("224.0.0.251:65535", True, ("224.0.0.251", 65535)),
    ],
)
def test_parse_address(value, multicast, expected):
    assert parse_address(value, multicast=multicast) == expected


@pytest.mark.parametrize(
    ("value", "multicast", "match"),
    [
        ("127.0.0.1", False, "not HOST:PORT"),
        ("127.0.0.1:80:1", False, "not HOST:PORT"),
        ("127.0.0.1:http", False, "port 'http' is not a number"),
        ("127.0.0.1:0", False, "port must be 1..65535"),
        ("127.0.0.1:65536", False, "port must be 1..65535"),
        ("bad host!:80", False, "not a host name"),
        ("10.0.0.1:7000", True, "not a multicast address"),
        ("localhost:7000", True, "not an IPv4 address"),
    ],
)
def test_parse_address_errors(value, multicast, match):
    with pytest.raises(ValueError, match=match):
        parse_address(value, multicast=multicast)


# ---------------------------------------------------------------------------- good configs


def test_default_config_loads():
    cfg = load_config()
    assert cfg.path == DEFAULT_CONFIG
    assert [ch.name for ch in cfg.channels] == ["engine", "power", "status"]
    assert [ch.port for ch in cfg.channels] == [26001, 26002, 26003]
    assert [ch.id for ch in cfg.channels] == [1, 2, 3]
    assert [ch.decimation for ch in cfg.channels] == [10, 100, 1]
    for ch in cfg.channels:
        assert isinstance(ch.schema, Schema)
        assert ch.schema_path == DEFAULT_CONFIG.parent / "schemas" / f"{ch.name}.avsc"
        assert ch.time == "time" == ch.schema.time_field
    # everything stays on this host by default
    assert cfg.multicast.interface == "127.0.0.1" and cfg.multicast.ttl == 1
    assert cfg.multicast.full == ("239.10.0.1", 7000)
    assert cfg.multicast.decimated == ("239.10.0.2", 7001)
    assert cfg.server.listen == ("127.0.0.1", 8080)
    assert cfg.relay.listen == "127.0.0.1" and cfg.relay.shared_port == 26000
    assert cfg.cache.budget == ("share", 0.8)
    assert cfg.cache.segment_size == 64 * 1024**2
    assert cfg.cache.segment_age == 3600.0 and cfg.cache.flush_interval == pytest.approx(0.2)
    assert cfg.channel("power").port == 26002
    with pytest.raises(KeyError, match="no channel 'nope'"):
        cfg.channel("nope")
    assert load_config(DEFAULT_CONFIG) == cfg


def test_empty_config_gives_the_dataclass_defaults():
    cfg = load_config(text="")
    assert cfg == Config()
    assert cfg.channels == () and cfg.path is None


@pytest.fixture
def confdir(tmp_path: Path, schemas_dir: Path) -> Path:
    """A folder with a schemas/ subfolder holding the demo schemas."""
    shutil.copytree(schemas_dir, tmp_path / "schemas")
    return tmp_path


README_EXAMPLE = """\
# A test stand: two channels, a bigger cache, multicast on loopback.
[cache]
dir = "/var/lib/speeddata"
budget = "20 GiB"
segment_size = "128 MiB"
segment_age = "30min"
max_age = "7d"
flush_interval = "100ms"

[multicast]
interface = "127.0.0.1"
ttl = 1
loop = true
full = "239.255.10.1:7400"
decimated = "239.255.10.2:7400"
announce_interval = "2s"

[relay]
control = "ipc:///tmp/speeddata-control"
stats = "tcp://127.0.0.1:7401"
shared_port = 0          # no shared port
listen = "127.0.0.1"
rcvbuf = "32 MiB"
workers = 2
batch = 128
coalesce = "250us"
keep_rejected = true

[server]
listen = "127.0.0.1:9000"
token = "s3cret-token"
window = "2h"

[[channels]]
name = "engine"
port = 27001
schema = "schemas/engine.avsc"
decimation = 10
id = 7

[[channels]]
name = "status.slow"
port = 27002
schema = "schemas/status.avsc"
time = "host.free_disk"
"""


def test_readme_style_example_loads(confdir: Path, tmp_path: Path, monkeypatch):
    path = confdir / "speeddata.toml"
    path.write_text(README_EXAMPLE)
    monkeypatch.chdir(tmp_path.parent)  # schema paths are relative to the file, not the cwd
    cfg = load_config(path)
    assert cfg.path == path
    assert cfg.cache == CacheConfig(
        dir=Path("/var/lib/speeddata"),
        budget=("bytes", 20.0 * 1024**3),
        segment_size=128 * 1024**2,
        segment_age=1800.0,
        max_age=7 * 86400.0,
        flush_interval=pytest.approx(0.1),
        enabled=True,
    )
    assert cfg.multicast.full == ("239.255.10.1", 7400)
    assert cfg.multicast.decimated == ("239.255.10.2", 7400)  # same port, other group: fine
    assert cfg.multicast.announce_interval == 2.0 and cfg.multicast.loop is True
    assert cfg.relay.control == "ipc:///tmp/speeddata-control"
    assert cfg.relay.shared_port is None  # 0 disables it
    assert cfg.relay.rcvbuf == 32 * 1024**2
    assert (cfg.relay.workers, cfg.relay.batch, cfg.relay.keep_rejected) == (2, 128, True)
    assert cfg.relay.coalesce == pytest.approx(250e-6)
    assert cfg.server.listen == ("127.0.0.1", 9000)
    assert cfg.server.token == "s3cret-token" and cfg.server.window == 7200.0
    engine, status = cfg.channels
    assert (engine.name, engine.port, engine.id, engine.decimation) == ("engine", 27001, 7, 10)
    assert engine.schema_path == confdir / "schemas" / "engine.avsc"
    assert (status.name, status.id, status.decimation) == ("status.slow", 2, 1)
    assert status.time == "host.free_disk" == status.schema.time_field
    assert status.schema.time_op == status.schema.signal("host.free_disk").op_index
    assert status.schema_path == confdir / "schemas" / "status.avsc"
    assert cfg.replace(channels=()).channels == ()


def test_text_config_resolves_schemas_against_the_cwd(confdir: Path, monkeypatch):
    monkeypatch.chdir(confdir)
    cfg = load_config(text='[[channels]]\nname = "e"\nschema = "schemas/engine.avsc"\n')
    assert cfg.channels[0].schema_path == confdir / "schemas" / "engine.avsc"
    assert cfg.channels[0].port is None and cfg.channels[0].id == 1


def test_absolute_schema_path(confdir: Path, tmp_path: Path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    path = other / "c.toml"
    path.write_text(f'[[channels]]\nname = "e"\nschema = "{confdir / "schemas" / "power.avsc"}"\n')
    assert load_config(path).channels[0].schema.name == "power"


# ---------------------------------------------------------------------------- errors

CHANNEL = """
[[channels]]
name = "engine"
port = 27001
schema = "schemas/engine.avsc"
"""
CHANNEL2 = """
[[channels]]
name = "power"
port = 27002
schema = "schemas/power.avsc"
"""


# (config text, key named in the message, the fix or what is allowed)
ERRORS = {
    "unknown-top-level": ("colour = 'red'\n", "colour", "allowed at the top level: cache"),
    "unknown-cache": ("[cache]\nbudjet = '80%'\n", "cache.budjet", "allowed keys in [cache]"),
    "unknown-multicast": ("[multicast]\nttl2 = 1\n", "multicast.ttl2", "interface, ttl"),
    "unknown-relay": ("[relay]\nport = 1\n", "relay.port", "shared_port"),
    "unknown-server": ("[server]\nhost = 'x'\n", "server.host", "listen, token, window"),
    "unknown-channel": (
        CHANNEL + "rate = 100\n",
        "channels[0].rate",
        "name, port, schema, decimation",
    ),
    "duplicate-port": (
        CHANNEL + CHANNEL2.replace("27002", "27001"),
        "channels[1].port",
        "27001 is already used by channels[0]",
    ),
    "port-is-shared-port": (
        "[relay]\nshared_port = 27001\n" + CHANNEL,
        "channels[0].port",
        "already used by relay.shared_port",
    ),
    "duplicate-name": (
        CHANNEL + CHANNEL2.replace('"power"', '"engine"'),
        "channels[1].name",
        "'engine' is already used by channels[0]",
    ),
    "duplicate-id": (
        CHANNEL + "id = 5\n" + CHANNEL2 + "id = 5\n",
        "channels[1].id",
        "5 is already used by channels[0]",
    ),
    "bad-name": (
        CHANNEL.replace('"engine"', '"en gine"'),
        "channels[0].name",
        "use letters, digits",
    ),
    "missing-name": (
        CHANNEL.replace('name = "engine"', ""),
        "channels[0].name",
        "every channel needs a name",
    ),
    "missing-schema-key": (
        CHANNEL.replace('schema = "schemas/engine.avsc"', ""),
        "channels[0].schema",
        "give the path of the channel's .avsc",
    ),
    "missing-schema-file": (
        CHANNEL.replace("engine.avsc", "nope.avsc"),
        "channels[0].schema",
        "nope.avsc' does not exist",
    ),
    "unsupported-schema": (
        CHANNEL.replace("engine.avsc", "array.avsc"),
        "channels[0].schema",
        "field 'xs': type 'array' is not supported",
    ),
    "bad-time-field": (
        CHANNEL + "time = 'rpm'\n",
        "channels[0].time",
        "time field 'rpm' must be a non-null long",
    ),
    "unknown-time-field": (
        CHANNEL + "time = 'when'\n",
        "channels[0].time",
        "time field 'when' is not a field",
    ),
    "port-out-of-range": (
        CHANNEL.replace("27001", "70000"),
        "channels[0].port",
        "integer from 1 to 65535",
    ),
    "port-is-string": (
        CHANNEL.replace("27001", '"27001"'),
        "channels[0].port",
        "integer from 1 to 65535",
    ),
    "decimation-zero": (CHANNEL + "decimation = 0\n", "channels[0].decimation", "integer from 1"),
    "channels-not-array": (
        "[channels]\nname = 'x'\n",
        "channels",
        "array of tables ([[channels]])",
    ),
    "channel-not-table": ("channels = [1, 2]\n", "channels[0]", "must be a table"),
    "section-not-table": ("cache = 5\n", "cache", "must be a table ([cache]), not an integer"),
    "group-not-multicast": (
        "[multicast]\nfull = '127.0.0.1:7000'\n",
        "multicast.full",
        "not a multicast address (224.0.0.0/4)",
    ),
    "group-bad-port": (
        "[multicast]\ndecimated = '239.1.1.1:99999'\n",
        "multicast.decimated",
        "port must be 1..65535",
    ),
    "group-no-port": ("[multicast]\nfull = '239.1.1.1'\n", "multicast.full", "not HOST:PORT"),
    "groups-equal": (
        "[multicast]\nfull = '239.1.1.1:7000'\ndecimated = '239.1.1.1:7000'\n",
        "multicast.decimated",
        "must differ from multicast.full",
    ),
    "bad-interface": (
        "[multicast]\ninterface = 'eth0'\n",
        "multicast.interface",
        "not an IPv4 address (e.g. '127.0.0.1')",
    ),
    "ttl-range": ("[multicast]\nttl = 300\n", "multicast.ttl", "integer from 0 to 255"),
    "loop-type": (
        "[multicast]\nloop = 'yes'\n",
        "multicast.loop",
        "must be true or false, not a string 'yes'",
    ),
    "server-listen": ("[server]\nlisten = '127.0.0.1'\n", "server.listen", "not HOST:PORT"),
    "server-token-type": ("[server]\ntoken = 123\n", "server.token", "must be a string"),
    "zmq-endpoint": (
        "[relay]\ncontrol = '127.0.0.1:7100'\n",
        "relay.control",
        "not a ZeroMQ endpoint (e.g. 'tcp://127.0.0.1:7100')",
    ),
    "zmq-same": (
        "[relay]\ncontrol = 'tcp://127.0.0.1:7100'\nstats = 'tcp://127.0.0.1:7100'\n",
        "relay.stats",
        "must differ from relay.control",
    ),
    "relay-listen": ("[relay]\nlisten = 'all'\n", "relay.listen", "not an IPv4 address"),
    "rcvbuf-range": ("[relay]\nrcvbuf = '8 GiB'\n", "relay.rcvbuf", "from 4 KiB to 2 GiB"),
    "nice-range": ("[relay]\nnice = -30\n", "relay.nice", "integer from -20 to 19"),
    "coalesce-long": ("[relay]\ncoalesce = '1s'\n", "relay.coalesce", "at most 100ms"),
    "coalesce-unit": ("[relay]\ncoalesce = '5 parsecs'\n", "relay.coalesce", "not a duration"),
    "workers-type": ("[relay]\nworkers = 1.5\n", "relay.workers", "integer from 1 to 256"),
    "shared-port-bool": (
        "[relay]\nshared_port = true\n",
        "relay.shared_port",
        "integer from 0 to 65535",
    ),
    "budget-float": (
        "[cache]\nbudget = 0.5\n",
        "cache.budget",
        "must be a string or an integer, not a number 0.5",
    ),
    "budget-share": ("[cache]\nbudget = '120%'\n", "cache.budget", "between 0% and 100%"),
    "budget-zero": ("[cache]\nbudget = 0\n", "cache.budget", "keeps nothing"),
    "size-bool": (
        "[cache]\nsegment_size = true\n",
        "cache.segment_size",
        "must be a string or an integer, not a boolean",
    ),
    "size-unit": (
        "[cache]\nsegment_size = '64 MB/s'\n",
        "cache.segment_size",
        "write bytes or e.g. '64 MiB'",
    ),
    "size-range": (
        "[cache]\nsegment_size = '1 KiB'\n",
        "cache.segment_size",
        "from 64 KiB to 4 GiB",
    ),
    "duration-unit": (
        "[cache]\nsegment_age = '1 fortnight'\n",
        "cache.segment_age",
        "write e.g. '500ms', '30s'",
    ),
    "duration-nan": ("[cache]\nflush_interval = nan\n", "cache.flush_interval", "finite"),
    "duration-inf": ("[cache]\nmax_age = inf\n", "cache.max_age", "finite"),
    "duration-negative": ("[server]\nwindow = -5\n", "server.window", "cannot be negative"),
    "server-token-short": ("[server]\ntoken = 'abc'\n", "server.token", "at least 8"),
    "server-window-range": ("[server]\nwindow = '3d'\n", "server.window", "from 1 s to 24 h"),
    "server-memory-range": ("[server]\nmemory = '10 KiB'\n", "server.memory", "from 1 MiB"),
    "server-memory-unit": ("[server]\nmemory = 'lots'\n", "server.memory", "write bytes"),
    "server-group": ("[server]\ngroup = 'half'\n", "server.group", "'full' or 'decimated'"),
    "server-frame-hz": ("[server]\nframe_hz = 1000\n", "server.frame_hz", "from 1 to 240"),
    "server-frame-hz-type": ("[server]\nframe_hz = '30'\n", "server.frame_hz",
                             "must be an integer or a number"),
    "server-dashboards": ("[server]\ndashboards = 'no/such/folder'\n", "server.dashboards",
                          "does not exist"),
    "server-unknown": ("[server]\nport = 8080\n", "server.port", "allowed keys in [server]"),
    "dir-type": ("[cache]\ndir = 5\n", "cache.dir", "must be a string"),
    "up-on-failure": ("[up]\non_failure = 'retry'\n", "up.on_failure",
                      'must be "restart" (the part, after a back-off) or "stop" (everything)'),
    "up-on-failure-type": ("[up]\non_failure = true\n", "up.on_failure", "must be a string"),
    "up-backoff-unit": ("[up]\nrestart_backoff = 'soon'\n", "up.restart_backoff",
                        "write e.g. '500ms', '30s'"),
    "up-backoff-zero": ("[up]\nrestart_backoff = 0\n", "up.restart_backoff",
                        "from 10 ms to 1 h"),
    "up-backoff-max-below": ("[up]\nrestart_backoff = '5s'\nrestart_backoff_max = '2s'\n",
                             "up.restart_backoff_max", "from up.restart_backoff (5 s)"),
    "up-max-restarts": ("[up]\nmax_restarts = -1\n", "up.max_restarts",
                        "integer from 0 to 1000000"),
    "up-unknown": ("[up]\nrestart = true\n", "up.restart", "allowed keys in [up]: on_failure"),
    "enabled-type": ("[cache]\nenabled = 1\n", "cache.enabled", "must be true or false"),
}


@pytest.mark.parametrize(("text", "key", "fix"), ERRORS.values(), ids=ERRORS.keys())
def test_config_error_names_file_key_and_fix(confdir: Path, text: str, key: str, fix: str):
    (confdir / "schemas" / "array.avsc").write_text(
        '{"type": "record", "name": "a", "fields": '
        '[{"name": "xs", "type": {"type": "array", "items": "int"}}]}'
    )
    path = confdir / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert fix in msg, msg
    assert isinstance(info.value, SpeedDataError)


def test_invalid_toml_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.toml"
    path.write_text("[cache\nbudget = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML: .*line 1"):
        load_config(path)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_text_errors_say_config(confdir: Path):
    with pytest.raises(ConfigError, match=r"^<config>: cache\.oops: unknown key"):
        load_config(text="[cache]\noops = 1\n")


def test_default_ids_follow_position_and_explicit_ids_are_kept(confdir: Path):
    path = confdir / "ids.toml"
    path.write_text(CHANNEL + "id = 40\n" + CHANNEL2)
    cfg = load_config(path)
    assert [ch.id for ch in cfg.channels] == [40, 2]


def test_error_message_is_one_line_without_traceback_noise(confdir: Path):
    path = confdir / "bad.toml"
    path.write_text(textwrap.dedent(CHANNEL) + "rate = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_the_readme_config_block_loads(confdir: Path):
    """The ```toml block users copy from README.md must load as it is."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    path = confdir / "speeddata.toml"
    path.write_text(block)
    cfg = load_config(path)
    assert [c.name for c in cfg.channels] == ["engine"]
    assert cfg.channels[0].schema.time_field == "time"
    assert cfg.cache.max_age is None  # shown commented out: no default (tests/test_readme.py)


def test_server_section_defaults_and_values(confdir: Path, monkeypatch):
    monkeypatch.delenv("SPEEDDATA_TOKEN", raising=False)
    cfg = load_config(text="")
    assert cfg.server.listen == ("127.0.0.1", 8080) and cfg.server.token is None
    assert cfg.server.group == "full" and cfg.server.frame_hz == 30.0
    assert cfg.server.memory == 512 * 1024**2 and cfg.server.dashboards is None
    (confdir / "dash").mkdir()
    path = confdir / "s.toml"
    path.write_text("[server]\nwindow = '5 min'\nmemory = '64 MiB'\ngroup = 'decimated'\n"
                    "frame_hz = 10\ndashboards = 'dash'\n")
    cfg = load_config(path)
    assert cfg.server.window == 300.0 and cfg.server.memory == 64 * 1024**2
    assert cfg.server.group == "decimated" and cfg.server.frame_hz == 10
    assert cfg.server.dashboards == confdir / "dash"  # relative to the config's folder
    monkeypatch.setenv("SPEEDDATA_TOKEN", "from-the-environment")
    assert load_config(text="").server.token == "from-the-environment"


def test_rejected_dir_is_the_deprecated_name_of_keep_rejected(tmp_path, caplog):
    """Issue 10, item 20: ``relay.rejected_dir`` is a boolean named like a path; it is
    ``relay.keep_rejected`` now, the old name accepted with a warning in the log."""
    with caplog.at_level("WARNING", logger="speeddata.config"):
        cfg = load_config(text="[relay]\nrejected_dir = true\n")
    assert cfg.relay.keep_rejected is True
    assert "relay.rejected_dir is deprecated" in caplog.text
    assert "relay.keep_rejected = true" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="speeddata.config"):
        assert load_config(text="[relay]\nkeep_rejected = true\n").relay.keep_rejected
    assert caplog.text == ""
    with pytest.raises(ConfigError, match="old name of relay.keep_rejected"):
        load_config(text="[relay]\nrejected_dir = true\nkeep_rejected = false\n")
    with pytest.raises(ConfigError, match="relay.rejected_dir: must be true or false"):
        load_config(text='[relay]\nrejected_dir = "/tmp/rej"\n')


def test_server_keys(tmp_path):
    """The live server's keys (README "Configure"): memory, group, frame_hz, dashboards."""
    (tmp_path / "dash").mkdir()
    path = tmp_path / "s.toml"
    path.write_text('[server]\nmemory = "64 MiB"\ngroup = "decimated"\nframe_hz = 10\n'
                    'dashboards = "dash"\nwindow = "30s"\n')
    s = load_config(path).server
    assert (s.memory, s.group, s.frame_hz, s.window) == (64 * 1024**2, "decimated", 10, 30.0)
    assert s.dashboards == tmp_path / "dash"
    for text, message in (
        ('group = "all"', "server.group: must be 'full' or 'decimated'"),
        ("frame_hz = 1000", "server.frame_hz: must be from 1 to 240"),
        ('memory = "1 kB"', "server.memory: must be from 1 MiB"),
        ('window = "2d"', "server.window: must be from 1 s to 24 h"),
        ('dashboards = "nope"', "server.dashboards: folder .* does not exist"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(text=f"[server]\n{text}\n")


def test_up_section_defaults_and_values(tmp_path):
    """Issue 14: [up] says what `speeddata up` does when a process dies; by default it
    restarts it after 1 s, doubling to 30 s, and gives up after 10 failures in a row."""
    assert load_config(text="").up == UpConfig("restart", 1.0, 30.0, 10)
    assert load_config(DEFAULT_CONFIG).up == UpConfig()
    path = tmp_path / "up.toml"
    path.write_text("[up]\non_failure = 'stop'\nrestart_backoff = '250ms'\n"
                    "restart_backoff_max = '2min'\nmax_restarts = 0\n")
    assert load_config(path).up == UpConfig("stop", 0.25, 120.0, 0)
