"""EpollThread, the TURN server's UDP data-plane loop: handlers, locking, removal, stop, failure.

Every test runs both loops: the Python one (the pure-Python path) and the compiled one
(``FastPath.run_epoll``, turn/fastpath_loop.c), which must keep the same rules."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from secureconnect.turn._fastpath import FastPath
from secureconnect.turn.dataplane import EpollThread

LOOPS = ["python", "compiled"]


def new_plane(loop: str, lock: threading.Lock) -> EpollThread:
    return EpollThread(lock, time.monotonic, FastPath() if loop == "compiled" else None)


def udp_pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return receiver, sender


def start(plane: EpollThread) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            plane.run()
        except BaseException as exc:  # handed to the test
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failures


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@pytest.mark.parametrize("loop", LOOPS)
def test_handlers_run_with_the_lock_held_and_stop_ends_the_loop(loop: str) -> None:
    lock = threading.Lock()
    plane = new_plane(loop, lock)
    receiver, sender = udp_pair()
    got: list[tuple[bytes, bool]] = []

    def handler(now: float) -> None:
        while True:
            try:
                data = receiver.recv(2048)
            except BlockingIOError:
                return
            got.append((data, lock.locked()))

    with lock:
        plane.add(receiver.fileno(), handler)
    assert receiver.fileno() in plane
    thread, failures = start(plane)
    try:
        sender.send(b"one")
        sender.send(b"two")
        wait_for(lambda: len(got) == 2)
        assert got == [(b"one", True), (b"two", True)]
        assert plane.wakeups >= 1
    finally:
        plane.stop()
        thread.join(5)
        plane.close()
        plane.close()  # idempotent
        plane.stop()  # after close: a no-op, never a write to a reused descriptor
        receiver.close()
        sender.close()
    assert not thread.is_alive()
    assert failures == []


@pytest.mark.parametrize("loop", LOOPS)
def test_a_removed_socket_is_never_handled_again(loop: str) -> None:
    """A removed socket that still has a datagram waiting (level-triggered: epoll would report
    it on every wait) is not handled, while a socket still registered is: the control shows the
    loop ran past the removed one's data."""
    lock = threading.Lock()
    plane = new_plane(loop, lock)
    removed, removed_sender = udp_pair()
    control, control_sender = udp_pair()
    calls: list[float] = []
    seen = threading.Event()

    def handle_control(now: float) -> None:
        control.recv(64)
        seen.set()

    with lock:
        plane.add(removed.fileno(), calls.append)
        plane.add(control.fileno(), handle_control)
        assert plane.remove(removed.fileno()) is True
        assert plane.remove(removed.fileno()) is False  # not watched any more
    thread, failures = start(plane)
    try:
        removed_sender.send(b"late")  # first: it is waiting when the control arrives
        control_sender.send(b"control")
        assert seen.wait(5)
        assert calls == []
        assert removed.recv(64) == b"late"  # it was there to be read all along
    finally:
        plane.stop()
        thread.join(5)
        plane.close()
        for sock in (removed, removed_sender, control, control_sender):
            sock.close()
    assert failures == []


@pytest.mark.parametrize("loop", LOOPS)
def test_a_failing_handler_ends_the_loop_with_its_exception(loop: str) -> None:
    """Handlers catch per-datagram failures themselves; anything escaping is a bug, and the
    TURN component must fail loudly rather than go on relaying nothing."""
    lock = threading.Lock()
    plane = new_plane(loop, lock)
    receiver, sender = udp_pair()

    def broken(now: float) -> None:
        raise RuntimeError("bug")

    with lock:
        plane.add(receiver.fileno(), broken)
    thread, failures = start(plane)
    sender.send(b"x")
    thread.join(5)
    plane.close()
    receiver.close()
    sender.close()
    assert not thread.is_alive()
    assert len(failures) == 1
    with pytest.raises(RuntimeError, match="bug"):
        raise failures[0]
    assert not lock.locked()


def test_the_compiled_loop_hands_a_listening_socket_s_leftovers_to_its_callback() -> None:
    """A listening socket of the compiled loop is drained in C; what the fast path leaves for
    Python (here everything: no allocation is known) reaches the ``unhandled`` callback as
    (data, source) pairs in one call per drain, with the lock held, and never its Python
    handler."""
    lock = threading.Lock()
    plane = new_plane("compiled", lock)
    receiver, sender = udp_pair()
    got: list[tuple[bytes, tuple[str, int], bool]] = []

    def unhandled(left: list[tuple[bytes, tuple[str, int]]], now: float) -> None:
        got.extend((data, source, lock.locked()) for data, source in left)

    def python_handler(now: float) -> None:
        raise AssertionError("the compiled loop drains listening sockets itself")

    with lock:
        plane.add(receiver.fileno(), python_handler, unhandled)
    thread, failures = start(plane)
    try:
        sender.send(b"\x00\x01first")  # a STUN message's first bits: Python's to judge
        sender.send(b"\x00\x01second")
        wait_for(lambda: len(got) == 2)
        source = sender.getsockname()
        assert got == [(b"\x00\x01first", source, True), (b"\x00\x01second", source, True)]
    finally:
        plane.stop()
        thread.join(5)
        plane.close()
        receiver.close()
        sender.close()
    assert failures == []
