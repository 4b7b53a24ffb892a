"""Two aiortc peers meet through our signaling and connect relay-only through our TURN.

The appliance (``python -m secureconnect run signal turn``) runs on free loopback ports. Each peer
is a :class:`SignalClient`; the ICE servers are the ones its ``welcome`` handed out, with TURN
credentials minted by signaling and checked by TURN. aiortc uses one TURN URL only (the first it
can parse) and would have to verify our self-signed certificate for ``turns:``, so the test keeps
the ``turn:...?transport=udp`` URL and says so; relay-only policy
(``RTCIceTransportPolicy.RELAY``) means the only way between the peers is our relay. aiortc does
not trickle: each description carries its candidates. Bounded to 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from appliance import free_port, run_appliance

from secureconnect.signal.client import SignalClient

DEADLINE = 30.0


@dataclass
class Appliance:
    url: str
    ssl: ssl.SSLContext
    turn_port: int


@pytest.fixture
def appliance(tmp_path: Path) -> Iterator[Appliance]:
    port, turn_port = free_port(socket.SOCK_STREAM), free_port()
    state = tmp_path / "state"
    with run_appliance(
        tmp_path,
        "signal",
        "turn",
        state_dir=state,
        extra_args=("--log-level", "warning"),
        settings=(
            f"signal.port={port}",
            f"turn.port={turn_port}",
            "turn.tls=false",
            "general.drain_timeout=0.5",
        ),
    ):
        context = ssl.create_default_context(cafile=str(state / "selfsigned-cert.pem"))
        yield Appliance(f"wss://127.0.0.1:{port}/ws", context, turn_port)


def relay_only(client: SignalClient) -> RTCConfiguration:
    """The welcome's TURN server as aiortc wants it: UDP TURN only, relay policy."""
    servers = []
    for server in client.ice_servers:
        urls = [u for u in server["urls"] if u.startswith("turn:") and u.endswith("=udp")]
        if urls and "username" in server:
            servers.append(RTCIceServer(urls, server["username"], server["credential"]))
    assert len(servers) == 1, client.ice_servers
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY)


def candidate_types(sdp: str) -> set[str]:
    return {line.split(" typ ")[1].split()[0] for line in sdp.splitlines() if " typ " in line}


def nominated_types(pc: RTCPeerConnection) -> tuple[str, str]:
    """(local, remote) candidate types of the pair ICE chose."""
    sctp = pc.sctp
    assert sctp is not None
    connection: Any = sctp.transport.transport._connection  # aioice
    pair = next(iter(connection._nominated.values()))
    return pair.local_candidate.type, pair.remote_candidate.type


async def next_signal(client: SignalClient) -> dict[str, Any]:
    async for message in client:
        if message["type"] == "signal":
            data: dict[str, Any] = message["data"]
            return data
    raise AssertionError("the signaling connection closed")


async def answerer(client: SignalClient) -> RTCPeerConnection:
    """Wait for an offer, answer it, echo every data-channel message back with a prefix."""
    pc = RTCPeerConnection(relay_only(client))

    @pc.on("datachannel")
    def on_channel(channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: str) -> None:
            channel.send(f"echo:{message}")

    offer = await next_signal(client)
    await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
    await pc.setLocalDescription(await pc.createAnswer())
    local = pc.localDescription
    await client.send(client.peers[0], {"sdp": local.sdp, "type": local.type})
    return pc


async def offerer(client: SignalClient, texts: list[str]) -> tuple[RTCPeerConnection, list[str]]:
    """Offer to the peer already in the room, send ``texts``, return the echoes."""
    pc = RTCPeerConnection(relay_only(client))
    channel = pc.createDataChannel("chat")
    opened, echoes = asyncio.Event(), asyncio.Queue[str]()
    channel.on("open", opened.set)
    channel.on("message", echoes.put_nowait)
    await pc.setLocalDescription(await pc.createOffer())
    local = pc.localDescription
    assert candidate_types(local.sdp) == {"relay"}
    (peer,) = client.peers
    await client.send(peer, {"sdp": local.sdp, "type": local.type})
    answer = await next_signal(client)
    assert candidate_types(answer["sdp"]) == {"relay"}
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    await opened.wait()
    for text in texts:
        channel.send(text)
    return pc, [await echoes.get() for _ in texts]


def test_two_aiortc_peers_connect_through_our_turn(appliance: Appliance) -> None:
    texts = ["hello", "über TURN", "x" * 1000]

    async def scenario() -> None:
        room = f"aiortc-{uuid.uuid4().hex[:8]}"
        pcs: list[RTCPeerConnection] = []
        async with (
            SignalClient.connect(appliance.url, room, ssl=appliance.ssl) as alice,
            SignalClient.connect(appliance.url, room, ssl=appliance.ssl) as bob,
        ):
            assert bob.peers == (alice.peer,)
            joined = await alice.receive()
            assert joined == {"type": "peer-joined", "peer": bob.peer}
            try:
                answering = asyncio.create_task(answerer(alice))
                bob_pc, echoes = await offerer(bob, texts)
                pcs += [bob_pc, await answering]
                assert echoes == [f"echo:{text}" for text in texts]
                for pc in pcs:
                    assert nominated_types(pc) == ("relay", "relay")
            finally:
                for pc in pcs:
                    with contextlib.suppress(Exception):
                        await pc.close()

    async def bounded() -> None:
        async with asyncio.timeout(DEADLINE):
            await scenario()

    asyncio.run(bounded())
