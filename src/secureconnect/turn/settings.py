"""The TURN core's parameters, outputs and counters, and their names as Prometheus samples.

Accounting (docs/metrics.md): besides plain counters, :class:`TurnCounters` keeps the lifetimes
of ended allocations (a histogram) and the traffic of the heaviest users (a bounded
:class:`~secureconnect.accounting.TopTable` of ``metrics_users`` users, the rest under
``user="other"``). Nothing here runs per datagram: an allocation's traffic is read from its own
counters when it ends and, for live ones, when ``/metrics`` is read (:func:`settle_users`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from secureconnect.accounting import OTHER, Histogram, TopTable, label_value
from secureconnect.turn.allocation import (
    Address,
    AllocationEnded,
    AllocationTable,
    RelayEndpoint,
    quota_key,
)
from secureconnect.turn.relaypath import RelayCounters

#: what a user's row in the table counts (TopTable's counts, in this order)
_USER_COUNTS = ("allocations", "to_peer_bytes", "to_client_bytes")
#: the longest user label value, in characters: a longer name is cut, with a hash of the whole
#: (bounds a worker's report to its parent, config.checks.MAX_METRICS_USERS)
MAX_USER_LABEL = 64


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
    metrics_users: int  # users with /metrics series of their own (0: none); docs/metrics.md
    permission_lifetime: int = 300  # RFC 8656 §9: 300 seconds
    channel_lifetime: int = 600  # RFC 8656 §12: 10 minutes
    reservation_lifetime: int = 30  # RFC 8656 §7.2: "approximately 30 seconds"
    # Where new allocations go when this node is busy or draining (turn/redirect.py); the
    # operator's values come from [turn] like the rest, defaults here keep tests' settings short.
    alternate_servers: tuple[Address, ...] = ()
    tls_alternate_servers: tuple[Address, ...] = ()
    tls_alternate_domain: str = ""  # ALTERNATE-DOMAIN for TLS clients' 300s; "": none
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
    allocations_ended: dict[str, int] = field(default_factory=dict)  # reason -> count
    #: seconds from creation to end of every allocation that ended
    lifetimes: Histogram = field(default_factory=Histogram)
    #: the heaviest users' allocations and bytes each way (the core sizes it: metrics_users)
    users: TopTable = field(default_factory=lambda: TopTable(0, len(_USER_COUNTS)))

    def created(self, user: str) -> None:
        """An allocation of ``user`` (``quota_key``) was created."""
        self.allocations_created += 1
        self.users.add(user, 0, (1, 0, 0))

    def ended(self, event: AllocationEnded) -> None:
        """An allocation ended: its reason, its lifetime, its user's traffic not counted yet."""
        reason = event.reason
        self.allocations_ended[reason] = self.allocations_ended.get(reason, 0) + 1
        if reason in ("deleted", "connection_closed"):  # what these counted before the reasons
            self.allocations_deleted += 1
        elif reason in ("expired", "credential_expired"):
            self.allocations_expired += 1
        self.lifetimes.observe(event.duration)
        _add_user_traffic(
            self.users, event.user, event.unsettled.to_peer_bytes, event.unsettled.to_client_bytes
        )


#: the ``dropped_<reason>`` fields of RelayCounters, as /metrics labels
RELAY_DROP_REASONS = (
    "no_allocation",
    "bad_channel",
    "no_permission",
    "bandwidth",
    "malformed",
    "own_port",
)


def _add_user_traffic(users: TopTable, user: str, to_peer: int, to_client: int) -> None:
    if to_peer or to_client:
        users.add(user, to_peer + to_client, (0, to_peer, to_client))


def settle_users(users: TopTable, table: AllocationTable) -> None:
    """Hand what live allocations relayed since the last call to the per-user table, so that
    a long allocation counts for its user before it ends (``/metrics`` calls this: one read of
    each allocation's counters per scrape, nothing per datagram; skipped when the per-user
    series are off)."""
    if users.capacity == 0:
        return
    for allocation in table:
        total = allocation.traffic()
        if total != allocation.settled:
            delta, allocation.settled = total.minus(allocation.settled), total
            _add_user_traffic(
                users, quota_key(allocation.username), delta.to_peer_bytes, delta.to_client_bytes
            )


def user_samples(users: TopTable) -> dict[str, float]:
    """``turn_user_*`` samples: one label per user in the table, and ``user="other"``."""
    samples: dict[str, float] = {}
    for user, counts in users.report():
        label = user_label(user)
        names = (
            f'turn_user_allocations_total{{user="{label}"}}',
            f'turn_user_relayed_bytes_total{{user="{label}",direction="to_peer"}}',
            f'turn_user_relayed_bytes_total{{user="{label}",direction="to_client"}}',
        )
        for name, count in zip(names, counts, strict=True):
            samples[name] = samples.get(name, 0) + count
    return samples


def user_label(user: str) -> str:
    """``user`` as a label value: escaped, and at most :data:`MAX_USER_LABEL` characters
    before escaping (a longer one keeps its first 48 and a hash of the whole, so that two long
    names stay apart and every process names a user alike)."""
    if len(user) > MAX_USER_LABEL:
        digest = hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        user = f"{user[:48]}~{digest}"
    return label_value(user)


def retired_name(name: str) -> str:
    """The name a dead worker's sample is kept under (``workers.TurnWorker.retired``): a
    ``turn_user_*`` sample moves to ``user="other"`` (a user's name from every past process
    would otherwise be kept forever), any other stays itself."""
    if not name.startswith("turn_user_"):
        return name
    base, _, labels = name.partition("{")
    direction = labels.partition('direction="')[2].partition('"')[0]
    if direction:
        return f'{base}{{user="{OTHER}",direction="{direction}"}}'
    return f'{base}{{user="{OTHER}"}}'


def counter_samples(counters: TurnCounters, table: AllocationTable) -> dict[str, float]:
    """Counters and gauges for the /metrics endpoint, as Prometheus sample names (with
    labels) -> value: computed on demand, nothing on the hot path (the per-user table is
    brought up to date first, :func:`settle_users`)."""
    settle_users(counters.users, table)
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
    for reason, count in counters.allocations_ended.items():
        samples[f'turn_allocations_ended_total{{reason="{reason}"}}'] = count
    samples.update(counters.lifetimes.samples("turn_allocation_lifetime_seconds"))
    samples.update(user_samples(counters.users))
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
