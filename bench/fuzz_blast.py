"""Paced senders of mutated messages for the fuzzing campaign (``bench/fuzz.py``).

Each sender takes a message source (a callable drawing from ``fuzz_mutate``), a count, a rate
and a deadline, and returns a :class:`Tally`: what it sent, what came back, how often the server
closed a connection. They never wait for answers (a fuzzer that waits measures latency, not
robustness): answers are drained without blocking between bursts and counted.

* :func:`blast_udp` - datagrams from a few client sockets (distinct 5-tuples, so allocations
  made by intact templates spread over several), in bursts of :data:`BURST`.
* :func:`blast_stream` - TCP or TLS: bursts of frames that still parse (``reframe``) joined and
  cut at random offsets, sometimes ended by a frame that must make the server close the
  connection (``framing_breaker``), after which a new connection is opened.
* :func:`blast_wss` - WebSocket frames through the ``websockets`` client (sync API), JSON
  damaged by ``fuzz_mutate.json_frame``; a connection the server closes is replaced.

Pacing: a burst goes out, then the sender sleeps until the rate allows the next one, so the
load stays at ``rate`` messages per second however fast the machine is; every loop also stops
at ``deadline``. Everything goes to 127.0.0.1.
"""

from __future__ import annotations

import random
import select
import socket
import ssl
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

from fuzz_mutate import framing_breaker, reframe
from turnwire import stream_socket
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

BURST = 32  # messages per burst before pacing and draining
OVERSIZED = 4 * 65536  # signaling closes a connection (1009) on a frame above this
RECV = 65536


@dataclass
class Tally:
    """What one sender did."""

    sent: int = 0
    responses: int = 0
    connections: int = 0  # streams: connections opened
    closed_by_server: int = 0  # streams: connections the server ended (EOF, reset, close frame)
    refused: int = 0  # connections that could not be opened
    seconds: float = 0.0
    send_errors: int = 0
    closes: dict[str, int] = field(default_factory=dict)  # WebSocket close code -> count

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


class Pacer:
    """Sleeps so that ``rate`` items per second are not exceeded."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    def wait(self, items: int) -> None:
        self.next += items * self.interval
        ahead = self.next - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        elif ahead < -1.0:  # far behind (a slow moment): do not burst to catch up
            self.next = time.monotonic()


def blast_udp(
    server: tuple[str, int],
    source: Callable[[], bytes],
    *,
    count: int,
    rate: float,
    deadline: float,
    sockets: int = 8,
) -> Tally:
    """``count`` datagrams to ``server`` from ``sockets`` client sockets at ``rate`` per s."""
    tally = Tally()
    socks = []
    for _ in range(sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(server)
        socks.append(sock)
    pacer = Pacer(rate)
    started = time.monotonic()
    try:
        while tally.sent < count and time.monotonic() < deadline:
            sock = socks[(tally.sent // BURST) % len(socks)]
            for _ in range(min(BURST, count - tally.sent)):
                try:
                    sock.send(source())
                except OSError:  # a full buffer, a queued ICMP error
                    tally.send_errors += 1
                tally.sent += 1
            tally.responses += _drain_udp(socks)
            pacer.wait(BURST)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            tally.responses += _drain_udp(socks)
            time.sleep(0.05)
    finally:
        for sock in socks:
            sock.close()
    tally.seconds = time.monotonic() - started
    return tally


def _drain_udp(socks: list[socket.socket]) -> int:
    got = 0
    for sock in socks:
        while True:
            try:
                sock.recv(RECV)
            except BlockingIOError:
                break
            except OSError:  # ECONNREFUSED from an ICMP error: nothing listening for a moment
                break
            got += 1
    return got


class _Stream:
    """One fuzzing connection: counts frames that came back (by their headers)."""

    def __init__(self, server: tuple[str, int], tls: ssl.SSLContext | None) -> None:
        self.sock = stream_socket(server, tls, timeout=5.0)
        self.sock.settimeout(2.0)
        self.alive = True
        self.buffer = b""

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except (OSError, ValueError):
            self.alive = False
        return self.alive

    def drain(self) -> int:
        """Answers already waiting, counted by frame (STUN length or ChannelData length)."""
        frames = 0
        while self.alive:
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
            if not pending and not select.select([self.sock], [], [], 0)[0]:
                break
            try:
                data = self.sock.recv(RECV)
            except (OSError, ValueError):
                data = b""
            if not data:
                self.alive = False
                break
            self.buffer += data
            frames += self._frames()
        return frames

    def _frames(self) -> int:
        count = 0
        while len(self.buffer) >= 4:
            length = int.from_bytes(self.buffer[2:4], "big")
            size = 20 + length if self.buffer[0] >> 6 == 0 else 4 + ((length + 3) & ~3)
            if len(self.buffer) < size:
                break
            self.buffer = self.buffer[size:]
            count += 1
        return count

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


def blast_stream(
    server: tuple[str, int],
    tls: ssl.SSLContext | None,
    source: Callable[[], bytes],
    rng: random.Random,
    *,
    count: int,
    rate: float,
    deadline: float,
    connections: int = 4,
    breakers: float = 0.02,
) -> Tally:
    """``count`` frames over ``connections`` TCP (or TLS) connections at ``rate`` per second;
    a burst ends with a framing breaker with probability ``breakers``."""
    tally = Tally()
    streams: list[_Stream | None] = [None] * connections
    pacer = Pacer(rate)
    started = time.monotonic()
    try:
        while tally.sent < count and time.monotonic() < deadline:
            i = rng.randrange(connections)
            stream = streams[i] = _usable(streams[i], server, tls, tally)
            if stream is None:
                time.sleep(0.05)
                continue
            frames = [reframe(source()) for _ in range(min(BURST, count - tally.sent))]
            if rng.random() < breakers:
                frames.append(framing_breaker(rng))
            _send_cut(stream, b"".join(frames), rng)
            if stream.alive:
                tally.sent += len(frames)
            tally.responses += sum(each.drain() for each in streams if each is not None)
            pacer.wait(len(frames))
        time.sleep(0.3)
        tally.responses += sum(each.drain() for each in streams if each is not None)
    finally:
        for each in streams:
            if each is not None:
                each.close()
    tally.seconds = time.monotonic() - started
    return tally


def _usable(
    stream: _Stream | None, server: tuple[str, int], tls: ssl.SSLContext | None, tally: Tally
) -> _Stream | None:
    """``stream`` if it is still open, else a new connection (None if that failed)."""
    if stream is not None and stream.alive:
        return stream
    if stream is not None:
        tally.closed_by_server += 1
        stream.close()
    return _open(server, tls, tally)


def _send_cut(stream: _Stream, blob: bytes, rng: random.Random) -> None:
    """``blob`` in up to four pieces cut at random offsets."""
    cuts = sorted(rng.sample(range(1, len(blob)), min(3, len(blob) - 1))) if len(blob) > 1 else []
    start = 0
    for cut in [*cuts, len(blob)]:
        if not stream.send(blob[start:cut]):
            return
        start = cut


def _open(server: tuple[str, int], tls: ssl.SSLContext | None, tally: Tally) -> _Stream | None:
    try:
        stream = _Stream(server, tls)
    except (OSError, ssl.SSLError):
        tally.refused += 1
        return None
    tally.connections += 1
    return stream


def blast_wss(
    url: str,
    tls: ssl.SSLContext,
    source: Callable[[], str | bytes],
    *,
    count: int,
    rate: float,
    deadline: float,
) -> Tally:
    """``count`` frames through real WebSocket connections at ``rate`` per second; the close
    codes of connections the server ended are counted in ``closes``."""
    tally = Tally()
    pacer = Pacer(rate)
    started = time.monotonic()
    while tally.sent < count and time.monotonic() < deadline:
        largest = 0
        try:
            with connect(url, ssl=tls, open_timeout=5, close_timeout=1, max_size=2**22) as ws:
                tally.connections += 1
                while tally.sent < count and time.monotonic() < deadline:
                    burst = min(8, count - tally.sent)
                    for _ in range(burst):
                        frame = source()
                        largest = max(largest, len(frame))
                        ws.send(frame)
                        tally.sent += 1
                    tally.responses += _drain_ws(ws)
                    pacer.wait(burst)
                time.sleep(0.2)
                tally.responses += _drain_ws(ws)
        except ConnectionClosed as exc:
            tally.closed_by_server += 1
            if exc.rcvd is not None:
                code = str(exc.rcvd.code)
            elif largest > OVERSIZED:
                # The server answered a frame over its hard limit with 1009 and closed; this
                # client kept sending, so the reset took the close frame with it.
                code = "none (1006) after an oversized frame"
            else:
                code = "none (1006)"
            tally.closes[code] = tally.closes.get(code, 0) + 1
        except (OSError, InvalidHandshake, TimeoutError):
            tally.refused += 1
            time.sleep(0.1)
    tally.seconds = time.monotonic() - started
    return tally


def _drain_ws(ws: ClientConnection) -> int:
    got = 0
    while True:
        try:
            ws.recv(timeout=0)
        except TimeoutError:
            return got
        got += 1
