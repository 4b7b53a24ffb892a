"""Regression tests for the TURN authentication findings of the adversarial pass (issue #12):
online password guessing, and a flooder sharing a client's address."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from attacker import WireClient, error_code, open_client, turn_target

from secureconnect.stun import AttrType

A = AttrType
USERS = 'turn.users=["alice:correct-horse", "bob:battery-staple"]'


def test_wrong_guesses_make_the_right_password_wait(tmp_path: Path) -> None:
    """Finding 8: wrong guesses for a static user were evaluated at 18,000/s from one address
    and the right password then succeeded at once. Now, after a few failures, that address's
    requests for that user are dropped unevaluated for a growing backoff, and the right one
    does not get through during it; another user from another address is unaffected."""
    with turn_target(tmp_path, USERS) as target:
        guesser = open_client("udp", target, timeout=0.3)
        guesser.username = "alice"
        guesser.learn_nonce()
        answered = 0
        for i in range(30):
            guesser.password = f"guess-{i}"
            guesser.send_raw(guesser.allocate_bytes())
            try:
                reply = guesser.receive_message()
            except TimeoutError:
                continue
            assert error_code(reply) == 401
            answered += 1
        # Five free tries, then one answer per backoff period (1, 2, 4, 8 s...) in ~8 s.
        assert answered <= 10
        guesser.password = "correct-horse"
        guesser.send_raw(guesser.allocate_bytes())
        with pytest.raises(TimeoutError):
            guesser.receive_message()
        other = open_client("udp", target, source_ip="127.0.0.2")
        other.username, other.password = "bob", "battery-staple"
        assert error_code(other.allocate()) is None
        target.assert_healthy()


def test_a_flooder_behind_the_same_address_does_not_starve_a_client(tmp_path: Path) -> None:
    """Finding 10: the 401 limiter was per source address only, so a flooder sharing a NAT
    with a real client cut that client's Allocates to 4 of 9. Requests that name a user are
    now limited per address and user: a flood of bad credentials under one name leaves the
    challenges another user needs."""
    with turn_target(tmp_path) as target:
        stop = threading.Event()

        def flood() -> None:
            flooder = open_client("udp", target, user="mallory", timeout=0.2)
            flooder.nonce = b"forged-or-stale-nonce"  # every request earns a 438
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                for _ in range(50):
                    flooder.send_raw(flooder.allocate_bytes())
                time.sleep(0.005)
            flooder.close()

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        try:
            time.sleep(0.5)  # the flood has used up whatever the address had
            results = []
            for _ in range(9):
                client = WireClient("udp", target.port, user="alice", timeout=2.0)
                try:
                    results.append(error_code(client.allocate()))
                except TimeoutError:
                    results.append(-1)
                finally:
                    client.close()
        finally:
            stop.set()
            thread.join(timeout=5)
        assert results == [None] * 9
        target.assert_healthy()
