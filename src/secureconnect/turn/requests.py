"""What TURN requests ask for: the attribute checks that need no server state.

Pure functions over a decoded :class:`~secureconnect.stun.StunMessage`; each raises
``StunError`` with the code the RFC step names, and :class:`~secureconnect.turn.core.TurnCore`
turns it into the error response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from secureconnect.stun import (
    AttrType,
    ErrorCode,
    Method,
    StunDecodeError,
    StunError,
    StunMessage,
    decode_u32_untrusted,
)

UDP_PROTOCOL: Final = 17  # RFC 8656 §18.8: REQUESTED-TRANSPORT carries an IANA protocol number
FAMILIES: Final = {0x01: 4, 0x02: 6}  # RFC 8656 §18.6: REQUESTED-ADDRESS-FAMILY values
ADDITIONAL_FAMILY_ERROR: Final = 0x02

A = AttrType
#: RFC 8489 §9.2 authentication attributes (USERHASH is understood as "no USERNAME": 400).
_COMMON: Final = frozenset(
    {
        A.USERNAME,
        A.MESSAGE_INTEGRITY,
        A.MESSAGE_INTEGRITY_SHA256,
        A.REALM,
        A.NONCE,
        A.USERHASH,
        A.PASSWORD_ALGORITHM,
    }
)
#: Comprehension-required attributes each request understands (others get 420).
KNOWN: Final[dict[int, frozenset[int]]] = {
    Method.ALLOCATE: _COMMON
    | {
        A.REQUESTED_TRANSPORT,
        A.LIFETIME,
        A.DONT_FRAGMENT,
        A.EVEN_PORT,
        A.RESERVATION_TOKEN,
        A.REQUESTED_ADDRESS_FAMILY,
    },
    Method.REFRESH: _COMMON | {A.LIFETIME, A.REQUESTED_ADDRESS_FAMILY},
    Method.CREATE_PERMISSION: _COMMON | {A.XOR_PEER_ADDRESS},
    Method.CHANNEL_BIND: _COMMON | {A.CHANNEL_NUMBER, A.XOR_PEER_ADDRESS},
}
NO_INTEGRITY_CODES: Final = frozenset({ErrorCode.UNAUTHORIZED, ErrorCode.STALE_NONCE})


@dataclass(frozen=True, slots=True)
class AllocateAsks:
    """What an Allocate request asks for, checked."""

    family: int
    token: bytes | None
    even: bool
    reserve: bool
    dont_fragment: bool
    additional: bool


def allocate_asks(msg: StunMessage) -> AllocateAsks:
    """The attribute checks of RFC 8656 §7.2, in the RFC's order; raises StunError."""
    # "If the request does not contain a REQUESTED-TRANSPORT attribute, or ... is malformed
    # ... 400"; "if the value ... is not allowed ... 442 (Unsupported Transport Protocol)".
    transport = msg.get(A.REQUESTED_TRANSPORT)
    if transport is None or len(transport) != 4:
        raise StunError(ErrorCode.BAD_REQUEST, "REQUESTED-TRANSPORT missing or malformed")
    if transport[0] != UDP_PROTOCOL:
        raise StunError(ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL)
    token = msg.get(A.RESERVATION_TOKEN)
    even_port = msg.get(A.EVEN_PORT)
    family_value = msg.get(A.REQUESTED_ADDRESS_FAMILY)
    additional = msg.get(A.ADDITIONAL_ADDRESS_FAMILY)
    # "If the request contains a RESERVATION-TOKEN attribute and an EVEN-PORT attribute ... 400";
    # likewise RESERVATION-TOKEN with REQUESTED-ADDRESS-FAMILY.
    if token is not None and (even_port is not None or family_value is not None):
        raise StunError(ErrorCode.BAD_REQUEST, "RESERVATION-TOKEN with EVEN-PORT or family")
    if token is not None and len(token) != 8:
        raise StunError(ErrorCode.BAD_REQUEST, "RESERVATION-TOKEN must be 8 bytes")
    if even_port is not None and len(even_port) != 1:
        raise StunError(ErrorCode.BAD_REQUEST, "EVEN-PORT must be 1 byte")
    # REQUESTED-ADDRESS-FAMILY together with ADDITIONAL-ADDRESS-FAMILY: 400.
    if family_value is not None and additional is not None:
        raise StunError(ErrorCode.BAD_REQUEST, "two address family attributes")
    # RFC 8656 §7.2: "If the request contains an ADDITIONAL-ADDRESS-FAMILY attribute and the
    # attribute value is 0x01 (IPv4 address family), then the server MUST reject the request
    # with a 400 (Bad Request) error." It can only ask for IPv6 (0x02) on top of IPv4.
    if additional is not None and (len(additional) != 4 or additional[0] != 0x02):
        raise StunError(ErrorCode.BAD_REQUEST, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")
    family = 4
    if family_value is not None:
        if len(family_value) != 4:
            raise StunError(ErrorCode.BAD_REQUEST, "REQUESTED-ADDRESS-FAMILY malformed")
        family = FAMILIES.get(family_value[0], 0)  # 0: unsupported, 440 follows
    return AllocateAsks(
        family=family,
        token=token,
        even=even_port is not None,
        reserve=even_port is not None and bool(even_port[0] & 0x80),
        dont_fragment=msg.get(A.DONT_FRAGMENT) is not None,
        additional=additional is not None,
    )


def desired_lifetime(msg: StunMessage, default: int, maximum: int, cap: float | None = None) -> int:
    """RFC 8656 §7.2: the "desired lifetime" - min(requested, ``maximum``), at least
    ``default``; LIFETIME 0 (Refresh only) means delete; ``cap`` (seconds, strict expiry) bounds
    the result. A malformed LIFETIME is 400."""
    value = msg.get(A.LIFETIME)
    if value is None:
        lifetime = default
    else:
        try:
            requested = decode_u32_untrusted(value)
        except StunDecodeError:
            raise StunError(ErrorCode.BAD_REQUEST, "malformed LIFETIME") from None
        if requested == 0 and msg.method == Method.REFRESH:
            return 0
        lifetime = max(min(requested, maximum), default)
    if cap is not None:
        lifetime = max(0, min(lifetime, int(cap)))
    return lifetime
