"""The live server in the test's process: Tornado's AsyncHTTPTestCase and gen_test, real
multicast on 127.0.0.1 from fake relays (wire-format datagrams built with
``speeddata.wire``: announces, data, sequence jumps), tornado's websocket client."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.websocket import websocket_connect

from _cachedata import T0, write_channel
from conftest import SCHEMAS, free_udp_port, random_group
from relay_helpers import encode, engine_record, status_record
from speeddata import downsample, wire
from speeddata.config import ChannelConfig, load_config
from speeddata.schema import Schema
from speeddata.server import LiveServer, ServerError
from speeddata.server.live import IntakeError
from speeddata.server.ws import decode_frame

ENGINE = Schema(SCHEMAS / "engine.avsc")
TOKEN = "0123456789abcdef-token"


class FakeRelay:
    """Sends relay multicast datagrams (docs/wire.md) from ``source`` to the group, out
    of interface 127.0.0.1, TTL 1."""

    def __init__(self, group: tuple[str, int], source: str = "127.0.0.1", cid: int = 1,
                 name: str = "engine", schema: Schema = ENGINE, decimation: int = 1):
        self.group = group
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                             socket.inet_aton("127.0.0.1"))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        self.channel = ChannelConfig(name, None, schema, cid, decimation, schema.time_field)
        self.seq = 0
        self.n_announce = 0

    def announce(self) -> None:
        self.sock.sendto(wire.announce_datagram(self.channel, self.n_announce, time.time_ns()),
                         self.group)
        self.n_announce += 1

    def send(self, records: list[dict], seq: int | None = None) -> None:
        seq = self.seq if seq is None else seq
        payload = encode(self.channel.schema, records)
        header = wire.pack_header(self.channel.id, len(records), seq, time.time_ns())
        self.sock.sendto(header + payload, self.group)
        self.seq = seq + 1

    def close(self) -> None:
        self.sock.close()


def config_text(tmp: Path, group: tuple[str, int], listen: str = "127.0.0.1:8080",
                extra: str = "", decimated: tuple[str, int] | None = None) -> str:
    decimated = decimated or (random_group(), free_udp_port())
    return f"""
[cache]
dir = "{tmp / 'cache'}"
[multicast]
interface = "127.0.0.1"
full = "{group[0]}:{group[1]}"
decimated = "{decimated[0]}:{decimated[1]}"
[relay]
control = "ipc://{tmp}/control"
stats = "ipc://{tmp}/stats"
[server]
listen = "{listen}"
{extra}
"""


class ServerCase(AsyncHTTPTestCase):
    """A LiveServer on the test's IOLoop, joined to a random group on 127.0.0.1."""

    listen = "127.0.0.1:8080"
    extra = ""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sd-srv-", dir="/tmp"))
        self.group = (random_group(), free_udp_port())
        self.decimated_group = (random_group(), free_udp_port())
        while self.decimated_group[0] == self.group[0]:
            self.decimated_group = (random_group(), free_udp_port())
        self.relays: list[FakeRelay] = []
        super().setUp()

    def get_app(self):
        cfg = load_config(text=config_text(self.tmp, self.group, self.listen, self.extra,
                                           self.decimated_group))
        self.server = LiveServer(cfg)
        self.server.start(listen=False)
        self.hub = self.server.hub
        self.intake = self.server.intake
        return self.server.app()

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.server.stop)
        for r in self.relays:
            r.close()
        super().tearDown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # helpers

    def relay(self, group=None, **kwargs) -> FakeRelay:
        r = FakeRelay(group or self.group, **kwargs)
        self.relays.append(r)
        return r

    async def until(self, predicate, timeout: float = 10.0):
        """Let the IOLoop run until predicate() is true."""
        import asyncio

        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {predicate}")
            await asyncio.sleep(0.01)

    async def announced(self, relay: FakeRelay, n: int = 1):
        async def wait():
            relay.announce()
            await self.until(lambda: len(self.intake.channels) >= n, 2)

        for _ in range(5):  # a datagram may be lost on a busy machine: announce again
            try:
                return await wait()
            except AssertionError:
                continue
        raise AssertionError("the announce never arrived")

    async def afetch(self, path: str, **kwargs):
        return await self.http_client.fetch(self.get_url(path), raise_error=False, **kwargs)

    async def ws(self, **headers):
        req = HTTPRequest(self.get_url("/ws").replace("http", "ws"), headers=headers)
        conn = await websocket_connect(req)
        hello = json.loads(await conn.read_message())
        assert hello["type"] == "hello"
        return conn, hello

    async def next_json(self, conn, type_: str, timeout: float = 10.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = await conn.read_message()
            assert msg is not None, "connection closed"
            if isinstance(msg, str):
                obj = json.loads(msg)
                if obj["type"] == "error" and type_ != "error":
                    raise AssertionError(f"error while waiting for {type_}: {obj}")
                if obj["type"] == type_:
                    return obj
        raise AssertionError(f"no {type_} message")

    async def frames_until(self, conn, predicate, timeout: float = 10.0) -> list[dict]:
        frames = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = await conn.read_message()
            assert msg is not None, "connection closed"
            if isinstance(msg, bytes):
                frames.append(decode_frame(msg))
                if predicate(frames):
                    return frames
        raise AssertionError(f"condition not met in {len(frames)} frames")


def records(start: int, n: int, t0: int) -> list[dict]:
    return [engine_record(start + i, t0=t0) for i in range(n)]


def now_s_floor() -> int:
    return (time.time_ns() // 10**9) * 10**9


class TestLive(ServerCase):
    @gen_test(timeout=30)
    async def test_malformed_announces_are_counted_and_never_fatal(self):
        relay = self.relay()
        good = json.loads(wire.announce_payload(relay.channel))
        bad = [b"not json", b"[1, 2]", json.dumps({"name": "x", "schema": {}}).encode(),
               *(json.dumps({**good, "decimation": d}).encode() for d in ("x", -3, [2])),
               json.dumps({**good, "id": "one"}).encode()]
        header = wire.pack_header(1, 0, 0, time.time_ns(), wire.KIND_ANNOUNCE)
        for payload in bad:
            relay.sock.sendto(header + payload, self.group)
        await self.until(lambda: self.intake.n_invalid >= len(bad))
        assert self.intake.channels == {}
        await self.announced(relay)  # the intake goes on: a good announce, then data
        relay.send(records(0, 20, now_s_floor()))
        await self.until(lambda: self.intake.by_name("engine").records == 20)

    @gen_test(timeout=30)
    async def test_subscribe_columns_latest_and_at_most_4_points_per_column(self):
        relay = self.relay()
        await self.announced(relay)
        conn, hello = await self.ws()
        t0 = now_s_floor()
        for i in range(50):
            relay.send(records(i * 20, 20, t0))  # 1000 records, 1 ms apart: 1 s
        await self.until(lambda: self.intake.by_name("engine").records == 1000)
        conn.write_message(json.dumps({"type": "subscribe", "sub": 1, "pixels": 50,
                                       "window_s": 2, "signals": ["engine.rpm", "engine.t*"]}))
        sub = await self.next_json(conn, "subscribed")
        assert sub["signals"] == ["engine.rpm", "engine.torque", "engine.temperature",
                                  "engine.throttle"]
        # 2 s on 50 pixels: 40 ms -> 50 ms on the 1-2-5 ladder, 40 columns
        assert sub["width_ns"] == 50_000_000 and sub["columns"] == 40
        frames = await self.frames_until(conn, lambda f: True)
        blocks = frames[0]["blocks"]
        cols = [b for b in blocks if b["type"] == 1]
        assert sorted(b["signal"] for b in cols) == [0, 1, 2, 3]
        rpm = next(b for b in cols if b["signal"] == 0)
        # never more columns than pixels, and each column carries first/min/max/last
        assert len(rpm["count"]) == sub["columns"] <= 50
        assert rpm["length"] == 16 + 16 + 5 * 8 * len(rpm["count"])
        # against downsample.columns on the records sent (the reference)
        t = t0 + np.arange(1000) * 1_000_000
        x = 1000.0 + np.arange(1000)
        ref = downsample.columns(t, x, rpm["first_column"] * 50_000_000, 50_000_000,
                                 len(rpm["count"]))
        np.testing.assert_array_equal(rpm["count"], ref.count)
        for name in ("first", "min", "max", "last"):
            np.testing.assert_array_equal(rpm[name], getattr(ref, name))
        latest = {b["signal"]: b for b in blocks if b["type"] == 2}
        assert latest[0]["value"] == 1999.0
        # later frames carry only the changed columns
        relay.send(records(1000, 10, t0))
        frames = await self.frames_until(conn, lambda f: any(
            b["type"] == 1 for b in f[-1]["blocks"]))
        upd = next(b for b in frames[-1]["blocks"] if b["type"] == 1 and b["signal"] == 0)
        assert len(upd["count"]) <= 2
        assert upd["first_column"] == (t0 + 1000 * 1_000_000) // 50_000_000 - (
            len(upd["count"]) - 1)
        assert upd["last"][-1] == 2009.0
        conn.close()

    @gen_test(timeout=30)
    async def test_summaries_agree_with_the_raw_rows_at_every_level(self):
        relay = self.relay()
        await self.announced(relay)
        t0 = now_s_floor() - 30 * 10**9
        rng = np.random.default_rng(3)
        steps = np.cumsum(rng.integers(1, 40, 3000)) * 1_000_000  # ~60 s, irregular
        recs = [engine_record(i, t0=0) for i in range(3000)]
        for r, dt in zip(recs, steps, strict=True):
            r["time"] = int(t0 + dt)
            r["rpm"] = float(rng.normal())
        for i in range(0, 3000, 25):
            relay.send(recs[i : i + 25])
        ch = self.intake.by_name("engine")
        await self.until(lambda: ch.records == 3000)
        t = np.array([r["time"] for r in recs])
        x = np.array([r["rpm"] for r in recs])
        col = ch.numeric.index("rpm")
        for width in (10_000_000, 50_000_000, 200_000_000, 1_000_000_000, 5_000_000_000):
            c0 = int(t[0]) // width
            n = int(t[-1]) // width - c0 + 1
            m4 = ch.m4(c0, n, width)
            ref = downsample.columns(t, x, c0 * width, width, n)
            np.testing.assert_array_equal(m4.count, ref.count)
            for name in ("first", "min", "max", "last"):
                np.testing.assert_array_equal(getattr(m4, name)[:, col], getattr(ref, name))

    @gen_test(timeout=30)
    async def test_loss_from_seq_jumps_becomes_gaps(self):
        relay = self.relay()
        await self.announced(relay)
        t0 = now_s_floor()
        for i in range(5):
            relay.send(records(i * 10, 10, t0))  # seq 0..4
        for i in range(5, 10):
            relay.send(records(i * 10 + 100, 10, t0), seq=i + 3)  # seq 8..12: 3 lost
        ch = self.intake.by_name("engine")
        await self.until(lambda: ch.records == 100)
        assert ch.loss.datagrams == 3 and ch.loss.n_gaps == 1
        (gap,) = ch.loss.gaps
        assert gap == (t0 + 49 * 1_000_000, t0 + 150 * 1_000_000)
        conn, hello = await self.ws()
        engine = next(c for c in hello["channels"] if c["name"] == "engine")
        assert engine["loss"] == {"datagrams": 3, "gaps": 1}
        conn.write_message(json.dumps({"type": "subscribe", "sub": 2, "pixels": 100,
                                       "window_s": 1, "signals": ["engine.rpm"]}))
        frames = await self.frames_until(conn, lambda f: any(
            b["type"] == 3 for fr in f for b in fr["blocks"]))
        gaps = next(b for fr in frames for b in fr["blocks"] if b["type"] == 3)
        assert list(gaps["start_s"]) == [gap[0] / 1e9] and list(gaps["end_s"]) == [gap[1] / 1e9]
        # the status API and the metrics show the loss too
        status = json.loads((await self.afetch("/api/status")).body)
        assert status["loss"]["engine"] == {"datagrams": 3, "gaps": 1}
        metrics = (await self.afetch("/metrics")).body.decode()
        assert 'speeddata_server_multicast_lost_datagrams_total{channel="engine",' \
               'relay="127.0.0.1"} 3.0' in metrics
        conn.close()

    @gen_test(timeout=30)
    async def test_two_relays_on_one_group_are_kept_apart(self):
        a = self.relay(source="127.0.0.1")
        b = self.relay(source="127.0.0.2")
        await self.announced(a, 1)
        await self.announced(b, 2)
        t0 = now_s_floor()
        a.send(records(0, 5, t0))
        b.send(records(500, 5, t0))
        chans = self.intake.channels.values()
        await self.until(lambda: sum(c.records for c in chans) == 10)
        keys = sorted(c.key for c in chans)
        assert keys == ["127.0.0.1/1", "127.0.0.2/1"]
        names = {c.key: c.name for c in chans}
        assert names == {"127.0.0.1/1": "engine", "127.0.0.2/1": "engine@127.0.0.2"}
        rpm = {c.key: c.latest_v[c.numeric.index("rpm")] for c in chans}
        assert rpm == {"127.0.0.1/1": 1004.0, "127.0.0.2/1": 1504.0}
        conn, hello = await self.ws()
        assert sorted(c["key"] for c in hello["channels"]) == keys
        conn.write_message(json.dumps({"type": "subscribe", "sub": 1, "pixels": 0,
                                       "signals": ["engine@127.0.0.2.rpm"]}))
        frames = await self.frames_until(conn, lambda f: True)
        (latest,) = [b for b in frames[0]["blocks"] if b["type"] == 2]
        assert latest["value"] == 1504.0
        conn.close()

    @gen_test(timeout=30)
    async def test_bad_messages_are_answered_with_error_and_the_connection_stays(self):
        relay = self.relay()
        await self.announced(relay)
        conn, _ = await self.ws()
        for msg, reason in [
            ("{not json", "not JSON"),
            ("[1, 2]", "JSON object"),
            (json.dumps({"type": "dance"}), "unknown message type"),
            (json.dumps({"type": "subscribe", "sub": "x", "signals": ["engine.rpm"]}),
             "'sub' must be an integer"),
            (json.dumps({"type": "subscribe", "sub": 4, "signals": ["engin.*"]}),
             "no signal matches 'engin.*'"),
            (json.dumps({"type": "subscribe", "sub": 4, "signals": ["engine.rpm"],
                         "pixels": 10, "window_s": -1}), "window_s"),
            (json.dumps({"type": "subscribe", "sub": 4, "signals": ["engine.rpm"],
                         "pixels": 10, "range_ns": [5, 1]}), "range_ns"),
            (json.dumps({"type": "subscribe", "sub": 4, "pixels": 10**9,
                         "signals": ["engine.rpm"]}), "'pixels' must be from 0"),
            ("x" * (64 * 1024 + 1), "at most 65536 bytes"),
            (json.dumps({"type": "pause", "sub": 99}), "no subscription 99"),
        ]:
            conn.write_message(msg)
            err = await self.next_json(conn, "error")
            assert reason in err["message"], (msg[:80], err)
        conn.write_message(json.dumps({"type": "subscribe", "sub": 4, "signals": ["engin.*"]}))
        assert (await self.next_json(conn, "error"))["sub"] == 4
        # what one connection may ask for is bounded: 6 signals x 16000 columns each,
        # 21 such subscriptions fit in 2 M signal columns, the 22nd does not
        for sub in range(100, 122):
            conn.write_message(json.dumps({"type": "subscribe", "sub": sub, "pixels": 16000,
                                           "window_s": 16, "signals": ["engine.*"]}))
        for _ in range(21):
            await self.next_json(conn, "subscribed")
        err = await self.next_json(conn, "error")
        assert err["sub"] == 121 and "at most 2097152 per connection" in err["message"]
        for sub in range(100, 121):
            conn.write_message(json.dumps({"type": "unsubscribe", "sub": sub}))
        conn.write_message(json.dumps({"type": "subscribe", "sub": 5, "pixels": 0,
                                       "signals": ["engine.rpm"]}))
        assert (await self.next_json(conn, "subscribed"))["sub"] == 5
        conn.close()

    @gen_test(timeout=30)
    async def test_websocket_from_another_origin_is_refused(self):
        with pytest.raises(HTTPClientError) as err:
            await websocket_connect(HTTPRequest(
                self.get_url("/ws").replace("http", "ws"),
                headers={"Origin": "http://evil.example"}))
        assert err.value.code == 403
        host = self.get_url("/").split("//")[1].rstrip("/")
        conn, _ = await self.ws(Origin=f"http://{host}")  # same origin: accepted
        conn.close()

    @gen_test(timeout=60)
    async def test_slow_consumer_does_not_delay_a_fast_one_and_is_closed(self):
        self.hub.lag_timeout = 1.0
        relay = self.relay()
        await self.announced(relay)
        t0 = now_s_floor()
        relay.send(records(0, 10, t0))
        await self.until(lambda: self.intake.by_name("engine").records == 10)
        # the slow client: a raw socket with a tiny receive buffer that never reads
        port = int(self.get_url("/").split(":")[2].split("/")[0])
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        await self.until(lambda: len(self.hub.clients) == 1)
        (slow_client,) = self.hub.clients
        # 10 subscriptions of 6 signals x 16000 columns: a first frame of ~38 MB, more
        # than any socket buffer holds, so the frame stays pending
        for sub in range(1, 11):
            big = {"type": "subscribe", "sub": sub, "pixels": 16000, "window_s": 16,
                   "signals": ["engine.*"]}
            payload = json.dumps(big).encode()
            mask = b"\x01\x02\x03\x04"
            masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            slow.sendall(bytes([0x81, 0xFE]) + len(payload).to_bytes(2, "big") + mask + masked)
        fast, _ = await self.ws()
        fast.write_message(json.dumps({"type": "subscribe", "sub": 1, "pixels": 100,
                                       "window_s": 1, "signals": ["engine.rpm"]}))
        await self.next_json(fast, "subscribed")
        got = []
        try:
            for i in range(40):
                relay.send(records(10 + i, 1, t0))
                frames = await self.frames_until(fast, lambda f: any(
                    b["type"] == 2 for b in f[-1]["blocks"]))
                got.append(next(b for b in frames[-1]["blocks"] if b["type"] == 2)["value"])
                if slow_client.closed:
                    break
            await self.until(lambda: slow_client.closed, 15)
        finally:
            slow.close()
        # the fast client saw every new value while the slow one's frame was pending
        assert got == [1000.0 + 10 + i for i in range(len(got))]
        assert slow_client.frames <= 2 and self.hub.n_lagging == 1
        fast.close()

    @gen_test(timeout=60)
    async def test_range_outside_the_live_window_is_read_from_the_cache(self):
        write_channel(self.server.cache_dir, "engine", ENGINE,
                      lambda k, rng: engine_record(k, t0=T0), 5000,
                      records_per_datagram=10, datagrams_per_block=5, blocks_per_segment=20)
        relay = self.relay()
        await self.announced(relay)
        relay.send(records(0, 5, now_s_floor()))
        await self.until(lambda: self.intake.by_name("engine").records == 5)
        conn, _ = await self.ws()
        t_start, t_end = T0 + 1_000_000_000, T0 + 4_000_000_000
        conn.write_message(json.dumps({"type": "subscribe", "sub": 9, "pixels": 300,
                                       "range_ns": [t_start, t_end],
                                       "signals": ["engine.rpm", "engine.counter"]}))
        sub = await self.next_json(conn, "subscribed")
        assert not sub["live"] and sub["width_ns"] == 10_000_000 and sub["columns"] == 300
        progress = await self.next_json(conn, "progress")
        assert 0 <= progress["done"] <= 1
        frames = await self.frames_until(conn, lambda f: any(
            b["type"] == 1 for b in f[-1]["blocks"]))
        await self.next_json(conn, "complete")
        rpm = next(b for b in frames[-1]["blocks"] if b["type"] == 1 and b["signal"] == 0)
        t = T0 + np.arange(5000) * 1_000_000
        x = 1000.0 + np.arange(5000)
        ref = downsample.columns(t, x, t_start, 10_000_000, 300)
        assert rpm["first_column"] == t_start // 10_000_000
        np.testing.assert_array_equal(rpm["count"], ref.count)
        np.testing.assert_array_equal(rpm["min"], ref.min)
        np.testing.assert_array_equal(rpm["last"], ref.last)
        conn.close()


class TestHttp(ServerCase):
    def test_pages_static_and_traversal(self):
        r = self.fetch("/")
        assert r.code == 200 and b"<html" in r.body.lower()
        assert r.headers["Content-Type"].startswith("text/html")
        assert self.fetch("/web/index.html").code == 200
        for path in ("/web/../setup.py", "/web/%2e%2e/setup.py", "/web/..%2fsetup.py",
                     "/web//etc/passwd"):
            assert self.fetch(path).code in (403, 404), path
        assert self.fetch("/d/..%2f..%2fsetup").code == 400
        assert self.fetch("/d/.hidden").code == 400
        assert self.fetch("/d/nothing-here").code == 404
        assert self.fetch("/nope").code == 404
        assert json.loads(self.fetch("/nope").body)["status"] == 404
        # DNS rebinding: a request to this loopback server under another name is refused
        for path in ("/", "/api/status", "/web/index.html", "/ws", "/metrics"):
            r = self.fetch(path, headers={"Host": "evil.example:8080"})
            assert r.code == 403, path
        assert self.fetch("/api/status", headers={"Host": "localhost"}).code == 200

    def test_dashboards_from_the_configured_folder(self):
        folder = self.tmp / "dash"
        folder.mkdir()
        (folder / "pit.html").write_text("<html>pit wall</html>")
        self.server.config = self.server.config.replace(
            server=self.server.config.server.__class__(dashboards=folder))
        r = self.fetch("/d/pit")
        assert r.code == 200 and r.body == b"<html>pit wall</html>"

    def test_a_dashboard_saved_through_the_api_is_served(self):
        def post(body):
            return self.fetch("/api/dashboards", method="POST", body=json.dumps(body),
                              headers={"Content-Type": "application/json"})

        page = {"name": "pit", "html": "<html>pit wall</html>"}
        r = post(page)  # no server.dashboards folder: nowhere to save
        assert r.code == 409 and "server.dashboards" in json.loads(r.body)["error"]
        folder = self.tmp / "saved"
        folder.mkdir()
        self.server.config = self.server.config.replace(
            server=self.server.config.server.__class__(dashboards=folder))
        assert post(page).code == 201
        r = self.fetch("/d/pit")
        assert r.code == 200 and r.body == b"<html>pit wall</html>"
        assert post({**page, "html": "<html>other</html>"}).code == 409  # never overwritten
        assert (folder / "pit.html").read_text() == "<html>pit wall</html>"
        assert post({"name": "../up", "html": "x"}).code == 400
        assert post({"name": "big", "html": "x" * (300 * 1024)}).code == 413
        assert sorted(p.name for p in folder.iterdir()) == ["pit.html"]

    def test_bad_json_oversized_bodies_and_names_are_refused(self):
        def post(path, body, **headers):
            headers = {"Content-Type": "application/json", **headers}
            return self.fetch(path, method="POST", body=body, headers=headers)

        r = post("/api/tags", b"{bad json")
        assert r.code == 400 and "not JSON" in json.loads(r.body)["error"]
        r = post("/api/tags", json.dumps({"name": "x", "start_ns": 1, "end_ns": 2,
                                          "note": "n" * 300_000}))
        assert r.code == 413
        r = post("/api/tags", json.dumps({"name": "../escape", "start_ns": 1, "end_ns": 2}))
        assert r.code == 400 and "tag name" in json.loads(r.body)["error"]
        assert self.fetch("/api/tags/..%2f..%2fetc").code in (400, 404)
        r = self.fetch("/api/tags/%2e%2e", method="DELETE")
        assert r.code == 400
        r = post("/api/tags", json.dumps({"name": "ok", "start_ns": 5, "end_ns": 2}))
        assert r.code == 400
        r = post("/api/exports", json.dumps({"tag": "../../etc/passwd"}))
        assert r.code == 400
        assert self.fetch("/api/exports/..%2f..%2fx").code in (400, 404)
        assert self.fetch("/api/exports/0123456789abcdef").code == 404
        r = post("/api/channels", json.dumps({"name": "x", "schema": {"type": "record",
                                                                       "name": "x"}}))
        assert r.code == 422 and "schema" in json.loads(r.body)["error"]
        r = post("/api/channels", json.dumps({"name": "x", "schema": {
            "type": "record", "name": "x", "fields": [{"name": "a", "type": "double"}]}}))
        assert r.code == 503 and "no relay answers" in json.loads(r.body)["error"]
        r = post("/api/tags", json.dumps({"name": "x"}), **{"Content-Type": "text/plain"})
        assert r.code == 415

    def test_openapi_and_metrics(self):
        spec = json.loads(self.fetch("/api/openapi.json").body)
        assert spec["openapi"].startswith("3.") and "/api/exports/{id}/file" in spec["paths"]
        r = self.fetch("/metrics")
        assert r.code == 200 and b"speeddata_server_clients 0.0" in r.body


class TestToken(ServerCase):
    listen = "0.0.0.0:8080"
    extra = f'token = "{TOKEN}"'

    def test_state_changes_need_the_token_off_loopback(self):
        body = json.dumps({"name": "t1", "start_ns": 1, "end_ns": 2})
        r = self.fetch("/api/tags", method="POST", body=body,
                       headers={"Content-Type": "application/json"})
        assert r.code == 401 and "token" in json.loads(r.body)["error"]
        r = self.fetch("/api/tags", method="POST", body=body,
                       headers={"Authorization": "Bearer wrong-token-000",
                                "Content-Type": "application/json"})
        assert r.code == 401
        r = self.fetch("/api/tags", method="POST", body=body,
                       headers={"Authorization": f"Bearer {TOKEN}",
                                "Content-Type": "application/json"})
        assert r.code not in (401, 403)  # past the token check (no cache here: 4xx reason)
        assert self.fetch("/api/channels").code == 200  # reads need no token


def test_no_token_no_bind_beyond_loopback(tmp_path, monkeypatch):
    monkeypatch.delenv("SPEEDDATA_TOKEN", raising=False)
    group = (random_group(), free_udp_port())
    cfg = load_config(text=config_text(tmp_path, group, "0.0.0.0:8080"))
    with pytest.raises(ServerError, match="server.token"):
        LiveServer(cfg)
    monkeypatch.setenv("SPEEDDATA_TOKEN", TOKEN)
    cfg = load_config(text=config_text(tmp_path, group, "0.0.0.0:8080"))
    assert LiveServer(cfg).token == TOKEN


def test_a_multicast_interface_not_on_this_host_names_the_key(tmp_path):
    """The join's failure was reported as "cannot listen on 127.0.0.1:8080 ... is another
    server running there? (server.listen)": the key to change is multicast.interface."""
    group = (random_group(), free_udp_port())
    text = config_text(tmp_path, group, "127.0.0.1:1").replace(
        'interface = "127.0.0.1"', 'interface = "192.0.2.1"')  # TEST-NET-1: no host's
    with pytest.raises(IntakeError) as err:
        LiveServer(load_config(text=text)).make_intake()
    message = str(err.value)
    assert f"cannot join multicast group {group[0]} on multicast.interface 192.0.2.1" \
        in message and "ip -4 addr" in message, message
    path = tmp_path / "server.toml"
    path.write_text(text)
    r = subprocess.run([sys.executable, "-m", "speeddata.commands", "serve", "-c", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"speeddata serve: error: {message}" in r.stderr
    assert "cannot listen" not in r.stderr and "Traceback" not in r.stderr


def test_a_listen_address_not_on_this_host_names_the_key(tmp_path):
    """It said "is another server running there?": the fix is another address."""
    path = tmp_path / "server.toml"
    path.write_text(config_text(tmp_path, (random_group(), free_udp_port()),
                                "192.0.2.1:8080", extra=f'token = "{TOKEN}"'))
    r = subprocess.run([sys.executable, "-m", "speeddata.commands", "serve", "-c", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "speeddata serve: error: cannot listen on 192.0.2.1:8080: Cannot assign " \
        "requested address; server.listen 192.0.2.1 is not an address of this host" \
        in r.stderr, r.stderr
    assert "another server" not in r.stderr and "Traceback" not in r.stderr


class TestChanges(ServerCase):
    @gen_test(timeout=30)
    async def test_a_range_with_no_data_completes_and_a_replaced_channel_is_resubscribed(self):
        relay = self.relay()
        await self.announced(relay)
        t0 = now_s_floor()
        relay.send(records(0, 10, t0))
        await self.until(lambda: self.intake.by_name("engine").records == 10)
        conn, _ = await self.ws()
        # a range in memory's reach holding nothing: columns of count 0, then complete
        conn.write_message(json.dumps({"type": "subscribe", "sub": 1, "pixels": 10,
                                       "range_ns": [t0 + 10**9, t0 + 2 * 10**9],
                                       "signals": ["engine.rpm"]}))
        await self.next_json(conn, "complete")
        conn.write_message(json.dumps({"type": "subscribe", "sub": 2, "pixels": 0,
                                       "signals": ["engine.rpm"]}))
        await self.next_json(conn, "subscribed")
        # the relay comes back with another schema under the same id: a new hello, and
        # the subscription follows the new channel
        schema2 = Schema({"type": "record", "name": "engine", "fields": [
            {"name": "time", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
            {"name": "rpm", "type": "double"}]})
        relay2 = self.relay(schema=schema2)
        old = self.intake.by_name("engine")
        for _ in range(20):
            relay2.announce()
            try:
                await self.until(lambda: self.intake.by_name("engine") is not old, 0.5)
                break
            except AssertionError:
                continue
        hello = await self.next_json(conn, "hello")
        (engine,) = [c for c in hello["channels"] if c["name"] == "engine"]
        assert [s["name"] for s in engine["signals"]] == ["engine.rpm"]
        await self.next_json(conn, "subscribed")  # sub 2 made again on the new channel
        relay2.send([{"time": t0 + 5 * 10**9, "rpm": 42.0}])
        frames = await self.frames_until(conn, lambda f: any(
            b["type"] == 2 and b["value"] == 42.0 for b in f[-1]["blocks"]))
        assert frames
        conn.close()


class TestDecimated(ServerCase):
    extra = 'group = "decimated"'

    @gen_test(timeout=30)
    async def test_decimated_group_expects_seq_steps_of_the_decimation(self):
        relay = self.relay(group=self.decimated_group, decimation=10)
        await self.announced(relay)
        ch = self.intake.by_name("engine")
        assert ch.step == 10
        t0 = now_s_floor()
        for i, seq in enumerate((0, 10, 20, 30, 60, 70)):  # 40 and 50 lost
            relay.send(records(i * 10, 10, t0), seq=seq)
        await self.until(lambda: ch.records == 60)
        assert ch.loss.datagrams == 2 and ch.loss.n_gaps == 1
        assert list(ch.loss.gaps) == [(t0 + 39 * 1_000_000, t0 + 40 * 1_000_000)]
        body = json.loads((await self.afetch("/api/status")).body)
        assert body["server"]["group"] == "decimated"


class TestKinds(ServerCase):
    @gen_test(timeout=30)
    async def test_strings_enums_nullable_and_nested_signals(self):
        status = self.relay(name="status", cid=2, schema=Schema(SCHEMAS / "status.avsc"))
        engine = self.relay()
        await self.announced(status, 1)
        await self.announced(engine, 2)
        conn, hello = await self.ws()
        (ch,) = [c for c in hello["channels"] if c["name"] == "status"]
        kinds = {s["name"]: s["kind"] for s in ch["signals"]}
        assert kinds == {"status.message": "string", "status.uptime": "number",
                         "status.load": "number", "status.host.cpu_temp": "number",
                         "status.host.free_disk": "number"}
        conn.write_message(json.dumps({"type": "subscribe", "sub": 1, "pixels": 0,
                                       "signals": ["status.*", "engine.state"]}))
        sub = await self.next_json(conn, "subscribed")
        assert sub["signals"][-1] == "engine.state" and "status.message" in sub["signals"]
        t0 = now_s_floor()
        status.send([status_record(i, t0=t0) for i in range(3)])  # load: 0.0, None, 1.0
        engine.send(records(0, 2, t0))  # states IDLE, RUN
        strings = await self.next_json(conn, "strings")
        assert strings["values"]["status.message"] == [t0 + 2_000_000,
                                                        status_record(2)["message"]]

        def latest_values(frames):
            out = {}
            for fr in frames:
                for b in fr["blocks"]:
                    if b["type"] == 2:
                        out[sub["signals"][b["signal"]]] = b["value"]
            return out

        frames = await self.frames_until(conn, lambda f: latest_values(f).get(
            "engine.state") == 1.0 and latest_values(f).get("status.uptime") == 2.0)
        values = latest_values(frames)
        assert values["status.load"] == 1.0 and values["status.host.cpu_temp"] == 40.5
        # a null is NaN in the window (and in every M4 aggregate but count)
        ch = self.intake.by_name("status")
        t, x = ch.raw_rows(0, 2**62)
        load = x[:, ch.numeric.index("load")]
        assert list(t) == [t0, t0 + 1_000_000, t0 + 2_000_000]
        assert load[0] == 0.0 and np.isnan(load[1]) and load[2] == 1.0
        conn.close()
