"""The live server: multicast in, websocket (``/ws``), REST API (``/api/``), metrics.

``serve(config)`` runs it until SIGINT/SIGTERM; :class:`LiveServer` is the object tests
and embedders drive on their own IOLoop. See docs/server.md and docs/websocket.md.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import sys
from pathlib import Path

from ..config import Config
from .app import LiveServer, ServerError, is_loopback, make_app, web_root

__all__ = ["LiveServer", "ServerError", "serve", "make_app", "web_root", "is_loopback"]


def serve(config: Config, listen: tuple[str, int] | None = None,
          cache_dir: Path | None = None, out=None) -> int:
    """Run the server on ``config`` until SIGINT or SIGTERM; prints the URL; returns 0."""
    from ..relay import die_with_parent, release_startup_memory

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s speeddata serve: %(levelname)s %(message)s")
    die_with_parent()
    out = out if out is not None else sys.stdout

    async def main() -> None:
        server = LiveServer(config, listen=listen, cache_dir=cache_dir)
        try:
            server.start()
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ServerError(
                    f"cannot listen on {server.listen[0]}:{server.listen[1]}: {exc.strerror}; "
                    f"server.listen {server.listen[0]} is not an address of this host: give "
                    "one of its IPv4 addresses (`ip -4 addr` lists them), 0.0.0.0 for "
                    "every interface, or 127.0.0.1") from exc
            raise ServerError(
                f"cannot listen on {server.listen[0]}:{server.listen[1]}: {exc.strerror}; "
                "is another server running there? (server.listen)") from exc
        release_startup_memory()  # ~2 MB of start-up garbage (docs/scaling.md)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"speeddata serve: open {server.url}", file=out, flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())
    return 0
