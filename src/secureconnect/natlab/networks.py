"""The lab's harder networks: shapes the matrix of single NATs cannot express (sans-IO plans).

The matrix puts every client behind a router of its own, one NAT deep. Real networks are
harder, and each :class:`Network` here is one row of the lab with two clients, a shape and an
expected outcome (:data:`NETWORKS`, docs/natlab.md):

* ``hairpin`` / ``no-hairpin``: **two clients behind one NAT** (a port-restricted cone, like a
  home router or a carrier's NAT), on two isolated LAN ports (client isolation: their private
  addresses cannot reach each other, as two subscribers of one carrier). Their direct path runs
  through the NAT's public address back in: RFC 4787 REQ-9 ("A NAT MUST support
  'Hairpinning'"). With hairpinning the pair connects directly (srflx to srflx); without it
  only the relay works.
* ``double-nat``: **a home NAT behind a carrier-grade NAT** (the home router's WAN in
  100.64.0.0/10, RFC 6598), on both sides. Both layers keep ports and map independently of the
  endpoint (RFC 6888 REQ-1 asks a CGN for RFC 4787's EIM), so two port-restricted cones in a row
  still punch through: direct.
* ``ipv6-firewall``: **dual-stack clients whose IPv6 is not translated, only filtered** by a
  stateful firewall (outbound opens a flow, only its replies come in: RFC 6092's simple
  security), while their IPv4 is behind a symmetric NAT. Symmetric against symmetric has no
  direct IPv4 path, so a direct connection proves the IPv6 path through both firewalls: direct,
  over IPv6.
* ``idle-port-restricted`` / ``idle-symmetric``: **NATs that forget idle UDP mappings** after
  :data:`IDLE_UDP_TIMEOUT` s (RFC 4787 REQ-5 asks for at least 120 s; CPE that keep 30 s or
  less exist), with the call held idle for :data:`IDLE_HOLD` s before a second ping. Between
  port-keeping NATs the next consent check (RFC 7675) recreates the same mapping and the call
  survives. Between two symmetric NATs every working pair uses the relay of a peer whose NAT
  picks a new port after the expiry: its TURN allocation (bound to the old 5-tuple, RFC 8656
  §2.2) is lost, and the call ends. Only peers that can hold a call idle run these rows (ours).

:func:`plan_network` turns a network into :class:`NetworkPlan`: its namespaces, clients and the
``ip``/``nft``/``sysctl`` steps that build it, as data (the topology runs them; the unit tests
read them). :func:`shared_nat_ruleset` and :func:`firewall6_ruleset` are the rules this module
adds to ``behaviours``'.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from secureconnect.natlab.behaviours import Behaviour, router_ruleset

IDLE_UDP_TIMEOUT = 3  # seconds an idle UDP mapping lives in the idle rows' NATs
IDLE_HOLD = 8.0  # seconds the idle rows' calls stay silent: past the timeout and a consent check
#: the two clients' ephemeral ports behind one NAT: disjoint, so port-keeping SNAT never
#: collides and the hairpin's DNAT knows whose port a packet is for
PORT_RANGES = ("20000-29999", "30000-39999")
_FIRST_PUBLIC = 210  # 198.51.100.210 and up: the networks' public addresses (4 per network)
MAX_NETWORKS = 10


class Network(enum.StrEnum):
    """One harder network; the value is its name on the command line."""

    HAIRPIN = "hairpin"
    NO_HAIRPIN = "no-hairpin"
    DOUBLE_NAT = "double-nat"
    IPV6_FIREWALL = "ipv6-firewall"
    IDLE_PORT_RESTRICTED = "idle-port-restricted"
    IDLE_SYMMETRIC = "idle-symmetric"


@dataclass(frozen=True)
class NetworkSpec:
    """What a network is and what the lab expects of it.

    ``expected``: ``direct``, ``relay`` or ``ends`` (connects, then the idle period ends it).
    ``behaviours``: what the outermost NAT of each client looks like to the outside (the
    peer's TURN transport and the idle rule go by it).
    """

    tag: str
    description: str
    expected: str
    why: str
    behaviours: tuple[Behaviour, Behaviour]
    idle: bool = False
    ipv6: bool = False


PRC, SYM = Behaviour.PORT_RESTRICTED, Behaviour.SYMMETRIC
NETWORKS: dict[Network, NetworkSpec] = {
    Network.HAIRPIN: NetworkSpec(
        "hp",
        "two clients behind one port-restricted NAT that hairpins",
        "direct",
        "each reaches the other's public address:port through the NAT (RFC 4787 REQ-9)",
        (PRC, PRC),
    ),
    Network.NO_HAIRPIN: NetworkSpec(
        "nohp",
        "two clients behind one port-restricted NAT that does not hairpin",
        "relay",
        "the NAT drops what its clients send to its own public address; the LANs are isolated",
        (PRC, PRC),
    ),
    Network.DOUBLE_NAT: NetworkSpec(
        "dn",
        "each client behind a home NAT behind a carrier-grade NAT (100.64.0.0/10)",
        "direct",
        "both layers keep the port and map independently of the endpoint (RFC 6888 REQ-1)",
        (PRC, PRC),
    ),
    Network.IPV6_FIREWALL: NetworkSpec(
        "v6",
        "dual-stack clients: IPv6 behind a stateful firewall without NAT, IPv4 symmetric NAT",
        "direct",
        "no direct IPv4 path between two symmetric NATs: the direct path is IPv6 (RFC 6092)",
        (SYM, SYM),
        ipv6=True,
    ),
    Network.IDLE_PORT_RESTRICTED: NetworkSpec(
        "iprc",
        f"port-restricted NATs forgetting idle UDP after {IDLE_UDP_TIMEOUT} s, call idle "
        f"{IDLE_HOLD:g} s",
        "direct",
        "a consent check (RFC 7675) recreates the same port-preserving mapping",
        (PRC, PRC),
        idle=True,
    ),
    Network.IDLE_SYMMETRIC: NetworkSpec(
        "isym",
        f"symmetric NATs forgetting idle UDP after {IDLE_UDP_TIMEOUT} s, call idle {IDLE_HOLD:g} s",
        "ends",
        "every working pair uses a relay of a peer whose NAT then picks a new port: its TURN "
        "allocation, bound to the old 5-tuple (RFC 8656 §2.2), is orphaned",
        (SYM, SYM),
        idle=True,
    ),
}
ALL_NETWORKS: tuple[Network, ...] = tuple(Network)


def parse_networks(text: str) -> tuple[Network, ...]:
    """``all``, ``none`` or comma-separated names; ValueError naming the valid ones."""
    text = text.strip()
    if text == "all":
        return ALL_NETWORKS
    if text in ("none", ""):
        return ()
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = chosen - {n.value for n in ALL_NETWORKS}
    if unknown:
        valid = ", ".join(n.value for n in ALL_NETWORKS)
        raise ValueError(f"--networks: unknown {sorted(unknown)}; choose from {valid}, all, none")
    return tuple(n for n in ALL_NETWORKS if n.value in chosen)


@dataclass(frozen=True)
class LabClient:
    """One client of the lab.

    ``address`` is the address the client has on its own interface (10.n.0.2 behind a router,
    its public address for ``open``); ``public_address`` is what the outside sees (the router's
    WAN address, or ``address`` for ``open``); ``router_namespace`` is None for ``open``.
    ``network`` names the harder network a client belongs to (None: the matrix's), and
    ``address6`` its global IPv6 address where it has one.
    """

    behaviour: Behaviour
    index: int
    namespace: str
    address: str
    public_address: str
    router_namespace: str | None
    network: Network | None = None
    address6: str | None = None


@dataclass(frozen=True)
class Step:
    """One command of a build: ``ip -batch`` lines, an ``nft -f`` ruleset or ``sysctl``
    settings, inside ``namespace``."""

    kind: str  # "ip", "nft" or "sysctl"
    namespace: str
    lines: tuple[str, ...]


@dataclass
class NetworkPlan:
    """A network's namespaces (in creation order), its two clients and the steps to build it
    once the lab's public segment exists."""

    network: Network
    namespaces: list[str] = field(default_factory=list)
    routers: list[str] = field(default_factory=list)  # namespaces that forward
    clients: list[LabClient] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    udp_timeout: int | None = None  # the routers' conntrack UDP timeout; None: the lab's

    def ip(self, namespace: str, *lines: str) -> None:
        self.steps.append(Step("ip", namespace, lines))

    def nft(self, namespace: str, ruleset: str) -> None:
        self.steps.append(Step("nft", namespace, (ruleset,)))

    def sysctl(self, namespace: str, *settings: str) -> None:
        self.steps.append(Step("sysctl", namespace, settings))


@dataclass(frozen=True)
class _Place:
    """Where network number ``m`` of lab ``prefix`` lives."""

    prefix: str
    server_namespace: str
    bridge: str
    m: int
    tag: str

    def public(self, j: int) -> str:
        return f"198.51.100.{_FIRST_PUBLIC + 4 * self.m + j}"

    def private(self, j: int, host: int) -> str:
        return f"10.{200 + self.m}.{j + 1}.{host}"

    def carrier(self, j: int, host: int) -> str:  # RFC 6598 shared address space
        return f"100.{64 + self.m}.{j + 1}.{host}"

    def v6_lan(self, j: int, host: int) -> str:  # RFC 3849 documentation prefix
        return f"2001:db8:{self.m + 1}:{j + 1}::{host}"

    def v6_wan(self, j: int) -> str:
        return f"2001:db8:ffff::{_FIRST_PUBLIC + 4 * self.m + j}"

    def name(self, role: str, j: int | None = None) -> str:
        return f"{self.prefix}{self.tag}-{role}" + ("" if j is None else "-" + "ab"[j])


def plan_network(
    network: Network, m: int, *, prefix: str, server_namespace: str, bridge: str
) -> NetworkPlan:
    """The plan of ``network`` as the ``m``-th (from 0) network of the lab with namespace
    ``prefix``; its routers' WANs plug into ``bridge`` in ``server_namespace``."""
    if not 0 <= m < MAX_NETWORKS:
        raise ValueError(f"a lab holds at most {MAX_NETWORKS} networks")
    spec = NETWORKS[network]
    place = _Place(prefix, server_namespace, bridge, m, spec.tag)
    plan = NetworkPlan(network, udp_timeout=IDLE_UDP_TIMEOUT if spec.idle else None)
    if network in (Network.HAIRPIN, Network.NO_HAIRPIN):
        _plan_shared_nat(plan, place, hairpin=network is Network.HAIRPIN)
    elif network is Network.DOUBLE_NAT:
        _plan_double_nat(plan, place)
    else:
        _plan_single_nats(plan, place, spec)
    return plan


def _plug_into_bridge(plan: NetworkPlan, place: _Place, router: str, j: int, port: str) -> None:
    """``router``'s interface ``wan`` on the lab's public bridge with public address ``j``."""
    plan.ip(
        place.server_namespace,
        f"link add name {port} type veth peer name wan netns {router}",
        f"link set dev {port} master {place.bridge}",
        f"link set dev {port} up",
    )
    plan.ip(
        router,
        "link set dev lo up",
        f"address add {place.public(j)}/24 dev wan",
        "link set dev wan up",
    )


def _lan_link(plan: NetworkPlan, router: str, lan: str, gateway: str, far: tuple[str, str]) -> None:
    """A veth from ``router`` (``lan``, ``gateway``/24) to ``far``: (namespace, interface)."""
    far_ns, far_if = far
    plan.ip(
        router,
        f"link add name {lan} type veth peer name {far_if} netns {far_ns}",
        f"address add {gateway}/24 dev {lan}",
        f"link set dev {lan} up",
    )


def _client(plan: NetworkPlan, place: _Place, j: int, *, gateway: str, address: str) -> str:
    namespace = place.name("c", j)
    plan.ip(
        namespace,
        "link set dev lo up",
        "link set dev uplink up",
        f"address add {address}/24 dev uplink",
        f"route add default via {gateway} dev uplink",
    )
    return namespace


def _plan_shared_nat(plan: NetworkPlan, place: _Place, *, hairpin: bool) -> None:
    router = place.name("r")
    plan.namespaces.append(router)
    plan.routers.append(router)
    _plug_into_bridge(plan, place, router, 0, f"v-{place.tag}-r")
    lans = []
    for j in range(2):
        client = place.name("c", j)
        plan.namespaces.append(client)
        lan = f"lan-{'ab'[j]}"
        _lan_link(plan, router, lan, place.private(j, 1), (client, "uplink"))
        _client(plan, place, j, gateway=place.private(j, 1), address=place.private(j, 2))
        # ip_local_port_range is per namespace: the client's own sockets pick from its range
        plan.sysctl(client, f"net.ipv4.ip_local_port_range={PORT_RANGES[j].replace('-', ' ')}")
        lans.append((lan, place.private(j, 2), PORT_RANGES[j]))
        plan.clients.append(
            LabClient(PRC, j, client, place.private(j, 2), place.public(0), router, plan.network)
        )
    plan.nft(router, shared_nat_ruleset("wan", place.public(0), lans, hairpin=hairpin))


def _plan_double_nat(plan: NetworkPlan, place: _Place) -> None:
    for j in range(2):
        carrier, home, client = place.name("g", j), place.name("r", j), place.name("c", j)
        plan.namespaces += [carrier, home, client]
        plan.routers += [carrier, home]
        _plug_into_bridge(plan, place, carrier, j, f"v-{place.tag}-g{'ab'[j]}")
        _lan_link(plan, carrier, "lan", place.carrier(j, 1), (home, "wan"))
        plan.ip(
            home,
            "link set dev lo up",
            f"address add {place.carrier(j, 2)}/24 dev wan",
            "link set dev wan up",
            f"route add default via {place.carrier(j, 1)} dev wan",
        )
        _lan_link(plan, home, "lan", place.private(j, 1), (client, "uplink"))
        _client(plan, place, j, gateway=place.private(j, 1), address=place.private(j, 2))
        for router, wan_address, inside in (
            (carrier, place.public(j), place.carrier(j, 2)),
            (home, place.carrier(j, 2), place.private(j, 2)),
        ):
            rules = router_ruleset(
                PRC,
                wan_interface="wan",
                wan_address=wan_address,
                lan_interface="lan",
                client_address=inside,
            )
            plan.nft(router, rules)
        plan.clients.append(
            LabClient(PRC, j, client, place.private(j, 2), place.public(j), home, plan.network)
        )


def _plan_single_nats(plan: NetworkPlan, place: _Place, spec: NetworkSpec) -> None:
    """One router per client (the idle rows, and the dual-stack one with IPv6 added)."""
    for j in range(2):
        router, client = place.name("r", j), place.name("c", j)
        plan.namespaces += [router, client]
        plan.routers.append(router)
        if spec.ipv6:
            for namespace in (router, client):  # before their links exist: "default" counts
                plan.sysctl(
                    namespace,
                    "net.ipv6.conf.all.disable_ipv6=0",
                    "net.ipv6.conf.default.disable_ipv6=0",
                    f"net.ipv6.conf.all.forwarding={int(namespace == router)}",
                )
        _plug_into_bridge(plan, place, router, j, f"v-{place.tag}-r{'ab'[j]}")
        _lan_link(plan, router, "lan", place.private(j, 1), (client, "uplink"))
        _client(plan, place, j, gateway=place.private(j, 1), address=place.private(j, 2))
        behaviour = spec.behaviours[j]
        plan.nft(
            router,
            router_ruleset(
                behaviour,
                wan_interface="wan",
                wan_address=place.public(j),
                lan_interface="lan",
                client_address=place.private(j, 2),
            ),
        )
        address6 = None
        if spec.ipv6:
            address6 = place.v6_lan(j, 2)
            other = 1 - j
            plan.ip(
                router,
                f"address add {place.v6_wan(j)}/64 dev wan nodad",
                f"address add {place.v6_lan(j, 1)}/64 dev lan nodad",
                f"route add {place.v6_lan(other, 0)}/64 via {place.v6_wan(other)} dev wan",
            )
            plan.ip(
                client,
                f"address add {address6}/64 dev uplink nodad",
                f"route add default via {place.v6_lan(j, 1)} dev uplink",
            )
            plan.nft(router, firewall6_ruleset("wan", "lan"))
        plan.clients.append(
            LabClient(
                behaviour,
                j,
                client,
                place.private(j, 2),
                place.public(j),
                router,
                plan.network,
                address6,
            )
        )


def shared_nat_ruleset(
    wan: str, public: str, lans: list[tuple[str, str, str]], *, hairpin: bool
) -> str:
    """``table ip natlab`` for one router with several clients, each ``(lan interface, client
    address, its port range)``: a port-restricted cone for each (port-keeping SNAT, only
    replies come in), the LANs isolated from each other, and hairpinning on or off.

    Hairpinning (RFC 4787 REQ-9) is a DNAT of what a LAN sends to the public address, by
    destination port to the client whose range holds it, and a SNAT of it to the public address
    on its way back into a LAN, so that the receiver sees the sender's public address:port (its
    server-reflexive candidate), as RFC 4787 §6 asks ("external source IP address and port").
    """
    lan_set = "{ " + ", ".join(f'"{lan}"' for lan, _, _ in lans) + " }"
    clients = "{ " + ", ".join(client for _, client, _ in lans) + " }"
    lines = [
        f"# {len(lans)} clients behind one port-restricted NAT, hairpinning "
        + ("on" if hairpin else "off"),
        "table ip natlab",
        "delete table ip natlab",
        "table ip natlab {",
        "  chain outbound_nat {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "{wan}" ip saddr {clients} snat to {public}',
    ]
    if hairpin:
        lines.append(f"    oifname {lan_set} ct status dnat ip saddr {clients} snat to {public}")
    lines.append("  }")
    if hairpin:
        lines += [
            "  chain inbound_nat {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            *(
                f"    iifname {lan_set} ip daddr {public} meta l4proto {{ tcp, udp }} "
                f"th dport {ports} dnat to {client}"
                for _, client, ports in lans
            ),
            "  }",
        ]
    lines += [
        "  chain forward_filter {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
        f'    iifname {lan_set} oifname "{wan}" accept',
    ]
    if hairpin:
        lines.append(f"    iifname {lan_set} oifname {lan_set} ct status dnat accept")
    lines += [
        "  }",
        "  chain input_filter {",
        "    type filter hook input priority filter; policy accept;",
        f'    iifname "{wan}" ct state new drop',
        # Not hairpinned: addressed to the router itself. RFC 4787 REQ-9 unmet, silently.
        f"    iifname {lan_set} ip daddr {public} drop",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def firewall6_ruleset(wan: str, lan: str) -> str:
    """``table ip6 natlab6``: a stateful IPv6 firewall without translation. What the LAN sends
    out opens a flow; from outside only that flow's replies come in (conntrack keys flows by
    their 5-tuple: address-and-port-dependent filtering), plus the ICMPv6 errors a path needs
    (RFC 4890 §4.3.1). Neighbour discovery is link-local: the input hook is left open."""
    return (
        "\n".join(
            [
                "# IPv6: a stateful firewall, no NAT",
                "table ip6 natlab6",
                "delete table ip6 natlab6",
                "table ip6 natlab6 {",
                "  chain forward_filter {",
                "    type filter hook forward priority filter; policy drop;",
                "    ct state established,related accept",
                "    ct state invalid drop",
                f'    iifname "{lan}" oifname "{wan}" accept',
                "    icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, "
                "parameter-problem } accept",
                "  }",
                "}",
            ]
        )
        + "\n"
    )
