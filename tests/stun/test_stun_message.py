"""The STUN message codec: RFC 5769 test vectors, RFC 8489 §14.5 trailers, fuzzing."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StunDecodeError,
    StunMessage,
    decode_header_untrusted,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_u32,
    encode_xor_address,
    long_term_key,
    long_term_key_sha256,
    new_transaction_id,
    verify_integrity,
    verify_integrity_sha256,
)


def hexbytes(text: str) -> bytes:
    """Hex as the RFC prints it (spaces, line breaks) to bytes."""
    return bytes.fromhex("".join(text.split()))


# RFC 5769 §2.1 "Sample Request": SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
# MESSAGE-INTEGRITY (short-term password), FINGERPRINT. USERNAME is padded with spaces.
RFC5769_REQUEST = hexbytes("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf
""")

# RFC 5769 §2.2 "Sample IPv4 Response": XOR-MAPPED-ADDRESS 192.0.2.1:32853.
RFC5769_IPV4_RESPONSE = hexbytes("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96
""")

# RFC 5769 §2.3 "Sample IPv6 Response": [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RFC5769_IPV6_RESPONSE = hexbytes("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c
""")

# RFC 5769 §2.4 "Sample Request with Long-Term Authentication": USERNAME, NONCE, REALM,
# MESSAGE-INTEGRITY, no FINGERPRINT; padding is zeros.
RFC5769_LONG_TERM_REQUEST = hexbytes("""
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34
    73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66
""")

SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TID = hexbytes("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
# U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9; the password is the SASLprep'd form of
# "The<U+00AD>M<U+00AA>tr<U+2168>".
LONG_TERM_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LONG_TERM_REALM = "example.org"
LONG_TERM_PASSWORD = "TheMatrIX"
LONG_TERM_NONCE = b"f//499k954d6OL34oL9FSTvy64sA"

TRAILERS = frozenset(
    {AttrType.MESSAGE_INTEGRITY, AttrType.MESSAGE_INTEGRITY_SHA256, AttrType.FINGERPRINT}
)


def zero_padding(raw: bytes) -> bytes:
    """The message with every attribute's padding bytes set to zero (our encoder's choice)."""
    out = bytearray(raw)
    offset = 20
    while offset < len(raw):
        _, length = struct.unpack_from(">HH", raw, offset)
        start = offset + 4 + length
        padded = offset + 4 + ((length + 3) & ~3)
        out[start:padded] = bytes(padded - start)
        offset = padded
    return bytes(out)


def body_without_trailers(msg: StunMessage) -> list[tuple[int, bytes]]:
    return [(t, v) for t, v in msg.attributes if t not in TRAILERS]


def with_length(raw: bytes) -> bytes:
    """Rewrite the header's length field to match the bytes."""
    return raw[:2] + struct.pack(">H", len(raw) - 20) + raw[4:]


# ---------------------------------------------------------------------------------------------
# RFC 5769 test vectors


def test_rfc5769_sample_request_decodes_and_checks() -> None:
    msg = decode_message_untrusted(RFC5769_REQUEST)
    assert (msg.method, msg.cls) == (Method.BINDING, MessageClass.REQUEST)
    assert msg.transaction_id == RFC5769_TID
    assert not msg.header.classic
    assert msg.get(AttrType.SOFTWARE) == b"STUN test client"
    assert msg.get(AttrType.USERNAME) == b"evtj:h6vY"
    assert msg.get(AttrType.PRIORITY) == hexbytes("6e 00 01 ff")
    assert msg.get(AttrType.ICE_CONTROLLED) == hexbytes("93 2f f9 b1 51 26 3b 36")
    assert msg.has_fingerprint
    assert msg.integrity_offset == 20 + 20 + 8 + 12 + 16
    assert verify_integrity(msg, SHORT_TERM_PASSWORD)
    assert not verify_integrity(msg, b"not the password")
    assert not verify_integrity_sha256(msg, SHORT_TERM_PASSWORD)  # absent


@pytest.mark.parametrize(
    ("vector", "address"),
    [
        (RFC5769_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (RFC5769_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_sample_responses_decode_and_check(vector: bytes, address: tuple[str, int]) -> None:
    msg = decode_message_untrusted(vector)
    assert (msg.method, msg.cls) == (Method.BINDING, MessageClass.SUCCESS)
    assert msg.get(AttrType.SOFTWARE) == b"test vector"
    assert msg.has_fingerprint
    assert verify_integrity(msg, SHORT_TERM_PASSWORD)
    value = msg.get(AttrType.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert decode_xor_address_untrusted(value, msg.transaction_id) == address
    assert encode_xor_address(*address, msg.transaction_id) == value


@pytest.mark.parametrize("vector", [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE])
def test_rfc5769_vectors_reencode(vector: bytes) -> None:
    """Re-encoded from their attributes, the vectors come out byte for byte except for the
    padding bytes (the RFC pads with spaces, we with zeros), and check again."""
    msg = decode_message_untrusted(vector)
    again = encode_message(
        msg.method,
        msg.cls,
        msg.transaction_id,
        body_without_trailers(msg),
        integrity_key=SHORT_TERM_PASSWORD,
        fingerprint=True,
    )
    assert msg.integrity_offset is not None
    assert again[: msg.integrity_offset] == zero_padding(vector)[: msg.integrity_offset]
    decoded = decode_message_untrusted(again)
    assert verify_integrity(decoded, SHORT_TERM_PASSWORD)
    assert decoded.has_fingerprint
    assert body_without_trailers(decoded) == body_without_trailers(msg)


def test_rfc5769_long_term_request() -> None:
    msg = decode_message_untrusted(RFC5769_LONG_TERM_REQUEST)
    assert msg.transaction_id == hexbytes("78 ad 34 33 c6 ad 72 c0 29 da 41 2e")
    assert msg.get(AttrType.USERNAME) == LONG_TERM_USERNAME.encode()
    assert msg.get(AttrType.REALM) == LONG_TERM_REALM.encode()
    assert msg.get(AttrType.NONCE) == LONG_TERM_NONCE
    assert not msg.has_fingerprint
    key = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD)
    assert verify_integrity(msg, key)
    assert not verify_integrity(msg, long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, "x"))
    # Its padding is zeros, so the encoder reproduces it exactly.
    again = encode_message(
        msg.method, msg.cls, msg.transaction_id, body_without_trailers(msg), integrity_key=key
    )
    assert again == RFC5769_LONG_TERM_REQUEST


def test_long_term_keys() -> None:
    text = f"{LONG_TERM_USERNAME}:{LONG_TERM_REALM}:{LONG_TERM_PASSWORD}".encode()
    assert long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD) == (
        hashlib.md5(text).digest()  # noqa: S324 - the RFC's definition
    )
    assert long_term_key_sha256(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD) == (
        hashlib.sha256(text).digest()
    )


# ---------------------------------------------------------------------------------------------
# Integrity trailers (RFC 8489 §14.5-§14.7)


def test_attribute_after_message_integrity_is_ignored() -> None:
    """An attacker appends LIFETIME=0 after a valid MESSAGE-INTEGRITY: it must not be seen."""
    tid = new_transaction_id()
    signed = encode_message(
        Method.REFRESH,
        MessageClass.REQUEST,
        tid,
        [(AttrType.LIFETIME, encode_u32(600))],
        integrity_key=b"key",
    )
    tampered = with_length(signed + struct.pack(">HH", AttrType.LIFETIME, 4) + encode_u32(0))
    msg = decode_message_untrusted(tampered)
    assert msg.get(AttrType.LIFETIME) == encode_u32(600)
    assert [t for t, _ in msg.attributes] == [AttrType.LIFETIME, AttrType.MESSAGE_INTEGRITY]
    assert verify_integrity(msg, b"key")


def test_only_sha256_integrity_and_fingerprint_follow_message_integrity() -> None:
    tid = new_transaction_id()
    raw = encode_message(
        Method.BINDING,
        MessageClass.REQUEST,
        tid,
        [(AttrType.USERNAME, b"alice")],
        integrity_key=b"k1",
        integrity_sha256_key=b"k2",
        fingerprint=True,
    )
    msg = decode_message_untrusted(raw)
    assert [t for t, _ in msg.attributes] == [
        AttrType.USERNAME,
        AttrType.MESSAGE_INTEGRITY,
        AttrType.MESSAGE_INTEGRITY_SHA256,
        AttrType.FINGERPRINT,
    ]
    assert verify_integrity(msg, b"k1")
    assert verify_integrity_sha256(msg, b"k2")
    assert not verify_integrity_sha256(msg, b"k1")


def test_after_sha256_integrity_only_fingerprint_counts() -> None:
    tid = new_transaction_id()
    signed = encode_message(
        Method.BINDING, MessageClass.REQUEST, tid, [], integrity_sha256_key=b"k"
    )
    # A MESSAGE-INTEGRITY and a SOFTWARE after MESSAGE-INTEGRITY-SHA256 are both ignored.
    extra = struct.pack(">HH", AttrType.MESSAGE_INTEGRITY, 20) + bytes(20)
    extra += struct.pack(">HH", AttrType.SOFTWARE, 4) + b"evil"
    msg = decode_message_untrusted(with_length(signed + extra))
    assert [t for t, _ in msg.attributes] == [AttrType.MESSAGE_INTEGRITY_SHA256]
    assert msg.integrity_offset is None
    assert verify_integrity_sha256(msg, b"k")


def test_truncated_sha256_integrity_verifies() -> None:
    """RFC 8489 §14.6: MESSAGE-INTEGRITY-SHA256 may be truncated to 16..32 bytes."""
    head = encode_message(
        Method.BINDING, MessageClass.REQUEST, RFC5769_TID, [(AttrType.USERNAME, b"bob")]
    )
    final_length = len(head) - 20 + 4 + 16
    covered = head[:2] + struct.pack(">H", final_length) + head[4:]
    mac = hmac.digest(b"k", covered, "sha256")[:16]
    raw = covered + struct.pack(">HH", AttrType.MESSAGE_INTEGRITY_SHA256, 16) + mac
    msg = decode_message_untrusted(raw)
    assert msg.integrity_sha256_offset == len(head)
    assert verify_integrity_sha256(msg, b"k")
    assert not verify_integrity_sha256(msg, b"other")


def test_fingerprint_is_crc32_xor_stun() -> None:
    tid = new_transaction_id()
    raw = encode_message(Method.BINDING, MessageClass.REQUEST, tid, [], fingerprint=True)
    assert len(raw) == 28
    crc = zlib.crc32(raw[:20]) ^ 0x5354554E
    assert raw[20:] == struct.pack(">HHI", AttrType.FINGERPRINT, 4, crc)


def test_wrong_fingerprint_means_not_stun() -> None:
    """RFC 8489 §6.3, §7: a bad FINGERPRINT means the message is not STUN: drop, no header."""
    bad = bytearray(RFC5769_REQUEST)
    bad[30] ^= 0x01  # a byte of SOFTWARE
    with pytest.raises(StunDecodeError) as info:
        decode_message_untrusted(bytes(bad))
    assert info.value.header is None


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        # an attribute whose length runs past the message
        (struct.pack(">HH", AttrType.SOFTWARE, 8) + b"abcd", "overruns"),
        (struct.pack(">HH", AttrType.MESSAGE_INTEGRITY, 16) + bytes(16), "MESSAGE-INTEGRITY"),
        (struct.pack(">HH", AttrType.FINGERPRINT, 8) + bytes(8), "FINGERPRINT"),
        (
            struct.pack(">HH", AttrType.MESSAGE_INTEGRITY_SHA256, 12) + bytes(12),
            "MESSAGE-INTEGRITY-SHA256",
        ),
    ],
)
def test_malformed_stun_keeps_the_header(tail: bytes, reason: str) -> None:
    tid = new_transaction_id()
    head = encode_message(Method.BINDING, MessageClass.REQUEST, tid)
    raw = head[:2] + struct.pack(">H", len(tail)) + head[4:] + tail
    with pytest.raises(StunDecodeError, match=reason) as info:
        decode_message_untrusted(raw)
    assert info.value.header is not None
    assert info.value.header.transaction_id == tid
    assert info.value.header.cls is MessageClass.REQUEST


@pytest.mark.parametrize("second", [AttrType.MESSAGE_INTEGRITY, AttrType.MESSAGE_INTEGRITY_SHA256])
def test_a_second_integrity_attribute_is_ignored(second: AttrType) -> None:
    """RFC 8489 §14.5/§14.6: attributes after MESSAGE-INTEGRITY (but MESSAGE-INTEGRITY-SHA256
    and FINGERPRINT) and after MESSAGE-INTEGRITY-SHA256 (but FINGERPRINT) are ignored: a repeated
    integrity attribute neither fails the message nor replaces the first one."""
    tid = new_transaction_id()
    key = b"k" * 16
    raw = encode_message(
        Method.BINDING,
        MessageClass.REQUEST,
        tid,
        [],
        integrity_key=key if second == AttrType.MESSAGE_INTEGRITY else None,
        integrity_sha256_key=key if second == AttrType.MESSAGE_INTEGRITY_SHA256 else None,
    )
    size = 20 if second == AttrType.MESSAGE_INTEGRITY else 32
    raw = with_length(raw + struct.pack(">HH", second, size) + bytes(size))
    msg = decode_message_untrusted(raw)
    first = raw[24 : 24 + size]
    assert [value for atype, value in msg.attributes if atype == second] == [first]


def test_fingerprint_must_be_last() -> None:
    tid = new_transaction_id()
    raw = encode_message(Method.BINDING, MessageClass.REQUEST, tid, [], fingerprint=True)
    raw = with_length(raw + struct.pack(">HH", AttrType.SOFTWARE, 4) + b"late")
    with pytest.raises(StunDecodeError, match="last") as info:
        decode_message_untrusted(raw)
    assert info.value.header is not None


def test_padding_may_hold_any_bytes() -> None:
    raw = bytearray(RFC5769_LONG_TERM_REQUEST)
    raw[20 + 4 + 18 : 20 + 4 + 20] = b"\xff\xee"  # USERNAME's padding
    msg = decode_message_untrusted(bytes(raw))
    assert msg.get(AttrType.USERNAME) == LONG_TERM_USERNAME.encode()


# ---------------------------------------------------------------------------------------------
# Headers: what is and is not STUN


def test_message_type_interleaving() -> None:
    """Method and class bits against the values RFC 8489 and RFC 8656 list."""
    cases = [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.INDICATION, 0x0011),
        (Method.BINDING, MessageClass.SUCCESS, 0x0101),
        (Method.BINDING, MessageClass.ERROR, 0x0111),
        (Method.ALLOCATE, MessageClass.REQUEST, 0x0003),
        (Method.ALLOCATE, MessageClass.SUCCESS, 0x0103),
        (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
        (Method.REFRESH, MessageClass.REQUEST, 0x0004),
        (Method.SEND, MessageClass.INDICATION, 0x0016),
        (Method.DATA, MessageClass.INDICATION, 0x0017),
        (Method.CREATE_PERMISSION, MessageClass.REQUEST, 0x0008),
        (Method.CHANNEL_BIND, MessageClass.SUCCESS, 0x0109),
        (0xFFF, MessageClass.ERROR, 0x3FFF),
    ]
    for method, cls, wire in cases:
        raw = encode_message(method, cls, RFC5769_TID)
        assert struct.unpack_from(">H", raw)[0] == wire
        header = decode_header_untrusted(raw)
        assert (header.method, header.cls) == (method, cls)


def test_classic_binding_request() -> None:
    tid = bytes(range(16))
    raw = encode_message(Method.BINDING, MessageClass.REQUEST, tid)
    assert raw == b"\x00\x01\x00\x00" + tid
    msg = decode_message_untrusted(raw)
    assert msg.header.classic
    assert msg.transaction_id == tid


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes(19),
        # ChannelData (first byte 0x40) and other top bits
        b"\x40\x00\x00\x04" + bytes(16),
        b"\x80\x01\x00\x00" + struct.pack(">I", 0x2112A442) + bytes(12),
        # length not a multiple of 4 / not matching
        b"\x00\x01\x00\x02" + struct.pack(">I", 0x2112A442) + bytes(14),
        b"\x00\x01\x00\x04" + struct.pack(">I", 0x2112A442) + bytes(12),
        # no cookie and not a Binding request: classic is accepted for Binding requests only
        b"\x01\x01\x00\x00" + bytes(16),
        b"\x00\x03\x00\x00" + bytes(16),
    ],
)
def test_not_stun(raw: bytes) -> None:
    with pytest.raises(StunDecodeError) as info:
        decode_message_untrusted(raw)
    assert info.value.header is None


def test_encode_rejects_what_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="transaction id"):
        encode_message(Method.BINDING, MessageClass.REQUEST, b"short")
    with pytest.raises(ValueError, match="12 bits"):
        encode_message(0x1000, MessageClass.REQUEST, RFC5769_TID)
    with pytest.raises(ValueError, match="too long"):
        encode_message(
            Method.BINDING, MessageClass.REQUEST, RFC5769_TID, [(AttrType.DATA, bytes(0xFFF9))]
        )


def test_new_transaction_ids() -> None:
    ids = {new_transaction_id() for _ in range(64)}
    assert len(ids) == 64
    assert all(len(i) == 12 for i in ids)


def test_get_and_unknown_comprehension_required() -> None:
    msg = decode_message_untrusted(
        encode_message(
            Method.BINDING,
            MessageClass.REQUEST,
            RFC5769_TID,
            [(0x0030, b"a"), (AttrType.SOFTWARE, b"x"), (0x0030, b"b"), (0x0031, b"")],
        )
    )
    assert msg.get(0x0030) == b"a"  # the first occurrence
    assert msg.get(0x0099) is None
    assert msg.unknown_comprehension_required(frozenset({0x0031})) == (0x0030,)
    assert msg.unknown_comprehension_required(frozenset()) == (0x0030, 0x0031)


# ---------------------------------------------------------------------------------------------
# Property tests

attribute_types = st.integers(0, 0xFFFF).filter(lambda t: t not in TRAILERS)
attribute_lists = st.lists(st.tuples(attribute_types, st.binary(max_size=40)), max_size=8)


@given(
    method=st.integers(0, 0xFFF),
    cls=st.sampled_from(list(MessageClass)),
    tid=st.binary(min_size=12, max_size=12),
    attributes=attribute_lists,
    integrity=st.none() | st.binary(max_size=32),
    integrity_sha256=st.none() | st.binary(max_size=32),
    fingerprint=st.booleans(),
)
def test_encode_decode_round_trip(
    *,
    method: int,
    cls: MessageClass,
    tid: bytes,
    attributes: list[tuple[int, bytes]],
    integrity: bytes | None,
    integrity_sha256: bytes | None,
    fingerprint: bool,
) -> None:
    raw = encode_message(
        method,
        cls,
        tid,
        attributes,
        integrity_key=integrity,
        integrity_sha256_key=integrity_sha256,
        fingerprint=fingerprint,
    )
    msg = decode_message_untrusted(raw)
    assert (msg.method, msg.cls, msg.transaction_id) == (method, cls, tid)
    assert not msg.header.classic
    assert body_without_trailers(msg) == attributes
    assert msg.has_fingerprint == fingerprint
    assert verify_integrity(msg, integrity or b"") == (integrity is not None)
    assert verify_integrity_sha256(msg, integrity_sha256 or b"") == (integrity_sha256 is not None)


@given(tid=st.binary(min_size=16, max_size=16), attributes=attribute_lists)
def test_classic_round_trip(tid: bytes, attributes: list[tuple[int, bytes]]) -> None:
    if tid[:4] == b"\x21\x12\xa4\x42":
        return  # that would be a modern request with a cookie
    msg = decode_message_untrusted(
        encode_message(Method.BINDING, MessageClass.REQUEST, tid, attributes)
    )
    assert msg.header.classic
    assert msg.transaction_id == tid
    assert list(msg.attributes) == attributes


def only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(StunDecodeError):
        decode_message_untrusted(data)
    with contextlib.suppress(StunDecodeError):
        decode_header_untrusted(data)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_errors(data: bytes) -> None:
    only_decode_errors(data)


@given(
    body=st.binary(max_size=120).map(lambda b: b[: len(b) & ~3]),
    msg_type=st.integers(0, 0x3FFF),
)
def test_arbitrary_bodies_behind_a_valid_header(body: bytes, msg_type: int) -> None:
    """A header that passes, so the attribute walk runs on arbitrary bytes."""
    raw = struct.pack(">HHI", msg_type, len(body), 0x2112A442) + bytes(12) + body
    only_decode_errors(raw)


VALID_MESSAGES = [
    RFC5769_REQUEST,
    RFC5769_IPV4_RESPONSE,
    RFC5769_IPV6_RESPONSE,
    RFC5769_LONG_TERM_REQUEST,
]


@given(
    base=st.sampled_from(VALID_MESSAGES),
    index=st.integers(0, 200),
    value=st.integers(0, 255),
)
def test_mutated_messages_raise_only_decode_errors(base: bytes, index: int, value: int) -> None:
    mutated = bytearray(base)
    mutated[index % len(base)] = value
    only_decode_errors(bytes(mutated))
    only_decode_errors(with_length(bytes(mutated)))


@given(base=st.sampled_from(VALID_MESSAGES), cut=st.integers(0, 200), extra=st.binary(max_size=12))
def test_truncated_and_extended_messages_raise_only_decode_errors(
    base: bytes, cut: int, extra: bytes
) -> None:
    only_decode_errors(base[: cut % len(base)])
    only_decode_errors(base + extra)
    if len(base) + len(extra) >= 20:
        only_decode_errors(with_length(base + extra))
        only_decode_errors(with_length(base[: max(20, cut % len(base))]))
