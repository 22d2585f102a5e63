"""Helpers for the browser tests: Debian's Chromium driven by Playwright (never a
downloaded browser), a relay + live server + demo source on free loopback ports."""

from __future__ import annotations

import time
from pathlib import Path

from relay_helpers import wait_for
from server_helpers import Processes, server_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEMO_CHANNELS = (("engine", "engine", 10), ("power", "power", 100), ("status", "status", 1))
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "build" / "screenshots"


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class Stack:
    """Relay, live server and demo source as child processes on one test config."""

    def __init__(self, tmp: Path, ipc: Path, channels=DEMO_CHANNELS, extra: str = "",
                 source_args: tuple[str, ...] = ()):
        self.tmp = tmp
        self.dashboards = tmp / "dashboards"
        self.dashboards.mkdir(exist_ok=True)
        extra = f'dashboards = "{self.dashboards}"\n{extra}'
        self.info = server_config(tmp, ipc, extra=extra, channels=channels)
        self.url = self.info["url"]
        self.procs = Processes(tmp)
        self.source_args = source_args
        self.server_proc = None
        self.started = 0.0

    def start(self) -> Stack:
        self.procs.relay(self.info)
        self.server_proc = self.procs.server(self.info)
        self.procs.start("source", "-m", "speeddata.commands", "source", "--demo", "-q",
                         "-c", str(self.info["path"]), *self.source_args)
        self.started = time.monotonic()
        return self

    def stop_server(self) -> None:
        self.server_proc.terminate()
        self.server_proc.wait(15)

    def start_server(self) -> None:
        self.server_proc = self.procs.server(self.info)

    def stop(self) -> None:
        self.procs.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.procs.log(n)[-3000:]}" for n in
                         ("relay", "server", "source") if (self.tmp / f"{n}.log").exists())


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg) -> None:
        if msg.type in ("error", "warning"):
            self.errors.append(f"{msg.type}: {msg.text}")


def wait_live(page, timeout: float = 20.0) -> None:
    """Until the page's client has its hello (state open)."""
    page.wait_for_function(
        "() => window.speeddata && window.speeddata.state === 'open' && window.speeddata.hello",
        timeout=timeout * 1000,
    )


def wait_until(fn, timeout: float = 20.0):
    return wait_for(fn, timeout=timeout, interval=0.1)
