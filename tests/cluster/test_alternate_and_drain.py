"""ALTERNATE-SERVER and the graceful drain, black-box against running appliances.

* A node over ``turn.alternate_threshold`` answers an authenticated Allocate with 300 Try
  Alternate, an ALTERNATE-SERVER in turn from ``turn.alternate_servers`` (the TLS list for TLS),
  and MESSAGE-INTEGRITY under the client's key (RFC 8489 §10); an unauthenticated one still gets
  401, so nobody learns the alternates without a credential.
* ``secureconnect drain`` (SIGUSR2): /healthz says draining, new Allocates are redirected (or
  refused with 486 when no alternate is configured), WebSockets get 1001 and new ones 503, the
  allocation in progress keeps relaying and refreshing, and the process exits 0 once it ends.
* Chromium (libwebrtc) follows the 300: its relay candidate comes from the node it was sent to.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from appliance import PYTHON_M, Running, free_port, run_appliance
from attacker import SECRET, WireClient, echo_peer, error_code
from chromium import launch_chromium
from netns import call_in, exec_argv, ip, netns
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from secureconnect.credentials import CredentialMinter
from secureconnect.stun import AttrType as A
from secureconnect.stun import ErrorCode
from secureconnect.stun.attributes import decode_address_untrusted
from secureconnect.stun.message import verify_integrity


class TurnNode:
    """``secureconnect run turn signal`` on 127.0.0.N with the adversarial tests' secret."""

    def __init__(self, app: Running, ip: str, port: int, tls_port: int, http_port: int) -> None:
        self.app, self.ip, self.port, self.tls_port, self.http_port = (
            app,
            ip,
            port,
            tls_port,
            http_port,
        )

    def client(self, transport: str = "udp", user: str = "alice") -> WireClient:
        port = self.tls_port if transport == "tls" else self.port
        return WireClient(transport, port, user=user, server_ip=self.ip)

    def health(self) -> tuple[int, str]:
        try:
            url = f"http://{self.ip}:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@contextmanager
def turn_node(
    workdir: Path, index: int, *settings: str, ip: str = "", namespace: str = ""
) -> Iterator[TurnNode]:
    """Node ``index`` on 127.0.0.N, or on ``ip`` inside ``namespace``."""
    ip = ip or f"127.0.0.{index}"
    port, tls_port, http_port = (
        free_port(),
        free_port(socket.SOCK_STREAM),
        free_port(socket.SOCK_STREAM),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    with run_appliance(
        workdir,
        "turn",
        "signal",
        state_dir=workdir / "state",
        argv_prefix=exec_argv(namespace) if namespace else (),
        settings=(
            f'turn.listen=["{ip}"]',
            f"turn.port={port}",
            f"turn.tls_port={tls_port}",
            f'turn.secrets=["{SECRET}"]',
            f'signal.listen=["{ip}"]',
            f"signal.port={http_port}",
            "signal.tls=false",
            "general.drain_timeout=0.5",
            "general.drain_deadline=30",
            *settings,
        ),
        log_file=workdir / "stderr.log",
    ) as app:
        yield TurnNode(app, ip, port, tls_port, http_port)


def alternate_of(reply: object) -> tuple[str, int]:
    value = reply.get(A.ALTERNATE_SERVER)  # type: ignore[attr-defined]
    assert value is not None, reply
    return decode_address_untrusted(value)


def test_a_busy_node_redirects_authenticated_allocates_in_turn(tmp_path: Path) -> None:
    alternates = '["127.0.0.2:3478", "[::1]:3478"]'
    with turn_node(
        tmp_path,
        1,
        f"turn.alternate_servers={alternates}",
        'turn.tls_alternate_servers=["127.0.0.3:5349"]',
        "turn.tls_alternate_domain=turn.example.net",
        "turn.alternate_threshold=1",
    ) as node:
        first = node.client(user="first")
        assert first.allocate().cls.name == "SUCCESS"
        # The second client: 401 first (no alternates for the unauthenticated)...
        second = node.client(user="second")
        second.send_raw(
            second.build(0x003, [(A.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0)))], authenticate=False)
        )
        assert error_code(second.receive_message()) == ErrorCode.UNAUTHORIZED
        # ... then, authenticated, 300 with the first alternate, under its own key.
        second.learn_nonce()
        redirect = second.call(second.allocate_bytes())
        assert error_code(redirect) == ErrorCode.TRY_ALTERNATE
        assert alternate_of(redirect) == ("127.0.0.2", 3478)
        assert redirect.get(A.ALTERNATE_DOMAIN) is None  # not over UDP
        assert verify_integrity(redirect, second.credential.key)
        third = node.client(transport="tcp", user="third")
        assert alternate_of(third.allocate()) == ("::1", 3478)  # the next one, over TCP too
        tls = node.client(transport="tls", user="fourth")
        over_tls = tls.allocate()
        assert alternate_of(over_tls) == ("127.0.0.3", 5349)
        # RFC 8489 §10: over TLS, the name to check the alternate's certificate against.
        assert over_tls.get(A.ALTERNATE_DOMAIN) == b"turn.example.net"
        # The allocation that exists is not moved: it refreshes as before.
        assert first.call(first.refresh_bytes(600)).cls.name == "SUCCESS"
        for client in (first, second, third, tls):
            client.close()


def drain(app: Running) -> subprocess.CompletedProcess[str]:
    """``secureconnect drain --pid PID`` (not waiting): the command operators run."""
    return subprocess.run(
        [*PYTHON_M, "drain", "--pid", str(app.proc.pid)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_drain_keeps_the_call_and_redirects_or_refuses_the_rest(tmp_path: Path) -> None:
    with (
        turn_node(tmp_path / "a", 1, 'turn.alternate_servers=["127.0.0.2:3478"]') as node,
        turn_node(tmp_path / "b", 2) as lonely,  # no alternate: refuses
        echo_peer("127.0.0.1") as peer,
    ):
        call = node.client(user="caller")
        relayed = call.relayed(call.allocate())
        peer_address = peer.getsockname()
        assert call.call(call.permission_bytes(peer_address)).cls.name == "SUCCESS"
        ws_url = f"ws://{node.ip}:{node.http_port}/ws"

        async def websocket_is_told_to_go() -> int | None:
            async with ws_connect(ws_url, proxy=None) as ws:
                await ws.send('{"type": "join", "room": "r"}')
                await ws.recv()
                assert drain(node.app).returncode == 0
                try:
                    async with asyncio.timeout(5):
                        await ws.recv()
                except ConnectionClosed as closed:
                    return closed.rcvd.code if closed.rcvd else None
            return None

        assert asyncio.run(websocket_is_told_to_go()) == 1001
        status, body = node.health()
        assert (status, '"draining"' in body) == (503, True), body

        async def new_websocket_refused() -> int:
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(ws_url, proxy=None):
                    pass
            return refused.value.response.status_code

        assert asyncio.run(new_websocket_refused()) == 503
        newcomer = node.client(user="newcomer")
        assert alternate_of(newcomer.allocate()) == ("127.0.0.2", 3478)
        # The call goes on: data both ways and a refresh, well after the drain began.
        for n in range(5):
            call.send_raw(call.send_bytes(peer_address, b"ping %d" % n))
            data, source = peer.recvfrom(2048)
            assert (data, source) == (b"ping %d" % n, relayed)
            time.sleep(0.2)
        assert call.call(call.refresh_bytes(600)).cls.name == "SUCCESS"
        assert node.app.proc.poll() is None
        # No alternate: the lonely node refuses with 486 while it drains.
        hold = lonely.client(user="hold")
        hold.allocate()
        assert drain(lonely.app).returncode == 0
        deadline = time.monotonic() + 10  # the drain command only sends the signal: wait for it
        while lonely.health()[0] != 503:
            assert time.monotonic() < deadline, lonely.health()
            time.sleep(0.05)
        refused = lonely.client(user="late")
        assert error_code(refused.allocate()) == ErrorCode.ALLOCATION_QUOTA_REACHED
        hold.call(hold.refresh_bytes(0))
        assert lonely.app.proc.wait(timeout=10) == 0
        # The call ends: the node exits 0 by itself, long before the deadline (30 s).
        call.call(call.refresh_bytes(0))
        started = time.monotonic()
        assert node.app.proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 15
        for client in (call, newcomer, hold, refused):
            client.close()


@contextmanager
def server_and_client_namespaces() -> Iterator[tuple[str, str]]:
    """Two namespaces of this test's, joined by a veth pair: the servers' (10.99.0.1 and
    10.99.0.2) and the browser's (10.99.0.10), so the browser reaches both nodes from one
    address, as a real client does."""
    with netns() as servers, netns() as clients:
        ip(
            "link",
            "add",
            "scv0",
            "netns",
            servers,
            "type",
            "veth",
            "peer",
            "scv1",
            "netns",
            clients,
        )
        for address in ("10.99.0.1/24", "10.99.0.2/24"):
            ip("-n", servers, "address", "add", address, "dev", "scv0")
        ip("-n", clients, "address", "add", "10.99.0.10/24", "dev", "scv1")
        ip("-n", servers, "link", "set", "scv0", "up")
        ip("-n", clients, "link", "set", "scv1", "up")
        yield servers, clients


@pytest.mark.browser
@pytest.mark.root
def test_chromium_follows_try_alternate_to_the_other_node(tmp_path: Path) -> None:
    """Node 1 is busy (threshold 1, held by a test client) and names node 2: Chromium's relay
    candidate is node 2's relayed address, and node 2 took the nonce node 1 gave (the nodes
    share the TURN secret, so their nonces). libwebrtc ignores a redirect to a loopback address
    (Chromium bug 649118): the nodes and the browser run in namespaces of this test's."""
    with (
        server_and_client_namespaces() as (servers, clients),
        turn_node(tmp_path / "b", 2, ip="10.99.0.2", namespace=servers) as target,
        turn_node(
            tmp_path / "a",
            1,
            f'turn.alternate_servers=["{target.ip}:{target.port}"]',
            "turn.alternate_threshold=1",
            ip="10.99.0.1",
            namespace=servers,
        ) as busy,
        launch_chromium(wrapper=exec_argv(clients)) as browser,
    ):
        holder = call_in(servers, lambda: busy.client(user="holder"), timeout=10)
        call_in(servers, holder.allocate, timeout=10)
        credential = CredentialMinter([SECRET]).mint("browser", 600, time.time())
        server = {
            "urls": [f"turn:{busy.ip}:{busy.port}?transport=udp"],
            "username": credential.username,
            "credential": credential.password,
        }
        page = browser.new_page()
        relayed = page.evaluate(GATHER, server)
        page.close()
        busy_metrics = call_in(servers, lambda: metrics_text(busy), timeout=10)
        target_metrics = call_in(servers, lambda: metrics_text(target), timeout=10)
        holder.close()
    assert relayed, "Chromium gathered no relay candidate"
    assert {address.split(":")[0] for address in relayed} == {target.ip}, relayed
    assert "turn_allocations_redirected_total 1" in busy_metrics.splitlines(), busy_metrics
    assert "turn_allocations_created_total 1" in target_metrics.splitlines(), target_metrics


GATHER = """async (server) => {
  const pc = new RTCPeerConnection({iceServers: [server], iceTransportPolicy: 'relay'});
  const relayed = [];
  const done = new Promise(resolve => {
    pc.onicecandidate = e => {
      if (!e.candidate) { resolve(); return; }
      if (e.candidate.type === 'relay') relayed.push(`${e.candidate.address}:${e.candidate.port}`);
    };
  });
  pc.createDataChannel('probe');
  await pc.setLocalDescription(await pc.createOffer());
  await Promise.race([done, new Promise(r => setTimeout(r, 15000))]);
  pc.close();
  return relayed;
}"""


def metrics_text(node: TurnNode) -> str:
    url = f"http://{node.ip}:{node.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())
