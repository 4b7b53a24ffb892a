"""Does UDP GSO pay on loopback? A probe for issue #14's fast path (docs/fastpath.md).

The compiled fast path sends a batch with one ``sendmmsg``: one syscall, but one trip through the
UDP/IP stack per datagram. UDP GSO (Linux 4.18+, the ``UDP_SEGMENT`` control message) hands the
kernel one large buffer that it splits into equal datagrams after the stack, when a batch shares
destination and size - a relay's peer -> client direction for one busy flow. coturn 4.17 offers
it (``--udp-gso``). This probe sends the same datagrams both ways to a receiver process on
loopback and reports CPU per datagram on each side (``getrusage``), so the decision to build GSO
into the fast path rests on a figure from this machine.

Both senders call the kernel through ctypes once per batch (``sendmmsg`` with a prepared array;
``sendmsg`` with the ``UDP_SEGMENT`` cmsg), so Python's per-call cost is the same for both and
small beside the batch. The receiver drains with ``recv_into`` in its own process; it counts
what arrived, so loss shows too.

    python bench/gso_probe.py [--size 200] [--batch 64] [--datagrams 400000] [--rate 200000]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import resource
import socket
import statistics
import time
from typing import Any

SOL_UDP = 17
UDP_SEGMENT = 103
MAX_DATAGRAMS = 2_000_000  # bounded: the probe's total per method and round


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(IOVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


class CMsgU16(ctypes.Structure):
    """``struct cmsghdr`` followed by one uint16 (the segment size), padded to 8 bytes."""

    _fields_ = [
        ("len", ctypes.c_size_t),
        ("level", ctypes.c_int),
        ("type", ctypes.c_int),
        ("value", ctypes.c_uint16),
        ("pad", ctypes.c_uint16 * 3),
    ]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receiver(port_out: Any, count_out: Any, expected: int, idle: float) -> None:
    """Drain a UDP socket until ``idle`` seconds pass without data; report count and CPU."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    port_out.send(sock.getsockname()[1])
    buffer = bytearray(65536)
    sock.settimeout(idle)
    received = 0
    start = cpu()
    try:
        while received < expected:
            sock.recv_into(buffer)
            received += 1
    except TimeoutError:
        pass
    count_out.send((received, cpu() - start))


def send_all(
    method: str, port: int, size: int, batch: int, *, datagrams: int, rate: float
) -> float:
    """Send ``datagrams`` of ``size`` bytes in batches; the sender's CPU seconds."""
    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    payload = ctypes.create_string_buffer(b"A" * (size * batch), size * batch)
    base = ctypes.addressof(payload)
    if method == "sendmmsg":
        iovs = (IOVec * batch)(*[IOVec(base + i * size, size) for i in range(batch)])
        msgs = (MMsgHdr * batch)()
        for i in range(batch):
            msgs[i].hdr.iov = ctypes.pointer(iovs[i])
            msgs[i].hdr.iovlen = 1

        def call() -> int:
            return int(libc.sendmmsg(sock.fileno(), msgs, batch, 0))
    else:
        iov = IOVec(base, size * batch)
        cmsg = CMsgU16(ctypes.sizeof(ctypes.c_size_t) + 8 + 2, SOL_UDP, UDP_SEGMENT, size)
        msg = MsgHdr(None, 0, ctypes.pointer(iov), 1, ctypes.addressof(cmsg), 24, 0)

        def call() -> int:
            return int(libc.sendmsg(sock.fileno(), ctypes.byref(msg), 0))

    start, began = cpu(), time.monotonic()
    sent = 0
    while sent < datagrams:
        if call() < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{method}: {os.strerror(errno)}")
        sent += batch
        # Paced to ``rate`` datagrams/s, the same for both methods, so that the receiver keeps
        # up and both are compared at one load.
        ahead = sent / rate - (time.monotonic() - began)
        if ahead > 0.001:
            time.sleep(ahead)
    sock.close()
    return cpu() - start


def run(method: str, size: int, batch: int, datagrams: int, rate: float) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    port_in, port_out = ctx.Pipe(duplex=False)
    count_in, count_out = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=receiver, args=(port_out, count_out, datagrams, 1.0))
    proc.start()
    port = port_in.recv()
    sender_cpu = send_all(method, port, size, batch, datagrams=datagrams, rate=rate)
    received, receiver_cpu = count_in.recv()
    proc.join(10)
    return {
        "sender_us_per_dgram": 1e6 * sender_cpu / datagrams,
        "receiver_us_per_dgram": 1e6 * receiver_cpu / max(received, 1),
        "loss_pct": 100.0 * (datagrams - received) / datagrams,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--datagrams", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200_000.0, help="datagrams/s offered")
    args = parser.parse_args()
    size = max(16, min(args.size, 1400))
    batch = max(2, min(args.batch, 64))  # UDP_SEGMENT: at most 64 segments per call
    datagrams = max(batch, min(args.datagrams, MAX_DATAGRAMS)) // batch * batch
    rate = max(1000.0, min(args.rate, 2_000_000.0))
    results: dict[str, list[dict[str, float]]] = {"sendmmsg": [], "gso": []}
    for _ in range(max(1, min(args.rounds, 10))):
        for method, runs in results.items():  # alternating, so drift cancels out
            runs.append(run(method, size, batch, datagrams, rate))
    summary = {
        method: {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
        for method, runs in results.items()
    }
    summary["gso_over_sendmmsg_sender"] = {
        "ratio": round(
            summary["gso"]["sender_us_per_dgram"] / summary["sendmmsg"]["sender_us_per_dgram"], 2
        )
    }
    head = {"size": size, "batch": batch, "datagrams": datagrams, "rate": rate}
    print(json.dumps({**head, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
