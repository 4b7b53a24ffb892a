"""The signaling wire contract (``docs/signaling-protocol.md``) against the real appliance.

Two appliances run as subprocesses on free loopback ports (``python -m secureconnect run signal
turn``): *main* (WSS, open rooms, small limits so that every error is cheap to provoke, a 3 s
resume grace) and *token* (plain WS, ``auth = token``, ``ice_ttl = 6`` so that an ``ice`` push
comes within the test, three connections per client address, 127.0.0.2 a trusted proxy). Clients
are the real ``websockets`` asyncio client, or our ``SignalClient``. Every wait is bounded; each
test runs its scenario under ``asyncio.run`` with an overall timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from appliance import free_port, run_appliance
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from secureconnect.signal.client import SignalClient, SignalClosed, SignalRejected
from secureconnect.signal.http import client_address
from secureconnect.signal.tokens import RoomTokens

T = TypeVar("T")
Message = dict[str, Any]
PEER_ID = re.compile(r"p-[0-9a-f]{12}")
ROOM_SECRET = "contract-room-secret"
STEP = 5.0  # seconds any single expected message may take
GRACE = 3.0  # signal.resume_grace of the main appliance
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

    def http(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET ``path`` (blocking, no proxies): status and body."""
        conn: http.client.HTTPConnection
        if self.tls:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=STEP, context=self.ssl
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=STEP)
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


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with appliance(
        tmp_path_factory.mktemp("main"),
        "signal.max_room_size=3",
        "signal.max_message_bytes=2048",
        "signal.rate_limit=20",
        f"signal.resume_grace={GRACE}",
        "signal.resume_buffer=4",
        'signal.allowed_origins=["https://app.example.com"]',
        tls=True,
    ) as app:
        yield app


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with appliance(
        tmp_path_factory.mktemp("token"),
        "signal.auth=token",
        f'signal.token_secrets=["{ROOM_SECRET}"]',
        f"signal.ice_ttl={ICE_TTL}",
        "signal.max_connections_per_ip=3",
        'signal.trusted_proxies=["127.0.0.2/32"]',
        tls=False,
    ) as app:
        yield app


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

    async def recv(self) -> Message:
        async with asyncio.timeout(STEP):
            message: Message = json.loads(await self.ws.recv())
        return message

    async def expect(self, kind: str, **fields: Any) -> Message:
        message = await self.recv()
        assert message["type"] == kind, message
        for key, value in fields.items():
            assert message.get(key) == value, message
        return message

    async def join(self, room: str, **extra: Any) -> Message:
        await self.send({"type": "join", "room": room, **extra})
        self.welcome = await self.expect("welcome", room=room)
        return self.welcome

    async def usable(self) -> None:
        """A ping is answered: the connection is open and the server still serves it."""
        self._pings += 1
        ident = f"still-{self._pings}"
        await self.send({"type": "ping", "id": ident})
        await self.expect("pong", id=ident)

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


# -- messages --------------------------------------------------------------------------------------


def test_welcome_carries_the_contract_fields(main: Appliance) -> None:
    async def scenario() -> None:
        async with room_of(main, 1) as (alice,):
            welcome = alice.welcome
            assert welcome["version"] == 1
            assert PEER_ID.fullmatch(welcome["peer"])
            assert welcome["peers"] == []
            assert welcome["resumed"] is False
            assert isinstance(welcome["resume"], str)
            assert len(welcome["resume"]) >= 16
            assert welcome["iceTtl"] == 3600
            urls = [url for server in welcome["iceServers"] for url in server["urls"]]
            assert f"stun:127.0.0.1:{main.turn_port}" in urls
            assert f"turn:127.0.0.1:{main.turn_port}?transport=udp" in urls
            assert f"turn:127.0.0.1:{main.turn_port}?transport=tcp" in urls
            assert any(url.startswith("turns:127.0.0.1:") for url in urls)
            turn = next(s for s in welcome["iceServers"] if "username" in s)
            assert turn["username"].endswith(":" + welcome["peer"])
            assert int(turn["username"].split(":")[0]) > time.time() + 3000

    run(scenario())


def test_peers_see_each_other_and_signals_arrive_verbatim(main: Appliance) -> None:
    data = {"sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1", "n": [1, 2.5, None, True], "ü": "✓"}

    async def scenario() -> None:
        room = new_room()
        alice, bob = await dial(main), await dial(main)
        await alice.join(room)
        await bob.join(room)
        assert bob.welcome["peers"] == [alice.id]
        await alice.expect("peer-joined", peer=bob.id)
        await alice.send({"type": "signal", "to": bob.id, "data": data})
        assert await bob.expect("signal") == {"type": "signal", "from": alice.id, "data": data}
        await bob.send({"type": "signal", "to": alice.id, "data": "candidate:1"})
        await alice.expect("signal", data="candidate:1", **{"from": bob.id})
        for peer in (alice, bob):
            await peer.send({"type": "leave"})
            await peer.ws.close()

    run(scenario())


def test_ping_answers_with_the_same_id(main: Appliance) -> None:
    async def scenario() -> None:
        peer = await dial(main)  # ping needs no room
        for ident in ("abc", 42, 1.5):
            await peer.send({"type": "ping", "id": ident})
            assert await peer.expect("pong") == {"type": "pong", "id": ident}
        await peer.ws.close()

    run(scenario())


def test_ice_request_answers_fresh_servers(main: Appliance) -> None:
    async def scenario() -> None:
        async with room_of(main, 1) as (alice,):
            await alice.send({"type": "ice"})
            ice = await alice.expect("ice", iceTtl=3600)
            assert [s["urls"] for s in ice["iceServers"]] == [
                s["urls"] for s in alice.welcome["iceServers"]
            ]
            assert any("credential" in s for s in ice["iceServers"])

    run(scenario())


def test_leave_tells_the_others_and_the_connection_may_join_again(main: Appliance) -> None:
    async def scenario() -> None:
        async with room_of(main, 2) as (alice, bob):
            old = bob.id
            await bob.send({"type": "leave"})
            await alice.expect("peer-left", peer=old)
            await bob.usable()
            await bob.join(alice.welcome["room"])
            assert bob.id != old
            assert bob.welcome["resumed"] is False
            assert bob.welcome["peers"] == [alice.id]
            await alice.expect("peer-joined", peer=bob.id)

    run(scenario())


# -- errors ----------------------------------------------------------------------------------------

ERRORS_BEFORE_JOIN = [
    pytest.param("not json", "bad-json", None, id="bad-json-text"),
    pytest.param("[1, 2]", "bad-json", None, id="bad-json-array"),
    pytest.param(b'{"type": "ping", "id": 1}', "bad-json", None, id="bad-json-binary-frame"),
    pytest.param('{"id": 1}', "bad-message", None, id="bad-message-no-type"),
    pytest.param('{"type": 7}', "bad-message", None, id="bad-message-type-not-string"),
    pytest.param('{"type": "join"}', "bad-message", "join", id="bad-message-join-no-room"),
    pytest.param('{"type": "join", "room": "a b"}', "bad-message", "join", id="bad-room"),
    pytest.param('{"type": "join", "room": "' + "r" * 65 + '"}', "bad-message", "join", id="long"),
    pytest.param('{"type": "signal", "to": "p-1"}', "bad-message", "signal", id="signal-no-data"),
    pytest.param('{"type": "signal", "to": 5, "data": 1}', "bad-message", "signal", id="to-int"),
    pytest.param('{"type": "ping", "id": true}', "bad-message", "ping", id="ping-id-bool"),
    pytest.param('{"type": "ping"}', "bad-message", "ping", id="ping-no-id"),
    pytest.param('{"type": "offer"}', "unknown-type", "offer", id="unknown-type"),
    pytest.param('{"type": "signal", "to": "p-1", "data": 1}', "not-joined", "signal", id="nj-sig"),
    pytest.param('{"type": "leave"}', "not-joined", "leave", id="not-joined-leave"),
    pytest.param('{"type": "ice"}', "not-joined", "ice", id="not-joined-ice"),
    pytest.param(json.dumps({"type": "ping", "id": "x" * 3000}), "too-large", None, id="too-large"),
]


@pytest.mark.parametrize(("frame", "code", "ref"), ERRORS_BEFORE_JOIN)
def test_error_codes_keep_the_connection(
    main: Appliance, frame: str | bytes, code: str, ref: str | None
) -> None:
    async def scenario() -> None:
        peer = await dial(main)
        await peer.send(frame)
        error = await peer.expect("error", code=code)
        assert error.get("ref") == ref
        assert isinstance(error["message"], str)
        await peer.usable()
        await peer.join(new_room())  # and it can still do everything
        await peer.send({"type": "leave"})
        await peer.ws.close()

    run(scenario())


def test_already_joined_unknown_peer_and_room_full(main: Appliance) -> None:
    async def scenario() -> None:
        async with room_of(main, 3) as (alice, bob, _carol):
            room = alice.welcome["room"]
            await alice.send({"type": "join", "room": room})
            await alice.expect("error", code="already-joined", ref="join")
            for to in ("p-0123456789ab", alice.id):  # nobody, and oneself
                await alice.send({"type": "signal", "to": to, "data": 1})
                await alice.expect("error", code="unknown-peer", ref="signal")
            await alice.usable()
            dave = await dial(main)
            await dave.send({"type": "join", "room": room})
            await dave.expect("error", code="room-full", ref="join")
            await dave.usable()
            await dave.join(new_room())
            await alice.send({"type": "signal", "to": bob.id, "data": "still routed"})
            await bob.expect("signal", data="still routed")
            await dave.send({"type": "leave"})
            await dave.ws.close()

    run(scenario())


def test_frames_far_above_the_limit_close_with_1009(main: Appliance) -> None:
    async def scenario() -> None:
        peer = await dial(main)
        await peer.send("x" * (4 * 2048 + 1))
        with pytest.raises(ConnectionClosed):
            await peer.recv()
        # 1009 is sent, but the server closes with the frame's payload unread, so its kernel
        # may answer with a TCP reset that discards the close frame before the client reads it.
        assert peer.ws.close_code in (1009, 1006)

    run(scenario())


def test_rate_limited_messages_are_dropped_and_the_connection_recovers(main: Appliance) -> None:
    async def scenario() -> None:
        peer = await dial(main)
        for n in range(60):  # the burst is 2 * rate_limit = 40
            await peer.send({"type": "ping", "id": n})
        replies = [await peer.recv() for _ in range(60)]
        limited = [r for r in replies if r["type"] == "error"]
        assert {r["code"] for r in limited} == {"rate-limited"}
        assert 1 <= len(limited) <= 20  # fewer when the sender was slow and tokens refilled
        pongs = [r["id"] for r in replies if r["type"] == "pong"]
        assert pongs == sorted(pongs)
        assert pongs[:40] == list(range(40))
        for _ in range(50):  # tokens refill at 20/s: wait for one, then the connection works
            await asyncio.sleep(0.05)
            await peer.send({"type": "ping", "id": "after"})
            if (await peer.recv())["type"] == "pong":
                break
        else:
            pytest.fail("the connection never recovered from rate limiting")
        await peer.ws.close()

    run(scenario())


def test_a_flood_far_past_the_limit_closes_with_1008(main: Appliance) -> None:
    async def scenario() -> None:
        before = (await metrics(main))["signal_abusive_closed_total"]
        peer = await dial(main)
        received: list[Message] = []

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for frame in peer.ws:
                    received.append(json.loads(frame))

        reader = asyncio.create_task(read())
        with contextlib.suppress(ConnectionClosed):
            for n in range(1000):
                await peer.send({"type": "ping", "id": n})
        await asyncio.wait_for(reader, STEP)
        assert peer.ws.close_code == 1008
        assert sum(m.get("code") == "rate-limited" for m in received) > 100
        # >= 1, not == 1: the hub counts every frame that arrives after its decision (a bug)
        assert (await metrics(main))["signal_abusive_closed_total"] > before

    run(scenario())


# -- resume ----------------------------------------------------------------------------------------


def test_resume_keeps_the_id_and_delivers_what_was_sent_meanwhile(main: Appliance) -> None:
    async def scenario() -> None:
        async with room_of(main, 2) as (alice, bob):
            room, old_id = alice.welcome["room"], bob.id
            before = await metrics(main)
            bob.kill()
            await away_rises(main, before["signal_sessions_away"])
            for n in (1, 2):
                await alice.send({"type": "signal", "to": old_id, "data": {"n": n}})
            await alice.usable()  # both signals were handled before this pong
            bob.ws = (await dial(main)).ws
            await bob.join(room, resume=bob.welcome["resume"])
            assert bob.id == old_id
            assert bob.welcome["resumed"] is True
            assert bob.welcome["peers"] == [alice.id]
            for n in (1, 2):
                await bob.expect("signal", data={"n": n}, **{"from": alice.id})
            await bob.usable()
            await alice.usable()  # the next message after the signals: no peer-left/joined
            after = await metrics(main)
            assert after["signal_resumes_total"] == before["signal_resumes_total"] + 1
            assert after["signal_signals_buffered_total"] == (
                before["signal_signals_buffered_total"] + 2
            )

    run(scenario())


def test_resume_after_the_grace_period_is_a_new_session(main: Appliance) -> None:
    async def scenario() -> None:
        async with room_of(main, 2) as (alice, bob):
            room, old_id = alice.welcome["room"], bob.id
            bob.kill()
            started = time.monotonic()
            async with asyncio.timeout(GRACE + STEP):
                await alice.expect("peer-left", peer=old_id)
            assert time.monotonic() - started >= GRACE - 0.5
            bob.ws = (await dial(main)).ws
            await bob.join(room, resume=bob.welcome["resume"])
            assert bob.welcome["resumed"] is False
            assert bob.id != old_id
            await alice.expect("peer-joined", peer=bob.id)

    run(scenario(), timeout=30)


def test_a_resume_takes_over_a_half_dead_connection(main: Appliance) -> None:
    async def scenario() -> None:
        async with room_of(main, 2) as (alice, bob):
            old = bob.ws  # still open: the server has not noticed anything
            new = await dial(main)
            await new.join(alice.welcome["room"], resume=bob.welcome["resume"])
            assert new.welcome["resumed"] is True
            assert new.id == bob.id
            with pytest.raises(ConnectionClosed):
                await bob.recv()
            assert old.close_code == 4001
            bob.ws = new.ws
            await alice.send({"type": "signal", "to": bob.id, "data": "to the new one"})
            await bob.expect("signal", data="to the new one")
            await alice.usable()

    run(scenario())


# -- SignalClient against the appliance ------------------------------------------------------------


def test_signal_client_resumes_by_itself(main: Appliance) -> None:
    async def scenario() -> None:
        room = new_room()
        async with (
            SignalClient.connect(main.ws_url, room, ssl=main.ssl) as alice,
            SignalClient.connect(main.ws_url, room, ssl=main.ssl, backoff=2.0) as bob,
        ):
            assert (await alice.receive())["type"] == "peer-joined"
            assert alice.peers == (bob.peer,)
            assert bob.peers == (alice.peer,)
            old_id = bob.peer
            assert old_id is not None
            before = (await metrics(main))["signal_sessions_away"]
            assert bob.websocket is not None
            bob.websocket.transport.abort()  # bob reconnects after 1-2 s (backoff=2.0)
            await away_rises(main, before)
            carol = await SignalClient.connect(main.ws_url, room, ssl=main.ssl)
            assert (await alice.receive())["peer"] == carol.peer
            await alice.send(old_id, "one")
            await alice.send(old_id, "two")
            async with asyncio.timeout(STEP):
                welcome = await bob.receive()
                assert (welcome["type"], welcome["resumed"]) == ("welcome", True)
                missed = await bob.receive()  # carol joined while bob was away
                assert missed == {"type": "peer-joined", "peer": carol.peer, "synthetic": True}
                for data in ("one", "two"):
                    assert await bob.receive() == {
                        "type": "signal",
                        "from": alice.peer,
                        "data": data,
                    }
            assert bob.peer == old_id
            assert bob.reconnects == 1
            assert set(bob.peers) == {alice.peer, carol.peer}
            assert await bob.ping() < STEP
            assert await alice.request_ice()
            await carol.close()
            assert await alice.receive() == {"type": "peer-left", "peer": carol.peer}
            assert set(alice.peers) == {bob.peer}

    run(scenario())


def test_signal_client_stops_when_its_session_is_taken_over(main: Appliance) -> None:
    async def scenario() -> None:
        room = new_room()
        client = await SignalClient.connect(main.ws_url, room, ssl=main.ssl)
        thief = await dial(main)
        assert client.resume_token is not None
        await thief.join(room, resume=client.resume_token)
        with pytest.raises(SignalClosed, match="4001"):
            await client.receive()
        assert not client.connected
        assert client.reconnects == 0
        await client.close()
        await thief.send({"type": "leave"})
        await thief.ws.close()

    run(scenario())


# -- HTTP ------------------------------------------------------------------------------------------


def test_healthz_and_metrics(main: Appliance) -> None:
    status, body = main.http("/healthz")
    assert status == 200
    assert json.loads(body) == {
        "status": "ok",
        "components": {"signal": "running", "turn": "running"},
    }
    run(_provoke_an_error(main))
    status, body = main.http("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["signal_connections"].type == "gauge"
    assert families["signal_messages_received"].type == "counter"
    assert families["turn_allocations"].type == "gauge"
    errors = {s.labels["code"]: s.value for s in families["signal_errors"].samples}
    assert errors["unknown-type"] >= 1


async def _provoke_an_error(app: Appliance) -> None:
    peer = await dial(app)
    await peer.send({"type": "nonsense"})
    await peer.expect("error", code="unknown-type")
    await peer.ws.close()


def test_ice_endpoint_in_open_mode_mints_rest_credentials(main: Appliance) -> None:
    status, body = main.http("/ice?service=turn&username=alice")
    assert status == 200
    reply = json.loads(body)
    assert reply["ttl"] == 3600
    assert reply["username"].endswith(":alice")
    expected = hmac.new(main.turn_secret.encode(), reply["username"].encode(), hashlib.sha1)
    assert reply["password"] == base64.b64encode(expected.digest()).decode()
    assert f"turn:127.0.0.1:{main.turn_port}?transport=udp" in reply["uris"]
    assert reply["iceServers"][-1]["credential"] == reply["password"]


def test_ice_endpoint_in_token_mode_needs_a_token(tokened: Appliance) -> None:
    assert tokened.http("/ice?service=turn&username=u")[0] == 401
    forged = RoomTokens(["another-secret"]).mint("*", 600, time.time())
    assert tokened.http(f"/ice?service=turn&token={forged}")[0] == 401
    token = cli_room_token("*")
    status, body = tokened.http(f"/ice?service=turn&username=u&token={token}")
    assert status == 200
    assert json.loads(body)["username"].endswith(":u")
    minted = RoomTokens([ROOM_SECRET]).mint("some-room", 600, time.time())
    assert tokened.http("/ice", {"Authorization": f"Bearer {minted}"})[0] == 200


def test_ice_endpoint_accepts_a_lower_case_authorization_header(tokened: Appliance) -> None:
    minted = RoomTokens([ROOM_SECRET]).mint("*", 600, time.time())
    assert tokened.http("/ice", {"authorization": f"Bearer {minted}"})[0] == 200


# -- tokens, ICE push ------------------------------------------------------------------------------


def test_unauthorized_joins_and_then_a_valid_token(tokened: Appliance) -> None:
    room = new_room()
    now = time.time()
    good = RoomTokens([ROOM_SECRET]).mint(room, 600, now)
    body, _, mac = good.rpartition(".")
    bad_tokens = [
        {},
        {"token": RoomTokens([ROOM_SECRET]).mint("other-room", 600, now)},
        {"token": RoomTokens([ROOM_SECRET]).mint(room, 1, now - 60)},  # expired
        {"token": RoomTokens(["not-the-secret"]).mint(room, 600, now)},  # forged
        {"token": body + "." + mac[::-1]},  # tampered
    ]

    async def scenario() -> None:
        peer = await dial(tokened)
        for extra in bad_tokens:
            await peer.send({"type": "join", "room": room, **extra})
            await peer.expect("error", code="unauthorized", ref="join")
        await peer.usable()
        await peer.join(room, token=good)
        await peer.send({"type": "leave"})
        await peer.join(new_room(), token=RoomTokens([ROOM_SECRET]).mint("*", 60, time.time()))
        await peer.send({"type": "leave"})
        await peer.ws.close()
        with pytest.raises(SignalRejected) as refused:
            await SignalClient.connect(tokened.ws_url, room)
        assert refused.value.code == "unauthorized"

    run(scenario())


def test_ice_servers_are_pushed_before_they_expire(tokened: Appliance) -> None:
    async def scenario() -> None:
        room = new_room()
        peer = await dial(tokened)
        await peer.join(room, token=RoomTokens([ROOM_SECRET]).mint(room, 60, time.time()))
        joined = time.monotonic()
        first = peer.welcome["iceServers"][-1]["username"]
        async with asyncio.timeout(ICE_TTL + 2):
            push = json.loads(await peer.ws.recv())
        elapsed = time.monotonic() - joined
        assert push["type"] == "ice", push
        assert push["iceTtl"] == ICE_TTL
        assert 0.8 * ICE_TTL - 0.2 <= elapsed < ICE_TTL
        assert int(push["iceServers"][-1]["username"].split(":")[0]) > int(first.split(":")[0])
        await peer.ws.close()

    run(scenario())


# -- origins and client addresses ------------------------------------------------------------------


def test_origin_allow_list(main: Appliance) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await dial(main, origin=Origin("https://evil.example"))
        assert refused.value.response.status_code == 403
        for origin in (f"https://127.0.0.1:{main.port}", "https://app.example.com"):
            peer = await dial(main, origin=Origin(origin))
            await peer.usable()
            await peer.ws.close()

    run(scenario())


def test_origin_check_ignores_header_name_case(main: Appliance) -> None:
    async def scenario() -> None:
        opened: list[Peer] = []
        try:
            with pytest.raises(InvalidStatus):
                opened.append(await dial(main, additional_headers=[("origin", "https://evil.x")]))
        finally:
            for peer in opened:
                await peer.ws.close()

    run(scenario())


def test_x_forwarded_for_counts_only_from_trusted_proxies(tokened: Appliance) -> None:
    async def scenario() -> None:
        async def idle() -> bool:  # earlier tests' connections are gone: the count is ours
            return (await metrics(tokened))["signal_connections"] == 0

        await wait_until(idle)
        opened: list[Peer] = []

        async def connect(source: str, forwarded: str) -> None:
            peer = await dial(
                tokened,
                additional_headers={"X-Forwarded-For": forwarded},
                local_addr=(source, 0),
            )
            await peer.usable()  # the server's handler runs: the connection is counted
            opened.append(peer)

        try:
            # From 127.0.0.1 (not trusted) the header is ignored: all count as 127.0.0.1.
            for n in range(3):
                await connect("127.0.0.1", f"203.0.113.{n}")
            with pytest.raises(InvalidStatus) as refused:
                await connect("127.0.0.1", "203.0.113.99")
            assert refused.value.response.status_code == 429
            # From the trusted proxy 127.0.0.2 it is believed: distinct clients, separate caps.
            for n in range(4):
                await connect("127.0.0.2", f"198.51.100.{n}")
            for _ in range(2):
                await connect("127.0.0.2", "198.51.100.0")
            with pytest.raises(InvalidStatus):
                await connect("127.0.0.2", "198.51.100.0")
        finally:
            for peer in opened:
                await peer.ws.close()

    run(scenario())


def test_client_address() -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address("198.51.100.7", "1.2.3.4", proxies) == "198.51.100.7"
    assert client_address("198.51.100.7", None, proxies) == "198.51.100.7"
    assert client_address("10.0.0.1", "1.2.3.4, 10.0.0.9", proxies) == "1.2.3.4"
    assert client_address("10.0.0.1", "6.6.6.6, 1.2.3.4", proxies) == "1.2.3.4"
    assert client_address("10.0.0.1", "10.0.0.2, 10.0.0.3", proxies) == "10.0.0.1"
    assert client_address("10.0.0.1", "not-an-ip", proxies) == "10.0.0.1"
    assert client_address("10.0.0.1", " 2001:db8::1 ", proxies) == "2001:db8::1"
    assert client_address("10.0.0.1", "1.2.3.4", []) == "10.0.0.1"


# -- the TURN credentials in welcome ---------------------------------------------------------------


def test_welcome_credentials_allocate_on_our_turn_and_relay(main: Appliance) -> None:
    async def scenario() -> None:
        async with room_of(main, 1) as (alice,):
            turn = next(s for s in alice.welcome["iceServers"] if "username" in s)
        server = ("127.0.0.1", main.turn_port)
        loop = asyncio.get_running_loop()
        received: asyncio.Future[tuple[bytes, Any]] = loop.create_future()

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if not received.done():
                    received.set_result((data, addr))

        sink, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
        try:
            for transport in ("udp", "tcp"):
                relay, _ = await create_turn_endpoint(
                    asyncio.DatagramProtocol,
                    server,
                    turn["username"],
                    turn["credential"],
                    transport=transport,
                )
                relayed = relay.get_extra_info("sockname")
                assert relayed[0] == "127.0.0.1"
                if transport == "udp":
                    relay.sendto(b"through the relay", sink.get_extra_info("sockname"))
                    data, source = await asyncio.wait_for(received, STEP)
                    assert (data, tuple(source)) == (b"through the relay", tuple(relayed))
                relay.close()
            with pytest.raises(stun.TransactionFailed, match="401"):
                await create_turn_endpoint(
                    asyncio.DatagramProtocol, server, turn["username"], "wrong", transport="tcp"
                )
        finally:
            sink.close()

    run(scenario())
