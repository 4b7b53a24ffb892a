"""The sans-IO Binding responder, driven with explicit addresses and no sockets."""

from __future__ import annotations

import importlib
import struct
from collections.abc import Iterable
from typing import Any

import pytest

from secureconnect.stun import (
    AttrType,
    BindingResponder,
    ErrorCode,
    MessageClass,
    Method,
    Reply,
    ResponderConfig,
    StunCounters,
    StunMessage,
    Via,
    decode_address_untrusted,
    decode_error_code_untrusted,
    decode_message_untrusted,
    decode_unknown_attributes_untrusted,
    decode_xor_address_untrusted,
    encode_change_request,
    encode_message,
    encode_u32,
    new_transaction_id,
)

Address = tuple[str, int]

# pystun3, the classic RFC 3489 client, driven through a fake socket. Imported by name because
# tests/stun would shadow the `stun` module for the type checker.
pystun3: Any = importlib.import_module("stun")

PRIMARY: Address = ("192.0.2.10", 3478)
ALTERNATE: Address = ("192.0.2.20", 3479)
RFC5780 = ResponderConfig(primary=PRIMARY, alternate=ALTERNATE)
CLIENT: Address = ("203.0.113.5", 54321)

RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)


def request(
    attributes: Iterable[tuple[int, bytes]] = (),
    *,
    fingerprint: bool = False,
    tid: bytes | None = None,
    method: int = Method.BINDING,
    cls: int = MessageClass.REQUEST,
) -> bytes:
    return encode_message(
        method, cls, tid or new_transaction_id(), attributes, fingerprint=fingerprint
    )


def classic_request(attributes: Iterable[tuple[int, bytes]] = ()) -> tuple[bytes, bytes]:
    tid = bytes(range(1, 17))
    return encode_message(Method.BINDING, MessageClass.REQUEST, tid, attributes), tid


def reply_message(reply: Reply | None) -> StunMessage:
    assert reply is not None
    return decode_message_untrusted(reply.data)


def error_code(msg: StunMessage) -> int:
    assert msg.cls is MessageClass.ERROR
    value = msg.get(AttrType.ERROR_CODE)
    assert value is not None
    return decode_error_code_untrusted(value)[0]


def address_of(msg: StunMessage, attr: int) -> Address | None:
    value = msg.get(attr)
    return None if value is None else decode_address_untrusted(value)


def classic_reply(reply: Reply | None) -> tuple[int, dict[int, bytes]]:
    """Read a classic reply the way an RFC 3489 client (pystun3) does: the decoder accepts
    classic messages only as requests. Values must be multiples of 4 (pystun3 skips no padding).
    """
    assert reply is not None
    msg_type, length = struct.unpack_from(">HH", reply.data)
    assert length == len(reply.data) - 20
    attributes: dict[int, bytes] = {}
    offset = 20
    while offset < len(reply.data):
        atype, alen = struct.unpack_from(">HH", reply.data, offset)
        assert alen % 4 == 0
        attributes.setdefault(atype, reply.data[offset + 4 : offset + 4 + alen])
        offset += 4 + alen
    return msg_type, attributes


def other_of(local: Address) -> Address:
    ip = ALTERNATE[0] if local[0] == PRIMARY[0] else PRIMARY[0]
    port = ALTERNATE[1] if local[1] == PRIMARY[1] else PRIMARY[1]
    return ip, port


# ---------------------------------------------------------------------------------------------
# Plain Binding


@pytest.mark.parametrize("source", [CLIENT, ("2001:db8::5", 61000)])
def test_success_carries_xor_mapped_address_only(source: Address) -> None:
    counters = StunCounters()
    responder = BindingResponder(ResponderConfig(), counters)
    tid = new_transaction_id()
    reply = responder.handle(request(tid=tid), source, PRIMARY)
    assert reply is not None
    assert reply.via is Via.SAME
    assert reply.response_origin == PRIMARY
    msg = reply_message(reply)
    assert (msg.method, msg.cls, msg.transaction_id) == (
        Method.BINDING,
        MessageClass.SUCCESS,
        tid,
    )
    assert [t for t, _ in msg.attributes] == [AttrType.XOR_MAPPED_ADDRESS]
    value = msg.get(AttrType.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert decode_xor_address_untrusted(value, tid) == source
    assert (counters.requests, counters.responses, counters.errors_sent) == (1, 1, 0)


def test_response_sizes_stay_small() -> None:
    """Amplification: an IPv4 Binding success is 32 bytes, 40 with an echoed FINGERPRINT."""
    responder = BindingResponder(ResponderConfig())
    plain = responder.handle(request(), CLIENT, PRIMARY)
    assert plain is not None
    assert len(plain.data) <= 32
    with_fingerprint = responder.handle(request(fingerprint=True), CLIENT, PRIMARY)
    assert with_fingerprint is not None
    assert len(with_fingerprint.data) <= 32 + 8


def test_fingerprint_echoed_only_when_requested() -> None:
    responder = BindingResponder(ResponderConfig())
    assert not reply_message(responder.handle(request(), CLIENT, PRIMARY)).has_fingerprint
    assert reply_message(
        responder.handle(request(fingerprint=True), CLIENT, PRIMARY)
    ).has_fingerprint
    # Errors echo it too, so a client demultiplexing by FINGERPRINT sees them.
    error = reply_message(
        responder.handle(request([(0x0030, b"")], fingerprint=True), CLIENT, PRIMARY)
    )
    assert error.has_fingerprint


def test_ipv4_mapped_source_is_reported_as_ipv4() -> None:
    tid = new_transaction_id()
    msg = reply_message(
        BindingResponder(ResponderConfig()).handle(
            request(tid=tid), ("::ffff:203.0.113.5", 4000), ("::", 3478)
        )
    )
    value = msg.get(AttrType.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert len(value) == 8
    assert decode_xor_address_untrusted(value, tid) == ("203.0.113.5", 4000)


def test_software_only_when_configured() -> None:
    msg = reply_message(
        BindingResponder(ResponderConfig(software="secureconnect")).handle(
            request(), CLIENT, PRIMARY
        )
    )
    assert msg.get(AttrType.SOFTWARE) == b"secureconnect"
    msg = reply_message(BindingResponder(ResponderConfig()).handle(request(), CLIENT, PRIMARY))
    assert msg.get(AttrType.SOFTWARE) is None


def test_rfc5769_sample_request_is_answered() -> None:
    """USERNAME, MESSAGE-INTEGRITY and PRIORITY are understood and ignored (no credentials)."""
    msg = reply_message(
        BindingResponder(ResponderConfig()).handle(RFC5769_REQUEST, ("192.0.2.1", 32853), PRIMARY)
    )
    assert msg.cls is MessageClass.SUCCESS
    value = msg.get(AttrType.XOR_MAPPED_ADDRESS)
    assert value == bytes.fromhex("0001a147e112a643")  # RFC 5769 §2.2's value
    assert msg.has_fingerprint


def test_comprehension_optional_attributes_are_ignored() -> None:
    msg = reply_message(
        BindingResponder(ResponderConfig()).handle(
            request([(0x8123, b"whatever"), (AttrType.ICE_CONTROLLING, bytes(8))]),
            CLIENT,
            PRIMARY,
        )
    )
    assert msg.cls is MessageClass.SUCCESS


def test_attributes_after_message_integrity_are_ignored() -> None:
    """RFC 8489 §14.5: an unknown attribute appended after MESSAGE-INTEGRITY never reaches the
    420 check, because the decoder has dropped it."""
    signed = encode_message(
        Method.BINDING,
        MessageClass.REQUEST,
        new_transaction_id(),
        [(AttrType.USERNAME, b"u")],
        integrity_key=b"k",
    )
    extra = struct.pack(">HH", 0x0030, 4) + encode_u32(0)
    tampered = signed[:2] + struct.pack(">H", len(signed) - 20 + 8) + signed[4:] + extra
    msg = reply_message(BindingResponder(ResponderConfig()).handle(tampered, CLIENT, PRIMARY))
    assert msg.cls is MessageClass.SUCCESS


# ---------------------------------------------------------------------------------------------
# Errors and drops


@pytest.mark.parametrize(
    "attr",
    [
        0x0030,
        AttrType.USE_CANDIDATE,
        AttrType.RESPONSE_PORT,
        AttrType.PADDING,
        AttrType.RESPONSE_ADDRESS,
        AttrType.LIFETIME,
    ],
)
def test_unknown_comprehension_required_gets_420(attr: int) -> None:
    counters = StunCounters()
    responder = BindingResponder(ResponderConfig(), counters)
    tid = new_transaction_id()
    reply = responder.handle(
        request([(attr, bytes(4)), (0x0031, b""), (attr, b"")], tid=tid), CLIENT, PRIMARY
    )
    msg = reply_message(reply)
    assert msg.transaction_id == tid
    assert error_code(msg) == ErrorCode.UNKNOWN_ATTRIBUTE
    listing = msg.get(AttrType.UNKNOWN_ATTRIBUTES)
    assert listing is not None
    assert decode_unknown_attributes_untrusted(listing) == (attr, 0x0031)
    assert (counters.unknown_attributes, counters.errors_sent, counters.responses) == (1, 1, 0)


def test_error_reason_phrases_are_opt_in() -> None:
    bad = request([(0x0030, b"")])
    quiet = reply_message(BindingResponder(ResponderConfig()).handle(bad, CLIENT, PRIMARY))
    value = quiet.get(AttrType.ERROR_CODE)
    assert value is not None
    assert decode_error_code_untrusted(value) == (420, "")
    assert len(value) == 4
    chatty = reply_message(
        BindingResponder(ResponderConfig(reason_phrases=True)).handle(bad, CLIENT, PRIMARY)
    )
    value = chatty.get(AttrType.ERROR_CODE)
    assert value is not None
    assert decode_error_code_untrusted(value) == (420, "Unknown Attribute")


def test_malformed_binding_request_gets_400() -> None:
    counters = StunCounters()
    responder = BindingResponder(ResponderConfig(), counters)
    tid = new_transaction_id()
    good = request([(AttrType.SOFTWARE, b"abcd")], tid=tid)
    overrun = good[:22] + b"\x00\x08" + good[24:]  # SOFTWARE claims 8 bytes, has 4
    msg = reply_message(responder.handle(overrun, CLIENT, PRIMARY))
    assert msg.transaction_id == tid
    assert msg.method == Method.BINDING
    assert error_code(msg) == ErrorCode.BAD_REQUEST
    assert (counters.requests, counters.bad_requests, counters.errors_sent) == (1, 1, 1)


def test_malformed_non_requests_are_dropped() -> None:
    counters = StunCounters()
    responder = BindingResponder(ResponderConfig(), counters)
    good = request([(AttrType.SOFTWARE, b"abcd")], cls=MessageClass.INDICATION)
    assert responder.handle(good[:22] + b"\x00\x08" + good[24:], CLIENT, PRIMARY) is None
    good = request([(AttrType.SOFTWARE, b"abcd")], method=Method.ALLOCATE)
    assert responder.handle(good[:22] + b"\x00\x08" + good[24:], CLIENT, PRIMARY) is None
    assert counters.dropped_not_request == 2
    assert counters.errors_sent == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hello world, this is not STUN",
        b"\x40\x00\x00\x04abcd",  # ChannelData
        b"\x16\x03\x01\x00\xa5" + bytes(40),  # a TLS ClientHello
        RFC5769_REQUEST[:-1] + b"\x00",  # wrong FINGERPRINT
    ],
)
def test_garbage_is_dropped_and_counted(garbage: bytes) -> None:
    counters = StunCounters()
    assert BindingResponder(ResponderConfig(), counters).handle(garbage, CLIENT, PRIMARY) is None
    assert counters.dropped_not_stun == 1
    assert counters.requests == 0


def test_binding_indications_are_dropped_silently() -> None:
    counters = StunCounters()
    responder = BindingResponder(ResponderConfig(), counters)
    assert responder.handle(request(cls=MessageClass.INDICATION), CLIENT, PRIMARY) is None
    assert counters == StunCounters()


@pytest.mark.parametrize(
    ("method", "cls"),
    [
        (Method.BINDING, MessageClass.SUCCESS),
        (Method.BINDING, MessageClass.ERROR),
        (Method.ALLOCATE, MessageClass.REQUEST),
        (Method.SEND, MessageClass.INDICATION),
    ],
)
def test_other_messages_are_dropped_and_counted(method: int, cls: int) -> None:
    counters = StunCounters()
    responder = BindingResponder(ResponderConfig(), counters)
    assert responder.handle(request(method=method, cls=cls), CLIENT, PRIMARY) is None
    assert counters.dropped_not_request == 1
    assert counters.requests == 0


def test_handle_message_takes_a_decoded_message() -> None:
    msg = decode_message_untrusted(request())
    reply = BindingResponder(ResponderConfig()).handle_message(msg, CLIENT, PRIMARY)
    assert reply_message(reply).cls is MessageClass.SUCCESS


# ---------------------------------------------------------------------------------------------
# CHANGE-REQUEST and RFC 5780


def test_change_request_without_rfc5780_gets_420() -> None:
    """RFC 5780 §6: a server without an alternate address answers CHANGE-REQUEST with 420."""
    counters = StunCounters()
    responder = BindingResponder(ResponderConfig(), counters)
    for flags in ((True, False), (False, True), (True, True)):
        reply = responder.handle(
            request([(AttrType.CHANGE_REQUEST, encode_change_request(*flags))]), CLIENT, PRIMARY
        )
        msg = reply_message(reply)
        assert error_code(msg) == ErrorCode.UNKNOWN_ATTRIBUTE
        listing = msg.get(AttrType.UNKNOWN_ATTRIBUTES)
        assert listing is not None
        assert decode_unknown_attributes_untrusted(listing) == (AttrType.CHANGE_REQUEST,)
    assert counters.change_requests == 3


def test_change_request_without_flags_is_answered() -> None:
    """Stuntman's client sends an empty CHANGE-REQUEST to every server (JSTUN interop)."""
    msg = reply_message(
        BindingResponder(ResponderConfig()).handle(
            request([(AttrType.CHANGE_REQUEST, encode_change_request(False, False))]),
            CLIENT,
            PRIMARY,
        )
    )
    assert msg.cls is MessageClass.SUCCESS


def test_malformed_change_request_gets_400() -> None:
    for config in (ResponderConfig(), RFC5780):
        msg = reply_message(
            BindingResponder(config).handle(
                request([(AttrType.CHANGE_REQUEST, b"\x00\x06")]), CLIENT, PRIMARY
            )
        )
        assert error_code(msg) == ErrorCode.BAD_REQUEST


LOCAL_SOCKETS = [
    PRIMARY,
    (PRIMARY[0], ALTERNATE[1]),
    (ALTERNATE[0], PRIMARY[1]),
    ALTERNATE,
]
FLAGS = [
    ((False, False), Via.SAME),
    ((False, True), Via.CHANGE_PORT),
    ((True, False), Via.CHANGE_IP),
    ((True, True), Via.CHANGE_BOTH),
]


@pytest.mark.parametrize("local", LOCAL_SOCKETS)
@pytest.mark.parametrize(("flags", "via"), FLAGS)
def test_rfc5780_change_request_on_each_socket(
    local: Address, flags: tuple[bool, bool], via: Via
) -> None:
    """RFC 5780 §6.1 Table 1, from each of the four sockets the I/O layer binds."""
    tid = new_transaction_id()
    reply = BindingResponder(RFC5780).handle(
        request([(AttrType.CHANGE_REQUEST, encode_change_request(*flags))], tid=tid),
        CLIENT,
        local,
    )
    assert reply is not None
    other = other_of(local)
    change_ip, change_port = flags
    origin = (other[0] if change_ip else local[0], other[1] if change_port else local[1])
    assert reply.via is via
    assert reply.response_origin == origin
    msg = reply_message(reply)
    assert msg.cls is MessageClass.SUCCESS
    assert address_of(msg, AttrType.RESPONSE_ORIGIN) == origin
    assert address_of(msg, AttrType.OTHER_ADDRESS) == other  # Ca:Cp whatever the flags
    assert address_of(msg, AttrType.MAPPED_ADDRESS) == CLIENT  # RFC 5780 §6.1 MUST
    xor_mapped = msg.get(AttrType.XOR_MAPPED_ADDRESS)
    assert xor_mapped is not None
    assert decode_xor_address_untrusted(xor_mapped, tid) == CLIENT


def test_rfc5780_over_a_stream() -> None:
    responder = BindingResponder(RFC5780)
    # Without CHANGE-REQUEST a stream request is answered, OTHER-ADDRESS included.
    msg = reply_message(responder.handle(request(), CLIENT, PRIMARY, stream=True))
    assert address_of(msg, AttrType.OTHER_ADDRESS) == ALTERNATE
    # With a flag set, a reply cannot leave the connection from elsewhere: 400.
    reply = responder.handle(
        request([(AttrType.CHANGE_REQUEST, encode_change_request(True, False))]),
        CLIENT,
        PRIMARY,
        stream=True,
    )
    assert reply is not None
    assert reply.via is Via.SAME
    assert error_code(reply_message(reply)) == ErrorCode.BAD_REQUEST


def test_unknown_local_address_is_answered_without_rfc5780() -> None:
    responder = BindingResponder(RFC5780)
    msg = reply_message(responder.handle(request(), CLIENT, ("198.51.100.1", 3478)))
    assert msg.get(AttrType.OTHER_ADDRESS) is None
    reply = responder.handle(
        request([(AttrType.CHANGE_REQUEST, encode_change_request(False, True))]),
        CLIENT,
        (PRIMARY[0], 9999),
    )
    assert error_code(reply_message(reply)) == ErrorCode.UNKNOWN_ATTRIBUTE


def test_responder_config_validation() -> None:
    with pytest.raises(ValueError, match="both"):
        ResponderConfig(primary=PRIMARY)
    with pytest.raises(ValueError, match="differ"):
        ResponderConfig(primary=PRIMARY, alternate=(PRIMARY[0], 3479))
    with pytest.raises(ValueError, match="differ"):
        ResponderConfig(primary=PRIMARY, alternate=("192.0.2.20", PRIMARY[1]))
    with pytest.raises(ValueError, match="family"):
        ResponderConfig(primary=PRIMARY, alternate=("2001:db8::1", 3479))
    assert RFC5780.rfc5780
    assert not ResponderConfig().rfc5780


def test_ipv6_addresses_are_compared_canonically() -> None:
    config = ResponderConfig(primary=("2001:db8:0::10", 3478), alternate=("2001:db8::20", 3479))
    reply = BindingResponder(config).handle(
        request([(AttrType.CHANGE_REQUEST, encode_change_request(True, True))]),
        ("2001:db8::99", 5000),
        ("2001:db8::10", 3478),
    )
    assert reply is not None
    assert reply.response_origin == ("2001:db8::20", 3479)
    # A dual-stack socket may spell an IPv4 local address as IPv4-mapped IPv6.
    reply = BindingResponder(RFC5780).handle(
        request([(AttrType.CHANGE_REQUEST, encode_change_request(True, False))]),
        CLIENT,
        ("::ffff:" + PRIMARY[0], PRIMARY[1]),
    )
    assert reply is not None
    assert reply.response_origin == (ALTERNATE[0], PRIMARY[1])


# ---------------------------------------------------------------------------------------------
# Classic RFC 3489


def test_classic_request_gets_mapped_source_and_changed_address() -> None:
    counters = StunCounters()
    data, tid = classic_request()
    reply = BindingResponder(RFC5780, counters).handle(data, CLIENT, PRIMARY)
    assert reply is not None
    assert reply.data[4:20] == tid  # no cookie: the 16-byte transaction id follows the length
    msg_type, attributes = classic_reply(reply)
    assert msg_type == 0x0101
    assert list(attributes) == [
        AttrType.MAPPED_ADDRESS,
        AttrType.SOURCE_ADDRESS,
        AttrType.CHANGED_ADDRESS,
    ]
    assert decode_address_untrusted(attributes[AttrType.MAPPED_ADDRESS]) == CLIENT
    assert decode_address_untrusted(attributes[AttrType.SOURCE_ADDRESS]) == PRIMARY
    assert decode_address_untrusted(attributes[AttrType.CHANGED_ADDRESS]) == ALTERNATE
    assert counters.classic_requests == 1


def test_classic_request_without_rfc5780_has_no_changed_address() -> None:
    data, _ = classic_request()
    reply = BindingResponder(ResponderConfig(software="x")).handle(data, CLIENT, PRIMARY)
    _, attributes = classic_reply(reply)
    assert list(attributes) == [AttrType.MAPPED_ADDRESS, AttrType.SOURCE_ADDRESS]


@pytest.mark.parametrize(("flags", "via"), FLAGS)
def test_classic_change_request_is_honoured(flags: tuple[bool, bool], via: Via) -> None:
    data, _ = classic_request([(AttrType.CHANGE_REQUEST, encode_change_request(*flags))])
    reply = BindingResponder(RFC5780).handle(data, CLIENT, ALTERNATE)
    assert reply is not None
    assert reply.via is via
    _, attributes = classic_reply(reply)
    source = decode_address_untrusted(attributes[AttrType.SOURCE_ADDRESS])
    assert source == reply.response_origin
    assert decode_address_untrusted(attributes[AttrType.CHANGED_ADDRESS]) == PRIMARY


def test_classic_change_request_without_rfc5780_is_dropped() -> None:
    counters = StunCounters()
    data, _ = classic_request([(AttrType.CHANGE_REQUEST, encode_change_request(True, True))])
    assert BindingResponder(ResponderConfig(), counters).handle(data, CLIENT, PRIMARY) is None
    assert (counters.requests, counters.dropped_classic_change, counters.errors_sent) == (1, 1, 0)


@pytest.mark.parametrize("reason_phrases", [False, True])
def test_classic_unknown_attributes_get_a_classic_420(reason_phrases: bool) -> None:
    data, tid = classic_request([(AttrType.RESPONSE_ADDRESS, bytes(8))])
    config = ResponderConfig(
        primary=PRIMARY, alternate=ALTERNATE, software="x", reason_phrases=reason_phrases
    )
    reply = BindingResponder(config).handle(data, CLIENT, PRIMARY)
    assert reply is not None
    assert reply.data[4:20] == tid
    msg_type, attributes = classic_reply(reply)  # every value a multiple of 4 (RFC 3489)
    assert msg_type == 0x0111
    assert list(attributes) == [AttrType.ERROR_CODE, AttrType.UNKNOWN_ATTRIBUTES]
    code, reason = decode_error_code_untrusted(attributes[AttrType.ERROR_CODE])
    assert code == ErrorCode.UNKNOWN_ATTRIBUTE
    assert reason.rstrip() == ("Unknown Attribute" if reason_phrases else "")
    # RFC 3489 §11.2.10: an odd list repeats an entry to stay a multiple of 4 bytes.
    assert attributes[AttrType.UNKNOWN_ATTRIBUTES] == b"\x00\x02\x00\x02"


def test_malformed_classic_request_gets_a_classic_400() -> None:
    data, tid = classic_request([(AttrType.SOFTWARE, b"abcd")])
    overrun = data[:22] + b"\x00\x08" + data[24:]
    reply = BindingResponder(ResponderConfig()).handle(overrun, CLIENT, PRIMARY)
    assert reply is not None
    assert reply.data[4:20] == tid
    msg_type, attributes = classic_reply(reply)
    assert msg_type == 0x0111
    assert decode_error_code_untrusted(attributes[AttrType.ERROR_CODE])[0] == 400


class FakeNat:
    """pystun3's socket: `sendto` hands the request to the responder, as if through a NAT with
    public address CLIENT; `recvfrom` returns replies that the NAT's filtering lets in."""

    def __init__(self, responder: BindingResponder, filtering: str) -> None:
        self.responder = responder
        self.filtering = filtering  # "none", "address" or "address-and-port"
        self.contacted: set[Address] = set()
        self.inbox: list[tuple[bytes, Address]] = []

    def sendto(self, data: bytes, address: Address) -> None:
        self.contacted.add(address)
        reply = self.responder.handle(data, CLIENT, address)
        if reply is None or reply.response_origin is None:
            return
        origin = reply.response_origin
        if self.filtering == "address" and origin[0] not in {ip for ip, _ in self.contacted}:
            return
        if self.filtering == "address-and-port" and origin not in self.contacted:
            return
        self.inbox.append((reply.data, origin))

    def recvfrom(self, size: int) -> tuple[bytes, Address]:
        if not self.inbox:
            raise TimeoutError
        return self.inbox.pop(0)


@pytest.mark.parametrize(
    ("filtering", "expected"),
    [
        ("none", pystun3.FullCone),
        ("address", pystun3.RestricNAT),
        ("address-and-port", pystun3.RestricPortNAT),
    ],
)
def test_pystun3_classifies_nats_against_rfc5780(filtering: str, expected: str) -> None:
    nat = FakeNat(BindingResponder(RFC5780), filtering)
    nat_type, result = pystun3.get_nat_type(
        nat, "10.0.0.2", 54320, stun_host=PRIMARY[0], stun_port=PRIMARY[1]
    )
    assert nat_type == expected
    assert (result["ExternalIP"], result["ExternalPort"]) in {CLIENT, (None, None)}


def test_pystun3_terminates_without_rfc5780() -> None:
    """Without an alternate address pystun3's change test gets no answer (not an endless loop
    of error responses) and its first test still reads MAPPED-ADDRESS."""
    pystun3._initialize()
    nat = FakeNat(BindingResponder(ResponderConfig()), "none")
    first = pystun3.stun_test(nat, PRIMARY[0], PRIMARY[1], "10.0.0.2", 54320)
    assert first["Resp"]
    assert (first["ExternalIP"], first["ExternalPort"]) == CLIENT
    assert (first["SourceIP"], first["SourcePort"]) == PRIMARY
    change = "".join([pystun3.ChangeRequest, "0004", "00000006"])
    second = pystun3.stun_test(nat, PRIMARY[0], PRIMARY[1], "10.0.0.2", 54320, change)
    assert not second["Resp"]


@pytest.mark.parametrize("software", [None, "sc 1.0"])
@pytest.mark.parametrize("client", [CLIENT, ("2001:db8::7", 4242)])
def test_fast_path_answers_exactly_like_the_general_path(
    software: str | None, client: Address
) -> None:
    """A bare Binding request takes a shortcut past the codec; its answer must be byte for byte
    what the general path builds, and it must be counted the same way."""
    responder = BindingResponder(ResponderConfig(software=software))
    request = encode_message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
    fast = responder.handle(request, client, PRIMARY)
    assert fast is not None
    general = responder.handle_message(decode_message_untrusted(request), client, PRIMARY)
    assert general is not None
    assert fast.data == general.data
    assert (fast.via, fast.response_origin) == (general.via, general.response_origin)
    assert (responder.counters.requests, responder.counters.responses) == (2, 2)
