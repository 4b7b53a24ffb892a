"""The STUN message codec: untrusted bytes to `StunMessage`, attributes to bytes.

Theory of operation
-------------------
A server decodes every datagram it receives, so decoding is one pass over the bytes with
precompiled `struct.Struct` objects, producing plain `(type, value)` tuples; attribute *values*
are interpreted later, and only when needed, by `secureconnect.stun.attributes`.

Decoding tells three outcomes apart, because a server must act differently on each:

* not STUN at all (`StunDecodeError` with ``header=None``): drop silently. That is ChannelData,
  DTLS/RTP on a multiplexed port, garbage, and a message whose FINGERPRINT is wrong
  (RFC 8489 §6.3 and §7: the FINGERPRINT check is what tells STUN from other protocols);
* STUN with a valid header but a malformed body (`StunDecodeError` with ``header`` set): a
  server may answer a *request* with 400 Bad Request (RFC 8489 §14.8: "the request was
  malformed");
* a well-formed `StunMessage`.

RFC 8489 §14.5/§14.6: attributes after MESSAGE-INTEGRITY (other than MESSAGE-INTEGRITY-SHA256 and
FINGERPRINT), and after MESSAGE-INTEGRITY-SHA256 (other than FINGERPRINT), must be ignored. The
decoder drops them from `StunMessage.attributes`, so nothing downstream can act on attributes an
attacker appended to a message whose integrity checks out (e.g. LIFETIME=0 after a valid
MESSAGE-INTEGRITY).

Classic RFC 3489 messages (no magic cookie, a 16-byte transaction id) are accepted only as Binding
requests, the one thing a classic client (pystun3) sends to a server.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from secureconnect.stun.constants import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    MAX_ATTRIBUTES,
    AttrType,
    MessageClass,
)

_TYPE_LENGTH = struct.Struct(">HH")  # message type + length, and attribute type + length
_HEADER = struct.Struct(">HHI")  # message type, length, magic cookie
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")
_PADDING: Final = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # indexed by len(value) % 4
# Index by the two class bits: no enum lookup per packet.
_CLASSES: Final = (
    MessageClass.REQUEST,
    MessageClass.INDICATION,
    MessageClass.SUCCESS,
    MessageClass.ERROR,
)
_MI: Final = int(AttrType.MESSAGE_INTEGRITY)
_MI_SHA256: Final = int(AttrType.MESSAGE_INTEGRITY_SHA256)
_FINGERPRINT: Final = int(AttrType.FINGERPRINT)
_CLASSIC_BINDING_REQUEST: Final = 0x0001  # message type of a Binding request


@dataclass(frozen=True, slots=True)
class StunHeader:
    """The fixed 20-byte header (RFC 8489 §5).

    ``transaction_id`` is 12 bytes for RFC 5389/8489 messages and 16 bytes for classic RFC 3489
    messages (bytes 4..20, where the cookie would be); ``classic`` says which.
    """

    method: int
    cls: MessageClass
    transaction_id: bytes
    classic: bool


class StunDecodeError(ValueError):
    """The one error for untrusted STUN bytes.

    `header` is set when the 20-byte header was valid (so a server may answer a *request* with
    400); None means: not STUN, drop silently.
    """

    def __init__(self, reason: str, *, header: StunHeader | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.header = header


class StunError(Exception):
    """A request that must be answered with an error response (h11's ``error_status_hint``).

    Raised anywhere in request handling and turned into a wire error response at exactly one site
    (`BindingResponder`, later the TURN server). ``attributes`` are added to that response, e.g.
    UNKNOWN-ATTRIBUTES for 420 or REALM/NONCE for 401.
    """

    def __init__(
        self,
        code: int,
        reason: str = "",
        *,
        attributes: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.attributes = attributes


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A decoded message; the attribute values are raw bytes, unpadded.

    ``attributes`` are in wire order and include MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and
    FINGERPRINT, but none of the attributes RFC 8489 §14.5/§14.6 say to ignore. ``raw`` is the
    message as received, for the integrity checks; the offsets point at the TLV (type field) of
    the integrity attributes within it.
    """

    header: StunHeader
    attributes: tuple[tuple[int, bytes], ...]
    raw: bytes = field(repr=False)
    integrity_offset: int | None = None
    integrity_sha256_offset: int | None = None

    @property
    def method(self) -> int:
        return self.header.method

    @property
    def cls(self) -> MessageClass:
        return self.header.cls

    @property
    def transaction_id(self) -> bytes:
        return self.header.transaction_id

    @property
    def has_fingerprint(self) -> bool:
        """Whether the message carried a (valid) FINGERPRINT; the decoder keeps it last."""
        attrs = self.attributes
        return bool(attrs) and attrs[-1][0] == _FINGERPRINT

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first `attr_type` attribute, or None.

        RFC 8489 §14: when an attribute appears more than once, only the first occurrence needs
        to be processed.
        """
        for atype, value in self.attributes:
            if atype == attr_type:
                return value
        return None

    def unknown_comprehension_required(self, known: frozenset[int]) -> tuple[int, ...]:
        """Comprehension-required types (below 0x8000, RFC 8489 §14) not in `known`, each once,
        in wire order: the content of a 420's UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1)."""
        # A dict keeps wire order and makes the duplicate check O(1) (a list made a message
        # of thousands of distinct types quadratic).
        unknown: dict[int, None] = {}
        for atype, _ in self.attributes:
            if atype < 0x8000 and atype not in known:
                unknown[atype] = None
        return tuple(unknown)


def decode_header_untrusted(data: bytes) -> StunHeader:
    """Decode and validate the 20-byte header of a whole message (datagram or stream frame).

    Raises `StunDecodeError` (always with ``header=None``) when `data` is not STUN.
    """
    size = len(data)
    if size < HEADER_LENGTH:
        raise StunDecodeError("shorter than a STUN header")
    msg_type, length, cookie = _HEADER.unpack_from(data)
    # RFC 8489 §5: the most significant two bits of every STUN message are zeroes.
    if msg_type & 0xC000:
        raise StunDecodeError("top two bits of the message type are not zero")
    # RFC 8489 §5: the length excludes the header; attributes are padded, so it is a multiple of 4.
    if length & 3:
        raise StunDecodeError("length is not a multiple of 4")
    if length != size - HEADER_LENGTH:
        raise StunDecodeError("length does not match the message size")
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = _CLASSES[((msg_type & 0x0100) >> 7) | ((msg_type & 0x0010) >> 4)]
    if cookie == MAGIC_COOKIE:
        return StunHeader(method, cls, bytes(data[8:HEADER_LENGTH]), False)
    # RFC 8489 §11: without the cookie the message is from an RFC 3489 client; the only thing
    # such a client sends a server that we answer is a Binding request.
    if msg_type != _CLASSIC_BINDING_REQUEST:
        raise StunDecodeError("no magic cookie and not a classic Binding request")
    return StunHeader(method, cls, bytes(data[4:HEADER_LENGTH]), True)


def decode_message_untrusted(data: bytes) -> StunMessage:  # noqa: PLR0912 - one hot loop
    """Decode one whole STUN message (a datagram, or a frame from `StreamFramer`).

    Raises `StunDecodeError`: with ``header=None`` when the bytes are not STUN, with the header
    set when they are STUN but malformed.
    """
    if type(data) is not bytes:
        data = bytes(data)
    header = decode_header_untrusted(data)
    end = len(data)
    attributes: list[tuple[int, bytes]] = []
    append = attributes.append
    unpack_from = _TYPE_LENGTH.unpack_from
    integrity: int | None = None
    integrity_sha256: int | None = None
    offset = HEADER_LENGTH
    # The work per message is bounded by the number of attributes it may carry, not by its
    # size: a 64 KiB datagram can hold 16,000 empty attributes (docs/security.md).
    budget = MAX_ATTRIBUTES
    # Both offset and end are multiples of 4, so whenever offset < end a TLV header fits.
    while offset < end:
        budget -= 1
        if budget < 0:
            raise StunDecodeError(f"more than {MAX_ATTRIBUTES} attributes", header=header)
        atype, alen = unpack_from(data, offset)
        start = offset + 4
        stop = start + alen
        if stop > end:
            raise StunDecodeError(f"attribute {atype:#06x} overruns the message", header=header)
        if atype == _FINGERPRINT:
            # RFC 8489 §14.7: FINGERPRINT is 32 bits and MUST be the last attribute.
            if alen != 4:
                raise StunDecodeError("FINGERPRINT is not 4 bytes", header=header)
            if stop != end:
                raise StunDecodeError("FINGERPRINT is not the last attribute", header=header)
            expected = zlib.crc32(memoryview(data)[:offset]) ^ FINGERPRINT_XOR
            if _U32.unpack_from(data, start)[0] != expected:
                # RFC 8489 §6.3, §7: a FINGERPRINT that does not match means this is not STUN.
                raise StunDecodeError("FINGERPRINT does not match")
            append((atype, data[start:stop]))
        elif atype == _MI:
            # RFC 8489 §14.5: "agents MUST ignore all other attributes that follow
            # MESSAGE-INTEGRITY" (but MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) - a second
            # MESSAGE-INTEGRITY included; §14.6: so is one after MESSAGE-INTEGRITY-SHA256.
            if integrity is None and integrity_sha256 is None:
                # RFC 8489 §14.5: HMAC-SHA1, 20 bytes.
                if alen != 20:
                    raise StunDecodeError("MESSAGE-INTEGRITY is not 20 bytes", header=header)
                integrity = offset
                append((atype, data[start:stop]))
        elif atype == _MI_SHA256:
            # RFC 8489 §14.6: only FINGERPRINT counts after MESSAGE-INTEGRITY-SHA256, so a
            # second one is ignored like any other trailing attribute.
            if integrity_sha256 is None:
                # At most 32 bytes, at least 16, a multiple of 4 (a truncated HMAC).
                if alen < 16 or alen > 32 or alen & 3:
                    raise StunDecodeError(
                        "MESSAGE-INTEGRITY-SHA256 has a bad length", header=header
                    )
                integrity_sha256 = offset
                append((atype, data[start:stop]))
        elif integrity is None and integrity_sha256 is None:
            append((atype, data[start:stop]))
        # else: RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY are ignored (except
        # MESSAGE-INTEGRITY-SHA256 and FINGERPRINT); §14.6: after MESSAGE-INTEGRITY-SHA256,
        # all but FINGERPRINT. Their TLVs are still walked, to find FINGERPRINT.
        # RFC 8489 §14: values are padded to 4 bytes; the padding may hold any value.
        offset = start + ((alen + 3) & ~3)
    return StunMessage(header, tuple(attributes), data, integrity, integrity_sha256)


def encode_message(
    method: int,
    cls: int,
    transaction_id: bytes,
    attributes: Iterable[tuple[int, bytes]] = (),
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """Encode a message; values are padded with zeros to 4 bytes.

    A 16-byte `transaction_id` makes a classic RFC 3489 message (no cookie written). The optional
    trailer attributes follow in their RFC order: MESSAGE-INTEGRITY (RFC 8489 §14.5),
    MESSAGE-INTEGRITY-SHA256 (§14.6), FINGERPRINT (§14.7), each computed with the header length
    already counting the attribute itself. Raises ValueError for arguments that cannot be encoded.
    """
    if not 0 <= method <= 0xFFF:
        raise ValueError(f"method {method:#x} does not fit in 12 bits")
    if not 0 <= cls <= 3:
        raise ValueError(f"class {cls} is not a STUN class")
    if len(transaction_id) == 12:
        tail = _COOKIE_BYTES + transaction_id
    elif len(transaction_id) == 16:
        tail = bytes(transaction_id)
    else:
        raise ValueError("transaction id must be 12 bytes (or 16 for classic RFC 3489)")
    parts: list[bytes] = []
    for atype, value in attributes:
        size = len(value)
        if not 0 <= atype <= 0xFFFF or size > 0xFFFF:
            raise ValueError(f"attribute {atype:#x} of {size} bytes cannot be encoded")
        parts.append(_TYPE_LENGTH.pack(atype, size))
        parts.append(value)
        parts.append(_PADDING[size & 3])
    body = b"".join(parts)
    length = len(body)
    final_length = (
        length
        + (24 if integrity_key is not None else 0)
        + (36 if integrity_sha256_key is not None else 0)
        + (8 if fingerprint else 0)
    )
    if final_length > 0xFFFC:
        raise ValueError("message too long for the 16-bit length field")
    # RFC 8489 §5, Figure 3: the method's 12 bits interleaved with the two class bits.
    msg_type = (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )
    if integrity_key is not None:
        length += 24
        mac = hmac.digest(integrity_key, _TYPE_LENGTH.pack(msg_type, length) + tail + body, "sha1")
        body += _TYPE_LENGTH.pack(_MI, 20) + mac
    if integrity_sha256_key is not None:
        length += 36
        head = _TYPE_LENGTH.pack(msg_type, length)
        mac = hmac.digest(integrity_sha256_key, head + tail + body, "sha256")
        body += _TYPE_LENGTH.pack(_MI_SHA256, 32) + mac
    if fingerprint:
        length += 8
        crc = zlib.crc32(_TYPE_LENGTH.pack(msg_type, length) + tail + body) ^ FINGERPRINT_XOR
        body += _TYPE_LENGTH.pack(_FINGERPRINT, 4) + _U32.pack(crc)
    return _TYPE_LENGTH.pack(msg_type, length) + tail + body


def _verify_hmac(msg: StunMessage, offset: int | None, key: bytes, digest: str) -> bool:
    """Recompute the HMAC of the integrity attribute at `offset` over ``raw[:offset]`` with the
    length field rewritten to end right after that attribute (RFC 8489 §14.5, §14.6)."""
    if offset is None:
        return False
    raw = msg.raw
    size = _U16.unpack_from(raw, offset + 2)[0]
    length = offset - HEADER_LENGTH + 4 + size
    covered = b"".join((raw[:2], _U16.pack(length), raw[4:offset]))
    mac = hmac.digest(key, covered, digest)[:size]
    return hmac.compare_digest(mac, raw[offset + 4 : offset + 4 + size])


def verify_integrity(msg: StunMessage, key: bytes) -> bool:
    """Whether MESSAGE-INTEGRITY (HMAC-SHA1) checks under `key`; False when it is absent."""
    return _verify_hmac(msg, msg.integrity_offset, key, "sha1")


def verify_integrity_sha256(msg: StunMessage, key: bytes) -> bool:
    """Whether MESSAGE-INTEGRITY-SHA256 (possibly truncated, RFC 8489 §14.6) checks under `key`;
    False when it is absent."""
    return _verify_hmac(msg, msg.integrity_sha256_offset, key, "sha256")


def _long_term_input(username: str, realm: str, password: str) -> bytes:
    # RFC 8489 §9.2.2: key = H(username ":" OpaqueString(realm) ":" OpaqueString(password)).
    # The OpaqueString/SASLprep step is the caller's: the strings are used as given, in UTF-8.
    return f"{username}:{realm}:{password}".encode()


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """The long-term credential key for MESSAGE-INTEGRITY: MD5(username:realm:password)."""
    # RFC 8489 §9.2.2 mandates MD5 here (it is an HMAC key, not a password hash we chose).
    return hashlib.md5(_long_term_input(username, realm, password)).digest()  # noqa: S324


def long_term_key_sha256(username: str, realm: str, password: str) -> bytes:
    """The long-term key when PASSWORD-ALGORITHM is SHA-256 (RFC 8489 §9.2.2, §18.5)."""
    return hashlib.sha256(_long_term_input(username, realm, password)).digest()


def new_transaction_id() -> bytes:
    """A fresh 96-bit transaction id, cryptographically random (RFC 8489 §5)."""
    return secrets.token_bytes(12)
