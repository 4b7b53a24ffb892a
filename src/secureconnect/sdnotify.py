"""systemd's service notification protocol (``sd_notify(3)``), spoken directly: no dependency.

Theory of operation
-------------------
A unit with ``Type=notify`` gets ``$NOTIFY_SOCKET``: the address of an ``AF_UNIX`` datagram
socket owned by the service manager. The service tells it how it is doing by sending one
datagram of newline-separated ``KEY=VALUE`` assignments:

- ``READY=1`` once every component is listening (systemd only then starts ``After=`` units and
  ``systemctl start`` only then returns);
- ``STATUS=...`` a one-line human summary shown by ``systemctl status``;
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` (the ``CLOCK_MONOTONIC`` time the reload began, which
  ``Type=notify-reload`` in systemd 253+ requires) before a SIGHUP reload, and ``READY=1`` after;
- ``STOPPING=1`` when a shutdown begins;
- ``WATCHDOG=1`` keep-alives when the unit sets ``WatchdogSec=``: systemd passes the period as
  ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID`` when it is meant for one process only) and restarts a
  service that stays silent that long, so pings go out at half the period.

An address starting with ``@`` is in Linux's abstract namespace (the ``@`` stands for a leading
NUL byte); one starting with ``/`` is a file system path. Anything else (``vsock:`` and friends
from newer systemd versions) is not supported and disables notifications with one warning.

Error handling: notifications are advisory. Outside systemd (no ``$NOTIFY_SOCKET``) every call is
a no-op, and a send that fails (socket gone, queue full) returns ``False`` and is logged once; it
never raises into the server. Sends never block: the socket is non-blocking, and a datagram is
far below any socket buffer.

Nothing here imports trio: the supervisor owns the timing (when to say READY, the ping loop).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from secureconnect.logs import fields

log = logging.getLogger("secureconnect.sdnotify")


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds: the clock systemd compares ``MONOTONIC_USEC`` with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(value: str) -> str | None:
    """The ``AF_UNIX`` address for a ``$NOTIFY_SOCKET`` value; ``None`` if unusable."""
    if len(value) > 1 and value[0] == "@":
        return "\0" + value[1:]  # abstract namespace
    if len(value) > 1 and value[0] == "/":
        return value
    return None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or ``None`` when no
    watchdog is armed for this process (unset, malformed, or ``$WATCHDOG_PID`` names another)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


def _one_line(text: str) -> str:
    """``STATUS=`` takes a single line: newlines would start new assignments."""
    return " ".join(text.split())


class Notifier:
    """Sends notifications to the service manager; a no-op when ``address`` is ``None``.

    Build it with :meth:`from_environ` in the process systemd started; tests and non-systemd runs
    get ``Notifier(None)``. ``watchdog_interval`` is how often :meth:`watchdog` should be called
    (``None``: no watchdog).
    """

    __slots__ = ("_address", "_failed", "_socket", "watchdog_interval")

    def __init__(self, address: str | None, *, watchdog_interval: float | None = None) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        self._failed = False
        self.watchdog_interval = watchdog_interval if address is not None else None

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``."""
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("notify-socket-unsupported", extra=fields(address=raw))
        return cls(address, watchdog_interval=watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``assignments`` (``"KEY=VALUE"`` strings) as one datagram; ``True`` if sent."""
        if self._address is None:
            return False
        data = "\n".join(assignments).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(data, self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True  # once: a missing socket would otherwise log every ping
                log.warning("notify-failed", extra=fields(error=str(exc)))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Startup (or a reload) is complete: every component is listening."""
        return self.notify("READY=1", *self._status(status))

    def reloading(self, status: str = "") -> bool:
        """A reload begins; call :meth:`ready` when it is over."""
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", *self._status(status)
        )

    def stopping(self, status: str = "") -> bool:
        """A shutdown begins (drain, then exit)."""
        return self.notify("STOPPING=1", *self._status(status))

    def status(self, text: str) -> bool:
        """A one-line summary for ``systemctl status``."""
        return self.notify(*self._status(text))

    def watchdog(self) -> bool:
        """The keep-alive; due every :attr:`watchdog_interval` seconds."""
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Release the socket (later notifications reopen it)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @staticmethod
    def _status(text: str) -> tuple[str, ...]:
        return (f"STATUS={_one_line(text)}",) if text else ()
