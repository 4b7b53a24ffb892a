"""Faults of a cluster on a real Redis: a node killed with SIGKILL mid-exchange (its client
resumes on another node and every message arrives exactly once; its other sessions end for
their rooms after the grace period), and Redis stopped and restarted empty while rooms are live
(local rooms keep working, /healthz and /metrics say degraded, the cluster converges after).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import pytest
from cluster_nodes import GRACE, STEP, Node, room, run, until
from redis_server import RedisServer

from secureconnect.signal.client import SignalClient, SignalRejected

NODE_TTL = 3.0  # secureconnect.signal.redisplane.NODE_TTL


async def next_of(client: SignalClient, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(STEP):
        while True:
            message = await client.receive()
            if message["type"] == kind:
                return message


def healthy(node: Node) -> bool:
    return node.health()[0] == 200


def test_kill_9_of_a_node_mid_exchange_loses_and_repeats_nothing(cluster: list[Node]) -> None:
    one, two, three = cluster
    name = room()
    total = 300

    async def scenario() -> None:
        alice = await SignalClient.connect(one.ws_url, name)
        bob = await SignalClient.connect(two.ws_url, name, fallback_urls=[three.ws_url])
        carol = await SignalClient.connect(two.ws_url, name, retries=1)
        assert bob.peer is not None
        assert carol.peer is not None
        for _ in range(2):
            await next_of(alice, "peer-joined")

        async def send_all() -> None:
            for n in range(total):
                await alice.send(bob.peer or "", n)
                await asyncio.sleep(0.02)

        sender = asyncio.create_task(send_all())
        received: list[int] = []
        while len(received) < 50:
            received.append((await next_of(bob, "signal"))["data"])
        started = time.monotonic()
        await asyncio.to_thread(two.kill)
        while not received or received[-1] != total - 1:
            received.append((await next_of(bob, "signal"))["data"])
        await sender
        assert received == list(range(total))  # none lost, none twice, in order
        assert bob.reconnects == 1
        assert bob.url == three.ws_url
        assert set(bob.peers) == {alice.peer, carol.peer}
        # Carol's node is gone and she did not come back: the room hears it after the grace
        # period, counted from the dead node's last heartbeat.
        left = await next_of(alice, "peer-left")
        assert left["peer"] == carol.peer
        waited = time.monotonic() - started
        assert GRACE - 1 <= waited <= GRACE + NODE_TTL + 4, waited
        assert set(alice.peers) == {bob.peer}
        await bob.send(alice.peer or "", "still here")
        assert (await next_of(alice, "signal"))["data"] == "still here"
        for client in (alice, bob, carol):
            await client.close()

    run(scenario())


def test_redis_outage_keeps_local_rooms_and_the_cluster_converges(
    cluster: list[Node], redis: RedisServer
) -> None:
    one, two, three = cluster
    name = room()

    async def scenario() -> None:
        alice = await SignalClient.connect(one.ws_url, name)
        anna = await SignalClient.connect(one.ws_url, name)
        bob = await SignalClient.connect(two.ws_url, name)
        for _ in range(2):
            await next_of(alice, "peer-joined")
        await asyncio.to_thread(redis.stop)
        await until(lambda: one.health()[0] == 503, "node 1 to say degraded")
        _, body = one.health()
        assert body["status"] == "degraded"
        assert body["components"]["signal-backplane"] == "unreachable"  # type: ignore[index]
        assert one.metrics()["signal_backplane_up"] == 0
        # The room's peers on this node still reach each other; the other node's do not.
        await alice.send(anna.peer or "", "local")
        assert (await next_of(anna, "signal"))["data"] == "local"
        await alice.send(bob.peer or "", "remote")
        error = await next_of(alice, "error")
        assert (error["code"], error["ref"]) == ("unavailable", "signal")
        with pytest.raises(SignalRejected) as refused:
            await SignalClient.connect(one.ws_url, room(), retries=0)
        assert refused.value.code == "unavailable"
        # Anna leaves meanwhile: Alice hears it at once, Bob once the cluster has converged.
        await anna.close()
        assert (await next_of(alice, "peer-left"))["peer"] == anna.peer
        # Redis comes back empty: every node restores its sessions, the room converges.
        await asyncio.to_thread(redis.start)
        for node in cluster:
            await until(partial(healthy, node), f"node {node.index} healthy")
        await asyncio.sleep(4)  # the convergence pass (CONVERGE_SECONDS)
        assert (await next_of(bob, "peer-left"))["peer"] == anna.peer
        await alice.send(bob.peer or "", "after")
        assert (await next_of(bob, "signal"))["data"] == "after"
        await bob.send(alice.peer or "", "back")
        assert (await next_of(alice, "signal"))["data"] == "back"
        dave = await SignalClient.connect(three.ws_url, name)
        assert set(dave.peers) == {alice.peer, bob.peer}
        for client in (alice, bob):
            joined = await next_of(client, "peer-joined")
            assert joined["peer"] == dave.peer
        assert one.metrics()["signal_backplane_reconnects_total"] >= 1
        for client in (alice, bob, dave):
            await client.close()

    run(scenario(), timeout=90)
