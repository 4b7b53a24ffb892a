"""The password-guessing backoff (issue #12, finding 8) and its bounded memory."""

from __future__ import annotations

from secureconnect.ratelimit import FailureBackoff
from secureconnect.turn.auth import GuessThrottle


def test_backoff_starts_after_the_threshold_and_doubles_to_the_cap() -> None:
    backoff = FailureBackoff(3, base=1.0, cap=4.0)
    for _ in range(3):
        backoff.failed("k", 0.0)
        assert not backoff.blocked("k", 0.0)
    backoff.failed("k", 0.0)  # 4th: 1 s
    assert backoff.blocked("k", 0.9)
    assert not backoff.blocked("k", 1.0)
    backoff.failed("k", 1.0)  # 5th: 2 s
    assert backoff.blocked("k", 2.9)
    for _ in range(5):
        backoff.failed("k", 3.0)
    assert backoff.blocked("k", 6.9)
    assert not backoff.blocked("k", 7.0)  # capped at 4 s


def test_backoff_forgives_a_success_and_forgets_old_failures() -> None:
    backoff = FailureBackoff(1, forget=10.0)
    backoff.failed("k", 0.0)
    backoff.forgive("k")
    backoff.failed("k", 0.0)
    assert not backoff.blocked("k", 0.0)
    backoff.failed("k", 20.0)  # the earlier failure is forgotten: this is the first again
    assert not backoff.blocked("k", 20.0)


def test_backoff_memory_is_bounded() -> None:
    backoff = FailureBackoff(1, max_keys=100)
    for i in range(10_000):
        backoff.failed(str(i), 0.0)
    assert len(backoff._keys) == 100


def test_a_guesser_does_not_lock_out_other_users_of_its_address() -> None:
    throttle = GuessThrottle()
    for _ in range(50):
        throttle.failed("198.51.100.7", "1800000000:mallory", 0.0, static=False)
    assert not throttle.admits("198.51.100.7", "1800000000:mallory", 0.0)
    assert not throttle.admits("198.51.100.7", "1800003600:mallory", 0.0)  # same user part
    assert throttle.admits("198.51.100.7", "1800000000:alice", 0.0)
    assert throttle.admits("198.51.100.8", "1800000000:mallory", 0.0)


def test_a_static_user_backs_off_from_every_address_after_many_failures() -> None:
    throttle = GuessThrottle()
    for i in range(20):
        throttle.failed(f"198.51.100.{i}", "alice", 0.0, static=True)
    assert throttle.admits("203.0.113.1", "alice", 0.0)  # 20 allowed
    throttle.failed("198.51.100.99", "alice", 0.0, static=True)
    assert not throttle.admits("203.0.113.1", "alice", 0.5)
    assert throttle.admits("203.0.113.1", "alice", 1.0)


def test_a_backoff_decided_elsewhere_is_kept_and_reported() -> None:
    """``block`` (a backoff the parent decided for every TURN worker) makes a key back off
    until then at least, counts it as past the threshold, and never shortens a longer one."""
    backoff = FailureBackoff(20, base=1.0, cap=30.0)
    assert backoff.blocked_until("carol") == 0.0
    backoff.block("carol", 108.0, 100.0)
    assert backoff.blocked("carol", 107.9)
    assert not backoff.blocked("carol", 108.0)
    assert backoff.blocked_until("carol") == 108.0
    backoff.block("carol", 104.0, 101.0)  # a shorter verdict arriving late changes nothing
    assert backoff.blocked_until("carol") == 108.0
    backoff.failed("carol", 109.0)  # past the threshold already: the next failure backs off
    assert backoff.blocked("carol", 109.5)
