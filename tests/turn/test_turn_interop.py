"""The TURN relay against clients nobody here wrote: aioice and aiortc (turnutils_uclient has
test_turn_uclient.py).

Every test runs our server as a subprocess (``secureconnect run turn``) on loopback. Where the same
test code can drive Debian's coturn too, it is parametrized over both servers: a test that passes
against the reference implementation shows that it checks real behaviour, not our own reading of
the RFC. Only loopback is used; every client, event loop and subprocess runs under a timeout.

aioice and aiortc are asyncio libraries while pytest runs async tests under trio, so their tests
are plain functions that call ``asyncio.run`` with ``asyncio.wait_for`` bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import aioice
import pytest
import servers
from aioice import stun as aioice_stun
from aioice import turn as aioice_turn
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection
from servers import RELAY_PORTS, SERVERS, rest_credential, self_signed_context, turn_server

from secureconnect.credentials import rest_password
from secureconnect.stun import MessageClass, Method, encode_message, new_transaction_id

#: Bound for one whole asyncio scenario (server already running).
SCENARIO_TIMEOUT = 30.0
#: Bound for one step inside a scenario (a gather, a message, an ICE check list).
STEP_TIMEOUT = 10.0


def assert_relay_candidate(candidate: Any) -> None:
    assert candidate.type == "relay"
    assert candidate.host == "127.0.0.1"
    assert candidate.port in RELAY_PORTS


# --------------------------------------------------------------------------------------------
# 1. aioice: two ICE agents, relay candidates only, data through the relay
# --------------------------------------------------------------------------------------------


def ice_agent(
    target: servers.TurnTarget,
    *,
    controlling: bool,
    transport: str,
    username: str,
    password: str,
    tls: ssl.SSLContext | None = None,
) -> Any:
    port = target.tls_port if tls is not None else target.port
    assert port is not None
    return aioice.Connection(
        ice_controlling=controlling,
        turn_server=(target.host, port),
        turn_username=username,
        turn_password=password,
        # aioice hands turn_ssl to loop.create_connection(ssl=...), so a context works here and
        # the client verifies our certificate instead of skipping the check.
        turn_ssl=cast(Any, tls) if tls is not None else False,
        turn_transport=transport,
        transport_policy=aioice.TransportPolicy.RELAY,
        use_ipv6=False,
    )


async def why_no_allocation(
    target: servers.TurnTarget,
    username: str,
    password: str,
    transport: str,
    tls: ssl.SSLContext | None,
) -> str:
    """What a direct Allocate answers, for a failure message."""
    port = target.tls_port if tls is not None else target.port
    assert port is not None
    started = time.monotonic()
    try:
        relay, _ = await asyncio.wait_for(
            aioice_turn.create_turn_endpoint(
                asyncio.DatagramProtocol,
                server_addr=(target.host, port),
                username=username,
                password=password,
                ssl=tls,
                transport=transport,
            ),
            STEP_TIMEOUT,
        )
    except Exception as exc:  # any error is the diagnosis
        return f"a direct Allocate failed after {time.monotonic() - started:.2f} s: {exc!r}"
    relay.close()
    return f"a direct Allocate succeeded in {time.monotonic() - started:.2f} s"


@asynccontextmanager
async def connected_agents(
    target: servers.TurnTarget, transport: str, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """Two relay-only aioice agents on ``target``, ICE completed (a controls, b is controlled)."""
    username, password = rest_credential(target)
    agent = partial(ice_agent, target, transport=transport, username=username, password=password)
    a = agent(controlling=True, tls=tls)
    b = agent(controlling=False, tls=tls)
    try:
        started = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(a.gather_candidates(), b.gather_candidates()), STEP_TIMEOUT
        )
        took = time.monotonic() - started
        for each in (a, b):
            if len(each.local_candidates) != 1:
                # aioice swallows gathering errors (and gives up after 5 s): ask again directly.
                why = await why_no_allocation(target, username, password, transport, tls)
                raise AssertionError(f"no relay candidate after {took:.2f} s: {why}")
            assert_relay_candidate(each.local_candidates[0])
        assert a.local_candidates[0].port != b.local_candidates[0].port

        for local, remote in ((a, b), (b, a)):
            for candidate in local.local_candidates:
                await remote.add_remote_candidate(candidate)
            await remote.add_remote_candidate(None)
            remote.remote_username = local.local_username
            remote.remote_password = local.local_password
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), STEP_TIMEOUT)
        yield a, b
    finally:
        await asyncio.wait_for(asyncio.gather(a.close(), b.close()), STEP_TIMEOUT)


async def ping_pong(a: Any, b: Any, sizes: tuple[int, ...], patience: float = STEP_TIMEOUT) -> None:
    """One message a->b then one b->a per size, each checked byte for byte.

    Strictly alternating, so no datagram can be lost to a full buffer and the check is exact.
    """
    for i, size in enumerate(sizes):
        there = (b"a>b %d|" % i + bytes(range(256)) * 5)[:size]
        back = (b"b>a %d|" % i + bytes(range(255, -1, -1)) * 5)[:size]
        await a.send(there)
        assert await asyncio.wait_for(b.recv(), patience) == there
        await b.send(back)
        assert await asyncio.wait_for(a.recv(), patience) == back


async def exchange_over_ice(
    target: servers.TurnTarget, transport: str, tls: ssl.SSLContext | None
) -> None:
    async with connected_agents(target, transport, tls) as (a, b):
        await ping_pong(a, b, (1, 2, 64, 500, 1000, 1200))


@pytest.mark.parametrize(
    ("server", "transport"),
    [
        ("secureconnect", "udp"),
        ("secureconnect", "tcp"),
        ("secureconnect", "tls"),
        ("secureconnect-workers", "udp"),
        ("secureconnect-workers", "tcp"),
        ("coturn", "udp"),
        ("coturn", "tcp"),
    ],
)
def test_aioice_relay_candidates_carry_data(tmp_path: Path, server: str, transport: str) -> None:
    """aioice gathers a relay candidate with REST credentials and ICE connects relay to relay.

    Two relay-only agents (so every check and every message crosses the server twice) each get
    one relay candidate on 127.0.0.1 in the dynamic port range, nominate a pair, and exchange
    messages of 1 to 1200 bytes both ways, byte for byte. Over UDP, TCP and (ours only; the coturn
    helper has no TLS) TLS with the client verifying our self-signed certificate. The same code
    passes against coturn, which shows the test exercises TURN as real clients use it.
    """
    tls = transport == "tls"
    with turn_server(server, tmp_path, tls=tls) as target:
        context = self_signed_context(tmp_path) if tls else None
        asyncio.run(
            asyncio.wait_for(
                exchange_over_ice(target, "tcp" if tls else transport, context), SCENARIO_TIMEOUT
            )
        )


# --------------------------------------------------------------------------------------------
# 2. aiortc: two peer connections, relay-only ICE, a data channel
# --------------------------------------------------------------------------------------------


def relay_only_configuration(
    target: servers.TurnTarget, transport: str, username: str, password: str
) -> Any:
    return RTCConfiguration(
        # Always explicit: without iceServers aiortc contacts a public STUN server.
        iceServers=[
            RTCIceServer(
                urls=[f"turn:{target.host}:{target.port}?transport={transport}"],
                username=username,
                credential=password,
            )
        ],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


def sdp_candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


def nominated_pairs(pc: Any) -> list[Any]:
    """The ICE pairs aioice nominated under an aiortc peer connection (no public API for it)."""
    ice_transport = pc.sctp.transport.transport
    return list(ice_transport._connection._nominated.values())


MESSAGES: list[str | bytes] = [
    f"text {i}" if i % 2 else bytes([i]) * (i + 1) for i in range(19)
] + [bytes(range(256)) * 64]  # one 16 KiB message: several SCTP chunks over the relay


async def exchange_over_aiortc(target: servers.TurnTarget, transport: str) -> None:
    username, password = rest_credential(target)
    offerer = RTCPeerConnection(relay_only_configuration(target, transport, username, password))
    answerer = RTCPeerConnection(relay_only_configuration(target, transport, username, password))
    at_answerer: list[str | bytes] = []
    echoes: asyncio.Queue[str | bytes] = asyncio.Queue()
    opened = asyncio.Event()
    try:

        @answerer.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            @channel.on("message")  # type: ignore[untyped-decorator]
            def on_message(message: str | bytes) -> None:
                at_answerer.append(message)
                channel.send(message)

        channel = offerer.createDataChannel("interop")
        channel.on("open", opened.set)
        channel.on("message", echoes.put_nowait)

        await asyncio.wait_for(offerer.setLocalDescription(await offerer.createOffer()), 15)
        await answerer.setRemoteDescription(offerer.localDescription)
        await asyncio.wait_for(answerer.setLocalDescription(await answerer.createAnswer()), 15)
        await offerer.setRemoteDescription(answerer.localDescription)

        for description in (offerer.localDescription, answerer.localDescription):
            candidates = sdp_candidates(description.sdp)
            assert candidates, description.sdp
            assert all(" typ relay " in line for line in candidates), candidates

        await asyncio.wait_for(opened.wait(), STEP_TIMEOUT)
        for pc in (offerer, answerer):
            pairs = nominated_pairs(pc)
            assert len(pairs) == 1
            assert_relay_candidate(pairs[0].local_candidate)
            assert_relay_candidate(pairs[0].remote_candidate)

        for message in MESSAGES:
            channel.send(message)
        got = [await asyncio.wait_for(echoes.get(), STEP_TIMEOUT) for _ in MESSAGES]
        assert at_answerer == MESSAGES
        assert got == MESSAGES
    finally:
        await asyncio.wait_for(asyncio.gather(offerer.close(), answerer.close()), STEP_TIMEOUT)


@pytest.mark.parametrize(
    ("server", "transport"),
    [
        ("secureconnect", "udp"),
        ("secureconnect", "tcp"),
        ("secureconnect-workers", "udp"),
        ("coturn", "udp"),
    ],
)
def test_aiortc_data_channel_through_relay(tmp_path: Path, server: str, transport: str) -> None:
    """Two aiortc peers with iceTransportPolicy "relay" open a data channel through the server.

    Both SDPs carry relay candidates only, the nominated pair is relay to relay on loopback, and
    20 messages (text and binary, one of 16 KiB that SCTP splits into many DATA chunks) reach the
    answerer in order and come back intact: the full WebRTC stack (ICE, DTLS, SCTP) over our relay.
    Run against coturn too, to show the scenario is a real one.
    """
    with turn_server(server, tmp_path) as target:
        asyncio.run(asyncio.wait_for(exchange_over_aiortc(target, transport), SCENARIO_TIMEOUT))


# --------------------------------------------------------------------------------------------
# 4. Negative controls: a real client with bad credentials gets no relay
# --------------------------------------------------------------------------------------------


class _Closed(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def refused_allocation(
    target: servers.TurnTarget, username: str, password: str
) -> tuple[list[Any], int | None]:
    """(candidates aioice gathered, the Allocate error code) for one bad credential, after a
    positive control: the right credential allocates and deletes its allocation."""
    address = (target.host, target.port)
    good_user, good_password = rest_credential(target)
    transport, protocol = await asyncio.wait_for(
        aioice_turn.create_turn_endpoint(
            _Closed, server_addr=address, username=good_user, password=good_password
        ),
        STEP_TIMEOUT,
    )
    assert transport.get_extra_info("sockname")[1] in RELAY_PORTS
    transport.close()  # a Refresh with LIFETIME 0
    await asyncio.wait_for(protocol.lost, STEP_TIMEOUT)

    agent = aioice.Connection(
        ice_controlling=True,
        turn_server=address,
        turn_username=username,
        turn_password=password,
        turn_transport="udp",
        transport_policy=aioice.TransportPolicy.RELAY,
        use_ipv6=False,
    )
    try:
        await asyncio.wait_for(agent.gather_candidates(), STEP_TIMEOUT)
        candidates = list(agent.local_candidates)
    finally:
        await asyncio.wait_for(agent.close(), STEP_TIMEOUT)

    # aioice's gathering swallows the error; ask for an allocation directly to see the answer.
    try:
        transport, _ = await asyncio.wait_for(
            aioice_turn.create_turn_endpoint(
                _Closed, server_addr=address, username=username, password=password
            ),
            STEP_TIMEOUT,
        )
    except aioice_stun.TransactionFailed as exc:
        code: int = exc.response.attributes["ERROR-CODE"][0]
        return candidates, code
    transport.close()
    return candidates, None


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("fault", ["wrong-password", "expired"])
def test_aioice_with_bad_rest_credentials_gets_no_relay(
    tmp_path: Path, server: str, fault: str
) -> None:
    """A wrong password, or a REST username whose expiry has passed, allocates nothing.

    aioice gathers no relay candidate at all and a direct Allocate ends in 401, while the
    correct credential on the same server allocates (so the failure is the credential's, not
    the setup's). The expired credential has a valid HMAC: only its timestamp is wrong. coturn
    refuses both the same way.
    """
    with turn_server(server, tmp_path) as target:
        if fault == "expired":
            username = f"{int(time.time()) - 60}:alice"
            password = rest_password(target.secret, username)
        else:
            username, _ = rest_credential(target)
            password = rest_password("not-the-secret", username)
        candidates, code = asyncio.run(
            asyncio.wait_for(refused_allocation(target, username, password), SCENARIO_TIMEOUT)
        )
    assert candidates == []
    assert code == 401


# --------------------------------------------------------------------------------------------
# 5. One client's bad manners must not end other clients' sessions
# --------------------------------------------------------------------------------------------

#: The server gives no signal that it has dealt with a client that vanished, so the session is
#: checked after this long (our supervisor restarts a crashed component after 0.5 s with every
#: allocation gone, so a crash cannot hide in this window).
AFTERMATH = 0.5


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def binding_round_trip(sock: socket.socket) -> None:
    """A STUN Binding over a stream, answered: the server is now reading this connection."""
    sock.sendall(encode_message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(), ()))
    header = read_exactly(sock, 20)
    assert header[:2] == b"\x01\x01", header  # Binding success response
    read_exactly(sock, int.from_bytes(header[2:4], "big"))


def misbehave(target: servers.TurnTarget, how: str, context: ssl.SSLContext | None) -> None:
    """A stream client that goes away badly (blocking sockets, run in a thread, all bounded).

    Where the server gives a signal, the client waits for it: a Binding answered first means the
    server is inside its read loop when the connection breaks (not still accepting it).
    """
    if how == "tls-eof":
        # FIN without close_notify: what a killed process or a dropped network does, and what
        # turnutils_uclient does when it exits.
        assert context is not None
        assert target.tls_port is not None
        raw = socket.create_connection((target.host, target.tls_port), timeout=5)
        with context.wrap_socket(raw, server_hostname=target.host) as tls:
            binding_round_trip(tls)
            tls.shutdown(socket.SHUT_RDWR)  # SSLSocket.shutdown sends no close_notify
        return
    with socket.create_connection((target.host, target.port), timeout=5) as sock:
        if how == "tcp-reset":
            binding_round_trip(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # closing with SO_LINGER 0 sends RST: the server's read fails ECONNRESET
        # tcp-garbage: bytes that are neither STUN nor ChannelData. We close the connection,
        # coturn keeps it open and ignores them; wait for our close, or a second for coturn.
        sock.sendall(b"\xff" * 64)
        sock.settimeout(1.0)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            sock.recv(16)


async def session_survives(
    target: servers.TurnTarget, how: str, context: ssl.SSLContext | None
) -> None:
    async with connected_agents(target, "udp") as (a, b):
        await ping_pong(a, b, (100,))
        await asyncio.wait_for(asyncio.to_thread(misbehave, target, how, context), STEP_TIMEOUT)
        await asyncio.sleep(AFTERMATH)
        await ping_pong(a, b, (100, 1000, 100), patience=3.0)


@pytest.mark.parametrize(
    ("server", "how"),
    [
        ("secureconnect", "tls-eof"),
        ("secureconnect", "tcp-garbage"),
        ("secureconnect", "tcp-reset"),
        ("secureconnect-workers", "tcp-reset"),
        ("coturn", "tcp-garbage"),
        ("coturn", "tcp-reset"),
    ],
)
def test_other_clients_cannot_end_a_relay_session(tmp_path: Path, server: str, how: str) -> None:
    """A relay session between two aioice agents keeps working while another client misbehaves.

    The other client connects over TLS and leaves without close_notify, sends bytes that are
    neither STUN nor ChannelData over TCP, or resets its TCP connection (RST). Each must
    cost that client its connection and nothing else: messages keep crossing the established
    UDP relay both ways afterwards. coturn passes the TCP cases, which shows the check is real.

    Regression test: each of the three once crashed our whole TURN component (trio wrapped the
    stream handler's error in an ExceptionGroup that the listener's plain ``except`` missed), and
    the supervisor's restart dropped every allocation. turnutils_uclient over TLS triggered it
    simply by exiting.
    """
    tls = how.startswith("tls")
    with turn_server(server, tmp_path, tls=tls) as target:
        context = self_signed_context(tmp_path) if tls else None
        asyncio.run(asyncio.wait_for(session_survives(target, how, context), SCENARIO_TIMEOUT))
