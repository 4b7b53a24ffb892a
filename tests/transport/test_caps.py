"""secureconnect.transport.caps: connection caps in total and per address, the refusals they
count by reason, and tickets that give each slot back exactly once (sans-IO)."""

from __future__ import annotations

import ipaddress

from secureconnect.transport import ConnectionCaps, Ticket


def admit(address: str, *caps: ConnectionCaps) -> Ticket | None:
    ticket = Ticket()
    return ticket if ticket.take(address, *caps) else None


def test_the_total_cap_refuses_and_counts() -> None:
    caps = ConnectionCaps(2, total_reason="connections")
    held = [admit("192.0.2.1", caps), admit("192.0.2.2", caps)]
    assert all(held)
    assert admit("192.0.2.3", caps) is None
    assert caps.refused == {"connections": 1}
    assert caps.held == 2
    assert held[0] is not None
    held[0].close()
    assert admit("192.0.2.3", caps) is not None
    assert caps.refused == {"connections": 1}


def test_the_per_address_cap_leaves_other_addresses_in() -> None:
    caps = ConnectionCaps(None, 2)
    first, second = admit("192.0.2.1", caps), admit("192.0.2.1", caps)
    assert first is not None
    assert second is not None
    assert admit("192.0.2.1", caps) is None
    assert admit("192.0.2.2", caps) is not None
    assert caps.refused == {"per-address": 1}  # no total cap, no total reason
    assert caps.held_by("192.0.2.1") == 2
    first.close()
    second.close()
    assert caps.held_by("192.0.2.1") == 0
    assert "192.0.2.1" not in caps._per_address  # an address holding nothing costs nothing


def test_the_total_is_checked_before_the_address() -> None:
    caps = ConnectionCaps(1, 1)
    assert admit("192.0.2.1", caps) is not None
    assert admit("192.0.2.1", caps) is None
    assert caps.refused == {"total": 1, "per-address": 0}


def test_exempt_addresses_are_held_to_the_total_only() -> None:
    caps = ConnectionCaps(4, 1, exempt=(ipaddress.ip_network("10.0.0.0/8"),))
    assert all(admit("10.1.2.3", caps) for _ in range(4))
    assert admit("10.1.2.3", caps) is None
    assert caps.refused == {"total": 1, "per-address": 0}
    assert caps.held_by("10.1.2.3") == 4  # counted, just not capped


def test_a_ticket_takes_every_cap_or_none_and_the_first_refusing_cap_counts() -> None:
    refused: dict[str, int] = {}
    connections = ConnectionCaps(10, total_reason="connections", refused=refused)
    pending = ConnectionCaps(
        10, 1, total_reason="pending", per_address_reason="pending-per-ip", refused=refused
    )
    assert admit("192.0.2.1", connections, pending) is not None
    assert admit("192.0.2.1", connections, pending) is None
    assert refused == {"connections": 0, "pending": 0, "pending-per-ip": 1}  # one dict, shared
    assert connections.held == 1  # nothing taken for the refused one


def test_slots_are_given_back_once_each() -> None:
    connections, pending = ConnectionCaps(10), ConnectionCaps(10, 5)
    ticket = Ticket(deadline=12.5)
    assert ticket.take("192.0.2.1", connections, pending)
    ticket.give_back(pending)
    ticket.give_back(pending)  # the handshake ended twice over: still one slot
    assert (connections.held, pending.held) == (1, 0)
    ticket.close()
    ticket.close()
    assert (connections.held, pending.held) == (0, 0)
    assert ticket.deadline == 12.5


def test_a_closed_ticket_takes_nothing() -> None:
    """A connection that ended between its request and the check must not pin a slot that
    nothing would give back; nor is it counted as refused."""
    websockets = ConnectionCaps(None, 1)
    ticket = Ticket()
    ticket.close()
    assert not ticket.take("192.0.2.1", websockets)
    assert websockets.held == 0
    assert websockets.refused == {"per-address": 0}


def test_a_ticket_can_take_a_later_cap_under_another_address() -> None:
    """Signaling: the connection is admitted under its TCP peer, its WebSocket under the client
    address X-Forwarded-For names; closing the ticket gives back both."""
    connections, websockets = ConnectionCaps(10), ConnectionCaps(None, 1)
    ticket = Ticket()
    assert ticket.take("127.0.0.2", connections)
    assert ticket.take("198.51.100.7", websockets)
    assert not Ticket().take("198.51.100.7", websockets)
    ticket.close()
    assert (connections.held, websockets.held) == (0, 0)
