"""The load of the resource soak (``bench/soak.py``): TURN allocation cycles and signaling pairs.

What: :class:`Churn` runs allocation cycles on WORKERS threads (socket calls release the GIL),
each a real client (:class:`attacker.WireClient`) on its own 5-tuple: Allocate, two datagrams to
:class:`EchoPeer` and back through a channel or a permission, Refresh, then Refresh 0, closing
the TCP connection, or leaving the allocation to expire (its client socket is kept until then).
:func:`signal_round` runs pairs of WSS clients (websockets' asyncio client), PAIRS at a time:
join, one ``signal``, ``leave`` (or not), close. Both count what happened by outcome, never
raise for one failed cycle, and spread clients over loopback source addresses.

Why a module of its own: the soak's driver (rounds, /proc figures, verdicts, report) stays
readable, and each side stays under 600 lines. Bounded: UDP requests are resent at most TRIES
times RETRANSMIT s apart; every TCP and WebSocket step has STEP seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import common  # noqa: F401 - first: it puts tests/support on sys.path
from attacker import UDP_TRANSPORT, WireClient, error_code
from signal_peers import Appliance
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from secureconnect.netaddr import Address
from secureconnect.stun import AttrType, MessageClass, Method, StunMessage

A = AttrType
WORKERS = 32  # allocation cycles in flight
PAIRS = 32  # signaling pairs in flight
LIFETIME = 4  # what Refresh asks for: the soak's turn.max_lifetime (seconds)
TURN_SOURCES = tuple(f"127.0.2.{n}" for n in range(1, 101))
SIGNAL_SOURCES = tuple(f"127.0.3.{n}" for n in range(1, 65))
USERS = 2000
TCP_EVERY = 20  # one allocation in 20 over TCP
RETRANSMIT, TRIES = 0.5, 4  # UDP requests: seconds before a resend, sends in all
STEP = 10.0  # seconds for any one TCP or WebSocket step


class SoakError(RuntimeError):
    """The soak could not go on, or one cycle failed (its message says how)."""


# -- (a) TURN allocation churn ---------------------------------------------------------------------


class EchoPeer:
    """A UDP socket on 127.0.0.1 that sends every datagram back where it came from (a relay)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address: Address = self.sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-echo", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65536)
                self.sock.sendto(data, source)
            except OSError:  # a timeout (to look at _stop), or an ICMP error from a gone relay
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class Churn:
    """Runs allocation cycles ``first`` .. ``first + count - 1`` on WORKERS threads."""

    def __init__(self, port: int, peer: Address, first: int, count: int) -> None:
        self.port, self.peer = port, peer
        self.jobs = itertools.count(first)
        self.end = first + count
        self.outcomes: Counter[str] = Counter()
        self.nonces: dict[str, bytes] = {}  # per source address: nonces name the client IP
        self.lingering: deque[tuple[float, WireClient]] = deque()  # left to expire
        self._lock = threading.Lock()

    def run(self) -> float:
        """Run every cycle; the seconds it took."""
        started = time.monotonic()
        threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.monotonic() - started

    def close_lingering(self, everything: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            while self.lingering and (everything or self.lingering[0][0] <= now):
                self.lingering.popleft()[1].close()

    def _worker(self) -> None:
        while (index := next(self.jobs)) < self.end:
            try:
                outcome = self._cycle(index)
            except SoakError as exc:
                outcome = f"failed: {exc}"
            except Exception as exc:  # counted: one failed cycle must not end its worker
                outcome = f"failed: {type(exc).__name__}"
            self.count(outcome)
            self.close_lingering()

    def _cycle(self, index: int) -> str:
        udp = index % TCP_EVERY != 0
        source = TURN_SOURCES[index % len(TURN_SOURCES)]
        client = WireClient(
            "udp" if udp else "tcp",
            self.port,
            user=f"soak{index % USERS}",
            ttl=3600,
            source_ip=source,
            timeout=RETRANSMIT if udp else STEP,
        )
        keep = False
        try:
            client.nonce = self.nonces.get(source, b"")
            if not client.nonce:
                self._challenge(client)
            expect(self._ask(client, client.allocate_bytes), "allocate")
            self._use(client, index)
            refreshed = expect(self._ask(client, lambda: client.refresh_bytes(LIFETIME)), "refresh")
            granted = refreshed.get(A.LIFETIME)
            if granted is None or int.from_bytes(granted, "big") != LIFETIME:
                raise SoakError(f"refresh granted {granted!r}")
            if udp and index % 4 == 3:
                keep = True
                with self._lock:  # expired by then: the server's tick is 1 s
                    self.lingering.append((time.monotonic() + LIFETIME + 3, client))
                return "udp: left to expire"
            if not udp and index % (4 * TCP_EVERY) == 0:
                return "tcp: ended by closing the connection"
            deleted = self._ask(client, lambda: client.refresh_bytes(0))
            if error_code(deleted) not in (None, 437):  # 437: a retransmission after the delete
                raise SoakError(f"refresh 0: {error_code(deleted)}")
            return f"{client.transport}: deleted (Refresh 0)"
        finally:
            if not keep:
                client.close()

    def _use(self, client: WireClient, index: int) -> None:
        """Two datagrams to the echo peer and back, by channel or by permission."""
        channel = index % 2 == 0
        if channel:
            expect(self._ask(client, lambda: client.channel_bind_bytes(0x4000, self.peer)), "bind")
        else:
            expect(self._ask(client, lambda: client.permission_bytes(self.peer)), "permission")
        for n in range(2):
            payload = f"soak {index} {n}".encode()
            if channel:
                client.send_raw(client.channel_data(0x4000, payload))
            else:
                client.send_raw(client.send_bytes(self.peer, payload))
            self.count("datagrams sent")
            if self._echoed(client, payload):
                self.count("datagrams echoed")

    def count(self, key: str) -> None:
        with self._lock:
            self.outcomes[key] += 1

    @staticmethod
    def _echoed(client: WireClient, payload: bytes) -> bool:
        """Wait (RETRANSMIT s per read) for ``payload`` to come back as ChannelData or Data."""
        client.sock.settimeout(RETRANSMIT * 2)
        try:
            while True:
                try:
                    frame = client.receive()
                except TimeoutError:
                    return False
                if frame[0] >> 6 == 1:
                    size = int.from_bytes(frame[2:4], "big")
                    if frame[4 : 4 + size] == payload:
                        return True
                elif payload in frame:  # a Data indication carrying it
                    return True
        finally:
            client.sock.settimeout(client.timeout)

    def _challenge(self, client: WireClient) -> None:
        """An unauthenticated Allocate: the 401 brings the nonce for this source address."""
        request = client.build(
            Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, UDP_TRANSPORT)], authenticate=False
        )
        reply = self._exchange(client, request)
        nonce = reply.get(A.NONCE)
        if nonce is None:
            raise SoakError(f"no nonce in {reply}")
        client.nonce = self.nonces[client.source_ip] = nonce

    def _ask(self, client: WireClient, build: Callable[[], bytes]) -> StunMessage:
        """Send a request (resent as is over UDP) until answered; a 438 or a 401 with a fresh
        nonce is followed once with the request rebuilt."""
        for _ in range(2):
            reply = self._exchange(client, build())
            nonce = reply.get(A.NONCE)
            if error_code(reply) in (401, 438) and nonce is not None and nonce != client.nonce:
                client.nonce = self.nonces[client.source_ip] = nonce
                self.count(f"nonce renewed ({error_code(reply)})")
                continue
            return reply
        return reply

    @staticmethod
    def _exchange(client: WireClient, request: bytes) -> StunMessage:
        tid = request[8:20]
        for _ in range(TRIES if client.transport == "udp" else 1):
            client.send_raw(request)
            try:
                while True:
                    reply = client.receive_message()
                    if reply.transaction_id == tid and reply.cls is not MessageClass.INDICATION:
                        return reply
            except TimeoutError:
                continue
        raise SoakError(f"no answer to a request of type 0x{request[0]:02x}{request[1]:02x}")


def expect(reply: StunMessage, what: str) -> StunMessage:
    code = error_code(reply)
    if code is not None:
        raise SoakError(f"{what} {code}")
    return reply


# -- (b) signaling connections ---------------------------------------------------------------------


async def signal_round(app: Appliance, first: int, pairs: int) -> Counter[str]:
    """``pairs`` pairs (PAIRS at a time): join, one signal, leave (or not), close."""
    gate = asyncio.Semaphore(PAIRS)
    outcomes: Counter[str] = Counter()

    async def dial(n: int) -> ClientConnection:
        source = SIGNAL_SOURCES[n % len(SIGNAL_SOURCES)]
        return await ws_connect(
            app.ws_url,
            ssl=app.ssl,
            proxy=None,
            compression=None,
            open_timeout=STEP,
            ping_interval=None,
            local_addr=(source, 0),
        )

    async def until(ws: ClientConnection, kind: str) -> dict[str, object]:
        while True:
            message: dict[str, object] = json.loads(await ws.recv())
            if message["type"] == kind:
                return message
            if message["type"] == "error":
                raise SoakError(f"error message: {message}")

    async def pair(n: int) -> None:
        async with gate:
            opened: list[ClientConnection] = []
            try:
                async with asyncio.timeout(3 * STEP):
                    for side in (2 * n, 2 * n + 1):
                        opened.append(await dial(side))
                    room = f"soak-{n}"
                    for ws in opened:
                        await ws.send(json.dumps({"type": "join", "room": room}))
                        welcome = await until(ws, "welcome")
                    await until(opened[0], "peer-joined")
                    data = {"type": "signal", "to": welcome["peer"], "data": {"n": n}}
                    await opened[0].send(json.dumps(data))
                    await until(opened[1], "signal")
                    if n % 10 != 9:  # one pair in ten just goes (its sessions wait for resume)
                        for ws in opened:
                            await ws.send(json.dumps({"type": "leave"}))
                    for ws in opened:
                        await ws.close()
                outcomes["connections"] += 2
            except (OSError, TimeoutError, SoakError, ValueError, WebSocketException) as exc:
                outcomes[f"failed: {type(exc).__name__}"] += 1
            finally:
                for ws in opened:
                    ws.transport.abort()

    await asyncio.gather(*(pair(n) for n in range(first, first + pairs)))
    return outcomes
