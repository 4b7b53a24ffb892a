"""The plugin's NAT lab fixtures, used by our own suite (dogfooding): a module's ``natlab``
with two behaviours, ``nat_pair`` by marker and by indirect parametrization, a command and a
Python callable run as a lab client, and two aiortc peers connected through the lab."""

from __future__ import annotations

import socket

import pytest

from secureconnect.natlab.labs import LabError
from secureconnect.natlab.runner import run_pair, turn_transport
from secureconnect.stun.attributes import decode_xor_address_untrusted
from secureconnect.stun.constants import AttrType
from secureconnect.stun.message import decode_message_untrusted
from secureconnect.testing.natlab import NatLab, NatPair

pytestmark = [pytest.mark.root, pytest.mark.slow]

BINDING = bytes.fromhex("0001 0000 2112a442") + bytes(range(12))  # a Binding request


@pytest.fixture(scope="module")
def natlab_behaviours() -> tuple[str, ...]:
    return ("symmetric", "port-restricted")


@pytest.fixture(scope="module")
def natlab_networks() -> tuple[str, ...]:
    return ("hairpin", "ipv6-firewall")


def mapped_address(host: str, port: int) -> tuple[str, int]:
    """What a STUN server at ``host:port`` sees of us (run inside a client's namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(BINDING, (host, port))
        reply = decode_message_untrusted(sock.recv(2048))
    value = reply.get(AttrType.XOR_MAPPED_ADDRESS)
    assert value is not None
    return decode_xor_address_untrusted(value, reply.transaction_id)


def test_the_lab_has_its_clients_behind_their_nats(natlab: NatLab) -> None:
    assert set(natlab.behaviours) == {"symmetric", "port-restricted"}
    peer = natlab.peer("symmetric")
    shown = peer.run(["ip", "-4", "-o", "address", "show", "dev", "uplink"])
    assert peer.address in shown.stdout, shown
    host, port = natlab.stun_url.removeprefix("stun:").rsplit(":", 1)
    mapped = peer.call(lambda: mapped_address(host, int(port)), timeout=10)
    assert mapped[0] == peer.public_address != peer.address  # through its router's NAT
    servers = natlab.ice_servers("someone")
    assert servers[1]["username"].endswith(":someone")


@pytest.mark.nat_pair("symmetric", "port-restricted")
def test_a_pair_by_marker_connects_through_the_relay(nat_pair: NatPair) -> None:
    first, second = nat_pair.first, nat_pair.second
    assert (first.behaviour, second.behaviour) == ("symmetric", "port-restricted")
    result, _, _ = run_pair(
        nat_pair.natlab.lab,
        nat_pair.natlab.appliance,
        first.client,
        second.client,
        room=nat_pair.room,
        timeout=40,
    )
    assert result.connected, result
    assert "relay" in (result.local, result.remote)
    assert turn_transport(first.behaviour) == "udp"


@pytest.mark.parametrize("nat_pair", [("symmetric", "symmetric")], indirect=True)
def test_a_pair_by_parametrize(nat_pair: NatPair) -> None:
    """The same behaviour twice: the two clients behind it, each behind a router of its own."""
    assert nat_pair.first.client.index == 0
    assert nat_pair.second.client.index == 1
    assert nat_pair.first.public_address != nat_pair.second.public_address


def udp_to(host: str, port: int, payload: bytes) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload, (host, port))


@pytest.mark.nat_pair("hairpin")
def test_a_network_pair_by_marker_reaches_itself_through_the_hairpin(nat_pair: NatPair) -> None:
    """Two clients behind one NAT: what one sends to the other's public address:port comes
    back in through the NAT, from the sender's public address (RFC 4787 REQ-9)."""
    first, second = nat_pair.first, nat_pair.second
    assert first.public_address == second.public_address != first.address
    host, port = nat_pair.natlab.stun_url.removeprefix("stun:").rsplit(":", 1)

    def listen() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        sock.settimeout(3)
        sock.sendto(BINDING, (host, int(port)))  # opens its mapping, as ICE would
        sock.recv(2048)
        return sock

    receiver = second.call(listen, timeout=10)
    mapped_port = receiver.getsockname()[1]  # the NAT keeps ports
    try:
        first.call(lambda: udp_to(first.public_address, mapped_port, b"hairpin"), timeout=10)
        data, source = second.call(lambda: receiver.recvfrom(100), timeout=10)
    finally:
        receiver.close()
    assert data == b"hairpin"
    assert source[0] == first.public_address


@pytest.mark.nat_pair("ipv6-firewall")
def test_the_ipv6_pair_has_global_addresses_behind_a_firewall(nat_pair: NatPair) -> None:
    first, second = nat_pair.first, nat_pair.second
    assert first.client.address6 is not None
    assert second.client.address6 is not None
    shown = first.run(["ip", "-6", "-o", "address", "show", "dev", "uplink", "scope", "global"])
    assert first.client.address6 in shown.stdout, shown


def test_a_network_the_lab_has_not_got_is_named(natlab: NatLab) -> None:
    with pytest.raises(LabError, match="no double-nat network"):
        natlab.network_peers("double-nat")
