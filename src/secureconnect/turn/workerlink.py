"""The wire between the parent process and a TURN worker it spawned (docs/workers.md).

Two ``AF_UNIX``/``SOCK_SEQPACKET`` socket pairs per worker, so the kernel keeps message
boundaries and each side knows at once when the other is gone (EOF):

* **control** (trio on both sides): the worker's spec at start, then ``reload`` (new TURN
  secrets) and ``drain`` from the parent; ``bound`` (once every socket serves) and ``metrics``
  (every second) from the worker.
* **quota** (blocking, one request at a time, JSON both ways): the worker's core asks the parent's
  :class:`~secureconnect.turn.quotas.QuotaBook` before it binds a relay socket
  (:class:`RemoteQuotas`) and tells it when one closes; the parent answers from a thread
  (:class:`QuotaService`), so an answer never waits for the parent's trio loop.

What the parent sends a worker is pickled (the spec holds the whole config): the worker trusts
the process that started it. What a worker sends the parent is JSON (:func:`encode_report`):
the parent never unpickles a worker's bytes, so a worker that went wrong (a memory bug in the
compiled fast path, say) cannot run code in the parent through the link. Nothing else can reach
an unnamed socket pair. A message is at most :data:`MAX_MESSAGE` bytes.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from secureconnect.logs import fields
from secureconnect.ratelimit import FailureBackoff
from secureconnect.turn.auth import static_user_backoff
from secureconnect.turn.quotas import QuotaBook

__all__ = [
    "MAX_MESSAGE",
    "LockedQuotas",
    "QuotaService",
    "RemoteQuotas",
    "ReportedUserBackoff",
    "SharedUserBackoff",
    "decode_message",
    "decode_report",
    "encode_message",
    "encode_report",
    "receive_message",
    "send_message",
    "socket_pair",
]

log = logging.getLogger("secureconnect.turn.workerlink")

MAX_MESSAGE = 1 << 20
#: how long a worker waits for a quota answer before it refuses the Allocate (486): the parent
#: answers from a thread in microseconds; this bounds a wedged parent, not a busy one
QUOTA_TIMEOUT = 2.0
LATE_TAKES = 64  # unanswered takes remembered, so that a late grant is given back


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of message sockets (parent end, worker end), both blocking."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def encode_message(message: Any) -> bytes:
    """One message's bytes (ValueError beyond :data:`MAX_MESSAGE`)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"worker message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def send_message(sock: socket.socket, message: Any) -> None:
    """Send one message from a thread or a blocking socket (messages are small and the peer
    reads them); trio's side sends :func:`encode_message`'s bytes itself."""
    sock.send(encode_message(message))


def decode_message(data: bytes) -> Any:
    """One received message; EOFError for the empty read that means the peer closed."""
    if not data:
        raise EOFError("the other process closed its end")
    return pickle.loads(data)  # noqa: S301 - our own child or parent, see the module docstring


def receive_message(sock: socket.socket) -> Any:
    """Receive one message from the parent (blocking)."""
    return decode_message(sock.recv(MAX_MESSAGE))


def encode_report(message: Any) -> bytes:
    """A worker's message to the parent, as JSON (lists, strings, numbers)."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"worker report of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode_report(data: bytes) -> Any:
    """A worker's message; EOFError when it has closed its end, ValueError when it is not
    JSON."""
    if not data:
        raise EOFError("the worker closed its end")
    return json.loads(data)


class LockedQuotas:
    """The parent's :class:`QuotaBook` as one owner's :class:`~secureconnect.turn.quotas.QuotaGate`
    under the book's lock (the parent's own core is owner 0; the service threads share it)."""

    __slots__ = ("book", "lock", "owner")

    def __init__(self, book: QuotaBook, lock: threading.Lock, owner: int = 0) -> None:
        self.book = book
        self.lock = lock
        self.owner = owner

    def take(self, user: str, source: str, needed: int) -> bool:
        with self.lock:
            return self.book.take(user, source, needed, self.owner)

    def give(self, user: str, source: str, count: int) -> None:
        with self.lock:
            self.book.give(user, source, count, self.owner)


class RemoteQuotas:
    """A worker's :class:`~secureconnect.turn.quotas.QuotaGate`: the parent's book over the
    quota socket. ``take`` waits for the answer (at most :data:`QUOTA_TIMEOUT`; a late answer is
    told from the next one by its sequence number, and a late grant is given straight back);
    ``give`` does not wait. A parent that is gone refuses every take: the worker ends anyway
    when its control socket closes."""

    __slots__ = ("_late", "_lock", "_seq", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(QUOTA_TIMEOUT)
        self._seq = 0
        self._lock = threading.Lock()
        #: takes given up on (seq -> what they asked): a grant that comes after all is given
        #: straight back, since the Allocate was refused; bounded, oldest forgotten
        self._late: dict[int, tuple[str, str, int]] = {}

    def take(self, user: str, source: str, needed: int) -> bool:
        with self._lock:
            self._seq += 1
            seq = self._seq
            try:
                self.sock.send(encode_report(["take", seq, user, source, needed]))
                while True:
                    answer_seq, granted = decode_report(self.sock.recv(MAX_MESSAGE))
                    if answer_seq == seq:
                        return bool(granted)
                    late = self._late.pop(answer_seq, None)
                    if late is not None and granted:
                        self.sock.send(encode_report(["give", 0, *late]))
            except (OSError, EOFError, ValueError) as exc:
                log.error("quota-unanswered", extra=fields(error=str(exc) or type(exc).__name__))
                self._late[seq] = (user, source, needed)
                while len(self._late) > LATE_TAKES:
                    del self._late[next(iter(self._late))]
                return False

    def give(self, user: str, source: str, count: int) -> None:
        self._tell(["give", 0, user, source, count])

    def report_failure(self, user: str) -> None:
        """A failed attempt on static user ``user`` here: the parent counts it with every
        other process's (:class:`ReportedUserBackoff`)."""
        self._tell(["failed", 0, user, "", 0])

    def _tell(self, message: list[object]) -> None:
        with self._lock:
            try:
                self.sock.send(encode_report(message))
            except OSError as exc:
                log.error("quota-unsent", extra=fields(error=str(exc)))


class ReportedUserBackoff:
    """A worker's static-user backoff (``turn.auth.UserBackoff``): its own, plus every
    failure reported to the parent, which counts them over all processes and sends each
    worker the backoffs that follow (``block``). A guesser who spreads over the workers by
    choosing addresses meets one count, not one per worker."""

    __slots__ = ("link", "local")

    def __init__(self, link: RemoteQuotas, local: FailureBackoff | None = None) -> None:
        self.link = link
        self.local = local if local is not None else static_user_backoff()

    def blocked(self, key: str, now: float) -> bool:
        return self.local.blocked(key, now)

    def failed(self, key: str, now: float) -> None:
        self.local.failed(key, now)
        self.link.report_failure(key)

    def block(self, key: str, until: float, now: float) -> None:
        """The parent's verdict: ``key`` backs off until ``until`` (wall time)."""
        self.local.block(key, until, now)


class SharedUserBackoff:
    """The parent's own TURN server's view of the shared static-user backoff: the service's,
    under its lock; a backoff that starts here is sent to every worker too."""

    __slots__ = ("service",)

    def __init__(self, service: QuotaService) -> None:
        self.service = service

    def blocked(self, key: str, now: float) -> bool:
        with self.service.lock:
            return self.service.users.blocked(key, now)

    def failed(self, key: str, now: float) -> None:
        self.service.user_failed(key, now)


class QuotaService:
    """The parent's side of every worker's quota socket: one :meth:`serve` call (in a thread of
    its own) per worker, all on one book under one lock."""

    __slots__ = ("book", "lock", "logged_users", "on_block", "users")

    def __init__(self, book: QuotaBook, lock: threading.Lock | None = None) -> None:
        self.book = book
        self.lock = lock or threading.Lock()
        #: static users' failures from every process (docs/workers.md)
        self.users = static_user_backoff()
        #: told (user, until) when a static user's backoff starts or grows: the pool sends it
        #: to every worker
        self.on_block: Callable[[str, float], object] | None = None
        #: the configured static users, whose backoffs are logged (any other name failing is
        #: counted the same, so that a backoff says nothing of which names exist, but its
        #: name is the client's choice: not written to the log)
        self.logged_users: frozenset[str] = frozenset()

    def user_backoff(self) -> SharedUserBackoff:
        """The shared static-user backoff for the parent's own server."""
        return SharedUserBackoff(self)

    def user_failed(self, user: str, now: float) -> None:
        """A failed attempt on static user ``user`` somewhere: counted once for all, and a
        backoff that follows goes to every worker."""
        with self.lock:
            self.users.failed(user, now)
            until = self.users.blocked_until(user)
        if until > now and self.on_block is not None:
            self.on_block(user, until)
            # Logged once every worker was sent it: a guessing burst on a static user is a
            # security event an operator wants to see. At most one line per backoff, which
            # lasts 1 s at least: about one line a second per configured user at most.
            if user in self.logged_users:
                seconds = round(until - now, 1)
                log.warning("user-backoff", extra=fields(user=user, seconds=seconds))

    def gate(self, owner: int = 0) -> LockedQuotas:
        """The book as ``owner``'s gate (for the parent's own core: owner 0)."""
        return LockedQuotas(self.book, self.lock, owner)

    def serve(self, sock: socket.socket, owner: int) -> None:
        """Answer ``owner``'s requests until its end closes (or ours is shut down). A request
        that is not one of ours ends the service for that worker: its takes are then refused."""
        while True:
            try:
                op, seq, user, source, count = decode_report(sock.recv(MAX_MESSAGE))
                user, source, count = str(user), str(source), int(count)
            except (OSError, EOFError):
                return
            except (ValueError, TypeError) as exc:  # not ours: this link ends, nothing else
                log.error("quota-bad-message", extra=fields(owner=owner, error=repr(exc)))
                return
            if op == "failed":
                self.user_failed(user, time.time())  # auth's clock is wall time
                continue
            with self.lock:
                if op != "take":
                    self.book.give(user, source, count, owner)
                    continue
                granted = self.book.take(user, source, count, owner)
            try:
                sock.send(encode_report([seq, granted]))
            except OSError:
                return

    def drop_owner(self, owner: int) -> int:
        """Give back all ``owner`` held (its process has exited); how many slots that was."""
        with self.lock:
            return self.book.drop_owner(owner)
