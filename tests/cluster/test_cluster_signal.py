"""Rooms across nodes on a real Redis: membership, routing in order, ICE servers from the node
registry, and two aiortc peers on two nodes connected relay-only through the third node's TURN.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection
from aiortc_peers import answerer, nominated_types, offerer, open_call
from cluster_nodes import Node, node, room, run, until
from redis_server import RedisServer

from secureconnect.signal.client import SignalClient, SignalRejected


def turn_urls(client: SignalClient) -> list[str]:
    return [u for server in client.ice_servers for u in server["urls"] if u.startswith("turn")]


def offers_turn_of(node: Node, turn: Node) -> bool:
    """Whether ``node`` hands out ``turn``'s TURN server (its report reached the registry)."""
    status, body = node.http("/ice")
    return status == 200 and f"{turn.ip}:{turn.turn_port}".encode() in body


def test_peers_on_different_nodes_meet_and_signal_in_order(cluster: list[Node]) -> None:
    one, two, three = cluster
    name = room()

    async def scenario() -> None:
        async with (
            SignalClient.connect(one.ws_url, name) as alice,
            SignalClient.connect(two.ws_url, name) as bob,
        ):
            assert bob.peers == (alice.peer,)
            assert await alice.receive() == {"type": "peer-joined", "peer": bob.peer}
            assert bob.peer is not None
            for n in range(200):
                await alice.send(bob.peer, n)
            received = [await bob.receive() for _ in range(200)]
            assert [m["data"] for m in received] == list(range(200))  # once each, in order
            assert [m["seq"] for m in received] == list(range(1, 201))
            assert {m["from"] for m in received} == {alice.peer}
            # Capacity is the room's, cluster-wide: the 4th peer is refused on node 3.
            async with SignalClient.connect(three.ws_url, name) as carol:
                assert set(carol.peers) == {alice.peer, bob.peer}
                with pytest.raises(SignalRejected) as refused:
                    await SignalClient.connect(three.ws_url, name)
                assert refused.value.code == "room-full"
            assert await alice.receive() == {"type": "peer-joined", "peer": carol.peer}
            assert await alice.receive() == {"type": "peer-left", "peer": carol.peer}
            # Carol's session ended on node 3 (its leave): its duration, by Redis's clock.
            await until(
                lambda: three.metrics().get("signal_session_duration_seconds_count", 0) == 1,
                "the duration of carol's session on node 3",
            )
            # A peer of another room, or of none, is unknown wherever it is.
            await alice.send("p-000000000000", "x")
            error = await alice.receive()
            assert (error["type"], error["code"]) == ("error", "unknown-peer")
        metrics = one.metrics()
        assert metrics["signal_backplane_up"] == 1
        assert metrics["signal_signals_routed_total"] >= 200

    run(scenario())


def test_ice_servers_come_from_the_registry(cluster: list[Node]) -> None:
    """Nodes 1 and 2 run no TURN: the TURN URLs they hand out are node 3's, from its report."""
    one, _, three = cluster

    async def scenario() -> None:
        await until(lambda: offers_turn_of(one, three), "node 3 in the registry")
        async with SignalClient.connect(one.ws_url, room()) as alice:
            urls = turn_urls(alice)
            assert urls, alice.ice_servers
            assert all(f"{three.ip}:{three.turn_port}" in url for url in urls), urls

    run(scenario())
    status, body = one.http("/ice")
    assert status == 200
    assert f"{three.ip}:{three.turn_port}".encode() in body


def test_aiortc_peers_on_two_nodes_connect_relay_only_through_the_third(
    cluster: list[Node],
) -> None:
    one, two, three = cluster
    texts = ["hello", "across nodes", "x" * 1000]

    async def scenario() -> None:
        ready = lambda: offers_turn_of(one, three) and offers_turn_of(two, three)  # noqa: E731
        await until(ready, "node 3 in the registry")
        name = room()
        pcs: list[RTCPeerConnection] = []
        async with (
            SignalClient.connect(one.ws_url, name) as alice,
            SignalClient.connect(two.ws_url, name) as bob,
        ):
            for client in (alice, bob):
                assert all(three.ip in url for url in turn_urls(client)), client.ice_servers
            assert await alice.receive() == {"type": "peer-joined", "peer": bob.peer}
            try:
                answering = asyncio.create_task(answerer(alice))
                bob_pc, echoes = await offerer(bob, texts)
                pcs += [bob_pc, await answering]
                assert echoes == [f"echo:{text}" for text in texts]
                for pc in pcs:
                    assert nominated_types(pc) == ("relay", "relay")
                allocations = await asyncio.to_thread(three.metrics)
                assert allocations["turn_allocations"] >= 2
            finally:
                for pc in pcs:
                    with contextlib.suppress(Exception):
                        await pc.close()

    run(scenario(), timeout=60)


def test_a_call_through_a_draining_node_goes_on_until_it_ends(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Node 3 (the TURN of a live aiortc call) is drained: /healthz says draining, the call's
    data channel keeps echoing through node 3's relay, new allocations are refused there, and
    node 3 exits 0 once the call has ended."""
    with contextlib.ExitStack() as stack:
        one, two = (stack.enter_context(node(tmp_path / f"n{i}", i, redis)) for i in (1, 2))
        three = stack.enter_context(
            node(tmp_path / "n3", 3, redis, "general.drain_deadline=60", turn=True)
        )

        async def scenario() -> None:
            ready = lambda: offers_turn_of(one, three) and offers_turn_of(two, three)  # noqa: E731
            await until(ready, "node 3 in the registry")
            name = room()
            async with (
                SignalClient.connect(one.ws_url, name) as alice,
                SignalClient.connect(two.ws_url, name) as bob,
            ):
                assert await alice.receive() == {"type": "peer-joined", "peer": bob.peer}
                answering = asyncio.create_task(answerer(alice))
                call = await open_call(bob)
                answer_pc = await answering
                assert await call.exchange(["before"]) == ["echo:before"]
                three.running.proc.send_signal(signal.SIGUSR2)  # what `secureconnect drain` does
                await until(lambda: three.health()[0] == 503, "node 3 to say draining")
                assert three.health()[1]["status"] == "draining"
                for n in range(10):  # five seconds of the call, through the draining relay
                    assert await call.exchange([f"during {n}"]) == [f"echo:during {n}"]
                    await asyncio.sleep(0.5)
                assert three.running.proc.poll() is None
                await call.pc.close()
                await answer_pc.close()

        run(scenario(), timeout=90)
        # The call ended: its allocations went with it (or expire), and node 3 exits 0.
        assert three.running.proc.wait(timeout=60) == 0
        assert "drain" in three.running.log_text()
