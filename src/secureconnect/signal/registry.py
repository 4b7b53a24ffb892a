"""The node registry: what each node publishes about itself with its heartbeat, and the TURN
servers a client is offered from it (sans-IO; the Redis backplane carries the reports).

A report is a small JSON object: the node's ``region``, the ``turn`` URLs it serves and the
``stun`` URL its TURN port answers Binding on (both empty for a node without TURN), and its
load: TURN ``allocations``, relayed packets per second (``pps``), signaling ``sessions``, plus
``draining`` while it drains. Reports live in Redis with the node's
heartbeat; a node silent for ``NODE_TTL`` is dropped from the registry (docs/cluster.md).

Clients get the TURN URLs of at most :data:`ICE_NODES` nodes, the best first: nodes that are
not draining (a draining node only when every node is), then of the client's node's region,
then the fewest allocations, then the fewest packets per second. A credential minted with the
cluster's shared secret is valid on each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ICE_NODES = 2  # TURN nodes offered per client: one to use and one to fall back to


@dataclass
class LoadMeter:
    """Relayed packets per second from a growing counter, between two reports."""

    last_count: float = 0.0
    last_at: float | None = None

    def rate(self, count: float, now: float) -> float:
        previous, at = self.last_count, self.last_at
        self.last_count, self.last_at = count, now
        if at is None or now <= at or count < previous:
            return 0.0
        return (count - previous) / (now - at)


def node_report(
    samples: Iterable[Mapping[str, float]],
    *,
    region: str,
    stun_urls: tuple[str, ...],
    turn_urls: tuple[str, ...],
    meter: LoadMeter,
    now: float,
    draining: bool = False,
) -> dict[str, Any]:
    """This node's report from its metric sources (summed over them, as ``/metrics`` does)."""
    allocations = packets = sessions = 0.0
    for source in samples:
        for name, value in source.items():
            if name == "turn_allocations":
                allocations += value
            elif name.startswith("turn_relayed_packets_total"):
                packets += value
            elif name == "signal_connections":
                sessions += value
    return {
        "region": region,
        "stun": list(stun_urls) if turn_urls else [],
        "turn": list(turn_urls),
        "allocations": int(allocations),
        "pps": round(meter.rate(packets, now), 1),
        "sessions": int(sessions),
        "draining": draining,
    }


def ranked_urls(
    nodes: Mapping[str, Mapping[str, Any]], region: str, limit: int = ICE_NODES
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The STUN and TURN URLs to offer, best node first (see the module docstring); empty when
    no live node serves TURN."""

    def rank(item: tuple[str, Mapping[str, Any]]) -> tuple[bool, bool, float, float, str]:
        name, report = item
        return (
            bool(report.get("draining")),
            bool(region) and report.get("region") != region,
            _number(report.get("allocations")),
            _number(report.get("pps")),
            name,
        )

    serving = [
        (name, report)
        for name, report in nodes.items()
        if isinstance(report.get("turn"), list) and report["turn"]
    ]
    if any(not report.get("draining") for _, report in serving):
        serving = [(name, report) for name, report in serving if not report.get("draining")]
    stun: list[str] = []
    turn: list[str] = []
    for _, report in sorted(serving, key=rank)[:limit]:
        for urls, key in ((stun, "stun"), (turn, "turn")):
            found = report.get(key)
            if isinstance(found, list):
                urls += [url for url in found if isinstance(url, str) and url not in urls]
    return tuple(stun), tuple(turn)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
