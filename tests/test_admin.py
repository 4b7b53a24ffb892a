"""The operator's commands against a running appliance (issue #17, docs/admin.md), black-box:
``secureconnect sessions / kill / revoke`` as an operator runs them, aioice as the TURN client
nobody here wrote, raw WebSocket peers for signaling, and the admin socket's refusal of another
user (root and ``nobody``: CI runs as root)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import servers
import signal_peers
from aioice_turn import STEP, allocate, allocates, relays, udp_peer
from appliance import appliance_env
from signal_peers import Appliance, dial, new_room
from turnwire import Credential, Session, UdpConn, error_code
from websockets.exceptions import ConnectionClosed

from secureconnect.credentials import MAX_TTL, CredentialMinter


def admin(state: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """``secureconnect ARGS --state-dir STATE`` as the operator runs it (as ``user``: setpriv)."""
    argv = [sys.executable, "-m", "secureconnect", *args, "--state-dir", str(state)]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        argv[-2:] = ["--state-dir", "/nonexistent"]  # the caller names the socket
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env=appliance_env(state.parent),
        check=False,
    )


def sessions(state: Path, *extra: str) -> dict[str, Any]:
    done = admin(state, "sessions", "--json", *extra)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def credential(secret: str, user: str, ttl: int, now: float | None = None) -> tuple[str, str]:
    minted = CredentialMinter((secret,)).mint(user, ttl, time.time() if now is None else now)
    return minted.username, minted.password


def log_lines(workdir: Path, event: str) -> list[str]:
    """The lines of ``secureconnect_turn``'s log about ``event``."""
    text = (workdir / "secureconnect.log").read_text()
    return [line for line in text.splitlines() if f"event={event}" in line]


def logged_at(line: str) -> float:
    """A log line's ``ts=`` as Unix time."""
    stamp = line.split("ts=", 1)[1].split(" ", 1)[0]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# -- sessions and kill: a live aioice allocation and live signaling peers ----------------------


def test_sessions_lists_and_kill_ends_an_allocation_and_a_peer(tmp_path: Path) -> None:
    with signal_peers.appliance(tmp_path, tls=True) as app:
        signal_peers.run(_sessions_and_kill(app))


async def _sessions_and_kill(app: Appliance) -> None:
    username, password = credential(app.turn_secret, "alice", 600)
    transport, client = await allocate(app.turn_port, username, password)
    peer, box = await udp_peer()
    try:
        assert await relays(transport, client, peer, box)
        room = new_room()
        first, second = await dial(app), await dial(app)
        await first.join(room)
        await second.join(room)
        await first.expect("peer-joined", peer=second.id)

        listed = await asyncio.to_thread(sessions, app.state_dir)
        [allocation] = listed["turn"]
        relayed = "{}:{}".format(*transport.get_extra_info("sockname"))
        assert allocation["user"] == "alice"
        assert allocation["username"] == username
        assert allocation["transport"] == "udp"
        assert allocation["relayed"] == allocation["id"] == relayed
        assert allocation["client"].startswith("127.0.0.1:")
        assert allocation["to_peer_packets"] == 1
        assert allocation["to_peer_bytes"] == len(b"to-peer")
        assert allocation["to_client_packets"] == 1
        assert allocation["permissions"] == ["127.0.0.1"]
        peer_text = "{}:{}".format(*peer.get_extra_info("sockname"))
        assert list(allocation["channels"].values()) == [peer_text]
        assert 0 < allocation["lifetime_left"] <= 600
        assert allocation["age"] >= 0
        by_peer = {s["peer"]: s for s in listed["signal"]}
        assert set(by_peer) == {first.id, second.id}
        assert by_peer[first.id]["room"] == room
        assert by_peer[first.id]["address"] == "127.0.0.1"
        only = await asyncio.to_thread(sessions, app.state_dir, "--user", "alice")
        assert [a["id"] for a in only["turn"]] == [relayed]
        assert only["signal"] == []

        table = await asyncio.to_thread(admin, app.state_dir, "sessions")
        assert table.returncode == 0, table.stderr
        assert relayed in table.stdout
        assert first.id in table.stdout

        killed = await asyncio.to_thread(admin, app.state_dir, "kill", "--allocation", relayed)
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.strip() == "ended 1"
        assert (await asyncio.to_thread(sessions, app.state_dir))["turn"] == []
        ended = await asyncio.to_thread(app.metrics)
        assert ended['turn_allocations_ended_total{reason="killed"}'] == 1
        assert not await relays(transport, client, peer, box)

        killed = await asyncio.to_thread(admin, app.state_dir, "kill", "--peer", second.id)
        assert killed.returncode == 0, killed.stderr
        error = await second.expect("error", code="killed")
        assert error["message"]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(second.ws.recv(), STEP)
        assert second.ws.close_code == 4002
        await first.expect("peer-left", peer=second.id)
        await first.usable()
        left = await asyncio.to_thread(sessions, app.state_dir)
        assert [s["peer"] for s in left["signal"]] == [first.id]

        nothing = await asyncio.to_thread(admin, app.state_dir, "kill", "--user", "nobody-here")
        assert nothing.returncode == 1
        assert nothing.stdout.strip() == "ended 0"
    finally:
        transport.close()
        peer.close()


# -- revoke: within a second, 401 for old credentials, kept across a restart ------------------


@contextmanager
def turn_node(workdir: Path, *settings: str) -> Iterator[servers.TurnTarget]:
    with servers.secureconnect_turn(
        workdir, "general.log_level=info", 'turn.users=["bob:bob-password"]', *settings
    ) as target:
        yield target


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_revoke_ends_allocations_at_once_and_refuses_old_credentials_across_restarts(
    tmp_path: Path, workers: int
) -> None:
    state = tmp_path / "state"
    before = time.time()
    settings = [f"turn.workers={workers}"]
    with turn_node(tmp_path, *settings) as target:
        old = credential(target.secret, "mallory", 600, before - 5)
        other = credential(target.secret, "alice", 600, before - 5)
        asyncio.run(_revoke_live(target, state, old, other))
        [command] = [
            line for line in log_lines(tmp_path, "admin-command") if "user=mallory" in line
        ]
        [ended] = [line for line in log_lines(tmp_path, "allocation-ended") if "mallory" in line]
        assert "reason=revoked" in ended
        assert logged_at(ended) - logged_at(command) < 1.0, (command, ended)
        # Minted after the revocation (REST expiries are whole seconds: a second later).
        newer = credential(target.secret, "mallory", MAX_TTL, time.time() + 1.5)
        assert asyncio.run(allocates(target.port, *newer)), "a credential minted after works"
    with turn_node(tmp_path, *settings) as target:  # a restart: the revocation was kept
        assert not asyncio.run(allocates(target.port, *old))
        assert asyncio.run(allocates(target.port, *newer))
        listed = admin(state, "revoke", "--list")
        assert listed.returncode == 0
        assert listed.stdout.startswith("mallory\trevoked ")
        lifted = admin(state, "revoke", "--lift", "--user", "mallory")
        assert lifted.returncode == 0
        assert lifted.stdout.strip() == "lifted mallory"
        assert asyncio.run(allocates(target.port, *old)), "lifted: the old credential works"


async def _revoke_live(
    target: servers.TurnTarget, state: Path, old: tuple[str, str], other: tuple[str, str]
) -> None:
    transport, client = await allocate(target.port, *old)
    bystander, bystander_client = await allocate(target.port, *other)
    peer, box = await udp_peer()
    try:
        assert await relays(transport, client, peer, box)
        assert await relays(bystander, bystander_client, peer, box)
        done = await asyncio.to_thread(admin, state, "revoke", "--user", "mallory")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "revoked mallory; ended 1 allocations"
        # The allocation is gone when the command returns: no relaying either way.
        left = await asyncio.to_thread(sessions, state)
        assert [a["user"] for a in left["turn"]] == ["alice"]
        assert not await relays(transport, client, peer, box)
        assert await relays(bystander, bystander_client, peer, box), "alice is untouched"
        assert not await allocates(target.port, *old), "a pre-revocation credential gets 401"
        static = await asyncio.to_thread(admin, state, "revoke", "--user", "bob", "--until", "1h")
        assert static.returncode == 0, static.stderr
        assert not await allocates(target.port, "bob", "bob-password")
    finally:
        transport.close()
        bystander.close()
        peer.close()


# -- the socket: the service user's only ------------------------------------------------------


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A runtime directory outside pytest's (whose parents are root's only), mode 0700."""
    path = Path(tempfile.mkdtemp(prefix="sc-admin-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_admin_socket_refuses_another_user(tmp_path: Path, runtime_dir: Path) -> None:
    assert os.geteuid() == 0, "this test runs as root (as CI does), to be another user too"
    with turn_node(tmp_path, f"general.runtime_dir={runtime_dir}"):
        sock = runtime_dir / "admin-turn.sock"
        assert sock.stat().st_mode & 0o777 == 0o600
        assert runtime_dir.stat().st_mode & 0o777 == 0o700
        denied = admin(tmp_path, "sessions", "--socket", str(sock), user="65534")
        assert denied.returncode == 1
        assert "permission denied" in denied.stderr
        # Even when the modes are opened up (a mistake), the kernel's word on who is calling
        # (SO_PEERCRED) keeps the answer from anyone but the service user and root.
        runtime_dir.chmod(0o755)
        sock.chmod(0o777)
        refused = admin(tmp_path, "sessions", "--socket", str(sock), user="65534")
        assert refused.returncode == 1
        assert "not allowed" in refused.stderr
        assert any("uid=65534" in line for line in log_lines(tmp_path, "admin-refused"))
        root = admin(tmp_path, "sessions", "--socket", str(sock))
        assert root.returncode == 0, root.stderr


def test_commands_say_when_no_process_runs(tmp_path: Path) -> None:
    done = admin(tmp_path / "state", "sessions")
    assert done.returncode == 1
    assert "no admin socket found" in done.stderr
    stale = tmp_path / "state" / "run"
    stale.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale / "admin-all.sock"))
    dead.close()  # a crashed process's socket file: skipped without a word
    done = admin(tmp_path / "state", "sessions", "--json")
    assert done.returncode == 1, done.stdout
    assert done.stderr == ""
    # A request no process would take is refused before any is asked (status 2: misuse).
    bad = admin(tmp_path / "state", "revoke", "--user", "a\tb")
    assert bad.returncode == 2
    assert "control characters" in bad.stderr
    assert admin(tmp_path / "state", "revoke", "--user", "a", "--until", "soon").returncode == 2


def test_a_busy_worker_s_listing_arrives_whole(tmp_path: Path) -> None:
    """With TURN workers, each worker sends its part of a listing to the parent over a message
    socket, in pieces that fit the socket's buffer: 1,200 allocations from 16 addresses (the
    workers share them out by address; about 500 KB of JSON, more than one message may hold)
    are all listed, each worker's under its own name."""
    with turn_node(tmp_path, "turn.workers=2") as target:
        state = tmp_path / "state"
        minter = CredentialMinter((target.secret,))
        made = 0
        for index in range(1200):
            minted = minter.mint(f"user{index % 10}", 600, time.time())
            session = Session(
                UdpConn((target.host, target.port), (f"127.0.0.{1 + index % 16}", 0)),
                Credential(minted.username, minted.password),
            )
            answer = session.allocate()
            session.conn.close()  # a UDP allocation outlives its socket (its port may be reused:
            made += answer is not None and error_code(answer) == 0  # then 437, not counted)
        listed = sessions(state)["turn"]
        assert len(listed) == made > 1000
        assert {a["component"] for a in listed} == {"turn-worker-1", "turn-worker-2"}
        assert len({a["id"] for a in listed}) == made
