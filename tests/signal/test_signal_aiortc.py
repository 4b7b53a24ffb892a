"""Two aiortc peers meet through our signaling and connect relay-only through our TURN.

The appliance is the ``appliance`` fixture of our own pytest plugin (``secureconnect.testing``:
``secureconnect run`` on free loopback ports, as a user's test gets it). Each peer
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
import uuid

from aiortc import RTCPeerConnection
from aiortc_peers import answerer, nominated_types, offerer

from secureconnect.signal.client import SignalClient
from secureconnect.testing.appliance import Appliance

DEADLINE = 30.0


def test_two_aiortc_peers_connect_through_our_turn(appliance: Appliance) -> None:
    texts = ["hello", "über TURN", "x" * 1000]

    async def scenario() -> None:
        room = f"aiortc-{uuid.uuid4().hex[:8]}"
        pcs: list[RTCPeerConnection] = []
        async with (
            SignalClient.connect(appliance.signal_url, room, ssl=appliance.ssl_context()) as alice,
            SignalClient.connect(appliance.signal_url, room, ssl=appliance.ssl_context()) as bob,
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
