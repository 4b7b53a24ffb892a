"""An asyncio client for the signaling protocol v1 (``docs/signaling-protocol.md``).

``async with connect(url, room) as client`` (or ``client = await connect(...)`` ... ``await
client.close()``) joins the room; ``client.send(to, data)`` routes ``data`` to a peer and
``client.receive()`` (or ``async for message in client``) yields what the server sends:
``signal``, ``peer-joined``, ``peer-left``, ``error``, pushed ``ice``, a re-join's ``welcome``.

One reader task owns the WebSocket: it answers the client's own requests (``join``, ``ping``,
``ice``), keeps ``peers``, ``ice_servers`` and the resume secret current, and queues the rest in
order (unbounded: the server rate-limits every sender). When the link drops without a final close
code it reconnects (``retries`` attempts, exponential backoff with jitter: by default 10 over
about 25 s, enough to outlast a restart of the server under systemd, ``RestartSec=2s`` plus its
start-up, which six attempts over ~6 s barely did) and re-joins with the
``resume`` secret and ``last``, the highest ``seq`` received: same peer id, plus every ``signal``
message after that one, including those lost with the old connection or its node (a message
that arrives twice is dropped by ``seq``, so each is received once). The new ``welcome``
is queued (``resumed`` false: the grace period had passed, ``peer`` is new), then the membership
changes missed while away as ``peer-joined``/``peer-left`` marked ``"synthetic": true``. Close
codes 1000, 1008 (policy, e.g. flooding) and 4001 (another connection took the session over) are
final, as is an ``error`` answer to the re-join (e.g. an expired token). With
``fallback_urls`` (the other nodes of a cluster) each failed attempt moves on to the next URL,
so a session whose node died resumes on another one. Requests wait up to
``timeout`` while a reconnect is under way. No trio: this serves asyncio programs (aiortc, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import ssl as _ssl
import time
from collections.abc import Generator, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Origin

from secureconnect.logs import fields

Message = dict[str, Any]
log = logging.getLogger("secureconnect.signal.client")

#: Close codes after which reconnecting would be wrong (normal, policy, replaced by a resume,
#: ended by the operator).
FINAL_CLOSE_CODES = frozenset({1000, 1008, 4001, 4002})


class SignalClientError(Exception):
    """Base class of this module's errors."""


class SignalRejected(SignalClientError):
    """The server answered a request with an ``error`` message (``code``, ``reply``)."""

    def __init__(self, reply: Message) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.code = str(reply.get("code"))
        self.reply = reply


class SignalClosed(SignalClientError):
    """The client is closed: by :meth:`SignalClient.close`, the server, or failed reconnects."""


class SignalClient:
    """One peer's signaling connection; see the module docstring."""

    def __init__(
        self,
        url: str,
        room: str | None,
        *,
        token: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        origin: str | None = None,
        retries: int = 10,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        timeout: float = 10.0,
        fallback_urls: Sequence[str] = (),
    ) -> None:
        self.url, self.token, self.ssl, self.origin = url, token, ssl, origin
        #: where to reconnect, in turn, from the current one on: other nodes of a cluster
        #: (docs/cluster.md), so a session resumes elsewhere when its node is gone
        self.urls = (url, *(u for u in fallback_urls if u != url))
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.timeout = timeout  # for opening, each request, and waiting out a reconnect
        self.reconnects = 0  # successful automatic reconnects
        self.peer: str | None = None
        self.room: str | None = None
        self.resume_token: str | None = None
        #: the highest ``seq`` of a ``signal`` received: a resume asks for what came after it
        self.last_seq = 0
        self.ice_servers: list[dict[str, Any]] = []
        self.ice_ttl = 0
        self._initial_room = room
        self._peers: dict[str, None] = {}  # an insertion-ordered set
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._closing = False
        self._closed: SignalClosed | None = None
        self._join: asyncio.Future[Message] | None = None
        self._ice: asyncio.Future[Message] | None = None
        self._pongs: dict[str, asyncio.Future[float]] = {}
        self._ids = itertools.count(1)

    @classmethod
    def connect(
        cls,
        url: str,
        room: str | None,
        *,
        token: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        **options: Any,
    ) -> SignalClient:
        """A client for ``room`` (None: connect only): ``await`` it or use ``async with``."""
        return cls(url, room, token=token, ssl=ssl, **options)

    @property
    def peers(self) -> tuple[str, ...]:
        """The other peers of the room, in the order they were seen."""
        return tuple(self._peers)

    @property
    def websocket(self) -> ClientConnection | None:
        """The current WebSocket (None before :meth:`open`); tests use it to break the link."""
        return self._ws

    @property
    def connected(self) -> bool:
        """Whether a WebSocket is up (False during a reconnect and once closed)."""
        return self._connected.is_set() and self._closed is None

    async def open(self) -> Message | None:
        """Open the WebSocket and join the constructor's room; its ``welcome``."""
        if self._ws is not None:
            raise SignalClientError("already open")
        self._ws = await self._dial()
        self._connected.set()
        self._reader = asyncio.create_task(self._run(), name=f"signal-reader {self.url}")
        if self._initial_room is None:
            return None
        try:
            return await self.join(self._initial_room, token=self.token)
        except BaseException:
            await self.close(leave=False)
            raise

    async def close(self, *, leave: bool = True) -> None:
        """Send ``leave`` (peers see ``peer-left`` now, not after the grace period) and close."""
        if self._closing:
            return
        ws = self._ws
        if leave and self.room is not None and self.connected and ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send('{"type":"leave"}')
        self._closing = True
        self._finish(SignalClosed("the client was closed"))
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> SignalClient:
        if self._ws is None:
            await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, SignalClient]:
        return self.__aenter__().__await__()

    async def join(self, room: str, *, token: str | None = None) -> Message:
        """Enter ``room``: the ``welcome``, or :class:`SignalRejected` for an ``error``."""
        if self._join is not None:
            raise SignalClientError("a join is already under way")
        self._join = asyncio.get_running_loop().create_future()
        try:
            await self._send(_join_message(room, token, None))
            welcome = await asyncio.wait_for(self._join, self.timeout)
        finally:
            self._join = None
        self.token = token
        return welcome

    async def send(self, to: str, data: Any) -> None:
        """Route ``data`` (any JSON value) to peer ``to`` of the room."""
        await self._send({"type": "signal", "to": to, "data": data})

    async def leave(self) -> None:
        """Leave the room; the connection stays open and :meth:`join` may follow."""
        await self._send({"type": "leave"})
        self.room = self.peer = self.resume_token = None
        self._peers.clear()

    async def request_ice(self) -> list[dict[str, Any]]:
        """Fresh ICE servers (the answer to ``ice``, or a push crossing it); one call at a time."""
        self._ice = future = asyncio.get_running_loop().create_future()
        try:
            await self._send({"type": "ice"})
            await asyncio.wait_for(future, self.timeout)
        finally:
            self._ice = None
        return self.ice_servers

    async def ping(self) -> float:
        """An application-level ``ping``; the round-trip time in seconds."""
        ident = f"c{next(self._ids)}"
        future = self._pongs[ident] = asyncio.get_running_loop().create_future()
        try:
            start = time.monotonic()
            await self._send({"type": "ping", "id": ident})
            return float(await asyncio.wait_for(future, self.timeout)) - start
        finally:
            self._pongs.pop(ident, None)

    async def receive(self) -> Message:
        """The next server message; :class:`SignalClosed` once closed and all was received."""
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # keep the end mark for later calls
            raise self._closed or SignalClosed("closed")
        return item

    def __aiter__(self) -> SignalClient:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except SignalClosed:
            raise StopAsyncIteration from None

    async def _dial(self) -> ClientConnection:
        return await ws_connect(
            self.url,
            ssl=self.ssl,
            origin=None if self.origin is None else Origin(self.origin),
            proxy=None,  # loopback labs and tests must not follow *_PROXY variables
            compression=None,
            open_timeout=self.timeout,
            close_timeout=min(self.timeout, 5.0),
        )

    async def _send(self, message: Message) -> None:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        for _ in range(2):
            if self._closed is None:
                await asyncio.wait_for(self._connected.wait(), self.timeout)
            if self._closed is not None or self._ws is None:
                raise self._closed or SignalClosed("not open")
            ws = self._ws
            try:
                await ws.send(text)
            except ConnectionClosed:
                if self._ws is ws:  # the reader has not noticed yet: wait for its reconnect
                    self._connected.clear()
            else:
                return
        raise SignalClientError("the connection dropped twice while sending")

    async def _run(self) -> None:
        """The reader task: read and dispatch; reconnect when the link drops."""
        ws = self._ws
        try:
            while ws is not None and not self._closing:
                with contextlib.suppress(ConnectionClosed):
                    async for frame in ws:
                        self._dispatch(_decode(frame))
                if self._closing or ws.close_code in FINAL_CLOSE_CODES:
                    break
                ws = self._ws if await self._reconnect() else None
        finally:  # a no-op when close() or _reconnect() already said why
            why = f"{ws.close_code} {ws.close_reason}".strip() if ws else "stopped"
            self._finish(SignalClosed(f"the connection was closed: {why}"))

    async def _reconnect(self) -> bool:
        """A new WebSocket and a re-join with the resume secret; False: gave up (closed)."""
        self._connected.clear()
        self._fail_requests(SignalClientError("the connection dropped"))
        error: Exception | None = None
        for attempt in range(self.retries):
            delay = min(self.max_backoff, self.backoff * 2**attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            ws: ClientConnection | None = None
            if attempt:  # the current URL failed once: try the next node's
                self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
            try:
                ws = await self._dial()
                if self.room is not None:
                    await self._rejoin(ws)
                self._ws, ws = ws, None  # adopted
            except SignalRejected as exc:
                self._finish(SignalClosed(f"the re-join was refused: {exc}"))
                return False
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.info("signal-reconnect-failed", extra=fields(attempt=attempt + 1, error=exc))
                error = exc
                continue
            finally:
                if ws is not None:  # not adopted
                    with contextlib.suppress(Exception):
                        await ws.close()
            self.reconnects += 1
            self._connected.set()
            return True
        self._finish(SignalClosed(f"reconnecting failed {self.retries} times: {error!r}"))
        return False

    async def _rejoin(self, ws: ClientConnection) -> None:
        join = _join_message(self.room or "", self.token, self.resume_token)
        if self.resume_token is not None:
            join["last"] = self.last_seq  # what we have: the server sends what came after
        await ws.send(json.dumps(join))
        async with asyncio.timeout(self.timeout):
            while (message := _decode(await ws.recv())) is None or message["type"] != "welcome":
                if (
                    message is not None
                    and message["type"] == "error"
                    and message.get("ref") == "join"
                ):
                    raise SignalRejected(message)
                self._dispatch(message)
        before = set(self._peers)
        self._apply_welcome(message)
        self._queue.put_nowait(message)
        changes = [("peer-joined", p) for p in self._peers.keys() - before]
        changes += [("peer-left", p) for p in before - self._peers.keys()]
        for change, peer in changes:
            self._queue.put_nowait({"type": change, "peer": peer, "synthetic": True})

    def _dispatch(self, message: Message | None) -> None:
        """Answer a pending request, track state, or queue ``message`` for :meth:`receive`."""
        if message is None:
            return
        kind = message.get("type")
        if kind == "welcome" and self._join is not None and not self._join.done():
            self._apply_welcome(message)
            self._join.set_result(message)
            return
        if kind == "pong":
            pong = self._pongs.get(str(message.get("id")))
            if pong is not None and not pong.done():
                pong.set_result(time.monotonic())
            return
        if kind == "ice":
            self.ice_servers = list(message.get("iceServers") or [])
            self.ice_ttl = int(message.get("iceTtl") or 0)
            if self._ice is not None and not self._ice.done():
                self._ice.set_result(message)
                return
        elif kind == "signal" and not self._first_time(message):
            return
        elif kind == "peer-joined":
            self._peers[str(message.get("peer"))] = None
        elif kind == "peer-left":
            self._peers.pop(str(message.get("peer")), None)
        elif kind == "error":
            ref = message.get("ref")
            waiting = self._join if ref == "join" else self._ice if ref == "ice" else None
            if waiting is not None and not waiting.done():
                waiting.set_exception(SignalRejected(message))
                return
        self._queue.put_nowait(message)

    def _first_time(self, signal: Message) -> bool:
        """Whether ``signal`` is new: one at or below :attr:`last_seq` was delivered before a
        reconnect (exactly once); a message without ``seq`` is always new."""
        seq = signal.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return True
        if seq <= self.last_seq:
            return False
        self.last_seq = seq
        return True

    def _apply_welcome(self, welcome: Message) -> None:
        self.peer, self.room, self.resume_token = (
            str(welcome[k]) for k in ("peer", "room", "resume")
        )
        self._peers = dict.fromkeys(str(p) for p in welcome.get("peers", []))
        if not welcome.get("resumed"):
            self.last_seq = 0  # a new session numbers its messages from 1
        self.ice_servers = list(welcome.get("iceServers") or [])
        self.ice_ttl = int(welcome.get("iceTtl") or 0)

    def _fail_requests(self, error: Exception) -> None:
        waiting: list[asyncio.Future[Any]] = [*self._pongs.values()]
        waiting += [f for f in (self._join, self._ice) if f is not None]
        for future in waiting:
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved here: nobody may be waiting any more
        self._ice = None

    def _finish(self, reason: SignalClosed) -> None:
        """Mark the client closed (once): fail requests, wake senders, end the queue."""
        if self._closed is None:
            self._closed = reason
            self._fail_requests(reason)
            self._connected.set()
            self._queue.put_nowait(None)


connect = SignalClient.connect


def _join_message(room: str, token: str | None, resume: str | None) -> Message:
    extra = {"token": token, "resume": resume}
    return {"type": "join", "room": room} | {k: v for k, v in extra.items() if v is not None}


def _decode(frame: str | bytes) -> Message | None:
    """A server frame as a message; None (logged) for anything but a JSON object with a type."""
    with contextlib.suppress(ValueError):
        message = json.loads(frame)
        if isinstance(message, dict) and isinstance(message.get("type"), str):
            return message
    log.warning("signal-bad-frame")
    return None
