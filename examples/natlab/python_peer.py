"""A WebRTC peer of your own for `secureconnect natlab --peer-cmd` (docs/natlab.md).

    sudo secureconnect natlab --peer-cmd "python3 examples/natlab/python_peer.py"

It reads what the lab gives it from the environment (SECURECONNECT_SIGNAL_URL, _ROOM, _ROLE,
_ICE_SERVERS, _CAFILE, _TIMEOUT), meets the other peer in the room through the appliance's
signaling, connects with aiortc (a data channel: ping, pong), and prints one JSON line with the
verdict and the candidate types of the pair ICE chose. Exit status 0: connected.

aiortc takes one TURN URL; this peer offers the UDP one unless the NAT blocks UDP, where TCP is
the way (a browser tries them all).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from secureconnect.signal.client import SignalClient


def configuration() -> RTCConfiguration:
    servers: list[RTCIceServer] = []
    udp_blocked = os.environ.get("SECURECONNECT_BEHAVIOUR") == "udp-blocked"
    for server in json.loads(os.environ["SECURECONNECT_ICE_SERVERS"]):
        urls = server["urls"]
        if "username" not in server:
            servers.append(RTCIceServer(urls[:1]))
            continue
        wanted = "transport=tcp" if udp_blocked else "transport=udp"
        turn = [u for u in urls if u.startswith("turn:") and u.endswith(wanted)]
        servers.append(RTCIceServer(turn[:1], server["username"], server["credential"]))
    return RTCConfiguration(iceServers=servers)


def selected(pc: RTCPeerConnection) -> tuple[str | None, str | None]:
    """The candidate types of the pair aioice nominated (aiortc has no stats for it)."""
    try:
        pairs = pc.sctp.transport.transport._connection._nominated  # type: ignore[union-attr]
        pair = next(iter(pairs.values()))
    except (AttributeError, StopIteration):
        return None, None
    return pair.local_candidate.type, pair.remote_candidate.type


async def next_signal(client: SignalClient) -> dict[str, Any]:
    async for message in client:
        if message["type"] == "signal":
            data: dict[str, Any] = message["data"]
            return data
    raise RuntimeError("signaling closed")


async def main() -> dict[str, Any]:
    started = time.monotonic()
    context = ssl.create_default_context(cafile=os.environ["SECURECONNECT_CAFILE"])
    room, role = os.environ["SECURECONNECT_ROOM"], os.environ["SECURECONNECT_ROLE"]
    async with SignalClient.connect(
        os.environ["SECURECONNECT_SIGNAL_URL"], room, ssl=context
    ) as me:
        pc = RTCPeerConnection(configuration())
        done = asyncio.get_running_loop().create_future()

        def attach(channel: Any) -> None:
            def on_message(text: str) -> None:
                if text == "ping":
                    channel.send("pong")
                elif not done.done():
                    done.set_result(True)

            channel.on("open", lambda: channel.send("ping"))
            channel.on("message", on_message)
            if channel.readyState == "open":  # the answerer's channel arrives open
                channel.send("ping")

        if role == "offer":
            while not me.peers:
                await me.receive()  # peer-joined
            attach(pc.createDataChannel("lab"))
            await pc.setLocalDescription(await pc.createOffer())
            description = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
            await me.send(me.peers[0], description)
            answer = await next_signal(me)
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        else:
            pc.on("datachannel", attach)
            offer = await next_signal(me)
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
            await pc.setLocalDescription(await pc.createAnswer())
            description = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
            await me.send(me.peers[0], description)
        await done
        local, remote = selected(pc)
        seconds = round(time.monotonic() - started, 2)
        await asyncio.sleep(1.0)  # let the other side's pong through before hanging up
        await pc.close()
        return {"connected": True, "local": local, "remote": remote, "seconds": seconds}


if __name__ == "__main__":
    limit = float(os.environ.get("SECURECONNECT_TIMEOUT", "30"))
    try:
        report = asyncio.run(asyncio.wait_for(main(), limit))
    except Exception as exc:  # a verdict, whatever went wrong
        report = {"connected": False, "error": repr(exc)[:300]}
    print(json.dumps(report))
    sys.exit(0 if report["connected"] else 1)
