"""The TURN core's parameters, outputs and counters, and their names as Prometheus samples."""

from __future__ import annotations

from dataclasses import dataclass, field

from secureconnect.turn.allocation import Address, AllocationTable, RelayEndpoint
from secureconnect.turn.relaypath import RelayCounters


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """The TURN core's parameters. Those an operator sets have no default here: their one home
    is ``config/schema.py``, and ``runtime.turn_settings`` maps ``[turn]`` onto them (tests start
    from the same mapping of the schema's defaults). The RFC's fixed lifetimes keep theirs."""

    relay_ipv4: str | None  # local address relay sockets bind to; None: no IPv4
    relay_ipv6: str | None
    external_ipv4: str | None  # advertised instead of relay_ipv4 (1:1 NAT, Docker)
    external_ipv6: str | None
    default_lifetime: int
    max_lifetime: int
    user_quota: int
    ip_quota: int
    total_quota: int
    max_permissions: int
    max_channels: int
    bandwidth: int  # bytes/s relayed per allocation, both directions; 0: unlimited
    rfc5766_channels: bool  # accept channel numbers up to 0x7FFF (RFC 5766 §11)
    software: str | None
    reason_phrases: bool
    permission_lifetime: int = 300  # RFC 8656 §9: 300 seconds
    channel_lifetime: int = 600  # RFC 8656 §12: 10 minutes
    reservation_lifetime: int = 30  # RFC 8656 §7.2: "approximately 30 seconds"
    # Where new allocations go when this node is busy or draining (turn/redirect.py); the
    # operator's values come from [turn] like the rest, defaults here keep tests' settings short.
    alternate_servers: tuple[Address, ...] = ()
    tls_alternate_servers: tuple[Address, ...] = ()
    alternate_threshold: int = 0  # allocations held here before redirecting; 0: never

    def relay_ip(self, family: int) -> str | None:
        """The local relay address for IP version ``family`` (None: not served)."""
        if family == 4:
            return self.relay_ipv4
        return self.relay_ipv6 if family == 6 else None

    def advertised_ip(self, family: int) -> str:
        """What XOR-RELAYED-ADDRESS says for ``family``: the external address, else the relay's."""
        external = self.external_ipv4 if family == 4 else self.external_ipv6
        return external or self.relay_ip(family) or ""


@dataclass(frozen=True, slots=True)
class ToPeer:
    """Send ``data`` to ``peer`` from the allocation's relay socket (a Send indication)."""

    relay: RelayEndpoint
    peer: Address
    data: bytes


@dataclass(slots=True)
class TurnCounters:
    """Control-plane counters (the hot path's are in ``relay``)."""

    requests: int = 0
    responses: int = 0
    errors: dict[int, int] = field(default_factory=dict)  # error code -> responses sent
    auth_failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    dropped_not_stun: int = 0
    dropped_unauthorized_rate: int = 0
    dropped_auth_backoff: int = 0  # password-guessing backoff (turn.auth.GuessThrottle)
    dropped_indications: int = 0
    allocations_created: int = 0
    allocations_redirected: int = 0  # 300 Try Alternate (turn/redirect.py)
    allocations_refused_draining: int = 0  # 486 while draining with no alternate
    allocations_deleted: int = 0
    allocations_expired: int = 0
    peers_refused: int = 0
    relay: RelayCounters = field(default_factory=RelayCounters)


#: the ``dropped_<reason>`` fields of RelayCounters, as /metrics labels
RELAY_DROP_REASONS = (
    "no_allocation",
    "bad_channel",
    "no_permission",
    "bandwidth",
    "malformed",
    "own_port",
)


def counter_samples(counters: TurnCounters, table: AllocationTable) -> dict[str, float]:
    """Counters and gauges for the /metrics endpoint, as Prometheus sample names (with
    labels) -> value: read-only, computed on demand, nothing on the hot path."""
    allocations, permissions, channels = table.counts()
    samples: dict[str, float] = {
        "turn_allocations": allocations,
        "turn_permissions": permissions,
        "turn_channels": channels,
        "turn_reservations": len(table.reservations),
        "turn_requests_total": counters.requests,
        "turn_responses_total": counters.responses,
        "turn_allocations_created_total": counters.allocations_created,
        "turn_allocations_deleted_total": counters.allocations_deleted,
        "turn_allocations_expired_total": counters.allocations_expired,
        "turn_allocations_redirected_total": counters.allocations_redirected,
        "turn_allocations_refused_draining_total": counters.allocations_refused_draining,
        "turn_peers_refused_total": counters.peers_refused,
        'turn_dropped_total{reason="not_stun"}': counters.dropped_not_stun,
        'turn_dropped_total{reason="unauthorized_rate"}': counters.dropped_unauthorized_rate,
        'turn_dropped_total{reason="auth_backoff"}': counters.dropped_auth_backoff,
        'turn_dropped_total{reason="indication"}': counters.dropped_indications,
    }
    for code, count in counters.errors.items():
        samples[f'turn_error_responses_total{{code="{code}"}}'] = count
    for reason, count in counters.auth_failures.items():
        samples[f'turn_auth_failures_total{{reason="{reason}"}}'] = count
    relay = counters.relay
    for direction in ("to_peer", "to_client"):
        samples[f'turn_relayed_packets_total{{direction="{direction}"}}'] = getattr(
            relay, f"{direction}_packets"
        )
        samples[f'turn_relayed_bytes_total{{direction="{direction}"}}'] = getattr(
            relay, f"{direction}_bytes"
        )
    for reason in RELAY_DROP_REASONS:
        samples[f'turn_relay_dropped_total{{reason="{reason}"}}'] = getattr(
            relay, f"dropped_{reason}"
        )
    return samples
