"""The sans-IO TURN core: RFC 8656 requests with explicit times, no sockets, no sleeps."""

from __future__ import annotations

import ipaddress

import pytest
from default_settings import responder_config
from turn_core_driver import (
    CLIENT,
    NOW,
    PEER,
    REALM,
    SERVER,
    Client,
    client,
    error_code,
    lifetime,
    make_core,
    relayed,
    settings,
)

from secureconnect.stun import (
    AttrType,
    BindingResponder,
    ErrorCode,
    MessageClass,
    Method,
    decode_message_untrusted,
    decode_unknown_attributes_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_u32,
    new_transaction_id,
    verify_integrity,
)
from secureconnect.turn.core import ToPeer
from secureconnect.turn.peerpolicy import OwnEndpoints

A = AttrType
UDP = (A.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0)))


# -- Allocate ---------------------------------------------------------------------------------


def test_first_allocate_is_challenged_and_leaves_no_state() -> None:
    core, relays = make_core()
    c = client(core)
    response = c.raw(Method.ALLOCATE, [UDP], authenticate=False)
    assert error_code(response) == ErrorCode.UNAUTHORIZED
    assert response is not None
    assert response.get(A.REALM) == REALM.encode()
    assert response.get(A.NONCE)
    assert response.get(A.SOFTWARE) is None
    assert response.integrity_offset is None
    assert len(core.table) == 0
    assert relays.bound == []


def test_allocate_succeeds_with_rest_credentials() -> None:
    core, relays = make_core()
    c = client(core)
    response = c.allocate()
    assert response.cls is MessageClass.SUCCESS
    assert verify_integrity(response, c.key)
    ip, port = relayed(response)
    assert ip == "192.0.2.1"
    assert 49152 <= port <= 65535
    assert lifetime(response) == 600
    mapped = response.get(A.XOR_MAPPED_ADDRESS)
    assert mapped is not None
    assert decode_xor_address_untrusted(mapped, response.transaction_id) == CLIENT
    assert [e.port for e in relays.open()] == [port]
    assert relays.active[port].username == c.username


def test_retransmitted_allocate_gets_the_same_answer_and_a_new_one_437() -> None:
    core, _ = make_core()
    c = client(core)
    tid = new_transaction_id()
    first = c.request(Method.ALLOCATE, [UDP], transaction_id=tid)
    again = c.request(Method.ALLOCATE, [UDP], transaction_id=tid)
    assert first is not None
    assert again is not None
    assert again.raw == first.raw
    assert error_code(c.allocate()) == ErrorCode.ALLOCATION_MISMATCH


@pytest.mark.parametrize(
    ("attributes", "code"),
    [
        ([], ErrorCode.BAD_REQUEST),
        ([(A.REQUESTED_TRANSPORT, bytes((6, 0, 0, 0)))], ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL),
        ([(A.REQUESTED_TRANSPORT, b"\x11")], ErrorCode.BAD_REQUEST),
        (
            [UDP, (A.REQUESTED_ADDRESS_FAMILY, bytes((3, 0, 0, 0)))],
            ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED,
        ),
        ([UDP, (A.RESERVATION_TOKEN, bytes(8)), (A.EVEN_PORT, b"\x00")], ErrorCode.BAD_REQUEST),
        ([UDP, (A.RESERVATION_TOKEN, bytes(8))], ErrorCode.INSUFFICIENT_CAPACITY),
        ([UDP, (0x7777, b"x")], ErrorCode.UNKNOWN_ATTRIBUTE),
    ],
)
def test_allocate_refusals(attributes: list[tuple[int, bytes]], code: int) -> None:
    core, relays = make_core()
    response = client(core).request(Method.ALLOCATE, attributes)
    assert error_code(response) == code
    assert response is not None
    # Errors after authentication are integrity-protected (RFC 8489 §9.2.4).
    assert response.integrity_offset is not None
    if code == ErrorCode.UNKNOWN_ATTRIBUTE:
        value = response.get(A.UNKNOWN_ATTRIBUTES)
        assert value is not None
        assert decode_unknown_attributes_untrusted(value) == (0x7777,)
    assert relays.open() == []


def test_ipv6_relay_and_missing_family() -> None:
    core, _ = make_core()
    response = client(core).allocate((A.REQUESTED_ADDRESS_FAMILY, bytes((2, 0, 0, 0))))
    assert relayed(response)[0] == "2001:db8::1"
    core4, _ = make_core(settings(relay_ipv4="192.0.2.1", relay_ipv6=None))
    response = client(core4).allocate((A.REQUESTED_ADDRESS_FAMILY, bytes((2, 0, 0, 0))))
    assert error_code(response) == ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED


def test_additional_address_family() -> None:
    """RFC 8656 §7.2: ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6 (0x01: 400); we allocate
    the IPv4 relay and answer the IPv6 half with ADDRESS-ERROR-CODE 440 (no dual allocations)."""
    core, _ = make_core()
    for bad in (bytes((1, 0, 0, 0)), bytes((2, 0)), bytes((9, 0, 0, 0))):
        response = client(core).allocate((A.ADDITIONAL_ADDRESS_FAMILY, bad))
        assert error_code(response) == ErrorCode.BAD_REQUEST
    both = client(core).allocate(
        (A.ADDITIONAL_ADDRESS_FAMILY, bytes((2, 0, 0, 0))),
        (A.REQUESTED_ADDRESS_FAMILY, bytes((1, 0, 0, 0))),
    )
    assert error_code(both) == ErrorCode.BAD_REQUEST
    response = client(core).allocate((A.ADDITIONAL_ADDRESS_FAMILY, bytes((2, 0, 0, 0))))
    assert relayed(response)[0] == "192.0.2.1"
    address_error = response.get(A.ADDRESS_ERROR_CODE)
    assert address_error is not None
    assert address_error[0] == 2  # the IPv6 family
    assert address_error[2] * 100 + address_error[3] == 440


def test_external_address_is_advertised_behind_a_1to1_nat() -> None:
    core, _ = make_core(settings(relay_ipv4="10.0.0.5", external_ipv4="203.0.113.9"))
    assert relayed(client(core).allocate())[0] == "203.0.113.9"


def test_even_port_with_reservation_and_dont_fragment() -> None:
    core, relays = make_core()
    first = client(core).allocate((A.EVEN_PORT, b"\x80"), (A.DONT_FRAGMENT, b""))
    port = relayed(first)[1]
    assert port % 2 == 0
    assert relays.dont_fragment == [port, port + 1]
    token = first.get(A.RESERVATION_TOKEN)
    assert token is not None
    assert len(token) == 8
    other = client(core, ("udp", ("198.51.100.8", 1), SERVER), user="bob")
    second = other.allocate((A.RESERVATION_TOKEN, token))
    assert relayed(second)[1] == port + 1
    # A token is good once.
    third = client(core, ("udp", ("198.51.100.9", 1), SERVER), user="carol")
    assert error_code(third.allocate((A.RESERVATION_TOKEN, token))) == 508


def test_unclaimed_reservation_expires_and_frees_the_port() -> None:
    core, relays = make_core()
    client(core).allocate((A.EVEN_PORT, b"\x80"))
    assert len(relays.open()) == 2
    core.handle_timeout(NOW + 31)
    assert len(relays.open()) == 1


def test_busy_ports_are_skipped() -> None:
    core, relays = make_core()
    core.ports.low, core.ports.high = 50000, 50002
    relays.busy = {50000, 50001}
    assert relayed(client(core).allocate())[1] == 50002
    other = client(core, ("udp", ("198.51.100.8", 1), SERVER))
    assert error_code(other.allocate()) == ErrorCode.INSUFFICIENT_CAPACITY


# -- Refresh ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "granted"), [(30, 600), (1200, 1200), (10**6, 3600)])
def test_refresh_lifetime_is_clamped(asked: int, granted: int) -> None:
    core, _ = make_core()
    c = client(core)
    c.allocate()
    response = c.request(Method.REFRESH, [(A.LIFETIME, encode_u32(asked))])
    assert lifetime(response) == granted


def test_refresh_zero_deletes_and_then_437() -> None:
    core, relays = make_core()
    c = client(core)
    c.allocate()
    response = c.request(Method.REFRESH, [(A.LIFETIME, encode_u32(0))])
    assert lifetime(response) == 0
    assert relays.open() == []
    assert core.counters.allocations_deleted == 1
    assert error_code(c.request(Method.REFRESH, [])) == ErrorCode.ALLOCATION_MISMATCH


def test_lifetime_zero_appended_after_message_integrity_is_ignored() -> None:
    core, relays = make_core()
    c = client(core)
    c.allocate()
    response = c.request(Method.REFRESH, [], trailer=[(A.LIFETIME, encode_u32(0))])
    assert lifetime(response) == 600
    assert len(relays.open()) == 1


def test_refresh_with_the_other_family_is_443() -> None:
    core, _ = make_core()
    c = client(core)
    c.allocate()
    response = c.request(Method.REFRESH, [(A.REQUESTED_ADDRESS_FAMILY, bytes((2, 0, 0, 0)))])
    assert error_code(response) == ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH


def test_allocation_expires_on_time() -> None:
    core, relays = make_core()
    client(core).allocate()
    core.handle_timeout(NOW + 599)
    assert len(core.table) == 1
    core.handle_timeout(NOW + 600)
    assert len(core.table) == 0
    assert relays.open() == []
    assert core.counters.allocations_expired == 1


# -- permissions and channels -----------------------------------------------------------------


def _permission(c: Client, *peers: tuple[str, int], now: float = NOW) -> int | None:
    tid = new_transaction_id()
    attrs = [c.peer_attr(p, tid) for p in peers]
    return error_code(c.request(Method.CREATE_PERMISSION, attrs, transaction_id=tid, now=now))


def _bind(c: Client, number: int, peer: tuple[str, int], now: float = NOW) -> int | None:
    tid = new_transaction_id()
    attrs = [(A.CHANNEL_NUMBER, number.to_bytes(2, "big") + b"\0\0"), c.peer_attr(peer, tid)]
    return error_code(c.request(Method.CHANNEL_BIND, attrs, transaction_id=tid, now=now))


def test_create_permission_installs_several_or_none() -> None:
    core, _ = make_core()
    c = client(core)
    c.allocate()
    assert _permission(c, PEER, ("1.1.1.1", 1)) is None
    allocation = next(iter(core.table))
    assert set(allocation.permissions) == {"8.8.8.8", "1.1.1.1"}
    assert _permission(c, ("9.9.9.9", 1), ("169.254.169.254", 80)) == ErrorCode.FORBIDDEN
    assert "9.9.9.9" not in allocation.permissions
    assert _permission(c, ("2606:4700::1111", 1)) == ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH
    assert error_code(c.request(Method.CREATE_PERMISSION, [])) == ErrorCode.BAD_REQUEST


def test_permission_cap_is_508_and_permissions_expire() -> None:
    core, _ = make_core(settings(max_permissions=2))
    c = client(core)
    c.allocate()
    assert _permission(c, ("8.8.8.8", 1), ("8.8.4.4", 1)) is None
    assert _permission(c, ("1.1.1.1", 1)) == ErrorCode.INSUFFICIENT_CAPACITY
    assert _permission(c, ("8.8.8.8", 9)) is None  # a refresh, not a new one
    core.handle_timeout(NOW + 301)
    assert next(iter(core.table)).permissions == {}


@pytest.mark.parametrize(
    "peer",
    [
        "0.0.0.0",
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "192.168.1.1",
        "100.64.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "172.16.0.1",
    ],
)
def test_denylisted_ipv4_peers_are_refused(peer: str) -> None:
    core, _ = make_core()
    c = client(core)
    c.allocate()
    assert _permission(c, (peer, 80)) == ErrorCode.FORBIDDEN
    assert _bind(c, 0x4000, (peer, 80)) == ErrorCode.FORBIDDEN
    assert core.counters.peers_refused == 2


@pytest.mark.parametrize(
    "peer",
    [
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "2001:db8::5",
        "::127.0.0.1",
    ],
)
def test_denylisted_ipv6_peer_forms_are_refused(peer: str) -> None:
    core, _ = make_core()
    c = client(core)
    c.allocate((A.REQUESTED_ADDRESS_FAMILY, bytes((2, 0, 0, 0))))
    # Encoded by hand with the IPv6 family: our encoder would send a mapped address as IPv4.
    tid = new_transaction_id()
    mask = (0x2112A442).to_bytes(4, "big") + tid
    raw = ipaddress.IPv6Address(peer.split("%", maxsplit=1)[0]).packed
    value = (
        bytes((0, 2))
        + (80 ^ 0x2112).to_bytes(2, "big")
        + bytes(a ^ b for a, b in zip(raw, mask, strict=True))
    )
    response = c.request(
        Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, value)], transaction_id=tid
    )
    assert error_code(response) == ErrorCode.FORBIDDEN


def test_channel_bind_rules() -> None:
    core, _ = make_core(settings(max_channels=2))
    c = client(core)
    c.allocate((A.LIFETIME, encode_u32(3600)))
    assert _bind(c, 0x3FFF, PEER) == ErrorCode.BAD_REQUEST
    assert _bind(c, 0x5000, PEER) == ErrorCode.BAD_REQUEST
    assert _bind(c, 0x4000, PEER) is None
    allocation = next(iter(core.table))
    assert allocation.permits(PEER[0], NOW)  # a channel binding installs the permission
    assert _bind(c, 0x4000, PEER, now=NOW + 1) is None  # refresh
    assert _bind(c, 0x4000, ("8.8.4.4", 1)) == ErrorCode.BAD_REQUEST
    assert _bind(c, 0x4001, PEER) == ErrorCode.BAD_REQUEST
    assert _bind(c, 0x4FFF, ("8.8.4.4", 1)) is None
    assert _bind(c, 0x4001, ("1.1.1.1", 1)) == ErrorCode.INSUFFICIENT_CAPACITY
    assert _bind(c, 0x4002, (PEER[0], 0)) == ErrorCode.BAD_REQUEST
    core.handle_timeout(NOW + 601)
    assert allocation.channels == {}
    assert allocation.channel_by_peer == {}


def test_requests_without_an_allocation_get_437() -> None:
    core, _ = make_core()
    c = client(core)
    assert _permission(c, PEER) == ErrorCode.ALLOCATION_MISMATCH
    assert _bind(c, 0x4000, PEER) == ErrorCode.ALLOCATION_MISMATCH


# -- Send indications and the other messages --------------------------------------------------


def _send(c: Client, peer: tuple[str, int], payload: bytes, now: float = NOW) -> object:
    tid = new_transaction_id()
    data = encode_message(
        Method.SEND, MessageClass.INDICATION, tid, [c.peer_attr(peer, tid), (A.DATA, payload)]
    )
    return c.core.handle_stun(data, c.five_tuple, now, now)


def test_send_indication_needs_a_permission() -> None:
    core, _ = make_core()
    c = client(core)
    c.allocate()
    assert _send(c, PEER, b"hello") is None
    assert core.counters.relay.dropped_no_permission == 1
    _permission(c, PEER)
    out = _send(c, PEER, b"hello")
    assert isinstance(out, ToPeer)
    assert out.peer == PEER
    assert out.data == b"hello"
    assert out.relay is next(iter(core.table)).relay
    assert _send(c, PEER, b"late", now=NOW + 301) is None


def test_the_servers_own_service_ports_are_never_relayed_to() -> None:
    """TURN-in-TURN: a channel to one of the server's own listeners is a 403 and a Send to one
    is dropped; the same address on another port (e.g. another client's relayed address on this
    server) stays reachable."""
    own = (PEER[0], 3478)
    core, _ = make_core(own_endpoints=OwnEndpoints([own, ("0.0.0.0", 3479)], local_ips=[PEER[0]]))
    c = client(core)
    c.allocate()
    assert _bind(c, 0x4000, own) == ErrorCode.FORBIDDEN
    assert _bind(c, 0x4000, (PEER[0], 3479)) == ErrorCode.FORBIDDEN  # wildcard listener
    assert core.counters.peers_refused == 2
    assert _permission(c, own) is None  # permissions are per IP: the address itself is fine
    assert _send(c, own, b"loop") is None
    assert core.counters.relay.dropped_own_port == 1
    assert isinstance(_send(c, (PEER[0], 50000), b"fine"), ToPeer)
    assert _bind(c, 0x4001, (PEER[0], 50000)) is None


def test_own_endpoints_match_exactly_or_by_port_on_our_addresses() -> None:
    own = OwnEndpoints([("192.0.2.1", 3478), ("::", 5349)], local_ips=["2001:db8::1"])
    assert ("192.0.2.1", 3478) in own
    assert ("192.0.2.1", 3479) not in own
    assert ("192.0.2.9", 3478) not in own
    assert ("2001:db8::1", 5349) in own  # a wildcard listener, reached on a local address
    assert ("::1", 5349) in own  # and on loopback
    assert ("127.0.0.1", 5349) in own
    assert ("2001:db8::2", 5349) not in own
    assert ("not an address", 5349) not in own
    assert "garbage" not in own
    assert own
    assert not OwnEndpoints()


def test_binding_garbage_and_malformed_requests() -> None:
    core, _ = make_core()
    core.binding = BindingResponder(responder_config())
    tid = new_transaction_id()
    out = core.handle_stun(
        encode_message(Method.BINDING, MessageClass.REQUEST, tid), ("udp", CLIENT, SERVER), NOW, NOW
    )
    assert isinstance(out, bytes)
    assert decode_message_untrusted(out).cls is MessageClass.SUCCESS
    assert core.handle_stun(b"\xff" * 30, ("udp", CLIENT, SERVER), NOW, NOW) is None
    assert core.counters.dropped_not_stun == 1
    # An attribute that overruns the message: recognisably STUN, but malformed.
    head = encode_message(Method.ALLOCATE, MessageClass.REQUEST, tid)
    broken = head[:2] + (8).to_bytes(2, "big") + head[4:] + bytes((0, 0x19, 0, 100, 17, 0, 0, 0))
    out = core.handle_stun(broken, ("udp", CLIENT, SERVER), NOW, NOW)
    assert isinstance(out, bytes)
    assert error_code(decode_message_untrusted(out)) == ErrorCode.BAD_REQUEST


def test_closing_a_stream_ends_its_allocation() -> None:
    core, relays = make_core()
    c = client(core, ("tcp", CLIENT, SERVER))
    c.allocate()
    core.close_five_tuple(("tcp", CLIENT, SERVER), NOW)
    assert relays.open() == []
    assert len(core.table) == 0


def test_quotas_give_486() -> None:
    core, _ = make_core(settings(user_quota=2, total_quota=3))
    for i in range(2):
        assert error_code(client(core, ("udp", ("198.51.100.1", i + 1), SERVER)).allocate()) is None
    third = client(core, ("udp", ("198.51.100.1", 3), SERVER))
    assert error_code(third.allocate()) == ErrorCode.ALLOCATION_QUOTA_REACHED
    bob = client(core, ("udp", ("198.51.100.2", 1), SERVER), user="bob")
    assert error_code(bob.allocate()) is None
    carol = client(core, ("udp", ("198.51.100.3", 1), SERVER), user="carol")
    assert error_code(carol.allocate()) == ErrorCode.ALLOCATION_QUOTA_REACHED


def test_metrics_expose_gauges_and_counters() -> None:
    core, _ = make_core()
    c = client(core)
    c.allocate()
    _permission(c, PEER)
    samples = core.metrics()
    assert samples["turn_allocations"] == 1
    assert samples["turn_permissions"] == 1
    assert samples["turn_allocations_created_total"] == 1
    assert samples['turn_error_responses_total{code="401"}'] == 1
    assert samples['turn_relay_dropped_total{reason="bandwidth"}'] == 0


def test_failed_allocates_leave_no_relay_socket_behind() -> None:
    """A malformed LIFETIME, or an expired reservation token, is refused before (or after
    releasing) any relay socket: nothing leaks, however often it is tried."""
    core, relays = make_core()
    c = client(core)
    for _ in range(5):
        assert error_code(c.allocate((A.LIFETIME, b"\x00"))) == ErrorCode.BAD_REQUEST
    assert relays.open() == []
    assert core.ports.in_use(4) == 0
    first = client(core, ("udp", ("198.51.100.50", 1), SERVER), user="r").allocate(
        (A.EVEN_PORT, b"\x80")
    )
    token = first.get(A.RESERVATION_TOKEN)
    assert token is not None
    late = client(core, ("udp", ("198.51.100.51", 1), SERVER), user="s")
    assert error_code(late.allocate((A.RESERVATION_TOKEN, token), now=NOW + 31)) == 508
    assert len(relays.open()) == 1  # only the first allocation's socket
    assert core.ports.in_use(4) == 1


def test_user_quota_counts_the_rest_user_not_each_minted_username() -> None:
    core, _ = make_core(settings(user_quota=2))
    for i in range(2):
        c = client(core, ("udp", ("198.51.100.60", i + 1), SERVER), expiry=NOW + 3600 + i)
        assert error_code(c.allocate()) is None
    fresh = client(core, ("udp", ("198.51.100.60", 9), SERVER), expiry=NOW + 7200)
    assert error_code(fresh.allocate()) == ErrorCode.ALLOCATION_QUOTA_REACHED
