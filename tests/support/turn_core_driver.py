"""Helpers for driving the sans-IO TURN core: an in-memory relay binder and a request builder.

The binder stands at the core's I/O boundary (like feeding bytes to h11): it hands out relay
endpoints that record what they send, so tests see exactly what the core asked the I/O to do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from secureconnect.config import TurnConfig
from secureconnect.credentials import CredentialMinter, NonceMint, rest_password
from secureconnect.ratelimit import RateLimiter
from secureconnect.runtime import turn_settings
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StunMessage,
    decode_error_code_untrusted,
    decode_message_untrusted,
    decode_u32_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_xor_address,
    long_term_key,
    new_transaction_id,
)
from secureconnect.turn.allocation import Address, Allocation, RelayEndpoint
from secureconnect.turn.auth import Authenticator
from secureconnect.turn.core import TurnCore, TurnSettings
from secureconnect.turn.peerpolicy import OwnEndpoints, PeerPolicy

SECRET = "test-secret"
REALM = "example.org"
NOW = 1_800_000_000.0
CLIENT: Address = ("198.51.100.7", 40000)
SERVER: Address = ("192.0.2.1", 3478)
PEER: Address = ("8.8.8.8", 5000)


@dataclass
class MemoryEndpoint:
    """A relay 'socket' that records datagrams sent through it."""

    family: int
    port: int
    sent: list[tuple[bytes, Address]] = field(default_factory=list)
    closed: bool = False

    def sendto(self, data: bytes, address: Address, /) -> int:
        self.sent.append((data, address))
        return len(data)


@dataclass
class MemoryRelays:
    """The core's RelayBinder, in memory; ``busy`` ports fail to bind like ports in use."""

    busy: set[int] = field(default_factory=set)
    bound: list[MemoryEndpoint] = field(default_factory=list)
    active: dict[int, Allocation] = field(default_factory=dict)
    dont_fragment: list[int] = field(default_factory=list)

    def bind(self, family: int, port: int, dont_fragment: bool) -> RelayEndpoint:
        if port in self.busy:
            raise OSError(98, "Address already in use")
        endpoint = MemoryEndpoint(family, port)
        self.bound.append(endpoint)
        if dont_fragment:
            self.dont_fragment.append(port)
        return endpoint

    def activate(self, endpoint: RelayEndpoint, allocation: Allocation) -> None:
        assert isinstance(endpoint, MemoryEndpoint)
        self.active[endpoint.port] = allocation

    def close(self, endpoint: RelayEndpoint) -> None:
        assert isinstance(endpoint, MemoryEndpoint)
        endpoint.closed = True
        self.active.pop(endpoint.port, None)

    def open(self) -> list[MemoryEndpoint]:
        return [e for e in self.bound if not e.closed]


def settings(**changes: object) -> TurnSettings:
    """The core's parameters as the schema's defaults make them (``runtime.turn_settings``),
    with ``changes``: tests run the core a user runs."""
    return dataclasses.replace(turn_settings(TurnConfig()), **changes)  # type: ignore[arg-type]


def make_core(
    parameters: TurnSettings | None = None,
    *,
    peers: PeerPolicy | None = None,
    strict_expiry: bool = False,
    static_users: dict[str, str] | None = None,
    unauthorized_rate: float | None = None,
    sha256: bool = False,
    own_endpoints: OwnEndpoints | None = None,
) -> tuple[TurnCore, MemoryRelays]:
    relays = MemoryRelays()
    auth = Authenticator(
        realm=REALM,
        minter=CredentialMinter((SECRET,)),
        nonces=NonceMint(b"k" * 32),
        static_users=static_users,
        strict_expiry=strict_expiry,
        sha256=sha256,
        unauthorized=RateLimiter(unauthorized_rate, 2 * unauthorized_rate)
        if unauthorized_rate
        else RateLimiter(0.0, 0.0),
    )
    core = TurnCore(
        parameters or settings(relay_ipv4="192.0.2.1", relay_ipv6="2001:db8::1"),
        auth=auth,
        binder=relays,
        peers=peers or PeerPolicy(),
        own_endpoints=own_endpoints,
    )
    return core, relays


def rest_user(expiry: float = NOW + 3600, user: str = "alice") -> tuple[str, str]:
    username = f"{int(expiry)}:{user}"
    return username, rest_password(SECRET, username)


@dataclass
class Client:
    """Builds authenticated requests the way a TURN client does (RFC 8656 §7.1, RFC 8489 §9.2)."""

    core: TurnCore
    username: str
    password: str
    five_tuple: tuple[str, Address, Address] = ("udp", CLIENT, SERVER)
    nonce: str = ""
    realm: str = REALM

    @property
    def key(self) -> bytes:
        return long_term_key(self.username, self.realm, self.password)

    def request(
        self,
        method: int,
        attributes: list[tuple[int, bytes]] | None = None,
        *,
        transaction_id: bytes | None = None,
        now: float = NOW,
        wall_now: float | None = None,
        authenticate: bool = True,
        trailer: list[tuple[int, bytes]] | None = None,
    ) -> StunMessage | None:
        """Send one request (learning the nonce from a 401 first) and decode the answer;
        ``wall_now`` is the core's Unix time (None: ``now`` is Unix time)."""
        if authenticate and not self.nonce:
            first = self.raw(
                method, attributes or [], now=now, wall_now=wall_now, authenticate=False
            )
            assert first is not None
            self.nonce = _text(first, AttrType.NONCE)
        return self.raw(
            method,
            attributes or [],
            transaction_id=transaction_id,
            now=now,
            wall_now=wall_now,
            authenticate=authenticate,
            trailer=trailer,
        )

    def raw(
        self,
        method: int,
        attributes: list[tuple[int, bytes]],
        *,
        transaction_id: bytes | None = None,
        now: float = NOW,
        wall_now: float | None = None,
        authenticate: bool = True,
        trailer: list[tuple[int, bytes]] | None = None,
    ) -> StunMessage | None:
        tid = transaction_id or new_transaction_id()
        attrs = list(attributes)
        key = None
        if authenticate:
            attrs += [
                (AttrType.USERNAME, self.username.encode()),
                (AttrType.REALM, self.realm.encode()),
                (AttrType.NONCE, self.nonce.encode()),
            ]
            key = self.key
        data = encode_message(method, MessageClass.REQUEST, tid, attrs, integrity_key=key)
        if trailer:
            data = _append(data, trailer)
        out = self.core.handle_stun(
            data, self.five_tuple, now, now if wall_now is None else wall_now
        )
        if out is None:
            return None
        assert isinstance(out, bytes), out
        return decode_message_untrusted(out)

    def allocate(
        self, *extra: tuple[int, bytes], now: float = NOW, wall_now: float | None = None
    ) -> StunMessage:
        response = self.request(
            Method.ALLOCATE,
            [(AttrType.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0))), *extra],
            now=now,
            wall_now=wall_now,
        )
        assert response is not None
        return response

    def peer_attr(self, peer: Address, tid: bytes) -> tuple[int, bytes]:
        return (AttrType.XOR_PEER_ADDRESS, encode_xor_address(peer[0], peer[1], tid))


def error_code(msg: StunMessage | None) -> int | None:
    """The ERROR-CODE of an error response; None for a success."""
    assert msg is not None
    if msg.cls is not MessageClass.ERROR:
        return None
    value = msg.get(AttrType.ERROR_CODE)
    assert value is not None
    return decode_error_code_untrusted(value)[0]


def _text(msg: StunMessage, attr: int) -> str:
    value = msg.get(attr)
    assert value is not None
    return value.decode()


def _append(data: bytes, attributes: list[tuple[int, bytes]]) -> bytes:
    """Append raw attributes after the existing ones (e.g. after MESSAGE-INTEGRITY), fixing
    the length field - an attacker's trick RFC 8489 §14.5 neutralises."""
    extra = b"".join(
        t.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v + bytes(-len(v) & 3)
        for t, v in attributes
    )
    length = int.from_bytes(data[2:4], "big") + len(extra)
    return data[:2] + length.to_bytes(2, "big") + data[4:] + extra


def client(
    core: TurnCore,
    five_tuple: tuple[str, Address, Address] | None = None,
    user: str = "alice",
    expiry: float = NOW + 3600,
) -> Client:
    """A client of ``core`` with a REST credential for ``user`` expiring at ``expiry``."""
    username, password = rest_user(expiry, user)
    c = Client(core, username, password)
    if five_tuple is not None:
        c.five_tuple = five_tuple
    return c


def relayed(response: StunMessage | None) -> Address:
    """The XOR-RELAYED-ADDRESS of an Allocate success."""
    assert response is not None
    value = response.get(AttrType.XOR_RELAYED_ADDRESS)
    assert value is not None
    return decode_xor_address_untrusted(value, response.transaction_id)


def lifetime(response: StunMessage | None) -> int:
    """The LIFETIME of a success response."""
    assert response is not None
    value = response.get(AttrType.LIFETIME)
    assert value is not None
    return decode_u32_untrusted(value)
