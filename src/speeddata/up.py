"""``speeddata up``: run the parts of SpeedData on one config as child processes.

The relay (``python -m speeddata.relay``), the live server when this build has one, and
with ``--demo`` the demo source, all on one config (the built-in default without ``-c``).
While they run, the relay's status table (asked over its ZeroMQ control socket) refreshes
once a second (speeddata.commands.up); the children's output goes to ``<cache dir>/up.log``,
each line after its child's name, and the last lines of each child are kept to say why it
died.

A small :class:`Supervisor` starts each part with :mod:`subprocess` and stops them all
(SIGTERM, then SIGKILL after a grace period) on Ctrl-C, SIGTERM or ``--duration``. A part
that dies is reported (exit status or signal, its last lines) and, as the config's
``[up]`` section says, restarted after a back-off that doubles up to a bound, or everything
is stopped. A part that exits with status 0 (the relay after a ``stop`` request) stops
everything with status 0. Ctrl-C ends with exit status 0 and no traceback. The
supervisor installs its SIGINT and SIGTERM handlers itself, so that it also stops when it
was started with SIGINT ignored (a background job of a script).
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import UpConfig
from .control import ControlError, request
from .errors import SpeedDataError

__all__ = [
    "Supervisor", "Child", "UpError", "children", "command_argv", "describe_exit",
    "server_url", "wait_for_relay", "wait_for_server",
]

#: seconds a child gets to exit after SIGTERM before SIGKILL
STOP_GRACE = 5.0
#: how often the supervisor looks at its children (it sleeps in between)
POLL_INTERVAL = 0.1
#: lines of a child's output kept to say why it died
TAIL_LINES = 12


class UpError(SpeedDataError, RuntimeError):
    """``speeddata up`` cannot start or a part of it failed."""


@dataclass
class Child:
    """One supervised process (restarts replace :attr:`process`)."""

    name: str
    argv: list[str]
    process: subprocess.Popen | None = field(default=None, repr=False)
    #: the last lines of its stdout and stderr (when captured, see Supervisor.start)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES), repr=False)
    started_at: float = 0.0  # time.monotonic() of the last start
    failures: int = 0  # failures in a row (a run of restart_backoff_max starts over)
    n_restarts: int = 0  # restarts since up started
    restart_at: float | None = None  # a restart is due at this time.monotonic()
    output: object = field(default=None, repr=False)  # log file (binary) or None
    reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


def describe_exit(code: int) -> str:
    """``"exited with status 3"`` or ``"was killed by SIGKILL"`` (Popen's negative codes)."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


def exit_status(code: int) -> int:
    """The shell's exit status for a child's Popen return code (128 + signal number)."""
    return code if code >= 0 else 128 - code


class _Stop(KeyboardInterrupt):
    """Raised by the SIGTERM handler: stop as on Ctrl-C."""


class Supervisor:
    """Start child processes, restart or stop them when one dies, stop them all together.

    >>> with Supervisor(policy=UpConfig(on_failure="stop")) as sup:  # doctest: +SKIP
    ...     sup.start("source", [sys.executable, "-m", "speeddata.commands", "source", "--demo"])
    ...     status = sup.wait(duration=10)
    """

    def __init__(self, out=None, policy: UpConfig | None = None):
        self.children: list[Child] = []
        self.out = out if out is not None else sys.stderr
        self.policy = policy if policy is not None else UpConfig()
        #: what happened (deaths, restarts), most recent last, for a status display
        self.events: deque[str] = deque(maxlen=4)
        self._log_lock = threading.Lock()

    def start(self, name: str, argv: Sequence[str], output=None) -> Child:
        """Start ``argv`` as child ``name``. Its stdout and stderr are ours; or, with a
        binary file object ``output``, copied there line by line after ``[name]``, the
        last lines kept in :attr:`Child.tail`."""
        child = Child(name, list(argv), output=output)
        self._spawn(child)
        self.children.append(child)
        return child

    def _spawn(self, child: Child) -> None:
        # children that honour it stop when this process dies (even by SIGKILL)
        env = dict(os.environ, SPEEDDATA_DIE_WITH_PARENT="1")
        pipe = subprocess.PIPE if child.output is not None else None
        try:
            child.process = subprocess.Popen(
                child.argv, stdout=pipe, stderr=subprocess.STDOUT if pipe else None, env=env
            )
        except OSError as exc:
            raise UpError(
                f"cannot start {child.name} ({' '.join(child.argv)}): {exc.strerror}"
            ) from exc
        child.started_at = time.monotonic()
        child.restart_at = None
        if pipe is not None:
            child.reader = threading.Thread(
                target=self._copy_output, args=(child, child.process.stdout),
                name=f"up-output-{child.name}", daemon=True,
            )
            child.reader.start()

    def _copy_output(self, child: Child, pipe) -> None:
        prefix = f"[{child.name}] ".encode()
        try:
            for line in iter(pipe.readline, b""):
                child.tail.append(line.decode(errors="replace").rstrip())
                with self._log_lock:
                    try:
                        child.output.write(prefix + line if line.endswith(b"\n")
                                           else prefix + line + b"\n")
                        child.output.flush()
                    except (OSError, ValueError):  # log full or closed: keep draining
                        pass
        finally:
            pipe.close()

    def _drained(self, child: Child, timeout: float = 2.0) -> None:
        """Wait (a little) until the child's output is copied: its last lines are in."""
        if child.reader is not None:
            child.reader.join(timeout)

    def why(self, child: Child, when: str = "") -> str:
        """``"relay was killed by SIGKILL after 3.2 s"`` (+ `` when``) and its last
        lines, indented."""
        code = child.returncode
        ran = time.monotonic() - child.started_at
        text = f"{child.name} " + (
            "is running" if code is None else f"{describe_exit(code)} after {ran:.1f} s"
        ) + (f" {when}" if when else "")
        self._drained(child)
        lines = [line for line in child.tail if line.strip()]
        if lines:
            text += "; its last lines:\n" + "\n".join("    " + line for line in lines)
        return text

    def note(self, message: str) -> None:
        """Tell the user (``speeddata up: ...`` on :attr:`out`) and keep it in events."""
        lines = message.splitlines()
        self.events.extend(line for line in lines if not line.startswith(" "))
        self.out.write("".join(line + "\n" if line.startswith(" ") else
                               f"speeddata up: {line}\n" for line in lines))
        self.out.flush()

    def wait(self, duration: float | None = None, tick=None, tick_interval: float = 1.0) -> int:
        """Wait until ``duration`` passes, Ctrl-C or SIGTERM arrives (-> 0), a child exits
        with status 0 (-> 0), or a child dies and the policy says stop (-> its exit
        status, 128 + N for signal N). A child that dies is restarted meanwhile when the
        policy says so. Children keep running: call :meth:`stop` (or leave the ``with``
        block). ``tick()``, if given, is called now and then every ``tick_interval``
        seconds (``up`` shows the relay status)."""
        deadline = math.inf if duration is None else time.monotonic() + duration
        next_tick = time.monotonic()
        previous = _install_stop_handlers()
        try:
            while True:
                if tick is not None and time.monotonic() >= next_tick:
                    tick()
                    next_tick = time.monotonic() + tick_interval
                for child in self.children:
                    if child.restart_at is not None:
                        if time.monotonic() >= child.restart_at:
                            self._restart(child)
                        continue
                    code = child.returncode
                    if code is not None:
                        verdict = self._died(child, code)
                        if verdict is not None:
                            return verdict
                pause = min(POLL_INTERVAL, deadline - time.monotonic())
                if pause <= 0:
                    return 0
                time.sleep(pause)
        except (KeyboardInterrupt, _Stop):
            return 0
        finally:
            _restore_handlers(previous)

    def _died(self, child: Child, code: int) -> int | None:
        """Report the death of ``child``; schedule its restart (-> None) or say to stop
        everything (-> the exit status for ``up``)."""
        policy = self.policy
        why = self.why(child)
        if code == 0:
            self.note(f"{why}\nstopping everything")
            return 0
        if time.monotonic() - child.started_at >= policy.restart_backoff_max:
            child.failures = 0  # it ran well for a while: this is a new failure
        child.failures += 1
        if policy.on_failure == "stop":
            self.note(f"{why}\nstopping everything (up.on_failure = \"stop\")")
            return exit_status(code)
        if policy.max_restarts and child.failures > policy.max_restarts:
            self.note(
                f"{why}\n{child.name} failed {child.failures} times in a row; stopping "
                f"everything (up.max_restarts = {policy.max_restarts})"
            )
            return exit_status(code)
        delay = min(policy.restart_backoff * 2.0 ** min(child.failures - 1, 60),
                    policy.restart_backoff_max)
        child.restart_at = time.monotonic() + delay
        limit = f" of {policy.max_restarts}" if policy.max_restarts else ""
        self.note(f"{why}\nrestarting {child.name} in {delay:g} s (restart "
                  f"{child.failures}{limit} in a row; up.on_failure = \"restart\")")
        return None

    def _restart(self, child: Child) -> None:
        self._drained(child)
        child.tail.clear()
        self._spawn(child)
        child.n_restarts += 1
        self.note(f"{child.name} restarted (pid {child.pid})")

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
        for child in self.children:  # their last lines into the log before it closes
            self._drained(child)

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


def wait_for_relay(endpoint: str, relay: Child, sup: Supervisor | None = None,
                   timeout: float = 30.0) -> None:
    """Until the relay answers on its control socket; UpError if it exits or stays mute."""
    deadline = time.monotonic() + timeout
    while True:
        if relay.returncode is not None:
            raise UpError(_why(sup, relay, "while starting"))
        try:
            status = request(endpoint, {"cmd": "status"}, timeout=0.3)
            if status.get("pid") == relay.pid:  # ours, not another relay on the endpoint
                return
            time.sleep(0.1)
        except ControlError:
            pass
        if time.monotonic() > deadline:
            raise UpError(f"the relay did not answer on {endpoint} within {timeout:g} s "
                          "(is another relay answering there?)")


def wait_for_server(listen: tuple[str, int], server: Child, sup: Supervisor | None = None,
                    timeout: float = 30.0) -> None:
    """Until the live server listens on the port of ``listen`` (the child itself, not
    another program on that port); UpError if it exits or does not listen within
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if server.returncode is not None:
            raise UpError(_why(sup, server, "while starting"))
        if _listens(server.pid, listen[1]):
            return
        if time.monotonic() > deadline:
            raise UpError(f"the live server does not listen on port {listen[1]} after "
                          f"{timeout:g} s")
        time.sleep(0.05)


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a TCP socket listening on ``port`` (proc(5):
    /proc/PID/fd links name socket inodes; /proc/net/tcp lists them, state 0A = LISTEN)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if (len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes
                    and int(cols[1].rsplit(":", 1)[1], 16) == port):
                return True
    return False


def _why(sup: Supervisor | None, child: Child, when: str) -> str:
    if sup is not None:
        return sup.why(child, when)
    return f"{child.name} {describe_exit(child.returncode)} {when}"


def server_url(config) -> str:
    """The URL of the live server ``up`` starts (what to open in a browser)."""
    host, port = config.server.listen
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}/"
