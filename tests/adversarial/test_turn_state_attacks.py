"""Regression tests for the TURN state-machine and resource findings of the adversarial pass
(issue #12): each drives the real appliance over real sockets the way the attacker did, then
checks that nobody else paid for it (no component restart, bystanders intact, nothing leaked).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from attacker import Bystander, echo_peer, error_code, open_client, turn_target

STREAMS = ["tcp", "tls"]


@pytest.mark.parametrize("transport", STREAMS)
def test_allocate_and_refresh_zero_in_one_segment_cost_only_that_connection(
    tmp_path: Path, transport: str
) -> None:
    """Finding 1: Allocate and Refresh(LIFETIME=0) back to back in one TCP/TLS segment made
    the relay task wait on a closed socket; the TURN component crashed and every allocation of
    every user was gone. Now the pair is just an allocation created and deleted."""
    with turn_target(tmp_path) as target, echo_peer() as peer:
        bystander = Bystander.start(target, peer)
        baseline = target.fds()
        for _ in range(20):
            attacker = open_client(transport, target)
            attacker.learn_nonce()
            attacker.send_raw(attacker.allocate_bytes() + attacker.refresh_bytes(0))
            first, second = attacker.receive_message(), attacker.receive_message()
            assert error_code(first) is None, first
            assert error_code(second) is None, second
            attacker.close()
        time.sleep(0.3)  # let the last connection's close reach the server
        target.assert_healthy()
        bystander.check()
        assert target.fds() <= baseline + 2
        bystander.close()
