"""The relay hot path: ChannelData routing, peer data wrapping, bandwidth budget."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from turn_core_driver import PEER, Client, make_core, rest_user, settings

from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_u32,
    encode_xor_address,
    new_transaction_id,
)
from secureconnect.turn.allocation import Allocation
from secureconnect.turn.core import TurnCore, TurnSettings
from secureconnect.turn.relaypath import (
    RelayCounters,
    route_channel_data,
    split_send_indication_untrusted,
    valid_channel_number,
    wrap_peer_data,
)

NOW = 1_800_000_000.0
RNG = random.Random(7)


def allocated(
    parameters: TurnSettings | None = None, five_tuple: tuple[str, object, object] | None = None
) -> tuple[TurnCore, Client, Allocation]:
    core, _ = make_core(parameters)
    username, password = rest_user()
    c = Client(core, username, password)
    if five_tuple is not None:
        c.five_tuple = five_tuple  # type: ignore[assignment]
    c.allocate((AttrType.LIFETIME, encode_u32(3600)))
    return core, c, next(iter(core.table))


def bind(c: Client, number: int, peer: tuple[str, int]) -> None:
    tid = new_transaction_id()
    attrs = [(AttrType.CHANNEL_NUMBER, number.to_bytes(2, "big") + b"\0\0"), c.peer_attr(peer, tid)]
    response = c.request(Method.CHANNEL_BIND, attrs, transaction_id=tid)
    assert response is not None
    assert response.cls is MessageClass.SUCCESS


def channel_data(number: int, payload: bytes, pad: int = 0) -> bytes:
    return number.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload + bytes(pad)


def test_channel_number_ranges() -> None:
    assert valid_channel_number(0x4000)
    assert valid_channel_number(0x4FFF)
    assert not valid_channel_number(0x5000)
    assert valid_channel_number(0x7FFF, rfc5766=True)
    assert not valid_channel_number(0x8000, rfc5766=True)


def test_channel_data_is_routed_to_the_bound_peer_only() -> None:
    _, c, allocation = allocated()
    counters = RelayCounters()
    bind(c, 0x4001, PEER)
    channel = route_channel_data(allocation, channel_data(0x4001, b"abc", pad=1), NOW, counters)
    assert channel is not None
    assert channel.peer == PEER
    assert route_channel_data(allocation, channel_data(0x4002, b"abc"), NOW, counters) is None
    assert counters.dropped_bad_channel == 1
    # A length field larger than the datagram is malformed; so is a stub.
    assert route_channel_data(allocation, b"\x40\x01\x00\x09abc", NOW, counters) is None
    assert route_channel_data(allocation, b"\x40", NOW, counters) is None
    assert counters.dropped_malformed == 2
    assert (counters.to_peer_packets, counters.to_peer_bytes) == (1, 3)


def test_expired_permission_stops_channel_data_even_while_the_channel_lives() -> None:
    _, c, allocation = allocated()
    counters = RelayCounters()
    bind(c, 0x4001, PEER)
    late = NOW + 301  # permission 300 s, channel 600 s
    assert route_channel_data(allocation, channel_data(0x4001, b"x"), late, counters) is None
    assert counters.dropped_no_permission == 1


def test_peer_data_becomes_channel_data_or_a_data_indication() -> None:
    _, c, allocation = allocated()
    counters = RelayCounters()
    assert wrap_peer_data(allocation, b"hi", PEER, NOW, counters, rng=RNG) is None
    assert counters.dropped_no_permission == 1
    bind(c, 0x4001, PEER)
    assert wrap_peer_data(allocation, b"hi", PEER, NOW, counters, rng=RNG) == channel_data(
        0x4001, b"hi"
    )
    # Same IP, other port: permitted (permissions ignore ports) but not the channel's peer.
    other = (PEER[0], PEER[1] + 1)
    out = wrap_peer_data(allocation, b"hello", other, NOW, counters, rng=RNG)
    assert out is not None
    msg = decode_message_untrusted(out)
    assert msg.method == Method.DATA
    assert msg.cls is MessageClass.INDICATION
    assert msg.get(AttrType.DATA) == b"hello"
    peer_value = msg.get(AttrType.XOR_PEER_ADDRESS)
    assert peer_value is not None
    assert decode_xor_address_untrusted(peer_value, msg.transaction_id) == other
    assert counters.to_client_packets == 2


def test_channel_data_to_a_stream_client_is_padded() -> None:
    client = ("198.51.100.7", 40000)
    _, c, allocation = allocated(five_tuple=("tcp", client, ("192.0.2.1", 3478)))
    bind(c, 0x4001, PEER)
    out = wrap_peer_data(allocation, b"abcde", PEER, NOW, RelayCounters(), rng=RNG)
    assert out == channel_data(0x4001, b"abcde", pad=3)


def test_ipv6_data_indications_decode() -> None:
    core, c, _ = allocated()
    six = Client(core, c.username, c.password, ("udp", ("2001:db8::7", 5), ("2001:db8::1", 3478)))
    six.allocate((AttrType.REQUESTED_ADDRESS_FAMILY, bytes((2, 0, 0, 0))))
    allocation = core.table.get(six.five_tuple)
    assert allocation is not None
    peer = ("2606:4700::1111", 443)
    allocation.permissions[peer[0]] = NOW + 10
    out = wrap_peer_data(allocation, b"v6", peer, NOW, RelayCounters(), rng=RNG)
    assert out is not None
    msg = decode_message_untrusted(out)
    value = msg.get(AttrType.XOR_PEER_ADDRESS)
    assert value is not None
    assert decode_xor_address_untrusted(value, msg.transaction_id) == peer


def test_bandwidth_cap_drops_and_refills_on_the_tick() -> None:
    core, c, allocation = allocated(settings(relay_ipv4="192.0.2.1", bandwidth=1000))
    counters = RelayCounters()
    bind(c, 0x4001, PEER)
    core.handle_timeout(NOW)
    sent = [
        route_channel_data(allocation, channel_data(0x4001, bytes(300)), NOW, counters)
        for _ in range(4)
    ]
    assert [s is not None for s in sent] == [True, True, True, False]
    assert counters.dropped_bandwidth == 1
    core.handle_timeout(NOW + 0.5)  # half a second refills 500 bytes
    assert route_channel_data(allocation, channel_data(0x4001, bytes(300)), NOW, counters)
    # Both directions draw on the same budget: 300 left, then none.
    assert wrap_peer_data(allocation, bytes(300), PEER, NOW, counters, rng=RNG) is not None
    assert wrap_peer_data(allocation, bytes(1), PEER, NOW, counters, rng=RNG) is None
    assert counters.dropped_bandwidth == 2


def test_a_peer_datagram_too_large_for_a_data_indication_is_dropped() -> None:
    """An IPv6 peer may send up to 65,527 bytes; a Data indication's 16-bit length cannot carry
    that, and the encoder must not be asked to (it would overflow and end the relay loop)."""
    core, c, _ = allocated()
    six = Client(core, c.username, c.password, ("udp", ("2001:db8::7", 5), ("2001:db8::1", 3478)))
    six.allocate((AttrType.REQUESTED_ADDRESS_FAMILY, bytes((2, 0, 0, 0))))
    allocation = core.table.get(six.five_tuple)
    assert allocation is not None
    peer = ("2606:4700::1111", 443)
    allocation.permissions[peer[0]] = NOW + 10
    counters = RelayCounters()
    assert wrap_peer_data(allocation, bytes(65_510), peer, NOW, counters, rng=RNG) is None
    assert counters.dropped_malformed == 1
    largest = wrap_peer_data(allocation, bytes(65_500), peer, NOW, counters, rng=RNG)
    assert largest is not None
    assert decode_message_untrusted(largest).get(AttrType.DATA) == bytes(65_500)


@given(st.binary(max_size=200))
def test_send_indication_splitter_never_raises(data: bytes) -> None:
    split_send_indication_untrusted(b"\x00\x16" + data)


@given(
    payload=st.binary(max_size=300),
    port=st.integers(1, 65535),
    dont_fragment=st.booleans(),
    fingerprint=st.booleans(),
)
def test_send_indication_splitter_agrees_with_the_codec(
    payload: bytes, port: int, dont_fragment: bool, fingerprint: bool
) -> None:
    """The shortcut reads what the general codec reads, FINGERPRINT included (checked)."""
    tid = new_transaction_id()
    attrs = [(AttrType.XOR_PEER_ADDRESS, encode_xor_address("8.8.4.4", port, tid))]
    if dont_fragment:
        attrs.append((AttrType.DONT_FRAGMENT, b""))
    attrs.append((AttrType.DATA, payload))
    data = encode_message(Method.SEND, MessageClass.INDICATION, tid, attrs, fingerprint=fingerprint)
    parts = split_send_indication_untrusted(data)
    msg = decode_message_untrusted(data)
    assert parts == (msg.get(AttrType.XOR_PEER_ADDRESS), msg.get(AttrType.DATA))


@given(payload=st.binary(max_size=64), flip=st.integers(0, 31))
def test_send_indication_splitter_refuses_a_wrong_fingerprint(payload: bytes, flip: int) -> None:
    """A FINGERPRINT that does not match, or that is not last, sends the message to the codec
    (which drops it); the shortcut never relays it."""
    tid = new_transaction_id()
    attrs = [
        (AttrType.XOR_PEER_ADDRESS, encode_xor_address("8.8.4.4", 9, tid)),
        (AttrType.DATA, payload),
    ]
    data = bytearray(
        encode_message(Method.SEND, MessageClass.INDICATION, tid, attrs, fingerprint=True)
    )
    data[-4 + flip // 8] ^= 1 << (flip % 8)
    assert split_send_indication_untrusted(bytes(data)) is None
    good = encode_message(Method.SEND, MessageClass.INDICATION, tid, attrs, fingerprint=True)
    trailing = good + b"\x00\x20\x00\x00"  # an attribute after FINGERPRINT
    trailing = trailing[:2] + (len(trailing) - 20).to_bytes(2, "big") + trailing[4:]
    assert split_send_indication_untrusted(trailing) is None
