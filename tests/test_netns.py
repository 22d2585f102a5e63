"""The whole system on several hosts (issue 14): network namespaces joined by a bridge.

::

    ns sources 10.77.0.1 --+
    ns relay   10.77.0.2 --+-- br0 (ns switch: IGMP snooping, querier) --+-- ns server 10.77.0.3
    ns relay2  10.77.0.4 --+        (added by the third test)

Sources send UDP to the relay across the bridge; the relay multicasts (interface
10.77.0.2, TTL 1) to 239.77.0.1:7000 and 239.77.0.2:7001; the live server joins the full
group on 10.77.0.3 and subscribes to the relay's stats over TCP (tcp://10.77.0.2:7101).
The root namespace gets no device, address or route, and no namespace has a default route:
nothing here can reach the machine's network. The tests ask the server's REST API from
inside its namespace. docs/deployment.md maps this to a real site.

Needs root (CI runs as root, ``.ci/run`` installs iproute2); skipped otherwise. About 15 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import netns_helpers as nh
from relay_helpers import wait_for

pytestmark = pytest.mark.skipif(nh.netns_unavailable() is not None,
                                reason=str(nh.netns_unavailable()))

SCHEMAS = Path(__file__).resolve().parents[1] / "src" / "speeddata" / "schemas"
FULL = "239.77.0.1:7000"
DECIMATED = "239.77.0.2:7001"
SERVER_URL = "http://127.0.0.1:8080"  # inside the server's namespace
ENGINE_PORT = 26001


def relay_config(path: Path, address: str, channels: list[tuple[str, str, int, int]],
                 control: str, stats: str) -> Path:
    """A relay on ``address``: channels bound there, multicast out of it (TTL 1)."""
    lines = [
        "[cache]",
        f'dir = "{path.parent / "cache"}"',
        'budget = "50 MB"',
        'segment_size = "1 MiB"',
        'flush_interval = "50ms"',
        "[multicast]",
        f'interface = "{address}"',
        "ttl = 1",
        f'full = "{FULL}"',
        f'decimated = "{DECIMATED}"',
        'announce_interval = "200ms"',
        "[relay]",
        f'listen = "{address}"',
        f'control = "{control}"',
        f'stats = "{stats}"',
        "shared_port = 0",
    ]
    for name, schema, port, cid in channels:
        lines += ["[[channels]]", f'name = "{name}"', f"port = {port}", f"id = {cid}",
                  f'schema = "{SCHEMAS / (schema + ".avsc")}"', "decimation = 10"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def server_config(path: Path, address: str, relay: str) -> Path:
    """The live server joins the groups on ``address``; the relay's control and stats are
    at ``relay`` (another host)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([
        "[cache]",
        f'dir = "{path.parent / "cache"}"',
        "[multicast]",
        f'interface = "{address}"',
        f'full = "{FULL}"',
        f'decimated = "{DECIMATED}"',
        "[relay]",
        f'control = "tcp://{relay}:7100"',
        f'stats = "tcp://{relay}:7101"',
        "[server]",
        'listen = "127.0.0.1:8080"',
        "frame_hz = 30",
    ]) + "\n")
    return path


class Network:
    """What the tests share: the site, its processes, and the next record number."""

    def __init__(self, site: nh.Site, procs: nh.Processes, root: Path):
        self.site = site
        self.procs = procs
        self.root = root
        self.next_datagram: dict[str, int] = {"engine": 0}
        self.last_record: dict[str, int] = {}

    def api(self, path: str):
        return self.site.get_json("server", SERVER_URL + path)

    def channels(self) -> dict[str, dict]:
        return {c["name"]: c for c in (self.api("/api/channels") or {"channels": []})
                ["channels"]}

    def relay_counters(self, name: str = "engine") -> dict | None:
        """The relay's counters of a channel as the server has them from its stats."""
        status = self.api("/api/status") or {}
        for ch in (status.get("relay") or {}).get("channels", []):
            if ch["name"] == name:
                return ch["counters"]
        return None

    def send(self, count: int, channel: str = "engine", relay: str = "relay",
             port: int = ENGINE_PORT, schema: str = "engine", start: int | None = None
             ) -> dict:
        """``count`` more datagrams of 10 numbered records from the sources' host (from
        datagram ``start`` when given, else after the last sent to ``channel``)."""
        if start is None:
            start = self.next_datagram.setdefault(channel, 0)
            self.next_datagram[channel] = start + count
        sent = nh.send(self.site, "sources", self.site.address(relay), port, channel,
                       start, count, schema=schema)
        if relay == "relay":
            self.last_record[channel] = sent["last"]
        return sent

    def settled(self, name: str = "engine"):
        """Wait until the relay has taken and stored every datagram sent to ``name`` and
        the server has its last record (one path, no reordering: every datagram before
        it has arrived or is lost). Returns (server's channel, relay's counters)."""
        sent = self.next_datagram.get(name, 0)
        last = self.last_record.get(name)

        def done():
            relay = self.relay_counters(name)
            ch = self.channels().get(name)
            if relay is None or ch is None or relay["datagrams"] != sent or \
                    relay["stored_records"] != relay["records"]:
                return None
            latest = ch["latest"].get(f"{name}.rpm")
            if last is not None and (latest is None or latest["value"] != 1000.0 + last):
                return None
            return ch, relay

        return wait_for(done, timeout=20, interval=0.2)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    nh.remove_leftovers()
    root = tmp_path_factory.mktemp("netns")  # configs, caches and the processes' logs
    site = nh.Site()
    procs = nh.Processes(site, root)
    try:
        site.host("sources", 1)
        relay = site.host("relay", 2)
        server = site.host("server", 3)
        procs.speeddata("relay", "relay", "relay", "-c", str(relay_config(
            root / "relay" / "relay.toml", relay, [("engine", "engine", ENGINE_PORT, 1)],
            control=f"tcp://{relay}:7100", stats=f"tcp://{relay}:7101")))
        procs.speeddata("server", "server", "serve", "-c",
                        str(server_config(root / "server" / "server.toml", server, relay)))
        network = Network(site, procs, root)

        def up():
            procs.check_alive("relay", "server")
            # the relay's stats (TCP) and its announce (multicast) reached the server
            return network.relay_counters() is not None and "engine" in network.channels()

        try:
            wait_for(up, timeout=40, interval=0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- relay\n{procs.log('relay')[-3000:]}\n"
                                 f"--- server\n{procs.log('server')[-3000:]}") from None
        yield network
    finally:
        procs.stop()
        site.close()


def test_the_network_is_closed_and_data_flows_end_to_end(net):
    # no namespace has a default route; each sees only the test subnet
    for host in ("sources", "relay", "server"):
        routes = net.site.routes(host)
        assert [r.split()[:3] for r in routes] == [["10.77.0.0/24", "dev", "eth0"]], routes
    ch0, relay0 = net.settled()
    sent = net.send(300)
    assert sent["from"] == "10.77.0.1"  # the source left by its own device
    ch, relay = net.settled()
    # the relay took every datagram from the other host and stored every record
    assert relay["datagrams"] - relay0["datagrams"] == 300
    assert relay["stored_records"] - relay0["stored_records"] == 3000
    assert relay["kernel_drops"] == 0 and relay["rejected"] == 0
    # the server keys the channel by the relay's address on the network
    assert ch["relay"] == "10.77.0.2" and ch["key"] == "10.77.0.2/1"
    assert ch["latest"]["engine.rpm"]["value"] == 1000.0 + sent["last"]
    # (the server keeps the latest time as float seconds: exact to a microsecond)
    assert ch["latest"]["engine.rpm"]["time_ns"] == pytest.approx(
        nh.T0_NS + sent["last"] * 1_000_000, abs=1000)
    # nothing lost on a clean bridge: the server took every datagram
    assert ch["loss"] == {"datagrams": 0, "gaps": 0}
    assert ch["datagrams"] - ch0["datagrams"] == 300
    assert ch["records"] - ch0["records"] == 3000
    # ... and to a browser: the websocket's hello and a latest-values subscription
    ws = nh.ws_latest(net.site, "server", "ws://127.0.0.1:8080/ws", "engine.rpm")
    assert [c["key"] for c in ws["hello"]["channels"]] == ["10.77.0.2/1"]
    assert ws["value"] == 1000.0 + sent["last"]
    status = net.api("/api/status")
    assert status["relay"]["multicast"]["interface"] == "10.77.0.2"
    # the server's join reached the switch: IGMP snooping sends the group to it alone
    assert net.site.members(FULL.split(":")[0]) == {net.site.port("server")}
    assert status["loss"]["engine"] == {"datagrams": 0, "gaps": 0}


def test_a_lossy_link_to_the_server_shows_as_loss_while_the_relay_stores_all(net):
    if net.channels()["engine"]["datagrams"] == 0:
        net.send(50)  # run alone: the server's first datagram sets the seq it counts from
    ch0, relay0 = net.settled()
    qdisc = net.site.drop("server", 20)
    try:
        lossy = net.send(1000)
    finally:
        net.site.undrop("server")
    # a clean tail: a datagram dropped last would otherwise never show as a gap
    tail = net.send(50)
    ch, relay = net.settled()
    lost = ch["loss"]["datagrams"] - ch0["loss"]["datagrams"]
    taken = ch["datagrams"] - ch0["datagrams"]
    relayed = relay["datagrams"] - relay0["datagrams"]
    # the relay (clean link from the sources) took and stored everything
    assert relayed == lossy["datagrams"] + tail["datagrams"] == 1050
    assert relay["stored_records"] - relay0["stored_records"] == 10 * relayed
    assert relay["kernel_drops"] == 0
    # the server lost some on its link, and accounts for every datagram: taken or lost
    assert lost > 0 and ch["loss"]["gaps"] > ch0["loss"]["gaps"], (qdisc, ch)
    assert taken + lost == relayed, (qdisc, ch, relay)
    assert ch["latest"]["engine.rpm"]["value"] == 1000.0 + tail["last"]
    status = net.api("/api/status")
    assert status["loss"]["engine"]["datagrams"] == ch["loss"]["datagrams"]


def test_a_second_relay_on_another_host_appears_without_a_server_restart(net):
    server_pid = net.procs.procs["server"].pid
    uptime0 = net.api("/api/status")["server"]["uptime_s"]
    relay2 = net.site.host("relay2", 4)
    # its own channels; dyno has id 1 again (the first relay's engine is 1 too): the
    # server keys channels by (relay address, id). Its "engine" (id 2) takes a name the
    # first relay has: shown as engine@10.77.0.4, its data apart
    config = relay_config(net.root / "relay2" / "relay.toml", relay2,
                          [("dyno", "engine", 27001, 1), ("power", "power", 27002, 7),
                           ("engine", "engine", 27003, 2)],
                          control=f"tcp://{relay2}:7100", stats=f"tcp://{relay2}:7101")
    net.procs.speeddata("relay2", "relay2", "relay", "-c", str(config))
    twin = "engine@10.77.0.4"

    def announced():
        net.procs.check_alive("relay2", "server")
        chans = net.channels()
        return chans if {"dyno", "power", twin} <= set(chans) else None

    chans = wait_for(announced, timeout=30, interval=0.3)
    assert chans["dyno"]["key"] == "10.77.0.4/1" and chans["power"]["key"] == "10.77.0.4/7"
    assert chans[twin]["key"] == "10.77.0.4/2"
    assert chans["engine"]["key"] == "10.77.0.2/1"
    engine_before = chans["engine"]
    dyno = net.send(40, channel="dyno", relay="relay2", port=27001)
    power = net.send(40, channel="power", relay="relay2", port=27002, schema="power")
    other = net.send(20, channel="engine", relay="relay2", port=27003, start=50_000)

    def arrived():
        chans = net.channels()
        d, p = chans["dyno"]["latest"]["dyno.rpm"], chans["power"]["latest"]["power.voltage"]
        e = chans[twin]["latest"][f"{twin}.rpm"]
        if d and p and e and d["value"] == 1000.0 + dyno["last"] and \
                p["value"] == 230.0 + power["last"] and e["value"] == 1000.0 + other["last"]:
            return chans
        return None

    chans = wait_for(arrived, timeout=20, interval=0.2)
    for name, n in (("dyno", 40), ("power", 40), (twin, 20)):
        assert chans[name]["relay"] == "10.77.0.4"
        assert chans[name]["loss"] == {"datagrams": 0, "gaps": 0}
        assert chans[name]["datagrams"] == n and chans[name]["records"] == 10 * n
    # the first relay's engine did not take the second's records
    assert chans["engine"]["records"] == engine_before["records"]
    assert chans["engine"]["latest"] == engine_before["latest"]
    # the same server process all along
    net.procs.check_alive("server", "relay")
    assert net.procs.procs["server"].pid == server_pid
    assert net.api("/api/status")["server"]["uptime_s"] > uptime0
    log = net.procs.log("server")
    assert "channel dyno (10.77.0.4/1) from 10.77.0.4" in log, log[-3000:]
    assert "Traceback" not in log


def test_a_relay_whose_group_has_no_route_refuses_to_start(net, tmp_path):
    """multicast.interface 0.0.0.0 leaves the choice to the routing table; a host without
    a route for the group (as here: no default route) failed every send, counting
    multicast_errors while nothing left. Now the start fails and says what to set."""
    config = relay_config(tmp_path / "relay.toml", "0.0.0.0",
                          [("engine", "engine", ENGINE_PORT, 1)],
                          control="tcp://127.0.0.1:7100", stats="tcp://127.0.0.1:7101")
    r = nh.run(*net.site.argv("sources", sys.executable, "-m", "speeddata.commands", "relay",
                              "-c", str(config)), check=False, timeout=20)
    assert r.returncode == 2, r.stderr
    assert f"speeddata relay: error: multicast.full {FULL}: no route to it by " \
        "multicast.interface 0.0.0.0 (Network is unreachable)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_leftover_namespaces_of_a_dead_run_are_removed():
    """A run killed before its finalizer leaves namespaces behind; the next removes them
    (only those of our prefix whose pid is gone)."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"sdnet{dead.pid}-leftover"
    nh.run("ip", "netns", "add", name)
    left = None
    try:
        left = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "30"])
        wait_for(lambda: str(left.pid) in nh.run("ip", "netns", "pids", name).stdout.split())
        removed = nh.remove_leftovers()
        assert name in removed
        assert name not in nh.run("ip", "netns", "list").stdout
        assert left.wait(10) == -9  # what ran in it is stopped too
    finally:
        if left is not None and left.poll() is None:
            left.kill()
            left.wait()
        nh.run("ip", "netns", "del", name, check=False)


def test_an_http_error_inside_a_namespace_is_reported(net):
    with pytest.raises(nh.NetnsError, match="HTTP 404"):
        net.api("/api/channels/nothing-here")
    assert net.site.get_json("server", "http://127.0.0.1:1/") is None  # nothing listens
