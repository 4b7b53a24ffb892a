"""Wire numbers of STUN and the protocols built on it (TURN, NAT behaviour discovery, ICE).

Everything here is a registry value from an RFC; the enums are IntEnums so that they compare equal
to the plain ints a decoder produces, and the TURN component imports them as they are.
"""

from __future__ import annotations

import enum
from typing import Final

#: RFC 8489 §5: the fixed value in bytes 4..8 of every RFC 5389/8489 message.
MAGIC_COOKIE: Final = 0x2112A442

#: RFC 8489 §5: every STUN message starts with a 20-byte header.
HEADER_LENGTH: Final = 20

#: RFC 8489 §14.7: FINGERPRINT is the CRC-32 of the message XOR this value ("STUN" in ASCII).
FINGERPRINT_XOR: Final = 0x5354554E

#: RFC 8489 §14.3: USERNAME is fewer than 509 bytes (RFC 5389 §15.3 said fewer than 513); the
#: larger bound accepts both.
MAX_USERNAME_BYTES: Final = 513

#: Attributes one message may carry (TLVs walked, including ignored ones after
#: MESSAGE-INTEGRITY). No RFC names a limit; the largest message we take is a CreatePermission
#: for every allowed peer (64 by default) plus the half-dozen authentication attributes, so 128
#: leaves room while bounding the work a 64 KiB datagram can ask for (docs/security.md).
MAX_ATTRIBUTES: Final = 128

#: RFC 8489 §14.9/§14.10/§14.14 and §14.8: REALM, NONCE, SOFTWARE and the ERROR-CODE reason are
#: fewer than 128 characters, "which can be as long as 763 bytes".
MAX_TEXT_BYTES: Final = 763


class MessageClass(enum.IntEnum):
    """The two class bits of a STUN message type (RFC 8489 §5, §6)."""

    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


class Method(enum.IntEnum):
    """STUN methods (RFC 8489 §18.2 registry): Binding from RFC 8489 §3, the rest from TURN
    (RFC 8656 §17: Allocate, Refresh, Send, Data, CreatePermission, ChannelBind)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class AttrType(enum.IntEnum):
    """STUN attribute types (RFC 8489 §18.3 registry).

    Types below 0x8000 are comprehension-required: a server that does not understand one must
    answer 420 (RFC 8489 §6.3.1, §14). Sources: RFC 8489 §14 (STUN); RFC 8656 §18 (TURN);
    RFC 5780 §7 (NAT behaviour discovery); RFC 3489 §11.2 (classic STUN, reserved since RFC 5389);
    RFC 8445 §16.1 (ICE); RFC 7982 §3.2 (TRANSACTION-TRANSMIT-COUNTER).
    """

    MAPPED_ADDRESS = 0x0001  # RFC 8489 §14.1
    RESPONSE_ADDRESS = 0x0002  # RFC 3489 §11.2.2 (reserved)
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    SOURCE_ADDRESS = 0x0004  # RFC 3489 §11.2.5 (reserved)
    CHANGED_ADDRESS = 0x0005  # RFC 3489 §11.2.3 (reserved)
    USERNAME = 0x0006  # RFC 8489 §14.3
    MESSAGE_INTEGRITY = 0x0008  # RFC 8489 §14.5
    ERROR_CODE = 0x0009  # RFC 8489 §14.8
    UNKNOWN_ATTRIBUTES = 0x000A  # RFC 8489 §14.13
    CHANNEL_NUMBER = 0x000C  # RFC 8656 §18.1
    LIFETIME = 0x000D  # RFC 8656 §18.2
    XOR_PEER_ADDRESS = 0x0012  # RFC 8656 §18.3
    DATA = 0x0013  # RFC 8656 §18.4
    REALM = 0x0014  # RFC 8489 §14.9
    NONCE = 0x0015  # RFC 8489 §14.10
    XOR_RELAYED_ADDRESS = 0x0016  # RFC 8656 §18.5
    REQUESTED_ADDRESS_FAMILY = 0x0017  # RFC 8656 §18.6
    EVEN_PORT = 0x0018  # RFC 8656 §18.7
    REQUESTED_TRANSPORT = 0x0019  # RFC 8656 §18.8
    DONT_FRAGMENT = 0x001A  # RFC 8656 §18.9
    MESSAGE_INTEGRITY_SHA256 = 0x001C  # RFC 8489 §14.6
    PASSWORD_ALGORITHM = 0x001D  # RFC 8489 §14.12
    USERHASH = 0x001E  # RFC 8489 §14.4
    XOR_MAPPED_ADDRESS = 0x0020  # RFC 8489 §14.2
    RESERVATION_TOKEN = 0x0022  # RFC 8656 §18.10
    PRIORITY = 0x0024  # RFC 8445 §16.1
    USE_CANDIDATE = 0x0025  # RFC 8445 §16.1
    PADDING = 0x0026  # RFC 5780 §7.6
    RESPONSE_PORT = 0x0027  # RFC 5780 §7.5
    ADDITIONAL_ADDRESS_FAMILY = 0x8000  # RFC 8656 §18.11
    ADDRESS_ERROR_CODE = 0x8001  # RFC 8656 §18.12
    PASSWORD_ALGORITHMS = 0x8002  # RFC 8489 §14.11
    ALTERNATE_DOMAIN = 0x8003  # RFC 8489 §14.16
    ICMP = 0x8004  # RFC 8656 §18.13
    SOFTWARE = 0x8022  # RFC 8489 §14.14
    ALTERNATE_SERVER = 0x8023  # RFC 8489 §14.15
    TRANSACTION_TRANSMIT_COUNTER = 0x8025  # RFC 7982 §3.2
    CACHE_TIMEOUT = 0x8027  # RFC 5780 §9.1
    FINGERPRINT = 0x8028  # RFC 8489 §14.7
    ICE_CONTROLLED = 0x8029  # RFC 8445 §16.1
    ICE_CONTROLLING = 0x802A  # RFC 8445 §16.1
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 §7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 §7.4


class ErrorCode(enum.IntEnum):
    """ERROR-CODE values (RFC 8489 §14.8 and §18.4 registry; TURN codes from RFC 8656 §19)."""

    TRY_ALTERNATE = 300
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    UNKNOWN_ATTRIBUTE = 420
    ALLOCATION_MISMATCH = 437
    STALE_NONCE = 438
    ADDRESS_FAMILY_NOT_SUPPORTED = 440
    WRONG_CREDENTIALS = 441
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442
    PEER_ADDRESS_FAMILY_MISMATCH = 443
    ALLOCATION_QUOTA_REACHED = 486
    SERVER_ERROR = 500
    INSUFFICIENT_CAPACITY = 508


#: The reason phrases the RFCs recommend (RFC 8489 §14.8, RFC 8656 §19). Sent only when a
#: deployment asks for them: every byte of an unauthenticated reply is amplification.
REASON_PHRASES: Final[dict[int, str]] = {
    ErrorCode.TRY_ALTERNATE: "Try Alternate",
    ErrorCode.BAD_REQUEST: "Bad Request",
    ErrorCode.UNAUTHORIZED: "Unauthorized",
    ErrorCode.FORBIDDEN: "Forbidden",
    ErrorCode.UNKNOWN_ATTRIBUTE: "Unknown Attribute",
    ErrorCode.ALLOCATION_MISMATCH: "Allocation Mismatch",
    ErrorCode.STALE_NONCE: "Stale Nonce",
    ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED: "Address Family not Supported",
    ErrorCode.WRONG_CREDENTIALS: "Wrong Credentials",
    ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL: "Unsupported Transport Protocol",
    ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH: "Peer Address Family Mismatch",
    ErrorCode.ALLOCATION_QUOTA_REACHED: "Allocation Quota Reached",
    ErrorCode.SERVER_ERROR: "Server Error",
    ErrorCode.INSUFFICIENT_CAPACITY: "Insufficient Capacity",
}
