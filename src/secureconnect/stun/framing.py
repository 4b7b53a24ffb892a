"""Cut a TCP/TLS byte stream into STUN messages and TURN ChannelData frames.

Over a stream, STUN messages and ChannelData follow each other with no other framing
(RFC 8489 §6.2.2, RFC 8656 §12.5). The first two bits of each frame say which it is:

* 0b00: a STUN message; its length is 20 + the 16-bit length field (a multiple of 4);
* 0b01 (first byte 0x40-0x7F): ChannelData; its length is 4 + the 16-bit length field, padded
  up to a multiple of 4 because RFC 8656 §12.5 requires the padding over TCP/TLS;
* anything else: the stream is not STUN/TURN, and it cannot be resynchronised.

`StreamFramer` is sans-IO: `feed` the bytes of each receive, then take `next_frame` (or iterate
`frames`) until there is none. The buffer holds at most one partial frame plus one receive, so
it is bounded by `max_buffer`; the caller must drain frames after every `feed` and receive at
most ``max_buffer - max_frame`` bytes at a time.

Error handling: a stream that cannot be STUN/ChannelData raises `StunDecodeError` (with
``header=None``); from then on every call raises again, and the caller closes the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

from secureconnect.stun.constants import HEADER_LENGTH, MAGIC_COOKIE
from secureconnect.stun.message import StunDecodeError

_TYPE_LENGTH = struct.Struct(">HH")
_COOKIE = struct.Struct(">I")

#: The largest STUN message: a 20-byte header plus a 16-bit length.
MAX_FRAME: Final = 0xFFFF + HEADER_LENGTH


class StreamFramer:
    """Bytes of one TCP/TLS connection in, whole STUN messages and ChannelData frames out.

    ChannelData frames are returned with their stream padding; readers use the length field.
    """

    __slots__ = ("_buf", "_error", "_pos", "max_buffer", "max_frame")

    def __init__(self, *, max_frame: int = MAX_FRAME, max_buffer: int | None = None) -> None:
        self.max_frame = max_frame
        self.max_buffer = max_buffer if max_buffer is not None else 2 * max_frame
        if self.max_buffer < max_frame:
            raise ValueError("max_buffer must hold at least one frame")
        self._buf = bytearray()
        self._pos = 0  # start of the first unconsumed byte in _buf
        self._error: StunDecodeError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    def _fail(self, reason: str) -> StunDecodeError:
        self._error = StunDecodeError(reason)
        self._buf = bytearray()
        self._pos = 0
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Raises `StunDecodeError` if the buffer would exceed
        `max_buffer` (a peer that sends faster than the caller drains frames)."""
        if self._error is not None:
            raise self._error
        if self._pos:
            del self._buf[: self._pos]  # at most one partial frame is moved
            self._pos = 0
        if len(self._buf) + len(data) > self.max_buffer:
            raise self._fail("stream buffer limit exceeded")
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next whole frame, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available == 0:
            return None
        kind = buf[pos] >> 6
        if kind > 1:
            raise self._fail("stream is neither STUN nor ChannelData")
        if available < 4:
            return None
        _, length = _TYPE_LENGTH.unpack_from(buf, pos)
        if kind == 0:
            # RFC 8489 §5: STUN lengths are multiples of 4.
            if length & 3:
                raise self._fail("STUN length is not a multiple of 4")
            # RFC 3489 defines Binding over UDP only, so a stream carries RFC 5389+ messages,
            # which all have the cookie: reject anything else before buffering its body.
            if available >= 8 and _COOKIE.unpack_from(buf, pos + 4)[0] != MAGIC_COOKIE:
                raise self._fail("STUN message without the magic cookie on a stream")
            size = HEADER_LENGTH + length
        else:
            # RFC 8656 §12.5: over TCP/TLS ChannelData is padded to a multiple of 4 bytes.
            size = 4 + ((length + 3) & ~3)
        if size > self.max_frame:
            raise self._fail("frame larger than the limit")
        if available < size:
            return None
        end = pos + size
        frame = bytes(buf[pos:end])
        self._pos = end
        return frame

    def frames(self) -> Iterator[bytes]:
        """Every whole frame buffered now."""
        while (frame := self.next_frame()) is not None:
            yield frame
