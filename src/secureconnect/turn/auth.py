"""Long-term credential authentication for TURN requests (RFC 8489 §9.2, RFC 8656 §5).

Theory of operation
-------------------
:meth:`Authenticator.authenticate` takes a decoded request and either returns the
:class:`Authenticated` identity (username and the long-term key that protects the response) or
raises :class:`~secureconnect.stun.StunError` with the attributes the error response needs
(REALM and a fresh NONCE for 401 and 438). It stores nothing per client: nonces are stateless
HMACs (:class:`~secureconnect.credentials.NonceMint`), and the only per-source state is the
bounded 401 rate limiter, which exists to keep the server from being an amplifier.

Passwords come from two places:

* TURN REST API usernames ``<expiry>:<user>`` (or a bare ``<expiry>``): one candidate password per
  configured shared secret, so secrets rotate without a flag day. The expiry is checked when
  ``check_expiry`` is set (at Allocate, and on every request in strict mode). Policy: a session
  created before its credential expired may keep refreshing after it, as coturn and LiveKit do,
  unless ``strict_expiry`` is on (then Refresh/CreatePermission/ChannelBind get 401 after the
  expiry and the allocation's lifetime never extends past it).
* Static users from the config (username -> password), for labs and legacy clients.

``now`` is Unix time in seconds here, because REST usernames carry a Unix expiry and nonces
carry their issue time (the core passes the ``wall_now`` its caller gave it, and turns the
credential's expiry into a deadline on its own clock).

Every MAC comparison is constant-time (``hmac.compare_digest`` inside ``verify_integrity``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from secureconnect.credentials import (
    CredentialMinter,
    NonceMint,
    StaticUsers,
    nonce_features,
    parse_expiry,
)
from secureconnect.ratelimit import FailureBackoff, RateLimiter
from secureconnect.stun import (
    AttrType,
    ErrorCode,
    StunError,
    StunMessage,
    long_term_key,
    verify_integrity,
)
from secureconnect.stun.attributes import decode_text_untrusted
from secureconnect.stun.constants import MAX_TEXT_BYTES, MAX_USERNAME_BYTES
from secureconnect.stun.message import (
    StunDecodeError,
    long_term_key_sha256,
    verify_integrity_sha256,
)
from secureconnect.turn.allocation import quota_key
from secureconnect.turn.revocations import Revocations


class Silent(Exception):
    """The request gets no answer at all; ``reason`` names why, for the drop counters:
    ``unauthorized_rate`` (the source is over its 401 rate) or ``auth_backoff`` (it is backing
    off after failed attempts)."""

    def __init__(self, reason: str = "unauthorized_rate") -> None:
        super().__init__(reason)
        self.reason = reason


#: Why a request that carried credentials got 401 or 438 (``turn_auth_failures_total{reason}``,
#: docs/metrics.md), in RFC 8489 §9.2.4's order: ``stale-nonce`` (438: a NONCE expired, forged
#: or issued to another address), ``realm`` (a REALM other than ours), ``expired`` (a REST
#: credential past its expiry, or further ahead than ``credential_ttl`` allows), ``unauthorized``
#: (MESSAGE-INTEGRITY does not check: a wrong password, an unknown user, a REST name signed with
#: a secret we do not have), ``revoked`` (the right key, of a user revoked by the operator:
#: turn/revocations.py).
AUTH_FAILURES: Final = ("stale-nonce", "realm", "expired", "unauthorized", "revoked")


class Challenge(StunError):
    """A 401 or 438 with REALM and a fresh NONCE; ``failure`` says why (:data:`AUTH_FAILURES`;
    it only counts when the request carried credentials: a first request without them is the
    normal start of every client)."""

    def __init__(self, code: int, attributes: tuple[tuple[int, bytes], ...], failure: str) -> None:
        super().__init__(code, attributes=attributes)
        self.failure = failure


def static_user_backoff() -> FailureBackoff:
    """A static user from any address: 20 failures, then 1 s doubling to 30 s."""
    return FailureBackoff(20, base=1.0, cap=30.0)


class UserBackoff(Protocol):
    """What :class:`GuessThrottle` asks and tells about static users (a
    :class:`~secureconnect.ratelimit.FailureBackoff`, or one shared across processes)."""

    def blocked(self, key: str, now: float) -> bool: ...
    def failed(self, key: str, now: float) -> None: ...


class GuessThrottle:
    """Backoff against online password guessing (RFC 8489 §9.2.4 leaves it to the server).

    Failed attempts (a wrong key, an unknown user, a stale or forged nonce) are counted under
    two keys, each with its own :class:`~secureconnect.ratelimit.FailureBackoff`:

    * the client address with the user (``quota_key``): 5 failures, then 1 s doubling to 64 s,
      so guessing one account from one address gets a handful of tries a minute;
    * a static user from any address (REST names are HMACs of a server secret, nothing to
      guess): 20 failures, then up to 30 s - distributed guessing slows down too, at the price
      of a bounded lockout of that name (docs/security.md).

    Nothing is keyed by the address alone: a guesser behind a NAT must not lock out the other
    users of that address. While a key backs off, its requests are dropped unevaluated
    (:class:`Silent`): the right password does not succeed at once after wrong ones, and no
    HMAC is computed for them.
    """

    __slots__ = ("pairs", "users")

    def __init__(self, users: UserBackoff | None = None) -> None:
        """``users``: the static users' backoff, this process's own by default; with TURN
        workers one shared by every process (docs/workers.md), since a guesser can spread
        over the workers by choosing its addresses."""
        self.pairs = FailureBackoff(5, base=1.0, cap=64.0)
        self.users: UserBackoff = users if users is not None else static_user_backoff()

    def admits(self, source_ip: str, username: str, now: float) -> bool:
        """Whether a request for ``username`` from ``source_ip`` may be evaluated now."""
        pair = f"{source_ip}|{quota_key(username)}"
        return not (self.pairs.blocked(pair, now) or self.users.blocked(username, now))

    def failed(self, source_ip: str, username: str, now: float, *, static: bool) -> None:
        self.pairs.failed(f"{source_ip}|{quota_key(username)}", now)
        if static:
            self.users.failed(username, now)

    def succeeded(self, source_ip: str, username: str) -> None:
        self.pairs.forgive(f"{source_ip}|{quota_key(username)}")


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who sent a request whose MESSAGE-INTEGRITY (or -SHA256) checked."""

    username: str
    key: bytes
    credential_expiry: float | None  # REST credentials only
    sha256: bool = False  # the request used MESSAGE-INTEGRITY-SHA256: so does the response


_USERNAME: Final = int(AttrType.USERNAME)
_REALM: Final = int(AttrType.REALM)
_NONCE: Final = int(AttrType.NONCE)
_ALGORITHMS: Final = int(AttrType.PASSWORD_ALGORITHMS)
_ALGORITHM: Final = int(AttrType.PASSWORD_ALGORITHM)
#: RFC 8489 §18.1: bit 0 of the Security Feature Set, "Password algorithms" (the first bit of
#: the 24 bits the nonce cookie carries).
FEATURE_PASSWORD_ALGORITHMS: Final = 0x800000
MD5: Final = 0x0001  # RFC 8489 §18.5 STUN Password Algorithms registry
SHA256: Final = 0x0002
#: PASSWORD-ALGORITHMS as we send it (RFC 8489 §14.11): SHA-256 first (preferred), then MD5,
#: each an algorithm number and a zero parameter length.
OUR_ALGORITHMS: Final = bytes((0, SHA256, 0, 0, 0, MD5, 0, 0))


class Authenticator:
    """Checks long-term credentials; see the module docstring."""

    __slots__ = (
        "guesses",
        "minter",
        "named",
        "nonces",
        "realm",
        "revocations",
        "sha256",
        "static_users",
        "strict_expiry",
        "unauthorized",
    )

    def __init__(
        self,
        *,
        realm: str,
        minter: CredentialMinter,
        nonces: NonceMint,
        static_users: Mapping[str, str] | None = None,
        strict_expiry: bool = False,
        unauthorized: RateLimiter | None = None,
        sha256: bool = False,
        user_backoff: UserBackoff | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self.realm = realm
        #: users the operator revoked (``secureconnect revoke``), shared with the admin server
        self.revocations = revocations if revocations is not None else Revocations()
        self.sha256 = sha256  # offer RFC 8489 password algorithms (SHA-256 integrity)
        self.minter = minter
        self.nonces = nonces
        # Validated (no REST-looking names, no empty passwords) by StaticUsers.
        self.static_users = StaticUsers(static_users or {})
        self.strict_expiry = strict_expiry
        self.unauthorized = unauthorized or RateLimiter.per_second(20.0)
        limit = self.unauthorized
        self.named = RateLimiter(5 * limit.rate, 5 * limit.burst, limit.max_sources)
        self.guesses = GuessThrottle(user_backoff)

    def challenge(
        self,
        code: int,
        source_ip: str,
        now: float,
        username: str | None = None,
        failure: str = "unauthorized",
    ) -> Challenge:
        """A 401 or 438 carrying REALM and a fresh NONCE (RFC 8489 §9.2.4), unless the source
        is over its rate, in which case :class:`Silent` is raised instead; ``failure`` is why
        (:data:`AUTH_FAILURES`)."""
        # Both 401 and 438 answer requests nobody has authenticated: rate-limit both per source
        # (docs/security.md: unauthenticated answers are the amplification to bound). A request
        # that names a user is limited per address *and user*, so a flooder behind a client's
        # NAT does not use up the 401 that client needs to start; random names cannot buy more
        # than ``named`` allows the address in all (five times the per-key rate).
        if username is None:
            allowed = self.unauthorized.allow(source_ip, now)
        else:
            allowed = self.unauthorized.allow(
                f"{source_ip}|{quota_key(username)}", now
            ) and self.named.allow(source_ip, now)
        if not allowed:
            raise Silent
        features = FEATURE_PASSWORD_ALGORITHMS if self.sha256 else 0
        attributes = [
            (_REALM, self.realm.encode()),
            (_NONCE, self.nonces.issue(now, source_ip, features).encode()),
        ]
        if self.sha256:
            # RFC 8489 §9.2.4: with the "Password algorithms" bit, the server includes
            # PASSWORD-ALGORITHMS in 401 and 438 responses.
            attributes.append((_ALGORITHMS, OUR_ALGORITHMS))
        return Challenge(code, tuple(attributes), failure)

    def authenticate(
        self, msg: StunMessage, source_ip: str, now: float, *, check_expiry: bool
    ) -> Authenticated:
        """RFC 8489 §9.2.4, in its order; raises StunError (or Silent) when the request fails."""
        # "If the message does not contain a MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256
        # attribute, the server MUST generate an error response with an error code of 401".
        if msg.integrity_offset is None and msg.integrity_sha256_offset is None:
            raise self.challenge(ErrorCode.UNAUTHORIZED, source_ip, now)
        # "If the message contains a MESSAGE-INTEGRITY ... but is missing either the USERNAME or
        # USERHASH, REALM, or NONCE attribute, the server MUST generate ... 400".
        try:
            username = _text(msg, _USERNAME, MAX_USERNAME_BYTES)
            realm = _text(msg, _REALM, MAX_TEXT_BYTES)
            nonce = _text(msg, _NONCE, MAX_TEXT_BYTES)
        except StunDecodeError:
            raise StunError(ErrorCode.BAD_REQUEST) from None
        if username is None or realm is None or nonce is None:
            raise StunError(ErrorCode.BAD_REQUEST)
        guesses = self.guesses
        if not guesses.admits(source_ip, username, now):
            raise Silent("auth_backoff")  # nothing evaluated: see GuessThrottle
        expiry = parse_expiry(username)
        # "If the NONCE is no longer valid, the server MUST generate ... 438 (Stale Nonce)".
        if not self.nonces.check(nonce, now, source_ip):
            guesses.failed(source_ip, username, now, static=False)
            raise self.challenge(ErrorCode.STALE_NONCE, source_ip, now, username, "stale-nonce")
        # A realm other than ours cannot produce a valid key: 401 like a wrong password.
        if realm != self.realm:
            raise self.challenge(ErrorCode.UNAUTHORIZED, source_ip, now, username, "realm")
        hash_key = _algorithm(msg, nonce)
        if expiry is not None:
            passwords = self.minter.passwords_for(username)
            # Expiry of a REST credential: checked at Allocate, and always in strict mode. An
            # expiry more than CredentialMinter.max_ttl ahead is refused too: milliseconds
            # where seconds belong would make a credential good for fifty thousand years.
            if (check_expiry or self.strict_expiry) and not self.minter.is_current(username, now):
                raise self.challenge(ErrorCode.UNAUTHORIZED, source_ip, now, username, "expired")
        else:
            static = self.static_users.get(username)
            passwords = (static,) if static is not None else ()
        # "If the USERNAME does not contain a username value currently valid within the server
        # ... 401"; "... compute the value for MESSAGE-INTEGRITY ... If the resulting value does
        # not match ... 401".
        sha256 = msg.integrity_sha256_offset is not None
        verify = verify_integrity_sha256 if sha256 else verify_integrity
        for password in passwords:
            key = hash_key(username, self.realm, password)
            if verify(msg, key):
                guesses.succeeded(source_ip, username)
                # The key is right, but the operator revoked the credential (turn/revocations.py):
                # "not currently valid within the server", RFC 8489 §9.2.4's 401. Checked after
                # the MAC, so only the credential's holder learns that it was revoked.
                if self.revocations.refuses(username, now, self.minter.max_ttl):
                    raise self.challenge(
                        ErrorCode.UNAUTHORIZED, source_ip, now, username, "revoked"
                    )
                credential_expiry = float(expiry) if expiry is not None else None
                return Authenticated(username, key, credential_expiry, sha256)
        guesses.failed(source_ip, username, now, static=expiry is None)
        raise self.challenge(ErrorCode.UNAUTHORIZED, source_ip, now, username)


def _algorithm(msg: StunMessage, nonce: str) -> Callable[[str, str, str], bytes]:
    """The long-term key function the request asks for (RFC 8489 §9.2.4 bid-down checks).

    With the "Password algorithms" bit in the nonce, PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM
    come together or not at all (then MD5); the list must be exactly ours, and the chosen
    algorithm one of it; anything else is 400. Without the bit they are ignored (MD5).
    """
    algorithms, algorithm = msg.get(_ALGORITHMS), msg.get(_ALGORITHM)
    if not nonce_features(nonce) & FEATURE_PASSWORD_ALGORITHMS:
        return long_term_key
    if algorithms is None and algorithm is None:
        return long_term_key
    if algorithms != OUR_ALGORITHMS or algorithm is None or len(algorithm) < 4:
        raise StunError(ErrorCode.BAD_REQUEST, "PASSWORD-ALGORITHMS does not match")
    number, params = int.from_bytes(algorithm[:2], "big"), int.from_bytes(algorithm[2:4], "big")
    if params or number not in (MD5, SHA256):
        raise StunError(ErrorCode.BAD_REQUEST, "unsupported PASSWORD-ALGORITHM")
    return long_term_key_sha256 if number == SHA256 else long_term_key


def _text(msg: StunMessage, attr: int, limit: int) -> str | None:
    value = msg.get(attr)
    return None if value is None else decode_text_untrusted(value, limit)
