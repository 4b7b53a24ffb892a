"""Churn through a real appliance: 100,000 short-lived REST usernames allocate and leave, and
neither the TURN process's memory nor /metrics grows (issue #17, item 3: per-user Prometheus
labels that leak with REST usernames are why coturn ships them off; docs/metrics.md).

Every username is new (``<expiry>:churn-N``): each Allocates over UDP and deletes its
allocation with a Refresh 0, and one in ten first relays 100 bytes to a peer, so that the
per-user table keeps evicting (a user with traffic replaces the lightest one). The TURN
component runs in the appliance's main process (``turn.workers`` 1), whose resident memory
(VmRSS) and /metrics are read after 10,000 usernames and again after 100,000: the memory within
10 % and the same number of metric lines. A hard deadline bounds the churn; the figures are
printed (``pytest -s``) and in the failure message.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from churn import Churn
from turnwire import problem_lines, rss_kib

from secureconnect.testing.appliance import Appliance

pytestmark = pytest.mark.slow

TOTAL = 100_000
FIRST = 10_000
DEADLINE = 150.0  # seconds for the whole churn; here 23 s (27 s to 48 s on a busy machine)
METRICS_USERS = 20
TRAFFIC_EVERY = 10


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    """Where the usernames with traffic send it (nothing reads it: the kernel drops the rest)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def turn_pid(appliance: Appliance) -> int:
    """The process that serves TURN over UDP: the appliance itself without TURN workers (a
    worker logs ``worker-started pid=...``; there must be none here)."""
    assert "event=worker-started" not in appliance.log_text(), "expected turn.workers = 1"
    pid = appliance.running.proc.pid
    assert b"secureconnect" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return pid


def metrics_text(appliance: Appliance) -> str:
    status, body = appliance.get("/metrics")
    assert status == 200
    return body.decode()


def samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def shape(line: str) -> str:
    """A sample's name and labels, a user's name (other than other) left out."""
    name = line.rpartition(" ")[0]
    return re.sub(r'user="(?!other")(?:[^"\\]|\\.)*"', 'user="*"', name)


def value(text: str, name: str) -> float:
    for line in samples(text):
        if line.rpartition(" ")[0] == name:
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} not in /metrics")


@dataclass
class Checkpoint:
    """What was measured once ``usernames`` had allocated and left."""

    usernames: int
    seconds: float
    rss_kib: int
    metrics: str

    def figures(self) -> str:
        rate = self.usernames / self.seconds
        lines = samples(self.metrics)
        return (
            f"{self.usernames} usernames in {self.seconds:.1f} s ({rate:.0f}/s): "
            f"VmRSS {self.rss_kib} KiB, /metrics {len(self.metrics.splitlines())} lines "
            f"({len(lines)} samples), {len(self.metrics.encode())} bytes"
        )


@pytest.mark.secureconnect(f"turn.metrics_users={METRICS_USERS}")
def test_memory_and_metrics_stay_flat_through_100k_usernames(
    appliance: Appliance, peer: socket.socket
) -> None:
    pid = turn_pid(appliance)
    churn = Churn(
        ("127.0.0.1", appliance.ports.turn),
        appliance.turn_secret,
        traffic_every=TRAFFIC_EVERY,
        peer=peer.getsockname(),
    )
    churn.open()
    checkpoints: list[Checkpoint] = []
    started = time.monotonic()
    try:
        for target in (FIRST, TOTAL):
            churn.run(target, started + DEADLINE)
            elapsed = time.monotonic() - started
            assert churn.completed == target, (
                f"the churn missed its {DEADLINE:.0f} s deadline: {churn.completed} of {target} "
                f"usernames in {elapsed:.1f} s, errors {dict(churn.errors)}, "
                f"{churn.retransmits} retransmissions"
            )
            checkpoints.append(Checkpoint(target, elapsed, rss_kib(pid), metrics_text(appliance)))
    finally:
        churn.close()
    first, last = checkpoints
    report = "; ".join(c.figures() for c in checkpoints)
    print(f"\nchurn: {report}; {churn.retransmits} retransmissions")
    assert not churn.errors, (dict(churn.errors), report)
    # Memory: flat (the first 10,000 filled every pool and table that has a bound)
    assert last.rss_kib <= 1.10 * first.rss_kib, report
    # /metrics: as many lines, the same series but for which users the table holds
    assert len(last.metrics.splitlines()) == len(first.metrics.splitlines()), report
    before, after = samples(first.metrics), samples(last.metrics)
    assert [shape(line) for line in before] == [shape(line) for line in after], report
    users = {line.split('"')[1] for line in after if line.startswith("turn_user_allocations")}
    assert len(users) == METRICS_USERS + 1, users  # the heaviest users, and other
    text = last.metrics
    assert value(text, "turn_allocations_created_total") == TOTAL
    assert value(text, 'turn_allocations_ended_total{reason="deleted"}') == TOTAL
    assert value(text, "turn_allocation_lifetime_seconds_count") == TOTAL
    assert value(text, "turn_allocations") == 0
    relayed = churn.relayed * len(churn.payload)
    assert value(text, 'turn_relayed_bytes_total{direction="to_peer"}') == relayed
    # Every byte is under a user's series or other's; only the users the first scrape showed
    # and that were evicted after it are missing from the last scrape (their series ended).
    per_user = sum(
        float(line.rpartition(" ")[2])
        for line in after
        if line.startswith("turn_user_relayed_bytes_total") and "to_peer" in line
    )
    assert relayed - METRICS_USERS * len(churn.payload) <= per_user <= relayed
    log = appliance.log_text()
    assert log.count("event=allocation-ended") == TOTAL
    assert "reason=deleted duration_s=" in log
    assert not problem_lines(log.splitlines())
