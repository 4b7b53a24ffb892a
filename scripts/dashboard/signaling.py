"""The demo's signaling load: WebSocket peers of the demo protocol in rooms of 2-3, talking,
then leaving, dropping their connection, or dropping it and resuming, with a few protocol
errors (``not-joined``, ``unknown-peer``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import ssl
import time
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from .run import STEP, Run, log


@dataclasses.dataclass
class SignalPeer:
    """One WebSocket peer of the demo protocol (docs/signaling-protocol.md) in ``room``."""

    run: Run
    url: str
    context: ssl.SSLContext
    room: str
    rng: random.Random
    welcome: dict[str, Any] = dataclasses.field(default_factory=dict)
    others: set[str] = dataclasses.field(default_factory=set)

    def note(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "welcome":
            self.welcome = message
            self.others.update(message.get("peers", []))
        elif kind == "peer-joined":
            self.others.add(message["peer"])
        elif kind == "peer-left":
            self.others.discard(message["peer"])

    async def talk(self, ws: ClientConnection, seconds: float) -> None:
        """Join, then read what comes and send a signal to a random peer every ~0.5 s."""
        if self.rng.random() < 0.3:  # a client that talks before joining: not-joined
            await ws.send(json.dumps({"type": "signal", "to": "p-000000000000", "data": 1}))
        await ws.send(json.dumps({"type": "join", "room": self.room}))
        deadline = time.monotonic() + seconds
        next_send = time.monotonic()
        while time.monotonic() < deadline and self.run.running():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, next_send - time.monotonic())):
                    self.note(json.loads(await ws.recv()))
                    continue
            next_send = time.monotonic() + self.rng.uniform(0.3, 1.5)  # paced, whatever comes
            if self.welcome and self.others:
                target = self.rng.choice(sorted(self.others))
                if self.rng.random() < 0.03:
                    target = "p-ffffffffffff"  # gone already: unknown-peer
                data = {"candidate": "x" * self.rng.randint(50, 400)}
                await ws.send(json.dumps({"type": "signal", "to": target, "data": data}))

    async def live(self, seconds: float, end: str) -> bool:
        """Talk for ``seconds``, then leave, drop the connection (the session expires after
        the grace period) or drop it and resume on a new one; False if the server closed it
        (e.g. while Redis was away)."""
        try:
            await self._live(seconds, end)
        except (ConnectionClosed, OSError, TimeoutError):
            return False
        return True

    async def _live(self, seconds: float, end: str) -> None:
        async with asyncio.timeout(seconds + 30):
            ws = await ws_connect(self.url, ssl=self.context, proxy=None, open_timeout=STEP)
            try:
                await self.talk(ws, seconds)
                if end == "leave":
                    await ws.send(json.dumps({"type": "leave"}))
                    await asyncio.sleep(0.2)
                    return
                ws.transport.abort()  # the network went away: the session is away
                if end == "resume" and self.welcome:
                    await asyncio.sleep(self.rng.uniform(1, 3))
                    await self.resume(self.rng.uniform(5, 15))
            finally:
                await ws.close()

    async def resume(self, seconds: float) -> None:
        again = await ws_connect(self.url, ssl=self.context, proxy=None, open_timeout=STEP)
        try:
            resume = {"type": "join", "room": self.room, "resume": self.welcome["resume"]}
            await again.send(json.dumps(resume))
            await asyncio.sleep(seconds)
            await again.send(json.dumps({"type": "leave"}))
        finally:
            await again.close()


def signaling_load(run: Run, signal_port: int) -> None:
    """Rooms of 2-3 peers for 15-90 s each, at most 9 peers at once and 40 rooms in all."""
    url = f"wss://127.0.0.1:{signal_port}/ws"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the appliance's self-signed certificate, on loopback

    async def main() -> None:
        rng = random.Random(23)
        tasks: set[asyncio.Task[bool]] = set()
        rooms = peers = failed = 0
        while run.running() and rooms < 40:
            failed += sum(1 for t in tasks if t.done() and not t.result())
            tasks = {t for t in tasks if not t.done()}
            if len(tasks) < 9:
                rooms += 1
                seconds = min(rng.uniform(15, 90), max(5.0, run.left() - 2))
                for _ in range(rng.choice((2, 2, 3))):
                    end = rng.choices(("leave", "drop", "resume"), weights=(6, 2, 2))[0]
                    peer = SignalPeer(run, url, context, f"demo-{rooms}", rng)
                    tasks.add(asyncio.create_task(peer.live(seconds, end)))
                    peers += 1
            await asyncio.sleep(rng.uniform(4, 10))
        failed += sum(1 for ok in await asyncio.gather(*tasks) if not ok)
        log(f"signaling: {rooms} rooms, {peers} peers, {failed} closed by the server")

    asyncio.run(main())
