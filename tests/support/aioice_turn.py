"""aioice as a TURN client in tests (asyncio): an allocation, a UDP peer on loopback, and
whether the allocation relays both ways. On pytest's pythonpath as ``aioice_turn``."""

from __future__ import annotations

import asyncio
from typing import Any

from aioice import turn as aioice_turn

STEP = 5.0  # seconds for one step: an Allocate, a datagram to the peer


class Peer(asyncio.DatagramProtocol):
    """A UDP peer on loopback that keeps what reaches it."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)


class Client(asyncio.DatagramProtocol):
    """What a TURN allocation hands its owner."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)


async def allocate(
    port: int, username: str, password: str, host: str = "127.0.0.1"
) -> tuple[Any, Client]:
    """An aioice allocation on ``host``:``port`` over UDP."""
    transport, client = await asyncio.wait_for(
        aioice_turn.create_turn_endpoint(
            Client,
            server_addr=(host, port),
            username=username,
            password=password,
            transport="udp",
        ),
        STEP,
    )
    return transport, client


async def relays(transport: Any, client: Client, peer: Any, peer_box: Peer) -> bool:
    """Whether the allocation relays both ways: client -> peer, then peer -> client."""
    peer_address = peer.get_extra_info("sockname")
    transport.sendto(b"to-peer", peer_address)
    try:
        assert await asyncio.wait_for(peer_box.received.get(), STEP) == b"to-peer"
        peer.sendto(b"to-client", transport.get_extra_info("sockname"))
        return await asyncio.wait_for(client.received.get(), 1.0) == b"to-client"
    except TimeoutError:
        return False


async def udp_peer(host: str = "127.0.0.1") -> tuple[Any, Peer]:
    """A UDP peer on ``host`` (its transport and what it receives)."""
    loop = asyncio.get_running_loop()
    peer, box = await loop.create_datagram_endpoint(Peer, local_addr=(host, 0))
    return peer, box


async def allocates(port: int, username: str, password: str, host: str = "127.0.0.1") -> bool:
    """Whether an Allocate with this credential succeeds; a refusal must be a 401 (aioice
    raises on it), anything else fails the test."""
    try:
        transport, _ = await allocate(port, username, password, host)
    except Exception as exc:  # aioice's TransactionFailed carries the 401
        why = str(exc)
    else:
        transport.close()
        return True
    assert "401" in why, why
    return False
