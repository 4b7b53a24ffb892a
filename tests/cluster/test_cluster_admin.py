"""The operator's commands across a cluster (docs/admin.md, "With several nodes"): nodes on
127.0.0.2 and 127.0.0.3 share a real ``redis-server``; ``secureconnect sessions`` lists both
nodes' allocations, ``revoke`` run once ends a user's allocation on the other node and is
refused there and on a node that joins later (it reads the revocation from Redis), ``--lift``
undoes it (also on a node that was down during the lift, which keeps the revocation in its
state directory: it reads the lift's tombstone when it is back), the hash is pruned of what
refuses nothing any more, and without Redis the commands say so while ``--local`` still works."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aioice_turn
import websockets
from aioice_turn import allocate, relays, udp_peer
from appliance import appliance_env
from cluster_nodes import TURN_SECRET, Node, node, room, run, until
from redis_server import RedisServer

from secureconnect.admin.cluster import keyspace
from secureconnect.credentials import CredentialMinter
from secureconnect.signal.client import SignalClient


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

        resume = carol.resume_token
        await carol.close(leave=False)  # no leave: away in Redis, resumable for the grace
        await until(lambda: three.metrics().get("signal_sessions_away", 0) >= 1, "carol away")
        killed = await asyncio.to_thread(admin, workdir, redis, "kill", "--peer", carol.peer)
        assert (killed.returncode, killed.stdout.strip()) == (0, "ended 1"), killed.stderr
        assert await alice.receive() == {"type": "peer-left", "peer": carol.peer}
        async with websockets.connect(two.ws_url) as ws:
            await ws.send(json.dumps({"type": "join", "room": name, "resume": resume}))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome"
        assert welcome["resumed"] is False
        assert welcome["peer"] != carol.peer
