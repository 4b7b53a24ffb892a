"""Relay peer policy: the deny list, every IPv4-in-IPv6 embedding, allow-list exceptions."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secureconnect.turn.peerpolicy import (
    DEFAULT_DENY,
    LOOPBACK_RANGES,
    OwnEndpoints,
    PeerPolicy,
    Refusal,
    embedded_ipv4,
)

DEFAULT = PeerPolicy()


def reason(policy: PeerPolicy, ip: object) -> str | None:
    """The one-line reason ``policy`` refuses ``ip``, as a log line would show it."""
    found = policy.refusal(ip)  # type: ignore[arg-type]
    return None if found is None else str(found)


# Typed out again from docs/security.md: an edit to the module cannot silently shrink the list.
REFERENCE_DENY = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "5f00::/16",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
]

_DENY_NETS = [ipaddress.ip_network(n) for n in REFERENCE_DENY]


def v4_denied(v4: ipaddress.IPv4Address) -> bool:
    """Independent oracle: is an IPv4 address inside the reference deny list?"""
    return any(v4 in net for net in _DENY_NETS if net.version == 4)


def v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def i4(v4: ipaddress.IPv4Address) -> int:
    return int(v4)


# Each embedding, built from its RFC's layout rather than from the module under test.
EMBEDDINGS: dict[str, Callable[[ipaddress.IPv4Address], str]] = {
    "mapped": lambda a: f"::ffff:{a}",  # RFC 4291 §2.5.5.2
    "compatible": lambda a: f"::{a}",  # RFC 4291 §2.5.5.1
    "translated": lambda a: f"::ffff:0:{a}",  # RFC 2765 §2.1
    "nat64": lambda a: f"64:ff9b::{a}",  # RFC 6052 §2.1
    "nat64-local-96": lambda a: f"64:ff9b:1::{a}",  # RFC 8215 + RFC 6052 §2.2
    "nat64-local-64": lambda a: v6((0x64FF9B0001 << 80) | (i4(a) << 24)),
    "6to4": lambda a: v6((0x2002 << 112) | (i4(a) << 80) | 1),  # RFC 3056 §2
    "teredo-server": lambda a: v6((0x20010000 << 96) | (i4(a) << 64) | 0x8000_0000_F7F7F7F7),
    "teredo-client": lambda a: v6((0x20010000 << 96) | (0x08080808 << 64) | (i4(a) ^ 0xFFFFFFFF)),
    "isatap": lambda a: f"2606:4700:1:2:0:5efe:{a}",  # RFC 5214 §6.1
    "isatap-u": lambda a: f"2606:4700:1:2:200:5efe:{a}",
}

# Policies that open exactly the IPv6 prefix of one embedding, so that only the embedded IPv4
# address can still refuse the peer.
PREFIX_ALLOW = {
    "nat64": ["64:ff9b::/96"],
    "nat64-local-96": ["64:ff9b:1::/48"],
    "nat64-local-64": ["64:ff9b:1::/48"],
    "6to4": ["2002::/16"],
    "teredo-server": ["2001::/23"],
    "teredo-client": ["2001::/23"],
}


def test_default_deny_is_exactly_the_reference_list() -> None:
    assert list(DEFAULT_DENY) == REFERENCE_DENY
    assert DEFAULT.deny == DEFAULT_DENY
    assert DEFAULT.allow == ()


@pytest.mark.parametrize("cidr", REFERENCE_DENY)
def test_first_and_last_address_of_every_denied_range_is_refused(cidr: str) -> None:
    net = ipaddress.ip_network(cidr)
    for address in (net.network_address, net.broadcast_address):
        assert not DEFAULT.permits(str(address)), address
        assert not DEFAULT.permits(address), address
        assert reason(DEFAULT, str(address)) is not None


@pytest.mark.parametrize(
    "peer",
    [
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:7f00:1",
        "::ffff:169.254.169.254",
        "::ffff:0.0.0.0",
        "::ffff:10.1.2.3",
        "::127.0.0.1",
        "::169.254.169.254",
        "::ffff:0:127.0.0.1",
        "::ffff:0:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::7f00:1",
        "64:ff9b::8.8.8.8",
        "64:ff9b:1::7f00:1",
        "2002:a9fe:a9fe::1",
        "2002:7f00:1::1",
        "2002:808:808::1",
        "fe80::1",
        "fe80::1%lo",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "2001:db8::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # RFC 4380 example Teredo address
        "2001:0:7f00:1:8000:0:f7f7:f7f7",  # Teredo server 127.0.0.1
        "2001:0:808:808:8000:0:80ff:fefe",  # Teredo client 127.0.0.1
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "169.254.169.254",
        "100.100.100.200",
        "192.168.1.1",
        "172.31.255.255",
        "2606:4700:1:2:0:5efe:127.0.0.1",  # ISATAP around loopback
        "2606:4700:1:2:200:5efe:10.0.0.1",
    ],
)
def test_known_bypass_forms_are_refused(peer: str) -> None:
    assert not DEFAULT.permits(peer)
    assert DEFAULT.refusal(peer) is not None


@pytest.mark.parametrize(
    "junk",
    [
        "",
        " ",
        "localhost",
        "example.com",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "010.0.0.1",  # inet_aton would read this as octal 8.0.0.1
        "0x7f.0.0.1",
        "2130706433",
        " 8.8.8.8",
        "8.8.8.8 ",
        "8.8.8.8\n",
        "8.8.8.8/32",
        "8.8.8.8:3478",
        "[::1]",
        "::ffff:010.0.0.1",
        "fe80::1%",
        "fe80::1%a%b",
        "1.2.3.4%eth0",
        ":::",
        "1::2::3",
        "\x00",
        "\u0661\u0662\u0667.\u0660.\u0660.\u0661",  # Arabic-Indic digits
        "8" * 10_000,
    ],
)
def test_unparsable_text_is_refused_without_raising(junk: str) -> None:
    assert not DEFAULT.permits(junk)
    assert reason(DEFAULT, junk) == "unparsable address"
    assert DEFAULT.refusal(junk) == Refusal("unparsable")


def test_wrongly_typed_input_is_refused_without_raising() -> None:
    assert not DEFAULT.permits(None)  # type: ignore[arg-type]
    assert not DEFAULT.permits([])  # type: ignore[arg-type]
    assert not DEFAULT.permits(b"junk")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "peer",
    [
        "8.8.8.8",
        "1.1.1.1",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "223.255.255.255",
        "2606:4700::1111",
        "2001:4860:4860::8888",
        "2a00:1450:4001::200e",
        "2001:200::1",  # just past 2001::/23
        "2003::1",  # just past 2002::/16
        "::ffff:8.8.8.8",  # the IPv4 address it reaches is public
        "2606:4700::1111%eth0",  # a scope id does not change the range
    ],
)
def test_public_addresses_are_permitted(peer: str) -> None:
    assert DEFAULT.permits(peer)
    assert DEFAULT.refusal(peer) is None
    assert reason(DEFAULT, peer) is None


def test_address_objects_are_accepted() -> None:
    assert DEFAULT.permits(ipaddress.IPv4Address("8.8.8.8"))
    assert not DEFAULT.permits(ipaddress.IPv6Address("::ffff:127.0.0.1"))


@pytest.mark.parametrize("form", sorted(EMBEDDINGS))
@pytest.mark.parametrize("v4", ["127.0.0.1", "169.254.169.254", "10.0.0.1", "0.0.0.0"])
def test_every_embedding_of_a_denied_ipv4_is_refused_even_when_its_prefix_is_allowed(
    form: str, v4: str
) -> None:
    peer = EMBEDDINGS[form](ipaddress.IPv4Address(v4))
    assert not DEFAULT.permits(peer)
    policy = PeerPolicy(allow=PREFIX_ALLOW.get(form, ()))
    assert not policy.permits(peer), peer


@pytest.mark.parametrize("form", sorted(EMBEDDINGS))
def test_embedding_of_a_public_ipv4_is_judged_by_its_prefix(form: str) -> None:
    peer = EMBEDDINGS[form](ipaddress.IPv4Address("8.8.8.8"))
    policy = PeerPolicy(allow=PREFIX_ALLOW.get(form, ()))
    if form.startswith("nat64-local"):
        # The local-use prefix length is unknown, so every RFC 6052 length is tried; the zero
        # bits at the other lengths read as 0.0.x.x, which is denied (conservative by design).
        assert not policy.permits(peer)
        assert not DEFAULT.permits(peer)
    else:
        # e.g. ::8.8.8.8 (IPv4-compatible) is in no deny range and embeds a public address.
        assert policy.permits(peer), reason(policy, peer)


# RFC 6052 §2.2: where each prefix length puts the IPv4 address (bit ranges from the MSB).
RFC6052_FIELDS = {
    "/48": ((48, 64), (72, 88)),
    "/56": ((56, 64), (72, 96)),
    "/64": ((72, 104),),
    "/96": ((96, 128),),
}


def place_ipv4(value: int, fields: tuple[tuple[int, int], ...], v4: int) -> int:
    """Write ``v4`` into ``fields`` of a 128-bit ``value``, high bits first."""
    remaining = 32
    for start, end in fields:
        width = end - start
        remaining -= width
        chunk = (v4 >> remaining) & ((1 << width) - 1)
        shift = 128 - end
        value = (value & ~(((1 << width) - 1) << shift)) | (chunk << shift)
    return value


def test_local_use_nat64_checks_every_rfc6052_prefix_length() -> None:
    policy = PeerPolicy(allow=["64:ff9b:1::/48"])
    # 8.8.8.8 at every RFC 6052 §2.2 position for /48, /56, /64 and /96 at once.
    base = int(ipaddress.IPv6Address("64:ff9b:1:808:8:808:808:808"))
    assert policy.permits(v6(base))
    for length, fields in RFC6052_FIELDS.items():
        assert place_ipv4(base, fields, 0x08080808) == base
        peer = place_ipv4(base, fields, 0x7F000001)
        assert (f"local-use NAT64 {length}", 0x7F000001) in embedded_ipv4(peer)
        assert not policy.permits(v6(peer)), length


def test_embedded_ipv4_agrees_with_the_standard_library() -> None:
    for value in (0x2002_0808_0808 << 80, (0x2002_7F00_0001 << 80) | 0xABCD):
        addr = ipaddress.IPv6Address(value)
        assert addr.sixtofour is not None
        assert ("6to4", int(addr.sixtofour)) in embedded_ipv4(value)
    teredo = ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2")
    assert teredo.teredo is not None
    server, client = teredo.teredo
    found = embedded_ipv4(int(teredo))
    assert ("Teredo server", int(server)) in found
    assert ("Teredo client", int(client)) in found
    assert embedded_ipv4(0) == []
    assert embedded_ipv4(1) == []
    assert embedded_ipv4(int(ipaddress.IPv6Address("2606:4700::1111"))) == []


# Python 3.13 prints mapped addresses in dotted form; 3.11 in hex.
MAPPED_LOOPBACK_TEXT = str(ipaddress.IPv6Address("::ffff:127.0.0.1"))


def test_loopback_ranges() -> None:
    assert LOOPBACK_RANGES == ("127.0.0.0/8", "::1/128")


def test_refusal_reasons_name_the_rule_and_the_form() -> None:
    assert reason(DEFAULT, "10.1.2.3") == "denied 10.0.0.0/8"
    assert reason(DEFAULT, "::1") == "denied ::1/128"
    assert (
        reason(DEFAULT, "::ffff:127.0.0.1")
        == f"denied 127.0.0.0/8 (IPv4-mapped 127.0.0.1 of {MAPPED_LOOPBACK_TEXT})"
    )
    assert (
        reason(DEFAULT, "::127.0.0.1")
        == "denied 127.0.0.0/8 (IPv4-compatible 127.0.0.1 of ::7f00:1)"
    )
    refusal = PeerPolicy(allow=["2002::/16"]).refusal("2002:a9fe:a9fe::1")
    assert refusal == Refusal(
        "embedded", "2002:a9fe:a9fe::1", "169.254.0.0/16", "6to4", "169.254.169.254"
    )
    mapped = DEFAULT.refusal("::ffff:10.0.0.1")
    assert mapped is not None
    assert mapped.kind == "denied"


class TestAllowList:
    def test_loopback_allow_opens_loopback_only(self) -> None:
        policy = PeerPolicy(allow=LOOPBACK_RANGES)
        for peer in ("127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1", "::127.0.0.1"):
            assert policy.permits(peer), peer
        for peer in (
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "fe80::1",
            "::2",
        ):
            assert not policy.permits(peer), peer

    def test_lab_range_does_not_open_its_neighbours(self) -> None:
        policy = PeerPolicy(allow=["10.99.0.0/16"])
        assert policy.permits("10.99.0.1")
        assert policy.permits("10.99.255.255")
        assert policy.permits("::ffff:10.99.3.4")
        for peer in ("10.98.255.255", "10.100.0.0", "10.0.0.1", "127.0.0.1", "192.168.0.1"):
            assert not policy.permits(peer), peer

    def test_allowing_a_transition_prefix_keeps_the_embedded_check(self) -> None:
        policy = PeerPolicy(allow=["2002::/16"])
        assert policy.permits("2002:808:808::1")
        assert not policy.permits("2002:a9fe:a9fe::1")
        assert not policy.permits("2002:7f00:1::1")

    def test_both_prefix_and_embedded_range_must_be_allowed(self) -> None:
        assert not PeerPolicy(allow=["127.0.0.0/8"]).permits("64:ff9b::7f00:1")
        assert not PeerPolicy(allow=["64:ff9b::/96"]).permits("64:ff9b::7f00:1")
        assert PeerPolicy(allow=["64:ff9b::/96", "127.0.0.0/8"]).permits("64:ff9b::7f00:1")

    def test_entries_never_cross_families(self) -> None:
        # A mapped-form allow entry does not open the IPv4 range it spells.
        assert not PeerPolicy(allow=["::ffff:127.0.0.0/104"]).permits("::ffff:127.0.0.1")
        assert not PeerPolicy(allow=["::ffff:0:0/96"]).permits("::ffff:10.0.0.1")
        # Denying all of IPv6 refuses mapped peers too, but no plain IPv4 peer.
        everything_v6 = PeerPolicy(deny=["::/0"])
        assert not everything_v6.permits("::ffff:8.8.8.8")
        assert not everything_v6.permits("2606:4700::1111")
        assert everything_v6.permits("8.8.8.8")

    def test_custom_deny_list_replaces_the_default(self) -> None:
        policy = PeerPolicy(deny=["8.8.8.0/24"])
        assert not policy.permits("8.8.8.8")
        assert not policy.permits("::ffff:8.8.8.8")
        assert not policy.permits("2002:808:808::1")
        assert policy.permits("127.0.0.1")
        assert PeerPolicy(deny=()).permits("127.0.0.1")


@pytest.mark.parametrize(
    ("deny", "allow"),
    [
        (["10.0.0.1/8"], []),
        (["not-a-network"], []),
        ([], ["300.0.0.0/8"]),
        ([], ["fe80::/129"]),
    ],
)
def test_bad_configuration_names_the_entry(deny: list[str], allow: list[str]) -> None:
    with pytest.raises(ValueError, match="entry"):
        PeerPolicy(deny=deny, allow=allow)


def test_a_single_string_is_not_mistaken_for_a_list() -> None:
    with pytest.raises(TypeError, match="list of CIDR strings"):
        PeerPolicy(allow="127.0.0.0/8")


def test_entries_are_canonicalised() -> None:
    policy = PeerPolicy(deny=["127.0.0.1", "FE80::/10"], allow=["::1"])
    assert policy.deny == ("127.0.0.1/32", "fe80::/10")
    assert policy.allow == ("::1/128",)
    assert "127.0.0.1/32" in repr(policy)


def test_memo_is_bounded_and_consistent() -> None:
    policy = PeerPolicy()
    for n in range(10_000):
        address = f"8.{n >> 8 & 0xFF}.{n & 0xFF}.1"
        assert policy.permits(address)
        assert policy.permits(address)  # the memoised answer agrees
    assert len(policy._memo) <= 4096
    assert not policy.permits("127.0.0.1")
    assert not policy.permits("127.0.0.1")


ipv4s = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6s = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@given(ipv4s)
def test_mapped_is_never_more_permissive(v: ipaddress.IPv4Address) -> None:
    plain = DEFAULT.permits(str(v))
    mapped = DEFAULT.permits("::ffff:" + str(v))
    assert plain == (not v4_denied(v))
    # Under the default list the two forms always agree, so in particular a denied v stays denied.
    assert mapped == plain
    lab = PeerPolicy(allow=["127.0.0.0/8", "10.99.0.0/16"])
    assert lab.permits("::ffff:" + str(v)) == lab.permits(str(v))


@given(ipv4s, st.sampled_from(sorted(EMBEDDINGS)))
def test_every_embedding_of_any_denied_ipv4_is_refused(v: ipaddress.IPv4Address, form: str) -> None:
    if v4_denied(v):
        peer = EMBEDDINGS[form](v)
        assert not DEFAULT.permits(peer)
        assert not PeerPolicy(allow=PREFIX_ALLOW.get(form, ())).permits(peer)


@given(ipv6s)
def test_an_ipv6_inside_a_denied_range_is_refused(addr: ipaddress.IPv6Address) -> None:
    in_denied_range = any(addr in net for net in _DENY_NETS if net.version == 6)
    if in_denied_range:
        assert not DEFAULT.permits(str(addr))
    if addr.ipv4_mapped is not None:
        assert DEFAULT.permits(str(addr)) == DEFAULT.permits(str(addr.ipv4_mapped))


@given(st.text(max_size=80))
def test_arbitrary_text_never_raises(text: str) -> None:
    result = DEFAULT.permits(text)
    assert isinstance(result, bool)
    why = reason(DEFAULT, text)
    assert (why is None) == result


@pytest.mark.parametrize(
    "peer",
    [
        ("::ffff:127.0.0.1", 3478),  # IPv4-mapped
        ("::ffff:7f00:1", 3478),  # the same, written in hex
        ("64:ff9b::7f00:1", 3478),  # NAT64 well-known prefix
        ("2002:7f00:1::1", 3478),  # 6to4
        ("::ffff:192.0.2.1", 5349),  # mapped, matched on a wildcard listener's port
    ],
)
def test_own_endpoints_see_through_ipv6_spellings_of_ipv4(peer: tuple[str, int]) -> None:
    """Issue #12 finding 10: ChannelBind to ``::ffff:127.0.0.1:<own port>`` from an IPv6
    allocation was accepted; the own-port rule now reads every IPv4-in-IPv6 form the peer
    policy reads."""
    own = OwnEndpoints([("127.0.0.1", 3478), ("0.0.0.0", 5349)], local_ips=["192.0.2.1"])
    assert peer in own
    assert (peer[0], 9999) not in own
