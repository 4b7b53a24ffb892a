"""The signaling wire contract (``docs/signaling-protocol.md``) against the real appliance.

Two appliances run as subprocesses on free loopback ports (``python -m secureconnect run signal
turn``): *main* (WSS, open rooms, small limits so that every error is cheap to provoke, a 3 s
resume grace) and *token* (plain WS, ``auth = token``, ``ice_ttl = 6`` so that an ``ice`` push
comes within the test, three connections per client address, 127.0.0.2 a trusted proxy). Clients
are the real ``websockets`` asyncio client, or our ``SignalClient``. Every wait is bounded; each
test runs its scenario under ``asyncio.run`` with an overall timeout. The appliances are fixtures
in ``conftest.py``, the helpers in ``tests/support/signal_peers.py``; the HTTP side is in
``test_signal_http.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from signal_peers import (
    GRACE,
    PEER_ID,
    STEP,
    Appliance,
    Message,
    away_rises,
    dial,
    metrics,
    new_room,
    room_of,
    run,
)
from websockets.exceptions import ConnectionClosed

from secureconnect.signal.client import SignalClient, SignalClosed

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
        assert await bob.expect("signal") == {
            "type": "signal",
            "from": alice.id,
            "data": data,
            "seq": 1,
        }
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
        for n in range(120):  # the burst is 2 * rate_limit = 40, then 20/s
            await peer.send({"type": "ping", "id": n})
        replies = [await peer.recv() for _ in range(120)]
        limited = [r for r in replies if r["type"] == "error"]
        assert {r["code"] for r in limited} == {"rate-limited"}
        assert 1 <= len(limited) <= 80  # fewer when the sender was slow and tokens refilled
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
            await alice.expect_within(GRACE + STEP, "peer-left", peer=old_id)
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
            SignalClient.connect(main.ws_url, room, ssl=main.ssl, backoff=5.0) as bob,
        ):
            assert (await alice.receive())["type"] == "peer-joined"
            assert alice.peers == (bob.peer,)
            assert bob.peers == (alice.peer,)
            old_id = bob.peer
            assert old_id is not None
            before = (await metrics(main))["signal_sessions_away"]
            assert bob.websocket is not None
            # Bob reconnects after 2.5-5 s (backoff=5.0): time for what follows to happen
            # while he is away, and for his resume to fit in the grace period of 8 s.
            bob.websocket.transport.abort()
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
                for seq, data in enumerate(("one", "two"), 1):
                    assert await bob.receive() == {
                        "type": "signal",
                        "from": alice.peer,
                        "data": data,
                        "seq": seq,
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
