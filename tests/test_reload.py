"""Operations guarantees of the running appliance, end to end on real loopback sockets.

- SIGHUP swaps the certificate for *new* TLS and WSS connections while connections opened before
  keep working, and a TURN allocation made before survives (Refresh, relaying).
- At INFO, traffic does not produce log lines (nothing per packet, Binding or message).
- At DEBUG, no secret reaches the logs: the TURN secret, REST passwords, room-token secrets and
  tokens, the resume token of a signaling session.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from appliance import Running, free_port, run_appliance
from websockets.sync.client import ClientConnection, connect

from secureconnect.credentials import rest_password
from secureconnect.netaddr import Address
from secureconnect.signal.tokens import RoomTokens
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StreamFramer,
    StunMessage,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_u32,
    encode_xor_address,
    long_term_key,
    new_transaction_id,
)

A = AttrType


# -- the appliance ---------------------------------------------------------------------------------


@dataclass
class Appliance:
    """``secureconnect run -c config.toml`` in a subprocess (see :mod:`appliance`) and its ports."""

    running: Running
    turn: int
    turns: int
    signal: int
    stdout: str = ""  # everything it printed on stdout, read once it has exited


@contextmanager
def appliance(
    tmp_path: Path, settings: dict[str, dict[str, Any]], *args: str
) -> Iterator[Appliance]:
    """Run on free ports with ``settings`` merged into the config; STUN is served by TURN.
    A test that ends normally also checks that SIGTERM makes it exit 0."""
    turn, turns, sig = free_port(), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    sections: dict[str, dict[str, Any]] = {
        "general": {"state_dir": str(tmp_path / "state"), "drain_timeout": 0.5},
        "stun": {"port": turn},
        "turn": {"port": turn, "tls_port": turns},
        "signal": {"port": sig},
    }
    for name, values in settings.items():
        sections.setdefault(name, {}).update(values)
    config = tmp_path / "config.toml"
    config.write_text(
        "\n".join(
            f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
            for name, values in sections.items()
        )
    )
    with run_appliance(tmp_path, extra_args=("-c", str(config), *args)) as running:
        app = Appliance(running, turn, turns, sig)
        yield app
        assert running.stop(signal.SIGTERM, timeout=15) == 0
        app.stdout = "".join(running.output)


# -- clients ---------------------------------------------------------------------------------------


class TurnClient:
    """A TURN client over UDP with REST API credentials (RFC 8656, RFC 8489 §9.2)."""

    def __init__(self, port: int, secret: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.username = f"{int(time.time()) + 600}:ops"
        self.password = rest_password(secret, self.username)
        self.realm = ""
        self.nonce = b""
        self.indications: list[StunMessage] = []

    def request(self, method: int, attributes: list[tuple[int, bytes]]) -> StunMessage:
        """Send a request (learning realm and nonce from the first 401) and return the answer."""
        for _ in range(2):
            attrs, key = list(attributes), None
            if self.nonce:
                attrs += [
                    (A.USERNAME, self.username.encode()),
                    (A.REALM, self.realm.encode()),
                    (A.NONCE, self.nonce),
                ]
                key = long_term_key(self.username, self.realm, self.password)
            tid = new_transaction_id()
            self.sock.send(
                encode_message(method, MessageClass.REQUEST, tid, attrs, integrity_key=key)
            )
            reply = self.receive(tid)
            nonce, realm = reply.get(A.NONCE), reply.get(A.REALM)
            if reply.cls is MessageClass.ERROR and not self.nonce and nonce and realm:
                self.nonce, self.realm = nonce, realm.decode()
                continue
            return reply
        raise AssertionError("no answer after the challenge")

    def receive(self, tid: bytes) -> StunMessage:
        while True:
            message = decode_message_untrusted(self.sock.recv(65536))
            if message.transaction_id == tid:
                return message
            self.indications.append(message)

    def allocate(self) -> Address:
        reply = self.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0)))])
        assert reply.cls is MessageClass.SUCCESS, reply
        relayed = reply.get(A.XOR_RELAYED_ADDRESS)
        assert relayed is not None
        return decode_xor_address_untrusted(relayed, reply.transaction_id)

    def permit(self, peer: Address) -> None:
        reply = self.request(
            Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, encode_xor_address(*peer, bytes(12)))]
        )
        assert reply.cls is MessageClass.SUCCESS, reply

    def refresh(self, lifetime: int = 600) -> StunMessage:
        return self.request(Method.REFRESH, [(A.LIFETIME, encode_u32(lifetime))])

    def send_to(self, peer: Address, data: bytes) -> None:
        tid = new_transaction_id()
        attrs = [(A.XOR_PEER_ADDRESS, encode_xor_address(*peer, tid)), (A.DATA, data)]
        self.sock.send(encode_message(Method.SEND, MessageClass.INDICATION, tid, attrs))

    def close(self) -> None:
        self.sock.close()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def tls_connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def peer_fingerprint(tls: ssl.SSLSocket) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def binding_over_stream(tls: ssl.SSLSocket) -> StunMessage:
    """A STUN Binding over a TURN TLS connection (stream framing, RFC 8489 §6.2.2)."""
    tid = new_transaction_id()
    tls.sendall(encode_message(Method.BINDING, MessageClass.REQUEST, tid, ()))
    framer = StreamFramer()
    while (frame := framer.next_frame()) is None:
        framer.feed(tls.recv(65536))
    message = decode_message_untrusted(frame)
    assert message.transaction_id == tid
    return message


def wss(port: int, context: ssl.SSLContext) -> ClientConnection:
    return connect(f"wss://127.0.0.1:{port}/ws", ssl=context, open_timeout=5)


def exchange(ws: ClientConnection, message: dict[str, Any], reply_type: str) -> dict[str, Any]:
    """Send ``message`` and return the first reply of ``reply_type`` (others are skipped)."""
    ws.send(json.dumps(message))
    while True:
        reply: dict[str, Any] = json.loads(ws.recv(timeout=5))
        if reply["type"] == reply_type:
            return reply


def ws_fingerprint(ws: ClientConnection) -> str:
    tls = ws.socket
    assert isinstance(tls, ssl.SSLSocket)
    return peer_fingerprint(tls)


def write_certificate(leaf: trustme.LeafCert, cert: Path, key: Path) -> str:
    """Replace ``cert``/``key`` atomically (as certbot does) and return the leaf's fingerprint."""
    for path, blob in (
        (cert, b"".join(pem.bytes() for pem in leaf.cert_chain_pems)),
        (key, leaf.private_key_pem.bytes()),
    ):
        temporary = path.with_suffix(".new")
        temporary.write_bytes(blob)
        os.replace(temporary, path)
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return hashlib.sha256(der).hexdigest()


@contextmanager
def udp_peer() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        yield sock


# -- SIGHUP ----------------------------------------------------------------------------------------


def test_sighup_swaps_the_certificate_and_keeps_every_session(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old = write_certificate(ca.issue_cert("localhost", "127.0.0.1"), cert, key)
    secret = "reload-secret"
    settings: dict[str, dict[str, Any]] = {
        "tls": {"cert_file": str(cert), "key_file": str(key)},
        "turn": {"secrets": [secret]},
    }
    context = client_context(ca)
    with appliance(tmp_path, settings) as app, udp_peer() as peer, ExitStack() as opened:
        turn_tls = opened.enter_context(tls_connect(app.turns, context))
        ws = opened.enter_context(wss(app.signal, context))
        client = TurnClient(app.turn, secret)
        opened.callback(client.close)
        assert peer_fingerprint(turn_tls) == old
        assert ws_fingerprint(ws) == old
        assert exchange(ws, {"type": "ping", "id": 1}, "pong") == {"type": "pong", "id": 1}
        relayed = client.allocate()
        client.permit(peer.getsockname())

        new = write_certificate(ca.issue_cert("localhost", "127.0.0.1"), cert, key)
        assert new != old
        app.running.proc.send_signal(signal.SIGHUP)
        app.running.wait_log("event=reloaded what=tls")

        # New connections present the new certificate...
        with tls_connect(app.turns, context) as fresh:
            assert peer_fingerprint(fresh) == new
            assert binding_over_stream(fresh).cls is MessageClass.SUCCESS
        with wss(app.signal, context) as fresh_ws:
            assert ws_fingerprint(fresh_ws) == new
        # ...while the ones opened before keep working, still on the old one.
        assert peer_fingerprint(turn_tls) == old
        assert binding_over_stream(turn_tls).cls is MessageClass.SUCCESS
        assert exchange(ws, {"type": "ping", "id": 2}, "pong") == {"type": "pong", "id": 2}
        # The allocation made before the reload refreshes and relays both ways.
        refreshed = client.refresh()
        assert refreshed.cls is MessageClass.SUCCESS, refreshed
        client.send_to(peer.getsockname(), b"after reload")
        assert peer.recvfrom(2048) == (b"after reload", relayed)
        peer.sendto(b"back", relayed)
        data = decode_message_untrusted(client.sock.recv(2048))
        assert (data.method, data.get(A.DATA)) == (Method.DATA, b"back")
    assert not any("reload-failed" in line for line in app.running.log), app.running.log


# -- logs ------------------------------------------------------------------------------------------

TURN_SECRET = "turn-secret-" + "7f3a9c" * 4
ROOM_SECRET = "room-secret-" + "b41d2e" * 4
STATIC_PASSWORD = "static-password-" + "55aa" * 4


def secret_settings(tmp_path: Path, ca: trustme.CA) -> dict[str, dict[str, Any]]:
    """Secrets from files, as in production, and room tokens required."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_certificate(ca.issue_cert("localhost", "127.0.0.1"), cert, key)
    (tmp_path / "turn-secret").write_text(TURN_SECRET + "\n")
    (tmp_path / "room-secret").write_text(ROOM_SECRET + "\n")
    return {
        "tls": {"cert_file": str(cert), "key_file": str(key)},
        "turn": {"secret_file": "turn-secret", "users": [f"alice:{STATIC_PASSWORD}"]},
        "signal": {"auth": "token", "token_secret_file": "room-secret"},
    }


def exercise(app: Appliance, context: ssl.SSLContext, rounds: int) -> list[str]:
    """STUN, TURN and signaling traffic, ``rounds`` packets or messages of each kind on one
    connection of each kind; returns the secrets the clients saw on the wire."""
    seen: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stun:
        stun.settimeout(5)
        for _ in range(rounds):
            stun.sendto(binding_request(), ("127.0.0.1", app.turn))
            assert decode_message_untrusted(stun.recv(2048)).cls is MessageClass.SUCCESS
    client = TurnClient(app.turn, TURN_SECRET)
    with udp_peer() as peer:
        client.allocate()
        client.permit(peer.getsockname())
        for index in range(rounds):
            client.send_to(peer.getsockname(), b"%d" % index)
            peer.recvfrom(2048)
        assert client.refresh().cls is MessageClass.SUCCESS
        assert client.refresh(0).cls is MessageClass.SUCCESS
        client.close()
    seen.append(client.password)
    token = RoomTokens((ROOM_SECRET,)).mint("ops-room", 600, time.time())
    seen.append(token)
    request = urllib.request.Request(
        f"https://127.0.0.1:{app.signal}/ice?service=turn",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
        seen.append(json.loads(response.read())["password"])
    with wss(app.signal, context) as ws:
        welcome = exchange(ws, {"type": "join", "room": "ops-room", "token": token}, "welcome")
        seen.append(welcome["resume"])
        seen += [s["credential"] for s in welcome["iceServers"] if "credential" in s]
        for index in range(rounds):
            assert exchange(ws, {"type": "ping", "id": index}, "pong")["id"] == index
        exchange(ws, {"type": "ice"}, "ice")
    return seen


def binding_request() -> bytes:
    return encode_message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(), ())


def logged_reload(app: Appliance, count: int) -> int:
    """SIGHUP, and the log's length once the ``count``-th reload has been logged: a marker that
    everything logged before the signal is in ``app.running.log`` (no sleep can promise that)."""
    app.running.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = list(app.running.log)
        if sum("event=reloaded what=turn-secrets" in line for line in lines) >= count:
            return len(lines)
        time.sleep(0.02)
    raise AssertionError(f"reload {count} not logged: {app.running.log_text()[-2000:]}")


def test_info_logs_do_not_grow_with_traffic(tmp_path: Path) -> None:
    ca = trustme.CA()
    with appliance(tmp_path, secret_settings(tmp_path, ca), "--log-level", "info") as app:
        before = logged_reload(app, 1)
        exercise(app, client_context(ca), rounds=40)
        after = logged_reload(app, 2)
        during = [line for line in app.running.log[before:after] if "event=reload" not in line]
    # 40 Bindings, 40 relayed datagrams and 40 WebSocket messages: at most a few lines about
    # connections, never one per packet or message.
    assert len(during) < 10, "".join(during)


def test_debug_logs_never_contain_secrets(tmp_path: Path) -> None:
    ca = trustme.CA()
    with appliance(tmp_path, secret_settings(tmp_path, ca), "--log-level", "debug") as app:
        seen = exercise(app, client_context(ca), rounds=3)
        app.running.proc.send_signal(signal.SIGHUP)  # reloading re-reads every secret file
        app.running.wait_log("event=reloaded what=room-token-secrets")
    log = "".join(app.running.log) + app.stdout
    assert "event=reloaded what=turn-secrets" in log  # the log was captured at all
    assert len(seen) >= 5
    for secret in (TURN_SECRET, ROOM_SECRET, STATIC_PASSWORD, *seen):
        assert secret not in log, f"a secret ({secret[:6]}...) reached the log"
