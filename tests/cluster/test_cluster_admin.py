"""The operator's commands across a cluster (docs/admin.md, "With several nodes"): nodes on
127.0.0.2 and 127.0.0.3 share a real ``redis-server``; ``secureconnect sessions`` lists both
nodes' allocations, ``revoke`` run once ends a user's allocation on the other node and is
refused there and on a node that joins later (it reads the revocation from Redis), ``--lift``
undoes it (also on a node that was down during the lift, which keeps the revocation in its
state directory: it reads the lift's tombstone when it is back), the hash is pruned of what
refuses nothing any more, and without Redis the commands say so while ``--local`` still works."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aioice_turn
import pytest
import websockets
from aioice_turn import allocate, relays, udp_peer
from appliance import appliance_env
from cluster_nodes import TURN_SECRET, Node, node, room, run, until
from redis_server import RedisServer
from websockets.exceptions import ConnectionClosed

from secureconnect.admin.cluster import keyspace
from secureconnect.credentials import CredentialMinter
from secureconnect.signal.client import SignalClient
from secureconnect.signal.hub import CLOSE_REPLACED


def admin(workdir: Path, redis: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    """``secureconnect ARGS`` with the cluster's backplane, as an operator on any node runs it."""
    argv = [sys.executable, "-m", "secureconnect", *args]
    argv += ["--set", f"signal.backplane={redis.url}", "--state-dir", str(workdir / "state")]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=appliance_env(workdir), check=False
    )


def credential(user: str, minted: float) -> tuple[str, str]:
    made = CredentialMinter((TURN_SECRET,)).mint(user, 600, minted)
    return made.username, made.password


async def allocates(target: Node, username: str, password: str) -> bool:
    assert target.turn_port is not None
    return await aioice_turn.allocates(target.turn_port, username, password, target.ip)


def test_sessions_and_revoke_reach_every_node(tmp_path: Path, redis: RedisServer) -> None:
    before = time.time() - 5
    old, alice = credential("mallory", before), credential("alice", before)
    with (
        node(tmp_path / "node2", 2, redis, turn=True) as two,
        node(tmp_path / "node3", 3, redis, turn=True) as three,
    ):
        asyncio.run(_across(tmp_path, redis, two, three, old=old, alice=alice))
        with node(tmp_path / "node4", 4, redis, turn=True) as four:  # joins after the revocation
            assert not asyncio.run(allocates(four, *old)), "a later node reads it from Redis"
        lifted = admin(tmp_path, redis, "revoke", "--lift", "--user", "mallory")
        assert lifted.returncode == 0, lifted.stderr
        assert asyncio.run(allocates(three, *old)), "lifted everywhere"
        _missed_lift_and_pruning(tmp_path, redis, old)
        redis.stop()
        try:
            down = admin(tmp_path, redis, "sessions")
            assert down.returncode == 1
            assert "cannot reach the cluster's Redis" in down.stderr
            local = admin(tmp_path / "node2", redis, "sessions", "--local", "--json")
            assert local.returncode == 0, local.stderr
        finally:
            redis.start()


async def _across(
    workdir: Path,
    redis: RedisServer,
    two: Node,
    three: Node,
    *,
    old: tuple[str, str],
    alice: tuple[str, str],
) -> None:
    assert three.turn_port is not None
    assert two.turn_port is not None
    mallory, mallory_client = await allocate(three.turn_port, *old, host=three.ip)
    other, other_client = await allocate(two.turn_port, *alice, host=two.ip)
    peer, box = await udp_peer()
    try:
        assert await relays(mallory, mallory_client, peer, box)
        listed = await asyncio.to_thread(admin, workdir, redis, "sessions", "--json")
        assert listed.returncode == 0, listed.stderr
        seen: dict[str, Any] = {a["user"]: a for a in json.loads(listed.stdout)["turn"]}
        assert seen["mallory"]["node"] == "node3"
        assert seen["alice"]["node"] == "node2"

        done = await asyncio.to_thread(admin, workdir, redis, "revoke", "--user", "mallory")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "revoked mallory; ended 1 allocations"
        assert not await relays(mallory, mallory_client, peer, box)
        assert await relays(other, other_client, peer, box), "alice is untouched"
        log = (three.workdir / "stderr.log").read_text().splitlines()
        assert any("event=allocation-ended" in x and "reason=revoked" in x for x in log)
        for target in (two, three):
            assert not await allocates(target, *old), f"refused on {target.ip}"
        kept = json.loads((three.workdir / "state" / "revocations.json").read_text())
        assert [entry["user"] for entry in kept["revocations"]] == ["mallory"]
        again = await asyncio.to_thread(admin, workdir, redis, "sessions", "--json")
        assert [a["user"] for a in json.loads(again.stdout)["turn"]] == ["alice"]
    finally:
        mallory.close()
        other.close()
        peer.close()


def _missed_lift_and_pruning(workdir: Path, redis: RedisServer, old: tuple[str, str]) -> None:
    """Node 4 was down during the lift: its revocations.json still refuses mallory, and the
    tombstone in Redis lifts it when it is back. Meanwhile the hash holds a revocation that
    lapsed long ago and a tombstone older than a week: whoever connects next prunes both."""
    key = keyspace("secureconnect") + "admin:revocations"
    kept = json.loads((workdir / "node4" / "state" / "revocations.json").read_text())
    assert [entry["user"] for entry in kept["revocations"]] == ["mallory"]
    day = 86400.0
    # REST users' revocations whose credentials have expired under any config (7 days at
    # most), a static user's (kept until lifted: it may be static on some node), and a lift
    # older than a week; a damaged entry costs a log line, not the agent.
    stale = {"user": "gone", "revoked_at": time.time() - 10 * day, "until": None, "static": False}
    static = {"user": "carol", "revoked_at": time.time() - 10 * day, "until": None, "static": True}
    ancient = {"user": "forgotten", "lifted_at": time.time() - 8 * day}
    damaged = '{"user": "x", "revoked_at": 1' + "0" * 400 + "}"
    redis.command(
        "HSET",
        key,
        *("gone", json.dumps(stale), "carol", json.dumps(static)),
        *("forgotten", json.dumps(ancient), "x", damaged, "y", "[" * 100_000),
    )
    with node(workdir / "node4", 4, redis, turn=True) as four:
        deadline = time.monotonic() + 15
        while not asyncio.run(allocates(four, *old)):
            assert time.monotonic() < deadline, "the missed lift never reached node 4"
            time.sleep(0.2)
        while b"gone" in (fields := redis.command("HKEYS", key)) or b"forgotten" in fields:
            assert time.monotonic() < deadline, f"not pruned: {fields!r}"
            time.sleep(0.2)
    assert b"mallory" in fields, "the lift's tombstone stays for nodes still away"
    assert b"carol" in fields, "a static user's revocation stays until lifted"
    log = (workdir / "node4" / "stderr.log").read_text()
    assert log.count("event=cluster-admin-bad-entry") == 2, log[-3000:]


def test_kill_ends_a_signaling_peer_on_any_node_even_away(
    tmp_path: Path, redis: RedisServer
) -> None:
    """``kill --peer`` run once, on any node: bob, attached on node 3, gets ``killed``; carol,
    whose connection to node 3 just dropped (away, her grace period running), is ended in
    Redis by whichever node gets there first, once (``ended 1``), and cannot resume. Alice on
    node 2 hears ``peer-left`` for both."""
    with (
        node(tmp_path / "node2", 2, redis) as two,
        node(tmp_path / "node3", 3, redis) as three,
    ):
        run(_kill_peers(tmp_path, redis, two, three))


async def _kill_peers(workdir: Path, redis: RedisServer, two: Node, three: Node) -> None:
    name = room()
    async with SignalClient.connect(two.ws_url, name) as alice:
        bob = await SignalClient.connect(three.ws_url, name)
        carol = await SignalClient.connect(three.ws_url, name)
        assert bob.peer is not None
        assert carol.peer is not None
        for joined in (bob, carol):
            assert await alice.receive() == {"type": "peer-joined", "peer": joined.peer}

        killed = await asyncio.to_thread(admin, workdir, redis, "kill", "--peer", bob.peer)
        assert (killed.returncode, killed.stdout.strip()) == (0, "ended 1"), killed.stderr
        assert await alice.receive() == {"type": "peer-left", "peer": bob.peer}
        await bob.close(leave=False)

        resume, carol_peer = carol.resume_token, carol.peer
        await carol.close(leave=False)  # no leave: away in Redis, resumable for the grace
        await until(lambda: away_in_redis(redis, carol_peer), "carol away")
        killed = await asyncio.to_thread(admin, workdir, redis, "kill", "--peer", carol.peer)
        assert (killed.returncode, killed.stdout.strip()) == (0, "ended 1"), killed.stderr
        assert await alice.receive() == {"type": "peer-left", "peer": carol.peer}
        async with websockets.connect(two.ws_url) as ws:
            await ws.send(json.dumps({"type": "join", "room": name, "resume": resume}))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome"
        assert welcome["resumed"] is False
        assert welcome["peer"] != carol.peer


def away_in_redis(redis: RedisServer, peer: str) -> bool:
    """Whether the cluster counts ``peer``'s session away (in its grace period): other tests'
    sessions in the same Redis make the away gauge of /metrics no proof of it."""
    reply = redis.command("ZSCORE", keyspace("secureconnect") + "away", peer)
    return reply.startswith(b"$") and not reply.startswith(b"$-1")


class Cuttable:
    """A TCP proxy to Redis that can cut its clients off (and refuse them) and let them back:
    one node's link to Redis fails while the rest of the cluster's stays up."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self.conns.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_peer_killed_while_its_node_was_cut_off_is_not_restored(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Node 3 loses Redis (its link through a proxy is cut); the cluster sees carol, attached
    there, go away and the operator kills her from node 2's side (``ended 1``, alice hears
    ``peer-left``). When node 3 reaches Redis again it must not restore her: her connection is
    closed (4001, taken over), and the room does not hear her join again. (Node 3 is cut off
    about a second after it started, before its first periodic heartbeat: the cluster sees it
    die only because a node is in the registry from its connection on.)"""
    proxy = Cuttable(redis.port)
    try:
        with (
            node(tmp_path / "node2", 2, redis) as two,
            node(
                tmp_path / "node3", 3, redis, f"signal.backplane=redis://127.0.0.1:{proxy.port}/0"
            ) as three,
        ):
            run(_kill_across_a_cut(tmp_path, redis, proxy, two, three), timeout=90)
    finally:
        proxy.close()


async def _kill_across_a_cut(
    workdir: Path, redis: RedisServer, proxy: Cuttable, two: Node, three: Node
) -> None:
    name = room()
    async with (
        SignalClient.connect(two.ws_url, name) as alice,
        websockets.connect(three.ws_url) as carol,
    ):
        await carol.send(json.dumps({"type": "join", "room": name}))
        welcome = json.loads(await asyncio.wait_for(carol.recv(), 10))
        peer = welcome["peer"]
        assert await alice.receive() == {"type": "peer-joined", "peer": peer}
        proxy.cut()
        await until(lambda: away_in_redis(redis, peer), "carol away")
        killed = await asyncio.to_thread(admin, workdir, redis, "kill", "--peer", peer)
        assert (killed.returncode, killed.stdout.strip()) == (0, "ended 1"), killed.stderr
        assert await alice.receive() == {"type": "peer-left", "peer": peer}
        proxy.open = True
        assert await close_code(carol, within=30) == CLOSE_REPLACED  # node 3 is back: dropped
        with pytest.raises(TimeoutError):  # and the room did not hear her join again
            await asyncio.wait_for(alice.receive(), 1.0)


async def close_code(ws: websockets.ClientConnection, within: float) -> int | None:
    """Read ``ws`` until the server closes it (within ``within`` s); its close code."""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code
