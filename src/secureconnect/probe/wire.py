"""The probe's STUN/TURN messages, sans-IO: requests out as bytes, server replies read as
untrusted input.

Builders return ``(transaction id, bytes)``; readers take a `StunMessage` that
`decode_message_untrusted` accepted and never raise: a malformed attribute reads as absent
(None), and the check that needed it says so. Everything a reply carries is the server's word,
so no value from it is used without going through the codec's ``decode_*_untrusted`` functions.

`LongTermAuth` is the client half of RFC 8489 §9.2 long-term credentials, the mechanism TURN
uses (RFC 8656 §7.2): the first request goes without credentials, the 401 names REALM and NONCE,
later requests carry USERNAME, REALM, NONCE and MESSAGE-INTEGRITY keyed with
MD5(username:realm:password) (§9.2.2), and a 438 Stale Nonce hands over a new NONCE to retry with
(§9.2.5). A TURN REST credential (the secret minted into ``expiry:user`` and its HMAC) is a
long-term credential like any other once minted (secureconnect.credentials).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from secureconnect.netaddr import Address
from secureconnect.stun import (
    MAX_TEXT_BYTES,
    AttrType,
    MessageClass,
    Method,
    StunDecodeError,
    StunMessage,
    decode_address_untrusted,
    decode_error_code_untrusted,
    decode_message_untrusted,
    decode_text_untrusted,
    decode_u32_untrusted,
    decode_xor_address_untrusted,
    encode_change_request,
    encode_message,
    encode_u32,
    encode_xor_address,
    long_term_key,
    new_transaction_id,
    verify_integrity,
)

A = AttrType
#: RFC 8656 §18.8: REQUESTED-TRANSPORT for UDP relaying: protocol 17, then 3 RFFU bytes.
REQUESTED_UDP: Final = bytes((17, 0, 0, 0))


@dataclass(frozen=True, slots=True)
class Credential:
    """A long-term username and password (the password never in a repr)."""

    username: str
    password: str = field(repr=False)


class LongTermAuth:
    """Client state for RFC 8489 §9.2 long-term credentials on one server (see the module
    docstring): the realm and nonce learned from the server, the key derived from them."""

    __slots__ = ("_key", "credential", "nonce", "realm")

    def __init__(self, credential: Credential) -> None:
        self.credential = credential
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self._key: bytes | None = None

    @property
    def ready(self) -> bool:
        """Whether a realm and nonce are known, so requests can be signed."""
        return self.realm is not None and self.nonce is not None

    @property
    def key(self) -> bytes | None:
        return self._key

    def learn(self, reply: StunMessage) -> bool:
        """Take REALM and NONCE from a 401 or 438 (RFC 8489 §9.2.4, §9.2.5); True when the
        nonce is new (a retry can succeed), False when the reply offers nothing to retry with."""
        realm = text_attribute(reply, A.REALM)
        nonce = reply.get(A.NONCE)
        if nonce is None or len(nonce) > MAX_TEXT_BYTES:
            return False
        if realm is not None and realm != self.realm:
            self.realm = realm
            self._key = long_term_key(self.credential.username, realm, self.credential.password)
        fresh = nonce != self.nonce
        self.nonce = bytes(nonce)
        return fresh and self.realm is not None

    def sign(
        self, attributes: Sequence[tuple[int, bytes]]
    ) -> tuple[list[tuple[int, bytes]], bytes]:
        """``attributes`` plus USERNAME, REALM and NONCE (RFC 8489 §9.2.3), and the key for
        MESSAGE-INTEGRITY; ValueError before a 401 taught the realm and nonce."""
        if self.realm is None or self.nonce is None or self._key is None:
            raise ValueError("no realm and nonce yet: send the request unauthenticated first")
        signed = [
            *attributes,
            (A.USERNAME, self.credential.username.encode()),
            (A.REALM, self.realm.encode()),
            (A.NONCE, self.nonce),
        ]
        return signed, self._key


def build_request(
    method: int,
    attributes: Sequence[tuple[int, bytes]] = (),
    auth: LongTermAuth | None = None,
) -> tuple[bytes, bytes]:
    """A request with a fresh transaction id, signed when ``auth`` is ready; (tid, bytes).

    FINGERPRINT is added (RFC 8489 §7): a server multiplexing STUN with other traffic can tell
    the probe's requests apart, and it costs eight bytes."""
    tid = new_transaction_id()
    key = None
    attrs = list(attributes)
    if auth is not None and auth.ready:
        attrs, key = auth.sign(attrs)
    data = encode_message(
        method, MessageClass.REQUEST, tid, attrs, integrity_key=key, fingerprint=True
    )
    return tid, data


def binding_request(*, change_ip: bool = False, change_port: bool = False) -> tuple[bytes, bytes]:
    """A Binding request (RFC 8489 §3), with CHANGE-REQUEST for RFC 5780 §4.4's filtering
    tests when a flag is set."""
    attrs = []
    if change_ip or change_port:
        attrs.append((A.CHANGE_REQUEST, encode_change_request(change_ip, change_port)))
    return build_request(Method.BINDING, attrs)


def allocate_request(auth: LongTermAuth | None) -> tuple[bytes, bytes]:
    """An Allocate for a UDP relay (RFC 8656 §7.1), unauthenticated until ``auth`` is ready."""
    return build_request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, REQUESTED_UDP)], auth)


def refresh_request(auth: LongTermAuth | None, lifetime: int) -> tuple[bytes, bytes]:
    """A Refresh (RFC 8656 §8.1); ``lifetime`` 0 deletes the allocation."""
    return build_request(Method.REFRESH, [(A.LIFETIME, encode_u32(lifetime))], auth)


def create_permission_request(auth: LongTermAuth | None, peer: Address) -> tuple[bytes, bytes]:
    """A CreatePermission for ``peer``'s IP (RFC 8656 §10.1; the port is ignored), signed when
    ``auth`` is ready (an open relay never asked for credentials)."""
    tid = new_transaction_id()
    attrs: list[tuple[int, bytes]] = [(A.XOR_PEER_ADDRESS, encode_xor_address(*peer, tid))]
    key = None
    if auth is not None and auth.ready:
        attrs, key = auth.sign(attrs)
    data = encode_message(
        Method.CREATE_PERMISSION,
        MessageClass.REQUEST,
        tid,
        attrs,
        integrity_key=key,
        fingerprint=True,
    )
    return tid, data


def send_indication(peer: Address, payload: bytes) -> bytes:
    """A Send indication (RFC 8656 §11.1): ``payload`` to ``peer`` through the relay."""
    tid = new_transaction_id()
    attrs = [(A.XOR_PEER_ADDRESS, encode_xor_address(*peer, tid)), (A.DATA, payload)]
    return encode_message(Method.SEND, MessageClass.INDICATION, tid, attrs)


# -- reading replies (untrusted) --------------------------------------------------------------


def decode_reply(data: bytes) -> StunMessage | None:
    """A STUN message, or None for anything else (ChannelData, garbage, a bad FINGERPRINT)."""
    try:
        return decode_message_untrusted(data)
    except StunDecodeError:
        return None


def error_of(reply: StunMessage) -> tuple[int, str] | None:
    """(code, reason) of an error response; None for any other class. An error response
    without a readable ERROR-CODE reads as code 0."""
    if reply.cls is not MessageClass.ERROR:
        return None
    value = reply.get(A.ERROR_CODE)
    if value is None:
        return 0, "no ERROR-CODE"
    try:
        return decode_error_code_untrusted(value)
    except StunDecodeError as exc:
        return 0, f"malformed ERROR-CODE ({exc.reason})"


def xor_address(reply: StunMessage, attr: int) -> Address | None:
    """An XOR-address attribute (XOR-MAPPED-, XOR-RELAYED-, XOR-PEER-ADDRESS), or None."""
    value = reply.get(attr)
    if value is None:
        return None
    try:
        return decode_xor_address_untrusted(value, reply.transaction_id)
    except StunDecodeError:
        return None


def plain_address(reply: StunMessage, attr: int) -> Address | None:
    """A MAPPED-ADDRESS-layout attribute (OTHER-ADDRESS, RESPONSE-ORIGIN), or None."""
    value = reply.get(attr)
    if value is None:
        return None
    try:
        return decode_address_untrusted(value)
    except StunDecodeError:
        return None


def mapped_address(reply: StunMessage) -> Address | None:
    """XOR-MAPPED-ADDRESS, else the RFC 3489 MAPPED-ADDRESS (RFC 8489 §14.1, §14.2)."""
    return xor_address(reply, A.XOR_MAPPED_ADDRESS) or plain_address(reply, A.MAPPED_ADDRESS)


def text_attribute(reply: StunMessage, attr: int) -> str | None:
    """REALM, SOFTWARE and the like as text (at most 763 bytes, UTF-8), or None."""
    value = reply.get(attr)
    if value is None:
        return None
    try:
        return decode_text_untrusted(value, MAX_TEXT_BYTES)
    except StunDecodeError:
        return None


def lifetime_of(reply: StunMessage) -> int | None:
    """LIFETIME (RFC 8656 §18.2) in seconds, or None."""
    value = reply.get(A.LIFETIME)
    if value is None:
        return None
    try:
        return decode_u32_untrusted(value)
    except StunDecodeError:
        return None


def integrity_state(reply: StunMessage, key: bytes | None) -> str:
    """``valid``, ``invalid`` or ``absent``: MESSAGE-INTEGRITY of a reply to a signed request
    (RFC 8489 §9.2.5: a client checks it with the same key)."""
    if key is None or reply.integrity_offset is None:
        return "absent"
    return "valid" if verify_integrity(reply, key) else "invalid"


def data_indication(reply: StunMessage) -> tuple[Address, bytes] | None:
    """(peer, payload) of a Data indication (RFC 8656 §11.4), or None."""
    if reply.method != Method.DATA or reply.cls is not MessageClass.INDICATION:
        return None
    peer = xor_address(reply, A.XOR_PEER_ADDRESS)
    payload = reply.get(A.DATA)
    if peer is None or payload is None:
        return None
    return peer, payload
