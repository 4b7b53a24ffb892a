"""The NAT behaviours as text: nftables rules per behaviour, loss rules, discovery parsing.

Pure: no root, no kernel. Whether the kernel really behaves as the rules say is
``test_topology.py``'s job; here the rules are read for the clauses each behaviour depends on.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from secureconnect.natlab.behaviours import (
    ALL_BEHAVIOURS,
    DESCRIPTIONS,
    Behaviour,
    loss_ruleset,
    parse_behaviour,
    router_ruleset,
)
from secureconnect.natlab.discovery import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    NO_ANSWER,
    NO_NAT,
    classify,
    parse_output,
)
from secureconnect.natlab.labs import LabError

ROUTED = [b for b in ALL_BEHAVIOURS if b is not Behaviour.OPEN]
WAN_ADDRESS = "198.51.100.12"
CLIENT = "10.3.0.2"


def rules(behaviour: Behaviour) -> str:
    return router_ruleset(
        behaviour,
        wan_interface="wan",
        wan_address=WAN_ADDRESS,
        lan_interface="lan",
        client_address=CLIENT,
    )


def rule_lines(text: str) -> list[str]:
    """The rule text without comments and indentation."""
    return [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]


def test_the_six_behaviours_in_order_with_their_names() -> None:
    assert [b.value for b in ALL_BEHAVIOURS] == [
        "open",
        "full-cone",
        "restricted-cone",
        "port-restricted",
        "symmetric",
        "udp-blocked",
    ]
    assert [b.name for b in ALL_BEHAVIOURS] == [
        "OPEN",
        "FULL_CONE",
        "RESTRICTED_CONE",
        "PORT_RESTRICTED",
        "SYMMETRIC",
        "UDP_BLOCKED",
    ]
    assert Behaviour("symmetric") == "symmetric"  # a str enum: usable as its value
    assert set(DESCRIPTIONS) == set(ALL_BEHAVIOURS)
    assert all("\n" not in b.description for b in ALL_BEHAVIOURS)


def test_tags_are_short_and_distinct() -> None:
    tags = [b.tag for b in ALL_BEHAVIOURS]
    assert len(set(tags)) == len(tags)
    # scnl-r-<tag>-a and the bridge port v-<tag>-a must fit in namespace/interface names
    assert all(len(f"v-{tag}-a") <= 15 and re.fullmatch(r"[a-z]+", tag) for tag in tags)


def test_parse_behaviour_names_the_valid_ones() -> None:
    assert parse_behaviour("port-restricted") is Behaviour.PORT_RESTRICTED
    with pytest.raises(ValueError, match="full-cone, restricted-cone"):
        parse_behaviour("cone")


def test_open_has_no_router() -> None:
    with pytest.raises(ValueError, match="no router"):
        rules(Behaviour.OPEN)


@pytest.mark.parametrize("behaviour", ROUTED, ids=lambda b: b.value)
def test_every_router_replaces_only_its_own_table(behaviour: Behaviour) -> None:
    lines = rule_lines(rules(behaviour))
    assert lines[:3] == ["table ip natlab", "delete table ip natlab", "table ip natlab {"]
    assert lines[-1] == "}"
    assert "flush ruleset" not in lines


@pytest.mark.parametrize("behaviour", ROUTED, ids=lambda b: b.value)
def test_every_router_drops_new_inbound_in_its_input_hook(behaviour: Behaviour) -> None:
    """The conntrack-clash guard: an unsolicited packet to the router is dropped before its
    conntrack entry is confirmed."""
    text = rules(behaviour)
    assert "type filter hook input priority filter" in text
    assert 'iifname "wan" ct state new drop' in text


@pytest.mark.parametrize("behaviour", ROUTED, ids=lambda b: b.value)
def test_mapping_is_port_preserving_snat_except_symmetric(behaviour: Behaviour) -> None:
    text = rules(behaviour)
    snat = [line for line in rule_lines(text) if " snat to " in line]
    assert len(snat) == 1
    if behaviour is Behaviour.SYMMETRIC:
        assert snat[0] == f'oifname "wan" ip saddr {CLIENT} snat to {WAN_ADDRESS} fully-random'
    else:
        assert snat[0] == f'oifname "wan" ip saddr {CLIENT} snat to {WAN_ADDRESS}'
    assert "masquerade" not in text


def test_full_cone_lets_every_sender_in() -> None:
    text = rules(Behaviour.FULL_CONE)
    assert f'iifname "wan" ip daddr {WAN_ADDRESS} dnat to {CLIENT}' in rule_lines(text)
    assert 'iifname "wan" oifname "lan" ct status dnat accept' in text


def test_restricted_cone_lets_in_only_addresses_the_mapping_has_sent_to() -> None:
    lines = rule_lines(rules(Behaviour.RESTRICTED_CONE))
    assert "type inet_proto . inet_service . ipv4_addr" in lines
    assert "timeout 300s" in lines
    # remembered after SNAT, keyed by the public port and the remote address (not its port)
    assert "type filter hook postrouting priority srcnat + 10; policy accept;" in lines
    assert (
        'oifname "wan" meta l4proto { tcp, udp } update @permitted '
        "{ meta l4proto . th sport . ip daddr }"
    ) in lines
    assert (
        f'iifname "wan" ip daddr {WAN_ADDRESS} meta l4proto . th dport . ip saddr @permitted '
        f"dnat to {CLIENT}"
    ) in lines


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour.PORT_RESTRICTED, Behaviour.SYMMETRIC, Behaviour.UDP_BLOCKED],
    ids=lambda b: b.value,
)
def test_port_restricted_filtering_leaves_inbound_to_conntrack(behaviour: Behaviour) -> None:
    text = rules(behaviour)
    assert "dnat" not in text
    assert "@permitted" not in text
    assert "ct state established,related accept" in text


def test_udp_blocked_drops_udp_both_ways() -> None:
    lines = rule_lines(rules(Behaviour.UDP_BLOCKED))
    forward = lines.index("type filter hook forward priority filter; policy drop;")
    assert lines[forward + 1] == "meta l4proto udp drop"  # before any accept
    assert 'iifname "wan" meta l4proto udp drop' in lines
    assert all("udp drop" not in line for line in rule_lines(rules(Behaviour.PORT_RESTRICTED)))


def test_the_mapping_timeout_is_configurable() -> None:
    text = router_ruleset(
        Behaviour.RESTRICTED_CONE,
        wan_interface="wan",
        wan_address=WAN_ADDRESS,
        lan_interface="lan",
        client_address=CLIENT,
        mapping_timeout=120,
    )
    assert "timeout 120s" in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wan_interface", 'wan" accept; #'),
        ("wan_interface", "a-very-long-interface"),
        ("lan_interface", ""),
        ("wan_address", "198.51.100.300"),
        ("client_address", "10.0.0.2; flush ruleset"),
        ("client_address", "2001:db8::1"),
    ],
)
def test_names_and_addresses_are_validated(field: str, value: str) -> None:
    arguments: dict[str, Any] = {
        "wan_interface": "wan",
        "wan_address": WAN_ADDRESS,
        "lan_interface": "lan",
        "client_address": CLIENT,
        field: value,
    }
    with pytest.raises(ValueError, match=r"interface name|IPv4"):
        router_ruleset(Behaviour.PORT_RESTRICTED, **arguments)


def test_loss_rules_drop_the_share_asked_for_both_ways() -> None:
    text = loss_ruleset("wan", 2.5)
    lines = rule_lines(text)
    assert lines[:3] == [
        "table netdev natlab_loss",
        "delete table netdev natlab_loss",
        "table netdev natlab_loss {",
    ]
    assert 'type filter hook ingress device "wan" priority filter; policy accept;' in lines
    assert 'type filter hook egress device "wan" priority filter; policy accept;' in lines
    assert lines.count("meta protocol ip numgen random mod 10000 < 250 drop") == 2


def test_loss_rules_bounds() -> None:
    assert loss_ruleset("wan", 0.0) == ""
    assert loss_ruleset("wan", 0.001) == ""  # below the 0.01 % resolution
    assert "mod 10000 < 10000 drop" in loss_ruleset("uplink", 100.0)
    with pytest.raises(ValueError, match="0-100"):
        loss_ruleset("wan", 101.0)
    with pytest.raises(ValueError, match="interface name"):
        loss_ruleset("wan device", 1.0)


# -- discovery output -------------------------------------------------------------------------

_ANSWER = """
========================================
RFC 5780 response {n}
No ALG: Mapped == XOR-Mapped
0: : IPv4. Response origin: : 198.51.100.2:3478
0: : IPv4. Other addr: : 198.51.100.3:3479
0: : IPv4. UDP reflexive addr: 198.51.100.18:1370
0: : IPv4. Local addr: : 10.9.0.2:40500
"""
_TIMEOUT = "STUN receive timeout..\n"


def _verdict(text: str) -> str:
    return f"\n========================================\n{text}\n" + "=" * 40 + "\n"


def test_parse_symmetric_output() -> None:
    output = (
        "\n-= Mapping Behavior Discovery =-\n"
        + "".join(_ANSWER.format(n=n) for n in (1, 2, 3))
        + _verdict("NAT with Address and Port Dependent Mapping!")
        + "\n-= Filtering Behavior Discovery =-\n"
        + _ANSWER.format(n=4)
        + _TIMEOUT * 2
        + _verdict("NAT with Address and Port Dependent Filtering!")
    )
    assert parse_output(output) == (ADDRESS_AND_PORT_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT)


def test_parse_open_output() -> None:
    output = (
        _ANSWER.format(n=1)
        + _verdict("No NAT! (Endpoint Independent Mapping)")
        + _ANSWER.format(n=2)
        + _verdict("NAT with Endpoint Independent Mapping!")
        + _ANSWER.format(n=3)
        + _verdict("No NAT! (Endpoint Independent Mapping)")
        + _ANSWER.format(n=4)
        + _verdict("NAT with Endpoint Independent Filtering!")
    )
    assert parse_output(output) == (NO_NAT, ENDPOINT_INDEPENDENT)


def test_parse_no_answer_at_all() -> None:
    output = (
        "\n-= Mapping Behavior Discovery =-\n"
        + _TIMEOUT
        + "\n-= Filtering Behavior Discovery =-\n"
        + _TIMEOUT
    )
    assert parse_output(output) == (NO_ANSWER, NO_ANSWER)


def test_parse_refuses_a_server_without_rfc5780() -> None:
    output = "0: : IPv4. UDP reflexive addr: 198.51.100.18:1370\n"
    with pytest.raises(LabError, match="RFC 5780 is off"):
        parse_output(output)


def test_parse_refuses_half_a_verdict() -> None:
    output = _ANSWER.format(n=1) + _verdict("NAT with Endpoint Independent Mapping!")
    with pytest.raises(LabError, match="no complete verdict"):
        parse_output(output)


@pytest.mark.parametrize(
    ("mapping", "filtering", "behaviour"),
    [
        (NO_NAT, ENDPOINT_INDEPENDENT, Behaviour.OPEN),
        (ENDPOINT_INDEPENDENT, ENDPOINT_INDEPENDENT, Behaviour.FULL_CONE),
        (ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, Behaviour.RESTRICTED_CONE),
        (ENDPOINT_INDEPENDENT, ADDRESS_AND_PORT_DEPENDENT, Behaviour.PORT_RESTRICTED),
        (ADDRESS_AND_PORT_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT, Behaviour.SYMMETRIC),
        (ADDRESS_DEPENDENT, ADDRESS_DEPENDENT, Behaviour.SYMMETRIC),
        (NO_ANSWER, NO_ANSWER, Behaviour.UDP_BLOCKED),
    ],
)
def test_classify(mapping: str, filtering: str, behaviour: Behaviour) -> None:
    assert classify(mapping, filtering) is behaviour


def test_classify_refuses_what_no_lab_router_does() -> None:
    with pytest.raises(LabError, match="no lab behaviour"):
        classify(ENDPOINT_INDEPENDENT, NO_ANSWER)
