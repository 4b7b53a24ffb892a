"""The harder networks as data: their plans (namespaces, addresses, steps), their nftables
rules, how their rows are judged and shown. Pure: no root, no kernel. That the kernel does what
the plans say is ``test_natlab_networks.py``'s job, with real peers."""

from __future__ import annotations

import re

import pytest

from secureconnect.natlab.networks import (
    ALL_NETWORKS,
    IDLE_UDP_TIMEOUT,
    NETWORKS,
    Network,
    NetworkPlan,
    firewall6_ruleset,
    parse_networks,
    plan_network,
    shared_nat_ruleset,
)
from secureconnect.natlab.report import PairResult, network_lines, render_svg, render_table
from secureconnect.natlab.verdicts import check_network, network_needs_direct_check

LANS = [("lan-a", "10.200.1.2", "20000-29999"), ("lan-b", "10.200.2.2", "30000-39999")]


def plan(network: Network, m: int = 0) -> NetworkPlan:
    return plan_network(network, m, prefix="scnl-3-", server_namespace="scnl-3-wan", bridge="br0")


def test_every_network_has_two_clients_in_namespaces_of_its_own() -> None:
    seen: set[str] = set()
    publics: set[str] = set()
    for m, network in enumerate(ALL_NETWORKS):
        p = plan(network, m)
        assert len(p.clients) == 2
        assert all(name.startswith("scnl-3-") for name in p.namespaces)
        assert not seen & set(p.namespaces)
        seen |= set(p.namespaces)
        assert {c.namespace for c in p.clients} <= set(p.namespaces)
        assert set(p.routers) <= set(p.namespaces)
        assert all(c.network is network for c in p.clients)
        publics |= {c.public_address for c in p.clients}
        for step in p.steps:  # every step runs in the lab (its own or the server namespace)
            assert step.namespace in {*p.namespaces, "scnl-3-wan"}
            if step.kind == "ip":
                for line in step.lines:
                    for name in re.findall(r"name (\S+)", line):
                        assert len(name) <= 15, line  # IFNAMSIZ
    assert all(a.startswith("198.51.100.2") for a in publics)  # 210 and up, past the matrix


def test_hairpin_rows_share_one_public_address_and_the_double_nat_sits_in_100_64() -> None:
    a, b = plan(Network.HAIRPIN).clients
    assert a.public_address == b.public_address
    assert a.router_namespace == b.router_namespace
    ranges = [s.lines for s in plan(Network.HAIRPIN).steps if s.kind == "sysctl"]
    assert ranges == [
        ("net.ipv4.ip_local_port_range=20000 29999",),
        ("net.ipv4.ip_local_port_range=30000 39999",),
    ]
    double = plan(Network.DOUBLE_NAT, 2)
    text = "\n".join(line for s in double.steps if s.kind == "ip" for line in s.lines)
    assert "address add 100.66.1.2/24 dev wan" in text  # the home router's WAN: RFC 6598
    assert len(double.routers) == 4  # a carrier NAT and a home NAT per side
    rules = [s.lines[0] for s in double.steps if s.kind == "nft"]
    assert len(rules) == 4
    assert all("snat to" in r for r in rules)


def test_the_ipv6_row_gives_global_addresses_and_a_stateful_firewall() -> None:
    p = plan(Network.IPV6_FIREWALL, 1)
    a, b = p.clients
    assert (a.address6, b.address6) == ("2001:db8:2:1::2", "2001:db8:2:2::2")
    settings = [line for s in p.steps if s.kind == "sysctl" for line in s.lines]
    assert "net.ipv6.conf.all.disable_ipv6=0" in settings
    assert "net.ipv6.conf.all.forwarding=1" in settings
    assert sum("table ip6 natlab6 {" in s.lines[0] for s in p.steps if s.kind == "nft") == 2
    assert all(not NETWORKS[n].ipv6 for n in ALL_NETWORKS if n is not Network.IPV6_FIREWALL)


def test_idle_rows_get_a_short_udp_timeout() -> None:
    assert plan(Network.IDLE_SYMMETRIC).udp_timeout == IDLE_UDP_TIMEOUT
    assert plan(Network.HAIRPIN).udp_timeout is None  # the lab's own


def test_hairpinning_is_a_dnat_by_port_range_and_a_snat_back_to_the_public_address() -> None:
    on = shared_nat_ruleset("wan", "198.51.100.210", LANS, hairpin=True)
    off = shared_nat_ruleset("wan", "198.51.100.210", LANS, hairpin=False)
    dnat = 'iifname { "lan-a", "lan-b" } ip daddr 198.51.100.210 meta l4proto { tcp, udp }'
    assert f"{dnat} th dport 30000-39999 dnat to 10.200.2.2" in on
    assert 'oifname { "lan-a", "lan-b" } ct status dnat ip saddr' in on
    assert "dnat" not in off
    for rules in (on, off):  # both: port-keeping SNAT out, LANs isolated, nothing unsolicited
        assert 'oifname "wan" ip saddr { 10.200.1.2, 10.200.2.2 } snat to 198.51.100.210' in rules
        assert "policy drop" in rules
        assert 'iifname "wan" ct state new drop' in rules
        assert rules.startswith("# 2 clients")


def test_the_ipv6_firewall_lets_out_and_only_replies_in() -> None:
    rules = firewall6_ruleset("wan", "lan")
    assert "table ip6 natlab6 {" in rules
    assert "policy drop" in rules
    assert "ct state established,related accept" in rules
    assert 'iifname "lan" oifname "wan" accept' in rules
    assert "snat" not in rules
    assert "dnat" not in rules  # no translation


def test_parse_networks() -> None:
    assert parse_networks("all") == ALL_NETWORKS
    assert parse_networks("none") == ()
    assert parse_networks("double-nat, hairpin") == (Network.HAIRPIN, Network.DOUBLE_NAT)
    with pytest.raises(ValueError, match="choose from hairpin"):
        parse_networks("hairpin,triple-nat")


def row(network: Network, connected: bool, local: str | None, remote: str | None) -> PairResult:
    a, b = NETWORKS[network].behaviours
    seconds = 1.0 if connected else None
    return PairResult(a.value, b.value, connected, local, remote, seconds, network=network.value)


def test_rows_are_judged_by_their_expected_outcome() -> None:
    ok: dict[str, object] = {}
    assert check_network(row(Network.HAIRPIN, True, "host", "srflx"), ok, ok) == ""
    relayed = row(Network.HAIRPIN, True, "relay", "srflx")
    assert network_needs_direct_check(relayed)
    assert "no direct path" in check_network(relayed, ok, ok)
    assert check_network(row(Network.NO_HAIRPIN, True, "relay", "srflx"), ok, ok) == ""
    assert "expected relay" in check_network(
        row(Network.NO_HAIRPIN, True, "srflx", "srflx"), ok, ok
    )
    ended = {"error": "no answer 10 s after pinging again after 8 s idle"}
    assert check_network(row(Network.IDLE_SYMMETRIC, False, "relay", "prflx"), ended, ok) == ""
    survived = check_network(row(Network.IDLE_SYMMETRIC, True, "relay", "prflx"), ok, ok)
    assert "outlived" in survived
    never = {"error": "timed out while connecting"}
    assert "did not connect" in check_network(
        row(Network.IDLE_SYMMETRIC, False, None, None), never, ok
    )
    v4 = {"local_candidate": "10.203.1.2:40000/udp"}
    v6 = {"local_candidate": "[2001:db8:1:1::2]:40000/udp"}
    direct = row(Network.IPV6_FIREWALL, True, "host", "host")
    assert "over IPv4" in check_network(direct, v4, ok)
    assert check_network(direct, v6, ok) == ""
    assert check_network(direct, {}, ok) == ""  # a browser does not say which address


def test_rows_are_listed_under_the_matrix_not_in_it() -> None:
    results = [
        PairResult("open", "open", True, "host", "host", 0.1),
        row(Network.HAIRPIN, True, "host", "srflx"),
        row(Network.IDLE_SYMMETRIC, False, None, None),
    ]
    table = render_table(results, ["open"])
    assert "1 pairs: 1 direct" in table
    assert network_lines(results) == [
        "  hairpin         host/srflx 1.0s  (expected: direct)",
        "  idle-symmetric  ENDED when idle  (expected: ends)",
    ]
    svg = render_svg(results, ["open"])
    assert ">hairpin</text>" in svg
    assert ">idle-symmetric</text>" in svg
