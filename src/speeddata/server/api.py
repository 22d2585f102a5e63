"""REST API under ``/api/`` and its OpenAPI 3 description (``/api/openapi.json``).

Every input is validated with a 4xx and a reason (``{"error": ..., "status": ...}``);
requests that change state need the token when the server listens beyond loopback
(``BaseHandler.prepare``); blocking work (relay control requests, tags, CSV) runs in a
thread, pivots in a worker process (``exports.py``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import tornado.web

from .. import __version__
from ..control import ControlError, request
from ..reader import cache_channels
from ..schema import Schema, SchemaError
from ..tags import TagError, add_tag, get_tag, list_tags, remove_tag, validate_tag_name
from .exports import EXPORT_ID, ExportError, parse_spec, write_csv
from .handlers import MAX_BODY, BaseHandler

__all__ = ["api_routes", "openapi", "MAX_JSON_BODY"]

MAX_JSON_BODY = 256 * 1024  # bytes of a JSON request body
_CHANNEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@-]{0,127}$")
_RELAY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


class ApiHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        body = self.request.body or b""
        if len(body) > MAX_JSON_BODY:
            raise tornado.web.HTTPError(
                413, f"request body of {len(body)} bytes; at most {MAX_JSON_BODY}")

    def json_body(self) -> Any:
        ctype = self.request.headers.get("Content-Type", "application/json")
        if ctype.split(";")[0].strip() not in ("application/json", ""):
            raise tornado.web.HTTPError(415, "send the body as application/json")
        try:
            return json.loads(self.request.body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise tornado.web.HTTPError(400, f"the body is not JSON: {exc}") from None

    def send(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj, allow_nan=False, default=_json_default))

    async def blocking(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, partial(fn, *args, **kwargs))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def channel_detail(ch) -> dict:
    d = ch.describe()
    d.update(ch.status())
    d["schema"] = ch.schema.avsc
    d["fingerprint"] = ch.fingerprint
    latest = {}
    for sig in ch.signals:
        if sig.kind == "string":
            v = ch.strings_latest.get(sig.field)
            latest[sig.name] = None if v is None else {"time_ns": v[0], "value": v[1]}
        else:
            t, v = ch.latest_t[sig.column], ch.latest_v[sig.column]
            latest[sig.name] = None if not math.isfinite(t) else {
                "time_ns": int(round(t * 1e9)), "value": _finite(v)}
    d["latest"] = latest
    return d


class ChannelsHandler(ApiHandler):
    def get(self) -> None:
        intake = self.server.intake
        chans = [] if intake is None else [channel_detail(c) for c in intake.channels.values()]
        for c in chans:
            c.pop("schema")
        self.send({"channels": chans})

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, "the body must be a JSON object")
        allowed = {"name", "port", "schema", "decimation", "time", "id"}
        unknown = set(body) - allowed
        if unknown:
            raise tornado.web.HTTPError(
                400, f"unknown field {sorted(unknown)[0]!r}; allowed: {sorted(allowed)}")
        name = body.get("name")
        if not isinstance(name, str) or not _RELAY_NAME.fullmatch(name):
            raise tornado.web.HTTPError(
                400, "'name' must be 1-64 letters, digits, '_', '-', '.', not starting "
                "with a digit")
        schema = body.get("schema")
        if not isinstance(schema, dict):
            raise tornado.web.HTTPError(400, "'schema' must be an Avro record schema (object)")
        time_field = body.get("time")
        if time_field is not None and not isinstance(time_field, str):
            raise tornado.web.HTTPError(400, "'time' must be a field name")
        try:
            Schema(schema, time=time_field)
        except SchemaError as exc:
            raise tornado.web.HTTPError(422, f"schema: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any schema the parser trips on
            raise tornado.web.HTTPError(422, f"schema: {exc}") from None
        channel: dict[str, Any] = {"name": name, "schema": schema}
        port = body.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            raise tornado.web.HTTPError(400, "'port' must be 1-65535 or null")
        channel["port"] = port
        for key, hi in (("decimation", 2**31 - 1), ("id", 2**32 - 1)):
            if key in body:
                v = body[key]
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                    raise tornado.web.HTTPError(400, f"'{key}' must be an integer 1-{hi}")
                channel[key] = v
        if time_field is not None:
            channel["time"] = time_field
        reply = await self._control({"cmd": "add", "channel": channel})
        self.send({k: reply.get(k) for k in ("name", "id", "port")}, 201)

    async def _control(self, payload: dict) -> dict:
        endpoint = self.server.config.relay.control
        try:
            reply = await self.blocking(request, endpoint, payload, timeout=3.0, check=False)
        except ControlError as exc:
            raise tornado.web.HTTPError(503, str(exc)) from None
        if not reply.get("ok"):
            error = str(reply.get("error"))
            status = 404 if "no channel" in error else 409
            raise tornado.web.HTTPError(status, f"the relay refused: {error}")
        return reply


class ChannelHandler(ChannelsHandler):
    def get(self, name: str) -> None:
        ch = self.server.intake.by_name(name) if self.server.intake else None
        if ch is None:
            raise tornado.web.HTTPError(404, f"no channel {name!r}")
        self.send(channel_detail(ch))

    async def post(self, name: str) -> None:
        raise tornado.web.HTTPError(405)

    async def delete(self, name: str) -> None:
        if not _RELAY_NAME.fullmatch(name):
            raise tornado.web.HTTPError(400, f"{name!r} is not a channel name")
        await self._control({"cmd": "remove", "name": name})
        if self.server.intake is not None:  # gone from hello, /api/channels and /metrics
            self.server.intake.forget(name)
        self.set_status(204)
        self.finish()


def cache_reach(stats: dict | None, previous: tuple[float, int] | None) -> dict:
    """Cache use and how far back it reaches at the current rate."""
    if not stats:
        return {"bytes": None, "budget_bytes": None, "oldest_ns": None, "reach_s": None,
                "rate_bytes_s": None}
    cache = stats.get("cache") or {}
    oldest = [c["cache"]["oldest_ns"] for c in stats.get("channels", [])
              if c.get("cache") and c["cache"].get("oldest_ns")]
    used = cache.get("bytes")
    budget = cache.get("budget_bytes")
    rate = None
    if previous is not None:
        rate = previous[1]
    reach = budget / rate if budget and rate else None
    return {"bytes": used, "budget_bytes": budget, "oldest_ns": min(oldest) if oldest else None,
            "rate_bytes_s": rate, "reach_s": reach,
            "held_s": (time.time_ns() - min(oldest)) / 1e9 if oldest else None}


class StatusHandler(ApiHandler):
    def get(self) -> None:
        srv = self.server
        intake, hub = srv.intake, srv.hub
        channels = {} if intake is None else {c.name: c.status() for c in intake.channels.values()}
        self.send({
            "server": {
                "version": __version__,
                "uptime_s": time.time() - srv.started,
                "listen": f"{srv.listen[0]}:{srv.listen[1]}",
                "group": srv.config.server.group,
                "frame_hz": srv.config.server.frame_hz,
                "window_s": srv.config.server.window,
                "memory_bytes": srv.config.server.memory,
                "memory_used_bytes": intake.memory_used() if intake else 0,
                "clients": len(hub.clients) if hub else 0,
                "frames": hub.n_frames if hub else 0,
                "unannounced_datagrams": intake.n_unknown if intake else 0,
                "invalid_datagrams": intake.n_invalid if intake else 0,
            },
            "loss": {name: c["loss"] for name, c in channels.items()},
            "channels": channels,
            "relay": srv.relay_stats,
            "relay_age_s": time.time() - srv.relay_stats_at if srv.relay_stats else None,
            "cache": cache_reach(srv.relay_stats, srv.cache_rate()),
            "clients": len(hub.clients) if hub else 0,
        })


class TagsHandler(ApiHandler):
    async def get(self) -> None:
        tags = await self.blocking(list_tags, self.server.cache_dir)
        self.send({"tags": [_tag_json(t) for t in tags]})

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, "the body must be a JSON object")
        allowed = {"name", "start_ns", "end_ns", "channels", "note"}
        unknown = set(body) - allowed
        if unknown:
            raise tornado.web.HTTPError(
                400, f"unknown field {sorted(unknown)[0]!r}; allowed: {sorted(allowed)}")
        try:
            name = validate_tag_name(body.get("name"))
        except TagError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        for key in ("start_ns", "end_ns"):
            v = body.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
                raise tornado.web.HTTPError(400, f"'{key}' must be an integer of ns")
        if body["start_ns"] >= body["end_ns"]:
            raise tornado.web.HTTPError(400, "'start_ns' must be before 'end_ns'")
        channels = body.get("channels")
        if channels is not None and (not isinstance(channels, list) or not channels or not all(
                isinstance(c, str) and _RELAY_NAME.fullmatch(c) for c in channels)):
            raise tornado.web.HTTPError(400, "'channels' must be a list of channel names")
        note = body.get("note", "")
        if not isinstance(note, str) or len(note) > 4096:
            raise tornado.web.HTTPError(400, "'note' must be a string of at most 4096 chars")
        try:
            tag = await self.blocking(add_tag, self.server.cache_dir, name, body["start_ns"],
                                      body["end_ns"], channels, note)
        except TagError as exc:
            status = 409 if "exists" in str(exc) or "taken" in str(exc) else 422
            raise tornado.web.HTTPError(status, str(exc)) from None
        self.send(_tag_json(tag), 201)


class TagHandler(ApiHandler):
    async def get(self, name: str) -> None:
        tag = await self._tag(name)
        self.send(_tag_json(tag))

    async def _tag(self, name: str):
        try:
            validate_tag_name(name)
        except TagError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        try:
            return await self.blocking(get_tag, self.server.cache_dir, name)
        except TagError as exc:
            raise tornado.web.HTTPError(404, str(exc)) from None

    async def delete(self, name: str) -> None:
        await self._tag(name)
        try:
            await self.blocking(remove_tag, self.server.cache_dir, name)
        except TagError as exc:
            raise tornado.web.HTTPError(404, str(exc)) from None
        self.set_status(204)
        self.finish()


_DASHBOARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_DASHBOARD = 256 * 1024  # bytes of a dashboard's HTML


class DashboardsHandler(ApiHandler):
    """``POST /api/dashboards``: store a page (the overview's "save as dashboard") as
    ``<name>.html`` in ``server.dashboards``, served at ``/d/<name>``. Never overwrites."""

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or set(body) - {"name", "html"}:
            raise tornado.web.HTTPError(400, "send {\"name\": ..., \"html\": ...}")
        name, html = body.get("name"), body.get("html")
        if not isinstance(name, str) or not _DASHBOARD_NAME.fullmatch(name):
            raise tornado.web.HTTPError(
                400, "'name' must be 1-64 letters, digits, '_' or '-', starting with a letter "
                "or digit")
        if not isinstance(html, str) or not html.strip():
            raise tornado.web.HTTPError(400, "'html' must be the page's HTML text")
        if len(html.encode()) > MAX_DASHBOARD:
            raise tornado.web.HTTPError(413, f"a dashboard is at most {MAX_DASHBOARD} bytes")
        folder = self.server.config.server.dashboards
        if folder is None:
            raise tornado.web.HTTPError(
                409, "this server has no dashboards folder to save into; set "
                "server.dashboards in its config")
        try:
            await self.blocking(_write_new, Path(folder) / f"{name}.html", html)
        except FileExistsError:
            raise tornado.web.HTTPError(409, f"a dashboard {name!r} exists already") from None
        except OSError as exc:
            raise tornado.web.HTTPError(507, f"cannot save: {exc.strerror}") from None
        self.send({"name": name, "url": f"/d/{name}"}, 201)


def _write_new(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all, and never over an existing file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # one per request
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)  # fails with FileExistsError rather than replacing
    finally:
        tmp.unlink()


def _tag_json(tag) -> dict:
    d = tag.to_json()
    d["n_segments"] = tag.n_segments
    d["n_bytes"] = tag.n_bytes
    return d


class ExportsHandler(ApiHandler):
    async def post(self) -> None:
        try:
            spec = parse_spec(self.json_body())
        except ExportError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        # refuse what cannot work before a worker process is started for it
        cache = self.server.cache_dir
        if "tag" in spec:
            try:
                await self.blocking(get_tag, cache, spec["tag"])
            except TagError as exc:
                raise tornado.web.HTTPError(404, str(exc)) from None
        elif not await self.blocking(cache_channels, cache):
            raise tornado.web.HTTPError(422, f"the cache {str(cache)!r} holds no channel")
        state = self.server.exports.start(spec)
        self.set_header("Location", f"/api/exports/{state['id']}")
        self.send(_export_json(state), 202)


def _export_json(state: dict) -> dict:
    out = {k: state.get(k) for k in ("id", "state", "done", "error", "bytes")}
    out["spec"] = state.get("spec") or {}
    out["file"] = f"/api/exports/{state['id']}/file" if state.get("state") == "done" else None
    return out


class ExportHandler(ApiHandler):
    def get(self, export_id: str) -> None:
        if not EXPORT_ID.fullmatch(export_id):
            raise tornado.web.HTTPError(400, "an export id is 16 hex digits")
        state = self.server.exports.state(export_id)
        if state is None:
            raise tornado.web.HTTPError(404, f"no export {export_id}")
        self.send(_export_json(state))


class ExportFileHandler(ApiHandler):
    async def get(self, export_id: str) -> None:
        if not EXPORT_ID.fullmatch(export_id):
            raise tornado.web.HTTPError(400, "an export id is 16 hex digits")
        state = self.server.exports.state(export_id)
        if state is None:
            raise tornado.web.HTTPError(404, f"no export {export_id}")
        if state.get("state") != "done":
            raise tornado.web.HTTPError(409, f"export {export_id} is {state.get('state')}")
        path = self.server.exports.file(export_id)
        if path is None:
            raise tornado.web.HTTPError(404, f"the file of export {export_id} is gone")
        fmt = self.get_argument("format", "hdf5")
        if fmt not in ("hdf5", "csv"):
            raise tornado.web.HTTPError(400, "format must be hdf5 or csv")
        name = f"speeddata-{export_id}"
        if fmt == "csv":
            raw = self.get_argument("signals", "")
            signals = [s for s in re.split(r"[,\s]+", raw) if s] or None
            if signals and (len(signals) > 1024 or any(len(s) > 256 for s in signals)):
                raise tornado.web.HTTPError(400, "too many or too long signal names")
            csv_path = path.with_suffix(f".{abs(hash(tuple(signals or ())))}.csv")
            try:
                await self.blocking(write_csv, path, csv_path, signals)
            except ExportError as exc:
                raise tornado.web.HTTPError(400, str(exc)) from None
            path, ctype, name = csv_path, "text/csv; charset=utf-8", name + ".csv"
        else:
            ctype, name = "application/x-hdf5", name + ".h5"
        self.set_header("Content-Type", ctype)
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                self.write(chunk)
                await self.flush()
        self.finish()


class OpenApiHandler(ApiHandler):
    def get(self) -> None:
        self.send(openapi())


def api_routes(server) -> list:
    s = {"server": server}
    return [
        (r"/api/openapi.json", OpenApiHandler, s),
        (r"/api/channels", ChannelsHandler, s),
        (r"/api/channels/([^/]+)", ChannelHandler, s),
        (r"/api/status", StatusHandler, s),
        (r"/api/tags", TagsHandler, s),
        (r"/api/tags/([^/]+)", TagHandler, s),
        (r"/api/dashboards", DashboardsHandler, s),
        (r"/api/exports", ExportsHandler, s),
        (r"/api/exports/([^/]+)", ExportHandler, s),
        (r"/api/exports/([^/]+)/file", ExportFileHandler, s),
    ]


# ------------------------------------------------------------------------------ OpenAPI

_ERROR = {"description": "the reason", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def openapi() -> dict:
    """The OpenAPI 3.0 description of the REST API (hand-written, kept beside it)."""
    name_param = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "maxLength": 128}}
    id_param = {"name": "id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}
    errors = {"400": _ERROR, "401": _ERROR, "413": _ERROR, "415": _ERROR}
    ns = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
    return {
        "openapi": "3.0.3",
        "info": {"title": "SpeedData live server", "version": __version__,
                 "description": "Channels, status, tags and exports (docs/server.md). "
                 "Requests that change state need `Authorization: Bearer <token>` when "
                 "the server listens beyond loopback."},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status"], "properties": {
                    "error": {"type": "string"}, "status": {"type": "integer"}}},
                "Channel": {"type": "object", "required": ["key", "name", "id", "signals"],
                            "properties": {
                                "key": {"type": "string"}, "name": {"type": "string"},
                                "id": {"type": "integer"}, "relay": {"type": "string"},
                                "rate_hz": {"type": "number"},
                                "signals": {"type": "array", "items": {"type": "object"}},
                                "loss": {"type": "object"}}},
                "NewChannel": {"type": "object", "required": ["name", "schema"],
                               "additionalProperties": False, "properties": {
                                   "name": {"type": "string",
                                            "pattern": "^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"},
                                   "port": {"type": "integer", "minimum": 1,
                                            "maximum": 65535, "nullable": True},
                                   "schema": {"type": "object"},
                                   "decimation": {"type": "integer", "minimum": 1,
                                                  "maximum": 2**31 - 1},
                                   "id": {"type": "integer", "minimum": 1,
                                          "maximum": 2**32 - 1},
                                   "time": {"type": "string"}}},
                "Tag": {"type": "object", "required": ["name", "start_ns", "end_ns",
                                                       "channels"], "properties": {
                    "name": {"type": "string"}, "start_ns": {"type": "integer"},
                    "end_ns": {"type": "integer"}, "note": {"type": "string"},
                    "channels": {"type": "array", "items": {"type": "string"}}}},
                "NewTag": {"type": "object", "required": ["name", "start_ns", "end_ns"],
                           "additionalProperties": False, "properties": {
                               "name": {"type": "string",
                                        "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                               "start_ns": ns, "end_ns": ns,
                               "channels": {"type": "array", "minItems": 1,
                                            "items": {"type": "string"}},
                               "note": {"type": "string", "maxLength": 4096}}},
                "NewExport": {"type": "object", "additionalProperties": False,
                              "properties": {
                                  "tag": {"type": "string"}, "start_ns": ns, "end_ns": ns,
                                  "channels": {"type": "array", "minItems": 1,
                                               "items": {"type": "string"}},
                                  "signals": {"type": "array", "minItems": 1,
                                              "items": {"type": "string"}},
                                  "compression": {"type": "string",
                                                  "enum": ["gzip", "none", "lzf"]}}},
                "Export": {"type": "object", "required": ["id", "state", "done"],
                           "properties": {
                               "id": {"type": "string"},
                               "state": {"type": "string",
                                         "enum": ["queued", "running", "done", "failed"]},
                               "done": {"type": "number"},
                               "error": {"type": "string", "nullable": True},
                               "bytes": {"type": "integer"},
                               "file": {"type": "string", "nullable": True},
                               "spec": {"type": "object"}}},
            },
        },
        "paths": {
            "/api/channels": {
                "get": {"summary": "live channels", "responses": {"200": _json({
                    "type": "object", "required": ["channels"], "properties": {
                        "channels": {"type": "array", "items": _ref("Channel")}}})}},
                "post": {"summary": "serve a new channel (relay control: add)",
                         "security": [{"token": []}, {}],
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": _ref("NewChannel")}}},
                         "responses": {"201": _json({"type": "object"}, "added"),
                                       "409": _ERROR, "422": _ERROR, "503": _ERROR,
                                       **errors}},
            },
            "/api/channels/{name}": {
                "parameters": [name_param],
                "get": {"summary": "one channel: schema, signals, rate, latest values, loss",
                        "responses": {"200": _json(_ref("Channel")), "404": _ERROR}},
                "delete": {"summary": "stop serving a channel (relay control: remove)",
                           "security": [{"token": []}, {}],
                           "responses": {"204": {"description": "removed"}, "404": _ERROR,
                                         "409": _ERROR, "503": _ERROR, **errors}},
            },
            "/api/status": {"get": {"summary": "relay counters, cache use and reach, loss, "
                                    "clients", "responses": {"200": _json({
                                        "type": "object", "required": ["server", "cache",
                                                                       "channels"]})}}},
            "/api/tags": {
                "get": {"summary": "tags", "responses": {"200": _json({
                    "type": "object", "properties": {"tags": {
                        "type": "array", "items": _ref("Tag")}}})}},
                "post": {"summary": "keep a range", "security": [{"token": []}, {}],
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": _ref("NewTag")}}},
                         "responses": {"201": _json(_ref("Tag"), "created"), "409": _ERROR,
                                       "422": _ERROR, **errors}},
            },
            "/api/tags/{name}": {
                "parameters": [name_param],
                "get": {"summary": "one tag", "responses": {"200": _json(_ref("Tag")),
                                                            "400": _ERROR, "404": _ERROR}},
                "delete": {"summary": "remove a tag", "security": [{"token": []}, {}],
                           "responses": {"204": {"description": "removed"}, "404": _ERROR,
                                         **errors}},
            },
            "/api/dashboards": {
                "post": {"summary": "save a dashboard page into server.dashboards",
                         "security": [{"token": []}, {}],
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"type": "object", "required": ["name", "html"],
                                        "additionalProperties": False, "properties": {
                                            "name": {"type": "string",
                                                     "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"},
                                            "html": {"type": "string", "minLength": 1}}}}}},
                         "responses": {"201": _json({"type": "object"}, "saved"),
                                       "409": _ERROR, "507": _ERROR, **errors}},
            },
            "/api/exports": {
                "post": {"summary": "pivot a tag or a range to HDF5 (worker process)",
                         "security": [{"token": []}, {}],
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": _ref("NewExport")}}},
                         "responses": {"202": _json(_ref("Export"), "started"),
                                       "404": _ERROR, "422": _ERROR, **errors}},
            },
            "/api/exports/{id}": {
                "parameters": [id_param],
                "get": {"summary": "progress of an export",
                        "responses": {"200": _json(_ref("Export")), "400": _ERROR,
                                      "404": _ERROR}},
            },
            "/api/exports/{id}/file": {
                "parameters": [id_param,
                               {"name": "format", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["hdf5", "csv"]}},
                               {"name": "signals", "in": "query", "required": False,
                                "schema": {"type": "string", "maxLength": 4096}}],
                "get": {"summary": "the HDF5 file, or CSV of chosen signals",
                        "responses": {
                            "200": {"description": "the file", "content": {
                                "application/x-hdf5": {"schema": {
                                    "type": "string", "format": "binary"}},
                                "text/csv": {"schema": {"type": "string"}}}},
                            "400": _ERROR, "404": _ERROR, "409": _ERROR}},
            },
        },
    }


assert MAX_JSON_BODY <= MAX_BODY
