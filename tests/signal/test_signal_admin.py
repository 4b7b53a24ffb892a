"""Operators' view of signaling (#17): listing the sessions attached here and ending one.

First the sans-IO hub (:meth:`SignalHub.kill`, when sessions were welcomed), then a real
:class:`SignalServer` over WSS on loopback with two real WebSocket clients, driven through the
two methods the admin server calls (``admin_sessions``, ``admin_kill``).
"""

from __future__ import annotations

import json
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trustme
from default_settings import http_settings, hub_settings
from hub_outbound import by_connection
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import ClientConnection, connect

from secureconnect.signal.backplane import MemoryBackplane
from secureconnect.signal.client import FINAL_CLOSE_CODES
from secureconnect.signal.http import HttpRoutes
from secureconnect.signal.hub import CLOSE_KILLED, Outbound, SignalHub
from secureconnect.signal.ice import IceConfig
from secureconnect.signal.serve import SignalServer
from secureconnect.signal.serve_admission import AdmissionLimits

Message = dict[str, Any]
T0 = 1000.0
KILLED = {"type": "error", "code": "killed", "message": "ended by the operator"}
STEP = 5.0  # seconds any single expected message may take


def ice(peer: str, now: float) -> tuple[list[dict[str, Any]], int]:
    return [], 3600


class Hub:
    """A hub plus helpers that sort what it returns by connection, and record closes."""

    def __init__(self) -> None:
        self.hub = SignalHub(hub_settings(resume_grace=30.0), ice, rng=random.Random(3))
        self.closes: dict[int, int] = {}

    def collect(self, outbound: list[Outbound]) -> dict[int, list[Message]]:
        return by_connection(outbound, self.closes)

    def send(self, conn: int, message: Message, now: float = T0) -> dict[int, list[Message]]:
        return self.collect(self.hub.receive(conn, json.dumps(message), now, now))

    def join(self, conn: int, now: float = T0, **extra: Any) -> Message:
        self.hub.open(conn, now)
        welcome = self.send(conn, {"type": "join", "room": "r", **extra}, now)[conn][0]
        assert welcome["type"] == "welcome"
        return welcome


def test_kill_ends_the_session_for_good() -> None:
    h = Hub()
    first = h.join(1)
    second = h.join(2, now=T0 + 2)
    session = h.hub.sessions[second["peer"]]
    assert (session.joined, session.resumed, session.conn) == (T0 + 2, False, 2)
    assert h.hub.sessions[first["peer"]].joined == T0

    out = h.collect(h.hub.kill(second["peer"], T0 + 5))
    assert out == {2: [KILLED], 1: [{"type": "peer-left", "peer": second["peer"]}]}
    assert h.closes == {2: CLOSE_KILLED}
    assert second["peer"] not in h.hub.sessions
    assert h.hub.local_rooms == {"r": {first["peer"]}}
    assert h.hub.metrics()['signal_errors_total{code="killed"}'] == 1
    # Frames still in flight from the killed connection are ignored.
    assert h.send(2, {"type": "signal", "to": first["peer"], "data": "late"}) == {}
    assert h.send(2, {"type": "ping", "id": 1}) == {}
    # Its connection ends: nothing more (no detach, no grace period, no second peer-left).
    assert h.collect(h.hub.closed(2, T0 + 6)) == {}
    assert h.collect(h.hub.handle_timeout(T0 + 60, T0 + 60)) == {}
    # Its resume secret is forgotten: a resume with it starts a new session.
    again = h.join(3, now=T0 + 7, resume=second["resume"])
    assert again["resumed"] is False
    assert again["peer"] != second["peer"]
    assert h.hub.sessions[again["peer"]].joined == T0 + 7
    backplane = h.hub.backplane
    assert isinstance(backplane, MemoryBackplane)
    assert set(backplane.rooms["r"]) == {first["peer"], again["peer"]}


def test_a_resumed_session_says_so_and_is_aged_from_its_resume() -> None:
    h = Hub()
    h.join(1)
    welcome = h.join(2)
    h.hub.closed(2, T0 + 1)
    resumed = h.join(3, now=T0 + 4, resume=welcome["resume"])
    assert resumed["resumed"] is True
    session = h.hub.sessions[welcome["peer"]]
    assert (session.conn, session.joined, session.resumed) == (3, T0 + 4, True)


def test_kill_of_a_peer_not_attached_here_changes_nothing() -> None:
    h = Hub()
    first = h.join(1)
    assert h.hub.kill("p-000000000000", T0) == []
    assert h.hub.kill("", T0) == []
    away = h.join(2)
    h.hub.closed(2, T0 + 1)  # away: in the room, but attached to no connection here
    assert h.hub.kill(away["peer"], T0 + 2) == []
    assert set(h.hub.sessions) == {first["peer"]}
    assert h.join(3, now=T0 + 3, resume=away["resume"])["resumed"] is True
    assert h.send(1, {"type": "ping", "id": 2}) == {1: [{"type": "pong", "id": 2}]}
    assert h.closes == {}


async def test_an_away_session_is_ended_in_the_directory() -> None:
    """The hub's kill only ends what is attached here; an away session (its connection
    dropped, its grace period running) is the backplane's to end: it leaves the room, whose
    peers hear ``peer-left``, and its resume secret is forgotten."""
    h = Hub()
    first = h.join(1)
    away = h.join(2)
    h.hub.closed(2, T0 + 1)
    backplane = h.hub.backplane
    assert await backplane.end_away(first["peer"], T0 + 2) == (False, [])  # attached
    assert await backplane.end_away("p-000000000000", T0 + 2) == (False, [])
    ended, events = await backplane.end_away(away["peer"], T0 + 2)
    assert ended
    out = h.collect(h.hub.apply(events, T0 + 2, T0 + 2))
    assert out == {1: [{"type": "peer-left", "peer": away["peer"]}]}
    assert await backplane.end_away(away["peer"], T0 + 3) == (False, [])  # gone already
    again = h.join(3, now=T0 + 3, resume=away["resume"])
    assert again["resumed"] is False
    assert again["peer"] != away["peer"]


def test_our_client_does_not_resume_after_a_kill() -> None:
    assert CLOSE_KILLED == 4002
    assert CLOSE_KILLED in FINAL_CLOSE_CODES


# -- a real server -------------------------------------------------------------------------------


@asynccontextmanager
async def signal_server() -> AsyncIterator[tuple[SignalServer, ssl.SSLContext]]:
    """A SignalServer with TLS on an ephemeral loopback port; the client's TLS context."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    hub = SignalHub(hub_settings(), ice)
    routes = HttpRoutes(
        ice=cast("IceConfig", None), health=dict, metrics=dict, settings=http_settings()
    )
    limits = AdmissionLimits(
        max_connections=16, max_pending=16, max_pending_per_ip=16, handshake_timeout=5.0
    )
    server = SignalServer(
        hub,
        routes,
        addresses=("127.0.0.1",),
        port=0,
        limits=limits,
        tls_context=lambda: server_ctx,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server, client_ctx
        nursery.cancel_scope.cancel()


async def expect(ws: ClientConnection, kind: str) -> Message:
    """The next message, which must be of type ``kind``."""
    with trio.fail_after(STEP):
        message: Message = json.loads(await ws.recv())
    assert message["type"] == kind, message
    return message


async def test_admin_lists_and_kills_live_sessions() -> None:
    async with signal_server() as (server, client_ctx):
        _, host, port = server.bound[0]
        url = f"wss://{host}:{port}/ws"
        async with (
            connect(url, ssl=client_ctx) as one,
            connect(url, ssl=client_ctx) as two,
        ):
            await one.send(json.dumps({"type": "join", "room": "lobby"}))
            first = await expect(one, "welcome")
            await two.send(json.dumps({"type": "join", "room": "lobby"}))
            second = await expect(two, "welcome")
            await expect(one, "peer-joined")

            listed = await server.admin_sessions(None)
            assert sorted(str(s["peer"]) for s in listed) == sorted([first["peer"], second["peer"]])
            for entry in listed:
                assert entry["kind"] == "signal"
                assert entry["room"] == "lobby"
                assert entry["address"] == "127.0.0.1"
                assert entry["resumed"] is False
                assert isinstance(entry["age"], float)
                assert entry["age"] >= 0
            (only,) = await server.admin_sessions(second["peer"])
            assert only["peer"] == second["peer"]
            assert await server.admin_sessions("p-000000000000") == []

            assert await server.admin_kill(allocation="127.0.0.1:5000") == 0
            assert await server.admin_kill() == 0
            assert await server.admin_kill(peer="p-000000000000") == 0
            assert len(await server.admin_sessions(None)) == 2

            assert await server.admin_kill(peer=second["peer"]) == 1
            assert await expect(two, "error") == KILLED
            with trio.fail_after(STEP), pytest.raises(ConnectionClosed):
                await two.recv()
            assert two.close_code == CLOSE_KILLED
            left = await expect(one, "peer-left")
            assert left["peer"] == second["peer"]
            listed = await server.admin_sessions(None)
            assert [s["peer"] for s in listed] == [first["peer"]]
            assert await server.admin_kill(user=second["peer"]) == 0  # already gone

            # A session whose connection just dropped is ended too: it cannot resume.
            async with connect(url, ssl=client_ctx) as three:
                await three.send(json.dumps({"type": "join", "room": "lobby"}))
                third = await expect(three, "welcome")
                await expect(one, "peer-joined")
            with trio.fail_after(STEP):
                while third["peer"] in server.hub.sessions:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert await server.admin_kill(peer=third["peer"]) == 1
            assert (await expect(one, "peer-left"))["peer"] == third["peer"]
            assert await server.admin_kill(peer=third["peer"]) == 0
            async with connect(url, ssl=client_ctx) as back:
                join = {"type": "join", "room": "lobby", "resume": third["resume"]}
                await back.send(json.dumps(join))
                fresh = await expect(back, "welcome")
                assert fresh["resumed"] is False
                assert fresh["peer"] != third["peer"]
            assert (await expect(one, "peer-joined"))["peer"] == fresh["peer"]

            # ``user`` means the peer id here too.
            assert await server.admin_kill(user=first["peer"]) == 1
            assert await expect(one, "error") == KILLED
            with trio.fail_after(STEP), pytest.raises(ConnectionClosed):
                await one.recv()
            assert one.close_code == CLOSE_KILLED
        # The addresses of ended connections are dropped with them (once the server's handlers
        # have finished the closing handshakes: nothing to wait on but the dict itself).
        with trio.fail_after(STEP):
            while server._addresses:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert await server.admin_sessions(None) == []
