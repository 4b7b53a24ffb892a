"""The sans-IO TURN core's authentication: REST and static credentials, nonces, expiry
policies, RFC 8489 password algorithms, and which clock each check uses."""

from __future__ import annotations

import pytest
from turn_core_driver import (
    NOW,
    REALM,
    SERVER,
    Client,
    client,
    error_code,
    lifetime,
    make_core,
)

from secureconnect.stun import (
    AttrType,
    ErrorCode,
    MessageClass,
    Method,
    StunMessage,
    decode_message_untrusted,
    encode_message,
    long_term_key,
    new_transaction_id,
)
from secureconnect.stun.message import long_term_key_sha256, verify_integrity_sha256
from secureconnect.turn.core import TurnCore

A = AttrType
UDP = (A.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0)))


# -- authentication ---------------------------------------------------------------------------


def test_wrong_password_expired_credential_wrong_realm_get_401() -> None:
    core, _ = make_core()
    c = client(core)
    c.password = "wrong"
    assert error_code(c.allocate()) == ErrorCode.UNAUTHORIZED
    expired = client(core, expiry=NOW - 1)
    assert error_code(expired.allocate()) == ErrorCode.UNAUTHORIZED
    realm = client(core)
    realm.realm = "elsewhere.example"
    assert error_code(realm.allocate()) == ErrorCode.UNAUTHORIZED
    forged = client(core)
    forged.nonce = "not-a-nonce-we-issued"
    assert error_code(forged.allocate()) == ErrorCode.STALE_NONCE
    # turn_auth_failures_total's reasons (auth.AUTH_FAILURES): why each one failed
    assert core.counters.auth_failures == {
        "unauthorized": 1,
        "expired": 1,
        "realm": 1,
        "stale-nonce": 1,
    }


def test_stale_nonce_gets_438_with_a_fresh_nonce() -> None:
    core, _ = make_core()
    c = client(core)
    c.allocate()
    later = NOW + 3 * 3600
    response = c.request(Method.REFRESH, [], now=later)
    assert error_code(response) == ErrorCode.STALE_NONCE
    assert response is not None
    fresh = response.get(A.NONCE)
    assert fresh
    assert fresh.decode() != c.nonce
    c.nonce = fresh.decode()
    assert error_code(c.request(Method.REFRESH, [], now=later)) is None


def test_missing_username_realm_or_nonce_with_integrity_is_400() -> None:
    core, _ = make_core()
    c = client(core)
    key = long_term_key(c.username, REALM, c.password)
    data = encode_message(
        Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id(), [UDP], integrity_key=key
    )
    out = core.handle_stun(data, c.five_tuple, NOW, NOW)
    assert isinstance(out, bytes)
    assert error_code(decode_message_untrusted(out)) == ErrorCode.BAD_REQUEST


def test_static_users_and_wrong_credentials_on_someone_elses_allocation() -> None:
    core, _ = make_core(static_users={"lab": "pw"})
    lab = Client(core, "lab", "pw")
    assert error_code(lab.allocate()) is None
    intruder = client(core)  # same 5-tuple, other user
    assert error_code(intruder.request(Method.REFRESH, [])) == ErrorCode.WRONG_CREDENTIALS


def test_unauthenticated_requests_are_rate_limited_per_source() -> None:
    core, _ = make_core(unauthorized_rate=1.0)
    c = client(core)
    answers = [c.raw(Method.ALLOCATE, [UDP], authenticate=False) for _ in range(5)]
    assert [a is not None for a in answers] == [True, True, False, False, False]
    assert core.counters.dropped_unauthorized_rate == 3
    other = client(core, ("udp", ("198.51.100.99", 9), SERVER))
    assert other.raw(Method.ALLOCATE, [UDP], authenticate=False) is not None
    assert c.raw(Method.ALLOCATE, [UDP], authenticate=False, now=NOW + 2) is not None


def test_strict_expiry_caps_the_lifetime_and_ends_the_session() -> None:
    core, relays = make_core(strict_expiry=True)
    c = client(core, expiry=NOW + 100)
    assert lifetime(c.allocate()) == 100
    core.handle_timeout(NOW + 101)
    assert len(core.table) == 0
    assert relays.open() == []


def test_lax_expiry_lets_a_session_refresh_past_its_credential() -> None:
    core, _ = make_core()
    c = client(core, expiry=NOW + 100)
    c.allocate()
    response = c.request(Method.REFRESH, [], now=NOW + 200)
    assert error_code(response) is None


# -- RFC 8489 password algorithms (SHA-256) ---------------------------------------------------

ALGORITHMS = bytes((0, 2, 0, 0, 0, 1, 0, 0))  # SHA-256, MD5: what the server offers


def _sha256_allocate(
    core: TurnCore, *, algorithms: bytes = ALGORITHMS, algorithm: int = 2
) -> StunMessage | None:
    c = client(core)
    challenge = c.raw(Method.ALLOCATE, [UDP], authenticate=False)
    assert challenge is not None
    nonce = challenge.get(A.NONCE)
    assert nonce is not None
    assert nonce.startswith(b"obMatJos2")  # the nonce cookie carries the feature bits
    assert challenge.get(A.PASSWORD_ALGORITHMS) == ALGORITHMS
    hash_key = long_term_key_sha256 if algorithm == 2 else long_term_key
    key = hash_key(c.username, REALM, c.password)
    attrs = [
        UDP,
        (A.PASSWORD_ALGORITHMS, algorithms),
        (A.PASSWORD_ALGORITHM, algorithm.to_bytes(2, "big") + b"\0\0"),
        (A.USERNAME, c.username.encode()),
        (A.REALM, REALM.encode()),
        (A.NONCE, nonce),
    ]
    data = encode_message(
        Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id(), attrs, integrity_sha256_key=key
    )
    out = core.handle_stun(data, c.five_tuple, NOW, NOW)
    assert isinstance(out, bytes)
    response = decode_message_untrusted(out)
    if response.cls is MessageClass.SUCCESS:
        assert verify_integrity_sha256(response, key)
        assert response.integrity_offset is None  # answered in kind: SHA-256 only
    return response


def test_sha256_integrity_when_offered_and_chosen() -> None:
    core, _ = make_core(sha256=True)
    assert error_code(_sha256_allocate(core)) is None
    assert len(core.table) == 1


def test_sha256_bid_down_protection() -> None:
    core, _ = make_core(sha256=True)
    # A man in the middle that strips SHA-256 from the offered list is caught.
    stripped = bytes((0, 1, 0, 0))
    assert error_code(_sha256_allocate(core, algorithms=stripped)) == ErrorCode.BAD_REQUEST
    assert error_code(_sha256_allocate(core, algorithm=9)) == ErrorCode.BAD_REQUEST


def test_legacy_md5_clients_still_work_when_sha256_is_offered() -> None:
    core, _ = make_core(sha256=True)
    assert error_code(client(core).allocate()) is None


def test_stale_nonce_answers_are_rate_limited_like_401s() -> None:
    core, _ = make_core(unauthorized_rate=1.0)
    c = client(core)
    c.nonce = "forged"
    answers = [c.allocate() if i < 2 else c.raw(Method.ALLOCATE, [UDP]) for i in range(4)]
    assert [a is not None for a in answers] == [True, True, False, False]


def test_timers_run_on_the_monotonic_clock_and_auth_on_the_wall_clock() -> None:
    """The I/O layer passes a monotonic ``now`` and Unix time as ``wall_now``: a wall-clock step
    (NTP, a resumed VM) moves REST expiry checks but expires no allocation."""
    core, relays = make_core()
    mono = 1000.0
    c = client(core)
    # REST expiry NOW + 3600 checked on Unix time, the lifetime on the monotonic clock
    assert error_code(c.allocate(now=mono, wall_now=NOW)) is None
    core.handle_timeout(mono + 1)  # the wall clock may jump as it likes: nothing expires
    assert len(core.table) == 1
    assert relays.open() != []
    core.handle_timeout(mono + 600)  # the allocation's own lifetime still ends it
    assert len(core.table) == 0


def test_strict_expiry_follows_a_wall_clock_step_at_the_next_request() -> None:
    """Strict expiry judges every request on the wall time of that request: after a step of two
    hours the next Refresh gets 438 (the nonce carries the old time), then 401 (the credential
    expired by the new wall time); no timer moved with the step."""
    core, _ = make_core(strict_expiry=True)
    mono = 1000.0
    c = client(core)
    assert error_code(c.allocate(now=mono, wall_now=NOW)) is None
    now, wall_now = mono + 10, NOW + 10 + 7200
    stale = c.request(Method.REFRESH, now=now, wall_now=wall_now)  # the nonce's time is old
    assert error_code(stale) == 438
    assert stale is not None
    nonce = stale.get(A.NONCE)
    assert nonce is not None
    c.nonce = nonce.decode()
    # Expired by the new wall time, though its lifetime has not run out:
    assert error_code(c.request(Method.REFRESH, now=now, wall_now=wall_now)) == 401
    core.handle_timeout(mono + 599)  # no timer moved: the lifetime ends it as it would have
    assert len(core.table) == 1
    core.handle_timeout(mono + 600)
    assert len(core.table) == 0


def test_an_expiry_in_milliseconds_is_refused_at_allocate() -> None:
    """A REST username whose expiry is further ahead than the minter's max_ttl (a week) is not
    current: milliseconds where seconds belong would make it good for fifty thousand years."""
    core, _ = make_core()
    assert error_code(client(core, expiry=NOW * 1000).allocate()) == 401
    assert error_code(client(core, expiry=NOW + 6 * 86400, user="b").allocate()) is None


def test_static_user_names_that_look_like_rest_usernames_are_refused() -> None:
    with pytest.raises(ValueError, match="REST"):
        make_core(static_users={"1700000000": "pw"})
