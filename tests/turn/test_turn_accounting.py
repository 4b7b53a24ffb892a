"""Accounting in the sans-IO core (docs/metrics.md): each allocation's traffic, the record of
every allocation that ends (its reason, lifetime and totals), the lifetime histogram and the
bounded per-user series."""

from __future__ import annotations

import logging
import random
import socket

import pytest
from turn_core_driver import (
    CLIENT,
    NOW,
    PEER,
    SERVER,
    Client,
    client,
    make_core,
    settings,
)

from secureconnect.accounting import OTHER, TopTable
from secureconnect.config.checks import MAX_METRICS_USERS
from secureconnect.stun import AttrType, MessageClass, Method, encode_message, new_transaction_id
from secureconnect.turn.allocation import AllocationEnded, Traffic
from secureconnect.turn.core import TurnCore
from secureconnect.turn.peerpolicy import PeerPolicy
from secureconnect.turn.relaypath import wrap_peer_data
from secureconnect.turn.settings import MAX_USER_LABEL, retired_name, user_samples
from secureconnect.turn.udpplane import log_allocation_ended
from secureconnect.turn.workerlink import encode_report

A = AttrType
ALLOW_ALL = PeerPolicy(allow=["0.0.0.0/0"])


def send(
    core: TurnCore,
    five_tuple: tuple[str, tuple[str, int], tuple[str, int]],
    data: bytes,
    now: float = NOW,
) -> None:
    """A Send indication of ``data`` to PEER from ``five_tuple`` (the core relays it)."""
    tid = new_transaction_id()
    attrs = [(A.XOR_PEER_ADDRESS, client(core).peer_attr(PEER, tid)[1]), (A.DATA, data)]
    message = encode_message(Method.SEND, MessageClass.INDICATION, tid, attrs)
    core.handle_stun(message, five_tuple, now, now)


def from_peer(
    core: TurnCore,
    five_tuple: tuple[str, tuple[str, int], tuple[str, int]],
    data: bytes,
    now: float = NOW,
) -> None:
    """A peer's datagram to the allocation of ``five_tuple``, as the I/O layer wraps it."""
    allocation = core.table.get(five_tuple)
    assert allocation is not None
    out = wrap_peer_data(allocation, data, PEER, now, core.counters.relay, rng=random.Random(1))
    assert out is not None


def permit(c: Client, now: float = NOW) -> None:
    tid = new_transaction_id()
    response = c.request(
        Method.CREATE_PERMISSION, [c.peer_attr(PEER, tid)], transaction_id=tid, now=now
    )
    assert response is not None
    assert response.cls is MessageClass.SUCCESS, response


def test_every_end_is_recorded_once_with_its_reason_lifetime_and_totals() -> None:
    core, relays = make_core(settings(relay_ipv4="192.0.2.1"), peers=ALLOW_ALL, strict_expiry=True)
    ended: list[AllocationEnded] = []
    core.on_ended = ended.append
    tuples = {
        name: ("tcp" if name == "dave" else "udp", (f"198.51.100.{i}", 4000 + i), SERVER)
        for i, name in enumerate(("alice", "bob", "carol", "dave", "eve"), 1)
    }
    clients = {}
    for name, five_tuple in tuples.items():
        expiry = NOW + 100 if name == "carol" else NOW + 7200
        clients[name] = c = client(core, five_tuple, user=name, expiry=expiry)
        assert c.allocate().cls is MessageClass.SUCCESS
    alice = clients["alice"]
    permit(alice)
    send(core, tuples["alice"], b"hello")
    from_peer(core, tuples["alice"], b"back!!")
    alice_allocation = core.table.get(tuples["alice"])
    assert alice_allocation is not None
    assert alice_allocation.traffic() == Traffic(1, 5, 1, 6)
    assert alice.request(Method.REFRESH, [(A.LIFETIME, bytes(4))], now=NOW + 5) is not None
    core.close_five_tuple(tuples["dave"], NOW + 7)
    core.handle_timeout(NOW + 100)  # carol's credential (strict expiry caps her lifetime)
    core.handle_timeout(NOW + 601)  # bob and eve: not refreshed (default lifetime 600)
    assert [(e.user, e.reason) for e in ended] == [
        ("alice", "deleted"),
        ("dave", "connection_closed"),
        ("carol", "credential_expired"),
        ("bob", "expired"),
        ("eve", "expired"),
    ]
    first = ended[0]
    assert first.traffic == Traffic(1, 5, 1, 6)
    assert first.duration == 5
    assert first.transport == "udp"
    assert first.client == tuples["alice"][1]
    assert first.username == alice.username
    assert first.log_fields() == {
        "user": "alice",
        "username": alice.username,
        "transport": "udp",
        "client": "198.51.100.1:4001",
        "relayed": f"192.0.2.1:{first.relayed[1]}",
        "reason": "deleted",
        "duration_s": 5.0,
        "to_peer_packets": 1,
        "to_peer_bytes": 5,
        "to_client_packets": 1,
        "to_client_bytes": 6,
    }
    counters = core.counters
    assert counters.allocations_ended == {
        "deleted": 1,
        "connection_closed": 1,
        "credential_expired": 1,
        "expired": 2,
    }
    # the counters from before the reasons keep their meaning
    assert (counters.allocations_deleted, counters.allocations_expired) == (2, 3)
    samples = core.metrics()
    assert samples['turn_allocations_ended_total{reason="expired"}'] == 2
    assert samples["turn_allocation_lifetime_seconds_count"] == 5
    assert samples["turn_allocation_lifetime_seconds_sum"] == 5 + 7 + 100 + 601 + 601
    assert samples['turn_allocation_lifetime_seconds_bucket{le="5"}'] == 1
    assert samples['turn_allocation_lifetime_seconds_bucket{le="120"}'] == 3
    assert relays.open() == []
    # once deleted, nothing more is recorded for it (its slot was given back once)
    assert core.allocations.delete(alice_allocation, "killed", NOW + 9) is None
    assert len(ended) == 5
    assert alice_allocation.traffic() == Traffic(1, 5, 1, 6)  # its totals stay its own


def test_shutdown_ends_what_is_left_and_the_log_line_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core, _ = make_core()
    core.on_ended = log_allocation_ended
    client(core).allocate()
    with caplog.at_level(logging.INFO, logger="secureconnect.turn"):
        core.close_all(NOW + 30)
    [record] = [r for r in caplog.records if r.getMessage() == "allocation-ended"]
    logged = record.sc_fields  # type: ignore[attr-defined]
    assert logged["reason"] == "shutdown"
    assert logged["user"] == "alice"
    assert logged["duration_s"] == 30
    assert logged["client"] == f"{CLIENT[0]}:{CLIENT[1]}"


def test_per_user_series_count_live_allocations_once_and_sum_to_the_totals() -> None:
    core, _ = make_core(settings(relay_ipv4="192.0.2.1"), peers=ALLOW_ALL)
    users = ("alice", "bob", "alice")
    tuples = [("udp", (f"198.51.100.{i}", 5000), SERVER) for i in range(len(users))]
    for user, five_tuple in zip(users, tuples, strict=True):
        c = client(core, five_tuple, user=user)
        c.allocate()
        permit(c)
    send(core, tuples[0], b"x" * 10)
    send(core, tuples[1], b"y" * 20)
    from_peer(core, tuples[2], b"z" * 30)
    samples = core.metrics()  # live allocations count before they end
    assert samples['turn_user_allocations_total{user="alice"}'] == 2
    assert samples['turn_user_relayed_bytes_total{user="alice",direction="to_peer"}'] == 10
    assert samples['turn_user_relayed_bytes_total{user="alice",direction="to_client"}'] == 30
    assert samples['turn_user_relayed_bytes_total{user="bob",direction="to_peer"}'] == 20
    assert samples['turn_user_allocations_total{user="other"}'] == 0
    send(core, tuples[0], b"x" * 5)
    core.close_all(NOW + 1)  # what was counted at the scrape is not counted again at the end
    samples = core.metrics()
    assert samples['turn_user_relayed_bytes_total{user="alice",direction="to_peer"}'] == 15
    for direction in ("to_peer", "to_client"):
        per_user = sum(
            v
            for k, v in samples.items()
            if k.startswith("turn_user_relayed_bytes_total") and direction in k
        )
        assert per_user == samples[f'turn_relayed_bytes_total{{direction="{direction}"}}']


def test_per_user_series_are_bounded_and_off_at_zero() -> None:
    core, _ = make_core(settings(relay_ipv4="192.0.2.1", metrics_users=2), peers=ALLOW_ALL)
    for i in range(50):
        five_tuple = ("udp", (f"198.51.100.{i}", 6000), SERVER)
        c = client(core, five_tuple, user=f"user{i}")
        c.allocate()
        permit(c)
        send(core, five_tuple, bytes(i))
        core.metrics()
        c.request(Method.REFRESH, [(A.LIFETIME, bytes(4))])
    users = {k.split('"')[1] for k in core.metrics() if k.startswith("turn_user_allocations_total")}
    assert len(users) == 3  # two users and other, whoever came and went
    assert OTHER in users
    assert "user49" in users  # the heaviest
    core, _ = make_core(settings(metrics_users=0))
    client(core).allocate()
    assert not [k for k in core.metrics() if k.startswith("turn_user_")]


def test_a_dead_workers_per_user_samples_are_kept_as_other() -> None:
    assert retired_name('turn_user_allocations_total{user="alice"}') == (
        'turn_user_allocations_total{user="other"}'
    )
    assert retired_name('turn_user_relayed_bytes_total{user="a\\"b",direction="to_peer"}') == (
        'turn_user_relayed_bytes_total{user="other",direction="to_peer"}'
    )
    assert retired_name("turn_allocations_created_total") == "turn_allocations_created_total"


def test_a_workers_report_with_the_most_and_longest_user_labels_fits_its_socket() -> None:
    """metrics_users at its maximum, every name as long as a USERNAME may be and as costly to
    escape as it gets: the worker's report to its parent stays one SOCK_SEQPACKET datagram
    (the socket pair's send buffer, about 200 KB)."""
    users = TopTable(MAX_METRICS_USERS, 3)
    for i in range(MAX_METRICS_USERS):
        users.add(f'{i}"\\é\n' * 100, 10**12, (10**9, 10**12, 10**12))
    samples = user_samples(users)
    assert len(samples) == 3 * (MAX_METRICS_USERS + 1)  # long names stay apart
    assert max(len(k.split('"')[1]) for k in samples) <= 2 * MAX_USER_LABEL
    report = encode_report(["metrics", {**samples, **make_core()[0].metrics()}])
    assert len(report) < 200_000
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        left.send(report)
        assert right.recv(1 << 20) == report
