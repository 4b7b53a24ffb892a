"""A TURN client session on one channel: authenticated transactions, allocations, relayed data.

`TurnSession` wraps a `Channel` (one 5-tuple: one allocation, RFC 8656 §2.2) and a
`LongTermAuth`. `TurnSession.request` is the long-term credential dance of RFC 8489 §9.2: a
request goes out unauthenticated until a 401 has named the realm and nonce, then signed; a 438
Stale Nonce is retried with the nonce it carries (§9.2.5, at most `MAX_STALE` times); a 401 to
a signed request is final (the credential is wrong). A reply to a signed request whose
MESSAGE-INTEGRITY does not verify is dropped as if never received (§9.2.5), so an off-path
forgery cannot answer for the server.

Frames that arrive while a transaction waits (Data indications from the relay test) are kept in
``inbox`` for `wait_data`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from secureconnect.netaddr import Address
from secureconnect.probe.transport import Channel, Exchange, transact
from secureconnect.probe.wire import (
    Credential,
    LongTermAuth,
    allocate_request,
    create_permission_request,
    data_indication,
    decode_reply,
    error_of,
    integrity_state,
    lifetime_of,
    mapped_address,
    refresh_request,
    send_indication,
    xor_address,
)
from secureconnect.stun import AttrType, StunMessage

#: 438 Stale Nonce retries per request (a server that keeps answering 438 is broken).
MAX_STALE: Final = 3

Builder = Callable[[LongTermAuth | None], tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Allocation:
    """An Allocate success (RFC 8656 §7.3): the relayed and mapped addresses, the lifetime."""

    relayed: Address
    mapped: Address | None
    lifetime: int | None
    rtt: float
    integrity: str  # MESSAGE-INTEGRITY of the success: valid, absent (invalid ones are dropped)


class TurnSession:
    """See the module docstring."""

    def __init__(self, channel: Channel, credential: Credential | None, timeout: float) -> None:
        self.channel = channel
        self.auth = LongTermAuth(credential) if credential is not None else None
        self.timeout = timeout
        self.inbox: list[StunMessage] = []
        self.allocation: Allocation | None = None
        self.stale_retries = 0

    @property
    def realm(self) -> str | None:
        return self.auth.realm if self.auth is not None else None

    def _once(self, build: Builder) -> Exchange:
        auth = self.auth if self.auth is not None and self.auth.ready else None
        tid, data = build(auth)
        key = auth.key if auth is not None else None

        def accept(reply: StunMessage) -> bool:
            return integrity_state(reply, key) != "invalid"

        return transact(self.channel, tid, data, self.timeout, accept=accept, inbox=self.inbox)

    def request(self, build: Builder) -> Exchange:
        """The final answer to a request built by ``build`` (see the module docstring).
        `NoAnswer`/`ChannelError` propagate."""
        exchange = self._once(build)
        for _ in range(MAX_STALE + 1):
            error = error_of(exchange.reply)
            if error is None or self.auth is None:
                return exchange
            signed = self.auth.ready
            code = error[0]
            if code == 401 and not signed and self.auth.learn(exchange.reply):
                exchange = self._once(build)  # RFC 8489 §9.2.4: the challenge; now sign
            elif code == 438 and self.auth.learn(exchange.reply) and self.stale_retries < MAX_STALE:
                self.stale_retries += 1  # RFC 8489 §9.2.5: stale nonce, retry with the new one
                exchange = self._once(build)
            else:
                return exchange
        return exchange

    def unauthenticated(self, build: Builder) -> Exchange:
        """One request without credentials, whatever the session has learned (the open-relay
        test: an unauthenticated Allocate must be refused with 401)."""
        tid, data = build(None)
        return transact(self.channel, tid, data, self.timeout, inbox=self.inbox)

    def allocate(self) -> tuple[Exchange, Allocation | None]:
        """An Allocate for a UDP relay; the allocation when it succeeded."""
        exchange = self.request(allocate_request)
        reply = exchange.reply
        if error_of(reply) is not None:
            return exchange, None
        relayed = xor_address(reply, AttrType.XOR_RELAYED_ADDRESS)
        if relayed is None:
            return exchange, None
        key = self.auth.key if self.auth is not None and self.auth.ready else None
        self.allocation = Allocation(
            relayed,
            mapped_address(reply),
            lifetime_of(reply),
            exchange.rtt,
            integrity_state(reply, key),
        )
        return exchange, self.allocation

    def delete_allocation(self) -> Exchange:
        """Refresh with LIFETIME 0 (RFC 8656 §8.1 / §7.2: deletes the allocation)."""
        exchange = self.request(lambda auth: refresh_request(auth, 0))
        self.allocation = None
        return exchange

    def create_permission(self, peer: Address) -> Exchange:
        """CreatePermission for ``peer`` (RFC 8656 §10)."""
        return self.request(lambda auth: create_permission_request(auth, peer))

    def send(self, peer: Address, payload: bytes) -> None:
        """A Send indication (RFC 8656 §11.1); unreliable over UDP, never answered."""
        self.channel.send(send_indication(peer, payload))

    def wait_data(self, payload: bytes, deadline: float) -> Address | None:
        """The peer of the first Data indication carrying ``payload``, arriving before
        ``deadline`` (monotonic), or None."""
        while self.inbox:
            got = data_indication(self.inbox.pop(0))
            if got is not None and got[1] == payload:
                return got[0]
        while time.monotonic() < deadline:
            frame = self.channel.receive(deadline)
            if frame is None:
                return None
            reply = decode_reply(frame)
            got = data_indication(reply) if reply is not None else None
            if got is not None and got[1] == payload:
                return got[0]
        return None

    def close(self) -> None:
        self.channel.close()
