"""The TURN server's UDP hot path in one thread of its own, off trio's scheduler.

Why a thread: every wake-up of a trio task costs about 5 µs of Python and an ``epoll_ctl`` on top
of the work (measured on loopback: a trio UDP echo used 7.6 µs of user CPU per datagram where the
same loop on a plain level-triggered epoll used 2.5 µs). A relay wakes once per datagram at the
rates one client sends, so that overhead was about 40% of our server CPU per relayed datagram.
:class:`EpollThread` waits on one level-triggered ``select.epoll`` for every socket of the UDP
data plane - the UDP listening sockets and the relay sockets of UDP clients' allocations - and
calls each ready socket's drain function; trio keeps everything else (TCP/TLS clients and their
relay sockets, timers, the supervisor protocol).

Theory of operation:

- Each registered file descriptor has a handler ``handler(now)`` that drains up to a batch of
  datagrams without blocking (level-triggered: a socket left non-empty is reported again, so one
  busy socket cannot starve the others).
- The TURN core and allocation state are shared with the trio thread, so handlers run with the
  server's ``lock`` held, taken once per ready socket (not per datagram, not per wake-up: the
  trio side waits for one drain of at most ``BATCH`` datagrams); the trio side takes the same
  lock around every call into the core, without blocking its thread (``turn.serve``). The lock
  is never held across a blocking wait: ``epoll_wait`` runs unlocked (and without the GIL).
- Sockets are added and removed from either thread while the lock is held. A socket is removed
  from the epoll set *before* it is closed, and events are looked up by descriptor after taking
  the lock: an event for a socket closed meanwhile finds no handler (or, if the number was reused
  by a new relay socket, a harmless empty read).
- With the compiled fast path the same loop runs in C (``FastPath.run_epoll``,
  turn/fastpath_loop.c, docs/fastpath.md): no bytecode per ready socket, the lock and the
  rules above unchanged. The Python loop below stays the reference and the pure-Python path.
- :meth:`EpollThread.stop` wakes the thread through a pipe; :meth:`EpollThread.run` then returns.
  An exception from a handler ends ``run`` with that exception (each handler already catches
  per-datagram failures, so this is a bug) and the TURN component fails loudly instead of relaying
  nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

Handler = Callable[[float], object]  # called with now; what it returns is ignored
#: a listening socket's callback in the compiled loop: what the fast path left, and now
Unhandled = Callable[[list[tuple[bytes, tuple[str, int]]], float], object]


@runtime_checkable
class CompiledLoop(Protocol):
    """The compiled fast path's loop (``turn._fastpath.FastPath.run_epoll``,
    turn/fastpath_loop.c): this module's :meth:`EpollThread.run` in C."""

    def run_epoll(
        self,
        epoll_fd: int,
        wake_fd: int,
        *,
        lock: threading.Lock,
        clock: Callable[[], float],
        listeners: dict[int, Unhandled],
        handlers: dict[int, Handler],
        limit: int,
    ) -> int: ...

    @property
    def wakeups(self) -> int: ...


class EpollThread:
    """One level-triggered epoll loop; see the module docstring."""

    def __init__(
        self,
        lock: threading.Lock,
        clock: Callable[[], float],
        compiled: CompiledLoop | None = None,
        limit: int = 256,
    ) -> None:
        """``compiled``: the compiled fast path, whose loop then runs instead of the Python
        one (relay sockets it knows are drained without a Python call, listening sockets'
        leftovers go to their ``unhandled`` callback); ``limit``: its datagrams per drain."""
        self.lock = lock
        self._clock = clock
        self._compiled = compiled
        self._limit = limit
        self._epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_read, select.EPOLLIN)
        self._handlers: dict[int, Handler] = {}
        self._unhandled: dict[int, Unhandled] = {}
        self._stopping = False
        self._closed = False
        self._wakeups = 0  # the Python loop's; the compiled loop counts its own

    def add(self, fd: int, handler: Handler, unhandled: Unhandled | None = None) -> None:
        """Start calling ``handler`` whenever ``fd`` is readable (call with the lock held). A
        listening socket also gives ``unhandled``, which the compiled loop calls instead, with
        what the fast path's drain left for Python."""
        self._handlers[fd] = handler
        if unhandled is not None:
            self._unhandled[fd] = unhandled
        self._epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> bool:
        """Stop watching ``fd`` (before closing it; call with the lock held). False when it was
        not watched here."""
        self._unhandled.pop(fd, None)
        if self._handlers.pop(fd, None) is None:
            return False
        # Already closed: the kernel has dropped it from the set.
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)
        return True

    @property
    def wakeups(self) -> int:
        """``epoll_wait`` returns with events (for tests and metrics)."""
        return self._wakeups + (self._compiled.wakeups if self._compiled is not None else 0)

    def __contains__(self, fd: int) -> bool:
        return fd in self._handlers

    def stop(self) -> None:
        """Make :meth:`run` return soon (from any thread)."""
        self._stopping = True
        if self._closed:
            return
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
            os.write(self._wake_write, b"\0")

    def run(self) -> None:
        """The loop, in the data-plane thread; returns after :meth:`stop`."""
        if self._compiled is not None:
            run_epoll = self._compiled.run_epoll
            epoll_fd = self._epoll.fileno()
            while not self._stopping:
                run_epoll(
                    epoll_fd,
                    self._wake_read,
                    lock=self.lock,
                    clock=self._clock,
                    listeners=self._unhandled,
                    handlers=self._handlers,
                    limit=self._limit,
                )
            return
        poll = self._epoll.poll
        handlers = self._handlers
        wake = self._wake_read
        lock, clock = self.lock, self._clock
        while not self._stopping:
            events = poll()
            if not events:
                continue
            self._wakeups += 1
            for fd, _ in events:
                # The lock per ready socket, not per wake-up: the trio side waits for one
                # drain at most, never for every socket's batch (issue #13, item 3).
                with lock:
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler(clock())
                if fd == wake:
                    os.read(wake, 4096)

    def close(self) -> None:
        """Release the epoll and the wake-up pipe, once :meth:`run` has returned (idempotent;
        the sockets belong to their owners)."""
        if self._closed:
            return
        self._closed = True
        self._epoll.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
