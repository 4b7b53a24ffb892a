"""The TURN component's trio I/O on real loopback sockets: UDP, TCP and TLS clients, relay
sockets, the fast path both ways, and cleanup when a connection or the server ends."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trustme
from loopback_stun import server_context
from turn_core_driver import settings

from secureconnect.credentials import CredentialMinter, NonceMint, rest_password
from secureconnect.netaddr import Address
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StreamFramer,
    StunMessage,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_xor_address,
    long_term_key,
    new_transaction_id,
)
from secureconnect.turn.allocation import Traffic
from secureconnect.turn.auth import Authenticator
from secureconnect.turn.core import TurnCore
from secureconnect.turn.peerpolicy import LOOPBACK_RANGES, PeerPolicy
from secureconnect.turn.serve import CoreParts, StreamOutbox, TurnEndpoints, TurnServer

A = AttrType
SECRET = "io-secret"
REALM = "io.test"


@asynccontextmanager
async def running_turn(ca: trustme.CA | None = None) -> AsyncIterator[TurnServer]:
    """A TurnServer on 127.0.0.1 ephemeral ports, loopback peers allowed."""
    parts = CoreParts(
        settings(relay_ipv4="127.0.0.1", relay_ipv6=None),
        auth=Authenticator(
            realm=REALM, minter=CredentialMinter((SECRET,)), nonces=NonceMint.random()
        ),
        peers=PeerPolicy(allow=LOOPBACK_RANGES),
    )
    context = server_context(ca) if ca else None
    server = TurnServer(
        parts,
        TurnEndpoints(addresses=("127.0.0.1",), port=0, tls_port=0 if ca else None),
        tls_context=(lambda: context) if context else None,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


def core_of(server: TurnServer) -> TurnCore:
    """The running server's core (built once its sockets are bound)."""
    assert server.core is not None
    return server.core


def bound(server: TurnServer, transport: str) -> Address:
    for kind, ip, port in server.bound:
        if kind == transport:
            return ip, port
    raise AssertionError(f"no {transport} socket")


class WireClient:
    """A TURN client over any transport: builds requests, learns the nonce, decodes answers."""

    def __init__(self, send: object, receive: object) -> None:
        self.send = send
        self.receive = receive
        self.username = f"{int(time.time()) + 600}:io"
        self.key = long_term_key(self.username, REALM, rest_password(SECRET, self.username))
        self.nonce = b""

    async def request(self, method: int, attributes: list[tuple[int, bytes]]) -> StunMessage:
        for _ in range(2):
            tid = new_transaction_id()
            attrs = [*attributes]
            if self.nonce:
                attrs += [
                    (A.USERNAME, self.username.encode()),
                    (A.REALM, REALM.encode()),
                    (A.NONCE, self.nonce),
                ]
            key = self.key if self.nonce else None
            await self.send(
                encode_message(method, MessageClass.REQUEST, tid, attrs, integrity_key=key)
            )  # type: ignore[operator]
            response = decode_message_untrusted(await self.receive())  # type: ignore[operator]
            nonce = response.get(A.NONCE)
            if response.cls is MessageClass.ERROR and nonce is not None and not self.nonce:
                self.nonce = nonce
                continue
            return response
        raise AssertionError("no answer after the challenge")

    async def allocate(self) -> Address:
        response = await self.request(
            Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0)))]
        )
        assert response.cls is MessageClass.SUCCESS, response
        value = response.get(A.XOR_RELAYED_ADDRESS)
        assert value is not None
        return decode_xor_address_untrusted(value, response.transaction_id)

    async def channel_bind(self, number: int, peer: Address) -> None:
        tid_free = encode_xor_address(peer[0], peer[1], bytes(12))  # IPv4 XOR ignores the id
        response = await self.request(
            Method.CHANNEL_BIND,
            [
                (A.CHANNEL_NUMBER, number.to_bytes(2, "big") + b"\0\0"),
                (A.XOR_PEER_ADDRESS, tid_free),
            ],
        )
        assert response.cls is MessageClass.SUCCESS, response


async def udp_client(server: TurnServer) -> tuple[WireClient, trio.socket.SocketType]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.connect(bound(server, "udp"))

    async def receive() -> bytes:
        with trio.fail_after(5):
            return await sock.recv(65536)

    return WireClient(sock.send, receive), sock


def stream_client(stream: trio.abc.Stream) -> tuple[WireClient, Callable[[], Awaitable[bytes]]]:
    """A WireClient over a TCP/TLS stream, and its frame reader (STUN or ChannelData)."""
    framer = StreamFramer()

    async def receive() -> bytes:
        with trio.fail_after(5):
            while (frame := framer.next_frame()) is None:
                framer.feed(await stream.receive_some(65536))
        return frame

    return WireClient(stream.send_all, receive), receive


async def peer_socket(ip: str = "127.0.0.1") -> tuple[trio.socket.SocketType, Address]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((ip, 0))
    return sock, sock.getsockname()


async def test_udp_client_relays_both_ways_over_a_channel() -> None:
    async with running_turn() as server:
        client, sock = await udp_client(server)
        relayed = await client.allocate()
        assert relayed[0] == "127.0.0.1"
        peer, peer_address = await peer_socket()
        await client.channel_bind(0x4001, peer_address)
        await sock.send(b"\x40\x01\x00\x05hello\x00\x00\x00")
        with trio.fail_after(5):
            data, source = await peer.recvfrom(2048)
        assert (data, source) == (b"hello", relayed)
        await peer.sendto(b"back", relayed)
        with trio.fail_after(5):
            assert await sock.recv(2048) == b"\x40\x01\x00\x04back"
        counters = server.udp.relay_counters()
        assert (counters.to_peer_packets, counters.to_client_packets) == (1, 1)


async def test_peer_without_permission_is_dropped_and_send_indication_works() -> None:
    async with running_turn() as server:
        client, sock = await udp_client(server)
        relayed = await client.allocate()
        peer, peer_address = await peer_socket()
        # Permissions are per IP address (RFC 8656 §9), so the stranger needs another one: a
        # datagram from the peer's IP still in flight when CreatePermission lands is relayed.
        stranger, _ = await peer_socket("127.0.0.2")
        await stranger.sendto(b"spam", relayed)
        tid = new_transaction_id()
        send = encode_message(
            Method.SEND,
            MessageClass.INDICATION,
            tid,
            [(A.XOR_PEER_ADDRESS, encode_xor_address(*peer_address, tid)), (A.DATA, b"ping")],
        )
        await sock.send(send)  # no permission yet: dropped
        await client.request(
            Method.CREATE_PERMISSION,
            [(A.XOR_PEER_ADDRESS, encode_xor_address(*peer_address, bytes(12)))],
        )
        await sock.send(send)
        with trio.fail_after(5):
            assert await peer.recv(2048) == b"ping"
        await peer.sendto(b"pong", relayed)
        with trio.fail_after(5):
            msg = decode_message_untrusted(await sock.recv(2048))
        assert msg.method == Method.DATA
        assert msg.get(A.DATA) == b"pong"
        relay = server.udp.relay_counters()
        # The stranger's datagram and the early Send indication were both dropped.
        assert relay.dropped_no_permission == 2


async def test_the_relay_never_reaches_the_servers_own_listener() -> None:
    """TURN-in-TURN through the real sockets: with loopback peers allowed, the server's own UDP
    listener is still refused (ChannelBind 403; a Send is dropped and counted), while another
    allocation's relayed address on the same server stays reachable."""
    async with running_turn() as server:
        listener = bound(server, "udp")
        client, sock = await udp_client(server)
        await client.allocate()
        response = await client.request(
            Method.CHANNEL_BIND,
            [
                (A.CHANNEL_NUMBER, b"\x40\x00\0\0"),
                (A.XOR_PEER_ADDRESS, encode_xor_address(*listener, bytes(12))),
            ],
        )
        assert response.cls is MessageClass.ERROR
        error = response.get(A.ERROR_CODE)
        assert error is not None
        assert error[2] * 100 + error[3] == 403
        await client.request(
            Method.CREATE_PERMISSION,
            [(A.XOR_PEER_ADDRESS, encode_xor_address(*listener, bytes(12)))],
        )
        tid = new_transaction_id()
        peer_attr = encode_xor_address(*listener, tid)
        attrs = [(A.XOR_PEER_ADDRESS, peer_attr), (A.DATA, b"loop")]
        await sock.send(encode_message(Method.SEND, MessageClass.INDICATION, tid, attrs))
        other, _ = await udp_client(server)
        other_relayed = await other.allocate()
        # Relay to relay is allowed; this request follows the Send on the same socket, so the
        # Send has been handled by the time it is answered.
        await client.channel_bind(0x4001, other_relayed)
        assert server.udp.relay_counters().dropped_own_port == 1
        assert server.udp.relay_counters().to_peer_packets == 0


async def test_tcp_allocation_ends_with_its_connection() -> None:
    async with running_turn() as server:
        stream = await trio.open_tcp_stream(*bound(server, "tcp"))
        client, receive = stream_client(stream)
        relayed = await client.allocate()
        peer, peer_address = await peer_socket()
        await client.channel_bind(0x4002, peer_address)
        await stream.send_all(b"\x40\x02\x00\x03abc\x00")  # padded on streams
        with trio.fail_after(5):
            assert await peer.recv(2048) == b"abc"
        await peer.sendto(b"xyz12", relayed)
        assert await receive() == b"\x40\x02\x00\x05xyz12\x00\x00\x00"
        assert len(core_of(server).table) == 1
        await stream.aclose()
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert len(core_of(server).table) == 0
        # The relay port is free again: its socket was closed.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(relayed)
        probe.close()


async def test_tls_client_allocates_and_binding_is_answered() -> None:
    ca = trustme.CA()
    async with running_turn(ca) as server:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        raw = await trio.open_tcp_stream(*bound(server, "tls"))
        stream = trio.SSLStream(raw, context, server_hostname="localhost")
        client, _ = stream_client(stream)
        relayed = await client.allocate()
        assert relayed[0] == "127.0.0.1"
        await stream.aclose()
        _, sock = await udp_client(server)
        await sock.send(encode_message(Method.BINDING, MessageClass.REQUEST, new_transaction_id()))
        with trio.fail_after(5):
            answer = decode_message_untrusted(await sock.recv(2048))
        assert answer.cls is MessageClass.SUCCESS


async def test_stopping_the_server_closes_relay_sockets() -> None:
    async with running_turn() as server:
        client, _ = await udp_client(server)
        relayed = await client.allocate()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(relayed)
    probe.close()


async def test_a_stream_client_sending_garbage_ends_only_its_own_connection() -> None:
    """The TCP handler runs a reader and a writer in a nursery, so its errors arrive wrapped in
    an ExceptionGroup; they must still end just that connection, not the component."""
    async with running_turn() as server:
        client, sock = await udp_client(server)
        relayed = await client.allocate()
        garbage = await trio.open_tcp_stream(*bound(server, "tcp"))
        await garbage.send_all(b"\xff" * 64)
        with trio.fail_after(5):
            assert await garbage.receive_some(16) == b""  # closed by the server
        reset = await trio.open_tcp_stream(*bound(server, "tcp"))
        reset.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        await reset.aclose()  # RST
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert server.stream_counters.framing_errors == 1
        assert server.stream_counters.handler_failures == 0
        # The UDP client's allocation is untouched and the server still answers.
        assert core_of(server).table.get(("udp", sock.getsockname(), bound(server, "udp")))
        peer, peer_address = await peer_socket()
        await client.channel_bind(0x4003, peer_address)
        await peer.sendto(b"still here", relayed)
        with trio.fail_after(5):
            assert await sock.recv(2048) == b"\x40\x03\x00\x0astill here"  # UDP: unpadded


async def test_stream_outbox_is_bounded_in_bytes_and_batches_writes() -> None:
    """A TCP/TLS client that does not read gets at most STREAM_QUEUE_BYTES queued; what is
    queued goes out in one write, and the budget frees up once written."""
    outbox = StreamOutbox(limit=1000)
    assert outbox.put(bytes(600))
    assert not outbox.put(bytes(600))  # would exceed 1000 bytes: dropped, nothing queued
    assert outbox.put(bytes(400))
    sent: list[bytes] = []

    class Sink(trio.abc.SendStream):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            sent.append(bytes(data))

        async def wait_send_all_might_not_block(self) -> None:
            return None

        async def aclose(self) -> None:
            return None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.write_to, Sink())  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [len(chunk) for chunk in sent] == [1000]
    assert outbox.queued == 0
    assert outbox.put(bytes(1000))


async def test_trio_keeps_running_while_the_data_plane_holds_the_lock() -> None:
    """Trio's thread never blocks on the lock it shares with the data-plane thread (issue #13,
    item 3): in the all-in-one process it also serves signaling and STUN. A TCP client's request
    waits while another thread holds the lock; trio's timers keep firing meanwhile, and the
    request is answered once the lock is free."""
    async with running_turn() as server:
        stream = await trio.open_tcp_stream(*bound(server, "tcp"))
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with server.lock:
                holding.set()
                release.wait(10)  # until the checks below are done (a blocked trio: 10 s)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert holding.wait(5)
            request = encode_message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
            await stream.send_all(request)
            gaps = []
            for _ in range(10):  # the request reaches the server, which waits for the lock
                start = time.monotonic()
                await trio.sleep(0.02)
                gaps.append(time.monotonic() - start)
            assert max(gaps) < 2.0, gaps  # blocked on the lock, one would last 10 s
            assert holder.is_alive()  # all of that while the lock was held
            release.set()
            with trio.fail_after(5):
                answer = decode_message_untrusted(await stream.receive_some(2048))
            assert answer.cls is MessageClass.SUCCESS
        finally:
            release.set()
            await trio.to_thread.run_sync(holder.join)
            await stream.aclose()


async def test_each_allocation_counts_its_traffic_and_its_end_is_logged_with_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Per-allocation counters on the active fast path (compiled, or the Python twin with
    SECURECONNECT_NO_EXTENSIONS) and on the TCP path, read without touching a datagram; the
    allocation-ended line carries them."""
    caplog.set_level(logging.INFO, logger="secureconnect.turn")
    async with running_turn() as server:
        client, sock = await udp_client(server)
        relayed = await client.allocate()
        peer, peer_address = await peer_socket()
        await client.channel_bind(0x4001, peer_address)
        for payload in (b"hello", b"hi"):
            await sock.send(b"\x40\x01" + len(payload).to_bytes(2, "big") + payload)
            with trio.fail_after(5):
                await peer.recv(2048)
        await peer.sendto(b"back", relayed)
        with trio.fail_after(5):
            await sock.recv(2048)
        [allocation] = list(core_of(server).table)
        assert allocation.traffic() == Traffic(2, 7, 1, 4)
        samples = server.metrics()
        assert samples['turn_user_relayed_bytes_total{user="io",direction="to_peer"}'] == 7
        stream = await trio.open_tcp_stream(*bound(server, "tcp"))
        tcp, receive = stream_client(stream)
        tcp_relayed = await tcp.allocate()
        await tcp.channel_bind(0x4002, peer_address)
        await peer.sendto(b"xyz", tcp_relayed)
        assert await receive() == b"\x40\x02\x00\x03xyz\x00"
        response = await client.request(Method.REFRESH, [(A.LIFETIME, bytes(4))])
        assert response.cls is MessageClass.SUCCESS
        await stream.aclose()
        with trio.fail_after(5):  # the server reads the EOF when the kernel hands it over
            while len(core_of(server).table):  # noqa: ASYNC110 - the core has no event
                await trio.sleep(0.01)
    records = [r for r in caplog.records if r.getMessage() == "allocation-ended"]
    ended = [r.__dict__["sc_fields"] for r in records]
    assert [(e["transport"], e["reason"]) for e in ended] == [
        ("udp", "deleted"),
        ("tcp", "connection_closed"),
    ]
    assert [
        (e["to_peer_packets"], e["to_peer_bytes"], e["to_client_packets"], e["to_client_bytes"])
        for e in ended
    ] == [(2, 7, 1, 4), (0, 0, 1, 3)]
    assert ended[0]["relayed"] == f"{relayed[0]}:{relayed[1]}"
    assert ended[0]["user"] == "io"
