"""Regression tests for the TURN state-machine and resource findings of the adversarial pass
(issue #12): each drives the real appliance over real sockets the way the attacker did, then
checks that nobody else paid for it (no component restart, bystanders intact, nothing leaked).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from attacker import Bystander, WireClient, echo_peer, error_code, open_client, turn_target

from secureconnect.stun import AttrType

A = AttrType
STREAMS = ["tcp", "tls"]


@pytest.mark.parametrize("transport", STREAMS)
def test_allocate_and_refresh_zero_in_one_segment_cost_only_that_connection(
    tmp_path: Path, transport: str
) -> None:
    """Finding 1: Allocate and Refresh(LIFETIME=0) back to back in one TCP/TLS segment made
    the relay task wait on a closed socket; the TURN component crashed and every allocation of
    every user was gone. Now the pair is just an allocation created and deleted."""
    with turn_target(tmp_path) as target, echo_peer() as peer:
        bystander = Bystander.start(target, peer)
        baseline = target.fds()
        for _ in range(20):
            attacker = open_client(transport, target)
            attacker.learn_nonce()
            attacker.send_raw(attacker.allocate_bytes() + attacker.refresh_bytes(0))
            first, second = attacker.receive_message(), attacker.receive_message()
            assert error_code(first) is None, first
            assert error_code(second) is None, second
            attacker.close()
        target.assert_healthy()
        bystander.check()
        deadline = time.monotonic() + 5  # the last connections' closes reach the server
        while (fds := target.fds()) > baseline + 2:
            assert time.monotonic() < deadline, (fds, baseline)
            time.sleep(0.05)
        bystander.close()


def test_one_client_address_takes_only_its_share_of_the_total(tmp_path: Path) -> None:
    """Finding 3: in open mode anyone mints credentials for any user name, nonces are bound to
    the client IP only, and one IP filled all 1,000 allocations in 0.3 s. Now one address holds
    at most turn.ip_quota (128 by default), and a client elsewhere still gets its allocation."""
    with turn_target(tmp_path) as target:
        granted, refused = 0, 0
        clients = []
        nonce = b""
        for i in range(160):  # a fresh identity and 5-tuple each time, all from 127.0.0.1
            client = open_client("udp", target, user=f"sybil{i}")
            client.nonce = nonce  # one challenge serves them all: nonces name the IP only
            clients.append(client)
            code = error_code(client.allocate())
            nonce = client.nonce
            if code is None:
                granted += 1
            else:
                assert code == 486
                refused += 1
        assert granted == 128
        assert refused == 32
        other = open_client("udp", target, user="honest", source_ip="127.0.0.2")
        assert error_code(other.allocate()) is None
        target.assert_healthy()
        for client in [*clients, other]:
            client.close()


def test_the_default_user_quota_fits_a_ten_person_mesh(tmp_path: Path) -> None:
    """Finding 3: a browser allocates once per TURN URL per RTCPeerConnection, so one peer of a
    10-person mesh with our three TURN URLs needs 27 allocations under one minted identity
    (user_quota was 10). The 28th-32nd fit too; the 33rd is refused."""
    with turn_target(tmp_path) as target:
        clients = [open_client("udp", target, user="meshpeer") for _ in range(33)]
        clients[0].learn_nonce()
        for client in clients:
            client.nonce = clients[0].nonce
        codes = [error_code(client.allocate()) for client in clients]
        assert codes[:32] == [None] * 32
        assert codes[32] == 486
        for client in clients:
            client.close()


def test_reservations_count_against_the_quotas(tmp_path: Path) -> None:
    """Finding 7: Allocate with EVEN-PORT and the R bit, then Refresh 0, repeated, left a
    reserved relay socket behind each time, outside every quota: 8,124 sockets for one user on
    one 5-tuple in 10 s, and other users' EVEN-PORT requests got 508. Now a reservation counts
    like an allocation: the loop stops at the user's quota, fds stay bounded, and another user
    still reserves."""
    even_port_reserve = (A.EVEN_PORT, b"\x80")  # RFC 8656 §14.6: one byte, R the top bit
    with turn_target(tmp_path) as target:
        baseline = target.fds()
        attacker = open_client("udp", target)
        codes = []
        for _ in range(100):
            code = error_code(attacker.allocate(even_port_reserve))
            codes.append(code)
            if code is not None:
                break
            assert error_code(attacker.call(attacker.refresh_bytes(0))) is None
        assert codes[-1] == 486
        assert len(codes) <= 32  # each round leaves one reservation behind: quota 32
        assert target.fds() <= baseline + 33
        other = open_client("udp", target, user="someone-else")
        reply = other.allocate(even_port_reserve)
        assert error_code(reply) is None
        assert reply.get(A.RESERVATION_TOKEN) is not None
        target.assert_healthy()


def test_idle_connections_on_one_transport_lock_out_neither_that_one_nor_the_other(
    tmp_path: Path,
) -> None:
    """Finding 6: TURN TCP and TLS shared one 1,024-connection cap and idle connections were
    kept 300 s, so 8 addresses x 128 idle connections locked everyone out of both. Now each
    transport has its own cap, and a connection without an allocation is closed after
    turn.unallocated_timeout seconds of silence (10 s by default; 1 s here)."""
    caps = ("turn.max_connections=8", "turn.max_connections_per_ip=4")
    with turn_target(tmp_path, *caps, "turn.unallocated_timeout=1.0") as target:
        idle = []
        for ip in ("127.0.0.2", "127.0.0.3"):  # two addresses fill the TCP cap
            for _ in range(4):
                conn = socket.create_connection(("127.0.0.1", target.port), source_address=(ip, 0))
                idle.append(conn)
        time.sleep(0.2)
        tls = open_client("tls", target, user="firewalled")
        assert error_code(tls.allocate()) is None  # TLS has its own slots
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the idle ones are closed within ~1 s
            try:
                client = open_client("tcp", target, user="latecomer", timeout=1.0)
                assert error_code(client.allocate()) is None
                break
            except (ConnectionError, TimeoutError, OSError):
                time.sleep(0.2)
        else:
            raise AssertionError("the TCP cap stayed full of idle connections")
        for conn in idle:
            conn.settimeout(2)
            assert conn.recv(1) == b""  # closed by the server
            conn.close()
        target.assert_healthy()


def test_an_ipv6_allocation_cannot_reach_our_own_port_through_a_mapped_address(
    tmp_path: Path,
) -> None:
    """Finding 10: on an IPv6 allocation with loopback peers allowed, ChannelBind to
    ``::ffff:127.0.0.1:<our own port>`` was accepted (TURN-in-TURN; nothing was delivered only
    because the relay socket is IPv6-only). The own-port rule now reads the mapped form: 403.
    A real loopback peer (``::1``) stays allowed."""
    with turn_target(tmp_path, 'turn.listen=["127.0.0.1", "::1"]') as target:
        client = WireClient("udp", target.port, server_ip="::1")
        family_v6 = (A.REQUESTED_ADDRESS_FAMILY, b"\x02\x00\x00\x00")
        reply = client.allocate(family_v6)
        assert error_code(reply) is None, reply
        # peer_attribute keeps the mapped address IPv6 (our codec would fold it into IPv4).
        own = client.call(client.channel_bind_bytes(0x4001, ("::ffff:127.0.0.1", target.port)))
        assert error_code(own) == 403
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as peer:
            peer.bind(("::1", 0))
            fine = client.call(client.channel_bind_bytes(0x4002, ("::1", peer.getsockname()[1])))
            assert error_code(fine) is None
        target.assert_healthy()
