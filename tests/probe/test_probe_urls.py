"""URL parsing (RFC 7064, RFC 7065) and the probe's private-address rule: pure functions."""

from __future__ import annotations

import ipaddress

import pytest

from secureconnect.probe import PRIVATE_RANGES, UrlError, is_private, parse_probe_url, private_range
from secureconnect.probe.urls import display_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stun:stun.example.com", ("stun", "stun.example.com", 3478, "udp", False)),
        ("stun:192.0.2.1:19302", ("stun", "192.0.2.1", 19302, "udp", False)),
        ("stuns:stun.example.com", ("stuns", "stun.example.com", 5349, "tcp", True)),
        ("turn:turn.example.com", ("turn", "turn.example.com", 3478, "udp", False)),
        (
            "turn:turn.example.com:3479?transport=tcp",
            ("turn", "turn.example.com", 3479, "tcp", False),
        ),
        ("turn:[2001:db8::1]:3478?transport=udp", ("turn", "2001:db8::1", 3478, "udp", False)),
        ("turn:[2001:DB8:0::1]", ("turn", "2001:db8::1", 3478, "udp", False)),
        ("turns:turn.example.com", ("turns", "turn.example.com", 5349, "tcp", True)),
        ("turns:198.51.100.7:443?transport=tcp", ("turns", "198.51.100.7", 443, "tcp", True)),
        ("TURN:Turn.Example.COM.?TRANSPORT=TCP", ("turn", "turn.example.com", 3478, "tcp", False)),
        (
            "stun:localhost:3478?transport=tcp",
            ("stun", "localhost", 3478, "tcp", False),
        ),  # extension
    ],
)
def test_valid_urls(text: str, expected: tuple[str, str, int, str, bool]) -> None:
    url = parse_probe_url(text)
    assert (url.scheme, url.host, url.port, url.transport, url.tls) == expected
    assert url.is_turn == url.scheme.startswith("turn")
    assert parse_probe_url(display_url(url)) == parse_probe_url(display_url(url))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("http://example.com", "expected stun:"),
        ("turn://turn.example.com", "without '//'"),
        ("turn:", "no host"),
        ("turn:host:0", "port"),
        ("turn:host:65536", "port"),
        ("turn:host:34x", "port"),
        ("turn:host:", "port"),
        ("turn:2001:db8::1", "brackets"),
        ("turn:[2001:db8::1", "unclosed"),
        ("turn:[not-v6]:3478", "not an IPv6"),
        ("turn:[::1]x", "unexpected"),
        ("turn:999.1.1.1", "not an IPv4"),
        ("turn:bad_name.example", "not a host name"),
        ("turn:host?transport=sctp", "neither udp nor tcp"),
        ("turn:host?proto=udp", "only query"),
        ("turn:host?transport=udp&x=1", "only query"),
        ("turns:host?transport=udp", "DTLS"),
        ("stuns:host?transport=udp", "DTLS"),
        ("turn:user@host", "not a host name"),
    ],
)
def test_invalid_urls(text: str, why: str) -> None:
    with pytest.raises(UrlError, match=why):
        parse_probe_url(text)


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.1.2.3",
        "169.254.169.254",
        "0.0.0.0",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fd12:3456:789a::1",
        "fc00::1",
        "::ffff:10.1.2.3",  # IPv4-mapped: judged as the IPv4 address it embeds
        "::ffff:127.0.0.1",
    ],
)
def test_private_addresses(ip: str) -> None:
    assert is_private(ip), ip
    assert private_range(ip) is not None


@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",
        "1.1.1.1",
        "172.15.255.255",  # just below RFC 1918's 172.16/12
        "172.32.0.0",  # just above it
        "100.63.255.255",  # just below RFC 6598's 100.64/10
        "100.128.0.0",  # just above it
        "192.0.2.1",  # TEST-NET-1 (RFC 5737): python's is_private says True, our rule False
        "198.51.100.2",  # TEST-NET-2
        "203.0.113.9",  # TEST-NET-3
        "198.18.0.1",  # benchmarking (RFC 2544)
        "2001:db8::1",  # IPv6 documentation (RFC 3849)
        "2606:4700::1111",
        "::ffff:198.51.100.2",
    ],
)
def test_non_private_addresses(ip: str) -> None:
    assert not is_private(ip), ip
    assert private_range(ip) is None


def test_the_rule_is_not_pythons_is_private() -> None:
    """The documented difference: the documentation ranges are non-private for the probe."""
    for ip in ("192.0.2.1", "198.51.100.2", "203.0.113.9", "2001:db8::1"):
        assert ipaddress.ip_address(ip).is_private
        assert not is_private(ip)


def test_every_range_names_why() -> None:
    assert private_range("10.1.2.3") == "RFC 1918 private (10.0.0.0/8)"
    assert private_range("100.64.1.1") == "RFC 6598 shared (carrier-grade NAT) (100.64.0.0/10)"
    assert {why for _, why in PRIVATE_RANGES} >= {"loopback", "link-local", "unique local (ULA)"}


def test_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="does not appear to be"):
        private_range("not-an-ip")
