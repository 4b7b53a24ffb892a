"""secureconnect.transport.listeners: bind errors that name every address that failed, and
all-or-nothing binding (real sockets on loopback)."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
import trio.testing

from secureconnect.transport import (
    BindError,
    ListeningSockets,
    StreamAcceptor,
    StreamCounters,
    open_tcp_listeners,
)

UNASSIGNED = "192.0.2.1"  # TEST-NET-1 (RFC 5737): on no interface of the test machine


def squat_tcp(ip: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((ip, 0))
    sock.listen()
    return sock


async def test_a_tcp_bind_error_names_every_address_that_failed() -> None:
    with squat_tcp() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(BindError) as failed:
            await open_tcp_listeners(["127.0.0.1", "127.0.0.3", UNASSIGNED], port)
    message = str(failed.value.strerror)
    assert message.startswith(f"cannot listen on tcp 127.0.0.1:{port}: ")
    assert f"cannot listen on tcp {UNASSIGNED}:{port}: " in message
    assert "127.0.0.3" not in message  # that one was bound (and closed again)
    assert failed.value.errno == errno.EADDRINUSE  # the first failure's
    # all or nothing: 127.0.0.3 was closed again
    listeners = await open_tcp_listeners(["127.0.0.3"], port)
    for listener in listeners:
        await listener.aclose()


async def test_a_single_failure_is_raised_as_it_is() -> None:
    with squat_tcp() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(BindError) as failed:
            await open_tcp_listeners(["127.0.0.1"], port)
    cause = failed.value.__cause__
    assert isinstance(cause, OSError)
    assert failed.value.strerror == f"cannot listen on tcp 127.0.0.1:{port}: {cause.strerror}"


async def test_listening_sockets_name_every_udp_and_tcp_failure_and_close_the_rest() -> None:
    async def handler(*_: object) -> None:
        raise AssertionError("no connection expected")

    with (
        squat_tcp() as taken_tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken_udp,
    ):
        taken_udp.bind(("127.0.0.1", 0))
        udp_port, tcp_port = taken_udp.getsockname()[1], taken_tcp.getsockname()[1]
        acceptor = StreamAcceptor(handler)
        with pytest.raises(BindError) as failed:
            await ListeningSockets.open(
                acceptor,
                udp=[("127.0.0.3", 0), ("127.0.0.1", udp_port)],
                addresses=["127.0.0.1"],
                tcp_port=tcp_port,
                tls_port=None,
            )
    assert str(failed.value.strerror).split("; ") == [
        f"cannot bind udp 127.0.0.1:{udp_port}: Address already in use",
        f"cannot listen on tcp 127.0.0.1:{tcp_port}: Address already in use",
    ]


async def test_refusals_at_accept_are_counted_by_cap_per_transport() -> None:
    """The caps of StreamAcceptor: max_connections per transport, max_per_ip per address."""
    release = trio.Event()

    async def handler(*_: object) -> None:
        await release.wait()

    acceptor = StreamAcceptor(handler, max_connections=3, max_per_ip=2)
    listeners = await open_tcp_listeners(["127.0.0.1"], 0)
    port = listeners[0].socket.getsockname()[1]
    clients: list[trio.SocketStream] = []
    async with trio.open_nursery() as nursery:
        # the handlers run beside the accept loop
        nursery.start_soon(acceptor.accept_loop, listeners[0], False, nursery)
        for source in ("127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.3"):
            sock = trio.socket.socket()
            await sock.bind((source, 0))
            await sock.connect(("127.0.0.1", port))
            clients.append(trio.SocketStream(sock))
            await trio.testing.wait_all_tasks_blocked()
        counters = acceptor.counters
        assert (counters.accepted, counters.open) == (3, 3)
        assert counters.refused == {"over_cap": 1, "per_ip": 1}
        assert counters.samples("x")["x_refused_per_ip_total"] == 1
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert counters.open == 0
        nursery.cancel_scope.cancel()
    for client in clients:
        await client.aclose()
    for listener in listeners:
        await listener.aclose()


def test_stream_counters_samples_keep_the_metric_names() -> None:
    counters = StreamCounters()
    assert sorted(counters.samples("stun_stream")) == [
        "stun_stream_accepted_total",
        "stun_stream_connections",
        "stun_stream_framing_errors_total",
        "stun_stream_handler_failures_total",
        "stun_stream_handshake_failed_total",
        "stun_stream_idle_closed_total",
        "stun_stream_refused_over_cap_total",
        "stun_stream_refused_per_ip_total",
    ]
