"""The sans-IO Binding responder, driven with explicit addresses and no sockets."""

from __future__ import annotations

import struct

import pytest
from default_settings import responder_config
from stun_requests import (
    ALTERNATE,
    CLIENT,
    FLAGS,
    LOCAL_SOCKETS,
    PRIMARY,
    RFC5769_REQUEST,
    RFC5780,
    address_of,
    error_code,
    other_of,
    reply_message,
    request,
)

from secureconnect.netaddr import Address
from secureconnect.stun import (
    AttrType,
    BindingResponder,
    ErrorCode,
    MessageClass,
    Method,
    StunCounters,
    decode_error_code_untrusted,
    decode_message_untrusted,
    decode_unknown_attributes_untrusted,
    decode_xor_address_untrusted,
    encode_change_request,
    encode_message,
    encode_u32,
    new_transaction_id,
)

# ---------------------------------------------------------------------------------------------
# Plain Binding


@pytest.mark.parametrize("source", [CLIENT, ("2001:db8::5", 61000)])
def test_success_carries_xor_mapped_address_only(source: Address) -> None:
    counters = StunCounters()
    responder = BindingResponder(responder_config(), counters)
    tid = new_transaction_id()
    reply = responder.handle(request(tid=tid), source, PRIMARY)
    assert reply is not None
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
    responder = BindingResponder(responder_config())
    plain = responder.handle(request(), CLIENT, PRIMARY)
    assert plain is not None
    assert len(plain.data) <= 32
    with_fingerprint = responder.handle(request(fingerprint=True), CLIENT, PRIMARY)
    assert with_fingerprint is not None
    assert len(with_fingerprint.data) <= 32 + 8


def test_fingerprint_echoed_only_when_requested() -> None:
    responder = BindingResponder(responder_config())
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
        BindingResponder(responder_config()).handle(
            request(tid=tid), ("::ffff:203.0.113.5", 4000), ("::", 3478)
        )
    )
    value = msg.get(AttrType.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert len(value) == 8
    assert decode_xor_address_untrusted(value, tid) == ("203.0.113.5", 4000)


def test_software_only_when_configured() -> None:
    msg = reply_message(
        BindingResponder(responder_config(software="secureconnect")).handle(
            request(), CLIENT, PRIMARY
        )
    )
    assert msg.get(AttrType.SOFTWARE) == b"secureconnect"
    msg = reply_message(BindingResponder(responder_config()).handle(request(), CLIENT, PRIMARY))
    assert msg.get(AttrType.SOFTWARE) is None


def test_rfc5769_sample_request_is_answered() -> None:
    """USERNAME, MESSAGE-INTEGRITY and PRIORITY are understood and ignored (no credentials)."""
    msg = reply_message(
        BindingResponder(responder_config()).handle(RFC5769_REQUEST, ("192.0.2.1", 32853), PRIMARY)
    )
    assert msg.cls is MessageClass.SUCCESS
    value = msg.get(AttrType.XOR_MAPPED_ADDRESS)
    assert value == bytes.fromhex("0001a147e112a643")  # RFC 5769 §2.2's value
    assert msg.has_fingerprint


def test_comprehension_optional_attributes_are_ignored() -> None:
    msg = reply_message(
        BindingResponder(responder_config()).handle(
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
    msg = reply_message(BindingResponder(responder_config()).handle(tampered, CLIENT, PRIMARY))
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
    responder = BindingResponder(responder_config(), counters)
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
    quiet = reply_message(BindingResponder(responder_config()).handle(bad, CLIENT, PRIMARY))
    value = quiet.get(AttrType.ERROR_CODE)
    assert value is not None
    assert decode_error_code_untrusted(value) == (420, "")
    assert len(value) == 4
    chatty = reply_message(
        BindingResponder(responder_config(reason_phrases=True)).handle(bad, CLIENT, PRIMARY)
    )
    value = chatty.get(AttrType.ERROR_CODE)
    assert value is not None
    assert decode_error_code_untrusted(value) == (420, "Unknown Attribute")


def test_malformed_binding_request_gets_400() -> None:
    counters = StunCounters()
    responder = BindingResponder(responder_config(), counters)
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
    responder = BindingResponder(responder_config(), counters)
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
    assert BindingResponder(responder_config(), counters).handle(garbage, CLIENT, PRIMARY) is None
    assert counters.dropped_not_stun == 1
    assert counters.requests == 0


def test_binding_indications_are_dropped_silently() -> None:
    counters = StunCounters()
    responder = BindingResponder(responder_config(), counters)
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
    responder = BindingResponder(responder_config(), counters)
    assert responder.handle(request(method=method, cls=cls), CLIENT, PRIMARY) is None
    assert counters.dropped_not_request == 1
    assert counters.requests == 0


def test_handle_message_takes_a_decoded_message() -> None:
    msg = decode_message_untrusted(request())
    reply = BindingResponder(responder_config()).handle_message(msg, CLIENT, PRIMARY)
    assert reply_message(reply).cls is MessageClass.SUCCESS


# ---------------------------------------------------------------------------------------------
# CHANGE-REQUEST and RFC 5780


def test_change_request_without_rfc5780_gets_420() -> None:
    """RFC 5780 §6: a server without an alternate address answers CHANGE-REQUEST with 420."""
    counters = StunCounters()
    responder = BindingResponder(responder_config(), counters)
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
        BindingResponder(responder_config()).handle(
            request([(AttrType.CHANGE_REQUEST, encode_change_request(False, False))]),
            CLIENT,
            PRIMARY,
        )
    )
    assert msg.cls is MessageClass.SUCCESS


def test_malformed_change_request_gets_400() -> None:
    for config in (responder_config(), RFC5780):
        msg = reply_message(
            BindingResponder(config).handle(
                request([(AttrType.CHANGE_REQUEST, b"\x00\x06")]), CLIENT, PRIMARY
            )
        )
        assert error_code(msg) == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("local", LOCAL_SOCKETS)
@pytest.mark.parametrize("flags", FLAGS)
def test_rfc5780_change_request_on_each_socket(local: Address, flags: tuple[bool, bool]) -> None:
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
    assert reply.response_origin == origin  # the socket the I/O layer sends it from
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
    assert reply.response_origin == PRIMARY
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
        responder_config(primary=PRIMARY)
    with pytest.raises(ValueError, match="differ"):
        responder_config(primary=PRIMARY, alternate=(PRIMARY[0], 3479))
    with pytest.raises(ValueError, match="differ"):
        responder_config(primary=PRIMARY, alternate=("192.0.2.20", PRIMARY[1]))
    with pytest.raises(ValueError, match="family"):
        responder_config(primary=PRIMARY, alternate=("2001:db8::1", 3479))
    assert RFC5780.rfc5780
    assert not responder_config().rfc5780


def test_ipv6_addresses_are_compared_canonically() -> None:
    config = responder_config(primary=("2001:db8:0::10", 3478), alternate=("2001:db8::20", 3479))
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


@pytest.mark.parametrize("software", [None, "sc 1.0"])
@pytest.mark.parametrize("client", [CLIENT, ("2001:db8::7", 4242)])
def test_fast_path_answers_exactly_like_the_general_path(
    software: str | None, client: Address
) -> None:
    """A bare Binding request takes a shortcut past the codec; its answer must be byte for byte
    what the general path builds, and it must be counted the same way."""
    responder = BindingResponder(responder_config(software=software))
    request = encode_message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
    fast = responder.handle(request, client, PRIMARY)
    assert fast is not None
    general = responder.handle_message(decode_message_untrusted(request), client, PRIMARY)
    assert general is not None
    assert fast.data == general.data
    assert (fast.response_origin, fast.destination) == (general.response_origin, None)
    assert (responder.counters.requests, responder.counters.responses) == (2, 2)
