"""The compiled UDP fast path (``_fastpath.c``, ``fastpath_*.c``): docs/fastpath.md."""

import threading
from collections.abc import Callable, Sequence
from typing import final

@final
class FastPath:
    """One object per UDP data plane; every method is called with the TURN lock held."""

    @property
    def batch(self) -> int: ...
    @property
    def wakeups(self) -> int:
        """``run_epoll``'s wake-ups with events, counted as they happen."""
    @property
    def gso(self) -> int:
        """1 while UDP GSO is used; 0 once the kernel has refused to segment (for good)."""
    @property
    def gso_messages(self) -> int:
        """Segmented messages sent: runs of datagrams to one address sent as one."""
    def __init__(
        self, batch: int = 64, *, seed: int | None = None, buffer_size: int = 65536
    ) -> None:
        """``batch``: datagrams per ``recvmmsg`` (1 to 1024). ``seed``: makes the transaction
        ids of Data indications reproducible (tests). ``buffer_size`` (64 to 65536): the
        receive buffer per datagram, smaller only to test truncation."""

    def add(self, relay_fd: int, listener_fd: int, client: tuple[str, int], budget: float) -> None:
        """A UDP client's allocation; ``ValueError`` if ``relay_fd`` is already there. The
        client on that listener then names this allocation (dict semantics, as the core's)."""

    def remove(self, relay_fd: int) -> None:
        """Forget an allocation with its permissions and channels, and the client's key on its
        listener; no error if absent."""

    def permit(self, relay_fd: int, ip: str, expires: float, own_ports: Sequence[int]) -> None:
        """Install or refresh a permission for ``ip`` until ``expires``."""

    def forget_permission(self, relay_fd: int, ip: str) -> None:
        """Drop a permission; no error if absent."""

    def bind_channel(
        self, relay_fd: int, number: int, peer: tuple[str, int], expires: float
    ) -> None:
        """Install or refresh channel ``number`` to ``peer`` until ``expires``."""

    def forget_channel(self, relay_fd: int, number: int) -> None:
        """Drop a channel; no error if absent."""

    def budget(self, relay_fd: int) -> float:
        """The allocation's remaining bytes."""

    def set_budget(self, relay_fd: int, value: float) -> None:
        """Set the allocation's remaining bytes (the core's tick refills them)."""

    def spend(self, relay_fd: int, size: int) -> bool:
        """Take ``size`` bytes; False (``dropped_bandwidth`` counted) when that would go below
        0. Nothing else is counted: the caller counts what it relays."""

    def traffic(self, relay_fd: int) -> tuple[int, int, int, int]:
        """One allocation's relayed traffic: (to_peer_packets, to_peer_bytes,
        to_client_packets, to_client_bytes), counted beside :meth:`counters`' (a snapshot, read
        when asked: nothing per datagram but the increments). ``KeyError`` if unknown."""

    def counters(self) -> dict[str, int]:
        """The relay counters by name; readable while a drain runs (a snapshot as of then)."""

    def drain_listener(
        self, listener_fd: int, now: float, limit: int
    ) -> list[tuple[bytes, tuple[str, int]]]:
        """Read up to ``limit`` datagrams from a listening socket; the ones left for Python."""

    def drain_relay(self, relay_fd: int, now: float, limit: int) -> int:
        """Read up to ``limit`` datagrams from a relay socket; how many were read (0, reading
        nothing, for a descriptor not in the tables)."""

    def run_epoll(
        self,
        epoll_fd: int,
        wake_fd: int,
        *,
        lock: threading.Lock,
        clock: Callable[[], float],
        listeners: dict[int, Callable[[list[tuple[bytes, tuple[str, int]]], float], object]],
        handlers: dict[int, Callable[[float], object]],
        limit: int,
    ) -> int:
        """``turn.dataplane.EpollThread.run`` in C (fastpath_loop.c): wait on ``epoll_fd``
        without the GIL; per ready socket, with ``lock`` held and ``clock()`` as now, drain a
        relay socket in these tables, drain a listening socket in ``listeners`` and call its
        callback with what is left (if anything), or call ``handlers[fd](now)``. Returns the
        number of wake-ups once ``wake_fd`` is readable (it is drained); an exception from a
        callback ends it with that exception."""
