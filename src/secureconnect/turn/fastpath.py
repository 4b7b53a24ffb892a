"""Which UDP fast path runs: the compiled ``turn._fastpath`` or its pure-Python twin.

The compiled one is used unless ``SECURECONNECT_NO_EXTENSIONS`` is set (to anything but ``0``)
or it is not installed (no compiler when the package was built): aiohttp's
``AIOHTTP_NO_EXTENSIONS`` pattern. :data:`ACTIVE` says which one runs and :data:`REASON` why;
``secureconnect run`` logs both. Both implement :class:`FastPathAPI` (docs/fastpath.md), and
:class:`Mirror` is how an :class:`~secureconnect.turn.allocation.Allocation` pushes its changes
into either.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from secureconnect.turn.allocation import Address
from secureconnect.turn.pyfastpath import PyFastPath

#: set (to anything but "0") to run the pure-Python twin even where the extension is installed
NO_EXTENSIONS_ENV = "SECURECONNECT_NO_EXTENSIONS"


class FastPathAPI(Protocol):
    """The fast path's API (docs/fastpath.md): tables keyed by relay descriptor, two drains."""

    def add(self, relay_fd: int, listener_fd: int, client: Address, budget: float) -> None: ...
    def remove(self, relay_fd: int) -> None: ...
    def permit(
        self, relay_fd: int, ip: str, expires: float, own_ports: tuple[int, ...]
    ) -> None: ...
    def forget_permission(self, relay_fd: int, ip: str) -> None: ...
    def bind_channel(self, relay_fd: int, number: int, peer: Address, expires: float) -> None: ...
    def forget_channel(self, relay_fd: int, number: int) -> None: ...
    def budget(self, relay_fd: int) -> float: ...
    def set_budget(self, relay_fd: int, value: float) -> None: ...
    def spend(self, relay_fd: int, size: int) -> bool: ...
    def traffic(self, relay_fd: int) -> tuple[int, int, int, int]: ...
    def counters(self) -> dict[str, int]: ...
    def drain_listener(
        self, listener_fd: int, now: float, limit: int
    ) -> list[tuple[bytes, Address]]: ...
    def drain_relay(self, relay_fd: int, now: float, limit: int) -> int: ...


def _compiled() -> tuple[Callable[..., Any] | None, str]:
    if os.environ.get(NO_EXTENSIONS_ENV, "") not in ("", "0"):
        return None, f"{NO_EXTENSIONS_ENV} is set"
    try:
        module = importlib.import_module("secureconnect.turn._fastpath")
    except ImportError as exc:
        return None, f"the compiled extension is not installed ({exc})"
    return module.FastPath, "the compiled extension is installed"


_COMPILED, REASON = _compiled()
#: "compiled" or "python": which fast path this process runs
ACTIVE = "compiled" if _COMPILED is not None else "python"


def fastpath_reason(kind: str) -> str:
    """Why a fast path of ``kind`` ("compiled" or "python") runs, for the log."""
    if kind == ACTIVE:
        return REASON
    return "asked for explicitly"


def new_fastpath(
    sockets: Mapping[int, socket.socket], *, compiled: bool | None = None
) -> FastPathAPI:
    """A fast path over ``sockets`` (descriptor -> socket, kept current by the data plane):
    the active one, or the one ``compiled`` asks for (the differential test runs both)."""
    if compiled is None:
        compiled = _COMPILED is not None
    if not compiled:
        return PyFastPath(sockets)
    if _COMPILED is None:
        raise RuntimeError(f"the compiled fast path is not available: {REASON}")
    fastpath: FastPathAPI = _COMPILED()
    return fastpath


class Mirror:
    """One allocation's :class:`~secureconnect.turn.allocation.RelayMirror`: its changes,
    pushed into a fast path's tables under its relay descriptor."""

    __slots__ = ("fastpath", "relay_fd")

    def __init__(self, fastpath: FastPathAPI, relay_fd: int) -> None:
        self.fastpath = fastpath
        self.relay_fd = relay_fd

    def permit(self, ip: str, expires: float, own_ports: tuple[int, ...]) -> None:
        self.fastpath.permit(self.relay_fd, ip, expires, own_ports)

    def forget_permission(self, ip: str) -> None:
        self.fastpath.forget_permission(self.relay_fd, ip)

    def bind_channel(self, number: int, peer: Address, expires: float) -> None:
        self.fastpath.bind_channel(self.relay_fd, number, peer, expires)

    def forget_channel(self, number: int) -> None:
        self.fastpath.forget_channel(self.relay_fd, number)

    def spend(self, size: int) -> bool:
        return self.fastpath.spend(self.relay_fd, size)

    def traffic(self) -> tuple[int, int, int, int]:
        return self.fastpath.traffic(self.relay_fd)

    def refill(self, rate: float, elapsed: float) -> None:
        fastpath, fd = self.fastpath, self.relay_fd
        fastpath.set_budget(fd, min(rate, fastpath.budget(fd) + rate * elapsed))
