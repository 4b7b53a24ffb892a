"""Run the appliance (``secureconnect run``) as a real subprocess: the one launcher of our tests,
our benchmarks, the NAT lab and the pytest plugin (:mod:`secureconnect.testing.plugin`).

Every end-to-end test needs the same dance: build the command line (components,
``--state-dir``, one ``--set`` per override), start it in an environment that no systemd or
outer test run leaks into, wait (bounded) until it prints ``SecureConnect is ready``, and stop it
however the block ends (SIGTERM, a bounded wait, SIGKILL, pipes closed). Written once here, so
that a fix to the launcher (a deadline, a leaked pipe, a stray ``$NOTIFY_SOCKET``) reaches every
caller. Our tests import it as ``appliance`` (``tests/support/appliance.py`` re-exports it).

* :func:`run_appliance` is the context manager; it yields a :class:`Running`.
* :class:`Running` holds the process and what it wrote: daemon threads append its stdout to
  ``output`` and its stderr (the log) to ``log`` line by line, so a pipe never fills up and every
  wait has a deadline (:meth:`Running.wait_ready`, :meth:`Running.wait_log`).
* :func:`stop_process` is the SIGTERM-then-SIGKILL shutdown, also for other servers' processes.
* :func:`appliance_env` and :func:`free_port` are the environment and the ports to run it with.

Nothing here imports the rest of ``secureconnect``: the packaging test runs a built file with it,
and the lab runs it inside a namespace (``argv_prefix``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

READY = "SecureConnect is ready"  # the first line ``secureconnect run`` prints once it serves
PYTHON_M = (sys.executable, "-m", "secureconnect")  # the program, as this interpreter runs it
# Variables through which systemd, or a test run under it, would reach the child.
_INHERITED_NOT = ("NOTIFY_SOCKET", "WATCHDOG_", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "XDG_")
_POLL = 0.02  # seconds between looks at what the reader threads collected
_JOIN = 5.0  # seconds to wait for a reader thread once the process has exited


class ApplianceNotReady(RuntimeError):
    """The appliance exited, or did not say it was ready in time (the message has its output)."""


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (``kind`` is the one probed first)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, other) as check:
            try:
                check.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


@dataclass(frozen=True)
class AllInOnePorts:
    """Free loopback ports for the whole appliance: TURN (UDP and TCP; STUN is served on it
    too), TURN over TLS, and signaling."""

    turn: int
    tls: int
    wss: int

    @classmethod
    def free(cls) -> AllInOnePorts:
        for _ in range(20):
            ports = cls(free_port(), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM))
            if len({ports.turn, ports.tls, ports.wss}) == 3:
                return ports
        raise RuntimeError("no three distinct free ports")

    def settings(self) -> tuple[str, ...]:
        """The ``--set`` overrides that put the appliance on these ports."""
        return (
            f"turn.port={self.turn}",
            f"turn.tls_port={self.tls}",
            f"stun.port={self.turn}",
            f"stun.tls_port={self.tls}",
            f"signal.port={self.wss}",
            "general.drain_timeout=0.5",
        )


def appliance_env(home: Path, **extra: str) -> dict[str, str]:
    """Our environment without systemd's or XDG variables, ``HOME`` set to ``home``, plus
    ``extra`` (e.g. ``NOTIFY_SOCKET`` for a pretend systemd)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_NOT)}
    return {**env, "HOME": str(home), **extra}


def stop_process(
    proc: subprocess.Popen[str] | subprocess.Popen[bytes],
    sig: int = signal.SIGTERM,
    timeout: float = 10.0,
) -> int:
    """Send ``sig`` if ``proc`` still runs, wait up to ``timeout`` s, then SIGKILL; the status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=timeout)
    return proc.returncode


def wait_for_line(
    lines: list[str], text: str, timeout: float, reader: threading.Thread | None = None
) -> str | None:
    """The first of ``lines`` that contains ``text``, waiting up to ``timeout`` s while ``reader``
    (the thread appending to ``lines``) runs; None if it did not come."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        finished = reader is not None and not reader.is_alive()  # before looking: no race
        fresh = lines[seen:]
        for line in fresh:
            if text in line:
                return line
        seen += len(fresh)
        if finished or time.monotonic() >= deadline:
            return None
        time.sleep(_POLL)


def _collect(stream: IO[str], into: list[str]) -> threading.Thread:
    """A daemon thread appending each line of ``stream`` to ``into`` until end of file."""

    def read() -> None:
        try:
            for line in stream:
                into.append(line)
        except (OSError, ValueError):  # closed under us: whatever came is in ``into``
            return

    thread = threading.Thread(target=read, name="appliance-output", daemon=True)
    thread.start()
    return thread


@dataclass
class Running:
    """A started appliance: the process, its argv, and what it has written so far."""

    proc: subprocess.Popen[str]
    argv: list[str]
    state_dir: Path | None  # what ``--state-dir`` said; None when it was not given
    log_file: Path | None  # where stderr goes when not collected into ``log``
    output: list[str] = field(default_factory=list)  # stdout: the ready line, then its URLs
    log: list[str] = field(default_factory=list)  # stderr (the log), unless ``log_file``
    _readers: dict[str, threading.Thread] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.proc.stdout is not None:
            self._readers["stdout"] = _collect(self.proc.stdout, self.output)
        if self.proc.stderr is not None:
            self._readers["stderr"] = _collect(self.proc.stderr, self.log)

    def log_text(self) -> str:
        """Everything logged so far (from ``log_file`` when stderr went there)."""
        if self.log_file is not None:
            return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "".join(self.log)

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """The first log line containing ``text``, waiting for it to be written."""
        line = wait_for_line(self.log, text, timeout, self._readers.get("stderr"))
        if line is None:
            raise AssertionError(f"{text!r} not logged; log: {self.log_text()}")
        return line

    def wait_ready(self, timeout: float) -> str:
        """The ready line; :class:`ApplianceNotReady` with its output if it exits or is late."""
        line = wait_for_line(self.output, READY, timeout, self._readers.get("stdout"))
        if line is not None:
            return line
        status = self.proc.poll()
        if status is not None:  # it exited: let the log reader catch up with its last words
            self._join_readers()
        why = f"exited with status {status}" if status is not None else f"late ({timeout} s)"
        tail = "\n".join(self.log_text().splitlines()[-40:])
        raise ApplianceNotReady(
            f"the appliance was not ready, {why}: {' '.join(self.argv)}\n"
            f"stdout: {''.join(self.output)}\nstderr: {tail}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` (SIGTERM, SIGINT...) unless it has exited, SIGKILL it after ``timeout``
        s; the exit status. ``output`` and ``log`` are complete when this returns."""
        status = stop_process(self.proc, sig, timeout)
        self._join_readers()
        return status

    def _join_readers(self) -> None:
        for reader in self._readers.values():
            reader.join(timeout=_JOIN)

    def close(self) -> None:
        """Close the pipes whose readers are done (closing under a blocked reader would hang)."""
        for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            if stream is not None and not self._readers[name].is_alive():
                stream.close()


@contextmanager
def run_appliance(
    workdir: Path,
    *components: str,
    settings: Iterable[str] = (),
    extra_args: Iterable[str] = (),
    state_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    argv_prefix: Sequence[str] = (),
    program: Sequence[str] = PYTHON_M,
    cwd: Path | None = None,
    log_file: Path | None = None,
    ready_timeout: float | None = 20.0,
    stop_timeout: float = 10.0,
) -> Iterator[Running]:
    """``[*argv_prefix, *program, "run", *components, --state-dir, --set ..., *extra_args]``.

    - ``workdir`` is its ``HOME`` in the default environment, ``appliance_env(workdir)``;
      ``env`` replaces that environment as a whole.
    - ``settings`` are ``KEY=VALUE`` overrides, one ``--set`` each; ``state_dir`` is passed as
      ``--state-dir`` when given (otherwise the config or the environment decides).
    - ``argv_prefix`` runs it through another command (``ip netns exec NS``); ``program``
      replaces ``python -m secureconnect`` (a built executable), ``cwd`` its directory.
    - stderr is collected into ``Running.log``, or written to ``log_file`` when given.
    - The block starts once the ready line is printed (:class:`ApplianceNotReady` after
      ``ready_timeout`` s); ``ready_timeout=None`` yields at once, for tests that watch the
      start themselves or expect it to fail.

    When the block ends it stops the appliance (SIGTERM, ``stop_timeout`` s, SIGKILL) unless
    the test already did (:meth:`Running.stop`), and closes the pipes.
    """
    argv = [*argv_prefix, *program, "run", *components]
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir)]
    for item in settings:
        argv += ["--set", item]
    argv += extra_args
    stderr: IO[str] | None = log_file.open("w") if log_file is not None else None
    try:
        proc = subprocess.Popen(  # noqa: S603 - our program, with the caller's arguments
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr is None else stderr,
            text=True,
            errors="replace",
            env=appliance_env(workdir) if env is None else dict(env),
            cwd=cwd,
        )
    finally:
        if stderr is not None:
            stderr.close()  # the child has its own descriptor
    running = Running(proc, argv, state_dir, log_file)
    try:
        if ready_timeout is not None:
            running.wait_ready(ready_timeout)
        yield running
    finally:
        running.stop(timeout=stop_timeout)
        running.close()
