"""One WebRTC peer of the NAT lab: meet a peer through our signaling, connect with aiortc, report.

Run as ``python -m secureconnect.natlab.peer --url wss://HOST:PORT/ws --room ROOM --role
offer|answer [--cafile PEM] [--timeout 30] [--turn-transport udp|tcp|tls] [--relay-only]``,
normally inside a client namespace (``ip netns exec <ns> python -m ...``). Whatever happens it
prints exactly one JSON line on stdout (:class:`PeerResult`) and logs to stderr; it exits 0
whether or not the peers connected (1 after a crash, 2 for a usage error).

What one run does:

1. Join ``ROOM`` with :class:`~secureconnect.signal.client.SignalClient` (WSS verified against
   ``--cafile``, our self-signed certificate; without it the system's trust store).
2. Build aiortc's ``RTCConfiguration`` from the ``welcome``'s ``iceServers``: the first STUN URL
   and ONE TURN URL, chosen by ``--turn-transport`` (``udp``: ``turn:...?transport=udp``, the
   default; ``tcp``: ``turn:...?transport=tcp``; ``tls``: ``turns:``). ``iceServers`` is always
   given: without it aiortc would ask a public STUN server on the internet.
3. The offerer waits for the other peer (``welcome.peers`` or ``peer-joined``), opens a data
   channel and sends its offer; the answerer answers the first offer it gets. aiortc does not
   trickle: each description carries all its candidates once gathering is done (at most 5 s).
4. Each side sends ``ping`` when the channel opens and answers ``ping`` with ``pong``. Connected
   means: the channel opened and our own ``ping`` came back as ``pong``; ``seconds`` runs from
   the start of :func:`run_peer` (before joining) to that ``pong``.
5. Report the pair ICE nominated and hang up cleanly: tell the other peer ``bye`` through
   signaling, wait briefly (``LINGER``) for its ``bye`` so that neither tears the channel down
   under the other's ``pong``, close the peer connection, leave, close the WebSocket.

Everything is bounded by ``--timeout``: connecting gets all of it but a reserve for hanging up.
A peer that gives up says ``bye``, so the other stops waiting at once instead of timing out.

**aiortc limitations the lab has to live with.** aiortc passes a single TURN server to aioice
(``aiortc.rtcicetransport.connection_kwargs`` keeps the first parseable ``turn:``/``turns:`` URL
and skips the rest), so a peer cannot fall back from UDP to TCP TURN as browsers do (they try
all URLs): the lab runner picks the transport, ``tcp`` for the client whose UDP is blocked. For
``turns:`` aioice hands ``ssl=True`` to ``loop.create_connection``, i.e. the system trust store,
which does not know our self-signed certificate; this module replaces the ICE connection's
``turn_ssl`` flag with an ``SSLContext`` trusting ``--cafile`` before gathering starts (aioice
passes it through unchanged), so ``--turn-transport tls`` works too. The certificate must name
the host in the ``turns:`` URL. aioice also ignores loopback host addresses: on a machine with
only ``lo`` the only candidates are relayed ones.

**Reading the selected pair.** aiortc exposes no stats for the nominated pair, so it is read
from aioice: ``pc.sctp.transport`` (DTLS) ``.transport`` (``RTCIceTransport``) ``._connection``
(``aioice.Connection``) ``._nominated[1]`` (the ``CandidatePair`` of component 1), whose
``local_candidate`` and ``remote_candidate`` have ``type`` (``host``, ``srflx``, ``prflx``,
``relay``), ``host``, ``port`` and ``transport``. A remote candidate learned from a connectivity
check (not in the SDP) is ``prflx``. A relayed candidate's transport is ``udp`` (the relayed
address) even when the TURN server is reached over TCP or TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import ssl
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcicetransport import parse_stun_turn_uri
from websockets.exceptions import WebSocketException

from secureconnect.logs import configure_logging, fields
from secureconnect.netaddr import format_address
from secureconnect.signal.client import SignalClient, SignalClientError

T = TypeVar("T")
Role = Literal["offer", "answer"]
TurnTransport = Literal["udp", "tcp", "tls", "none"]

ROLES: tuple[Role, ...] = ("offer", "answer")
TURN_TRANSPORTS: tuple[TurnTransport, ...] = ("udp", "tcp", "tls", "none")
CLOSE_RESERVE = 3.0  # seconds of --timeout kept for hanging up (at most a quarter of it)
LINGER = 5.0  # seconds a connected peer waits for the other's ``bye`` before closing (and the
# time the other's pong, maybe an SCTP retransmission on a loaded machine, has to arrive)
SIGNAL_TIMEOUT = 10.0  # seconds any single signaling request may take (capped by --timeout)
PING, PONG = "ping", "pong"
PING_AGAIN, PONG_AGAIN = "ping-again", "pong-again"  # after --hold seconds idle
PONG_AGAIN_WAIT = 10.0  # seconds the ping after the hold has to be answered: a call that
# survived answers in about a round trip (or an SCTP retransmission, 1-3 s, RFC 9260 §6.3.1)
CHANNEL_LABEL = "natlab"

log = logging.getLogger("secureconnect.natlab.peer")


class PeerFailed(Exception):
    """The attempt ended without a connection; the message says why (it becomes ``error``)."""


@dataclass(frozen=True)
class PeerOptions:
    """What one peer does: the command line as data."""

    url: str
    room: str
    role: Role
    cafile: str | None = None
    timeout: float = 30.0
    turn_transport: TurnTransport = "udp"
    relay_only: bool = False
    #: seconds to stay idle once connected before pinging again; connected only if that ping is
    #: answered too (does the call outlive a NAT's idle timeout? 0: no second ping)
    hold: float = 0.0


@dataclass(frozen=True)
class PeerResult:
    """The one JSON line a peer prints: did it connect, over which pair, how fast, or why not.

    ``local``/``remote`` are candidate types (``host``, ``srflx``, ``prflx``, ``relay``) of the
    nominated pair, ``*_candidate`` its addresses as ``ip:port/proto``; they are set whenever ICE
    nominated a pair (even if the data channel then failed). ``seconds`` is set only when
    connected.
    """

    connected: bool
    local: str | None = None
    remote: str | None = None
    seconds: float | None = None
    local_candidate: str | None = None
    remote_candidate: str | None = None
    error: str | None = None

    def to_json(self) -> str:
        """One line of JSON with exactly the dataclass's fields."""
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)


def ice_configuration(
    ice_servers: Sequence[dict[str, Any]],
    *,
    turn_transport: TurnTransport = "udp",
    relay_only: bool = False,
) -> RTCConfiguration:
    """aiortc's configuration from a ``welcome``'s ``iceServers``: the first STUN URL and the
    one TURN URL of ``turn_transport`` (aiortc would use only one anyway; see the module
    docstring), or none at all for ``"none"`` (STUN only: can the peers connect directly?).
    :class:`PeerFailed` when there is no such TURN URL: the lab must not silently measure
    something else. URLs aiortc cannot parse (e.g. IPv6 literals) are skipped."""
    stun: RTCIceServer | None = None
    turn: RTCIceServer | None = None
    seen: list[str] = []
    for server in ice_servers:
        urls = server.get("urls") or []
        for url in [urls] if isinstance(urls, str) else list(urls):
            seen.append(str(url))
            try:
                parsed = parse_stun_turn_uri(str(url))
            except ValueError:
                continue
            if parsed["scheme"] == "stun" and stun is None:
                stun = RTCIceServer(urls=str(url))
            elif (
                turn is None
                and _turn_transport_of(parsed) == turn_transport
                and "username" in server
                and "credential" in server
            ):
                turn = RTCIceServer(
                    urls=str(url),
                    username=str(server["username"]),
                    credential=str(server["credential"]),
                )
    if turn_transport == "none":  # STUN only: the lab's check that a direct path exists
        if relay_only:
            raise PeerFailed("--relay-only needs a TURN URL (--turn-transport none)")
        return RTCConfiguration(iceServers=[] if stun is None else [stun])
    if turn is None:
        raise PeerFailed(f"no TURN URL for transport {turn_transport} among {seen}")
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    servers = [turn] if stun is None else [stun, turn]
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def _turn_transport_of(parsed: dict[str, Any]) -> str | None:
    """``udp``/``tcp``/``tls`` for a parsed TURN URL; None for STUN and unknown transports."""
    if parsed["scheme"] == "turns":
        return "tls" if parsed.get("transport") == "tcp" else None
    if parsed["scheme"] == "turn" and parsed.get("transport") in ("udp", "tcp"):
        return str(parsed["transport"])
    return None


def _ice_connection(pc: RTCPeerConnection) -> Any:
    """The data channel's ``aioice.Connection`` (None before the SCTP transport exists)."""
    sctp = pc.sctp
    if sctp is None:
        return None
    return getattr(sctp.transport.transport, "_connection", None)


def selected_pair(pc: RTCPeerConnection) -> tuple[Any, Any] | None:
    """(local, remote) aioice candidates of the pair nominated for component 1, or None."""
    connection = _ice_connection(pc)
    nominated = getattr(connection, "_nominated", None) or {}
    pair = nominated.get(1)
    if pair is None:
        return None
    return pair.local_candidate, pair.remote_candidate


def _address(candidate: Any) -> str:
    where = format_address(str(candidate.host), candidate.port)
    return f"{where}/{str(candidate.transport).lower()}"


class _Attempt:
    """One run of one peer; holds what hanging up and reporting need."""

    def __init__(self, options: PeerOptions) -> None:
        self.options = options
        self.start = time.monotonic()
        self.stage = "starting"
        self.client: SignalClient | None = None
        self.pc: RTCPeerConnection | None = None
        self.other: str | None = None  # the other peer's id, once known
        self.seconds: float | None = None
        self.failure: str | None = None
        self._failed = asyncio.Event()  # the other peer hung up, or ICE failed
        self._other_done = asyncio.Event()  # the other peer said bye or left
        self._joined: asyncio.Queue[str] = asyncio.Queue()
        self._descriptions: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._pong = asyncio.Event()
        self._pong_again = asyncio.Event()
        self._channel: RTCDataChannel | None = None
        self._reader: asyncio.Task[None] | None = None

    async def run(self) -> PeerResult:
        timeout = self.options.timeout
        reserve = min(CLOSE_RESERVE, timeout / 4)
        error: str | None = None
        try:
            async with asyncio.timeout(timeout - reserve):
                try:
                    await self._connect()
                except TimeoutError:  # a signaling request's own timeout, not ours
                    raise PeerFailed(f"signaling timed out while {self.stage}") from None
        except TimeoutError:
            error = f"timed out after {timeout - reserve:.1f} s while {self.stage}"
        except PeerFailed as exc:
            error = str(exc)
        except (SignalClientError, WebSocketException, OSError) as exc:  # SSLError: OSError
            error = f"{self.stage}: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a crash: still hang up, then let the caller see it
            await self._hang_up_in_time(connected=False, error=f"crash: {exc!r}")
            raise
        result = self._result(error)
        log.info("natlab-peer-result", extra=fields(**asdict(result)))
        await self._hang_up_in_time(connected=result.connected, error=error)
        return result

    def _result(self, error: str | None) -> PeerResult:
        pair = None if self.pc is None else selected_pair(self.pc)
        local, remote = pair if pair is not None else (None, None)
        connected = error is None and self.seconds is not None
        return PeerResult(
            connected=connected,
            local=None if local is None else str(local.type),
            remote=None if remote is None else str(remote.type),
            seconds=round(self.seconds, 3) if connected and self.seconds is not None else None,
            local_candidate=None if local is None else _address(local),
            remote_candidate=None if remote is None else _address(remote),
            error=error,
        )

    # -- connecting ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        options = self.options
        self.stage = "joining the room"
        context = None  # ws://: no TLS; wss://: --cafile, else the system's trust store
        if options.url.startswith("wss://"):
            context = ssl.create_default_context(cafile=options.cafile)
        self.client = client = SignalClient(
            options.url,
            options.room,
            ssl=context,
            timeout=min(SIGNAL_TIMEOUT, options.timeout),
        )
        await client.open()
        log.info("natlab-peer-joined", extra=fields(room=options.room, peer=client.peer))
        config = ice_configuration(
            client.ice_servers,
            turn_transport=options.turn_transport,
            relay_only=options.relay_only,
        )
        self._reader = asyncio.create_task(self._read_signals(client))
        if options.role == "offer":
            await self._offer(client, config)
        else:
            await self._answer(client, config)
        self.stage = "connecting (ICE, DTLS, SCTP, ping)"
        await self._until(self._pong.wait())
        if options.hold and self._channel is not None:
            self.stage = f"idle for {options.hold:g} s"
            await asyncio.sleep(options.hold)
            self.stage = f"pinging again after {options.hold:g} s idle"
            self._channel.send(PING_AGAIN)
            try:
                async with asyncio.timeout(PONG_AGAIN_WAIT):  # SCTP retransmits within it
                    await self._until(self._pong_again.wait())
            except TimeoutError:
                raise PeerFailed(f"no answer {PONG_AGAIN_WAIT:g} s after {self.stage}") from None

    async def _offer(self, client: SignalClient, config: RTCConfiguration) -> None:
        self.stage = "waiting for the other peer"
        other = client.peers[0] if client.peers else await self._until(self._joined.get())
        self.other = other
        self.pc = pc = self._peer_connection(config)
        channel = pc.createDataChannel(CHANNEL_LABEL)
        self._attach(channel)
        self._trust_turn_certificate(pc)
        self.stage = "gathering candidates"
        await pc.setLocalDescription(await pc.createOffer())
        await self._send_description(client, other, pc)
        self.stage = "waiting for the answer"
        _, answer = await self._until(self._descriptions.get())
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

    async def _answer(self, client: SignalClient, config: RTCConfiguration) -> None:
        self.stage = "waiting for the offer"
        other, offer = await self._until(self._descriptions.get())
        self.other = other
        self.pc = pc = self._peer_connection(config)
        pc.on("datachannel", self._attach)
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        self._trust_turn_certificate(pc)
        self.stage = "gathering candidates"
        await pc.setLocalDescription(await pc.createAnswer())
        await self._send_description(client, other, pc)

    def _peer_connection(self, config: RTCConfiguration) -> RTCPeerConnection:
        pc = RTCPeerConnection(config)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            log.info("natlab-peer-state", extra=fields(state=pc.connectionState))
            if pc.connectionState == "failed":
                self._fail("the connection failed (no candidate pair worked, or DTLS failed)")

        return pc

    def _trust_turn_certificate(self, pc: RTCPeerConnection) -> None:
        """For ``turns:``, trust ``--cafile`` instead of the system store (before gathering)."""
        if self.options.turn_transport != "tls" or self.options.cafile is None:
            return
        connection = _ice_connection(pc)
        if connection is not None and connection.turn_ssl:
            connection.turn_ssl = ssl.create_default_context(cafile=self.options.cafile)

    async def _send_description(
        self, client: SignalClient, other: str, pc: RTCPeerConnection
    ) -> None:
        local = pc.localDescription
        if " typ " not in local.sdp:
            raise PeerFailed("gathered no ICE candidates (is the TURN server reachable?)")
        await client.send(other, {"type": local.type, "sdp": local.sdp})

    def _attach(self, channel: RTCDataChannel) -> None:
        """Ping when ``channel`` opens, answer pings, note our pong."""

        def ping() -> None:
            log.info("natlab-peer-channel-open", extra=fields(label=channel.label))
            channel.send(PING)

        self._channel = channel

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            if message == PING_AGAIN:
                channel.send(PONG_AGAIN)
            elif message == PONG_AGAIN:
                self._pong_again.set()
            elif message == PING:
                channel.send(PONG)
            elif message == PONG and not self._pong.is_set():
                self.seconds = time.monotonic() - self.start
                self._pong.set()

        if channel.readyState == "open":  # a remote channel arrives already open
            ping()
        else:
            channel.on("open", ping)

    async def _read_signals(self, client: SignalClient) -> None:
        """Sort the signaling messages: peers joining, descriptions, the other's ``bye``."""
        async for message in client:
            kind = message.get("type")
            if kind == "peer-joined":
                self._joined.put_nowait(str(message.get("peer")))
            elif kind == "peer-left" and message.get("peer") == self.other:
                self._other_gone("the other peer left the room")
            elif kind == "signal" and isinstance(message.get("data"), dict):
                sender, data = str(message.get("from")), message["data"]
                if self.other is not None and sender != self.other:
                    continue  # a stranger in the room: not our pair
                if data.get("type") == "bye":
                    error = data.get("error")
                    self._other_gone(f"the other peer gave up: {error}", connected=error is None)
                elif data.get("type") == ("answer" if self.options.role == "offer" else "offer"):
                    self._descriptions.put_nowait((sender, data))
            elif kind == "error":
                log.warning("natlab-peer-signal-error", extra=fields(reply=message))
        self._fail("the signaling connection closed")

    def _other_gone(self, why: str, *, connected: bool = False) -> None:
        """The other peer said ``bye``. If it is ``connected`` (it got its pong) ours may still
        be on its way, and the other lingers for our ``bye``: wait for it as long. A pong that
        has not come by then, or a ``bye`` with an error, fails the call."""
        self._other_done.set()
        if self._pong.is_set():
            return
        if connected:
            asyncio.get_running_loop().call_later(LINGER, self._fail_unless_ponged, why)
            return
        self._fail(why)

    def _fail_unless_ponged(self, why: str) -> None:
        if not self._pong.is_set():
            self._fail(f"{why}; no pong within {LINGER:g} s")

    def _fail(self, why: str) -> None:
        if not self._failed.is_set():
            self.failure = why
            self._failed.set()

    async def _until(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable``, unless the attempt fails first (then :class:`PeerFailed`)."""
        task = asyncio.ensure_future(awaitable)
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({task, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        raise PeerFailed(self.failure or "failed")

    # -- hanging up ------------------------------------------------------------------------------

    async def _hang_up_in_time(self, *, connected: bool, error: str | None) -> None:
        """:meth:`_hang_up` within what is left of ``--timeout`` (at least a moment)."""
        left = self.options.timeout - (time.monotonic() - self.start)
        try:
            async with asyncio.timeout(max(0.2, left)):
                await self._hang_up(connected=connected, error=error)
        except TimeoutError:
            log.warning("natlab-peer-hang-up-timed-out")

    async def _hang_up(self, *, connected: bool, error: str | None) -> None:
        """``bye`` to the other peer, a short wait for its ``bye`` (only once connected, so the
        other side gets its ``pong`` first), then close the peer connection and leave."""
        client = self.client
        if client is not None and client.connected and self.other is not None:
            with contextlib.suppress(SignalClientError, OSError, TimeoutError):
                await client.send(self.other, {"type": "bye", "error": error})
            if connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINGER):
                        await self._other_done.wait()
        if self.pc is not None:
            with contextlib.suppress(Exception):  # closing must not hide the result
                await self.pc.close()
        if client is not None:
            with contextlib.suppress(SignalClientError, OSError, TimeoutError):
                await client.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def run_peer(options: PeerOptions) -> PeerResult:
    """Join, connect, measure and hang up as described in the module docstring.

    Never raises for a failed connection (the result says why); the signaling client's,
    aiortc's and the network's expected errors become ``error``. Returns within
    ``options.timeout`` seconds (hanging up included, give or take aiortc's own closing)."""
    if options.timeout <= 0:
        raise ValueError("timeout must be positive")
    return await _Attempt(options).run()


def parse_args(argv: Sequence[str] | None = None) -> PeerOptions:
    """The command line as :class:`PeerOptions` (argparse exits with status 2 on errors)."""
    parser = argparse.ArgumentParser(
        prog="python -m secureconnect.natlab.peer",
        description="One NAT-lab WebRTC peer: prints one JSON line with the outcome.",
    )
    parser.add_argument("--url", required=True, help="signaling URL, e.g. wss://HOST:8443/ws")
    parser.add_argument("--room", required=True, help="room shared with the other peer")
    parser.add_argument("--role", required=True, choices=ROLES)
    parser.add_argument("--cafile", help="PEM the server's certificate must chain to (wss, turns)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for everything")
    parser.add_argument(
        "--turn-transport",
        choices=TURN_TRANSPORTS,
        default="udp",
        help="the one TURN URL given to aiortc (it uses only one): udp, tcp, tls (turns:), "
        "or none (STUN only)",
    )
    parser.add_argument("--relay-only", action="store_true", help="relay candidates only")
    parser.add_argument(
        "--hold", type=float, default=0.0, help="seconds idle once connected, then ping again"
    )
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    if not args.url.startswith(("ws://", "wss://")):
        parser.error("--url must be a ws:// or wss:// URL")
    configure_logging(args.log_level, "kv")
    if args.log_level == "debug":
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # aiortc's and aioice's
    return PeerOptions(
        url=args.url,
        room=args.room,
        role=args.role,
        cafile=args.cafile,
        timeout=args.timeout,
        turn_transport=args.turn_transport,
        relay_only=args.relay_only,
        hold=args.hold,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one peer; print its JSON line; 0 whether or not it connected, 1 after a crash."""
    options = parse_args(argv)
    try:
        result = asyncio.run(run_peer(options))
    except Exception as exc:  # a bug or an aiortc surprise: still one JSON line
        log.exception("natlab-peer-crashed")
        print(PeerResult(connected=False, error=f"crash: {exc!r}").to_json(), flush=True)
        return 1
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
