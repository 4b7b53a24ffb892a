"""Codecs for STUN attribute values (the V of each TLV; padding is the message codec's job).

Addresses are ``(ip, port)`` with ``ip`` in the canonical text form of `ipaddress` ("192.0.2.1",
compressed IPv6). An IPv4-mapped IPv6 address ("::ffff:192.0.2.1", what a dual-stack socket
reports for an IPv4 peer) is encoded as the IPv4 address it is: that is the address the client's
packets came from, and the one it expects to read back.

Every ``decode_*_untrusted`` function raises `StunDecodeError` and nothing else.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Iterable
from typing import Final

from secureconnect.stun.constants import MAGIC_COOKIE, MAX_TEXT_BYTES
from secureconnect.stun.message import StunDecodeError

FAMILY_IPV4: Final = 0x01
FAMILY_IPV6: Final = 0x02

_ADDRESS_V4 = struct.Struct(">xBHI")  # reserved, family, port, IPv4 address (RFC 8489 §14.1)
_ADDRESS_HEAD = struct.Struct(">xBH")  # reserved, family, port; the IPv6 address follows
_ERROR_HEAD = struct.Struct(">xxBB")  # 21 reserved bits, class (3 bits), number (RFC 8489 §14.8)
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")
_PORT_XOR: Final = MAGIC_COOKIE >> 16

#: RFC 5780 §7.2: the "change IP" (A) and "change port" (B) flags of CHANGE-REQUEST.
CHANGE_IP_FLAG: Final = 0x04
CHANGE_PORT_FLAG: Final = 0x02


@functools.lru_cache(maxsize=4096)
def _ip_to_int(ip: str) -> tuple[int, int]:
    """(family, address as int) for an IP string; cached because a server encodes the same few
    thousand client addresses over and over, and `ipaddress` parsing costs microseconds."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        if mapped is None:
            return FAMILY_IPV6, int(addr)
        addr = mapped
    return FAMILY_IPV4, int(addr)


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")


def encode_address(ip: str, port: int) -> bytes:
    """MAPPED-ADDRESS layout (RFC 8489 §14.1), also used by OTHER-ADDRESS, RESPONSE-ORIGIN,
    ALTERNATE-SERVER and the RFC 3489 CHANGED-ADDRESS and SOURCE-ADDRESS."""
    _check_port(port)
    family, value = _ip_to_int(ip)
    if family == FAMILY_IPV4:
        return _ADDRESS_V4.pack(FAMILY_IPV4, port, value)
    return _ADDRESS_HEAD.pack(FAMILY_IPV6, port) + value.to_bytes(16, "big")


def _ipv4_text(value: bytes, offset: int) -> str:
    return f"{value[offset]}.{value[offset + 1]}.{value[offset + 2]}.{value[offset + 3]}"


def decode_address_untrusted(value: bytes) -> tuple[str, int]:
    """Decode a MAPPED-ADDRESS-layout value; the first (reserved) byte is ignored."""
    size = len(value)
    if size == 8:
        family, port, _ = _ADDRESS_V4.unpack(value)
        if family == FAMILY_IPV4:
            return _ipv4_text(value, 4), port
    elif size == 20:
        family, port = _ADDRESS_HEAD.unpack_from(value)
        if family == FAMILY_IPV6:
            return str(ipaddress.IPv6Address(bytes(value[4:20]))), port
    raise StunDecodeError("address attribute has a bad family or length")


def encode_xor_address(ip: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS layout (RFC 8489 §14.2): the port XOR the cookie's top 16 bits, an
    IPv4 address XOR the cookie, an IPv6 address XOR cookie || transaction id.

    Also used by XOR-PEER-ADDRESS and XOR-RELAYED-ADDRESS (RFC 8656 §18.3, §18.5).
    """
    _check_port(port)
    if len(transaction_id) != 12:
        raise ValueError("XOR addresses need a 12-byte transaction id")
    family, value = _ip_to_int(ip)
    if family == FAMILY_IPV4:
        return _ADDRESS_V4.pack(FAMILY_IPV4, port ^ _PORT_XOR, value ^ MAGIC_COOKIE)
    pad = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
    return _ADDRESS_HEAD.pack(FAMILY_IPV6, port ^ _PORT_XOR) + (value ^ pad).to_bytes(16, "big")


def decode_xor_address_untrusted(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """Decode an XOR-MAPPED-ADDRESS-layout value (RFC 8489 §14.2); the IP comes back in its
    canonical text form (what ``ipaddress`` prints), so it can key tables directly."""
    if len(transaction_id) != 12:
        raise StunDecodeError("XOR addresses need a 12-byte transaction id")
    size = len(value)
    if size == 8:
        family, port, packed = _ADDRESS_V4.unpack(value)
        if family == FAMILY_IPV4:
            ip = packed ^ MAGIC_COOKIE
            text = f"{ip >> 24}.{(ip >> 16) & 0xFF}.{(ip >> 8) & 0xFF}.{ip & 0xFF}"
            return text, port ^ _PORT_XOR
    elif size == 20:
        family, port = _ADDRESS_HEAD.unpack_from(value)
        if family == FAMILY_IPV6:
            pad = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
            ip6 = int.from_bytes(value[4:20], "big") ^ pad
            return str(ipaddress.IPv6Address(ip6)), port ^ _PORT_XOR
    raise StunDecodeError("XOR address attribute has a bad family or length")


def encode_error_code(code: int, reason: str = "") -> bytes:
    """ERROR-CODE (RFC 8489 §14.8): the hundreds digit as the class, the rest as the number,
    then the UTF-8 reason phrase (padding is added by the message encoder)."""
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} is outside 300-699")
    phrase = reason.encode()
    if len(phrase) > MAX_TEXT_BYTES:
        raise ValueError("reason phrase is longer than 763 bytes")
    return _ERROR_HEAD.pack(code // 100, code % 100) + phrase


def decode_error_code_untrusted(value: bytes) -> tuple[int, str]:
    """Decode ERROR-CODE to (code, reason phrase)."""
    if len(value) < 4:
        raise StunDecodeError("ERROR-CODE is shorter than 4 bytes")
    klass, number = _ERROR_HEAD.unpack_from(value)
    klass &= 0x07  # RFC 8489 §14.8: the class is 3 bits; the bits above are reserved
    # RFC 8489 §14.8: class 3-6, number 0-99.
    if not 3 <= klass <= 6 or number > 99:
        raise StunDecodeError("ERROR-CODE is outside 300-699")
    return klass * 100 + number, decode_text_untrusted(value[4:], MAX_TEXT_BYTES)


def encode_unknown_attributes(types: Iterable[int]) -> bytes:
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.13): a list of 16-bit attribute types."""
    return b"".join(_U16.pack(t) for t in types)


def decode_unknown_attributes_untrusted(value: bytes) -> tuple[int, ...]:
    """Decode UNKNOWN-ATTRIBUTES to the listed attribute types."""
    if len(value) & 1:
        raise StunDecodeError("UNKNOWN-ATTRIBUTES has an odd length")
    return tuple(t for (t,) in _U16.iter_unpack(value))


def encode_change_request(change_ip: bool, change_port: bool) -> bytes:
    """CHANGE-REQUEST (RFC 5780 §7.2)."""
    flags = (CHANGE_IP_FLAG if change_ip else 0) | (CHANGE_PORT_FLAG if change_port else 0)
    return _U32.pack(flags)


def decode_change_request_untrusted(value: bytes) -> tuple[bool, bool]:
    """Decode CHANGE-REQUEST to (change_ip, change_port); the other 30 bits are ignored."""
    if len(value) != 4:
        raise StunDecodeError("CHANGE-REQUEST is not 4 bytes")
    flags = value[3]
    return bool(flags & CHANGE_IP_FLAG), bool(flags & CHANGE_PORT_FLAG)


def encode_u32(value: int) -> bytes:
    """A 32-bit unsigned value (LIFETIME, RFC 8656 §18.2, and the like)."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value} does not fit in 32 bits")
    return _U32.pack(value)


def decode_u32_untrusted(value: bytes) -> int:
    """Decode a 32-bit unsigned value (LIFETIME and the like)."""
    if len(value) != 4:
        raise StunDecodeError("expected a 4-byte value")
    return int(_U32.unpack(value)[0])


def decode_u16_untrusted(value: bytes) -> int:
    """Decode a 16-bit value in the first two bytes of a 2- or 4-byte value (RESPONSE-PORT,
    RFC 5780 §7.5, and CHANNEL-NUMBER, RFC 8656 §18.1, are a 16-bit field plus 2 RFFU bytes)."""
    if len(value) not in (2, 4):
        raise StunDecodeError("expected a 2- or 4-byte value")
    return int(_U16.unpack_from(value)[0])


def decode_text_untrusted(value: bytes, max_len: int) -> str:
    """Decode a UTF-8 text attribute no longer than `max_len` bytes (USERNAME: 513,
    REALM/NONCE/SOFTWARE: 763; see `secureconnect.stun.constants`)."""
    if len(value) > max_len:
        raise StunDecodeError(f"text attribute is longer than {max_len} bytes")
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        raise StunDecodeError("text attribute is not UTF-8") from None
