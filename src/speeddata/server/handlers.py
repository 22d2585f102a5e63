"""The base of every HTTP handler of the live server: the Host check against DNS
rebinding, the token on state-changing requests beyond loopback, JSON errors."""

from __future__ import annotations

import hmac
import json
from typing import Any

import tornado.web

__all__ = ["MAX_BODY", "BaseHandler", "check_host"]

MAX_BODY = 1 << 20  # bytes of a request body (a schema upload is far smaller)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def check_host(handler: tornado.web.RequestHandler, server: Any) -> None:
    """On loopback, only requests addressed to a loopback name: a page whose DNS name
    was rebound to 127.0.0.1 (DNS rebinding) sends its own name as Host and is refused,
    so it cannot read the API or open the websocket as if it were same-origin."""
    if server.needs_token:
        return
    host = handler.request.host_name.strip("[]").lower()
    if host not in LOOPBACK_NAMES and not host.startswith("127.") \
            and host != server.listen[0]:
        raise tornado.web.HTTPError(403, f"Host {host!r} is not this server's (loopback)")


class BaseHandler(tornado.web.RequestHandler):
    """Security for every route: the token on state-changing requests when the server
    listens beyond loopback; JSON errors with a reason."""

    def initialize(self, server: Any, **kwargs: Any) -> None:
        self.server = server

    def prepare(self) -> None:
        check_host(self, self.server)
        if self.request.method not in ("GET", "HEAD", "OPTIONS") and self.server.needs_token:
            self.check_token()

    def check_token(self) -> None:
        given = self.request.headers.get("Authorization", "")
        if given.startswith("Bearer "):
            given = given[7:]
        else:
            given = self.request.headers.get("X-SpeedData-Token", "")
        if not given or not hmac.compare_digest(given.encode(), self.server.token.encode()):
            raise tornado.web.HTTPError(401, reason="missing or wrong token")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        reason = self._reason
        exc = kwargs.get("exc_info")
        if exc and isinstance(exc[1], tornado.web.HTTPError) and exc[1].log_message:
            reason = exc[1].log_message
        self.finish(json.dumps({"error": reason, "status": status_code}))

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
