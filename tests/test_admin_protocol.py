"""The admin socket's request lines (admin/protocol.py) and ``--until`` (admincmd.py): what is
refused, with the reason, before anything runs."""

from __future__ import annotations

import datetime
import json

import pytest

from secureconnect.admin.protocol import MAX_REQUEST, AdminError, parse_request, request_line
from secureconnect.admincmd import parse_until


def test_requests_round_trip() -> None:
    request = parse_request(request_line("kill", peer="p-0123456789ab").strip())
    assert (request.command, request.peer, request.user) == ("kill", "p-0123456789ab", None)
    revoke = parse_request(request_line("revoke", user="mallory", until=1.5e9))
    assert (revoke.user, revoke.until) == ("mallory", 1.5e9)
    assert parse_request(b'{"command": "sessions"}').user is None


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"", "one JSON object"),
        (b"[1]", "one JSON object"),
        (b"\xff\xfe", "one JSON object"),
        (b'{"command": "shutdown"}', "command must be one of"),
        (b'{"command": "sessions", "all": true}', "unknown key 'all'"),
        (b'{"command": "kill"}', "exactly one"),
        (b'{"command": "kill", "user": "a", "peer": "b"}', "exactly one"),
        (b'{"command": "revoke"}', "user is required"),
        (b'{"command": "revoke", "user": "a", "until": "soon"}', "until must be"),
        (b'{"command": "revoke", "user": "a", "until": true}', "until must be"),
        (b'{"command": "lift", "user": ""}', "1 to 256"),
        (b'{"command": "lift", "user": 7}', "1 to 256"),
        (b'{"command": "lift", "user": "a\\nb"}', "control characters"),
        (json.dumps({"command": "sessions", "user": "x" * MAX_REQUEST}).encode(), "at most"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(line: bytes, why: str) -> None:
    with pytest.raises(AdminError, match=why):
        parse_request(line)


def test_until_takes_unix_seconds_durations_and_iso_times() -> None:
    now = 1_800_000_000.0
    assert parse_until("1800003600", now) == 1_800_003_600
    assert parse_until("90s", now) == now + 90
    assert parse_until("2h", now) == now + 7200
    assert parse_until("7d", now) == now + 7 * 86400
    moment = datetime.datetime(2027, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert parse_until("2027-01-02T03:04:05", now) == moment.timestamp()
    assert parse_until("2027-01-02T04:04:05+01:00", now) == moment.timestamp()
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_until("next tuesday", now)
