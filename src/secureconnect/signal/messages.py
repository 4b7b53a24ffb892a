"""Wire contract v1 of the signaling endpoint: parsing client frames, shaping server messages.

See ``docs/signaling-protocol.md``. Parsing is for untrusted text: :func:`parse_client_message`
returns a typed message or raises :class:`SignalError` (one error type, carrying the contract's
error code), never ``ValueError``/``KeyError``/``UnicodeDecodeError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
ROOM_PATTERN: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
PEER_PATTERN: Final = re.compile(r"p-[0-9a-f]{1,32}")
MAX_TOKEN_CHARS: Final = 2048


class SignalError(Exception):
    """A client message the contract rejects; ``code`` is the contract's error code."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref

    def to_message(self) -> dict[str, Any]:
        """The ``error`` message for the client."""
        out: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.ref is not None:
            out["ref"] = self.ref
        return out


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    token: str | None = None
    resume: str | None = None


@dataclass(frozen=True, slots=True)
class Signal:
    to: str
    data: Any


@dataclass(frozen=True, slots=True)
class Leave:
    pass


@dataclass(frozen=True, slots=True)
class IceRequest:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    id: str | int | float


ClientMessage = Join | Signal | Leave | IceRequest | Ping


def parse_client_message(frame: str | bytes, max_bytes: int) -> ClientMessage:
    """One text frame -> a message; raises SignalError with the contract's code."""
    if isinstance(frame, bytes):
        raise SignalError("bad-json", "binary frames are not part of the protocol")
    if len(frame) > max_bytes or len(frame.encode("utf-8", "surrogatepass")) > max_bytes:
        raise SignalError("too-large", f"messages are limited to {max_bytes} bytes")
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError):
        raise SignalError("bad-json", "the frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise SignalError("bad-json", "a message is a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise SignalError("bad-message", "every message has a string 'type'")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise SignalError("unknown-type", f"unknown message type {kind[:40]!r}", ref=kind[:40])
    return parser(obj)


def _optional_text(obj: dict[str, Any], key: str, ref: str, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise SignalError("bad-message", f"'{key}' must be a non-empty string", ref=ref)
    return value


def _join(obj: dict[str, Any]) -> Join:
    room = obj.get("room")
    if not isinstance(room, str) or ROOM_PATTERN.fullmatch(room) is None:
        raise SignalError(
            "bad-message", "'room' must be 1-64 characters of A-Z a-z 0-9 _ . -", ref="join"
        )
    return Join(
        room,
        token=_optional_text(obj, "token", "join", MAX_TOKEN_CHARS),
        resume=_optional_text(obj, "resume", "join", 128),
    )


def _signal(obj: dict[str, Any]) -> Signal:
    to = obj.get("to")
    if not isinstance(to, str) or not to or len(to) > 64:
        raise SignalError("bad-message", "'to' must be a peer id", ref="signal")
    if "data" not in obj:
        raise SignalError("bad-message", "'data' is required", ref="signal")
    return Signal(to, obj["data"])


def _ping(obj: dict[str, Any]) -> Ping:
    ident = obj.get("id")
    if isinstance(ident, bool) or not isinstance(ident, str | int | float):
        raise SignalError("bad-message", "'id' must be a string or a number", ref="ping")
    if isinstance(ident, str) and len(ident) > 128:
        raise SignalError("bad-message", "'id' is too long", ref="ping")
    return Ping(ident)


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ClientMessage]]] = {
    "join": _join,
    "signal": _signal,
    "leave": lambda obj: Leave(),
    "ice": lambda obj: IceRequest(),
    "ping": _ping,
}


def encode(message: dict[str, Any]) -> str:
    """A server message as the text frame to send."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)
