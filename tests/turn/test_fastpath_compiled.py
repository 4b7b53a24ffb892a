"""The compiled UDP fast path alone (``secureconnect.turn._fastpath``, docs/fastpath.md), on
real non-blocking loopback sockets: ChannelData both ways, Data and Send indications, each drop
reason, budgets, expiry, IPv6, what goes back to Python. Batches, failures, the tables' API and
random bytes: ``test_fastpath_compiled_robustness.py``; the rig: ``tests/support/fastpath_rig.py``.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator

import pytest
from fastpath_rig import (
    CHANNEL,
    INF,
    NOW,
    TID,
    FastPath,
    Plane,
    address,
    assert_silent,
    changes,
    channel_data,
    receive,
    rig,
    send_indication,
)

from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_xor_address,
)
from secureconnect.turn.relaypath import split_send_indication_untrusted


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def plane(request: pytest.FixtureRequest) -> Iterator[Plane]:
    with rig(request.param) as p:
        yield p


# -- client -> peer -------------------------------------------------------------------------


def test_channel_data_to_the_peer(plane: Plane) -> None:
    plane.open_path()
    before = plane.fp.counters()
    # RFC 8656 §12.4: padding over UDP is allowed and not relayed
    assert plane.from_client(NOW, channel_data(CHANNEL, b"hello", pad=3)) == []
    assert receive(plane.peer) == (b"hello", address(plane.relay))
    assert changes(plane.fp, before) == {"to_peer_packets": 1, "to_peer_bytes": 5}


def test_channel_data_drop_reasons_in_their_order(plane: Plane) -> None:
    plane.open_path()
    fd, stranger = plane.relay.fileno(), plane.extra_socket()
    cases = [
        (channel_data(CHANNEL, b"x")[:3], "dropped_malformed"),  # shorter than 4 bytes
        (channel_data(CHANNEL, b"abc")[:6], "dropped_malformed"),  # length beyond the datagram
        (channel_data(0x4002, b"abc"), "dropped_bad_channel"),  # not bound
    ]
    for data, reason in cases:
        before = plane.fp.counters()
        assert plane.from_client(NOW, data) == []
        assert changes(plane.fp, before) == {reason: 1}
    before = plane.fp.counters()
    plane.from_client(NOW, channel_data(CHANNEL, b"abc"), sender=stranger)
    assert changes(plane.fp, before) == {"dropped_no_allocation": 1}
    # a channel whose permission is gone: the channel check passes, the permission's does not
    plane.fp.forget_permission(fd, plane.peer_addr[0])
    before = plane.fp.counters()
    plane.from_client(NOW, channel_data(CHANNEL, b"abc"))
    assert changes(plane.fp, before) == {"dropped_no_permission": 1}
    assert_silent(plane.peer)


def test_expiry_is_by_now(plane: Plane) -> None:
    fd = plane.relay.fileno()
    plane.open_path(expires=NOW + 10)
    before = plane.fp.counters()
    plane.from_client(NOW + 9.5, channel_data(CHANNEL, b"a"))
    assert receive(plane.peer)[0] == b"a"
    plane.from_client(NOW + 10, channel_data(CHANNEL, b"b"))  # expires <= now: expired
    plane.fp.bind_channel(fd, CHANNEL, plane.peer_addr, NOW + 100)  # refreshed channel only
    plane.from_client(NOW + 10, channel_data(CHANNEL, b"c"))
    plane.fp.permit(fd, plane.peer_addr[0], NOW + 100, ())
    plane.from_client(NOW + 10, channel_data(CHANNEL, b"d"))
    assert receive(plane.peer)[0] == b"d"
    assert changes(plane.fp, before) == {
        "to_peer_packets": 2,
        "to_peer_bytes": 2,
        "dropped_bad_channel": 1,
        "dropped_no_permission": 1,
    }
    plane.fp.forget_channel(fd, CHANNEL)
    before = plane.fp.counters()
    plane.from_client(NOW, channel_data(CHANNEL, b"e"))
    assert changes(plane.fp, before) == {"dropped_bad_channel": 1}


def test_send_indication_in_the_plain_shape(plane: Plane) -> None:
    plane.open_path(channel=False)
    dont_fragment = ((AttrType.DONT_FRAGMENT, b""),)
    sends = [
        send_indication(plane.peer_addr, b"one"),
        send_indication(plane.peer_addr, b"two", fingerprint=True),  # coturn's clients
        send_indication(plane.peer_addr, b"three", extra=dont_fragment),
        # RFC 8489 §14: only the first occurrence counts
        send_indication(plane.peer_addr, b"four", extra=((AttrType.DATA, b"not this"),)),
    ]
    before = plane.fp.counters()
    assert plane.from_client(NOW, *sends) == []
    assert [receive(plane.peer)[0] for _ in sends] == [b"one", b"two", b"three", b"four"]
    assert changes(plane.fp, before) == {"to_peer_packets": 4, "to_peer_bytes": 15}


def test_other_send_indications_go_to_python(plane: Plane) -> None:
    plane.open_path(channel=False)
    good = send_indication(plane.peer_addr, b"data", fingerprint=True)
    bad_fingerprint = good[:-1] + bytes([good[-1] ^ 1])
    plain = send_indication(plane.peer_addr, b"data")
    others = [
        bad_fingerprint,
        send_indication(plane.peer_addr, b"data", extra=((AttrType.SOFTWARE, b"x"),)),
        encode_message(Method.SEND, MessageClass.INDICATION, TID, [(AttrType.DATA, b"x")]),
        good[:-8],  # the header's length no longer matches
        good[:2] + (len(good) - 20).to_bytes(2, "big") + b"\0\0\0\0" + good[8:],  # no cookie
        # an attribute longer than the message
        plain[:2] + (len(plain) - 16).to_bytes(2, "big") + plain[4:] + b"\x00\x1a\x00\x08",
    ]
    assert split_send_indication_untrusted(good) is not None
    assert all(split_send_indication_untrusted(data) is None for data in others)
    before = plane.fp.counters()
    returned = plane.from_client(NOW, *others)
    assert returned == [(data, plane.client_addr) for data in others]
    assert changes(plane.fp, before) == {}
    # a plain Send from a client without an allocation: the core counts it
    stranger = plane.extra_socket()
    returned = plane.from_client(NOW, good, sender=stranger)
    assert returned == [(good, address(stranger))]
    assert_silent(plane.peer)


def test_send_indication_drop_reasons(plane: Plane) -> None:
    fd, peer = plane.relay.fileno(), plane.peer_addr
    plane.fp.permit(fd, peer[0], NOW + 60, (peer[1] + 1,))
    head = encode_xor_address(*peer, TID)

    def send(value: bytes) -> bytes:
        attrs = [(AttrType.XOR_PEER_ADDRESS, value), (AttrType.DATA, b"payload")]
        return encode_message(Method.SEND, MessageClass.INDICATION, TID, attrs)

    other_ip = "127.0.0.2" if plane.listener.family == socket.AF_INET else "::2"
    cases = [
        (send(head[:1] + b"\x03" + head[2:]), "dropped_malformed"),  # family 3
        (send(head + b"\0\0\0\0"), "dropped_malformed"),  # a length neither 8 nor 20
        (send(bytes(4)), "dropped_malformed"),
        (send(encode_xor_address(other_ip, peer[1], TID)), "dropped_no_permission"),
        (send(encode_xor_address(peer[0], peer[1] + 1, TID)), "dropped_own_port"),
    ]
    for data, reason in cases:
        before = plane.fp.counters()
        assert plane.from_client(NOW, data) == []
        assert changes(plane.fp, before) == {reason: 1}, reason
    before = plane.fp.counters()
    plane.from_client(NOW + 60, send(head))  # the permission has expired
    assert changes(plane.fp, before) == {"dropped_no_permission": 1}
    assert_silent(plane.peer)
    plane.from_client(NOW, send(head))
    assert receive(plane.peer)[0] == b"payload"


def test_xor_peer_address_decoding_matches_python() -> None:
    """Both families' XOR encodings (the IPv6 one uses the transaction id), and the reserved
    first byte ignored, as ``decode_xor_address_untrusted`` does."""
    with rig() as plane, rig(socket.AF_INET6) as plane6:
        for p in (plane, plane6):
            fd, peer = p.relay.fileno(), p.peer_addr
            p.fp.permit(fd, peer[0], NOW + 60, ())
            value = bytearray(encode_xor_address(*peer, TID))
            value[0] = 0xFF
            assert decode_xor_address_untrusted(bytes(value), TID) == peer
            attrs = [(AttrType.XOR_PEER_ADDRESS, bytes(value)), (AttrType.DATA, b"z")]
            p.from_client(NOW, encode_message(Method.SEND, MessageClass.INDICATION, TID, attrs))
            assert receive(p.peer) == (b"z", address(p.relay))


# -- peer -> client -------------------------------------------------------------------------


def test_channel_data_to_the_client(plane: Plane) -> None:
    plane.open_path()
    before = plane.fp.counters()
    plane.from_peer(NOW, b"hello")
    data, source = receive(plane.client)
    assert source == address(plane.listener)
    # RFC 8656 §12.5: no padding over UDP
    assert data == CHANNEL.to_bytes(2, "big") + b"\x00\x05hello"
    assert changes(plane.fp, before) == {"to_client_packets": 1, "to_client_bytes": 5}


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000])
def test_data_indication(plane: Plane, size: int) -> None:
    plane.open_path(channel=False)
    payload = os.urandom(size)
    plane.from_peer(NOW, payload)
    data, source = receive(plane.client)
    assert source == address(plane.listener)
    msg = decode_message_untrusted(data)
    assert (msg.method, msg.cls) == (Method.DATA, MessageClass.INDICATION)
    tid = msg.transaction_id
    assert decode_xor_address_untrusted(msg.get(AttrType.XOR_PEER_ADDRESS) or b"", tid) == (
        plane.peer_addr
    )
    assert msg.get(AttrType.DATA) == payload
    assert not msg.has_fingerprint
    # byte for byte relaypath._data_indication's layout: XOR-PEER-ADDRESS, DATA padded to 4
    xor_peer = encode_xor_address(*plane.peer_addr, tid)
    pad = bytes(-size & 3)
    body = b"\x00\x12" + len(xor_peer).to_bytes(2, "big") + xor_peer
    body += b"\x00\x13" + size.to_bytes(2, "big") + payload + pad
    assert data == b"\x00\x17" + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + tid + body


def test_data_indication_when_the_channel_is_for_another_peer_or_expired(plane: Plane) -> None:
    fd = plane.relay.fileno()
    plane.open_path(expires=NOW + 300)
    plane.fp.bind_channel(fd, CHANNEL, (plane.peer_addr[0], 9), NOW + 300)
    plane.from_peer(NOW, b"a")
    assert receive(plane.client)[0][:2] == b"\x00\x17"
    plane.fp.bind_channel(fd, CHANNEL, plane.peer_addr, NOW + 5)
    plane.from_peer(NOW + 5, b"b")  # expired
    assert receive(plane.client)[0][:2] == b"\x00\x17"
    plane.from_peer(NOW + 4, b"c")
    assert receive(plane.client)[0] == CHANNEL.to_bytes(2, "big") + b"\x00\x01c"


def test_transaction_ids_are_random_and_seeded() -> None:
    ids = []
    for _ in range(2):
        with rig() as plane:
            plane.open_path(channel=False)
            plane.from_peer(NOW, b"1", b"2")
            ids.append([receive(plane.client)[0][8:20] for _ in range(2)])
    assert ids[0] == ids[1]  # the same seed
    assert ids[0][0] != ids[0][1]
    assert FastPath().counters() == FastPath(seed=1).counters()  # unseeded: getrandom


def test_peer_drop_reasons(plane: Plane) -> None:
    fd = plane.relay.fileno()
    stranger = plane.extra_socket()
    before = plane.fp.counters()
    plane.from_peer(NOW, b"x", sender=stranger)  # no permission at all
    plane.open_path(expires=NOW + 10)
    plane.from_peer(NOW + 10, b"x")  # expired
    assert changes(plane.fp, before) == {"dropped_no_permission": 2}
    # larger than 0xFFFC - 28 bytes: fits no Data indication (an IPv4 datagram can be 65507)
    before = plane.fp.counters()
    plane.from_peer(NOW, bytes(0xFFFC - 28 + 1))
    assert changes(plane.fp, before) == {"dropped_malformed": 1}
    before = plane.fp.counters()
    plane.from_peer(NOW, bytes(0xFFFC - 28))
    if plane.listener.family == socket.AF_INET6:
        assert len(receive(plane.client)[0]) == 4 + 0xFFFC - 28
    else:  # 4 + 65504 bytes is more than an IPv4 datagram holds: the send fails, counted
        assert changes(plane.fp, before) == {"send_errors": 1}
    plane.fp.set_budget(fd, 10)
    before = plane.fp.counters()
    plane.from_peer(NOW, bytes(6), bytes(6), bytes(4))
    assert changes(plane.fp, before) == {
        "to_client_packets": 2,
        "to_client_bytes": 10,
        "dropped_bandwidth": 1,
    }
    assert plane.fp.budget(fd) == 0
    assert_silent(stranger)


# -- budgets --------------------------------------------------------------------------------


def test_budget_spend_and_refill(plane: Plane) -> None:
    fd = plane.relay.fileno()
    plane.open_path()
    plane.fp.set_budget(fd, 100)
    before = plane.fp.counters()
    plane.from_client(NOW, channel_data(CHANNEL, bytes(60)), channel_data(CHANNEL, bytes(60)))
    assert changes(plane.fp, before) == {
        "to_peer_packets": 1,
        "to_peer_bytes": 60,
        "dropped_bandwidth": 1,
    }
    assert plane.fp.budget(fd) == 40
    # the core's own Send path spends through spend(), and counts what it relays itself
    before = plane.fp.counters()
    assert plane.fp.spend(fd, 40)
    assert not plane.fp.spend(fd, 1)
    assert changes(plane.fp, before) == {"dropped_bandwidth": 1}
    plane.fp.set_budget(fd, 60)  # the core's tick refills it
    plane.from_client(NOW, channel_data(CHANNEL, bytes(60)))
    assert plane.fp.budget(fd) == 0
    plane.fp.set_budget(fd, INF)
    assert plane.fp.spend(fd, 10**9)
    assert plane.fp.budget(fd) == INF
    with pytest.raises(ValueError, match="size"):
        plane.fp.spend(fd, -1)


# -- what goes back to Python ---------------------------------------------------------------


def test_stun_and_everything_else_goes_back_to_python(plane: Plane) -> None:
    binding = encode_message(Method.BINDING, MessageClass.REQUEST, TID)
    others = [binding, b"", b"\x00", b"\xff" * 30, send_indication(plane.peer_addr, b"")[:2]]
    before = plane.fp.counters()
    assert plane.from_client(NOW, *others) == [(d, plane.client_addr) for d in others]
    assert changes(plane.fp, before) == {}
    stranger = plane.extra_socket()  # no allocation: the same
    assert plane.from_client(NOW, binding, sender=stranger) == [(binding, address(stranger))]


def test_a_removed_allocation_is_no_longer_relayed(plane: Plane) -> None:
    fd = plane.relay.fileno()
    plane.open_path()
    plane.fp.remove(fd)
    plane.fp.remove(fd)  # no error if absent
    before = plane.fp.counters()
    send = send_indication(plane.peer_addr, b"x")
    assert plane.from_client(NOW, channel_data(CHANNEL, b"x"), send) == [(send, plane.client_addr)]
    assert changes(plane.fp, before) == {"dropped_no_allocation": 1}
    plane.peer.sendto(b"x", address(plane.relay))
    assert plane.fp.drain_relay(fd, NOW, 10) == 0  # not read
    assert select.select([plane.relay], [], [], 2)[0]
    plane.add()  # the same client may allocate again
    plane.from_client(NOW, channel_data(CHANNEL, b"x"))
    assert changes(plane.fp, before) == {"dropped_no_allocation": 1, "dropped_bad_channel": 1}
    assert_silent(plane.peer)
