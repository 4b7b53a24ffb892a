"""Allocation load generator: opens and holds thousands of TURN allocations, prints JSON.

``turnutils_uclient`` relays traffic on a few allocations; it cannot hold thousands open. This
process creates allocations in stages (e.g. ``--stages 1000,5000``: 1,000 live allocations, then
4,000 more for 5,000), each on its own UDP socket (an allocation is keyed by the client's
5-tuple), each with its own TURN REST user: an unauthenticated Allocate, the 401's REALM and
NONCE, the authenticated Allocate. Up to ``--window`` allocations are in flight at once;
requests unanswered for 0.5 s are retransmitted (same transaction id) up to 4 times.

After each stage it waits a moment and reads the server's resident set (VmRSS) and CPU seconds
from /proc (``--pid``), so the caller gets allocations per second, server CPU per allocation and
RSS per live allocation. The allocations stay live until this process exits (the servers are
stopped right after; nothing is refreshed).

Bounded: at most 10,000 allocations, ``--timeout`` per stage (at most 300 s).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time
from dataclasses import dataclass

from common import process_cpu, rss_kib
from turn_client import (
    User,
    allocate_authenticated,
    allocate_unauthenticated,
    challenge,
    decode,
    error_code,
)

from secureconnect.stun import MessageClass

MAX_ALLOCATIONS = 10_000
RETRANSMIT = 0.5  # seconds
MAX_TRIES = 5
SETTLE = 0.5  # seconds between the last allocation of a stage and reading RSS


@dataclass
class Pending:
    """One allocation in flight: its socket, user, last request and when it was sent."""

    sock: socket.socket
    user: User
    request: bytes
    sent_at: float
    tries: int = 1
    authenticated: bool = False


class Stage:
    """One stage: ``count`` allocations for users ``first`` .., at most ``window`` in flight.

    The sockets of the successful allocations are appended to ``keep`` (they stay open, so the
    allocations stay live); failures are counted by reason.
    """

    def __init__(
        self, server: tuple[str, int], secret: str, *, first: int, count: int, window: int
    ) -> None:
        self.server = server
        self.secret = secret
        self.first = first
        self.count = count
        self.window = window
        self.selector = selectors.DefaultSelector()
        self.pending: dict[int, Pending] = {}
        self.started = self.made = self.failed = 0
        self.errors: dict[str, int] = {}

    def run(self, timeout: float, keep: list[socket.socket]) -> dict[str, int]:
        """Drive the stage until every allocation succeeded or failed, or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        try:
            while self.made + self.failed < self.count and time.monotonic() < deadline:
                self.start_more()
                for key, _ in self.selector.select(timeout=0.05):
                    self.on_readable(key.fd, keep)
                self.retransmit(keep)
            for fd in list(self.pending):
                self.finish(fd, keep, "stage deadline")
        finally:
            self.selector.close()
        failures = {f"failed: {k}": v for k, v in self.errors.items()}
        return {"made": self.made, "failed": self.failed, **failures}

    def start_more(self) -> None:
        """Open sockets and send first Allocates until ``window`` are in flight."""
        while self.started < self.count and len(self.pending) < self.window:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect(self.server)
            sock.setblocking(False)
            request = allocate_unauthenticated()
            user = User.rest(self.secret, f"bench{self.first + self.started}")
            sock.send(request)
            self.pending[sock.fileno()] = Pending(sock, user, request, time.monotonic())
            self.selector.register(sock, selectors.EVENT_READ)
            self.started += 1

    def on_readable(self, fd: int, keep: list[socket.socket]) -> None:
        """Answer a 401/438 with the authenticated Allocate; a success finishes the allocation."""
        item = self.pending[fd]
        try:
            message = decode(item.sock.recv(2048))
        except (BlockingIOError, ConnectionRefusedError):
            return
        if message is None or message.transaction_id != item.request[8:20]:
            return
        if message.cls == MessageClass.SUCCESS and item.authenticated:
            self.finish(fd, keep)
            return
        got = challenge(message)
        if got is not None and error_code(message) in (401, 438):
            item.request = allocate_authenticated(item.user, got[0], got[1])
            item.authenticated, item.tries, item.sent_at = True, 1, time.monotonic()
            item.sock.send(item.request)
        else:
            self.finish(fd, keep, f"error {error_code(message)}")

    def retransmit(self, keep: list[socket.socket]) -> None:
        """Resend requests unanswered for RETRANSMIT seconds (same transaction id)."""
        now = time.monotonic()
        for fd, item in list(self.pending.items()):
            if now - item.sent_at > RETRANSMIT:
                if item.tries >= MAX_TRIES:
                    self.finish(fd, keep, "timeout")
                else:
                    item.tries += 1
                    item.sent_at = now
                    item.sock.send(item.request)

    def finish(self, fd: int, keep: list[socket.socket], failure: str = "") -> None:
        item = self.pending.pop(fd)
        self.selector.unregister(item.sock)
        if not failure:
            self.made += 1
            keep.append(item.sock)
        else:
            self.failed += 1
            self.errors[failure] = self.errors.get(failure, 0) + 1
            item.sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's pid")
    parser.add_argument("--stages", default="1000,5000", help="live allocations per stage")
    parser.add_argument("--window", type=int, default=64, help="allocations in flight")
    parser.add_argument("--timeout", type=float, default=120.0, help="per stage, seconds")
    args = parser.parse_args()
    stages = sorted({max(1, min(int(n), MAX_ALLOCATIONS)) for n in args.stages.split(",")})
    window = max(1, min(args.window, 1024))
    timeout = max(5.0, min(args.timeout, 300.0))
    keep: list[socket.socket] = []
    baseline = rss_kib(args.pid)
    results = []
    try:
        for target in stages:
            need = target - len(keep)
            cpu0 = process_cpu(args.pid)
            t0 = time.monotonic()
            stage = Stage(
                (args.host, args.port), args.secret, first=len(keep), count=need, window=window
            )
            counts = stage.run(timeout, keep)
            seconds = time.monotonic() - t0
            cpu = process_cpu(args.pid) - cpu0
            time.sleep(SETTLE)
            rss = rss_kib(args.pid)
            live = len(keep)
            results.append(
                {
                    "target": target,
                    "live": live,
                    "seconds": seconds,
                    "server_cpu_s": cpu,
                    "rss_kib": rss,
                    "per_second": counts["made"] / seconds if seconds else 0.0,
                    "kib_per_allocation": (rss - baseline) / live if live else 0.0,
                    **counts,
                }
            )
    finally:
        for sock in keep:
            sock.close()
    print(json.dumps({"baseline_rss_kib": baseline, "stages": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
