"""The signaling endpoint's HTTP side and its neighbours against the real appliance: /healthz,
/metrics, /ice (open and token mode), the origin allow-list, X-Forwarded-For, and the TURN
credentials from welcome allocating on our TURN. Fixtures in conftest.py, helpers in
signal_peers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import time
from typing import Any

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from prometheus_client.parser import text_string_to_metric_families
from signal_peers import (
    ICE_TTL,
    ROOM_SECRET,
    STEP,
    Appliance,
    Peer,
    cli_room_token,
    dial,
    metrics,
    new_room,
    room_of,
    run,
    wait_until,
)
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from secureconnect.signal.client import SignalClient, SignalRejected
from secureconnect.signal.http import client_address
from secureconnect.signal.tokens import RoomTokens

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


def test_ice_endpoint_is_rate_limited_per_client_address(main: Appliance) -> None:
    """signal.rate_limit=20 here: a burst of 40, then 429s for that address only. Bounded by
    the refill: however slow the machine, no more than 40 + 20/s x elapsed requests pass."""
    started = time.monotonic()
    passed = 0
    for _ in range(400):
        status = main.http("/ice", source="127.0.0.3")[0]
        if status == 429:
            break
        assert status == 200
        passed += 1
    else:
        raise AssertionError("400 requests and no 429")
    assert 40 <= passed <= 41 + 20 * (time.monotonic() - started)
    assert main.http("/ice")[0] == 200  # another address keeps its own budget


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
        asked = time.monotonic()  # the server welcomes after this: its push comes 4.8 s later
        await peer.join(room, token=RoomTokens([ROOM_SECRET]).mint(room, 60, time.time()))
        first = peer.welcome["iceServers"][-1]["username"]
        async with asyncio.timeout(ICE_TTL + 2):
            push = json.loads(await peer.ws.recv())
        assert push["type"] == "ice", push
        assert push["iceTtl"] == ICE_TTL
        assert time.monotonic() - asked >= 0.8 * ICE_TTL - 0.1
        # Pushed at 0.8 of the TTL (and the next 1 s tick), by the server's own clock: minted
        # 4.8-5.8 s apart, so the expiries (whole seconds) are 4 to 6 apart. The client's clock
        # would add the delays of delivery on a loaded machine.
        apart = int(push["iceServers"][-1]["username"].split(":")[0]) - int(first.split(":")[0])
        assert 0.8 * ICE_TTL - 1 <= apart <= ICE_TTL
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


WEBSOCKETS_REFUSED = 'signal_connections_refused_total{reason="websockets-per-ip"}'


def test_a_429_over_the_per_address_websocket_cap_is_counted(tokened: Appliance) -> None:
    """signal.max_connections_per_ip=3 here: the fourth WebSocket from one address is answered
    429 and counted in /metrics; once one closes, its slot is free again."""

    async def scenario() -> None:
        async def idle() -> bool:
            return (await metrics(tokened))["signal_connections"] == 0

        await wait_until(idle)
        before = (await metrics(tokened))[WEBSOCKETS_REFUSED]
        opened: list[Peer] = []
        try:
            for _ in range(3):
                peer = await dial(tokened, local_addr=("127.0.0.5", 0))
                await peer.usable()
                opened.append(peer)
            for _ in range(2):
                with pytest.raises(InvalidStatus) as refused:
                    await dial(tokened, local_addr=("127.0.0.5", 0))
                assert refused.value.response.status_code == 429
            assert (await metrics(tokened))[WEBSOCKETS_REFUSED] == before + 2
            await opened.pop().ws.close()

            async def admitted_again() -> bool:
                try:
                    peer = await dial(tokened, local_addr=("127.0.0.5", 0))
                except InvalidStatus:
                    return False
                opened.append(peer)
                return True

            await wait_until(admitted_again)
        finally:
            for peer in opened:
                await peer.ws.close()

    run(scenario())


def test_a_request_with_a_duplicate_header_is_a_counted_400(tokened: Appliance) -> None:
    """Two Origin headers are refused (one could smuggle a foreign origin past the check), and
    the 400 is counted with the other malformed requests."""
    before = tokened.metrics()["signal_http_bad_requests_total"]
    conn = http.client.HTTPConnection("127.0.0.1", tokened.port, timeout=STEP)
    try:
        conn.putrequest("GET", "/ws", skip_accept_encoding=True)
        for header, value in (
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
            ("Sec-WebSocket-Version", "13"),
            ("Origin", "http://127.0.0.1"),
            ("Origin", "https://evil.example"),
        ):
            conn.putheader(header, value)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 400
        assert json.loads(response.read()) == {"error": "duplicate header"}
    finally:
        conn.close()
    assert tokened.metrics()["signal_http_bad_requests_total"] == before + 1


def test_metrics_only_for_metrics_from(tokened: Appliance) -> None:
    """/metrics answers loopback and private networks by default (signal.metrics_from), and
    judges the client a trusted proxy names, not the proxy; /healthz stays public."""
    status, _ = tokened.http("/metrics")
    assert status == 200
    public = {"X-Forwarded-For": "203.0.113.5"}
    status, body = tokened.http("/metrics", public, source="127.0.0.2")  # the trusted proxy
    assert status == 403
    assert b"metrics_from" in body
    status, _ = tokened.http("/metrics", {"X-Forwarded-For": "10.1.2.3"}, source="127.0.0.2")
    assert status == 200
    status, _ = tokened.http("/healthz", public, source="127.0.0.2")
    assert status == 200


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
