"""The six NAT behaviours of the lab and the nftables rules that give a router each of them.

RFC 4787 splits what a NAT does to UDP into two independent properties:

* **mapping** (section 4.1): which external address:port an internal endpoint X:x gets when it
  sends to different destinations. Endpoint-independent mapping (EIM) reuses one mapping for
  every destination; address-and-port-dependent mapping gives every destination its own.
* **filtering** (section 5): which inbound packets reach X:x through that mapping: any
  (endpoint-independent, EIF), only from addresses X:x has sent to (address-dependent, ADF), or
  only from address:port pairs it has sent to (address-and-port-dependent, APDF).

The classic "cone" names are points in that grid; :data:`DESCRIPTIONS` gives each one in RFC 4787
terms. :func:`router_ruleset` turns a behaviour into the nftables ruleset of one lab router, and
:func:`loss_ruleset` the packet-loss rules for one link. Both are pure text builders (no I/O, no
root), so the unit tests read the rules without a kernel; ``topology`` loads them with
``nft -f -`` inside the router's namespace.

How the kernel's NAT gives each behaviour:

* Linux SNAT keeps the source port when it is free (RFC 4787 4.2.1, "port preservation") and
  conntrack keys every flow by its full 5-tuple. A single client behind its own router never
  collides with itself, so plain ``snat to WAN`` is endpoint-independent mapping with
  address-and-port-dependent filtering: a port-restricted cone.
* ``fully-random`` picks a fresh random port for every new flow: address-and-port-dependent
  mapping, i.e. symmetric.
* Looser filtering needs inbound flows that conntrack has never seen to be let in: a DNAT to the
  client, for any sender (full cone) or for senders in a dynamic set that the router fills from
  the client's own outbound packets (restricted cone).
* An unsolicited inbound packet that no rule DNATs is addressed to the router itself. If it got
  as far as conntrack's confirmation it would leave an entry behind that clashes with the
  client's port-preserving mapping later (the kernel then picks another port, so the router
  suddenly looks symmetric). Every ruleset therefore drops NEW inbound packets in the router's
  input hook, before the entry is confirmed (docs/natlab.md).
"""

from __future__ import annotations

import enum
import ipaddress
import re

TABLE = "natlab"  # every rule lives in ``table ip natlab`` (or ``netdev natlab_loss``)
LOSS_TABLE = "natlab_loss"
# RFC 4787 REQ-5: "A NAT UDP mapping timer MUST NOT expire in less than two minutes [...] A
# default value of five minutes or more for the NAT UDP mapping timer is RECOMMENDED."
MAPPING_TIMEOUT = 300  # seconds; the restricted-cone permission set uses the same
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")  # IFNAMSIZ is 16 with the NUL
_LOSS_SCALE = 10_000  # numgen resolution: loss is applied in steps of 0.01 %


class Behaviour(enum.StrEnum):
    """One NAT behaviour of the lab; the value is its name on the command line."""

    OPEN = "open"
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "udp-blocked"

    @property
    def tag(self) -> str:
        """The short tag in namespace and interface names (``scnl-r-<tag>-a``)."""
        return _TAGS[self]

    @property
    def description(self) -> str:
        """One plain line: RFC 4787 mapping x filtering."""
        return DESCRIPTIONS[self]


ALL_BEHAVIOURS: tuple[Behaviour, ...] = tuple(Behaviour)

_TAGS = {
    Behaviour.OPEN: "open",
    Behaviour.FULL_CONE: "full",
    Behaviour.RESTRICTED_CONE: "rcone",
    Behaviour.PORT_RESTRICTED: "prc",
    Behaviour.SYMMETRIC: "sym",
    Behaviour.UDP_BLOCKED: "noudp",
}

DESCRIPTIONS: dict[Behaviour, str] = {
    Behaviour.OPEN: "no NAT: a public address, nothing mapped and nothing filtered",
    Behaviour.FULL_CONE: (
        "endpoint-independent mapping, endpoint-independent filtering (1:1 static NAT)"
    ),
    Behaviour.RESTRICTED_CONE: "endpoint-independent mapping, address-dependent filtering",
    Behaviour.PORT_RESTRICTED: (
        "endpoint-independent mapping, address-and-port-dependent filtering"
    ),
    Behaviour.SYMMETRIC: (
        "address-and-port-dependent mapping (a random port per destination), "
        "address-and-port-dependent filtering"
    ),
    Behaviour.UDP_BLOCKED: (
        "all UDP dropped; TCP with endpoint-independent mapping and address-and-port-dependent "
        "filtering (only TURN over TCP/TLS gets through)"
    ),
}


def parse_behaviour(name: str) -> Behaviour:
    """The behaviour called ``name`` (its value, e.g. ``full-cone``); ValueError naming the
    valid ones otherwise."""
    try:
        return Behaviour(name)
    except ValueError:
        valid = ", ".join(b.value for b in ALL_BEHAVIOURS)
        raise ValueError(f"unknown NAT behaviour {name!r}; choose from {valid}") from None


def _interface(name: str) -> str:
    if not _INTERFACE_NAME.match(name):
        raise ValueError(f"bad interface name {name!r} (1-15 of A-Z a-z 0-9 _ . -)")
    return name


def _ipv4(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise ValueError(f"not an IPv4 address: {address!r}") from None


def router_ruleset(
    behaviour: Behaviour,
    *,
    wan_interface: str,
    wan_address: str,
    lan_interface: str,
    client_address: str,
    mapping_timeout: int = MAPPING_TIMEOUT,
) -> str:
    """The ``nft -f`` text that makes a router show ``behaviour`` for the one client behind it.

    The router forwards between ``lan_interface`` (where ``client_address`` lives) and
    ``wan_interface``, whose address ``wan_address`` is the client's public address. The text
    replaces ``table ip natlab`` and touches nothing else, so loading it twice is harmless.
    :attr:`Behaviour.OPEN` has no router: ValueError. Names and addresses are validated (they
    are pasted into the rule text).
    """
    if behaviour is Behaviour.OPEN:
        raise ValueError("the open behaviour has no router (its client sits on the bridge)")
    if mapping_timeout <= 0:
        raise ValueError("mapping_timeout must be positive")
    wan, lan = _interface(wan_interface), _interface(lan_interface)
    public, client = _ipv4(wan_address), _ipv4(client_address)
    rcone = behaviour is Behaviour.RESTRICTED_CONE
    lines = [
        f"# {behaviour.value}: {behaviour.description}",
        f"table ip {TABLE}",  # declared, then deleted: a reload starts from an empty table
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
    ]
    if rcone:
        lines += [
            # The restricted cone's permissions, keyed like RFC 4787's filter: per mapping
            # (protocol, public port) and remote address, refreshed by every outbound packet.
            "  set permitted {",
            "    type inet_proto . inet_service . ipv4_addr",
            "    flags dynamic, timeout",
            f"    timeout {mapping_timeout}s",
            "  }",
        ]
    lines += _outbound_nat(behaviour, wan, public, client)
    lines += _inbound_nat(behaviour, wan, public, client)
    if rcone:
        lines += [
            "  chain remember_peers {",
            # After SNAT (srcnat + 10) the source port is the public one the filter keys on.
            "    type filter hook postrouting priority srcnat + 10; policy accept;",
            f'    oifname "{wan}" meta l4proto {{ tcp, udp }} update @permitted '
            "{ meta l4proto . th sport . ip daddr }",
            "  }",
        ]
    lines += _forward_filter(behaviour, wan, lan)
    lines += _input_filter(behaviour, wan)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _outbound_nat(behaviour: Behaviour, wan: str, public: str, client: str) -> list[str]:
    if behaviour is Behaviour.SYMMETRIC:
        # RFC 4787 4.1: "Address and Port-Dependent Mapping: The NAT reuses the port mapping
        # for subsequent packets sent from the same internal IP address and port (X:x) to the
        # same external IP address and port while the mapping is still active." fully-random
        # gives every new 5-tuple a fresh random port, so no two destinations share one.
        translate = f"snat to {public} fully-random"
    else:
        # RFC 4787 4.1: "Endpoint-Independent Mapping: The NAT reuses the port mapping for
        # subsequent packets sent from the same internal IP address and port (X:x) to any
        # external IP address and port." Plain SNAT preserves the client's port (4.2.1), and
        # with one client per router the port is always free: the same X1':x1' everywhere.
        translate = f"snat to {public}"
    return [
        "  chain outbound_nat {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "{wan}" ip saddr {client} {translate}',
        "  }",
    ]


def _inbound_nat(behaviour: Behaviour, wan: str, public: str, client: str) -> list[str]:
    if behaviour is Behaviour.FULL_CONE:
        # RFC 4787 5: "Endpoint-Independent Filtering: The NAT filters out only packets not
        # destined to the internal address and port X:x, regardless of the external IP address
        # and port source (Z:z)." A 1:1 static DNAT lets every sender in (to every port: a
        # little looser than EIF, which only opens mapped ports; discovery cannot tell).
        rule = f'iifname "{wan}" ip daddr {public} dnat to {client}'
    elif behaviour is Behaviour.RESTRICTED_CONE:
        # RFC 4787 5: "Address-Dependent Filtering: [...] the NAT will filter out packets from
        # Y:y destined for the internal endpoint X:x if X:x has not sent packets to Y
        # previously (independently of the port used by Y)." A new inbound flow is let in
        # when its (protocol, public port, source address) is in @permitted, whatever its
        # source port; the port is preserved, so the client receives it on x.
        rule = (
            f'iifname "{wan}" ip daddr {public} '
            f"meta l4proto . th dport . ip saddr @permitted dnat to {client}"
        )
    else:
        # RFC 4787 5: "Address and Port-Dependent Filtering: [...] The NAT will filter out
        # packets from Y:y destined for the internal endpoint X:x if X:x has not sent packets
        # to Y:y previously." Only replies conntrack already knows get in: nothing to DNAT.
        return []
    return [
        "  chain inbound_nat {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f"    {rule}",
        "  }",
    ]


def _forward_filter(behaviour: Behaviour, wan: str, lan: str) -> list[str]:
    lines = [
        "  chain forward_filter {",
        "    type filter hook forward priority filter; policy drop;",
    ]
    if behaviour is Behaviour.UDP_BLOCKED:
        # A firewall that lets no UDP through either way (and says nothing): only TURN over
        # TCP or TLS reaches the outside.
        lines.append("    meta l4proto udp drop")
    lines += [
        "    ct state established,related accept",
        f'    iifname "{lan}" oifname "{wan}" accept',
    ]
    if behaviour in (Behaviour.FULL_CONE, Behaviour.RESTRICTED_CONE):
        lines.append(f'    iifname "{wan}" oifname "{lan}" ct status dnat accept')
    lines.append("  }")
    return lines


def _input_filter(behaviour: Behaviour, wan: str) -> list[str]:
    lines = [
        "  chain input_filter {",
        "    type filter hook input priority filter; policy accept;",
        # Not DNAT'ed, so addressed to the router: drop it before conntrack confirms an entry
        # that would clash with the client's port-preserving mapping (module docstring).
        f'    iifname "{wan}" ct state new drop',
    ]
    if behaviour is Behaviour.UDP_BLOCKED:
        lines.append(f'    iifname "{wan}" meta l4proto udp drop')
    lines.append("  }")
    return lines


def loss_ruleset(interface: str, loss_percent: float) -> str:
    """The ``nft -f`` text that drops ``loss_percent`` % of the IPv4 packets leaving and of
    those arriving on ``interface`` (netdev egress and ingress hooks: as if lost on the wire,
    before NAT or conntrack sees them; ARP is spared). Replaces ``table netdev natlab_loss``;
    0 % gives no table."""
    if not 0.0 <= loss_percent <= 100.0:
        raise ValueError(f"loss_percent must be within 0-100, not {loss_percent}")
    device = _interface(interface)
    threshold = round(loss_percent * _LOSS_SCALE / 100)
    if threshold == 0:
        return ""
    # IPv4 only: losing ARP as well would stall whole bursts behind an unresolved neighbour.
    drop = f"meta protocol ip numgen random mod {_LOSS_SCALE} < {threshold} drop"
    return (
        f"table netdev {LOSS_TABLE}\n"
        f"delete table netdev {LOSS_TABLE}\n"
        f"table netdev {LOSS_TABLE} {{\n"
        "  chain lose_inbound {\n"
        f'    type filter hook ingress device "{device}" priority filter; policy accept;\n'
        f"    {drop}\n"
        "  }\n"
        "  chain lose_outbound {\n"
        f'    type filter hook egress device "{device}" priority filter; policy accept;\n'
        f"    {drop}\n"
        "  }\n"
        "}\n"
    )
