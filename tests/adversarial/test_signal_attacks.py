"""Regression tests for attacks on the signaling endpoint, each against a real appliance on
loopback (WSS, raw TLS, raw TCP) and read from outside: what the victims see, /metrics, and the
appliance's own /proc entries (descriptors, resident memory).

1. A lone surrogate (``"\\ud800"``) in a message cannot be sent as UTF-8: it must be refused on
   the way in, never reach (or kick) a peer, not even through the resume buffer.
2. Half-open connections (slowloris) are capped per client address and in total, time out, and
   give their descriptors and memory back.
3. A malformed request target or ``Origin`` is a 400, not a 500 with a traceback.
4. ``NaN``/``Infinity`` (and numbers that overflow to them) are not JSON: refused on the way in.
5. ``/ice`` is no more open than signaling: a token when ``signal.auth = "token"``.

Plus what a peer with a valid connection could cost the others through the hub: deep nesting,
a receiver that never reads (the outbox is bounded in bytes), joins against many rooms.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import trio.testing
from appliance import Running, free_port, run_appliance
from default_settings import http_settings, hub_settings
from signal_peers import (
    STEP,
    Appliance,
    Peer,
    dial,
    new_room,
    room_of,
    run,
    wait_until,
)
from websockets.exceptions import ConnectionClosed

from secureconnect.signal.http import HttpRoutes
from secureconnect.signal.hub import Outbound, SignalHub
from secureconnect.signal.ice import IceConfig
from secureconnect.signal.tokens import RoomTokens

SECRET = "adversarial-room-secret"
GRACE = 8.0  # a resume over TLS on a loaded machine fits in it
MIB = 1024 * 1024
ATTACKER = "127.0.0.1"  # the half-open connections come from here ...
BYSTANDER = "127.0.0.2"  # ... a fresh client from here ...
OBSERVER = "127.0.0.3"  # ... and the test reads /metrics from here


@dataclass
class Target:
    """An appliance under attack and its process, watched through /proc."""

    app: Appliance
    running: Running

    @property
    def pid(self) -> int:
        return self.running.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        """Resident memory in bytes (VmRSS)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None
        return int(match.group(1)) * 1024

    def log(self) -> str:
        return self.running.log_text()

    def metrics(self) -> dict[str, float]:
        """/metrics, asked from OBSERVER (ATTACKER's handshake slots may be full)."""
        status, body = self.app.http("/metrics", source=OBSERVER)
        assert status == 200
        samples: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


@contextlib.contextmanager
def target(workdir: Path, *settings: str, tls: bool = True) -> Iterator[Target]:
    port = free_port(socket.SOCK_STREAM)
    state = workdir / "state"
    with run_appliance(
        workdir,
        "signal",
        state_dir=state,
        extra_args=("--log-level", "info"),
        settings=(
            f"signal.port={port}",
            f"signal.tls={str(tls).lower()}",
            "general.drain_timeout=0.5",
            *settings,
        ),
        log_file=workdir / "stderr.log",
    ) as running:
        yield Target(Appliance(port, 0, state, tls), running)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """Default limits, except a short resume grace."""
    with target(tmp_path_factory.mktemp("app"), f"signal.resume_grace={GRACE}") as running:
        yield running


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """Small connection caps and a short handshake deadline."""
    with target(
        tmp_path_factory.mktemp("capped"),
        "signal.max_connections=40",
        "signal.max_pending_handshakes=24",
        "signal.max_pending_handshakes_per_ip=8",
        "signal.handshake_timeout=2",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with target(
        tmp_path_factory.mktemp("tokened"),
        "signal.auth=token",
        f'signal.token_secrets=["{SECRET}"]',
        tls=False,
    ) as running:
        yield running


async def no_message(peer: Peer, wait: float = 0.3) -> None:
    """Nothing arrives for ``peer`` within ``wait`` seconds (the connection stays open)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            raise AssertionError(f"unexpected: {await peer.ws.recv()!r}")


# -- 1. lone surrogates --------------------------------------------------------------------------

SURROGATES = (
    '"\\ud800"',  # a lone high surrogate
    '"x\\udfff"',  # a lone low surrogate
    '{"\\udbff": 1}',  # in a key
    '[1, {"a": ["ok", "\\ud83d"]}]',  # nested, a high surrogate without its pair
)


def test_lone_surrogates_are_refused_and_never_reach_the_peer(app: Target) -> None:
    async def scenario() -> None:
        async with room_of(app.app, 2) as (mallory, victim):
            for data in SURROGATES:
                await mallory.send(f'{{"type":"signal","to":"{victim.id}","data":{data}}}')
                await mallory.expect("error", code="bad-json", ref="signal")
            await mallory.send('{"type":"ping","id":"\\ud800"}')
            await mallory.expect("error", code="bad-json", ref="ping")
            await mallory.usable()
            # A surrogate pair is one character (U+1F600): valid, and routed as such.
            await mallory.send(f'{{"type":"signal","to":"{victim.id}","data":"\\ud83d\\ude00"}}')
            await victim.expect("signal", data="\U0001f600")
            await mallory.send({"type": "signal", "to": victim.id, "data": "later"})
            await victim.expect("signal", data="later")
            await victim.usable()
        assert "Traceback" not in app.log()

    run(scenario())


def test_a_lone_surrogate_for_an_away_peer_does_not_kick_it_on_resume(app: Target) -> None:
    async def scenario() -> None:
        async with room_of(app.app, 2) as (mallory, victim):
            room = mallory.welcome["room"]
            victim.kill()
            await _wait_away(app)
            await mallory.send(f'{{"type":"signal","to":"{victim.id}","data":"\\udc00"}}')
            await mallory.expect("error", code="bad-json", ref="signal")
            await mallory.send({"type": "signal", "to": victim.id, "data": "while away"})
            await mallory.usable()
            victim.ws = (await dial(app.app)).ws
            await victim.join(room, resume=victim.welcome["resume"])
            assert victim.welcome["resumed"] is True
            await victim.expect("signal", data="while away")
            await victim.usable()
            await asyncio.sleep(0.3)
            await victim.usable()  # still connected after the replay
        assert "Traceback" not in app.log()

    run(scenario())


async def _wait_away(app: Target) -> None:
    """Until the server has noticed the killed connection (its session is away)."""

    async def away() -> bool:
        return (await asyncio.to_thread(app.metrics))["signal_sessions_away"] >= 1

    await wait_until(away)


def test_lone_surrogate_pings_neither_close_nor_flood_the_log(app: Target) -> None:
    async def scenario() -> None:
        before = len(app.log())
        peer = await dial(app.app)
        for n in range(60):
            await peer.send(f'{{"type":"ping","id":"{n}\\ud800"}}')
            await peer.expect("error", code="bad-json", ref="ping")
        await peer.usable()
        await peer.ws.close()
        assert len(app.log()) - before < 2048
        assert "Traceback" not in app.log()

    run(scenario())


# -- 4. NaN and Infinity ---------------------------------------------------------------------------

NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e999", "-1E400")


def test_non_finite_numbers_are_refused(app: Target) -> None:
    async def scenario() -> None:
        async with room_of(app.app, 2) as (mallory, victim):
            for number in NON_FINITE:
                # refused while parsing, before the type is known: no "ref"
                await mallory.send(f'{{"type":"ping","id":{number}}}')
                await mallory.expect("error", code="bad-json")
                frame = f'{{"type":"signal","to":"{victim.id}","data":{{"x":[{number}]}}}}'
                await mallory.send(frame)
                await mallory.expect("error", code="bad-json")
            await mallory.usable()
            await mallory.send({"type": "signal", "to": victim.id, "data": 1.5e308})
            await victim.expect("signal", data=1.5e308)  # large but finite: still routed
            await victim.usable()

    run(scenario())


# -- deep nesting ----------------------------------------------------------------------------------


def test_deeply_nested_messages_are_refused(app: Target) -> None:
    """Nesting near the interpreter's recursion limit parses on one path and fails to encode on
    another (another peer's, or the resume replay): the contract caps it at 32 levels."""

    async def scenario() -> None:
        async with room_of(app.app, 2) as (mallory, victim):
            for depth in (40, 900):
                data = "[" * depth + "]" * depth
                await mallory.send(f'{{"type":"signal","to":"{victim.id}","data":{data}}}')
                await mallory.expect("error", code="bad-json", ref="signal")
            shallow = {"a": [[[{"b": [1, 2, {"c": None}]}]]]}
            await mallory.send({"type": "signal", "to": victim.id, "data": shallow})
            await victim.expect("signal", data=shallow)
            await victim.usable()

    run(scenario())


# -- 3. malformed request target and Origin --------------------------------------------------------


def raw_request(app: Appliance, head: str) -> int:
    """Send ``head`` (request line and headers) over TLS from OBSERVER; the status code."""
    context = app.ssl
    assert context is not None
    with (
        socket.create_connection(
            ("127.0.0.1", app.port), timeout=STEP, source_address=(OBSERVER, 0)
        ) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(head.encode("latin-1"))
        answer = b""
        while b"\r\n" not in answer:
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def test_malformed_target_and_origin_are_a_400_without_a_traceback(app: Target) -> None:
    host = f"Host: 127.0.0.1:{app.app.port}\r\n"
    assert raw_request(app.app, f"GET //[ HTTP/1.1\r\n{host}\r\n") == 400
    assert (
        raw_request(app.app, f"GET /ws HTTP/1.1\r\n{host}{UPGRADE}Origin: http://[\r\n\r\n") == 400
    )
    assert raw_request(app.app, f"GET /ice?x=1 HTTP/1.1\r\n{host}\r\n") == 200
    assert app.app.http("/healthz", source=OBSERVER)[0] == 200

    async def still_serves() -> None:
        peer = await dial(app.app)
        await peer.join(new_room())
        await peer.ws.close()

    run(still_serves())
    log = app.log()
    assert "Traceback" not in log
    assert "signal-bad-request" in log


# -- 5. /ice and tokens ----------------------------------------------------------------------------


def test_ice_needs_a_token_exactly_when_joins_do(app: Target, tokened: Target) -> None:
    assert app.app.http("/ice?service=turn", source=OBSERVER)[0] == 200  # open mode: open
    assert tokened.app.http("/ice?service=turn")[0] == 401
    assert tokened.app.http("/ice", {"Authorization": "Bearer v1.e30.AAAA"})[0] == 401
    forged = RoomTokens(["not-the-secret"]).mint("*", 600, time.time())
    assert tokened.app.http(f"/ice?token={forged}")[0] == 401
    expired = RoomTokens([SECRET]).mint("*", 1, time.time() - 60)
    assert tokened.app.http(f"/ice?token={expired}")[0] == 401
    good = RoomTokens([SECRET]).mint("some-room", 600, time.time())
    assert tokened.app.http(f"/ice?token={good}")[0] == 200
    assert tokened.app.http("/ice", {"Authorization": f"Bearer {good}"})[0] == 200

    async def join_needs_one_too() -> None:
        peer = await dial(tokened.app)
        await peer.send({"type": "join", "room": "some-room"})
        await peer.expect("error", code="unauthorized")
        await peer.join("some-room", token=good)
        await peer.ws.close()

    run(join_needs_one_too())


# -- 2. slowloris ----------------------------------------------------------------------------------


def half_open(count: int, source: str, port: int) -> list[socket.socket]:
    """``count`` TCP connections to the signaling port that never send a byte."""
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.settimeout(STEP)
        sock.connect(("127.0.0.1", port))
        held.append(sock)
    return held


def wait_for(check: Any, what: str, timeout: float = STEP) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


async def _join_from(app: Appliance, source: str) -> float:
    started = time.monotonic()
    peer = await dial(app, local_addr=(source, 0))
    await peer.join(new_room())
    await peer.ws.close()
    return time.monotonic() - started


def test_half_open_connections_are_capped_per_address_and_give_everything_back(
    app: Target,
) -> None:
    run(_join_from(app.app, BYSTANDER))  # warm up: lazy imports, first TLS context
    fds_before, rss_before = app.fds(), app.rss()
    held = half_open(300, ATTACKER, app.app.port)
    try:
        # The default cap: 16 handshakes per address; the rest are closed at once.
        wait_for(lambda: app.fds() >= fds_before + 16, "the connections accepted")
        wait_for(lambda: app.fds() <= fds_before + 16 + 4, "over-cap connections closed")
        time.sleep(0.3)
        fds_held, rss_held = app.fds(), app.rss()
        assert fds_held <= fds_before + 16 + 4
        took = run(_join_from(app.app, BYSTANDER))  # a fresh client is served meanwhile
        assert took < STEP
        refused = app.metrics()['signal_connections_refused_total{reason="pending-per-ip"}']
        assert refused >= 300 - 16 - 4
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: app.fds() <= fds_before, "descriptors back to the baseline")
    time.sleep(0.5)
    rss_after = app.rss()
    print(  # the figures for the record (pytest -s)
        f"\nslowloris x300: fds {fds_before} -> {fds_held} -> {app.fds()}; "
        f"RSS {rss_before / MIB:.1f} -> {rss_held / MIB:.1f} -> {rss_after / MIB:.1f} MiB"
    )
    assert rss_after - rss_before < 16 * MIB


def test_half_open_connections_are_capped_in_total_and_time_out(capped: Target) -> None:
    fds_before = capped.fds()
    started = time.monotonic()
    held = [s for n in range(10, 16) for s in half_open(8, f"127.0.0.{n}", capped.app.port)]
    try:
        # Meanwhile every new connection is refused (the observer's too: read /metrics later).
        wait_for(lambda: capped.fds() >= fds_before + 24, "the connections accepted")
        time.sleep(0.3)
        assert capped.fds() <= fds_before + 24 + 4, "total handshake cap"
        # signal.handshake_timeout = 2: the server hangs up on every one of them
        wait_for(lambda: capped.fds() <= fds_before, "handshake deadline", timeout=2 + STEP)
        assert time.monotonic() - started >= 1.5
        for sock in held:
            with contextlib.suppress(OSError):
                assert sock.recv(1) == b""
        samples = capped.metrics()
        assert samples['signal_connections_refused_total{reason="pending"}'] >= 48 - 24 - 4
        assert samples["signal_handshake_timeouts_total"] >= 20
    finally:
        for sock in held:
            sock.close()


def test_open_connections_are_capped_in_total(capped: Target) -> None:
    async def scenario() -> None:
        peers = [await dial(capped.app, local_addr=(f"127.0.0.{20 + n % 4}", 0)) for n in range(38)]
        await peers[-1].usable()
        fds = capped.fds()
        extra = await asyncio.to_thread(half_open, 6, "127.0.0.30", capped.app.port)
        try:
            await asyncio.sleep(0.5)
            assert capped.fds() <= fds + 2 + 1  # 40 in all
        finally:
            for sock in extra:
                sock.close()
        for peer in peers:
            await peer.ws.close()
        samples = await asyncio.to_thread(capped.metrics)
        assert samples['signal_connections_refused_total{reason="connections"}'] >= 3
        late = await dial(capped.app, local_addr=("127.0.0.31", 0))
        await late.join(new_room())
        await late.ws.close()

    run(scenario())


# -- a receiver that never reads -------------------------------------------------------------------


async def _never_reading(app: Appliance, room: str) -> Peer:
    """A peer whose socket buffer is tiny and whose client stops reading at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", app.port))
    peer = await dial(app, sock=sock, max_queue=1)
    await peer.join(room)
    peer.ws.transport.pause_reading()
    return peer


def test_a_receiver_that_never_reads_costs_a_bounded_amount_of_memory(app: Target) -> None:
    """Peers that never read make the server queue what is sent to them; the queue is bounded
    in bytes (not only in messages: 256 x 64 KiB would be 16 MiB per receiver)."""
    pairs = 3
    chunk = "x" * 60_000

    async def flood(sender: Peer, to: str) -> None:
        for _ in range(200):  # under the 256 messages at which the old outbox gave up
            await sender.send({"type": "signal", "to": to, "data": chunk})
            await asyncio.sleep(0.021)  # under signal.rate_limit (50/s): every one is routed

    async def scenario() -> None:
        rss_before = app.rss()
        senders, sinks = [], []
        for _ in range(pairs):
            room = new_room()
            sender = await dial(app.app)
            await sender.join(room)
            sink = await _never_reading(app.app, room)
            await sender.expect("peer-joined", peer=sink.id)
            senders.append(sender)
            sinks.append(sink)
        await asyncio.gather(*(flood(s, k.id) for s, k in zip(senders, sinks, strict=True)))
        for sender in senders:
            # The never-reader is disconnected; after the resume grace the room hears it left,
            # and what is still sent to it is answered "unknown-peer".
            await sender.usable(skip=("peer-left", "error"))
        grown = app.rss() - rss_before
        print(f"\n{pairs} receivers that never read, 200 x 60 kB each: RSS +{grown / MIB:.1f} MiB")
        assert grown < 12 * MIB
        samples = await asyncio.to_thread(app.metrics)
        assert samples["signal_slow_closed_total"] >= pairs
        for sink in sinks:
            sink.kill()
        for sender in senders:
            with contextlib.suppress(ConnectionClosed):
                await sender.ws.close()

    run(scenario(), timeout=60)


# -- hub: joins against many rooms -----------------------------------------------------------------


def _join_cost(rooms: int, joins: int = 300) -> float:
    """Seconds for ``joins`` joins into fresh rooms on a hub that already has ``rooms`` rooms."""
    settings = hub_settings(rate_limit=1e9, rate_burst=1e9)
    hub = SignalHub(settings, lambda p, n: ([], 3600), rng=random.Random(1))
    for conn in range(rooms):
        hub.open(conn, 0.0)
        hub.receive(conn, json.dumps({"type": "join", "room": f"r{conn}"}), 0.0, 0.0)
    frames = [json.dumps({"type": "join", "room": f"new{n}"}) for n in range(joins)]
    for n in range(joins):
        hub.open(rooms + n, 0.0)
    # CPU time of this thread, without the collector: what the joins cost, not what a loaded
    # machine's scheduler or a collection of the 20,000 rooms adds to the wall clock.
    collecting = gc.isenabled()
    gc.disable()
    try:
        started = time.thread_time()
        for n, frame in enumerate(frames):
            hub.receive(rooms + n, frame, 0.0, 0.0)
        return time.thread_time() - started
    finally:
        if collecting:
            gc.enable()


def test_a_join_does_not_cost_more_with_every_other_room() -> None:
    """A new peer id was checked against every room (O(rooms) per join: quadratic overall)."""
    few = min(_join_cost(10) for _ in range(3))
    many = min(_join_cost(20_000) for _ in range(3))
    assert many < 5 * few + 0.02, (few, many)


# -- the second line of defence: encoding --------------------------------------------------------


async def test_an_unencodable_message_is_dropped_and_the_recipient_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Parsing keeps lone surrogates and NaN out, so this is white-box: should such a message
    ever be routed, the send path and the resume buffer drop it (counted, logged once) and the
    recipient's connection carries on."""
    # Imported here: the rest of the module runs against any version of the server.
    from secureconnect.signal.backplane import MemoryBackplane  # noqa: PLC0415
    from secureconnect.signal.serve import SignalServer, _Outbox  # noqa: PLC0415
    from secureconnect.signal.serve_admission import AdmissionLimits  # noqa: PLC0415

    hub = SignalHub(hub_settings(), lambda p, n: ([], 3600))
    routes = HttpRoutes(
        ice=cast("IceConfig", None), health=dict, metrics=list, settings=http_settings()
    )
    limits = AdmissionLimits(
        max_connections=8, max_pending=8, max_pending_per_ip=8, handshake_timeout=5.0
    )
    server = SignalServer(hub, routes, addresses=("127.0.0.1",), port=0, limits=limits)
    hub.open(1, 0.0)
    stream = trio.testing.MemorySendStream()  # never written: nothing here overflows
    server._outboxes[1] = outbox = _Outbox(cast("trio.abc.Stream", stream))
    bad: list[dict[str, Any]] = [
        {"type": "signal", "data": "\ud800"},
        {"type": "pong", "id": float("nan")},
    ]
    with caplog.at_level(logging.WARNING, logger="secureconnect.signal"):
        server._dispatch([Outbound(1, message) for message in [*bad, *bad]])
        server._dispatch([Outbound(1, {"type": "pong", "id": 1})])
    assert outbox.receive.receive_nowait() == b'{"type":"pong","id":1}'
    assert server._outboxes[1] is outbox  # not closed
    assert server.metrics()["signal_messages_unencodable_total"] == 4
    assert len([r for r in caplog.records if "unencodable" in r.getMessage()]) == 1
    # An away peer's buffer: dropped and counted, not raised on the sender's path.
    hub.receive(1, json.dumps({"type": "join", "room": "r"}), 0.0, 0.0)
    directory = hub.backplane
    assert isinstance(directory, MemoryBackplane)
    member = next(iter(directory.rooms["r"].values()))
    hub.closed(1, 1.0)
    assert directory._deliver(member, bad[0]) == []
    assert directory._deliver(member, bad[1]) == []
    assert not member.box
    assert directory.counters.unencodable == 2
