"""Revoked TURN users (turn/revocations.py): what is refused, what expires, the file's format,
and the authenticator's 401 for a revoked credential with the right key."""

from __future__ import annotations

import json

import pytest
from turn_core_driver import NOW, SERVER, client, error_code, make_core

from secureconnect.stun import Method
from secureconnect.turn.revocations import (
    MAX_REVOCATIONS,
    SKEW,
    Revocation,
    RevocationError,
    Revocations,
)
from secureconnect.turn.sessions import allocation_records, end_allocations

TTL = 86_400.0
T = 1_800_000_000.0  # the revocation's Unix time


def rest(user: str, expiry: float) -> str:
    return f"{int(expiry)}:{user}"


def test_rest_credentials_minted_before_are_refused_and_those_minted_after_are_not() -> None:
    revoked = Revocations()
    revoked.revoke("mallory", T)
    assert revoked.refuses(rest("mallory", T - 1 + TTL), T + 5, TTL)  # minted a second before
    assert revoked.refuses(rest("mallory", T - 3600 + 600), T + 5, TTL)  # short TTL, before
    assert not revoked.refuses(rest("mallory", T + 1 + TTL), T + 5, TTL)  # full TTL, after
    assert not revoked.refuses(rest("alice", T - 1 + TTL), T + 5, TTL)  # someone else
    assert not Revocations().refuses(rest("mallory", T), T, TTL)


def test_until_refuses_every_credential_of_the_user_until_then() -> None:
    revoked = Revocations()
    revoked.revoke("mallory", T, until=T + 3600)
    fresh = rest("mallory", T + 1800 + TTL)  # minted half an hour after, full TTL
    assert revoked.refuses(fresh, T + 1800, TTL)
    assert not revoked.refuses(fresh, T + 3601, TTL)


def test_static_users_stay_refused_until_lifted_or_until() -> None:
    revoked = Revocations()
    revoked.revoke("bob", T)
    assert revoked.refuses("bob", T + 10 * TTL, TTL)
    assert revoked.prune(T + 10 * TTL, TTL, frozenset({"bob"})) == 0
    assert revoked.lift("bob")
    assert not revoked.refuses("bob", T, TTL)
    revoked.revoke("bob", T, until=T + 60)
    assert revoked.refuses("bob", T + 59, TTL)
    assert not revoked.refuses("bob", T + 61, TTL)


def test_entries_lapse_once_nothing_they_refuse_can_be_used() -> None:
    revoked = Revocations()
    revoked.revoke("mallory", T)
    revoked.revoke("eve", T, until=T + 2 * TTL)
    assert revoked.prune(T + TTL, TTL, frozenset()) == 0
    assert revoked.prune(T + TTL + SKEW + 1, TTL, frozenset()) == 1
    assert set(revoked.entries) == {"eve"}
    assert revoked.prune(T + 2 * TTL + 1, TTL, frozenset()) == 1


def test_the_list_is_bounded_and_checks_its_users() -> None:
    revoked = Revocations({f"u{i}": Revocation(f"u{i}", T) for i in range(MAX_REVOCATIONS)})
    with pytest.raises(RevocationError, match="revoked already"):
        revoked.revoke("one-more", T)
    revoked.revoke("u1", T + 1)  # replacing one is fine
    for bad in ("", "x" * 257, "tab\there"):
        with pytest.raises(RevocationError):
            Revocations().revoke(bad, T)


def test_the_file_round_trips_and_damage_is_named() -> None:
    revoked = Revocations()
    revoked.revoke("mallory", T)
    revoked.revoke("bob", T, until=T + 60)
    again = Revocations.from_json(revoked.to_json())
    assert again.entries == revoked.entries
    huge = "9" * 400  # an int too large for a float
    for text, why in [
        ("{", "not JSON"),
        ("[]", "version 1"),
        (json.dumps({"version": 1, "revocations": {}}), "must be a list"),
        (json.dumps({"version": 1, "revocations": [1]}), "object"),
        (json.dumps({"version": 1, "revocations": [{"user": "a"}]}), "revoked_at"),
        (json.dumps({"version": 1, "revocations": [{"user": "a", "revoked_at": 1e999}]}), "finite"),
        ('{"version": 1, "revocations": [{"user": "a", "revoked_at": ' + huge + "}]}", "finite"),
        ("[" * 100_000, "not JSON"),  # nested too deeply: RecursionError inside json
    ]:
        with pytest.raises(RevocationError, match=why):
            Revocations.from_json(text)


def test_a_revoked_credential_with_the_right_key_gets_401_and_its_allocations_end() -> None:
    core, relays = make_core()
    mallory = client(core, user="mallory", expiry=NOW + 3600)
    alice = client(core, ("udp", ("198.51.100.8", 40000), SERVER), user="alice")
    assert error_code(mallory.allocate()) is None
    assert error_code(alice.allocate()) is None
    [listed] = allocation_records(core, NOW + 2, NOW + 2, user="mallory")
    assert listed["user"] == "mallory"
    assert listed["transport"] == "udp"
    assert listed["age"] == 2
    core.auth.revocations.revoke("mallory", NOW + 5)
    assert end_allocations(core, NOW + 5, user="mallory", reason="revoked") == 1
    assert [a["user"] for a in allocation_records(core, NOW + 5, NOW + 5)] == ["alice"]
    assert core.counters.allocations_ended == {"revoked": 1}
    again = client(core, ("udp", ("198.51.100.9", 40000), SERVER), user="mallory")
    assert error_code(again.allocate(now=NOW + 6)) == 401
    assert core.counters.auth_failures == {"revoked": 1}
    assert error_code(alice.request(Method.REFRESH, now=NOW + 6)) is None
    with pytest.raises(ValueError, match="name a user"):
        end_allocations(core, NOW)
    assert len([e for e in relays.bound if e.closed]) == 1
