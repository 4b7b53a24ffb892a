"""Wire contract v1 of the signaling endpoint: parsing client frames, shaping server messages.

See ``docs/signaling-protocol.md``. Parsing is for untrusted text: :func:`parse_client_message`
returns a typed message or raises :class:`SignalError` (one error type, carrying the contract's
error code), never ``ValueError``/``KeyError``/``UnicodeDecodeError``.

What is accepted can be sent on to any peer unchanged, so text is checked once, on the way in:
no ``NaN``/``Infinity`` (not JSON, RFC 8259 §6, yet ``json.loads`` takes them and numbers such as
``1e999`` overflow to them), no string with a lone surrogate escape such as ``"\\ud800"`` (it
cannot be encoded as UTF-8, RFC 8259 §8.1-8.2, so sending it to a peer would fail on *that*
peer's connection), and at most :data:`MAX_DEPTH` levels of nesting (deeper structures come
close to the interpreter's recursion limit, where encoding them on another path could fail).
:func:`encode` still refuses to produce anything else (``ValueError``) as a second line of defence.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
ROOM_PATTERN: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
PEER_PATTERN: Final = re.compile(r"p-[0-9a-f]{1,32}")
MAX_TOKEN_CHARS: Final = 2048
MAX_SEQ: Final = 2**53 - 1  # ``seq`` numbers stay exact in JavaScript
MAX_DEPTH: Final = 32  # nesting of arrays and objects in a message, the message itself included
# A JSON escape of a UTF-16 surrogate (D800-DFFF): how a lone one gets into a parsed string when
# the frame itself is valid UTF-8 (RFC 6455 §5.6). A match is only a hint (a pair is fine, and an
# escaped backslash before "ud800" is just text), checked exactly in _check_text.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_NOT_TEXT: Final = "strings must be Unicode text (no lone surrogate such as \\ud800)"


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
    last: int | None = None  # the highest ``seq`` the client has seen (a resume)


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
    if len(frame) > max_bytes:
        raise SignalError("too-large", f"messages are limited to {max_bytes} bytes")
    try:
        size = len(frame.encode("utf-8"))
    except UnicodeEncodeError:  # a surrogate in the text itself (not from a websockets frame)
        raise SignalError("bad-json", _NOT_TEXT) from None
    if size > max_bytes:
        raise SignalError("too-large", f"messages are limited to {max_bytes} bytes")
    try:
        obj = json.loads(frame, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise SignalError("bad-json", "the frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise SignalError("bad-json", "a message is a JSON object")
    kind = obj.get("type")
    ref = kind[:40] if isinstance(kind, str) and kind.isascii() else None
    _check_text(frame, obj, ref)
    if not isinstance(kind, str):
        raise SignalError("bad-message", "every message has a string 'type'")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise SignalError("unknown-type", f"unknown message type {kind[:40]!r}", ref=kind[:40])
    return parser(obj)


def _no_constant(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259 §6)."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; ``1e999`` would overflow to infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _check_text(frame: str, obj: dict[str, Any], ref: str | None) -> None:
    """Refuse strings (keys or values, at any depth) that are not Unicode text, and nesting
    deeper than MAX_DEPTH. Each check runs only when the frame could hold the problem: more
    brackets than MAX_DEPTH, a surrogate escape."""
    if frame.count("[") + frame.count("{") > MAX_DEPTH and not _shallow(obj):
        raise SignalError("bad-json", f"JSON nested deeper than {MAX_DEPTH} levels", ref=ref)
    if _SURROGATE_ESCAPE.search(frame) is not None:
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise SignalError("bad-json", _NOT_TEXT, ref=ref) from None


def _shallow(obj: Any) -> bool:
    """Whether ``obj`` nests at most MAX_DEPTH levels (level by level, no recursion)."""
    level = [obj]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]
        if not level:
            return True
    return False


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
        last=_optional_seq(obj, "last", "join"),
    )


def _optional_seq(obj: dict[str, Any], key: str, ref: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise SignalError("bad-message", f"'{key}' must be a message number", ref=ref)
    return value


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


def encode(message: dict[str, Any]) -> bytes:
    """A server message as the UTF-8 payload of the text frame to send.

    Raises ``ValueError`` (a non-finite number, or ``UnicodeEncodeError`` for a lone surrogate)
    or ``RecursionError`` rather than produce something that is not JSON in UTF-8; parsing keeps
    such values out, so this is a second line of defence the callers count and survive.
    """
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")
