"""The sans-IO Binding responder: one received datagram or frame in, the reply to send out.

Theory of operation
-------------------
`BindingResponder.handle` decodes, `handle_message` answers a decoded message. Nothing here
does I/O, reads a clock or keeps per-client state: the caller passes the source address and the
local address the request arrived on, and gets back a `Reply` (bytes plus the local address
it must leave from, `response_origin`) or None for "send nothing".

Errors are raised as `StunError` wherever they are found and turned into an error response at
one site, `_error_reply`.

Decisions (the RFCs leave these open, or a deployment needs them made):

* Response size. Binding responses are reflection amplifiers (docs/security.md). A plain RFC 8489
  success carries XOR-MAPPED-ADDRESS only (32 bytes for IPv4), plus FINGERPRINT only when the
  request had one (an agent multiplexing STUN with other traffic uses it to demultiplex,
  RFC 8489 §7) and SOFTWARE only when configured. MAPPED-ADDRESS is left out: RFC 8489
  §14.1 keeps it for RFC 3489 clients, and those are recognised by their missing cookie and get
  the classic reply below. With RFC 5780 on, MAPPED-ADDRESS is included because RFC 5780 §6.1
  requires it ("The server MUST include both MAPPED-ADDRESS and XOR-MAPPED-ADDRESS"), with
  RESPONSE-ORIGIN and OTHER-ADDRESS. Error reason phrases are empty unless
  `ResponderConfig.reason_phrases` is set.

* Comprehension-required attributes a Binding request may carry that are understood and ignored:
  USERNAME, USERHASH, MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256, REALM, NONCE and
  PASSWORD-ALGORITHM (RFC 8489's own authentication attributes; this usage does not authenticate,
  as public STUN servers generally do not, so they have no effect), and PRIORITY (RFC 8445 §7.1.1:
  it describes the sender's candidate and asks nothing of the receiver; coturn ignores it too, and
  the RFC 5769 §2.1 sample request carries it). USE-CANDIDATE asks the receiver to nominate a
  candidate pair, which only an ICE peer can do, so it gets 420, as do RFC 3489's
  RESPONSE-ADDRESS (it would make us reflect replies to a third party) and anything else below
  0x8000.

* RESPONSE-PORT and PADDING (RFC 5780 §7.5, §7.6) are understood only with RFC 5780 on, and
  only over UDP; otherwise they are unknown (420), and over TCP/TLS they get 400 like a
  CHANGE-REQUEST. RESPONSE-PORT sends the reply to the request's source IP at that port: the
  same host, so it cannot aim replies at a third party. PADDING is echoed with the request's
  length, never longer, so the reply stays about the request's size (no amplification).
  coturn's `turnutils_stunclient -f` sends both, in separate requests; a request carrying
  both gets 400, as RFC 5780 §6.1 asks ("the server SHOULD respond with a 400").

* CHANGE-REQUEST. With RFC 5780 off: RFC 5780 §6 "MUST respond with a 420 (Unknown Attribute)
  to any Request with a CHANGE-REQUEST attribute". One exception: a CHANGE-REQUEST with neither
  flag set asks for no change, which is honoured exactly; Stuntman's client sends one to every
  server for interoperability with JSTUN, and coturn answers it for the same reason. Over TCP/TLS
  with RFC 5780 on, a set flag gets 400: a reply cannot leave a connection from another
  address, and RFC 5780 §3.2/§4.4 define the filtering tests for UDP only ("This test applies
  only to UDP datagrams"); RFC 5780 names no code for this, 400 is coturn's choice too.

* Classic RFC 3489 requests get MAPPED-ADDRESS and SOURCE-ADDRESS, plus CHANGED-ADDRESS with
  RFC 5780 on (RFC 3489 §8.1), with no SOFTWARE and no FINGERPRINT: pystun3 walks attributes
  without skipping padding, so every value in a classic reply has a length that is a multiple of
  4. A classic request with a CHANGE-REQUEST flag set while RFC 5780 is off is dropped silently
  (counted): RFC 3489 §8.1 assumes every server has two addresses, so a classic client has no
  use for a 420 (pystun3 retransmits forever on any error response), and a success sent from
  the same address would be a lie that classifies the client's NAT as full cone. No answer means
  "the reply from the other address did not reach you", which ends the client's test.

* RFC 5780 is on when `ResponderConfig` carries both `primary` and `alternate`; the I/O layer
  then listens on all four combinations of their IPs and ports, and passes the one a request
  arrived on as `local`. A `local` that is not one of the four is answered as if RFC 5780 were
  off. One responder serves one transport's set of sockets (RFC 5780 §6: TCP and TLS use
  different ports from each other).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from secureconnect.netaddr import Address
from secureconnect.stun.attributes import (
    decode_change_request_untrusted,
    encode_address,
    encode_error_code,
    encode_unknown_attributes,
    encode_xor_address,
)
from secureconnect.stun.constants import (
    MAGIC_COOKIE,
    REASON_PHRASES,
    AttrType,
    ErrorCode,
    MessageClass,
    Method,
)
from secureconnect.stun.message import (
    StunDecodeError,
    StunError,
    StunHeader,
    StunMessage,
    decode_message_untrusted,
    encode_message,
)

# Address is re-exported: callers of the responder name the addresses they pass with it.
__all__ = [
    "Address",
    "BindingResponder",
    "Reply",
    "ResponderConfig",
    "StunCounters",
    "unknown_attributes_error",
]


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send from the local socket bound to `response_origin` (another one than the
    request arrived on when an RFC 5780 CHANGE-REQUEST asked for it), to the request's source,
    or to `destination` when RESPONSE-PORT asked for another port."""

    data: bytes
    response_origin: Address  # the address the reply leaves from
    destination: Address | None = None  # None: back to the request's source


@dataclass(slots=True)
class StunCounters:
    """Plain mutable counters, read by /metrics. ``requests`` counts Binding requests;
    ``responses`` successes; ``errors_sent`` error responses, of which ``bad_requests`` are 400s
    and ``unknown_attributes`` 420s."""

    requests: int = 0
    responses: int = 0
    errors_sent: int = 0
    dropped_not_stun: int = 0
    dropped_not_request: int = 0
    classic_requests: int = 0
    change_requests: int = 0
    bad_requests: int = 0
    unknown_attributes: int = 0
    dropped_classic_change: int = 0  # classic CHANGE-REQUEST that cannot be honoured


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderConfig:
    """How the responder answers. RFC 5780 is enabled when both `primary` and `alternate` are
    set: two addresses that differ in IP and in port, of the same family.

    What an operator sets has no default here: its one home is ``config/schema.py`` (the
    ``software`` key of ``[stun]`` and ``[turn]``, from which ``reason_phrases`` follows), and
    ``runtime.responder_config`` maps ``[stun]`` onto these fields; tests start from the same
    mapping of the schema's defaults. RFC 5780 stays off unless both addresses are given: a
    responder without a second address of its host (the TURN core's) never has them."""

    software: str | None  # None: no SOFTWARE attribute (amplification, docs/security.md)
    reason_phrases: bool  # False: error responses carry an empty reason phrase
    primary: Address | None = None
    alternate: Address | None = None

    def __post_init__(self) -> None:
        if (self.primary is None) != (self.alternate is None):
            raise ValueError("RFC 5780 needs both a primary and an alternate address")
        if self.primary is not None and self.alternate is not None:
            primary_ip = ipaddress.ip_address(self.primary[0])
            alternate_ip = ipaddress.ip_address(self.alternate[0])
            if primary_ip.version != alternate_ip.version:
                raise ValueError("primary and alternate addresses must be of the same family")
            if primary_ip == alternate_ip or self.primary[1] == self.alternate[1]:
                raise ValueError("alternate address must differ from primary in IP and port")
        if self.software is not None and len(self.software.encode()) > 763:
            raise ValueError("SOFTWARE is longer than 763 bytes (RFC 8489 §14.14)")

    @property
    def rfc5780(self) -> bool:
        return self.primary is not None


_BINDING: Final = int(Method.BINDING)
_BARE_BINDING: Final = b"\x00\x01\x00\x00"  # Binding request type, zero-length body
_BINDING_SUCCESS: Final = b"\x01\x01"
_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")
_XOR_MAPPED_HEADER: Final = {
    size: int(AttrType.XOR_MAPPED_ADDRESS).to_bytes(2, "big") + size.to_bytes(2, "big")
    for size in (8, 20)
}
_CHANGE_REQUEST: Final = int(AttrType.CHANGE_REQUEST)
_RESPONSE_PORT: Final = int(AttrType.RESPONSE_PORT)
_PADDING: Final = int(AttrType.PADDING)
# Comprehension-required attributes understood and ignored; see the module docstring.
_IGNORED_BINDING_ATTRIBUTES: Final = frozenset(
    {
        AttrType.USERNAME,
        AttrType.USERHASH,
        AttrType.MESSAGE_INTEGRITY,
        AttrType.MESSAGE_INTEGRITY_SHA256,
        AttrType.REALM,
        AttrType.NONCE,
        AttrType.PASSWORD_ALGORITHM,
        AttrType.PRIORITY,
    }
)


def _canonical_ip(ip: str) -> str:
    """The `ipaddress` spelling of `ip`, IPv4-mapped IPv6 as IPv4; unparsable text unchanged."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@dataclass(slots=True)
class _BindingAsks:
    """What a Binding request asks of the server beyond its mapped address."""

    change_ip: bool = False
    change_port: bool = False
    response_port: int | None = None  # RFC 5780 §7.5
    padding: int | None = None  # RFC 5780 §7.6: length of the request's PADDING
    unknown: list[int] = field(default_factory=list)  # comprehension-required, not understood


def _scan_binding_attributes(
    attributes: tuple[tuple[int, bytes], ...], rfc5780: bool
) -> _BindingAsks:
    """Sort a Binding request's attributes. Raises `StunError` 400 for a malformed value.

    RFC 8489 §14: only the first occurrence of an attribute needs processing.
    """
    asks = _BindingAsks()
    change_seen = False
    unknown = asks.unknown
    seen: set[int] = set()
    for atype, value in attributes:
        if atype >= 0x8000 or atype in _IGNORED_BINDING_ATTRIBUTES:
            continue
        if atype == _CHANGE_REQUEST:
            if not change_seen:
                change_seen = True
                try:
                    asks.change_ip, asks.change_port = decode_change_request_untrusted(value)
                except StunDecodeError:
                    raise StunError(ErrorCode.BAD_REQUEST, "malformed CHANGE-REQUEST") from None
        elif rfc5780 and atype == _RESPONSE_PORT:
            # RFC 5780 §7.5: "a 16-bit unsigned integer ... followed by 2 bytes of padding".
            if asks.response_port is None:
                if len(value) != 4 or value[:2] == b"\x00\x00":
                    raise StunError(ErrorCode.BAD_REQUEST, "malformed RESPONSE-PORT")
                asks.response_port = int.from_bytes(value[:2], "big")
        elif rfc5780 and atype == _PADDING:
            if asks.padding is None:
                asks.padding = len(value)
        elif atype not in seen:  # a set: thousands of distinct types stay linear
            seen.add(atype)
            unknown.append(atype)
    return asks


def unknown_attributes_error(unknown: Sequence[int], *, classic: bool = False) -> StunError:
    """RFC 8489 §6.3.1: unknown comprehension-required attributes get 420 with
    UNKNOWN-ATTRIBUTES listing them (the one builder, for the responder and TURN). RFC 3489
    §11.2.10: a classic list of odd length repeats one type so that the value is a multiple of
    4 bytes."""
    if classic and len(unknown) & 1:
        unknown = [*unknown, unknown[0]]
    return StunError(
        ErrorCode.UNKNOWN_ATTRIBUTE,
        attributes=((AttrType.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(unknown)),),
    )


class BindingResponder:
    """Answers STUN Binding requests (RFC 8489 §3), classic RFC 3489 ones, and RFC 5780's
    CHANGE-REQUEST. Stateless apart from `counters`."""

    __slots__ = ("_fast_tail", "_ips", "_ports", "_software", "config", "counters")

    def __init__(self, config: ResponderConfig, counters: StunCounters | None = None) -> None:
        self.config = config
        self.counters = counters if counters is not None else StunCounters()
        self._software: tuple[tuple[int, bytes], ...] = (
            ((AttrType.SOFTWARE, config.software.encode()),) if config.software is not None else ()
        )
        # The fast path's SOFTWARE attribute, encoded once (empty when none is configured).
        self._fast_tail = b"".join(
            atype.to_bytes(2, "big")
            + len(value).to_bytes(2, "big")
            + value
            + bytes(-len(value) & 3)
            for atype, value in self._software
        )
        self._ips: tuple[str, str] | None = None
        self._ports: tuple[int, int] = (0, 0)
        if config.primary is not None and config.alternate is not None:
            self._ips = (_canonical_ip(config.primary[0]), _canonical_ip(config.alternate[0]))
            self._ports = (config.primary[1], config.alternate[1])

    def _other(self, local: Address) -> Address | None:
        """RFC 5780 §6.1 "Ca:Cp": the server address that differs from `local` in IP and port
        (None when RFC 5780 is off or `local` is not one of the four sockets)."""
        ips = self._ips
        if ips is None:
            return None
        ip, port = local[0], local[1]
        if ip not in ips:
            ip = _canonical_ip(ip)  # slow path: a non-canonical or IPv4-mapped spelling
        if ip == ips[0]:
            other_ip = ips[1]
        elif ip == ips[1]:
            other_ip = ips[0]
        else:
            return None
        ports = self._ports
        if port == ports[0]:
            return other_ip, ports[1]
        if port == ports[1]:
            return other_ip, ports[0]
        return None

    def handle(
        self, data: bytes, source: Address, local: Address, *, stream: bool = False
    ) -> Reply | None:
        """One received datagram/frame in; the reply to send (or None to drop)."""
        if (
            len(data) == 20
            and data[:4] == _BARE_BINDING
            and data[4:8] == _COOKIE_BYTES
            and self._ips is None
        ):
            return self._fast_reply(data, source, local)
        try:
            msg = decode_message_untrusted(data)
        except StunDecodeError as exc:
            header = exc.header
            if header is None:
                self.counters.dropped_not_stun += 1
                return None
            if header.method == _BINDING and header.cls is MessageClass.REQUEST:
                # RFC 8489 §14.8: 400 (Bad Request) "The request was malformed."
                self.counters.requests += 1
                if header.classic:
                    self.counters.classic_requests += 1
                return self._error_reply(header, StunError(ErrorCode.BAD_REQUEST), local, False)
            self.counters.dropped_not_request += 1
            return None
        return self.handle_message(msg, source, local, stream=stream)

    def _fast_reply(self, data: bytes, source: Address, local: Address) -> Reply:
        """The most common request by far - an RFC 8489 Binding with no attributes, RFC 5780
        off - answered without the general codec: the same bytes ``_answer`` would produce
        (XOR-MAPPED-ADDRESS, then SOFTWARE if configured), about 5x cheaper."""
        counters = self.counters
        counters.requests += 1
        counters.responses += 1
        xor_mapped = encode_xor_address(source[0], source[1], data[8:20])
        tail = self._fast_tail
        length = 4 + len(xor_mapped) + len(tail)
        out = b"".join(
            (
                _BINDING_SUCCESS,
                length.to_bytes(2, "big"),
                data[4:20],
                _XOR_MAPPED_HEADER[len(xor_mapped)],
                xor_mapped,
                tail,
            )
        )
        return Reply(out, local)

    def handle_message(
        self, msg: StunMessage, source: Address, local: Address, *, stream: bool = False
    ) -> Reply | None:
        """Same, for a message already decoded (the TURN component will decode first and pass
        Binding here)."""
        header = msg.header
        counters = self.counters
        if header.method != _BINDING or header.cls is not MessageClass.REQUEST:
            # RFC 8489 §6.3.2: indications get no response; a Binding indication is a keepalive.
            if header.method != _BINDING or header.cls is not MessageClass.INDICATION:
                counters.dropped_not_request += 1
            return None
        counters.requests += 1
        if header.classic:
            counters.classic_requests += 1
        try:
            return self._answer(msg, source, local, stream)
        except StunError as exc:
            return self._error_reply(header, exc, local, msg.has_fingerprint)

    def _answer(
        self, msg: StunMessage, source: Address, local: Address, stream: bool
    ) -> Reply | None:
        header = msg.header
        other = self._other(local)
        asks = _scan_binding_attributes(msg.attributes, other is not None and not header.classic)
        change_ip, change_port, unknown = asks.change_ip, asks.change_port, asks.unknown
        changing = change_ip or change_port
        if changing:
            self.counters.change_requests += 1
            if other is None:
                if header.classic and not unknown:
                    # RFC 3489 §8.1 assumes a second address we do not have; see the module
                    # docstring for why silence beats 420 and beats a false success here.
                    self.counters.dropped_classic_change += 1
                    return None
                # RFC 5780 §6: without an alternate address the server "MUST respond with a 420
                # (Unknown Attribute) to any Request with a CHANGE-REQUEST attribute".
                unknown.insert(0, _CHANGE_REQUEST)
        if unknown:
            raise unknown_attributes_error(unknown, classic=header.classic)
        if stream and (changing or asks.response_port is not None or asks.padding is not None):
            # A reply cannot leave a TCP/TLS connection from another address or go to another
            # port; RFC 5780 §4.4 filtering tests and §7.5/§7.6 are for UDP.
            raise StunError(ErrorCode.BAD_REQUEST, "RFC 5780 attributes are for UDP only")
        if asks.response_port is not None and asks.padding is not None:
            # RFC 5780 §6.1: a request with both PADDING and RESPONSE-PORT gets 400.
            raise StunError(ErrorCode.BAD_REQUEST, "PADDING with RESPONSE-PORT")
        if changing and other is not None:
            origin: Address = (
                other[0] if change_ip else local[0],
                other[1] if change_port else local[1],
            )
        else:
            origin = (local[0], local[1])
        data = self._encode_success(msg, (source[0], source[1]), origin, other, asks.padding)
        self.counters.responses += 1
        destination = None if asks.response_port is None else (source[0], asks.response_port)
        return Reply(data, origin, destination)

    def _encode_success(
        self,
        msg: StunMessage,
        source: Address,
        origin: Address,
        other: Address | None,
        padding: int | None = None,
    ) -> bytes:
        header = msg.header
        attributes: list[tuple[int, bytes]]
        if header.classic:
            # RFC 3489 §8.1: MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS (Ca:Cp).
            attributes = [
                (AttrType.MAPPED_ADDRESS, encode_address(*source)),
                (AttrType.SOURCE_ADDRESS, encode_address(*origin)),
            ]
            if other is not None:
                attributes.append((AttrType.CHANGED_ADDRESS, encode_address(*other)))
            return encode_message(_BINDING, MessageClass.SUCCESS, header.transaction_id, attributes)
        xor_mapped = encode_xor_address(source[0], source[1], header.transaction_id)
        if other is None:
            attributes = [(AttrType.XOR_MAPPED_ADDRESS, xor_mapped)]
        else:
            # RFC 5780 §6.1: MAPPED-ADDRESS and XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN (the reply's
            # source) and OTHER-ADDRESS (Ca:Cp, whatever the flags).
            attributes = [
                (AttrType.MAPPED_ADDRESS, encode_address(*source)),
                (AttrType.XOR_MAPPED_ADDRESS, xor_mapped),
                (AttrType.RESPONSE_ORIGIN, encode_address(*origin)),
                (AttrType.OTHER_ADDRESS, encode_address(*other)),
            ]
            if padding is not None:
                # RFC 5780 §6.1: "PADDING MUST be included in the Binding Response", of the
                # request's length (never longer: see the module docstring).
                attributes.append((AttrType.PADDING, bytes(padding)))
        attributes.extend(self._software)
        return encode_message(
            _BINDING,
            MessageClass.SUCCESS,
            header.transaction_id,
            attributes,
            fingerprint=msg.has_fingerprint,
        )

    def _error_reply(
        self, header: StunHeader, error: StunError, local: Address, fingerprint: bool
    ) -> Reply:
        """The one place a `StunError` becomes an error response (sent from `local`)."""
        counters = self.counters
        counters.errors_sent += 1
        if error.code == ErrorCode.BAD_REQUEST:
            counters.bad_requests += 1
        elif error.code == ErrorCode.UNKNOWN_ATTRIBUTE:
            counters.unknown_attributes += 1
        reason = ""
        if self.config.reason_phrases:
            reason = error.reason or REASON_PHRASES.get(error.code, "")
            if header.classic:
                # RFC 3489 §11.2.9: the reason phrase is padded with spaces to a multiple of 4.
                reason += " " * (-len(reason.encode()) & 3)
        attributes = [(int(AttrType.ERROR_CODE), encode_error_code(error.code, reason))]
        attributes.extend(error.attributes)
        if not header.classic:
            attributes.extend(self._software)
        data = encode_message(
            header.method,
            MessageClass.ERROR,
            header.transaction_id,
            attributes,
            fingerprint=fingerprint and not header.classic,
        )
        return Reply(data, (local[0], local[1]))
