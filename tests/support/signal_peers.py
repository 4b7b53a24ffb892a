"""Helpers for the signaling contract tests: the appliance under test, a websockets peer,
bounded waits, room tokens (shared by tests/signal/conftest.py and the test modules)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from appliance import free_port, run_appliance
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

T = TypeVar("T")
Message = dict[str, Any]
PEER_ID = re.compile(r"p-[0-9a-f]{12}")
ROOM_SECRET = "contract-room-secret"
STEP = 5.0  # seconds any single expected message may take
GRACE = 8.0  # signal.resume_grace of the main appliance: a resume on a loaded machine fits
ICE_TTL = 6  # signal.ice_ttl of the token appliance: pushes come at 4.8-5.8 s (1 s ticks)


# -- the appliance ---------------------------------------------------------------------------------


@dataclass
class Appliance:
    """A running ``secureconnect run signal turn`` on loopback."""

    port: int
    turn_port: int
    state_dir: Path
    tls: bool

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/ws"

    @property
    def ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(self.state_dir / "selfsigned-cert.pem"))

    @property
    def turn_secret(self) -> str:
        return (self.state_dir / "turn-secret").read_text().strip()

    def http(
        self, path: str, headers: dict[str, str] | None = None, source: str | None = None
    ) -> tuple[int, bytes]:
        """GET ``path`` (blocking, no proxies; from ``source`` when given): status and body."""
        conn: http.client.HTTPConnection
        bind = (source, 0) if source else None
        if self.tls:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=STEP, context=self.ssl, source_address=bind
            )
        else:
            conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=STEP, source_address=bind
            )
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        status, body = self.http("/metrics")
        assert status == 200
        return {
            sample.name + _labels(sample.labels): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }


def _labels(labels: dict[str, str]) -> str:
    return "".join(f'{{{k}="{v}"}}' for k, v in sorted(labels.items()))


@contextlib.contextmanager
def appliance(workdir: Path, *settings: str, tls: bool) -> Iterator[Appliance]:
    """Start the appliance with ``settings`` (``KEY=VALUE``) and wait for its ready line."""
    port, turn_port = free_port(socket.SOCK_STREAM), free_port()
    state = workdir / "state"
    with run_appliance(
        workdir,
        "signal",
        "turn",
        state_dir=state,
        extra_args=("--log-level", "warning"),
        settings=(
            f"signal.port={port}",
            f"signal.tls={str(tls).lower()}",
            f"turn.port={turn_port}",
            f"turn.tls_port={free_port(socket.SOCK_STREAM)}",
            "general.drain_timeout=0.5",
            *settings,
        ),
        log_file=workdir / "stderr.log",
    ):
        yield Appliance(port, turn_port, state, tls)


def run(scenario: Awaitable[T], timeout: float = 30.0) -> T:
    """Run one asyncio scenario with an overall bound; close whatever it left open."""

    async def bounded() -> T:
        try:
            async with asyncio.timeout(timeout):
                return await scenario
        finally:
            async with asyncio.timeout(STEP):
                await asyncio.gather(*(peer.ws.close() for peer in _opened), return_exceptions=True)
            _opened.clear()

    return asyncio.run(bounded())


# -- raw WebSocket peers ---------------------------------------------------------------------------


class Peer:
    """One WebSocket to the appliance, spoken to in raw JSON frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: Message = {}
        self._pings = 0

    @property
    def id(self) -> str:
        return str(self.welcome["peer"])

    async def send(self, message: Message | str | bytes) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def recv(self, within: float = STEP) -> Message:
        async with asyncio.timeout(within):
            message: Message = json.loads(await self.ws.recv())
        return message

    async def expect(self, kind: str, **fields: Any) -> Message:
        """The next message, of type ``kind`` with these ``fields``, within :data:`STEP`."""
        return await self.expect_within(STEP, kind, **fields)

    async def expect_within(self, within: float, kind: str, **fields: Any) -> Message:
        """:meth:`expect`, waiting ``within`` seconds for the message."""
        message = await self.recv(within)
        assert message["type"] == kind, message
        for key, value in fields.items():
            assert message.get(key) == value, message
        return message

    async def join(self, room: str, **extra: Any) -> Message:
        await self.send({"type": "join", "room": room, **extra})
        self.welcome = await self.expect("welcome", room=room)
        return self.welcome

    async def usable(self, skip: tuple[str, ...] = ()) -> None:
        """A ping is answered: the connection is open and the server still serves it. Messages
        of a type in ``skip`` (room events such as ``peer-left``) may arrive first."""
        self._pings += 1
        ident = f"still-{self._pings}"
        await self.send({"type": "ping", "id": ident})
        while (message := await self.recv())["type"] in skip:
            pass
        assert message == {"type": "pong", "id": ident}, message

    def kill(self) -> None:
        """The TCP connection dies: no close frame, no FIN handshake wait."""
        self.ws.transport.abort()


_opened: list[Peer] = []  # closed by run() however the scenario ends


async def dial(app: Appliance, **options: Any) -> Peer:
    ws = await ws_connect(
        app.ws_url, ssl=app.ssl, proxy=None, compression=None, open_timeout=STEP, **options
    )
    _opened.append(Peer(ws))
    return _opened[-1]


@contextlib.asynccontextmanager
async def room_of(app: Appliance, count: int, room: str | None = None) -> AsyncIterator[list[Peer]]:
    """``count`` peers joined to one fresh room (join notices consumed); all leave at the end."""
    room = room or new_room()
    peers: list[Peer] = []
    try:
        for _ in range(count):
            peer = await dial(app)
            await peer.join(room)
            for earlier in peers:
                await earlier.expect("peer-joined", peer=peer.id)
            peers.append(peer)
        yield peers
    finally:
        for peer in peers:
            with contextlib.suppress(ConnectionClosed):
                await peer.send({"type": "leave"})
            await peer.ws.close()


def new_room() -> str:
    return f"room-{uuid.uuid4().hex[:12]}"


async def wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` (server-side state that sends no message) until it holds, at most STEP s."""
    async with asyncio.timeout(STEP):
        while not await check():  # noqa: ASYNC110 - the state lives in another process
            await asyncio.sleep(0.02)


async def metrics(app: Appliance) -> dict[str, float]:
    return await asyncio.to_thread(app.metrics)


async def away_rises(app: Appliance, before: float) -> None:
    """Wait until the server has noticed a dead connection (its session is away)."""

    async def noticed() -> bool:
        return (await metrics(app))["signal_sessions_away"] > before

    await wait_until(noticed)


def cli_room_token(room: str) -> str:
    """``secureconnect room-token ROOM`` with the token appliance's secret."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "secureconnect", "room-token", room, "--ttl", "600"),
            *("--set", "signal.auth=token", "--set", f'signal.token_secrets=["{ROOM_SECRET}"]'),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()
