"""The Redis backplane: the signaling directory shared by every node (``signal.backplane``).

Each directory change is one Lua script (:mod:`~secureconnect.signal.redis_lua`), run in the
order the hub asked for it by one task, so a sender's messages keep their order. What a node
must hand to its connections comes on its own pub/sub channel. This module is the I/O: it turns
the hub's calls into scripts and their replies into backplane events
(:mod:`~secureconnect.signal.backplane`); the channel's messages become events in the node's
:class:`~secureconnect.signal.mirror.Mirror` of its sessions (sans-IO).

Redis trouble is not an outage (docs/cluster.md). Unreachable at start: :meth:`run` raises
:class:`BackplaneUnavailable` naming the URL, before the component reports started. Lost while
running: ``signal_backplane_up`` drops to 0, ``/healthz`` says degraded, joins are refused with
``unavailable``, signals between sessions of this node are still delivered (without ``seq``),
the rest is refused with ``unavailable``; the connection is retried with a backoff. When Redis
answers again, every local session is restored (re-created if Redis lost it; a session another
node took meanwhile is closed here) and, :data:`CONVERGE_SECONDS` later, each local session is
told the membership changes it missed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import trio

from secureconnect.logs import fields
from secureconnect.signal import redis_lua
from secureconnect.signal.backplane import (
    HISTORY_SECONDS,
    ROOM_FULL,
    Deliver,
    DirectoryCounters,
    Event,
    MailboxLimits,
    Message,
    Refused,
    Replaced,
    Welcome,
    new_peer_id,
    unknown_peer,
)
from secureconnect.signal.messages import encode
from secureconnect.signal.mirror import LocalSession, Mirror

log = logging.getLogger("secureconnect.signal.backplane")
HEARTBEAT = 1.0  # seconds between a node's heartbeats
NODE_TTL = 3.0  # a node silent this long is dead: its sessions are away since its last beat
KILLED_MS = 86_400_000  # how long an operator's kill of an away session keeps it from a restore
CONVERGE_SECONDS = 3.0  # after a reconnect: other nodes restore their sessions meanwhile
BACKOFF = (0.1, 2.0)  # first and longest pause between reconnection attempts
UNAVAILABLE = "unavailable"


class BackplaneUnavailable(Exception):
    """Redis could not be reached when the signaling component started."""


@dataclass(slots=True)
class BackplaneStats:
    up: bool = False
    reconnects: int = 0
    errors: int = 0
    commands: int = 0
    local_routes: int = 0  # delivered here while Redis was unreachable
    cluster_away: int = 0
    cluster_buffered_bytes: int = 0


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hosts}").geturl()


@asynccontextmanager
async def redis_client(url: str, seconds: float) -> AsyncIterator[Any]:
    """A connected coredis client for ``url`` (``redis://``, ``rediss://``, or
    ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE`` for the primary Sentinel names)."""
    try:
        import coredis  # noqa: PLC0415 - only a node with a Redis backplane needs it
        from coredis.retry import NoRetryPolicy  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "the Redis backplane needs coredis: pip install 'secureconnect[cluster]'"
        ) from exc

    options: dict[str, Any] = {
        "stream_timeout": seconds,
        "connect_timeout": seconds,
        "decode_responses": False,
        "retry_policy": NoRetryPolicy(),
    }
    parts = urlsplit(url)
    if not parts.scheme.endswith("+sentinel"):
        async with coredis.Redis.from_url(url, **options) as client:
            yield client
        return
    credentials, _, hosts = parts.netloc.rpartition("@")
    sentinels = [(host, int(port)) for host, port in (h.rsplit(":", 1) for h in hosts.split(","))]
    if credentials:
        user, _, password = credentials.partition(":")
        options.update(username=unquote(user) or None, password=unquote(password) or None)
    async with (
        coredis.Sentinel(sentinels, **options) as sentinel,
        sentinel.primary_for(parts.path.strip("/")) as client,
    ):
        yield client


class RedisBackplane:
    """The directory in Redis; see the module docstring."""

    def __init__(
        self,
        url: str,
        limits: MailboxLimits,
        *,
        prefix: str = "secureconnect",
        node: str | None = None,
        timeout: float = 2.0,
        rng: random.Random | None = None,
        report: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.url = url
        self.shown_url = redacted(url)  # for logs and errors: no password
        self.limits = limits
        self.prefix = "{" + prefix + "}:"
        self.node = node or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.timeout = timeout
        self.rng = rng or random.Random(secrets.randbits(64))
        self.report = report  # this node's load, published with each heartbeat
        self.counters = DirectoryCounters()
        self.stats = BackplaneStats()
        self.nodes: dict[str, dict[str, Any]] = {}  # live nodes' load reports
        self.mirror = Mirror()
        self._commands: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._wake = trio.Event()
        self._idle = trio.Event()  # set while no command waits or runs
        self._down = trio.Event()
        self._deliver: Callable[[list[Event]], None] = lambda events: None
        self._client: Any = None  # while connected
        self._started = False  # the first connection held: later trouble is an outage
        self._sha: dict[str, str] = {}

    # -- the Backplane protocol: queue, answer later ------------------------------------------

    def join(
        self,
        conn: int,
        room: str,
        resume: str | None,
        last: int | None,
        capacity: int,
        *,
        now: float,
    ) -> None:
        self._submit("join", conn, room, resume, last, capacity)  # Redis's clock, not ``now``

    def route(self, conn: int, sender: str, room: str, target: str, message: Message) -> None:
        self._submit("route", conn, sender, room, target, message)

    def leave(self, peer: str, epoch: int, now: float) -> list[Event] | None:
        local = self.mirror.remove(peer, epoch)
        if local is not None:
            self._submit("leave", peer, epoch, local)
        return None

    def detach(self, peer: str, epoch: int, now: float) -> list[Event] | None:
        if self.mirror.remove(peer, epoch) is not None:
            self._submit("detach", peer, epoch)
        return None

    def tick(self, now: float) -> list[Event] | None:
        """Grace periods run in Redis (:meth:`_beat`); here, early deliveries are forgotten."""
        self.mirror.forget_early(time.monotonic())
        return None

    async def end_away(self, peer: str, now: float) -> tuple[bool, list[Event]]:
        """See :class:`~.backplane.Backplane`: one script in Redis, atomic, so when every node
        is asked (a cluster-wide kill) one of them ends it. Its room hears ``peer-left`` through
        the nodes' channels. Without Redis nothing can be ended, and the operator is told so
        (ConnectionError: the admin command reports it as this component's error)."""
        if self._client is None or not self.stats.up:
            raise ConnectionError("the backplane's Redis is unreachable: away sessions not ended")
        # After what the hub queued: a connection that just closed has its detach (which makes
        # the session away) in the queue still (bounded: a busy queue may never be empty).
        with trio.move_on_after(self.timeout):
            await self.flush()
        try:
            age = int(await self._script("end_away", peer, KILLED_MS))
        except Exception as exc:  # Redis trouble: reported, the connection task retries
            log.warning("backplane-end-away-failed", extra=fields(error=repr(exc)[:200]))
            raise ConnectionError(f"the backplane's Redis failed: {exc!r}"[:200]) from None
        if age < -1:
            return False, []
        self._ended([age])
        return True, []

    def metrics(self) -> dict[str, float]:
        stats = self.stats
        return {
            "signal_rooms": len(self.mirror.rooms),
            "signal_sessions": len(self.mirror.sessions),
            "signal_sessions_away": stats.cluster_away,
            "signal_buffered_bytes": stats.cluster_buffered_bytes,
            "signal_backplane_up": int(stats.up),
            "signal_backplane_nodes": len(self.nodes),
            "signal_backplane_reconnects_total": stats.reconnects,
            "signal_backplane_errors_total": stats.errors,
            "signal_backplane_commands_total": stats.commands,
            "signal_backplane_local_routes_total": stats.local_routes,
            **self.counters.samples(),
        }

    def health_state(self) -> str:
        """For ``/healthz`` (``signal-backplane``): ``running``, or ``unreachable`` while Redis
        does not answer (the node is degraded)."""
        return "running" if self.stats.up else "unreachable"

    async def flush(self) -> None:
        """Return once every queued command has run (or Redis is down: they ran here)."""
        await self._idle.wait()

    def _submit(self, kind: str, *args: Any) -> None:
        self._commands.append((kind, args))
        self._wake.set()
        if self._idle.is_set():
            self._idle = trio.Event()

    # -- I/O --------------------------------------------------------------------------------

    async def run(
        self,
        deliver: Callable[[list[Event]], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect (or raise :class:`BackplaneUnavailable`), report started, then serve: the
        command pump, this node's channel, heartbeats, reconnection."""
        self._deliver = deliver
        async with trio.open_nursery() as nursery:
            await nursery.start(self._keep_connected)
            nursery.start_soon(self._pump)
            nursery.start_soon(self._beat_loop)
            task_status.started()

    async def _keep_connected(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Hold a client and this node's channel while Redis answers; on trouble, reconnect
        with a backoff and converge. Started once the first subscription holds; a first
        connection that fails raises :class:`BackplaneUnavailable`."""
        delay = BACKOFF[0]
        first = True
        while True:
            try:
                await cancellation_wins(self._connected(first, task_status))
            except Exception as exc:
                if not self._started:
                    raise BackplaneUnavailable(
                        f"signal.backplane {self.shown_url!r}: {exc}"
                    ) from exc
                self._lost(exc)
                log.info("backplane-reconnect-failed", extra=fields(error=repr(exc)[:200]))
            else:
                delay = BACKOFF[0]
            finally:
                self._client = None
            first = False
            await trio.sleep(delay * self.rng.uniform(0.5, 1.0))
            delay = min(BACKOFF[1], delay * 2)

    async def _connected(self, first: bool, task_status: trio.TaskStatus[None]) -> None:
        """One connection's life: scripts loaded, channel subscribed, until it is lost."""
        async with redis_client(self.url, self.timeout) as client:
            with trio.fail_after(self.timeout * 2):
                await client.ping()
                for name in redis_lua.SCRIPTS:
                    self._sha[name] = _text(await client.script_load(redis_lua.source(name)))
            self._client = client
            self._down = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(self._listen)
                self.stats.up = True
                # At start, sessions Redis still holds under this node's name are a previous
                # process's (a crash, a restart): they go away now, to resume elsewhere.
                await self._restore()
                # In the node registry before the first join: a node that dies before its first
                # heartbeat would otherwise never be seen to die, and its sessions would stay
                # attached to it in Redis for good (members of their rooms, never expiring).
                await self._beat()
                if first:
                    task_status.started()
                    self._started = True
                else:
                    self.stats.reconnects += 1
                    log.warning("backplane-reconnected", extra=fields(url=self.shown_url))
                    nursery.start_soon(self._converge_later)
                await self._down.wait()
                nursery.cancel_scope.cancel()

    async def _listen(self, *, task_status: trio.TaskStatus[None]) -> None:
        """This node's channel: started once subscribed (a failure to subscribe is raised)."""
        channel = self._key("c:" + self.node)
        async with self._client.pubsub(
            channels=[channel], ignore_subscribe_messages=True, retry_policy=None
        ) as pubsub:
            task_status.started()
            try:
                async for message in pubsub:
                    self._on_channel(message.get("data"))
            except Exception as exc:
                self._lost(exc)
                return
        self._lost(ConnectionError("the channel subscription ended"))

    def _lost(self, exc: BaseException) -> None:
        if self.stats.up:
            log.warning("backplane-down", extra=fields(url=self.shown_url, error=repr(exc)[:200]))
        self.stats.up = False
        self.stats.errors += 1
        self._down.set()

    async def _pump(self) -> None:
        """Run the hub's commands in order, against Redis or (while it is down) here."""
        while True:
            if not self._commands:
                self._idle.set()
                self._wake = trio.Event()
                await self._wake.wait()
            kind, args = self._commands.popleft()
            self.stats.commands += 1
            events: list[Event] = []
            if self.stats.up:
                try:
                    events = await getattr(self, "_redis_" + kind)(*args)
                except Exception as exc:  # coredis's errors, OSError, trio.TooSlowError
                    self._lost(exc)
                    events = getattr(self, "_local_" + kind)(*args)
            else:
                events = getattr(self, "_local_" + kind)(*args)
            if events:
                self._deliver(events)

    async def _beat_loop(self) -> None:
        while True:
            await trio.sleep(HEARTBEAT)
            if not self.stats.up:
                continue
            try:
                await self._beat()
            except Exception as exc:
                self._lost(exc)

    async def _beat(self) -> None:
        report = {"at": time.time(), **self.report()}
        reply = await self._script(
            "heartbeat", self.node, int(NODE_TTL * 1000), json.dumps(report, separators=(",", ":"))
        )
        nodes: dict[str, dict[str, Any]] = {}
        for name, info in zip(reply[::2], reply[1::2], strict=False):
            try:
                nodes[_text(name)] = json.loads(info)
            except ValueError:
                continue
        self.nodes = nodes
        grace = int(self.limits.resume_grace * 1000)
        ages = await self._script("expire", grace, 1000)  # of the sessions that ended, in ms
        self.counters.sessions_expired += len(ages)
        self._ended(ages)
        client = self._client
        self.stats.cluster_away = int(await client.zcard(self._key("away")))
        self.stats.cluster_buffered_bytes = int(await client.get(self._key("total")) or 0)

    async def _script(self, name: str, *args: Any) -> Any:
        with trio.fail_after(self.timeout):
            return await self._client.evalsha(
                self._sha[name], keys=[self._key("anchor")], args=[self.prefix, *args]
            )

    def _key(self, suffix: str) -> str:
        return self.prefix + suffix

    # -- commands against Redis ---------------------------------------------------------------

    async def _redis_join(
        self, conn: int, room: str, resume: str | None, last: int | None, capacity: int
    ) -> list[Event]:
        resume_sha = _sha(resume) if resume else ""
        for _ in range(8):  # a fresh peer id is taken at the first try but once in 2**24
            new_resume = secrets.token_urlsafe(24)
            reply = await self._script(
                "join",
                self.node,
                room,
                capacity,
                new_peer_id(self.rng),
                _sha(new_resume),
                resume_sha,
                -1 if last is None else last,
                int(HISTORY_SECONDS * 1000),
            )
            status = _text(reply[0])
            if status != "retry":
                break
        if status == "full":
            return [Refused(conn, *ROOM_FULL)]
        if status == "retry":
            return self._local_join(conn)
        peer, epoch = _text(reply[1]), int(reply[2])
        if status == "resumed":
            self.counters.resumes += 1
            replay = tuple(bytes(text) for text in reply[3])
            peers = tuple(_text(p) for p in reply[4:])
            secret = resume or ""
        else:
            replay, peers, secret = (), tuple(_text(p) for p in reply[3:]), new_resume
        local = LocalSession(room, epoch, _sha(secret), known=set(peers))
        for text in replay:
            local.seq = max(local.seq, _seq_of(text))
        events: list[Event] = [
            Welcome(conn, peer, room, secret, status == "resumed", peers, replay, epoch)
        ]
        events += self.mirror.add(peer, local, time.monotonic())
        return events

    async def _redis_route(
        self, conn: int, sender: str, room: str, target: str, message: Message
    ) -> list[Event]:
        try:
            text = encode(message)
        except (ValueError, RecursionError):  # kept out by parsing; never the sender's failure
            self.counters.unencodable += 1
            return []
        limits = self.limits
        status, dropped = await self._script(
            "route",
            room,
            sender,
            target,
            text,
            limits.resume_buffer,
            limits.resume_buffer_bytes,
            limits.max_buffered_bytes,
            int(HISTORY_SECONDS * 1000),
        )
        self.counters.buffer_dropped += int(dropped)
        status = _text(status)
        if status == "unknown":
            return [unknown_peer(conn, target)]
        if status == "routed":
            self.counters.signals_routed += 1
        elif status == "buffered":
            self.counters.signals_buffered += 1
        return []

    async def _redis_leave(self, peer: str, epoch: int, local: LocalSession) -> list[Event]:
        self._ended([await self._script("leave", peer, epoch)])
        return []

    def _ended(self, ages: list[Any]) -> None:
        """Sessions ended by a script: their ages in ms by Redis's clock (-1: not ended, or
        created by an older script without ``born``) into the duration histogram."""
        for age in ages:
            if int(age) >= 0:
                self.counters.durations.observe(int(age) / 1000.0)

    async def _redis_detach(self, peer: str, epoch: int) -> list[Event]:
        await self._script("detach", peer, epoch, self.node)
        return []

    # -- the same commands while Redis is unreachable --------------------------------------

    def _local_join(self, conn: int, *args: Any) -> list[Event]:
        return [Refused(conn, UNAVAILABLE, "the signaling cluster is unreachable; retry", "join")]

    def _local_route(
        self, conn: int, sender: str, room: str, target: str, message: Message
    ) -> list[Event]:
        local = self.mirror.sessions.get(target)
        if local is None or local.room != room or target == sender:
            return [Refused(conn, UNAVAILABLE, "that peer is out of reach for now", "signal")]
        self.stats.local_routes += 1
        return [Deliver(target, message)]

    def _local_leave(self, peer: str, epoch: int, local: LocalSession) -> list[Event]:
        left = {"type": "peer-left", "peer": peer}
        return self.mirror.membership(local.room, peer, left)

    def _local_detach(self, peer: str, epoch: int) -> list[Event]:
        return []  # restored or detached when Redis answers again (:meth:`_restore`)

    # -- this node's channel ----------------------------------------------------------------

    def _on_channel(self, data: Any) -> None:
        try:
            message = json.loads(data)
        except (TypeError, ValueError):
            self.stats.errors += 1
            return
        events = self.mirror.channel(message, time.monotonic())
        if events:
            self._deliver(events)

    # -- after a reconnect ------------------------------------------------------------------

    async def _restore(self) -> None:
        """Every local session attached here again; sessions Redis holds for this node that are
        no longer here go away (their grace period starts now)."""
        events: list[Event] = []
        for peer, local in list(self.mirror.sessions.items()):
            status = _text(
                await self._script(
                    "restore", self.node, peer, local.room, local.epoch, local.resume_sha, local.seq
                )
            )
            if status == "moved":
                self.mirror.remove(peer)
                events.append(Replaced(peer, local.epoch))
        members = await self._client.smembers(self._key("n:" + self.node))
        for raw in members:
            peer = _text(raw)
            if peer not in self.mirror.sessions:
                epoch = await self._client.hget(self._key("s:" + peer), "epoch")
                if epoch is not None:
                    await self._script("detach", peer, int(epoch), self.node)
        if events:
            self._deliver(events)

    async def _converge_later(self) -> None:
        """Tell each local session the membership changes it missed while Redis was away."""
        await trio.sleep(CONVERGE_SECONDS)
        events: list[Event] = []
        for room in list(self.mirror.rooms):
            members = {_text(p) for p in await self._client.hkeys(self._key("r:" + room))}
            events += self.mirror.converge(room, members)
        if events:
            self._deliver(events)


async def cancellation_wins(work: Awaitable[None]) -> None:
    """Await ``work``; when it ends cancelled, only the cancellation goes on. coredis's clients
    close their connections as they are cancelled and may raise while doing so (anyio's
    ``ClosedResourceError`` next to trio's ``Cancelled``): at shutdown that is no error."""
    try:
        await work
    except BaseExceptionGroup as group:
        cancelled, _ = group.split(trio.Cancelled)
        if cancelled is not None:
            raise cancelled from None
        raise


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _seq_of(text: bytes) -> int:
    try:
        seq = json.loads(text).get("seq")
    except (ValueError, AttributeError):
        return 0
    return seq if isinstance(seq, int) else 0
