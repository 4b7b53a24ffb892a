"""The sans-IO parts of running several nodes: the node registry's ranking, the mirror of a
node's sessions (channel messages to events), the TURN redirect policy, URL redaction."""

from __future__ import annotations

from typing import Any

import pytest

from secureconnect.signal.backplane import Deliver, Replaced
from secureconnect.signal.mirror import EARLY_SECONDS, LocalSession, Mirror
from secureconnect.signal.redisplane import redacted
from secureconnect.signal.registry import LoadMeter, node_report, ranked_urls
from secureconnect.turn.redirect import REFUSE, RedirectPolicy, redirect_error


def report(
    turn: str, allocations: int, *, region: str = "", draining: bool = False
) -> dict[str, Any]:
    return {
        "turn": [turn],
        "stun": [turn.replace("turn:", "stun:")],
        "allocations": allocations,
        "pps": 0,
        "region": region,
        "draining": draining,
    }


def test_registry_offers_the_least_loaded_nodes_region_first_never_draining() -> None:
    nodes: dict[str, dict[str, Any]] = {
        "a": report("turn:a", 50),
        "b": report("turn:b", 10),
        "c": report("turn:c", 90, region="eu"),
        "d": report("turn:d", 0, draining=True),
        "e": {"turn": [], "allocations": 0},  # signaling only
    }
    assert ranked_urls(nodes, "")[1] == ("turn:b", "turn:a")
    stun, turn = ranked_urls(nodes, "eu")
    assert turn == ("turn:c", "turn:b")
    assert stun == ("stun:c", "stun:b")
    assert ranked_urls({"d": report("turn:d", 0, draining=True)}, "")[1] == ("turn:d",)
    assert ranked_urls({}, "") == ((), ())
    junk: dict[str, dict[str, Any]] = {
        "x": {"turn": "not a list"},
        "y": {"turn": [5, "turn:y"], "allocations": "many"},
    }
    assert ranked_urls(junk, "")[1] == ("turn:y",)


def test_node_report_sums_sources_and_rates_packets() -> None:
    meter = LoadMeter()
    sources = [
        {"turn_allocations": 3, 'turn_relayed_packets_total{direction="to_peer"}': 100},
        {"turn_allocations": 2, "signal_connections": 7},
    ]
    first = node_report(
        sources, region="eu", stun_urls=("s",), turn_urls=("t",), meter=meter, now=10.0
    )
    assert (first["allocations"], first["sessions"], first["pps"]) == (5, 7, 0.0)
    sources[0]['turn_relayed_packets_total{direction="to_peer"}'] = 300
    later = node_report(sources, region="eu", stun_urls=(), turn_urls=(), meter=meter, now=12.0)
    assert later["pps"] == 100.0
    assert later["stun"] == []  # no TURN here: no STUN URL to offer either


def test_mirror_delivers_once_in_any_order() -> None:
    mirror = Mirror()
    # A delivery and a membership change arrive before the join's reply is read...
    signal = {"seq": 3, "type": "signal", "from": "p-b", "data": 1}
    assert mirror.channel({"d": "p-a", "m": signal}, 0.0) == []
    joined = {"type": "peer-joined", "peer": "p-c"}
    assert mirror.channel({"n": "r", "p": "p-c", "m": joined}, 0.0) == []
    # ... the reply says the replay went up to seq 2 and p-b was in the room.
    session = LocalSession("r", 1, "sha", seq=2, known={"p-b"})
    assert mirror.add("p-a", session, 1.0) == [Deliver("p-a", signal), Deliver("p-a", joined)]
    # Again from the channel: nothing new.
    assert mirror.channel({"d": "p-a", "m": signal}, 1.0) == []
    assert mirror.channel({"n": "r", "p": "p-c", "m": joined}, 1.0) == []
    left = {"type": "peer-left", "peer": "p-b"}
    assert mirror.channel({"n": "r", "p": "p-b", "m": left}, 1.0) == [Deliver("p-a", left)]
    assert mirror.converge("r", {"p-a", "p-d"}) == [
        Deliver("p-a", {"type": "peer-joined", "peer": "p-d"}),
        Deliver("p-a", {"type": "peer-left", "peer": "p-c"}),
    ]
    # Take-over names an epoch: a stale one changes nothing.
    assert mirror.channel({"x": "p-a", "e": 0}, 2.0) == []
    assert mirror.channel({"x": "p-a", "e": 1}, 2.0) == [Replaced("p-a", 1)]
    assert mirror.sessions == {}
    assert mirror.rooms == {}


def test_mirror_forgets_early_messages() -> None:
    mirror = Mirror()
    mirror.channel({"d": "p-a", "m": {"seq": 1, "type": "signal"}}, 0.0)
    mirror.forget_early(EARLY_SECONDS)
    assert mirror.add("p-a", LocalSession("r", 1, "sha"), EARLY_SECONDS) == []


def test_redirect_policy() -> None:
    policy = RedirectPolicy((("10.0.0.2", 3478), ("10.0.0.3", 3478)), (), threshold=2)
    assert policy.decide("udp", 1) is None
    assert policy.decide("udp", 2) == ("10.0.0.2", 3478)
    assert policy.decide("tcp", 5) == ("10.0.0.3", 3478)
    assert policy.decide("udp", 5) == ("10.0.0.2", 3478)
    assert policy.decide("tls", 5) is None  # no TLS alternate: served here
    policy.draining = True
    assert policy.decide("tls", 0) == REFUSE
    assert policy.decide("udp", 0) == ("10.0.0.3", 3478)
    assert redirect_error(REFUSE).code == 486
    error = redirect_error(("10.0.0.2", 3478))
    assert error.code == 300
    assert error.attributes[0][0] == 0x8023
    # RFC 8489 §10, §14.16: a TLS client's 300 names the domain of the alternate's certificate.
    named = RedirectPolicy((), (("10.0.0.4", 5349),), tls_domain="turn.example.net")
    assert named.error(("10.0.0.4", 5349), "tls").attributes[1] == (0x8003, b"turn.example.net")
    assert len(named.error(("10.0.0.2", 3478), "udp").attributes) == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://u:pw@h:1/0?ssl_ca_certs=/x", "rediss://u:***@h:1/0?ssl_ca_certs=/x"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis+sentinel://u:p@a:1,b:2/main", "redis+sentinel://u:***@a:1,b:2/main"),
    ],
)
def test_urls_are_shown_without_password(url: str, shown: str) -> None:
    assert redacted(url) == shown
