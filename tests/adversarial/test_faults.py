"""Fault tests against the real appliance (``secureconnect run turn signal``) on loopback: clients
that stop reading, and a step of the wall clock. Each is watched from outside - what the other
clients see, /metrics, the process's descriptors and resident memory in /proc - and bounded by
socket timeouts and polling deadlines.

1. A TURN client over TCP or TLS that stops reading while a peer floods its allocation (20,000
   datagrams of 1,000 bytes): the server queues at most ``STREAM_QUEUE_BYTES`` for it, drops and
   counts the rest (``turn_relay_dropped_total{reason="slow_client"}``), keeps relaying for a UDP
   bystander, drops whole messages only (the stream stays well framed), and gives the
   descriptors and memory back once the slow client goes.
2. A signaling client that stops reading while a peer in its room sends it 6 MB: its outbox is
   bounded (``OUTBOX_BYTES``: memory stays bounded), the server gives up on it
   (``signal_slow_closed_total``), the sender's connection stays usable, and the server really
   disconnects it (aborts the stream its writer is blocked on), leaving its session resumable.
3. The wall clock jumps one hour forward (libfaketime, only CLOCK_REALTIME): allocations and
   their permissions and channels (monotonic timers) keep relaying and refreshing, signaling
   sessions stay, while REST credentials are judged on the new wall time (one that expired by it
   is refused at Allocate with 401) and signaling mints credentials on it.

Why: these are the faults a public server meets daily (mobile clients whose window closes, NTP
steps after a VM resume) and that unit tests of the sans-IO cores cannot reach: the queues, the
timers and the clock sources live in the I/O layers.
"""

from __future__ import annotations

import asyncio
import glob
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from appliance import appliance_env, free_port, run_appliance
from attacker import SECRET, Bystander, Target, WireClient, echo_peer, error_code, open_client
from signal_peers import STEP, Appliance, Peer, dial, new_room, run
from websockets.asyncio.client import connect as ws_connect

from secureconnect.credentials import parse_expiry
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StreamFramer,
    decode_message_untrusted,
)

pytestmark = pytest.mark.slow

A = AttrType
MIB = 1024  # in KiB, the unit of VmRSS
FLOOD, DATAGRAM = 20_000, 1_000  # what the peer sends the slow TURN client
SLOW_DROPS = 'turn_relay_dropped_total{reason="slow_client"}'
TO_CLIENT = 'turn_relayed_packets_total{direction="to_client"}'
SIGNAL_MESSAGES, SIGNAL_CHARS = 100, 60_000  # 6 MB for the slow signaling client
JUMP = 3600  # seconds the wall clock steps forward


@dataclass
class Box:
    """The appliance under test: TURN (``target``) and signaling (``signal``) in one process."""

    target: Target
    signal: Appliance

    def metrics(self) -> dict[str, float]:
        return self.signal.metrics()

    def wait(self, what: str, check: Callable[[], bool], timeout: float = STEP) -> float:
        """Poll ``check`` (state in another process) until it holds; the seconds it took."""
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what}: not within {timeout} s; {self.target.crashes()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def settled(self, what: str, read: Callable[[], float], timeout: float = STEP) -> float:
        """Poll ``read`` (a counter in another process) until it stops moving for 0.3 s."""
        last = read()
        started = time.monotonic()
        while True:
            time.sleep(0.3)
            value = read()
            if value == last:
                return value
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what}: still moving after {timeout} s")
            last = value


@contextmanager
def appliance_box(
    workdir: Path, *settings: str, env: dict[str, str] | None = None
) -> Iterator[Box]:
    """``secureconnect run turn signal`` on free loopback ports with the adversarial REST
    secret (so :class:`attacker.WireClient` credentials work) and ``settings``."""
    port, tls_port = free_port(), free_port(socket.SOCK_STREAM)
    signal_port = free_port(socket.SOCK_STREAM)
    state = workdir / "state"
    with run_appliance(
        workdir,
        "turn",
        "signal",
        state_dir=state,
        settings=(
            f"turn.port={port}",
            f"turn.tls_port={tls_port}",
            f'turn.secrets=["{SECRET}"]',
            f"signal.port={signal_port}",
            "general.drain_timeout=0.5",
            *settings,
        ),
        env=env,
    ) as running:
        yield Box(Target(running, port, tls_port), Appliance(signal_port, port, state, tls=True))


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    """No per-allocation bandwidth cap: the flood must meet the slow client's queue, not it."""
    with appliance_box(tmp_path_factory.mktemp("faults"), "turn.bandwidth_limit=0") as running:
        yield running


# -- 1. a TURN client that stops reading -----------------------------------------------------------


def slow_client(transport: str, target: Target) -> WireClient:
    """A TURN client whose socket receive buffer is 4 KiB from the SYN on (a closed window
    soon), which then simply never reads."""
    client = open_client(transport, target, user="slow")
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(client.timeout)
    raw.connect(client.sock.getpeername())
    client.sock.close()  # the connection open_client made, before it carried anything
    if transport == "tls":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the appliance's generated self-signed certificate
        raw = context.wrap_socket(raw)
    client.sock = raw
    return client


def read_backlog(client: WireClient) -> int:
    """Read what the server had queued and sent until it goes quiet: every frame must be a
    whole Data indication with the flood's payload. The number of them."""
    client.sock.settimeout(1.0)
    framer, count = StreamFramer(), 0
    while True:
        try:
            chunk = client.sock.recv(65536)
        except TimeoutError:
            return count
        assert chunk, "the server closed the slow client's connection"
        framer.feed(chunk)
        while (frame := framer.next_frame()) is not None:
            message = decode_message_untrusted(frame)
            assert (message.method, message.cls) == (Method.DATA, MessageClass.INDICATION)
            assert message.get(A.DATA) == b"f" * DATAGRAM
            count += 1


@pytest.mark.parametrize(
    ("transport", "ending"), [("tcp", "reads-the-rest"), ("tls", "closes-unread")]
)
def test_a_turn_client_that_stops_reading_costs_a_bounded_queue(
    box: Box, transport: str, ending: str
) -> None:
    """The flood is 20 MB; the server keeps at most 256 KiB queued for the client plus what the
    kernel holds, drops whole datagrams (counted), and the bystander keeps relaying. TCP: the
    client then reads the backlog (well framed; what arrived is what the counters call relayed,
    the rest is counted as dropped); TLS: it closes
    with the window still shut (a reset under the server's blocked write)."""
    target = box.target
    with echo_peer() as peer, echo_peer() as flooder:
        bystander = Bystander.start(target, peer)
        fds, rss = target.fds(), target.rss_kib()
        before = box.metrics()
        slow = slow_client(transport, target)
        relay = slow.relayed(slow.allocate())
        assert error_code(slow.call(slow.permission_bytes(flooder.getsockname()))) is None
        payload, peak = b"f" * DATAGRAM, rss
        for burst in range(FLOOD // 100):
            for _ in range(100):
                flooder.sendto(payload, relay)
            time.sleep(0.001)  # paced: the relay socket's kernel buffer is not what is tested
            if burst % 20 == 0:
                peak = max(peak, target.rss_kib())
            if burst == FLOOD // 200:
                bystander.check()  # mid-flood, with the slow client's queue full

        def handled() -> float:  # relayed to the slow client, or dropped for it
            now = box.metrics()
            return now[TO_CLIENT] - before[TO_CLIENT] + now[SLOW_DROPS] - before[SLOW_DROPS]

        # Minus the bystander's one relayed answer mid-flood.
        total = box.settled("datagrams for the slow client", handled) - 1
        peak = max(peak, target.rss_kib())
        dropped = box.metrics()[SLOW_DROPS] - before[SLOW_DROPS]
        delivered = total - dropped  # to_client counts only what reached the client's queue
        bystander.check()
        target.assert_healthy()
        received = read_backlog(slow) if ending == "reads-the-rest" else None
        slow.close()
        box.wait("the slow client's descriptors back", lambda: target.fds() == fds)
        after = target.rss_kib()
        print(
            f"\nslow TURN {transport} client, {FLOOD} x {DATAGRAM} B: RSS +{(peak - rss) / MIB:.1f}"
            f" MiB at the peak, {(after - rss) / MIB:+.1f} MiB after; dropped {dropped:.0f}, "
            f"received {received}; fds {fds} -> {target.fds()}"
        )
        assert peak - rss < 8 * MIB  # an unbounded queue would hold most of the 20 MB
        assert total >= FLOOD // 2  # (the kernel may drop some at the relay socket)
        assert delivered <= 1000  # at most 1 MB delivered into a closed window
        if received is not None:
            assert received == delivered  # what the counters call relayed did arrive
        assert after - rss < 4 * MIB
        assert box.metrics()["turn_allocations"] == before["turn_allocations"]  # the slow one ended
        bystander.check()
        assert error_code(bystander.client.call(bystander.client.refresh_bytes(0))) is None
        bystander.close()


# -- 2. a signaling client that stops reading ------------------------------------------------------


@dataclass
class SlowRoom:
    """A sender and a peer that never reads, after the sender's flood; the server's figures."""

    sender: Peer
    sink: Peer
    before: dict[str, float]  # /metrics before the room was made
    fds: int  # the appliance's descriptors before
    rss: int  # its RSS (KiB) before ...
    peak: int  # ... and at the flood's peak


async def never_reading(app: Appliance, room: str) -> Peer:
    """A peer with a 4 KiB receive buffer whose client stops reading once it has joined."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", app.port))
    peer = await dial(app, sock=sock, max_queue=1, ping_interval=None)
    await peer.join(room)
    peer.ws.transport.pause_reading()
    return peer


async def flood_a_never_reader(box: Box) -> SlowRoom:
    """6 MB of signals to a peer that never reads, paced under the rate limit (50/s), as a
    chatty application would send them: more than the kernel buffers and the outbox hold."""
    target = box.target
    fds, rss = target.fds(), target.rss_kib()
    before = await asyncio.to_thread(box.metrics)
    room = new_room()
    sender = await dial(box.signal)
    await sender.join(room)
    sink = await never_reading(box.signal, room)
    await sender.expect("peer-joined", peer=sink.id)
    data, peak = "s" * SIGNAL_CHARS, rss
    for n in range(SIGNAL_MESSAGES):
        await sender.send({"type": "signal", "to": sink.id, "data": data})
        await asyncio.sleep(0.021)  # under signal.rate_limit: every one is routed
        if n % 10 == 0:
            peak = max(peak, target.rss_kib())
    await sender.usable()  # no error, no rate limit: the pong is the next message
    return SlowRoom(sender, sink, before, fds, rss, max(peak, target.rss_kib()))


def test_a_signaling_client_that_stops_reading_costs_a_bounded_outbox(box: Box) -> None:
    """The server gives up on the peer that never reads (``signal_slow_closed_total``) once
    its outbox is full instead of queueing 6 MB, the sender is never slowed or refused, and
    the descriptors come back once the slow client goes."""
    target = box.target

    async def scenario() -> None:
        slow = await flood_a_never_reader(box)
        samples = await asyncio.to_thread(box.metrics)
        closed = samples["signal_slow_closed_total"] - slow.before["signal_slow_closed_total"]
        await slow.sender.send({"type": "signal", "to": slow.sink.id, "data": "more"})
        await slow.sender.usable()
        print(
            f"\nslow signaling client, {SIGNAL_MESSAGES} x {SIGNAL_CHARS} chars: RSS "
            f"+{(slow.peak - slow.rss) / MIB:.1f} MiB at the peak; slow-closed {closed:.0f}"
        )
        assert closed == 1
        assert slow.peak - slow.rss < 8 * MIB  # the outbox holds at most 1 MiB
        slow.sink.kill()
        await slow.sender.ws.close()
        took = await asyncio.to_thread(
            box.wait, "descriptors back", lambda: target.fds() == slow.fds
        )
        print(f"descriptors back {took:.1f} s after the slow client went")
        target.assert_healthy()

    run(scenario(), timeout=60)


def test_a_signaling_client_that_stops_reading_is_disconnected_and_its_session_waits(
    box: Box,
) -> None:
    """serve.py's promise: "a full outbox closes that connection and drops what it held; its
    session can then resume". So within websockets' close timeout (10 s) the connection is gone
    from the hub and the session is away (messages to it are buffered for its resume), even
    though the client neither reads nor closes."""

    async def scenario() -> None:
        slow = await flood_a_never_reader(box)
        before = slow.before

        def gone() -> bool:
            now = box.metrics()
            return (
                now["signal_connections"] == before["signal_connections"] + 1
                and now["signal_sessions_away"] == before["signal_sessions_away"] + 1
            )

        try:
            took = await asyncio.to_thread(box.wait, "the slow connection closed", gone, 12.0)
            print(f"\nthe slow client's connection closed by the server after {took:.1f} s")
        finally:
            slow.sink.kill()
            await slow.sender.ws.close()

    run(scenario(), timeout=60)


# -- 3. a step of the wall clock -------------------------------------------------------------------

#: Debian's libfaketime (package ``libfaketime``); the MT build, as the appliance has threads.
FAKETIME_GLOB = "/usr/lib/*/faketime/libfaketimeMT.so.1"
_PROBE = (
    "import sys, time\n"
    "print(time.time(), time.monotonic(), flush=True)\n"
    "sys.stdin.readline()\n"
    "print(time.time(), time.monotonic(), flush=True)\n"
)


def libfaketime() -> str:
    """The library's path; the test fails (never skips) when it is missing."""
    found = sorted(glob.glob(FAKETIME_GLOB))
    if not found:
        pytest.fail(f"libfaketime is missing ({FAKETIME_GLOB}): apt-get install libfaketime")
    return found[0]


def set_offset(path: Path, seconds: int) -> None:
    """What libfaketime adds to the wall clock, replaced atomically (it rereads the file on
    every clock call: FAKETIME_NO_CACHE=1)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(f"{seconds:+d}\n")
    fresh.replace(path)


def faketime_env(workdir: Path, offset_file: Path) -> dict[str, str]:
    """The appliance's environment with libfaketime preloaded: the wall clock (CLOCK_REALTIME)
    is the real one plus the offset in ``offset_file``. DONT_FAKE_MONOTONIC=1 matters: by
    default libfaketime fakes CLOCK_MONOTONIC too (as wall-clock-like time that jumps with the
    offset), and the appliance's timers, trio's clock included, would all jump."""
    return appliance_env(
        workdir,
        LD_PRELOAD=libfaketime(),
        FAKETIME_TIMESTAMP_FILE=str(offset_file),
        FAKETIME_NO_CACHE="1",
        DONT_FAKE_MONOTONIC="1",
    )


def check_faketime_steps_only_the_wall_clock(env: dict[str, str], offset_file: Path) -> None:
    """Run a probe under ``env`` across a step: its wall clock must jump by JUMP, its
    monotonic clock not at all (else the test would prove nothing about the appliance)."""
    set_offset(offset_file, 0)
    with subprocess.Popen(
        [sys.executable, "-c", _PROBE],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as probe:
        assert probe.stdin is not None
        assert probe.stdout is not None
        wall0, mono0 = map(float, probe.stdout.readline().split())
        real0 = time.time()
        set_offset(offset_file, JUMP)
        probe.stdin.write("\n")
        probe.stdin.flush()
        wall1, mono1 = map(float, probe.stdout.readline().split())
        real1 = time.time()
        probe.wait(timeout=STEP)
    assert abs(wall0 - real0) < 2, "libfaketime moved the wall clock before the step"
    assert abs(wall1 - real1 - JUMP) < 2, f"no step of the wall clock: {wall1 - real1:.1f} s"
    assert 0 <= mono1 - mono0 < 2, f"the monotonic clock jumped {mono1 - mono0:.1f} s"


def refresh_across_step(client: WireClient) -> list[int | None]:
    """Refresh (600 s), following a 438 with the new nonce it brings: the codes seen."""
    codes = []
    for _ in range(2):
        reply = client.call(client.refresh_bytes(600))
        codes.append(error_code(reply))
        nonce = reply.get(A.NONCE)
        if codes[-1] != 438 or nonce is None:
            return codes
        client.nonce = nonce
    return codes


async def open_pair(app: Appliance) -> tuple[Peer, Peer]:
    """Two peers joined to a fresh room (not signal_peers.dial: they outlive one event loop run)."""
    peers = []
    room = new_room()
    for _ in range(2):
        ws = await ws_connect(
            app.ws_url, ssl=app.ssl, proxy=None, compression=None, open_timeout=STEP
        )
        peers.append(Peer(ws))
        await peers[-1].join(room)
    await peers[0].expect("peer-joined", peer=peers[1].id)
    return peers[0], peers[1]


async def ice_credential(peer: Peer) -> dict[str, Any]:
    """Ask for fresh ICE servers: the TURN server entry (urls, username, credential)."""
    await peer.send({"type": "ice"})
    message = await peer.expect("ice")
    servers = [s for s in message["iceServers"] if "username" in s]
    assert servers, message
    server: dict[str, Any] = servers[0]
    return server


async def ice_expiry(peer: Peer) -> float:
    """The expiry of a TURN credential minted for ``peer`` now (Unix time)."""
    expiry = parse_expiry((await ice_credential(peer))["username"])
    assert expiry is not None
    return float(expiry)


async def still_connected(a: Peer, b: Peer) -> None:
    """A signal goes from a to b, b's ping is answered; no peer-left came meanwhile."""
    await a.send({"type": "signal", "to": b.id, "data": {"after": "the step"}})
    await b.expect("signal", **{"from": a.id})
    await b.usable()
    await a.usable()


def test_a_wall_clock_step_moves_credentials_but_no_timer(tmp_path: Path) -> None:
    """+1 hour on the wall clock (NTP step, VM resume): the existing UDP and TCP allocations
    (their credentials now expired by the wall clock) refresh - after one 438, as their nonces
    carry the wall time - and relay; signaling peers stay; a credential that expired by the new
    wall time is refused at Allocate (401) while one valid past it is accepted; signaling mints
    credentials on the new wall time, and TURN accepts them."""
    offset_file = tmp_path / "faketime-offset"
    (tmp_path / "app").mkdir()
    env = faketime_env(tmp_path, offset_file)
    check_faketime_steps_only_the_wall_clock(env, offset_file)
    set_offset(offset_file, 0)
    with (
        appliance_box(tmp_path / "app", env=env) as box,
        echo_peer() as peer,
        echo_peer() as tcp_peer,
        asyncio.Runner() as loop,
    ):
        udp = Bystander.start(box.target, peer)  # credentials good for 600 s
        tcp = Bystander.start(box.target, tcp_peer, "tcp")
        expired_by_step = WireClient("udp", box.target.port, user="late", ttl=600)
        valid_past_step = WireClient("udp", box.target.port, user="long", ttl=2 * JUMP)
        a, b = loop.run(open_pair(box.signal))
        assert abs(loop.run(ice_expiry(a)) - time.time() - 3600) < 5  # signal.ice_ttl

        set_offset(offset_file, JUMP)
        # The TURN component reads the wall clock once per 1 s tick: the nonce it issued before
        # the step is an hour old once it has, so the first refresh after that gets 438.
        took = box.wait("TURN sees the step", lambda: refresh_across_step(udp.client)[0] == 438)
        udp.check()  # the allocation, channel and permission outlived the step: they relay
        assert refresh_across_step(tcp.client) == [438, None]
        tcp.check()
        assert error_code(expired_by_step.allocate()) == 401
        assert error_code(valid_past_step.allocate()) is None
        box.wait("signaling sees the step", lambda: loop.run(ice_expiry(a)) > time.time() + JUMP)
        minted = loop.run(ice_credential(b))
        expiry = parse_expiry(minted["username"])
        assert expiry is not None
        assert abs(expiry - time.time() - JUMP - 3600) < 5
        loop.run(still_connected(a, b))
        from_signal = WireClient("tcp", box.target.port, password=minted["credential"])
        from_signal.username = minted["username"]  # as minted, not WireClient's own
        assert error_code(from_signal.allocate()) is None  # TURN judges it on the same clock
        print(
            f"\nwall clock +{JUMP} s: TURN noticed it within {took:.1f} s; refresh codes after "
            f"it [438, ok]; new REST credential expiring before the new wall time: 401; "
            f"ICE credentials minted after it expire at real time + {expiry - time.time():.0f} s"
        )
        samples = box.metrics()
        assert samples["turn_allocations"] == 4  # udp, tcp, valid_past_step, from_signal
        assert samples["signal_sessions"] == 2
        assert samples["turn_allocations_expired_total"] == 0
        box.target.assert_healthy()
        for client in (udp, tcp):
            client.close()
        for wire in (expired_by_step, valid_past_step, from_signal):
            wire.close()
        for side in (a, b):
            loop.run(side.ws.close())
