"""The STUN server on real loopback sockets: UDP (IPv4/IPv6), TCP, TLS, limits and timeouts.

The client side here is our own codec driving plain sockets; the interop tests next to this file
use clients nobody here wrote (pystun3, aioice, coturn's turnutils_stunclient).
"""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trio.testing
import trustme
from loopback_stun import bound, free_port_pair, running_stun, server_context

from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    decode_address_untrusted,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    new_transaction_id,
)
from secureconnect.stun.serve import StunServer


def binding_request(
    *, fingerprint: bool = False, extra: tuple[tuple[int, bytes], ...] = ()
) -> tuple[bytes, bytes]:
    tid = new_transaction_id()
    return tid, encode_message(
        Method.BINDING, MessageClass.REQUEST, tid, extra, fingerprint=fingerprint
    )


async def udp_exchange(
    target: tuple[str, int], data: bytes, *, source_ip: str | None = None
) -> tuple[bytes, tuple[str, int], tuple[str, int]]:
    """Send one datagram, return (reply, reply's source, our own address)."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.bind((source_ip or ("::1" if family == socket.AF_INET6 else "127.0.0.1"), 0))
        await sock.sendto(data, target)
        with trio.fail_after(5):
            reply, origin = await sock.recvfrom(2048)
        mine = sock.getsockname()
    return reply, (origin[0], origin[1]), (mine[0], mine[1])


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
async def test_udp_binding_reports_our_address(ip: str) -> None:
    async with running_stun(addresses=(ip,)) as server:
        tid, request = binding_request()
        reply, _, mine = await udp_exchange(bound(server, "udp"), request)
    msg = decode_message_untrusted(reply)
    assert (msg.cls, msg.method, msg.transaction_id) == (MessageClass.SUCCESS, Method.BINDING, tid)
    xma = msg.get(AttrType.XOR_MAPPED_ADDRESS)
    assert xma is not None
    assert decode_xor_address_untrusted(xma, tid) == mine
    assert msg.get(AttrType.SOFTWARE) is None
    assert msg.get(AttrType.FINGERPRINT) is None
    assert server.counters.responses == 1


async def test_fingerprint_is_answered_when_asked() -> None:
    async with running_stun() as server:
        _, request = binding_request(fingerprint=True)
        reply, _, _ = await udp_exchange(bound(server, "udp"), request)
    assert decode_message_untrusted(reply).get(AttrType.FINGERPRINT) is not None


async def test_garbage_is_dropped_and_counted_and_the_server_keeps_answering() -> None:
    async with running_stun() as server:
        target = bound(server, "udp")
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", 0))
            for junk in (
                b"",
                b"\x00",
                b"GET / HTTP/1.1\r\n\r\n",
                b"\x40\x00\x00\x04abcd",
                bytes(19),
            ):
                await sock.sendto(junk, target)
        tid, request = binding_request()
        reply, _, _ = await udp_exchange(target, request)
    assert decode_message_untrusted(reply).transaction_id == tid
    assert server.counters.dropped_not_stun == 5


async def test_unknown_comprehension_required_attribute_gets_420() -> None:
    async with running_stun() as server:
        _, request = binding_request(extra=((0x7F01, b"\x00\x00\x00\x00"),))
        reply, _, _ = await udp_exchange(bound(server, "udp"), request)
    msg = decode_message_untrusted(reply)
    assert msg.cls == MessageClass.ERROR
    assert msg.get(AttrType.UNKNOWN_ATTRIBUTES) == b"\x7f\x01"


async def stream_exchange(stream: trio.abc.Stream, request: bytes) -> bytes:
    await stream.send_all(request)
    data = b""
    with trio.fail_after(5):
        while len(data) < 20 or len(data) < 20 + int.from_bytes(data[2:4], "big"):
            chunk = await stream.receive_some(2048)
            assert chunk, "server closed the connection"
            data += chunk
    return data


async def test_tcp_binding_answers_several_requests_on_one_connection() -> None:
    async with running_stun() as server:
        stream = await trio.open_tcp_stream(*bound(server, "tcp"))
        async with stream:
            mine = stream.socket.getsockname()
            for _ in range(3):
                tid, request = binding_request()
                msg = decode_message_untrusted(await stream_exchange(stream, request))
                xma = msg.get(AttrType.XOR_MAPPED_ADDRESS)
                assert xma is not None
                assert decode_xor_address_untrusted(xma, tid) == (mine[0], mine[1])
            # two requests in one segment, split oddly: the framer must cope
            (t1, r1), (t2, r2) = binding_request(), binding_request()
            await stream.send_all(r1 + r2[:7])
            await stream.send_all(r2[7:])
            replies = b""
            with trio.fail_after(5):
                while len(replies) < 2 * 32:
                    replies += await stream.receive_some(4096)
            assert decode_message_untrusted(replies[:32]).transaction_id == t1
            assert decode_message_untrusted(replies[32:]).transaction_id == t2


async def open_tls(
    server: StunServer, ca: trustme.CA
) -> tuple[trio.SocketStream, trio.SSLStream[trio.SocketStream]]:
    """A TLS client of ``server``'s TLS port trusting ``ca``: the TCP stream and the TLS one."""
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    tcp = await trio.open_tcp_stream(*bound(server, "tls"))
    return tcp, trio.SSLStream(tcp, client_context, server_hostname="localhost")


async def test_tls_binding_with_a_trustme_certificate() -> None:
    ca = trustme.CA()
    context = server_context(ca)
    async with running_stun(tls_context=lambda: context) as server:
        tcp, stream = await open_tls(server, ca)
        async with stream:
            tid, request = binding_request()
            msg = decode_message_untrusted(await stream_exchange(stream, request))
            xma = msg.get(AttrType.XOR_MAPPED_ADDRESS)
            assert xma is not None
            local = tcp.socket.getsockname()
            assert decode_xor_address_untrusted(xma, tid) == (local[0], local[1])


async def test_a_tls_client_leaving_without_close_notify_is_no_handshake_failure() -> None:
    """Found by the fuzzing campaign (issue #12): a client that completed its handshake, got
    its answer and dropped the TCP connection without close_notify was counted as a failed
    handshake."""
    ca = trustme.CA()
    context = server_context(ca)
    async with running_stun(tls_context=lambda: context) as server:
        tcp, stream = await open_tls(server, ca)
        _, request = binding_request()
        await stream_exchange(stream, request)
        await tcp.aclose()  # under the TLS layer: no close_notify
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked(0.05)  # the server has seen the EOF
        assert server.stream_counters.open == 0
    assert server.stream_counters.handshake_failed == 0


async def test_garbage_on_a_stream_closes_only_that_connection() -> None:
    async with running_stun() as server:
        target = bound(server, "tcp")
        bad = await trio.open_tcp_stream(*target)
        good = await trio.open_tcp_stream(*target)
        await bad.send_all(b"\xff" * 32)
        with trio.fail_after(5):
            assert await bad.receive_some(100) == b""
        _, request = binding_request()
        assert (
            decode_message_untrusted(await stream_exchange(good, request)).cls
            == MessageClass.SUCCESS
        )
        await good.aclose()
        await bad.aclose()
    assert server.stream_counters.framing_errors == 1


async def two_then_refused(
    target: tuple[str, int],
) -> tuple[trio.SocketStream, trio.SocketStream, trio.SocketStream]:
    """Open two connections, then a third that the server (capped at two) closes at once."""
    first = await trio.open_tcp_stream(*target)
    second = await trio.open_tcp_stream(*target)
    await trio.testing.wait_all_tasks_blocked()
    third = await trio.open_tcp_stream(*target)
    with trio.fail_after(5):
        assert await third.receive_some(100) == b""
    return first, second, third


async def test_connection_cap_closes_extra_connections_at_accept() -> None:
    async with running_stun(max_connections=2) as server:
        first, second, third = await two_then_refused(bound(server, "tcp"))
        _, request = binding_request()
        assert (
            decode_message_untrusted(await stream_exchange(first, request)).cls
            == MessageClass.SUCCESS
        )
        for stream in (first, second, third):
            await stream.aclose()
    assert server.stream_counters.refused_over_cap == 1


async def test_per_address_cap_leaves_room_for_other_clients() -> None:
    """One host may hold max_connections_per_ip connections; the next one from it is closed at
    accept, another address still gets in, and a closed connection frees its slot."""
    async with running_stun(max_connections_per_ip=2) as server:
        target = bound(server, "tcp")
        first, second, third = await two_then_refused(target)
        other = await trio.open_tcp_stream(*target, local_address="127.0.0.2")
        _, request = binding_request()
        reply = decode_message_untrusted(await stream_exchange(other, request))
        assert reply.cls == MessageClass.SUCCESS
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()  # the server has seen first's EOF
        assert server.stream_counters.open == 2  # first's slot is free again
        fourth = await trio.open_tcp_stream(*target)
        _, request = binding_request()
        reply = decode_message_untrusted(await stream_exchange(fourth, request))
        assert reply.cls == MessageClass.SUCCESS
        for stream in (second, third, other, fourth):
            await stream.aclose()
    assert server.stream_counters.refused_per_ip == 1
    assert server.stream_counters.refused_over_cap == 0


async def test_idle_and_handshake_timeouts(autojump_clock: trio.testing.MockClock) -> None:
    ca = trustme.CA()
    context = server_context(ca)
    async with running_stun(
        tls_context=lambda: context, idle_timeout=30.0, handshake_timeout=10.0
    ) as server:
        idle = await trio.open_tcp_stream(*bound(server, "tcp"))
        silent_tls = await trio.open_tcp_stream(*bound(server, "tls"))
        t0 = trio.current_time()
        assert await silent_tls.receive_some(100) == b""  # never sent a ClientHello
        assert 10 <= trio.current_time() - t0 < 11
        assert await idle.receive_some(100) == b""
        assert 30 <= trio.current_time() - t0 < 31
        await idle.aclose()
        await silent_tls.aclose()
    assert server.stream_counters.idle_closed == 1
    assert server.stream_counters.handshake_failed == 1


async def test_rfc5780_change_request_is_answered_from_the_other_address_and_port() -> None:
    port, alt_port = free_port_pair()
    async with running_stun(port=port, alternate=("127.0.0.2", alt_port)) as server:
        assert {(ip, p) for kind, ip, p in server.bound if kind == "udp"} == {
            ("127.0.0.1", port),
            ("127.0.0.1", alt_port),
            ("127.0.0.2", port),
            ("127.0.0.2", alt_port),
        }
        for flags, expected in [
            (b"\x00\x00\x00\x00", ("127.0.0.1", port)),
            (b"\x00\x00\x00\x02", ("127.0.0.1", alt_port)),
            (b"\x00\x00\x00\x04", ("127.0.0.2", port)),
            (b"\x00\x00\x00\x06", ("127.0.0.2", alt_port)),
        ]:
            _, request = binding_request(extra=((AttrType.CHANGE_REQUEST, flags),))
            reply, origin, _ = await udp_exchange(("127.0.0.1", port), request)
            msg = decode_message_untrusted(reply)
            assert origin == expected
            response_origin = msg.get(AttrType.RESPONSE_ORIGIN)
            other = msg.get(AttrType.OTHER_ADDRESS)
            assert response_origin is not None
            assert other is not None
            assert decode_address_untrusted(response_origin) == expected
            assert decode_address_untrusted(other) == ("127.0.0.2", alt_port)
