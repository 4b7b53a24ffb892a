"""The sans-IO TURN server (RFC 8656): STUN-format requests in, responses and effects out.

Theory of operation
-------------------
:meth:`TurnCore.handle_stun` takes one STUN message, the client's 5-tuple and the times, and
returns what to do: ``bytes`` (a response), a :class:`ToPeer` (a Send indication's payload for
a peer) or None. Relay sockets are opened and closed synchronously through the I/O layer's
:class:`~secureconnect.turn.allocation.RelayBinder`, so a request is answered in one call.
ChannelData and peer datagrams take :mod:`secureconnect.turn.relaypath` instead.

Errors are raised as ``StunError`` wherever a guard fails and become an error response at one
site, :meth:`TurnCore._error`; once a request has authenticated, its error responses carry
MESSAGE-INTEGRITY too (RFC 8489 §9.2.4). Unauthenticated requests only ever get 400, 401 or 438,
small and without SOFTWARE or reason phrases unless configured (amplification, docs/security.md).

A retransmission (same 5-tuple and transaction id, RFC 8656 §7.2, §6.3) gets the same answer.

:meth:`TurnCore.handle_timeout` (about once a second) expires allocations, permissions,
channels and reservations and refills budgets. An allocation that ends is counted and handed to
the I/O layer's ``on_ended``, which logs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Final

from secureconnect.stun import (
    AttrType,
    BindingResponder,
    ErrorCode,
    MessageClass,
    Method,
    ResponderConfig,
    StunDecodeError,
    StunError,
    StunMessage,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_error_code,
    encode_message,
    encode_u32,
    encode_xor_address,
    unknown_attributes_error,
)
from secureconnect.stun.constants import REASON_PHRASES
from secureconnect.turn.allocation import (
    Address,
    Allocation,
    AllocationEnded,
    FiveTuple,
    RelayBinder,
    RelayPortPool,
    Reservation,
    quota_key,
    source_key,
)
from secureconnect.turn.auth import Authenticated, Authenticator, Challenge, Silent
from secureconnect.turn.manager import AllocationManager
from secureconnect.turn.peerpolicy import OwnEndpoints, PeerPolicy
from secureconnect.turn.quotas import QuotaBook, QuotaGate
from secureconnect.turn.redirect import REFUSE, RedirectPolicy
from secureconnect.turn.relaypath import (
    spend_to_peer,
    split_send_indication_untrusted,
    valid_channel_number,
)
from secureconnect.turn.requests import (
    ADDITIONAL_FAMILY_ERROR,
    FAMILIES,
    KNOWN,
    NO_INTEGRITY_CODES,
    allocate_asks,
    desired_lifetime,
)
from secureconnect.turn.settings import ToPeer, TurnCounters, TurnSettings, counter_samples

A = AttrType
_BINDING_REQUEST: Final = b"\x00\x01"  # the message type of a Binding request
_SEND_INDICATION: Final = b"\x00\x16"  # RFC 8656 §17: Send (0x006), indication class
_Handler = Callable[[StunMessage, Allocation, Authenticated, float], list[tuple[int, bytes]]]

__all__ = ["ToPeer", "TurnCore", "TurnCounters", "TurnSettings"]


class TurnCore:
    """A TURN server without I/O; see the module docstring."""

    def __init__(
        self,
        settings: TurnSettings,
        *,
        auth: Authenticator,
        peers: PeerPolicy,
        binder: RelayBinder,
        own_endpoints: OwnEndpoints | None = None,
        ports: RelayPortPool | None = None,
        binding: BindingResponder | None = None,
        counters: TurnCounters | None = None,
        quotas: QuotaGate | None = None,
        redirect: RedirectPolicy | None = None,
        on_ended: Callable[[AllocationEnded], None] | None = None,
    ) -> None:
        """Everything the core uses comes in here and stays (h11's ``Connection``): ``binder``
        opens and closes relay sockets, ``own_endpoints`` are never relayed to, ``quotas`` is
        the quota book (the parent's in a worker), ``redirect`` where new allocations go (the
        settings' alternates by default), ``on_ended`` what the I/O layer does with each
        allocation that ends (logs it)."""
        self.settings = settings
        self.redirect = redirect or RedirectPolicy(
            settings.alternate_servers,
            settings.tls_alternate_servers,
            settings.alternate_threshold,
            tls_domain=settings.tls_alternate_domain,
        )
        self.auth = auth
        self.peers = peers
        self.own_endpoints = own_endpoints or OwnEndpoints()
        self.on_ended = on_ended
        self.allocations = AllocationManager(
            reservation_lifetime=settings.reservation_lifetime,
            binder=binder,
            quotas=quotas if quotas is not None else QuotaBook(settings),
            ports=ports,
            ended=self._ended,
        )
        # A TURN server is a STUN server: it answers Binding on its ports (keepalives, RFC 8656),
        # saying what the core's own answers say (SOFTWARE, reason phrases).
        self.binding = binding or BindingResponder(
            ResponderConfig(software=settings.software, reason_phrases=settings.reason_phrases)
        )
        self.counters = counters or TurnCounters()
        self.counters.users.resize(settings.metrics_users)
        self.table = self.allocations.table
        self._software: tuple[tuple[int, bytes], ...] = (
            ((A.SOFTWARE, settings.software.encode()),) if settings.software else ()
        )
        self._last_tick: float | None = None
        self._handlers: dict[int, _Handler] = {
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
        }

    @property
    def ports(self) -> RelayPortPool:
        return self.allocations.ports

    @property
    def quotas(self) -> QuotaGate:
        return self.allocations.quotas

    # -- entry points ----------------------------------------------------------------------

    def handle_stun(
        self, data: bytes, five_tuple: FiveTuple, now: float, wall_now: float
    ) -> bytes | ToPeer | None:
        """One STUN message from a client; see the module docstring.

        ``now`` is the caller's clock for every timer (monotonic in the server, so a wall-clock
        step expires nothing); ``wall_now`` is Unix time, for what carries Unix time: nonces and
        REST credential expiries."""
        if data[:2] == _BINDING_REQUEST:
            # Binding goes to the responder whole: it answers bare requests without the codec.
            reply = self.binding.handle(
                data, five_tuple[1], five_tuple[2], stream=five_tuple[0] != "udp"
            )
            return None if reply is None else reply.data
        if data[:2] == _SEND_INDICATION:
            parts = split_send_indication_untrusted(data)
            if parts is not None:  # the plain shape: no general codec needed
                return self._relay_send(five_tuple, parts[0], parts[1], data[8:20], now)
        try:
            msg = decode_message_untrusted(data)
        except StunDecodeError as exc:
            header = exc.header
            if header is not None and header.cls is MessageClass.REQUEST and not header.classic:
                # RFC 8489 §14.8: 400 "The request was malformed."
                self.counters.requests += 1
                return self._error_bytes(
                    header.method, header.transaction_id, StunError(ErrorCode.BAD_REQUEST)
                )
            self.counters.dropped_not_stun += 1
            return None
        return self.handle_message(msg, five_tuple, now, wall_now)

    def handle_message(
        self, msg: StunMessage, five_tuple: FiveTuple, now: float, wall_now: float
    ) -> bytes | ToPeer | None:
        """A decoded message; Binding goes to the embedded responder."""
        method, cls = msg.method, msg.cls
        if method == Method.BINDING:
            reply = self.binding.handle_message(
                msg, five_tuple[1], five_tuple[2], stream=five_tuple[0] != "udp"
            )
            return None if reply is None else reply.data
        if cls is MessageClass.INDICATION and method == Method.SEND and not msg.header.classic:
            peer, payload = msg.get(A.XOR_PEER_ADDRESS), msg.get(A.DATA)
            return self._relay_send(five_tuple, peer, payload, msg.transaction_id, now)
        if cls is not MessageClass.REQUEST or msg.header.classic:
            self.counters.dropped_indications += 1
            return None
        return self._request(msg, five_tuple, now, wall_now)

    def _request(
        self, msg: StunMessage, five_tuple: FiveTuple, now: float, wall_now: float
    ) -> bytes | None:
        """A TURN request: authenticate, then dispatch; errors become responses here. Wall time
        stops here: a credential's expiry goes on as a deadline on the ``now`` clock."""
        self.counters.requests += 1
        known = KNOWN.get(msg.method)
        if known is None:
            # RFC 8489 §6.3.1: a request of an unknown method gets 400.
            return self._error(msg, StunError(ErrorCode.BAD_REQUEST), None)
        try:
            identity = self.auth.authenticate(
                msg,
                five_tuple[1][0],
                wall_now,  # nonces and REST expiries are Unix times
                check_expiry=msg.method == Method.ALLOCATE,
            )
        except Silent as silent:
            if silent.reason == "auth_backoff":
                self.counters.dropped_auth_backoff += 1
            else:
                self.counters.dropped_unauthorized_rate += 1
            return None
        except StunError as exc:
            return self._error(msg, exc, None)
        if identity.credential_expiry is not None:
            expiry = identity.credential_expiry + now - wall_now
            identity = dataclasses.replace(identity, credential_expiry=expiry)
        try:
            return self._dispatch(msg, five_tuple, identity, known, now)
        except StunError as exc:
            return self._error(msg, exc, identity)

    def _dispatch(
        self,
        msg: StunMessage,
        five_tuple: FiveTuple,
        identity: Authenticated,
        known: frozenset[int],
        now: float,
    ) -> bytes:
        """An authenticated request; returns the success response or raises StunError."""
        if unknown := msg.unknown_comprehension_required(known):
            raise unknown_attributes_error(unknown)
        allocation = self.table.get(five_tuple)
        if msg.method == Method.ALLOCATE:
            if allocation is not None:
                return self._retransmission(msg, allocation)
            # RFC 8489 §10: an authenticated Allocate may be sent elsewhere (300) or, while
            # draining with no alternate, refused (486); see turn/redirect.py.
            alternate = self.redirect.decide(five_tuple[0], len(self.table))
            if alternate is not None:
                if alternate == REFUSE:
                    self.counters.allocations_refused_draining += 1
                else:
                    self.counters.allocations_redirected += 1
                raise self.redirect.error(alternate, five_tuple[0])
            allocation, attributes = self._allocate(msg, five_tuple, identity, now)
        else:
            # RFC 8656 §7.3, §10.2, §11.2: requests other than Allocate need an allocation.
            if allocation is None:
                raise StunError(ErrorCode.ALLOCATION_MISMATCH)
            # RFC 8656 §5: "the server MUST check that the USERNAME ... is the same as the one
            # used to create the allocation"; else 441 (Wrong Credentials).
            if identity.username != allocation.username:
                raise StunError(ErrorCode.WRONG_CREDENTIALS)
            if msg.transaction_id == allocation.last_transaction:
                return allocation.last_response
            # The same username, so the same Unix expiry: re-read on the ``now`` clock, which
            # follows a wall-clock step that happened since (strict expiry, docs/security.md).
            allocation.credential_expiry = identity.credential_expiry
            attributes = self._handlers[msg.method](msg, allocation, identity, now)
        response = self._success(msg, attributes, identity)
        if self.table.get(five_tuple) is allocation:
            allocation.last_transaction = msg.transaction_id
            allocation.last_response = response
        return response

    def handle_timeout(self, now: float) -> None:
        """Expire what has expired and refill bandwidth budgets (call about once a second)."""
        elapsed = 0.0 if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        rate = self.settings.bandwidth
        for allocation in self.table:
            credential = allocation.credential_expiry  # strict expiry caps the lifetime at it
            if self.auth.strict_expiry and credential is not None and credential <= now:
                self.allocations.delete(allocation, "credential_expired", now)
            elif allocation.lifetime_expires <= now:  # RFC 8656 §7.3: not refreshed in time
                self.allocations.delete(allocation, "expired", now)
            else:
                allocation.expire(now)
                if rate:
                    allocation.refill(float(rate), elapsed)
        self.allocations.expire_reservations(now)

    def metrics(self) -> dict[str, float]:
        """Counters and gauges for the /metrics endpoint (see ``counter_samples``)."""
        return counter_samples(self.counters, self.table)

    def close_five_tuple(self, five_tuple: FiveTuple, now: float) -> None:
        """The TCP/TLS connection of ``five_tuple`` closed: RFC 8656 §3.1 ends its allocation."""
        allocation = self.table.get(five_tuple)
        if allocation is not None:
            self.allocations.delete(allocation, "connection_closed", now)

    def close_all(self, now: float) -> None:
        """Release every relay socket (shutdown)."""
        for allocation in self.table:
            self.allocations.delete(allocation, "shutdown", now)
        self.allocations.expire_reservations(None)

    def _ended(self, event: AllocationEnded) -> None:
        self.counters.ended(event)
        if self.on_ended is not None:
            self.on_ended(event)

    # -- requests --------------------------------------------------------------------------

    def _retransmission(self, msg: StunMessage, allocation: Allocation) -> bytes:
        # RFC 8656 §7.2: "If the 5-tuple is currently in use by an existing allocation, the
        # server MUST reject the request with a 437 (Allocation Mismatch) error" - unless this is
        # a retransmission of the request that created it, which gets the same success.
        if msg.transaction_id == allocation.last_transaction:
            return allocation.last_response
        raise StunError(ErrorCode.ALLOCATION_MISMATCH)

    def _allocate(
        self, msg: StunMessage, five_tuple: FiveTuple, identity: Authenticated, now: float
    ) -> tuple[Allocation, list[tuple[int, bytes]]]:
        """RFC 8656 §7.2, "Receiving an Allocate Request": checks in ``_allocate_asks``, then
        quotas, the relay port, and the allocation itself."""
        asks = allocate_asks(msg)
        if self.settings.relay_ip(asks.family) is None:
            # "If the value ... is not supported ... 440 (Address Family not Supported)".
            raise StunError(ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED)
        settings = self.settings
        user, source = quota_key(identity.username), source_key(five_tuple[1][0])
        reservation: Reservation | None = None
        if asks.token is not None:
            # "If the token is not valid, the server MUST reject with 508" (RFC 8656 §7.2).
            reservation = self.table.take_reservation(asks.token)
            if reservation is not None and reservation.expires <= now:
                self.allocations.release_reservation(reservation)
                reservation = None
            if reservation is None:
                raise StunError(ErrorCode.INSUFFICIENT_CAPACITY)
        # Every check that can fail comes before a socket is bound: nothing to undo after but
        # the reservation taken above, which goes back if a check fails (the token stays good).
        try:
            lifetime = self._lifetime(msg, identity, now)
        except StunError:
            self.table.give_back(asks.token, reservation)
            raise
        # RFC 8656 §7.2 "the server MAY ... reject with 486 (Allocation Quota Reached)".
        if not self.allocations.take_slots(user, source, asks.reserve, reservation):
            self.table.give_back(asks.token, reservation)
            raise StunError(ErrorCode.ALLOCATION_QUOTA_REACHED)
        family = asks.family
        reserved_token = b""
        if reservation is not None:
            endpoint, port, family = reservation.endpoint, reservation.port, reservation.family
        else:
            try:
                endpoint, port, reserved_token = self.allocations.bind_relay(
                    family,
                    even=asks.even,
                    reserve=(user, source) if asks.reserve else None,
                    now=now,
                    df=asks.dont_fragment,
                )
            except StunError:  # 508: no port; the slots taken above go back
                self.allocations.quotas.give(user, source, 2 if asks.reserve else 1)
                raise
        allocation = Allocation(
            five_tuple,
            username=identity.username,
            key=identity.key,
            relay=endpoint,
            relayed=(self.settings.advertised_ip(family), port),
            family=family,
            expires=now + lifetime,
            budget=float(settings.bandwidth) if settings.bandwidth else float("inf"),
            credential_expiry=identity.credential_expiry,
            created=now,
        )
        self.table.add(allocation)
        self.allocations.binder.activate(endpoint, allocation)
        self.counters.created(user)
        tid = msg.transaction_id
        attributes: list[tuple[int, bytes]] = [
            (A.XOR_RELAYED_ADDRESS, encode_xor_address(*allocation.relayed, tid)),
            (A.LIFETIME, encode_u32(lifetime)),
        ]
        if reserved_token:
            attributes.append((A.RESERVATION_TOKEN, reserved_token))
        if asks.additional:
            # RFC 8656 §7.2: dual allocation is optional; say why the second family is missing.
            code = ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED
            value = bytes((ADDITIONAL_FAMILY_ERROR, 0, code // 100, code % 100))
            attributes.append((A.ADDRESS_ERROR_CODE, value))
        client_ip, client_port = five_tuple[1]
        attributes.append((A.XOR_MAPPED_ADDRESS, encode_xor_address(client_ip, client_port, tid)))
        return allocation, attributes

    def _refresh(
        self, msg: StunMessage, allocation: Allocation, identity: Authenticated, now: float
    ) -> list[tuple[int, bytes]]:
        """RFC 8656 §7.3, "Receiving a Refresh Request"."""
        family_value = msg.get(A.REQUESTED_ADDRESS_FAMILY)
        # "If the ... REQUESTED-ADDRESS-FAMILY ... does not match the family of the allocation,
        # ... 443 (Peer Address Family Mismatch)".
        if family_value is not None and (
            len(family_value) != 4 or FAMILIES.get(family_value[0]) != allocation.family
        ):
            raise StunError(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
        lifetime = self._lifetime(msg, identity, now)
        if lifetime == 0:
            # "If the 'desired lifetime' is zero, then the request succeeds and the allocation
            # is deleted."
            self.allocations.delete(allocation, "deleted", now)
        else:
            allocation.lifetime_expires = now + lifetime
        return [(A.LIFETIME, encode_u32(lifetime))]

    def _create_permission(
        self, msg: StunMessage, allocation: Allocation, identity: Authenticated, now: float
    ) -> list[tuple[int, bytes]]:
        """RFC 8656 §10.2: all XOR-PEER-ADDRESS attributes succeed, or none is installed."""
        peers = [
            self._peer(value, msg, allocation)
            for atype, value in msg.attributes
            if atype == A.XOR_PEER_ADDRESS
        ]
        if not peers:
            raise StunError(ErrorCode.BAD_REQUEST, "no XOR-PEER-ADDRESS")
        permissions = allocation.permissions
        new = {ip for ip, _ in peers if ip not in permissions}
        if len(permissions) + len(new) > self.settings.max_permissions:
            raise StunError(ErrorCode.INSUFFICIENT_CAPACITY)
        until = now + self.settings.permission_lifetime
        for ip, _ in peers:
            allocation.permit(ip, until, self.own_endpoints.ports_on(ip))
        return []

    def _channel_bind(
        self, msg: StunMessage, allocation: Allocation, identity: Authenticated, now: float
    ) -> list[tuple[int, bytes]]:
        """RFC 8656 §11.2, "Receiving a ChannelBind Request", guards in the RFC's order."""
        number_value = msg.get(A.CHANNEL_NUMBER)
        peer_value = msg.get(A.XOR_PEER_ADDRESS)
        if number_value is None or peer_value is None or len(number_value) != 4:
            raise StunError(ErrorCode.BAD_REQUEST, "CHANNEL-NUMBER or XOR-PEER-ADDRESS missing")
        number = int.from_bytes(number_value[:2], "big")
        # "The channel number is in the range 0x4000 through 0x4FFF (inclusive)."
        if not valid_channel_number(number, rfc5766=self.settings.rfc5766_channels):
            raise StunError(ErrorCode.BAD_REQUEST, "channel number out of range")
        peer = self._peer(peer_value, msg, allocation)
        if peer[1] == 0:
            raise StunError(ErrorCode.BAD_REQUEST, "peer port 0")
        if peer in self.own_endpoints:  # RFC 8656 §21.1.2: a policy refusal, like the denylist
            self.counters.peers_refused += 1
            raise StunError(ErrorCode.FORBIDDEN)
        # "The channel number is not currently bound to a different transport address" and
        # "The transport address is not currently bound to a different channel number."
        channel = allocation.channels.get(number)
        if channel is not None and channel.peer != peer:
            raise StunError(ErrorCode.BAD_REQUEST, "channel bound to another peer")
        other = allocation.channel_by_peer.get(peer)
        if other is not None and other.number != number:
            raise StunError(ErrorCode.BAD_REQUEST, "peer bound to another channel")
        if channel is None and len(allocation.channels) >= self.settings.max_channels:
            raise StunError(ErrorCode.INSUFFICIENT_CAPACITY)
        if peer[0] not in allocation.permissions and (
            len(allocation.permissions) >= self.settings.max_permissions
        ):
            raise StunError(ErrorCode.INSUFFICIENT_CAPACITY)
        # Binding (or refreshing) the channel also installs or refreshes the permission.
        allocation.bind_channel(number, peer, now + self.settings.channel_lifetime)
        until = now + self.settings.permission_lifetime
        allocation.permit(peer[0], until, self.own_endpoints.ports_on(peer[0]))
        return []

    def _relay_send(
        self,
        five_tuple: FiveTuple,
        peer_value: bytes | None,
        data: bytes | None,
        transaction_id: bytes,
        now: float,
    ) -> ToPeer | None:
        """RFC 8656 §11.2 (Send): relay DATA to XOR-PEER-ADDRESS if a permission allows it;
        anything wrong is a silent discard (indications get no response). Both the plain-shape
        shortcut and the general codec end here."""
        counters = self.counters
        allocation = self.table.get(five_tuple)
        if allocation is None or peer_value is None or data is None:
            counters.dropped_indications += 1
            return None
        try:
            peer = decode_xor_address_untrusted(peer_value, transaction_id)
        except StunDecodeError:
            counters.relay.dropped_malformed += 1
            return None
        if not allocation.permits(peer[0], now):
            counters.relay.dropped_no_permission += 1
            return None
        if peer in self.own_endpoints:
            counters.relay.dropped_own_port += 1
            return None
        if not spend_to_peer(allocation, len(data), counters.relay):
            return None
        return ToPeer(allocation.relay, peer, data)

    # -- helpers ---------------------------------------------------------------------------

    def _peer(self, value: bytes, msg: StunMessage, allocation: Allocation) -> Address:
        """A checked XOR-PEER-ADDRESS: 400 malformed, 443 wrong family, 403 not permitted."""
        try:
            ip, port = decode_xor_address_untrusted(value, msg.transaction_id)
        except StunDecodeError:
            raise StunError(ErrorCode.BAD_REQUEST, "malformed XOR-PEER-ADDRESS") from None
        # RFC 8656 §10.2, §11.2: a peer of the other family gets 443. The family is the wire
        # family (an IPv4-mapped IPv6 address is IPv6 here, and the peer policy refuses it).
        if (4 if value[1:2] == b"\x01" else 6) != allocation.family:
            raise StunError(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
        # RFC 8656 §21.1.2 leaves which peers to serve to policy; docs/security.md's denylist: 403.
        if not self.peers.permits(ip):
            self.counters.peers_refused += 1
            raise StunError(ErrorCode.FORBIDDEN)
        return ip, port

    def _lifetime(self, msg: StunMessage, identity: Authenticated, now: float) -> int:
        """The granted lifetime (``requests.desired_lifetime``); strict expiry caps it at the
        credential's expiry (a deadline on the ``now`` clock, see ``_request``)."""
        cap = None
        if self.auth.strict_expiry and identity.credential_expiry is not None:
            cap = identity.credential_expiry - now
        return desired_lifetime(
            msg, self.settings.default_lifetime, self.settings.max_lifetime, cap
        )

    def _success(
        self, msg: StunMessage, attributes: list[tuple[int, bytes]], identity: Authenticated
    ) -> bytes:
        self.counters.responses += 1
        return encode_message(
            msg.method,
            MessageClass.SUCCESS,
            msg.transaction_id,
            [*attributes, *self._software],
            # RFC 8489 §9.2.4: the response uses the integrity attribute the request used.
            integrity_key=None if identity.sha256 else identity.key,
            integrity_sha256_key=identity.key if identity.sha256 else None,
            fingerprint=msg.has_fingerprint,
        )

    def _error(self, msg: StunMessage, error: StunError, identity: Authenticated | None) -> bytes:
        protect = identity if error.code not in NO_INTEGRITY_CODES else None
        if error.code in NO_INTEGRITY_CODES and (
            msg.integrity_offset is not None or msg.integrity_sha256_offset is not None
        ):  # a first, unauthenticated request is no failure
            reason = error.failure if isinstance(error, Challenge) else "unauthorized"
            self.counters.auth_failures[reason] = self.counters.auth_failures.get(reason, 0) + 1
        return self._error_bytes(
            msg.method, msg.transaction_id, error, protect=protect, fingerprint=msg.has_fingerprint
        )

    def _error_bytes(
        self,
        method: int,
        transaction_id: bytes,
        error: StunError,
        *,
        protect: Authenticated | None = None,
        fingerprint: bool = False,
    ) -> bytes:
        """The one place a StunError becomes an error response (integrity-protected like the
        request when ``protect`` names who authenticated it)."""
        errors = self.counters.errors
        errors[error.code] = errors.get(error.code, 0) + 1
        reason = ""
        if self.settings.reason_phrases:
            reason = error.reason or REASON_PHRASES.get(error.code, "")
        attributes = [(int(A.ERROR_CODE), encode_error_code(error.code, reason))]
        attributes.extend(error.attributes)
        attributes.extend(self._software)
        return encode_message(
            method,
            MessageClass.ERROR,
            transaction_id,
            attributes,
            integrity_key=protect.key if protect and not protect.sha256 else None,
            integrity_sha256_key=protect.key if protect and protect.sha256 else None,
            fingerprint=fingerprint,
        )
