"""The Tornado application: one factory, the page and static routes, and the
:class:`LiveServer` that ties the multicast intake, the websocket hub, the relay's stats
and the REST API together on one IOLoop (docs/server.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import tornado.web

from .. import __version__
from ..config import Config
from .handlers import MAX_BODY, BaseHandler, check_host
from .live import Intake
from .ws import Hub, WebSocket

__all__ = ["LiveServer", "make_app", "web_root", "is_loopback", "ServerError",
           "MAX_BODY"]

log = logging.getLogger("speeddata.server")

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"


class ServerError(Exception):
    """The server cannot start (bad listen address, no token where one is needed)."""


def web_root() -> Path:
    """The folder of the web UI: ``web/`` of the source tree (editable installs, the
    repository) or ``speeddata/web`` installed with the package (``pip install .``)."""
    repo = Path(__file__).resolve().parents[3] / "web"
    if (repo / "index.html").is_file():
        return repo
    installed = Path(str(resources.files("speeddata"))) / "web"
    if installed.is_dir():
        return installed
    return repo


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class PageHandler(BaseHandler):
    """A page of web/ (``/``, ``/status``, ``/channels``)."""

    def initialize(self, server: LiveServer, page: str = "index.html") -> None:
        self.server = server
        self.page = page

    def get(self, *args: Any) -> None:
        self._send(self.server.web / self.page)

    def _send(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError:
            raise tornado.web.HTTPError(404, f"no page {path.name}") from None
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(data)


class DashboardHandler(PageHandler):
    """``/d/<name>``: ``<name>.html`` from ``server.dashboards``, else the shipped ones."""

    def get(self, name: str) -> None:
        if not name or len(name) > 64 or any(c not in _NAME_CHARS for c in name) \
                or name.startswith("."):
            raise tornado.web.HTTPError(400, "a dashboard name is letters, digits, '_.-'")
        for folder in self.server.dashboard_dirs():
            path = folder / f"{name}.html"
            if path.is_file() and path.resolve().parent == folder.resolve():
                return self._send(path)
        raise tornado.web.HTTPError(404, f"no dashboard {name!r}")


class StaticHandler(tornado.web.StaticFileHandler):
    """``/web/...``: files of the web root (tornado refuses paths outside it)."""

    def initialize(self, path: str, server: LiveServer) -> None:
        super().initialize(path)
        self.server = server

    def prepare(self) -> None:
        check_host(self, self.server)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        if path.endswith(".js"):
            self.set_header("Content-Type", "text/javascript; charset=utf-8")

    def get_cache_time(self, path: str, modified: Any, mime_type: str) -> int:
        return 0


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        body, content_type = self.server.metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class LiveServer:
    """Everything the server runs on its IOLoop, built from a :class:`Config`."""

    def __init__(self, config: Config, listen: tuple[str, int] | None = None,
                 cache_dir: Path | None = None):
        self.config = config
        sc = config.server
        self.listen = listen or sc.listen
        self.token = sc.token
        self.needs_token = not is_loopback(self.listen[0])
        if self.needs_token and not self.token:
            raise ServerError(
                f"server.listen {self.listen[0]}:{self.listen[1]} is not a loopback address: "
                "set server.token (or the SPEEDDATA_TOKEN environment variable) so that "
                "requests that change state need it, or listen on 127.0.0.1")
        self.web = web_root()
        self.cache_dir = Path(cache_dir or config.cache.dir).resolve()
        self.started = time.time()
        self.intake: Intake | None = None
        self.hub: Hub | None = None
        self.relay_stats: dict | None = None
        self.relay_stats_at = 0.0
        self._stats_task: asyncio.Task | None = None
        self._bytes_mark: tuple[int, int] | None = None
        self._rate: float | None = None
        self._stopped = False
        self.history = None
        self.http = None
        from .metrics import Metrics

        self.metrics = Metrics(self)
        from .exports import Exports

        self.exports = Exports(self.cache_dir / "exports", self.cache_dir)

    def dashboard_dirs(self) -> list[Path]:
        dirs = []
        if self.config.server.dashboards is not None:
            dirs.append(Path(self.config.server.dashboards))
        dirs.append(self.web / "dashboards")
        return dirs

    def make_intake(self) -> Intake:
        mc = self.config.multicast
        sc = self.config.server
        group = mc.full if sc.group == "full" else mc.decimated
        intake = Intake(group, mc.interface, decimated=sc.group == "decimated",
                        memory=sc.memory, window=sc.window,
                        on_change=lambda: self.hub and self.hub.channels_changed())
        # the hub drains at every frame tick; between ticks datagrams wait in the socket
        # buffer (32 MiB: seconds at the rates of docs/performance.md), so batches are
        # large and frames carry data up to their tick (docs/server.md)
        intake.drain_interval = max(intake.drain_interval, 1.0 / sc.frame_hz)
        return intake

    def app(self) -> tornado.web.Application:
        return make_app(self)

    def start(self, sockets=None, listen: bool = True) -> None:
        """Join the group, start the clocks and listen (call on the IOLoop); with
        ``listen=False`` the caller serves ``app()`` itself (tests)."""
        from tornado.ioloop import IOLoop

        from .history import History

        self.intake = self.make_intake()
        self.history = History(self)
        self.hub = Hub(self.intake, self.config.server.frame_hz, self.config.server.group,
                       history=self.history, metrics=self.metrics, version=__version__)
        self.intake.start()
        self.hub.start()
        IOLoop.current().add_callback(self._start_stats)
        if not listen:
            return
        if sockets is not None:
            from tornado.httpserver import HTTPServer

            self.http = HTTPServer(self.app(), max_body_size=MAX_BODY)
            self.http.add_sockets(sockets)
        else:
            self.http = self.app().listen(self.listen[1], self.listen[0],
                                          max_body_size=MAX_BODY)

    def _start_stats(self) -> None:
        if self._stats_task is None and not self._stopped:
            self._stats_task = asyncio.ensure_future(self._relay_stats())

    async def _relay_stats(self) -> None:
        """Subscribe to the relay's stats PUB socket (on the IOLoop, zmq.asyncio)."""
        import zmq
        import zmq.asyncio

        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVHWM, 4)
        try:
            sock.connect(self.config.relay.stats)
            while True:
                raw = await sock.recv()
                try:
                    stats = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(stats, dict):
                    self._note_rate(stats)
                    self.relay_stats = stats
                    self.relay_stats_at = time.time()
                    if self.hub is not None:
                        self.hub.relays[self.relay_name] = stats
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.warning("relay stats subscription stopped: %s", exc)
        finally:
            sock.close()

    @property
    def relay_name(self) -> str:
        """The relay's address as the websocket's status names it (its control host)."""
        endpoint = self.config.relay.control
        if endpoint.startswith("tcp://"):
            return endpoint[6:].rsplit(":", 1)[0]
        return endpoint

    def _note_rate(self, stats: dict) -> None:
        """Bytes per second the relay accepts (from two stats messages): how fast the
        cache fills."""
        try:
            total = sum(int((c.get("counters") or {}).get("bytes", 0))
                        for c in stats.get("channels", []))
            now = int(stats.get("now_ns") or time.time_ns())
        except (TypeError, ValueError, AttributeError):
            return
        prev = self._bytes_mark
        self._bytes_mark = (now, total)
        if prev is not None and now > prev[0] and total >= prev[1]:
            self._rate = (total - prev[1]) / ((now - prev[0]) / 1e9)

    def cache_rate(self) -> tuple[float, float] | None:
        """(time, bytes/s into the cache) or None before two stats messages."""
        return None if self._rate is None else (self.relay_stats_at, self._rate)

    async def stop(self) -> None:
        self._stopped = True
        if self._stats_task is not None:
            self._stats_task.cancel()
            try:
                await self._stats_task
            except asyncio.CancelledError:
                pass
            self._stats_task = None
        if self.hub is not None:
            self.hub.stop()
        if self.http is not None:
            self.http.stop()
        if self.intake is not None:
            self.intake.close()
        if self.history is not None:
            self.history.shutdown()
        self.exports.shutdown()

    @property
    def url(self) -> str:
        host, port = self.listen
        return f"http://{host}:{port}/"


def make_app(server: LiveServer) -> tornado.web.Application:
    """The Application with every route of docs/websocket.md and the REST API."""
    from .api import api_routes

    s = {"server": server}
    routes = [
        (r"/", PageHandler, {**s, "page": "index.html"}),
        (r"/status", PageHandler, {**s, "page": "status.html"}),
        (r"/channels", PageHandler, {**s, "page": "channels.html"}),
        (r"/d/([^/]*)", DashboardHandler, s),
        (r"/web/(.*)", StaticHandler, {"path": str(server.web), **s}),
        (r"/ws", WebSocket, {"hub": server.hub, **s}),
        (r"/metrics", MetricsHandler, s),
        *api_routes(server),
    ]
    return tornado.web.Application(
        routes,
        websocket_max_message_size=4 * 64 * 1024,
        compress_response=False,
        xsrf_cookies=False,
        default_handler_class=NotFound,
        default_handler_args=s,
    )


class NotFound(BaseHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, f"no route {self.request.path}")
