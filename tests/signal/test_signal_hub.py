"""The sans-IO signaling hub: explicit ``now``, numbered connections, no sockets.

A small harness feeds frames to :class:`SignalHub` and sorts what it returns by connection, so
each test reads like the wire: "conn 2 gets a welcome, conn 1 gets peer-joined".
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

import pytest
from default_settings import hub_settings
from hub_outbound import by_connection
from prometheus_client.parser import text_string_to_metric_families

from secureconnect.signal.backplane import MemoryBackplane
from secureconnect.signal.exposition import render
from secureconnect.signal.hub import (
    CLOSE_POLICY,
    CLOSE_REPLACED,
    HubSettings,
    Outbound,
    SignalHub,
)
from secureconnect.signal.tokens import RoomTokens

Message = dict[str, Any]
T0 = 1_800_000_000.0
SETTINGS = hub_settings(
    max_room_size=3,
    max_message_bytes=1024,
    rate_limit=1000.0,
    rate_burst=1000.0,
    resume_grace=30.0,
    resume_buffer=3,
)
#: A tight limit for the rate-limit tests: 8 messages/s (binary-exact times), burst 5.
LIMITED = replace(SETTINGS, rate_limit=8.0, rate_burst=5.0, abuse_strikes=20)
ICE_TTL = 100


def ice(peer: str, now: float) -> tuple[list[dict[str, Any]], int]:
    """A fake ICE source that says for whom and when it minted."""
    return [{"urls": ["turn:192.0.2.1:3478"], "username": f"{int(now)}:{peer}"}], ICE_TTL


def directory(hub: SignalHub) -> MemoryBackplane:
    """The hub's in-memory directory (the default backplane)."""
    assert isinstance(hub.backplane, MemoryBackplane)
    return hub.backplane


class Harness:
    """A hub plus helpers: ``send`` returns {conn: [messages]} and records closes."""

    def __init__(self, settings: HubSettings = SETTINGS, tokens: RoomTokens | None = None) -> None:
        self.hub = SignalHub(settings, ice, tokens=tokens, rng=random.Random(7))
        self.closes: dict[int, int] = {}
        self.welcomes: dict[int, Message] = {}

    def open(self, *conns: int, now: float = T0) -> None:
        for conn in conns:
            self.hub.open(conn, now)

    def collect(self, outbound: list[Outbound]) -> dict[int, list[Message]]:
        return by_connection(outbound, self.closes)

    def send(self, conn: int, message: Message | str, now: float = T0) -> dict[int, list[Message]]:
        frame = message if isinstance(message, str) else json.dumps(message)
        return self.collect(self.hub.receive(conn, frame, now, now))

    def join(self, conn: int, room: str = "r", now: float = T0, **extra: Any) -> Message:
        out = self.send(conn, {"type": "join", "room": room, **extra}, now)
        welcome = out[conn][0]
        assert welcome["type"] == "welcome", out
        self.welcomes[conn] = welcome
        return welcome

    def peer(self, conn: int) -> str:
        return str(self.welcomes[conn]["peer"])

    def signal(self, conn: int, to: str, data: Any, now: float = T0) -> dict[int, list[Message]]:
        return self.send(conn, {"type": "signal", "to": to, "data": data}, now)

    def tick(self, now: float) -> dict[int, list[Message]]:
        return self.collect(self.hub.handle_timeout(now, now))


def error_code(out: dict[int, list[Message]], conn: int) -> str:
    (message,) = out[conn]
    assert message["type"] == "error", message
    return str(message["code"])


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- routing ---------------------------------------------------------------------------------------


def test_join_announces_and_signal_routes(h: Harness) -> None:
    h.open(1, 2)
    first = h.join(1)
    assert first["peers"] == []
    assert first["resumed"] is False
    assert first["iceTtl"] == ICE_TTL
    out = h.send(2, {"type": "join", "room": "r"})
    assert out[2][0]["peers"] == [first["peer"]]
    h.welcomes[2] = out[2][0]
    assert out[1] == [{"type": "peer-joined", "peer": h.peer(2)}]
    data = {"sdp": "v=0", "list": [1, None]}
    assert h.signal(1, h.peer(2), data) == {
        2: [{"type": "signal", "from": h.peer(1), "data": data, "seq": 1}]
    }
    assert directory(h.hub).counters.signals_routed == 1


def test_rooms_are_separate_and_unknown_peers_are_errors(h: Harness) -> None:
    h.open(1, 2)
    h.join(1, "a")
    h.join(2, "b")
    assert error_code(h.signal(1, h.peer(2), 1), 1) == "unknown-peer"
    assert error_code(h.signal(1, h.peer(1), 1), 1) == "unknown-peer"  # oneself
    assert error_code(h.signal(1, "p-000000000000", 1), 1) == "unknown-peer"


def test_not_joined_already_joined_and_ping(h: Harness) -> None:
    h.open(1)
    for kind in ("signal", "leave", "ice"):
        frame = {"type": kind, "to": "p-1", "data": 0}
        (error,) = h.send(1, frame)[1]
        assert (error["code"], error["ref"]) == ("not-joined", kind)
    assert h.send(1, {"type": "ping", "id": 9}) == {1: [{"type": "pong", "id": 9}]}
    h.join(1)
    assert error_code(h.send(1, {"type": "join", "room": "other"}), 1) == "already-joined"


def test_leave_announces_and_allows_another_join(h: Harness) -> None:
    h.open(1, 2)
    h.join(1)
    h.join(2)
    assert h.send(2, {"type": "leave"}) == {1: [{"type": "peer-left", "peer": h.peer(2)}]}
    assert h.send(1, {"type": "leave"}) == {}
    assert directory(h.hub).rooms == {}
    assert h.join(1, "again")["resumed"] is False


def test_room_full(h: Harness) -> None:
    h.open(1, 2, 3, 4)
    for conn in (1, 2, 3):
        h.join(conn)
    assert error_code(h.send(4, {"type": "join", "room": "r"}), 4) == "room-full"
    assert h.join(4, "elsewhere")["peers"] == []
    h.send(3, {"type": "leave"})
    h.send(4, {"type": "leave"})
    assert h.join(4)["peers"] == [h.peer(1), h.peer(2)]


# -- resume ----------------------------------------------------------------------------------------


def test_resume_within_grace_keeps_id_and_delivers_the_buffer(h: Harness) -> None:
    h.open(1, 2)
    h.join(1)
    h.join(2)
    secret = h.welcomes[2]["resume"]
    assert h.hub.closed(2, T0 + 1) == []
    assert h.signal(1, h.peer(2), "while away", T0 + 2) == {}  # buffered, nobody told
    assert h.tick(T0 + 29) == {}
    h.open(3, now=T0 + 29)
    out = h.send(3, {"type": "join", "room": "r", "resume": secret}, T0 + 29)
    welcome, buffered = out.pop(3)
    assert out == {}  # conn 1 sees neither peer-left nor peer-joined
    assert (welcome["peer"], welcome["resumed"], welcome["peers"]) == (h.peer(2), True, [h.peer(1)])
    assert buffered == {"type": "signal", "from": h.peer(1), "data": "while away", "seq": 1}
    assert directory(h.hub).counters.resumes == 1
    assert h.signal(1, h.peer(2), "live", T0 + 29) == {
        3: [{"type": "signal", "from": h.peer(1), "data": "live", "seq": 2}]
    }


def test_grace_expiry_tells_the_room_and_the_secret_stops_working(h: Harness) -> None:
    h.open(1, 2)
    h.join(1)
    h.join(2)
    secret = h.welcomes[2]["resume"]
    h.hub.closed(2, T0)
    assert h.tick(T0 + 29.9) == {}
    assert h.tick(T0 + 30) == {1: [{"type": "peer-left", "peer": h.peer(2)}]}
    assert directory(h.hub).counters.sessions_expired == 1
    h.open(3)
    welcome = h.join(3, resume=secret, now=T0 + 31)
    assert welcome["resumed"] is False
    assert welcome["peer"] != h.peer(2)


def test_the_last_peer_expiring_removes_the_room(h: Harness) -> None:
    h.open(1)
    h.join(1)
    h.hub.closed(1, T0)
    assert h.tick(T0 + 30) == {}
    assert directory(h.hub).rooms == {}


def test_unknown_or_wrong_room_resume_starts_a_new_session(h: Harness) -> None:
    h.open(1, 2, 3)
    h.join(1)
    h.hub.closed(1, T0)
    assert h.join(2, resume="no-such-secret")["resumed"] is False
    other = h.join(3, "other-room", resume=h.welcomes[1]["resume"])
    assert other["resumed"] is False
    assert other["peer"] != h.peer(1)


def test_takeover_closes_the_half_dead_connection_with_4001(h: Harness) -> None:
    h.open(1, 2, 3)
    h.join(1)
    h.join(2)
    out = h.send(3, {"type": "join", "room": "r", "resume": h.welcomes[2]["resume"]})
    assert h.closes == {2: CLOSE_REPLACED}
    assert out[3][0]["resumed"] is True
    assert 1 not in out
    # The old connection has no session any more, and its late close detaches nothing.
    assert error_code(h.signal(2, h.peer(1), "x"), 2) == "not-joined"
    h.hub.closed(2, T0 + 1)
    late = h.tick(T0 + 100)  # long past the grace period: only ICE pushes, no peer-left
    assert {m["type"] for messages in late.values() for m in messages} == {"ice"}
    assert h.hub.metrics()["signal_sessions_away"] == 0
    assert h.signal(1, h.peer(2), "y", T0 + 100) == {
        3: [{"type": "signal", "from": h.peer(1), "data": "y", "seq": 1}]
    }


def test_resume_with_last_replays_what_the_dead_connection_swallowed(h: Harness) -> None:
    """Messages handed to a connection that then died are sent again after ``last``, once."""
    h.open(1, 2)
    h.join(1)
    h.join(2)
    for n in range(3):
        assert h.signal(1, h.peer(2), n)[2][0]["seq"] == n + 1  # live
    h.hub.closed(2, T0 + 1)  # the client had seen seq 1 only
    assert h.signal(1, h.peer(2), 3, T0 + 2) == {}  # away: kept
    h.open(3)
    out = h.send(3, {"type": "join", "room": "r", "resume": h.welcomes[2]["resume"], "last": 1})
    assert [(m["seq"], m["data"]) for m in out[3][1:]] == [(2, 1), (3, 2), (4, 3)]
    h.hub.closed(3, T0 + 3)  # everything was seen this time
    h.open(4)
    secret = h.welcomes[2]["resume"]
    out = h.send(4, {"type": "join", "room": "r", "resume": secret, "last": 4}, T0 + 4)
    assert len(out[4]) == 1  # the welcome alone
    assert h.signal(1, h.peer(2), "next", T0 + 4)[4][0]["seq"] == 5


def test_history_of_a_connected_session_is_forgotten_after_a_minute(h: Harness) -> None:
    h.open(1, 2)
    h.join(1)
    h.join(2)
    h.signal(1, h.peer(2), "old")
    assert directory(h.hub).metrics()["signal_buffered_bytes"] > 0
    h.tick(T0 + 61)
    assert directory(h.hub).metrics()["signal_buffered_bytes"] == 0
    h.hub.closed(2, T0 + 62)
    h.open(3)
    secret = h.welcomes[2]["resume"]
    out = h.send(3, {"type": "join", "room": "r", "resume": secret, "last": 0}, T0 + 62)
    assert len(out[3]) == 1  # nothing left to replay


@pytest.mark.parametrize("last", [-1, 1.5, True, "3", 2**53])
def test_last_must_be_a_message_number(h: Harness, last: object) -> None:
    h.open(1)
    (error,) = h.send(1, {"type": "join", "room": "r", "resume": "x", "last": last})[1]
    assert (error["code"], error["ref"]) == ("bad-message", "join")


def test_buffer_overflow_drops_the_oldest(h: Harness) -> None:
    h.open(1, 2)
    h.join(1)
    h.join(2)
    h.hub.closed(2, T0)
    for n in range(5):
        h.signal(1, h.peer(2), n)
    assert directory(h.hub).counters.buffer_dropped == 2
    assert directory(h.hub).counters.signals_buffered == 5
    h.open(3)
    out = h.send(3, {"type": "join", "room": "r", "resume": h.welcomes[2]["resume"]})
    assert [m["data"] for m in out[3][1:]] == [2, 3, 4]
    h.hub.closed(3, T0 + 1)
    h.open(4)
    out = h.send(4, {"type": "join", "room": "r", "resume": h.welcomes[2]["resume"]}, T0 + 2)
    assert len(out[4]) == 1  # the buffer was emptied by the first resume


# -- tokens ----------------------------------------------------------------------------------------


def test_tokens_gate_join() -> None:
    tokens = RoomTokens(["s3cret"])
    h = Harness(replace(SETTINGS, require_tokens=True), tokens)
    h.open(1)
    refused = [
        {},
        {"token": tokens.mint("other", 60, T0)},
        {"token": tokens.mint("r", 60, T0 - 120)},
        {"token": RoomTokens(["forged"]).mint("r", 60, T0)},
        {"token": "v1.garbage"},
    ]
    for extra in refused:
        out = h.send(1, {"type": "join", "room": "r", **extra})
        assert (out[1][0]["code"], out[1][0]["ref"]) == ("unauthorized", "join")
    assert h.join(1, token=tokens.mint("r", 60, T0))["room"] == "r"
    h.open(2)
    assert h.join(2, token=tokens.mint("*", 60, T0))["room"] == "r"
    with pytest.raises(ValueError, match="RoomTokens"):
        SignalHub(replace(SETTINGS, require_tokens=True), ice)


# -- rate limit ------------------------------------------------------------------------------------


def test_rate_limit_burst_then_refill() -> None:
    h = Harness(LIMITED)
    h.open(1)
    ping = {"type": "ping", "id": 1}
    for _ in range(5):  # the burst
        assert h.send(1, ping)[1][0]["type"] == "pong"
    (error,) = h.send(1, ping)[1]
    assert error["code"] == "rate-limited"
    assert "ref" not in error
    assert h.send(1, ping, T0 + 0.125)[1][0]["type"] == "pong"  # 8/s: a token per 0.125 s
    assert error_code(h.send(1, ping, T0 + 0.125), 1) == "rate-limited"
    for n in range(5):  # a pause refills to the burst, no further
        assert h.send(1, ping, T0 + 60 + n * 1e-6)[1][0]["type"] == "pong"
    assert error_code(h.send(1, ping, T0 + 60), 1) == "rate-limited"
    assert h.hub.counters.errors["rate-limited"] == 3
    assert h.closes == {}


def test_a_flood_is_closed_with_1008() -> None:
    h = Harness(LIMITED)
    h.open(1, 2)
    ping = {"type": "ping", "id": 1}
    for _ in range(5 + 20):  # burst, then abuse_strikes rate-limited messages
        h.send(1, ping)
    assert h.closes == {}
    assert h.send(1, ping) == {}
    assert h.closes == {1: CLOSE_POLICY}
    assert h.hub.counters.abusive_closed == 1
    assert h.send(2, ping) == {2: [{"type": "pong", "id": 1}]}  # others are unaffected


def test_a_flooding_connection_counts_once() -> None:
    h = Harness(LIMITED)
    h.open(1)
    ping = {"type": "ping", "id": 1}
    for _ in range(5 + 21):
        h.send(1, ping)
    assert h.closes == {1: CLOSE_POLICY}
    for _ in range(10):  # frames already in flight when the close was decided
        assert h.send(1, ping) == {}
    assert h.hub.counters.abusive_closed == 1


def test_a_wall_clock_step_back_does_not_punish_connections() -> None:
    h = Harness(LIMITED)
    h.open(1)
    ping = {"type": "ping", "id": 1}
    assert h.send(1, ping, T0)[1][0]["type"] == "pong"
    assert h.send(1, ping, T0 - 10) == {1: [{"type": "pong", "id": 1}]}
    assert h.closes == {}


def test_strikes_drain_with_the_refill() -> None:
    h = Harness(LIMITED)
    h.open(1)
    ping = {"type": "ping", "id": 1}
    now, replies = T0, []
    for _ in range(400):  # twice the limit (8/s) for 25 s: half dropped, never closed
        now += 1 / 16
        replies += h.send(1, ping, now)[1]
    assert h.closes == {}
    limited = sum(r["type"] == "error" for r in replies)
    assert 190 <= limited <= 200
    for _ in range(100):  # three times the limit: strikes grow by 1 per 3 messages
        now += 1 / 24
        h.send(1, ping, now)
    assert h.closes == {1: CLOSE_POLICY}


# -- ICE push, metrics, odds and ends --------------------------------------------------------------


def test_ice_is_pushed_at_80_percent_of_the_ttl(h: Harness) -> None:
    h.open(1, 2)
    h.join(1)
    h.join(2)
    assert h.tick(T0 + 79.9) == {}
    out = h.tick(T0 + 80)
    assert set(out) == {1, 2}
    push = out[1][0]
    assert push["type"] == "ice"
    assert push["iceTtl"] == ICE_TTL
    assert push["iceServers"][0]["username"] == f"{int(T0 + 80)}:{h.peer(1)}"
    assert h.tick(T0 + 159) == {}
    assert set(h.tick(T0 + 160)) == {1, 2}
    h.hub.closed(2, T0 + 161)
    assert set(h.tick(T0 + 240)) == {1}  # away sessions get no pushes


def test_an_ice_request_resets_the_push_schedule(h: Harness) -> None:
    h.open(1)
    h.join(1)
    assert h.send(1, {"type": "ice"}, T0 + 50)[1][0]["type"] == "ice"
    assert h.tick(T0 + 80) == {}
    assert h.tick(T0 + 130)[1][0]["type"] == "ice"


def test_metrics(h: Harness) -> None:
    h.open(1, 2, 3)
    h.join(1)
    h.join(2)
    h.signal(1, h.peer(2), "x")
    h.send(3, "not json")
    h.hub.closed(2, T0)
    h.signal(1, h.peer(2), "y")
    samples = h.hub.metrics()
    assert samples["signal_connections"] == 2
    assert samples["signal_rooms"] == 1
    assert samples["signal_sessions"] == 2
    assert samples["signal_sessions_away"] == 1
    assert samples["signal_connections_opened_total"] == 3
    assert samples["signal_messages_received_total"] == 5
    assert samples["signal_signals_routed_total"] == 1
    assert samples["signal_signals_buffered_total"] == 1
    assert samples['signal_errors_total{code="bad-json"}'] == 1
    families = {f.name: f for f in text_string_to_metric_families(render([samples]))}
    assert families["signal_errors"].type == "counter"
    assert families["signal_errors"].samples[0].labels == {"code": "bad-json"}
    assert families["signal_sessions_away"].type == "gauge"


def test_session_durations_run_from_the_first_join_to_leave_or_expiry(h: Harness) -> None:
    """``signal_session_duration_seconds``: a resume continues a session (its time away
    counts), an expired one ends when its grace period does."""
    h.open(1, 2, 3)
    h.join(1, now=T0)
    h.join(2, now=T0 + 10)
    secret = h.welcomes[1]["resume"]
    h.hub.closed(1, T0 + 20)
    h.join(3, resume=secret, now=T0 + 25)  # resumed: the same session
    h.send(3, {"type": "leave"}, now=T0 + 40)  # 40 s after its first join
    h.hub.closed(2, T0 + 50)
    h.tick(T0 + 80)  # away for the 30 s grace period: 70 s after its join
    samples = h.hub.metrics()
    assert samples["signal_session_duration_seconds_count"] == 2
    assert samples["signal_session_duration_seconds_sum"] == 40 + 70
    assert samples['signal_session_duration_seconds_bucket{le="60"}'] == 1
    assert samples['signal_session_duration_seconds_bucket{le="120"}'] == 2
    families = {f.name: f for f in text_string_to_metric_families(render([samples]))}
    assert families["signal_session_duration_seconds"].type == "histogram"


def test_frames_of_unknown_connections_are_ignored(h: Harness) -> None:
    assert h.hub.receive(99, '{"type": "ping", "id": 1}', T0, T0) == []
    assert h.hub.closed(99, T0) == []


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"{}", "bad-json"),
        ("{", "bad-json"),
        ("7", "bad-json"),
        ('{"type": null}', "bad-message"),
        ('{"type": "join", "room": ""}', "bad-message"),
        ('{"type": "join", "room": "r", "token": 5}', "bad-message"),
        ('{"type": "join", "room": "r", "resume": ""}', "bad-message"),
        ('{"type": "dance"}', "unknown-type"),
        ('"' + "é" * 600 + '"', "too-large"),  # 602 characters, 1202 bytes
    ],
)
def test_malformed_frames(h: Harness, frame: str | bytes, code: str) -> None:
    h.open(1)
    (error,) = h.collect(h.hub.receive(1, frame, T0, T0))[1]
    assert error["code"] == code
    assert h.hub.counters.errors == {code: 1}


def test_away_buffers_are_bounded_in_bytes_per_session_and_in_total() -> None:
    """Buffered messages are kept as text and capped, so peers that stay away cannot make the
    server hold arbitrary amounts of memory (a parsed 64 KiB frame can take 1.5 MB)."""
    settings = hub_settings(resume_buffer_bytes=1000, max_buffered_bytes=1500)
    hub = SignalHub(settings, lambda peer, now: ([], 3600))
    hub.open(1, 0.0)
    hub.open(2, 0.0)
    hub.open(3, 0.0)
    joined = [
        hub.receive(c, json.dumps({"type": "join", "room": "r"}), 0.0, 0.0)[0] for c in (1, 2, 3)
    ]
    _a, b, c = (w.message["peer"] for w in joined if w.message is not None)
    hub.closed(2, 1.0)
    hub.closed(3, 1.0)
    chunk = "x" * 400
    for _ in range(3):  # ~430 bytes each: the third pushes the first out of B's 1000 bytes
        hub.receive(1, json.dumps({"type": "signal", "to": b, "data": chunk}), 2.0, 2.0)
    assert directory(hub).counters.buffer_dropped == 1
    for _ in range(2):  # C may take one more before the 1500-byte total is reached
        hub.receive(1, json.dumps({"type": "signal", "to": c, "data": chunk}), 2.0, 2.0)
    assert directory(hub).counters.buffer_dropped == 2
    hub.open(4, 3.0)
    member = next(m for room in directory(hub).rooms.values() for m in room.values() if m.peer == b)
    resume = member.resume
    out = hub.receive(4, json.dumps({"type": "join", "room": "r", "resume": resume}), 3.0, 3.0)
    assert [o.message["type"] for o in out if o.message is not None] == [
        "welcome",
        "signal",
        "signal",
    ]
    assert out[1].message is not None
    assert out[1].message["data"] == chunk
