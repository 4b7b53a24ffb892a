"""What the operator's admin commands see of and do to a TURN core (docs/admin.md).

``secureconnect sessions`` lists allocations (:func:`allocation_records`), ``secureconnect kill``
ends them (:func:`end_allocations`, reason ``killed``) and ``secureconnect revoke`` ends a revoked
user's (reason ``revoked``). Each ended allocation goes through the core's one exit,
:meth:`~secureconnect.turn.manager.AllocationManager.delete`: its socket, port and quota slot are
released, it is counted and its ``allocation-ended`` line is logged like any other.

An allocation is named by its relayed transport address (``ip:port``, ``[v6]:port``): unique on a
node, since every worker relays from its own slice of the port range (docs/workers.md), and what
the client and its peers see. Sans-IO: the caller holds the lock the data plane shares and passes
``now`` (the core's monotonic clock) and ``wall_now`` (Unix time, for credential expiries).
"""

from __future__ import annotations

from secureconnect.turn.allocation import Address, Allocation, quota_key
from secureconnect.turn.core import TurnCore


def address_text(address: Address) -> str:
    """``ip:port``, with brackets around an IPv6 address."""
    ip, port = address
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def matches(allocation: Allocation, user: str | None, relayed: str | None) -> bool:
    """Whether ``allocation`` is ``user``'s (a REST name's user part, or the whole name) and
    relays from ``relayed``; None matches any."""
    if user is not None and user not in (quota_key(allocation.username), allocation.username):
        return False
    return relayed is None or address_text(allocation.relayed) == relayed


def allocation_record(
    allocation: Allocation, now: float, wall_now: float, component: str
) -> dict[str, object]:
    """One allocation as ``secureconnect sessions`` shows it (JSON-ready)."""
    transport, client, _ = allocation.five_tuple
    traffic = allocation.traffic()
    expiry = allocation.credential_expiry  # a deadline on the core's clock
    return {
        "kind": "turn",
        "component": component,
        "id": address_text(allocation.relayed),
        "user": quota_key(allocation.username),
        "username": allocation.username,
        "transport": transport,
        "client": address_text(client),
        "relayed": address_text(allocation.relayed),
        "age": round(max(0.0, now - allocation.created), 3),
        "lifetime_left": round(max(0.0, allocation.lifetime_expires - now), 3),
        "credential_expires": None if expiry is None else round(expiry - now + wall_now),
        "to_peer_packets": traffic.to_peer_packets,
        "to_peer_bytes": traffic.to_peer_bytes,
        "to_client_packets": traffic.to_client_packets,
        "to_client_bytes": traffic.to_client_bytes,
        "permissions": sorted(ip for ip, until in allocation.permissions.items() if until > now),
        "channels": {
            f"0x{number:04X}": address_text(channel.peer)
            for number, channel in sorted(allocation.channels.items())
            if channel.expires > now
        },
    }


def allocation_records(
    core: TurnCore, now: float, wall_now: float, *, user: str | None = None, component: str = ""
) -> list[dict[str, object]]:
    """The allocations of ``user`` (every one when None), oldest first."""
    chosen = [a for a in core.table if matches(a, user, None)]
    chosen.sort(key=lambda a: a.created)
    return [allocation_record(a, now, wall_now, component) for a in chosen]


def end_allocations(
    core: TurnCore,
    now: float,
    *,
    user: str | None = None,
    relayed: str | None = None,
    reason: str = "killed",
) -> int:
    """End the allocations of ``user`` and/or relaying from ``relayed`` (at least one must be
    given: this never ends every allocation); how many ended."""
    if user is None and relayed is None:
        raise ValueError("name a user or an allocation")
    chosen = [a for a in core.table if matches(a, user, relayed)]
    ended = 0
    for allocation in chosen:
        if core.allocations.delete(allocation, reason, now) is not None:
            ended += 1
    return ended
