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

import pytest
from aiortc import RTCPeerConnection
from aiortc_peers import answerer, nominated_types, offerer
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
