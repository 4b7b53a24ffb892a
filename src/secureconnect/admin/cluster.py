"""The admin commands across the nodes of a cluster, over the Redis backplane (docs/admin.md).

With ``signal.backplane`` set, every process whose components hold sessions (TURN, signaling)
runs a :class:`ClusterAdmin`: it subscribes to the cluster's admin channel (``{<prefix>}:admin``)
and carries out what arrives there on its own components through its
:class:`~.server.AdminServer`, as if it had come over its socket, then pushes its answer onto the
list the request names. The commands (:func:`cluster_request`) publish a request, learn from
PUBLISH how many processes received it, and collect that many answers (or say which are
missing when :data:`ANSWER_SECONDS` pass). Nothing else travels between nodes: there is no
admin port on the network, and only someone who can write to the cluster's Redis can send
these requests (docs/cluster.md: Redis is the cluster's trust anchor already).

Revocations are also kept in Redis, in the hash ``{<prefix>}:admin:revocations`` (user -> the
revocation as JSON): a node that was down or cut off from Redis when a user was revoked reads
the hash whenever it connects and revokes what it did not know, with the original time. A
cluster-wide lift replaces the user's entry with a tombstone (``lifted_at``), so a node that
missed the lift lifts its own older revocation of that user when it connects, too. Every TURN
process that reads the hash prunes what no longer matters to any node, whatever its config:
revocations that refuse nothing even with the longest credential TTL a config allows (7 days)
and, for a user the revoking command's config named static, only once their ``--until`` has
passed; tombstones older than :data:`TOMBSTONE_SECONDS`. A field is deleted only if unchanged
since read, so a revocation written meanwhile is kept. An entry that cannot be read or carried
out costs a log line, never the agent.

Redis trouble is not an outage: the agent retries with a backoff, the local commands (the
socket) keep working, and the cluster-wide commands say that Redis cannot be reached.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import trio

from secureconnect.admin.protocol import AdminError, Request, parse_request
from secureconnect.admin.server import AdminServer
from secureconnect.admin.store import RevocationStore
from secureconnect.logs import fields
from secureconnect.signal.redisplane import cancellation_wins, redacted, redis_client
from secureconnect.turn.revocations import RevocationError, Revocations

log = logging.getLogger("secureconnect.admin")

CHANNEL: Final = "admin"
REVOCATIONS: Final = "admin:revocations"
ANSWER_SECONDS: Final = 5.0  # for every process to answer a cluster-wide request
REPLY_TTL: Final = 30  # seconds an answer list lives in Redis
BACKOFF: Final = (0.2, 5.0)
#: how long a cluster-wide lift is remembered for nodes that were cut off from Redis
TOMBSTONE_SECONDS: Final = 7 * 86400.0
#: the longest ``turn.credential_ttl`` any node's config may have (config/checks.py ``ttl``):
#: what pruning the shared hash assumes, so that no node's credentials outlive an entry
LONGEST_TTL: Final = 7 * 86400.0
#: KEYS[1] the hash; ARGV: field, the value read. Deletes the field only if it still holds that
#: value (a revoke written between the read and the prune is kept). -> 1 if deleted
_PRUNE: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass
class ClusterAdmin:
    """This process's part in the cluster-wide commands; see the module docstring."""

    url: str
    prefix: str
    node: str
    server: AdminServer
    timeout: float = 2.0
    up: bool = False
    handled: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the channel until cancelled; Redis trouble is retried, never raised."""
        task_status.started()
        delay = BACKOFF[0]
        while True:
            try:
                await cancellation_wins(self._connected())
            except Exception as exc:  # Redis gone, a timeout: retried
                if self.up:
                    log.warning("cluster-admin-down", extra=fields(error=repr(exc)[:200]))
                else:  # at most one line per backoff step (5 s once it has grown)
                    log.info("cluster-admin-connect-failed", extra=fields(error=repr(exc)[:200]))
            self.up = False
            await trio.sleep(delay)
            delay = min(BACKOFF[1], delay * 2)

    async def _connected(self) -> None:
        async with (
            redis_client(self.url, self.timeout) as client,
            client.pubsub(
                channels=[keyspace(self.prefix) + CHANNEL],
                ignore_subscribe_messages=True,
                retry_policy=None,
            ) as pubsub,
        ):
            # Subscribed first: a revoke published while the hash is read waits in the
            # subscription instead of falling between the two.
            await self._catch_up(client)
            self.up = True
            log.info("cluster-admin-up", extra=fields(url=redacted(self.url)))
            async for message in pubsub:
                await self._handle(client, message.get("data"))

    async def _catch_up(self, client: Any) -> None:
        """Revoke (and lift) here what the cluster revoked (and lifted) while this process was
        not listening; prune the hash of what matters no more."""
        store = self.server.store
        if store is None:
            return
        key = keyspace(self.prefix) + REVOCATIONS
        entries = await client.hgetall(key)
        for field, value in entries.items():
            try:
                prune = await self._catch_up_one(store, field, value)
            except Exception as exc:  # what is in Redis may be anything: a log line, no more
                log.warning(
                    "cluster-admin-bad-entry",
                    extra=fields(field=repr(field)[:100], error=repr(exc)[:200]),
                )
                continue
            if prune:  # Redis trouble here is the connection's: raised, and retried
                await client.eval(_PRUNE, keys=[key], args=[field, value])

    async def _catch_up_one(self, store: RevocationStore, field: Any, value: Any) -> bool:
        """Carry out one field of the revocations hash here; whether it is to be pruned."""
        now = time.time()
        lifted_at = _lifted_at(value)
        if lifted_at is not None:
            user = field.decode() if isinstance(field, bytes) else str(field)
            known = store.revocations.entries.get(user)
            if known is not None and known.revoked_at <= lifted_at:
                await self.server.execute(Request("lift", user=user), now=now)
            return lifted_at < now - TOMBSTONE_SECONDS
        [entry] = Revocations.from_json(_listing_of(value)).entries.values()
        if entry.lapsed(now, LONGEST_TTL, _named_static(value)):
            return True  # refuses nothing on any node, whatever its config
        if entry.lapsed(now, store.max_ttl, entry.user in store.static_users):
            return False  # refuses nothing here any more
        known = store.revocations.entries.get(entry.user)
        if known is None or known.revoked_at < entry.revoked_at:
            request = Request("revoke", user=entry.user, until=entry.until)
            await self.server.execute(request, now=entry.revoked_at)
        return False

    async def _handle(self, client: Any, data: Any) -> None:
        """One request from the channel: carried out here, answered on its reply list."""
        try:
            request, reply, at = self._parse(data)
        except (ValueError, TypeError, RecursionError, AdminError) as exc:
            log.warning("cluster-admin-bad-request", extra=fields(error=str(exc)[:200]))
            return
        self.handled += 1
        answer: dict[str, Any] = {"ok": True, "node": self.node, "pid": os.getpid()}
        try:
            answer.update(await self.server.execute(request, now=at))
        except (AdminError, RevocationError) as exc:
            answer = {"ok": False, "node": self.node, "pid": os.getpid(), "error": str(exc)}
        except Exception as exc:  # a bug: this request fails, the channel is kept
            log.exception("cluster-admin-request-failed", extra=fields(command=request.command))
            answer = {"ok": False, "node": self.node, "pid": os.getpid(), "error": repr(exc)}
        await client.rpush(reply, [json.dumps(answer, default=str)])
        await client.expire(reply, REPLY_TTL)

    def _parse(self, data: Any) -> tuple[Request, str, float | None]:
        """A channel message's request, reply list and revocation time (checked: what is in
        Redis is the cluster's, but a bad message must cost nothing but a log line)."""
        message = json.loads(data)
        reply = message.pop("reply", None)
        at = message.pop("revoked_at", None)
        request = parse_request(json.dumps(message).encode())
        if not isinstance(reply, str) or not reply.startswith(keyspace(self.prefix) + "admin:r:"):
            raise AdminError("no reply list")
        if request.command == "revoke" and not _finite(at):
            raise AdminError("a cluster-wide revocation carries its time")
        return request, reply, at


def keyspace(prefix: str) -> str:
    """The start of every admin key: ``{prefix}:``, as the signaling backplane's keys (the
    braces are a Redis Cluster hash tag: docs/cluster.md)."""
    return "{" + prefix + "}:"


def _finite(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _lifted_at(value: bytes | str) -> float | None:
    """A tombstone's lift time (``{"user": ..., "lifted_at": T}``); None for anything else."""
    try:
        entry = json.loads(value)
    except (ValueError, RecursionError):
        return None
    at = entry.get("lifted_at") if isinstance(entry, dict) else None
    return float(at) if isinstance(at, int | float) and _finite(at) else None


def _named_static(value: bytes | str) -> bool:
    """Whether the command that wrote this revocation knew its user as a static user (its
    ``static``; an entry without it counts as static: kept until its ``until`` passes)."""
    entry = json.loads(value)
    return not isinstance(entry, dict) or entry.get("static") is not False


def _listing_of(value: bytes | str) -> str:
    """One hash value as a one-entry revocation list (the list's parser checks it)."""
    text = value.decode() if isinstance(value, bytes) else value
    return json.dumps({"version": 1, "revocations": [json.loads(text)]})


async def cluster_request(
    url: str,
    prefix: str,
    command: str,
    fields_: Mapping[str, Any],
    static_users: frozenset[str] = frozenset(),
) -> tuple[list[dict[str, Any]], int]:
    """Publish ``command`` to every process of the cluster and collect their answers; (the
    answers, how many processes received it). A revocation is written to the hash first, with
    its time, so a node that misses the message reads it when it connects; ``static_users``
    (this command's config's) says whether it may be pruned once its credentials expire."""
    message: dict[str, Any] = {"command": command, **{k: v for k, v in fields_.items() if v}}
    space = keyspace(prefix)
    reply = f"{space}admin:r:{secrets.token_hex(8)}"
    async with redis_client(url, ANSWER_SECONDS) as client:
        user = fields_.get("user")
        if command == "revoke":
            message["revoked_at"] = at = time.time()
            entry = {
                "user": user,
                "revoked_at": at,
                "until": fields_.get("until"),
                "static": user in static_users,
            }
            await client.hset(space + REVOCATIONS, {str(user): json.dumps(entry)})
        elif command == "lift":  # a tombstone: a node that misses the message lifts later
            entry = {"user": user, "lifted_at": time.time()}
            await client.hset(space + REVOCATIONS, {str(user): json.dumps(entry)})
        message["reply"] = reply
        receivers = int(await client.publish(space + CHANNEL, json.dumps(message)))
        answers: list[dict[str, Any]] = []
        deadline = trio.current_time() + ANSWER_SECONDS
        while len(answers) < receivers and (left := deadline - trio.current_time()) > 0:
            popped = await client.blpop([reply], timeout=max(0.1, min(1.0, left)))
            if popped is not None:
                answers.append(json.loads(popped[1]))
        await client.delete([reply])
    return answers, receivers
