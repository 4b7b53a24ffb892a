"""The quota link between a TURN worker and the parent's book (turn/workerlink.py, docs/workers.md),
over a real socket pair: a late grant goes back, a parent that is gone refuses, and a message
that is not ours ends the link without touching the book."""

from __future__ import annotations

import socket
import threading
import time

from secureconnect.turn.quotas import QuotaBook
from secureconnect.turn.workerlink import QuotaService, RemoteQuotas, socket_pair


class Limits:
    total_quota = 10
    user_quota = 10
    ip_quota = 10


def serve_in_thread(service: QuotaService, sock: socket.socket, owner: int) -> threading.Thread:
    thread = threading.Thread(target=service.serve, args=(sock, owner), daemon=True)
    thread.start()
    return thread


def test_a_grant_that_comes_after_the_worker_gave_up_is_given_back() -> None:
    """The parent answers only after the worker's timeout: that Allocate was refused (486), so
    the slot the parent granted late goes straight back, and the next take is answered."""
    book = QuotaBook(Limits())
    service = QuotaService(book)
    parent, child = socket_pair()
    remote = RemoteQuotas(child)
    child.settimeout(0.2)  # instead of QUOTA_TIMEOUT's 2 s
    assert not remote.take("alice", "192.0.2.1", 1)  # nobody answers yet
    child.settimeout(10)  # from now on answers come: time for a thread to start under load
    thread = serve_in_thread(service, parent, 7)
    assert remote.take("bob", "192.0.2.2", 1)
    deadline = time.monotonic() + 5
    while book.by_user != {"bob": 1} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert book.by_user == {"bob": 1}
    assert book.owned(7) == 1
    child.close()
    thread.join(5)
    parent.close()


def test_a_parent_that_is_gone_refuses_every_take() -> None:
    parent, child = socket_pair()
    remote = RemoteQuotas(child)
    parent.close()
    assert not remote.take("alice", "192.0.2.1", 1)
    remote.give("alice", "192.0.2.1", 1)  # logged, never raised
    child.close()


def test_a_message_that_is_not_ours_ends_the_link_and_leaves_the_book_alone() -> None:
    book = QuotaBook(Limits())
    service = QuotaService(book)
    parent, child = socket_pair()
    thread = serve_in_thread(service, parent, 3)
    child.send(b"\x80\x04not JSON: a worker's bytes are never unpickled")
    thread.join(5)
    assert not thread.is_alive()
    assert book.held == 0
    parent.close()
    child.close()
