"""A black-box state-machine fuzzer for the TURN component: random sequences of valid requests.

Why: an adversarial pass found the TURN state machines fragile in ways no single-request test
sees. An Allocate and a Refresh(LIFETIME=0) in one TCP segment crashed the whole component (a
relay task waited on a socket closed before it started), and the supervisor's restart lost every
user's allocations; EVEN-PORT with the R bit then Refresh 0, repeated, held reserved relay
sockets outside any quota. Both are *sequence* bugs: each message is valid, the order kills.

What: each test starts the real appliance (``secureconnect run turn``) on loopback with
bystander clients that allocated before the fuzzing (see ``tests/support/turnharness.py``), then
plays random sequences (``tests/support/turnseq.py``) of authenticated Allocate (EVEN-PORT with
and without R, RESERVATION-TOKEN, REQUESTED-ADDRESS-FAMILY, DONT-FRAGMENT, LIFETIME),
Refresh (LIFETIME 0 included), CreatePermission, ChannelBind, Send and ChannelData, plus
retransmissions, requests replayed on other 5-tuples, requests with no allocation, another
user's Refresh and abrupt closes - over UDP, TCP and TLS, many messages per segment and streams
split at random offsets. Answers may be successes or errors; only the invariants count: no
component crash or logged traceback, descriptors bounded by the user's quota and back to the
baseline after cleanup, every bystander's allocation and relay intact, quotas restored.

On the first broken invariant the failing sequence is shrunk against fresh servers and the test
fails with the invariant, the evidence (log lines, the exception) and the minimal reproduction,
step by step. Failures are expected while the bugs they catch are open: nothing is skipped.

Bounded: each test fuzzes for ``TURN_FUZZ_SECONDS`` (default 8) or ``TURN_FUZZ_CASES`` cases
and shrinks for at most ``TURN_FUZZ_SHRINK_SECONDS`` (default 8). The seed is random unless
``TURN_FUZZ_SEED`` is set; it is printed in every failure, so any failure replays exactly::

    TURN_FUZZ_SEED=1a2b3c4d .venv/bin/pytest tests/adversarial/test_turn_sequences.py -k tcp
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from turnfuzz import case_source, explain, fuzz
from turnharness import Harness

SEED = os.environ.get("TURN_FUZZ_SEED") or secrets.token_hex(4)
SECONDS = float(os.environ.get("TURN_FUZZ_SECONDS", "8"))
CASES = int(os.environ.get("TURN_FUZZ_CASES", "400"))
SHRINK_SECONDS = float(os.environ.get("TURN_FUZZ_SHRINK_SECONDS", "8"))

pytestmark = pytest.mark.slow  # about 9 s per transport (27 s in all), up to 20 s each on failure


@pytest.mark.timeout(SECONDS + SHRINK_SECONDS + 90)  # + start, shrinking's last replay, stop
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_random_request_sequences_keep_the_turn_invariants(transport: str, tmp_path: Path) -> None:
    """Random sequences whose first client is on ``transport`` (others sometimes on another
    transport) break none of the invariants listed in tests/support/turnharness.py."""
    label = f"first client over {transport}"
    with Harness(tmp_path) as harness:
        result = fuzz(
            harness, case_source(f"{SEED}-{transport}", transport), seconds=SECONDS, max_cases=CASES
        )
        print(
            f"TURN_FUZZ_SEED={SEED} {transport}: {result.cases} cases, {result.steps} steps in "
            f"{result.seconds:.1f} s; answers: {dict(result.answers.most_common(12))}"
        )
        if result.failing is None:
            assert result.cases > 0
            return
        report = explain(harness, result, seed=SEED, label=label, shrink_seconds=SHRINK_SECONDS)
    report += (
        f"\n\nReplay: TURN_FUZZ_SEED={SEED} .venv/bin/pytest "
        f"tests/adversarial/test_turn_sequences.py -k {transport}"
    )
    pytest.fail(report, pytrace=False)
