"""Attribute value codecs: addresses, XOR addresses, ERROR-CODE, flags, integers, text."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secureconnect.stun import (
    MAX_TEXT_BYTES,
    MAX_USERNAME_BYTES,
    StunDecodeError,
    decode_address_untrusted,
    decode_change_request_untrusted,
    decode_error_code_untrusted,
    decode_text_untrusted,
    decode_u16_untrusted,
    decode_u32_untrusted,
    decode_unknown_attributes_untrusted,
    decode_xor_address_untrusted,
    encode_address,
    encode_change_request,
    encode_error_code,
    encode_u32,
    encode_unknown_attributes,
    encode_xor_address,
)

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")  # RFC 5769's transaction id

ports = st.integers(0, 0xFFFF)
ips = st.ip_addresses().map(str)
tids = st.binary(min_size=12, max_size=12)


def test_rfc5769_xor_addresses() -> None:
    """RFC 5769 §2.2 and §2.3 XOR-MAPPED-ADDRESS values, both directions."""
    v4 = bytes.fromhex("0001a147e112a643")
    v6 = bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")
    assert decode_xor_address_untrusted(v4, TID) == ("192.0.2.1", 32853)
    assert encode_xor_address("192.0.2.1", 32853, TID) == v4
    address = ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert decode_xor_address_untrusted(v6, TID) == address
    assert encode_xor_address(*address, TID) == v6


def test_plain_address_layout() -> None:
    assert encode_address("192.0.2.1", 3478) == bytes.fromhex("00010d96c0000201")
    assert decode_address_untrusted(bytes.fromhex("ff010d96c0000201")) == ("192.0.2.1", 3478)
    value = encode_address("2001:db8::1", 443)
    assert len(value) == 20
    assert decode_address_untrusted(value) == ("2001:db8::1", 443)


def test_ipv4_mapped_addresses_are_written_as_ipv4() -> None:
    """A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d; it expects a.b.c.d back."""
    assert encode_address("::ffff:192.0.2.7", 1) == encode_address("192.0.2.7", 1)
    value = encode_xor_address("::ffff:192.0.2.7", 3478, TID)
    assert decode_xor_address_untrusted(value, TID) == ("192.0.2.7", 3478)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        bytes.fromhex("0002 0d96 c0000201"),  # IPv6 family with an IPv4 length
        bytes.fromhex("0001 0d96") + bytes(16),  # IPv4 family with an IPv6 length
        bytes.fromhex("0003 0d96 c0000201"),  # unknown family
        bytes(12),
    ],
)
def test_bad_addresses(value: bytes) -> None:
    with pytest.raises(StunDecodeError):
        decode_address_untrusted(value)
    with pytest.raises(StunDecodeError):
        decode_xor_address_untrusted(value, TID)


def test_xor_address_needs_a_12_byte_transaction_id() -> None:
    with pytest.raises(StunDecodeError):
        decode_xor_address_untrusted(encode_xor_address("192.0.2.1", 1, TID), bytes(16))
    with pytest.raises(ValueError, match="12-byte"):
        encode_xor_address("192.0.2.1", 1, bytes(16))


def test_encoders_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="port"):
        encode_address("192.0.2.1", 65536)
    with pytest.raises(ValueError, match="does not appear to be"):
        encode_address("not an ip", 1)
    with pytest.raises(ValueError, match="300-699"):
        encode_error_code(200)
    with pytest.raises(ValueError, match="763"):
        encode_error_code(400, "x" * 764)
    with pytest.raises(ValueError, match="32 bits"):
        encode_u32(-1)


def test_error_code() -> None:
    assert encode_error_code(420, "Unknown Attribute") == b"\x00\x00\x04\x14Unknown Attribute"
    assert encode_error_code(438) == b"\x00\x00\x04\x26"
    assert decode_error_code_untrusted(b"\x00\x00\x04\x14Unknown Attribute") == (
        420,
        "Unknown Attribute",
    )
    assert decode_error_code_untrusted(b"\xff\xff\xfd\x00") == (500, "")  # reserved bits ignored
    for bad in (b"\x00\x00\x04", b"\x00\x00\x02\x00", b"\x00\x00\x07\x00", b"\x00\x00\x04\x64"):
        with pytest.raises(StunDecodeError):
            decode_error_code_untrusted(bad)
    with pytest.raises(StunDecodeError, match="UTF-8"):
        decode_error_code_untrusted(b"\x00\x00\x04\x00\xff\xfe")


def test_unknown_attributes() -> None:
    value = encode_unknown_attributes([0x0003, 0x0027])
    assert value == b"\x00\x03\x00\x27"
    assert decode_unknown_attributes_untrusted(value) == (0x0003, 0x0027)
    with pytest.raises(StunDecodeError):
        decode_unknown_attributes_untrusted(b"\x00")


@pytest.mark.parametrize(
    ("flags", "value"),
    [
        ((False, False), b"\x00\x00\x00\x00"),
        ((False, True), b"\x00\x00\x00\x02"),
        ((True, False), b"\x00\x00\x00\x04"),
        ((True, True), b"\x00\x00\x00\x06"),
    ],
)
def test_change_request(flags: tuple[bool, bool], value: bytes) -> None:
    assert encode_change_request(*flags) == value
    assert decode_change_request_untrusted(value) == flags


def test_change_request_ignores_other_bits_and_checks_length() -> None:
    assert decode_change_request_untrusted(b"\xff\xff\xff\xf9") == (False, False)
    with pytest.raises(StunDecodeError):
        decode_change_request_untrusted(b"\x00\x00\x06")


def test_integers() -> None:
    assert encode_u32(600) == b"\x00\x00\x02\x58"
    assert decode_u32_untrusted(b"\x00\x00\x02\x58") == 600
    assert decode_u16_untrusted(b"\x40\x01\x00\x00") == 0x4001  # CHANNEL-NUMBER + RFFU
    assert decode_u16_untrusted(b"\x0d\x96") == 3478
    for bad in (b"", b"\x00", b"\x00\x00\x00", b"\x00" * 5):
        with pytest.raises(StunDecodeError):
            decode_u32_untrusted(bad)
        with pytest.raises(StunDecodeError):
            decode_u16_untrusted(bad)


def test_text() -> None:
    assert decode_text_untrusted("マトリックス".encode(), MAX_USERNAME_BYTES) == "マトリックス"
    assert decode_text_untrusted(b"x" * MAX_TEXT_BYTES, MAX_TEXT_BYTES) == "x" * MAX_TEXT_BYTES
    with pytest.raises(StunDecodeError, match="longer"):
        decode_text_untrusted(b"x" * (MAX_USERNAME_BYTES + 1), MAX_USERNAME_BYTES)
    with pytest.raises(StunDecodeError, match="UTF-8"):
        decode_text_untrusted(b"\xc3", MAX_TEXT_BYTES)


# ---------------------------------------------------------------------------------------------
# Property tests


@given(ip=ips, port=ports)
def test_address_round_trip(ip: str, port: int) -> None:
    expected = ipaddress.ip_address(ip)
    if isinstance(expected, ipaddress.IPv6Address) and expected.ipv4_mapped is not None:
        expected = expected.ipv4_mapped
    assert decode_address_untrusted(encode_address(ip, port)) == (str(expected), port)


@given(ip=ips, port=ports, tid=tids)
def test_xor_address_round_trip(ip: str, port: int, tid: bytes) -> None:
    expected = ipaddress.ip_address(ip)
    if isinstance(expected, ipaddress.IPv6Address) and expected.ipv4_mapped is not None:
        expected = expected.ipv4_mapped
    value = encode_xor_address(ip, port, tid)
    assert decode_xor_address_untrusted(value, tid) == (str(expected), port)
    # RFC 8489 §14.2: the port is XORed with the top 16 bits of the magic cookie.
    assert value[2:4] == (port ^ 0x2112).to_bytes(2, "big")


@given(code=st.integers(300, 699), reason=st.text(max_size=40))
def test_error_code_round_trip(code: int, reason: str) -> None:
    assert decode_error_code_untrusted(encode_error_code(code, reason)) == (code, reason)


@given(types=st.lists(st.integers(0, 0xFFFF), max_size=20))
def test_unknown_attributes_round_trip(types: list[int]) -> None:
    assert decode_unknown_attributes_untrusted(encode_unknown_attributes(types)) == tuple(types)


DECODERS: list[Callable[[bytes], object]] = [
    decode_address_untrusted,
    lambda v: decode_xor_address_untrusted(v, TID),
    lambda v: decode_xor_address_untrusted(v, v[:12]),
    decode_error_code_untrusted,
    decode_unknown_attributes_untrusted,
    decode_change_request_untrusted,
    decode_u32_untrusted,
    decode_u16_untrusted,
    lambda v: decode_text_untrusted(v, MAX_USERNAME_BYTES),
    lambda v: decode_text_untrusted(v, 8),
]


@pytest.mark.parametrize("decode", DECODERS)
@given(value=st.binary(max_size=40))
def test_decoders_raise_only_decode_errors(decode: Callable[[bytes], object], value: bytes) -> None:
    with contextlib.suppress(StunDecodeError):
        decode(value)


@given(value=st.binary(min_size=20, max_size=20) | st.binary(min_size=8, max_size=8))
def test_address_decoders_on_right_sized_garbage(value: bytes) -> None:
    """Right-sized values get past the length check, so the family and address paths run."""
    for decode in DECODERS[:3]:
        with contextlib.suppress(StunDecodeError):
            decode(value)
