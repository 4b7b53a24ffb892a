"""The admin socket's protocol: one JSON request line, one JSON reply line (docs/admin.md).

Requests (``command`` and its fields; anything else is refused with the key it names)::

    {"command": "sessions", "user": null}              TURN allocations and signaling sessions
    {"command": "kill", "user" | "allocation" | "peer": "..."}   end them (exactly one key)
    {"command": "revoke", "user": "...", "until": null} refuse credentials minted before now
    {"command": "lift", "user": "..."}                  forget a revocation
    {"command": "revocations"}                          the list, as kept in the state dir
    {"command": "metrics"}                              this process's /metrics samples

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Sans-IO: bytes in, a
:class:`Request` or an :class:`AdminError` out; the server does the socket work.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

MAX_REQUEST: Final = 64 * 1024  # bytes in a request line
COMMANDS: Final = {
    "sessions": frozenset({"user"}),
    "kill": frozenset({"user", "allocation", "peer"}),
    "revoke": frozenset({"user", "until"}),
    "lift": frozenset({"user"}),
    "revocations": frozenset(),
    "metrics": frozenset(),
}
MAX_NAME: Final = 256  # characters in a user, peer id or allocation name


class AdminError(Exception):
    """A request the admin server refuses; the message goes back to the client as it is."""


@dataclass(frozen=True, slots=True)
class Request:
    """One validated request."""

    command: str
    user: str | None = None
    allocation: str | None = None
    peer: str | None = None
    until: float | None = None


def parse_request(line: bytes) -> Request:
    """A request line's :class:`Request`; AdminError names what is wrong."""
    if len(line) > MAX_REQUEST:
        raise AdminError(f"a request is at most {MAX_REQUEST} bytes")
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise AdminError("a request is one JSON object on one line") from None
    if not isinstance(data, dict):
        raise AdminError("a request is one JSON object on one line")
    command = data.pop("command", None)
    if not isinstance(command, str) or command not in COMMANDS:
        raise AdminError(f"command must be one of {', '.join(sorted(COMMANDS))}")
    allowed = COMMANDS[command]
    for key in data:
        if key not in allowed:
            raise AdminError(f"{command}: unknown key {key!r}")
    names = {key: _name(data, key) for key in ("user", "allocation", "peer")}
    until = data.get("until")
    if until is not None and (
        isinstance(until, bool) or not isinstance(until, int | float) or not math.isfinite(until)
    ):
        raise AdminError("until must be Unix seconds")
    request = Request(command, until=None if until is None else float(until), **names)
    if command == "kill" and sum(v is not None for v in names.values()) != 1:
        raise AdminError("kill: name exactly one of user, allocation, peer")
    if command in ("revoke", "lift") and request.user is None:
        raise AdminError(f"{command}: user is required")
    return request


def _name(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise AdminError(f"{key} must be a string of 1 to {MAX_NAME} characters")
    if not value.isprintable():
        raise AdminError(f"{key} has control characters")
    return value


def encode_reply(reply: dict[str, Any]) -> bytes:
    """One reply line (NaN and infinities are not JSON: they become null)."""
    return json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"


def request_line(command: str, **fields: Any) -> bytes:
    """The client's request line (None fields left out)."""
    body = {"command": command, **{k: v for k, v in fields.items() if v is not None}}
    return json.dumps(body).encode() + b"\n"
