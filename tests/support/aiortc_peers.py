"""aiortc peers that meet through our signaling (a :class:`SignalClient` each) and connect
relay-only through the TURN server the ``welcome`` handed out.

aiortc uses one TURN URL only (the first it can parse) and would have to verify our self-signed
certificate for ``turns:``, so :func:`relay_only` keeps the ``turn:...?transport=udp`` URL (of
the first node offered, in a cluster); relay-only policy (``RTCIceTransportPolicy.RELAY``) means
the only way between the peers is that relay. aiortc does not trickle: each description carries
its candidates.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)

from secureconnect.signal.client import SignalClient


def relay_only(client: SignalClient) -> RTCConfiguration:
    """The welcome's TURN server as aiortc wants it: UDP TURN only, relay policy."""
    servers = []
    for server in client.ice_servers:
        urls = [u for u in server["urls"] if u.startswith("turn:") and u.endswith("=udp")]
        if urls and "username" in server:
            servers.append(RTCIceServer(urls[:1], server["username"], server["credential"]))
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


@dataclass
class Call:
    """The offering side of a relay-only call: its connection and its data channel."""

    pc: RTCPeerConnection
    channel: RTCDataChannel
    echoes: asyncio.Queue[str]

    async def exchange(self, texts: list[str]) -> list[str]:
        """Send ``texts``, return the answerer's echoes of them."""
        for text in texts:
            self.channel.send(text)
        return [await self.echoes.get() for _ in texts]


async def open_call(client: SignalClient) -> Call:
    """Offer to the peer already in the room; return once the data channel is open."""
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
    return Call(pc, channel, echoes)


async def offerer(client: SignalClient, texts: list[str]) -> tuple[RTCPeerConnection, list[str]]:
    """Offer to the peer already in the room, send ``texts``, return the echoes."""
    call = await open_call(client)
    return call.pc, await call.exchange(texts)
