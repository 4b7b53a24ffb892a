"""How a node reaches Redis: unreachable at start (a clear error naming the URL), over TLS
(``rediss://``, a CA of the test's own), and through Sentinel (``redis+sentinel://``), each with
a message routed between two nodes to show it works."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trustme
from appliance import PYTHON_M, appliance_env, free_port
from cluster_nodes import Node, node
from redis_server import RedisServer

from secureconnect.signal.client import SignalClient, SignalRejected
from secureconnect.signal.tokens import RoomTokens


def signal_between(one: Node, two: Node) -> None:
    async def scenario() -> None:
        async with asyncio.timeout(20):
            room = f"url-{one.port}"
            alice = await SignalClient.connect(one.ws_url, room)
            bob = await SignalClient.connect(two.ws_url, room)
            await alice.send(bob.peer or "", "over the backplane")
            message = await bob.receive()
            assert (message["type"], message["data"]) == ("signal", "over the backplane")
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_unreachable_redis_at_start_is_an_error_naming_the_url(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port(socket.SOCK_STREAM)}/0"  # nothing listens there
    result = subprocess.run(
        [
            *PYTHON_M,
            "run",
            "signal",
            "--state-dir",
            str(tmp_path / "state"),
            "--set",
            "signal.port=0",
            "--set",
            f"signal.backplane={url}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=appliance_env(tmp_path),
        check=False,
    )
    assert result.returncode == 1, result
    assert f"cannot start signal: signal.backplane '{url}'" in result.stderr, result.stderr


def test_rediss_with_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    tls_port = free_port(socket.SOCK_STREAM)
    redis = RedisServer(
        tmp_path,
        extra=(
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(tmp_path / "cert.pem"),
            "--tls-key-file",
            str(tmp_path / "key.pem"),
            "--tls-ca-cert-file",
            str(tmp_path / "ca.pem"),
            "--tls-auth-clients",
            "no",
        ),
    )
    redis.start()
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
    try:
        with contextlib.ExitStack() as stack:
            one, two = (
                stack.enter_context(node(tmp_path / f"n{i}", i, redis, f"signal.backplane={url}"))
                for i in (1, 2)
            )
            signal_between(one, two)
            # The plain port saw no client of ours: everything went over TLS.
            clients = redis.command("CLIENT", "LIST").decode()
            assert clients.count("laddr=127.0.0.1:" + str(tls_port)) >= 2, clients
    finally:
        redis.stop()


def test_sentinel(tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    primary.start()
    sentinel_port = free_port(socket.SOCK_STREAM)
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its file: one of the test's own
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {primary.port} 1\n"
    )
    sentinel = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis+sentinel://127.0.0.1:{sentinel_port}/main"
    watcher = RedisServer(tmp_path, port=sentinel_port)  # only to ping the Sentinel
    deadline = time.monotonic() + 10
    while not watcher.ping():
        assert time.monotonic() < deadline, "the Sentinel did not answer"
        time.sleep(0.05)
    try:
        with contextlib.ExitStack() as stack:
            one, two = (
                stack.enter_context(node(tmp_path / f"n{i}", i, primary, f"signal.backplane={url}"))
                for i in (1, 2)
            )
            signal_between(one, two)
    finally:
        sentinel.terminate()
        sentinel.wait(timeout=10)
        primary.stop()


def test_a_node_with_a_backplane_stops_with_status_0(tmp_path: Path, redis: RedisServer) -> None:
    """SIGTERM and SIGUSR2 (a drain with nothing to wait for) end a node with status 0: coredis
    errors raised while its connections are cancelled are no failure (half of these stops
    exited 1 before)."""
    codes = []
    for n in range(8):
        with node(tmp_path / f"n{n}", 1 + n % 3, redis) as running:
            time.sleep(0.2 + (n % 4) * 0.3)
            codes.append(running.running.stop(signal.SIGTERM if n % 2 else signal.SIGUSR2))
    assert codes == [0] * 8


def test_room_tokens_hold_on_every_node(tmp_path: Path, redis: RedisServer) -> None:
    """With one room-token secret on every node, a token minted by the application's backend
    opens its room on any node, and only that room."""
    secret = "cluster-room-secret"
    auth = ("signal.auth=token", f'signal.token_secrets=["{secret}"]')
    token = RoomTokens([secret]).mint("booked", 600, time.time())
    with contextlib.ExitStack() as stack:
        one, two = (stack.enter_context(node(tmp_path / f"n{i}", i, redis, *auth)) for i in (1, 2))

        async def scenario() -> None:
            async with asyncio.timeout(20):
                alice = await SignalClient.connect(one.ws_url, "booked", token=token)
                bob = await SignalClient.connect(two.ws_url, "booked", token=token)
                assert bob.peers == (alice.peer,)
                with pytest.raises(SignalRejected) as refused:
                    await SignalClient.connect(two.ws_url, "other", token=token, retries=0)
                assert refused.value.code == "unauthorized"
                await alice.close()
                await bob.close()

        asyncio.run(scenario())
