"""``speeddata up``: run the parts of SpeedData on one config as child processes.

The relay (``python -m speeddata.relay``), the live server when this build has one, and
with ``--demo`` the demo source, all on one config (the built-in default without ``-c``).
While they run, the relay's status table (asked over its ZeroMQ control socket) refreshes
once a second (speeddata.commands.up); the children's output goes to ``<cache dir>/up.log``.

A small :class:`Supervisor` starts each part with :mod:`subprocess` and stops them all
(SIGTERM, then SIGKILL after a grace period) on Ctrl-C, SIGTERM, ``--duration`` or when
any child exits. Ctrl-C ends with exit status 0 and no traceback. The supervisor installs
its SIGINT and SIGTERM handlers itself, so that it also stops when it was started with
SIGINT ignored (a background job of a script).
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .control import ControlError, request
from .errors import SpeedDataError

__all__ = [
    "Supervisor", "Child", "UpError", "children", "command_argv", "server_url", "wait_for_relay"
]

#: seconds a child gets to exit after SIGTERM before SIGKILL
STOP_GRACE = 5.0
#: how often the supervisor looks at its children (it sleeps in between)
POLL_INTERVAL = 0.1


class UpError(SpeedDataError, RuntimeError):
    """``speeddata up`` cannot start or a part of it failed."""


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()


class _Stop(KeyboardInterrupt):
    """Raised by the SIGTERM handler: stop as on Ctrl-C."""


class Supervisor:
    """Start child processes and stop them all together.

    >>> with Supervisor() as sup:  # doctest: +SKIP
    ...     sup.start("source", [sys.executable, "-m", "speeddata.commands", "source", "--demo"])
    ...     status = sup.wait(duration=10)
    """

    def __init__(self, out=None):
        self.children: list[Child] = []
        self.out = out if out is not None else sys.stderr

    def start(self, name: str, argv: Sequence[str], output=None) -> Child:
        """Start ``argv`` as child ``name``; its stdout and stderr are ours, or go to the
        file object ``output``."""
        child = Child(name, list(argv))
        try:
            # children that honour it stop when this process dies (even by SIGKILL)
            env = dict(os.environ, SPEEDDATA_DIE_WITH_PARENT="1")
            child.process = subprocess.Popen(child.argv, stdout=output, stderr=output, env=env)
        except OSError as exc:
            raise UpError(f"cannot start {name} ({' '.join(argv)}): {exc.strerror}") from exc
        self.children.append(child)
        return child

    def wait(self, duration: float | None = None, tick=None, tick_interval: float = 1.0) -> int:
        """Wait until ``duration`` passes, Ctrl-C or SIGTERM arrives (-> 0), or a child
        exits (-> its status, 0 if it exited cleanly). Children keep running: call
        :meth:`stop` (or leave the ``with`` block). ``tick()``, if given, is called now
        and then every ``tick_interval`` seconds (``up`` shows the relay status)."""
        deadline = math.inf if duration is None else time.monotonic() + duration
        next_tick = time.monotonic()
        previous = _install_stop_handlers()
        try:
            while True:
                if tick is not None and time.monotonic() >= next_tick:
                    tick()
                    next_tick = time.monotonic() + tick_interval
                for child in self.children:
                    code = child.returncode
                    if code is not None:
                        if code != 0:
                            self.out.write(
                                f"speeddata up: {child.name} exited with status {code}\n"
                            )
                        return code if code > 0 else (0 if code == 0 else 128 - code)
                pause = min(POLL_INTERVAL, deadline - time.monotonic())
                if pause <= 0:
                    return 0
                time.sleep(pause)
        except (KeyboardInterrupt, _Stop):
            return 0
        finally:
            _restore_handlers(previous)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every running child, wait up to ``grace`` seconds, then SIGKILL."""
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for proc in running:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            while True:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    break
                except subprocess.TimeoutExpired:
                    _signal(proc, signal.SIGKILL)
                    proc.wait()
                    break
                except KeyboardInterrupt:
                    continue  # a second Ctrl-C while stopping: keep stopping

    def __enter__(self) -> Supervisor:
        # Ctrl-C and SIGTERM stop us however we were started: a process started with
        # SIGINT ignored (`cmd &` in a script) gets no KeyboardInterrupt from Python
        # (signal(2): an ignored disposition is inherited across exec).
        self._previous = _install_stop_handlers()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            _restore_handlers(self._previous)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _install_stop_handlers() -> dict:
    """SIGINT raises KeyboardInterrupt and SIGTERM :class:`_Stop` (a KeyboardInterrupt),
    also when SIGINT was ignored at start; the previous handlers, to restore."""

    def on_sigterm(signum, frame):
        raise _Stop()

    previous = {}
    try:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: signals are not ours to handle
        pass
    return previous


def _restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def command_argv(*args: str) -> list[str]:
    """The argv of ``speeddata ARGS...`` run by this Python."""
    return [sys.executable, "-m", "speeddata.commands", *args]


def children(
    config: str | None = None,
    engine: str | None = None,
    demo: bool = False,
    rates: Sequence[str] = (),
    quiet: bool = False,
) -> list[tuple[str, list[str]]]:
    """The processes ``up`` runs, as ``(name, argv)``, in start order: the relay, the
    live server (when this build has one), the demo source (``demo``, at ``rates`` as
    for ``speeddata source --rate``; ``quiet``: no send rates printed)."""
    config_args = ["-c", os.path.abspath(config)] if config else []
    relay = [sys.executable, "-m", "speeddata.relay", *config_args]
    if engine:
        relay += ["--engine", engine]
    procs: list[tuple[str, list[str]]] = [("relay", relay)]
    if importlib.util.find_spec("speeddata.server") is not None:
        procs.append(("live server", command_argv("serve", *config_args)))
    if demo:
        extra = [f"--rate={r}" for r in rates]
        if quiet:
            extra.append("--quiet")
        procs.append(("demo source", command_argv("source", "--demo", *config_args, *extra)))
    return procs


def wait_for_relay(endpoint: str, relay: Child, timeout: float = 30.0) -> None:
    """Until the relay answers on its control socket; UpError if it exits or stays mute."""
    deadline = time.monotonic() + timeout
    while True:
        code = relay.returncode
        if code is not None:
            raise UpError(f"the relay exited with status {code} while starting")
        try:
            request(endpoint, {"cmd": "status"}, timeout=0.3)
            return
        except ControlError:
            if time.monotonic() > deadline:
                raise UpError(
                    f"the relay did not answer on {endpoint} within {timeout:g} s"
                ) from None


def server_url(config) -> str:
    """The URL of the live server ``up`` starts (what to open in a browser)."""
    host, port = config.server.listen
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}/"
