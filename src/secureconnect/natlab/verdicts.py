"""What the lab expects of a pair, and what is wrong with what it saw (pure judgement).

The runner measures (:mod:`secureconnect.natlab.runner`); this module decides: which route a
pair of NAT behaviours allows (:func:`expected_route`), which route a connected pair took
(:func:`route_of`), when a STUN-only attempt is needed to judge it (:func:`needs_direct_check`),
which calls a NAT's idle timeout ends (:func:`dies_when_idle`), and the message for an
unexpected outcome (:func:`check_pair`; :func:`check_network` for the harder networks of
:mod:`secureconnect.natlab.networks`). Messages start with the row's name (``a <-> b`` or the
network's), which the JUnit export matches on.
"""

from __future__ import annotations

from collections.abc import Mapping

from secureconnect.natlab.behaviours import Behaviour
from secureconnect.natlab.networks import NETWORKS, Network
from secureconnect.natlab.report import PairResult


def expected_route(a: Behaviour, b: Behaviour) -> str:
    """``"relay"`` where no direct path can exist between clients behind ``a`` and ``b``, else
    ``"direct"`` (host, srflx or prflx candidates on both sides).

    - UDP blocked: only the TURN server is reachable (over TCP or TLS).
    - Symmetric mapping (RFC 4787 §4.1: a new mapping per destination) against a NAT that also
      filters by port (§5: address-and-port-dependent filtering, i.e. port-restricted or another
      symmetric NAT): the port the symmetric NAT opens towards the peer is not the one its STUN
      server saw, and the peer's filter admits only the latter.
    - Everything else punches through: the other side's mapping is endpoint-independent, and its
      filter admits the symmetric side's new port (restricted cone filters by address only).
    """
    pair = {a, b}
    if Behaviour.UDP_BLOCKED in pair:
        return "relay"
    if Behaviour.SYMMETRIC in pair and pair <= {Behaviour.SYMMETRIC, Behaviour.PORT_RESTRICTED}:
        return "relay"
    return "direct"


def route_of(result: PairResult) -> str:
    """How a connected pair went: through the TURN relay if either end used a relay candidate;
    ``unknown`` when a peer of the user's did not say which pair it selected."""
    if result.local is None or result.remote is None:
        return "unknown"
    return "relay" if "relay" in (result.local, result.remote) else "direct"


def needs_direct_check(result: PairResult) -> bool:
    """Whether the route seen needs a STUN-only attempt to be judged.

    aioice nominates aggressively (every check of the controlling agent carries USE-CANDIDATE,
    so the first pair that answers wins): between two filtering NATs a host->relay pair can
    answer before the hole punching of the direct pair completes, and the peers then relay
    although a direct path exists. A relayed pair expected direct is therefore tried again with
    STUN only, and must connect directly. A pair expected to need the relay (and reachable over
    UDP at all) is tried with STUN only too, and must not connect: "only via relay".
    """
    a, b = Behaviour(result.a), Behaviour(result.b)
    if not result.connected or Behaviour.UDP_BLOCKED in (a, b) or route_of(result) == "unknown":
        return False
    return expected_route(a, b) == "relay" or route_of(result) == "relay"


IDLE_STAGE = "pinging again after"  # natlab/peer.py's stage once the hold is over


def dies_when_idle(result: PairResult) -> bool:
    """Whether a call outlives no idle period longer than the NATs' UDP timeout: when a peer
    behind a symmetric NAT relays. Its NAT gives the next packet after the mapping expired a new
    port (RFC 4787 §4.1, address-and-port-dependent mapping), and the TURN allocation, bound to
    the old 5-tuple (RFC 8656 §2.2), is lost with it. A relay behind a NAT that keeps its port
    (endpoint-independent mapping), and every direct pair, get going again with the next
    consent check (RFC 7675, every 5 s)."""
    a, b = Behaviour(result.a), Behaviour(result.b)
    return (result.local == "relay" and a is Behaviour.SYMMETRIC) or (
        result.remote == "relay" and b is Behaviour.SYMMETRIC
    )


def _check_idle_death(name: str, result: PairResult, reason: str) -> str:
    """A call :func:`dies_when_idle` must have connected, then ended once idle."""
    if result.connected:
        return f"{name}: the relayed call outlived the NAT's idle timeout, expected it to end"
    if IDLE_STAGE not in reason:
        return f"{name}: did not connect ({reason})"
    return ""


def check_pair(
    result: PairResult,
    mine: dict[str, object],
    theirs: dict[str, object],
    direct: PairResult | None = None,
    *,
    idle_expiry: bool = False,
) -> str:
    """What is wrong with one pair's outcome, or ``""``; ``direct`` is the STUN-only attempt
    (:func:`needs_direct_check`); ``idle_expiry``: each call stayed idle longer than the NATs'
    UDP timeout (:func:`dies_when_idle` says which calls that ends)."""
    a, b = Behaviour(result.a), Behaviour(result.b)
    name = f"{a.value} <-> {b.value}"
    reason = str(mine.get("error") or theirs.get("error") or "no connection")
    if idle_expiry and dies_when_idle(result):
        return _check_idle_death(name, result, reason)
    if not result.connected:
        return f"{name}: did not connect ({reason})"
    direct_ok = direct is not None and direct.connected and route_of(direct) == "direct"
    return _check_route(name, expected_route(a, b), result, direct_ok=direct_ok)


def _check_route(name: str, want: str, result: PairResult, *, direct_ok: bool) -> str:
    """What is wrong with a connected pair's route, or ``""``."""
    got = route_of(result)
    if got == "unknown":
        return ""  # connected; the user's peer did not say how
    if want == "relay" and got != "relay" and not tcp_direct(result):
        return f"{name}: connected via {result.local}/{result.remote}, expected relay"
    if want == "relay" and direct_ok:
        return f"{name}: connected directly with STUN only, expected to need the relay"
    if want == "direct" and got == "relay" and not direct_ok:
        return f"{name}: relayed ({result.local}/{result.remote}) and no direct path with STUN only"
    return ""


def tcp_direct(result: PairResult) -> bool:
    """A direct pair over TCP with a client behind the UDP-blocking NAT: ICE-TCP (RFC 6544),
    which browsers do and aiortc does not. That NAT lets TCP out, so an active TCP candidate
    behind it reaches a passive one that takes inbound TCP (a public address): a direct path
    the lab's "relay only where UDP is blocked" rule does not count, and a right one."""
    pair = {result.a, result.b}
    return result.protocol == "tcp" and Behaviour.UDP_BLOCKED.value in pair


def network_needs_direct_check(result: PairResult) -> bool:
    """:func:`needs_direct_check` for a harder network's row: a relayed call where a direct
    path is expected, and a call expected to need the relay, are tried with STUN only."""
    if result.network is None or not result.connected or route_of(result) == "unknown":
        return False
    expected = NETWORKS[Network(result.network)].expected
    return expected == "relay" or (expected == "direct" and route_of(result) == "relay")


def check_network(
    result: PairResult,
    mine: Mapping[str, object],
    theirs: Mapping[str, object],
    direct: PairResult | None = None,
    direct_report: Mapping[str, object] | None = None,
) -> str:
    """What is wrong with a harder network's row, or ``""``: its spec's ``expected`` (direct,
    relay, or ends once idle), judged as :func:`check_pair` judges a matrix pair; for
    ``ipv6-firewall`` a direct path must be IPv6 where the peer says which address it used."""
    if result.network is None:
        raise ValueError("check_network judges a harder network's row; check_pair a pair")
    network = Network(result.network)
    spec = NETWORKS[network]
    name = network.value
    reason = str(mine.get("error") or theirs.get("error") or "no connection")
    if spec.expected == "ends":
        return _check_idle_death(name, result, reason)
    if not result.connected:
        return f"{name}: did not connect ({reason})"
    direct_ok = direct is not None and direct.connected and route_of(direct) == "direct"
    problem = _check_route(name, spec.expected, result, direct_ok=direct_ok)
    if problem or not spec.ipv6:
        return problem
    proof = mine if route_of(result) == "direct" else (direct_report or {})
    used = proof.get("local_candidate")
    if isinstance(used, str) and not used.startswith("["):
        return f"{name}: connected directly over IPv4 ({used}), expected IPv6"
    return ""
