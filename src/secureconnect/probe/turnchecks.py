"""The TURN checks: open relay, credential, relayed address, relay-to-relay, clean-up.

Each function runs one check over `TurnSession`s and returns its `Check` (plus what later checks
need). The RFC behind each verdict is cited where it is made; the fixes name our setting and
coturn's. No check raises for a server's behaviour: `NoAnswer` and `ChannelError` become FAIL
lines that say what was waited for.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Sequence

from secureconnect.netaddr import Address, format_address
from secureconnect.probe.addresses import private_range
from secureconnect.probe.transport import ChannelError, NoAnswer
from secureconnect.probe.turnsession import Allocation, TurnSession
from secureconnect.probe.verdicts import Check, Detail, Status, ms
from secureconnect.probe.wire import allocate_request, error_of, refresh_request, text_attribute
from secureconnect.stun import AttrType
from secureconnect.stun.constants import REASON_PHRASES

FIX_OPEN_RELAY = (
    "require credentials: coturn: remove `no-auth`, set `use-auth-secret` with "
    "`static-auth-secret` (or `lt-cred-mech` with users); ours always authenticates, so an "
    "open relay answering here is another server on this port"
)
FIX_CREDENTIAL = (
    "use the server's current shared secret (ours: `turn.secrets`/`turn.secret_file`, or "
    "`secureconnect credentials`; coturn: `static-auth-secret`), or the right user/password "
    "(ours `turn.users`, coturn `user=`), and check that both clocks are right (NTP): a REST "
    "username carries its expiry"
)
FIX_PRIVATE_RELAY = (
    "the server sits behind a 1:1 NAT but advertises its private address: set its public "
    'address, ours `turn.external_addresses = ["PUBLIC_IP"]`, coturn '
    "`external-ip=PUBLIC_IP/PRIVATE_IP`"
)
FIX_RELAY = (
    "open the relay port range to UDP in every firewall (ours `turn.relay_port_min`.."
    "`turn.relay_port_max`, coturn `min-port`..`max-port`); behind a 1:1 NAT the relayed "
    "address must be the public one and the NAT must hairpin"
)
FIX_PEER_DENIED = (
    "the server refuses its own relayed address as a peer: its peer denylist covers it (ours: "
    "`turn.allowed_peers`, `turn.loopback_peers`; coturn: `denied-peer-ip`, "
    "`allow-loopback-peers`)"
)


def _fail(check_id: str, what: str, exc: Exception, fix: str | None = None) -> Check:
    return Check(check_id, Status.FAIL, f"{what}: {exc}", fix)


def code_text(code: int, reason: str) -> str:
    """``401 Unauthorized``: the server's reason phrase, else the RFC's (servers that save
    bytes on unauthenticated replies, ours included, send none)."""
    if not code:
        return reason
    return f"{code} {reason or REASON_PHRASES.get(code, '')}".strip()


def check_open_relay(session: TurnSession) -> tuple[Check, bool]:
    """RFC 8656 §7.2 / RFC 8489 §9.2.4: an Allocate without credentials must get 401 with REALM
    and NONCE. A success is an open relay: anyone may use the server's bandwidth and address.
    The check, and whether the server is an open relay (its allocation was deleted again)."""
    try:
        exchange = session.unauthenticated(allocate_request)
    except (NoAnswer, ChannelError) as exc:
        return _fail("open-relay", "no answer to an Allocate", exc), False
    reply = exchange.reply
    error = error_of(reply)
    details: dict[str, Detail] = {"rtt_ms": ms(exchange.rtt)}
    if error is None:
        # Free what we were given before anything else (unauthenticated, as it was created).
        with contextlib.suppress(NoAnswer, ChannelError):
            session.unauthenticated(lambda _auth: refresh_request(None, 0))
        return Check(
            "open-relay",
            Status.FAIL,
            "OPEN RELAY: the server allocated a relay WITHOUT credentials; anyone can relay "
            "through it",
            FIX_OPEN_RELAY,
            details,
        ), True
    code, reason = error
    realm = text_attribute(reply, AttrType.REALM)
    details.update(code=code, realm=realm)
    if code == 401 and realm is not None and reply.get(AttrType.NONCE) is not None:
        if session.auth is not None:
            session.auth.learn(reply)  # the challenge the authenticated Allocate answers
        return Check(
            "open-relay",
            Status.OK,
            f"not an open relay: 401 to an unauthenticated Allocate (realm {realm!r})",
            details=details,
        ), False
    if code == 401:
        return Check(
            "open-relay",
            Status.FAIL,
            "401 without REALM and NONCE: no client can authenticate (RFC 8489 §9.2.4)",
            details=details,
        ), False
    return Check(
        "open-relay",
        Status.FAIL,
        f"unexpected {code_text(code, reason)} to an unauthenticated Allocate (expected 401)",
        details=details,
    ), False


def check_credential(session: TurnSession) -> tuple[Check, Allocation | None]:
    """RFC 8656 §7.2: the authenticated Allocate succeeds. A 401 to a signed request means the
    credential is wrong (RFC 8489 §9.2.5); a 438 was already retried with the new nonce."""
    try:
        exchange, allocation = session.allocate()
    except (NoAnswer, ChannelError) as exc:
        return _fail("credential", "no answer to the authenticated Allocate", exc), None
    error = error_of(exchange.reply)
    details: dict[str, Detail] = {
        "rtt_ms": ms(exchange.rtt),
        "realm": session.realm,
        "stale_nonce_retries": session.stale_retries,
    }
    if allocation is not None:
        details.update(
            relayed_address=format_address(*allocation.relayed),
            mapped_address=format_address(*allocation.mapped) if allocation.mapped else None,
            lifetime=allocation.lifetime,
            integrity=allocation.integrity,
        )
        mapped = details["mapped_address"]
        if session.auth is None or not session.auth.ready:
            return Check(
                "credential",
                Status.WARN,
                f"allocated without being asked for the credential (relayed "
                f"{details['relayed_address']}): the credential was not tested",
                details=details,
            ), allocation
        return Check(
            "credential",
            Status.OK,
            f"credential accepted: relayed {details['relayed_address']}, mapped {mapped}, "
            f"lifetime {allocation.lifetime} s",
            details=details,
        ), allocation
    return _refused_allocate(session, error, details), None


_REFUSAL_HINTS: dict[int, str] = {
    486: "allocation quota reached: raise ours `turn.user_quota`, coturn `user-quota`",
    508: "the server is out of relay ports or capacity (ours `turn.total_quota` and "
    "`turn.relay_port_min`..`turn.relay_port_max`; coturn `total-quota`, `min-port`..`max-port`)",
    403: "the server forbids this client (an address denylist, or a draining node)",
}


def _refused_allocate(
    session: TurnSession, error: tuple[int, str] | None, details: dict[str, Detail]
) -> Check:
    """The ``credential`` check for an Allocate that did not give an allocation."""
    if error is None:
        return Check(
            "credential",
            Status.FAIL,
            "Allocate succeeded without a readable XOR-RELAYED-ADDRESS (RFC 8656 §7.3)",
            details=details,
        )
    code, reason = error
    details["code"] = code
    if code in (401, 441):
        # RFC 8489 §9.2.5: a 401 to a request that carried MESSAGE-INTEGRITY: wrong credential.
        return Check(
            "credential",
            Status.FAIL,
            f"credential rejected ({code_text(code, reason)}, realm {session.realm!r}): "
            "wrong secret/password, or clock skew",
            FIX_CREDENTIAL,
            details,
        )
    if code == 438:
        return Check(
            "credential",
            Status.FAIL,
            f"438 Stale Nonce after {session.stale_retries} retries with a fresh nonce: the "
            "server's nonces expire at once (is its clock jumping?)",
            details=details,
        )
    return Check(
        "credential",
        Status.FAIL,
        f"Allocate refused: {code_text(code, reason)}",
        _REFUSAL_HINTS.get(code),
        details,
    )


def check_relayed_address(allocation: Allocation, server_ip: str) -> Check:
    """RFC 8656 §18.5: the relayed address is what peers send to. A private one (the probe's
    rule, secureconnect.probe.addresses) from a server reached at a non-private address cannot
    be reached by peers outside the server's network."""
    relayed_ip = allocation.relayed[0]
    relayed = format_address(*allocation.relayed)
    mapped = format_address(*allocation.mapped) if allocation.mapped else None
    why_relayed = private_range(relayed_ip)
    why_server = private_range(server_ip)
    details: dict[str, Detail] = {
        "relayed_address": relayed,
        "mapped_address": mapped,
        "relayed_private": why_relayed,
        "server_private": why_server,
    }
    if why_relayed is None:
        return Check(
            "relayed-address",
            Status.OK,
            f"relayed {relayed} is public (mapped {mapped})",
            details=details,
        )
    if why_server is None:
        return Check(
            "relayed-address",
            Status.FAIL,
            f"relayed address {relayed} is {why_relayed}, but the server is reached at "
            f"non-private {server_ip}: peers outside its network cannot reach the relay",
            FIX_PRIVATE_RELAY,
            details,
        )
    return Check(
        "relayed-address",
        Status.OK,
        f"relayed {relayed} is {why_relayed}, like the server's own {server_ip}: "
        "reachable from that network only",
        details=details,
    )


def _permit(session: TurnSession, peer: Address) -> str | None:
    """CreatePermission (RFC 8656 §10); None on success, else why it failed."""
    reply = session.create_permission(peer).reply
    error = error_of(reply)
    return None if error is None else code_text(*error)


def _one_way(
    sender: TurnSession, to: Address, receiver: TurnSession, payload: bytes, *, deadline: float
) -> tuple[Address | None, float]:
    """Send ``payload`` through ``sender``'s relay to ``to`` until ``receiver`` gets it as a
    Data indication (RFC 8656 §11.4); over UDP the Send indication is repeated every 0.5 s.
    (the peer seen, seconds from the last send)."""
    reliable = sender.channel.reliable
    while True:
        sent = time.monotonic()
        sender.send(to, payload)
        wait = deadline if reliable else min(deadline, sent + 0.5)
        peer = receiver.wait_data(payload, wait)
        if peer is not None or time.monotonic() >= deadline:
            return peer, time.monotonic() - sent


def check_relay(a: TurnSession, b: TurnSession, timeout: float) -> Check:
    """Relay-to-relay through two allocations of one server (no outside peer needed): each
    permits the other's relayed address (RFC 8656 §10), A sends to B's relayed address, which
    must arrive at B as a Data indication, and back; the round trip A → B → A is measured."""
    first, second = a.allocation, b.allocation
    if first is None or second is None:
        return Check("relay", Status.FAIL, "the relay test needs two allocations")
    try:
        for session, peer in ((a, second.relayed), (b, first.relayed)):
            refused = _permit(session, peer)
            if refused is not None:
                fix = FIX_PEER_DENIED if refused.startswith("403") else None
                return Check(
                    "relay",
                    Status.FAIL,
                    f"CreatePermission for {format_address(*peer)} refused: {refused}",
                    fix,
                )
        token = secrets.token_hex(8).encode()
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        seen_by_b, there = _one_way(
            a, second.relayed, b, b"probe " + token + b" a->b", deadline=deadline
        )
        if seen_by_b is None:
            return Check(
                "relay",
                Status.FAIL,
                f"data sent from relay {format_address(*first.relayed)} to relay "
                f"{format_address(*second.relayed)} did not arrive within {timeout:g} s",
                FIX_RELAY,
            )
        seen_by_a, back = _one_way(
            b, first.relayed, a, b"probe " + token + b" b->a", deadline=deadline
        )
        total = time.monotonic() - start
    except (NoAnswer, ChannelError) as exc:
        return _fail("relay", "relay test broke off", exc)
    details: dict[str, Detail] = {
        "a_relayed": format_address(*first.relayed),
        "b_relayed": format_address(*second.relayed),
        "b_saw_peer": format_address(*seen_by_b),
        "a_saw_peer": format_address(*seen_by_a) if seen_by_a else None,
        "a_to_b_ms": ms(there),
        "b_to_a_ms": ms(back),
        "relay_rtt_ms": ms(there + back),
        "elapsed_ms": ms(total),
    }
    if seen_by_a is None:
        return Check(
            "relay",
            Status.FAIL,
            f"A → B relayed, but B → A did not arrive within {timeout:g} s",
            FIX_RELAY,
            details,
        )
    return Check(
        "relay",
        Status.OK,
        f"relay to relay and back: round trip {ms(there + back)} ms "
        f"({details['a_relayed']} ⇄ {details['b_relayed']})",
        details=details,
    )


def cleanup(sessions: Sequence[TurnSession]) -> Check:
    """Refresh with LIFETIME 0 on every allocation made (RFC 8656 §8): the probe leaves none
    behind to count against quotas. 437 (already gone) counts as deleted."""
    deleted = 0
    problems: list[str] = []
    for session in sessions:
        if session.allocation is None:
            continue
        try:
            error = error_of(session.delete_allocation().reply)
        except (NoAnswer, ChannelError) as exc:
            problems.append(str(exc))
            continue
        if error is None or error[0] == 437:
            deleted += 1
        else:
            problems.append(code_text(*error))
    if problems:
        return Check(
            "cleanup",
            Status.WARN,
            f"Refresh(lifetime 0) failed: {'; '.join(problems)}; the allocation expires by itself",
        )
    if not deleted:
        return Check("cleanup", Status.SKIP, "no allocation to delete")
    return Check("cleanup", Status.OK, f"deleted {deleted} allocation(s) with Refresh(lifetime 0)")
