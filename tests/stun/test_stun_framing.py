"""Stream framing for STUN and ChannelData over TCP/TLS."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StreamFramer,
    StunDecodeError,
    decode_message_untrusted,
    encode_message,
    new_transaction_id,
)


def channel_data(channel: int, payload: bytes) -> bytes:
    """A ChannelData frame with the stream padding (RFC 8656 §12.5)."""
    return struct.pack(">HH", channel, len(payload)) + payload + bytes(-len(payload) & 3)


def stun(software: bytes = b"") -> bytes:
    attributes = [(AttrType.SOFTWARE, software)] if software else []
    return encode_message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(), attributes)


FRAMES = [stun(), channel_data(0x4000, b"hello"), stun(b"x" * 7), channel_data(0x4FFF, b"")]


def test_frames_in_one_feed() -> None:
    framer = StreamFramer()
    framer.feed(b"".join(FRAMES))
    assert list(framer.frames()) == FRAMES
    assert framer.next_frame() is None
    assert framer.buffered == 0
    decode_message_untrusted(FRAMES[0])


def test_frames_byte_by_byte() -> None:
    framer = StreamFramer()
    out: list[bytes] = []
    for byte in b"".join(FRAMES):
        framer.feed(bytes([byte]))
        out.extend(framer.frames())
    assert out == FRAMES


def test_channel_data_is_padded_on_streams() -> None:
    frame = channel_data(0x4001, b"12345")
    assert len(frame) == 12
    framer = StreamFramer()
    framer.feed(frame[:9])
    assert framer.next_frame() is None  # the padding is part of the frame
    framer.feed(frame[9:])
    assert framer.next_frame() == frame


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80", "neither"),
        (b"\xc0\x00\x00\x00", "neither"),
        (b"\x00\x01\x00\x02", "multiple of 4"),
        (b"\x00\x01\x00\x00\x00\x00\x00\x00", "cookie"),  # classic RFC 3489: UDP only
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00", "multiple of 4|cookie"),  # TLS on a plain port
    ],
)
def test_streams_that_cannot_be_stun(data: bytes, reason: str) -> None:
    framer = StreamFramer()
    framer.feed(data)
    with pytest.raises(StunDecodeError, match=reason) as info:
        framer.next_frame()
    assert info.value.header is None
    # The stream cannot be resynchronised: every later call fails too.
    with pytest.raises(StunDecodeError):
        framer.next_frame()
    with pytest.raises(StunDecodeError):
        framer.feed(FRAMES[0])


def test_frame_size_limit() -> None:
    framer = StreamFramer(max_frame=64)
    framer.feed(stun(b"x" * 48)[:4])  # the header already says 20 + 52 bytes
    with pytest.raises(StunDecodeError, match="larger"):
        framer.next_frame()


def test_buffer_limit() -> None:
    framer = StreamFramer(max_frame=64, max_buffer=100)
    framer.feed(channel_data(0x4000, bytes(40))[:30])
    with pytest.raises(StunDecodeError, match="buffer"):
        framer.feed(bytes(71))


def test_consumed_frames_free_the_buffer() -> None:
    framer = StreamFramer(max_frame=64, max_buffer=100)
    frame = channel_data(0x4000, bytes(56))  # 60 bytes
    for _ in range(10):  # 600 bytes through a 100-byte buffer
        framer.feed(frame)
        assert list(framer.frames()) == [frame]


def test_max_buffer_must_hold_a_frame() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        StreamFramer(max_frame=100, max_buffer=50)


@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_streams_raise_only_decode_errors(chunks: list[bytes]) -> None:
    framer = StreamFramer(max_frame=256, max_buffer=512)
    try:
        for chunk in chunks:
            framer.feed(chunk)
            for frame in framer.frames():
                assert len(frame) <= 256
            assert framer.buffered <= 512
    except StunDecodeError:
        pass


@given(
    frames=st.lists(
        st.one_of(
            st.binary(max_size=30).map(stun),
            st.tuples(st.integers(0x4000, 0x7FFF), st.binary(max_size=30)).map(
                lambda cp: channel_data(*cp)
            ),
        ),
        max_size=8,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_any_split_gives_back_the_frames(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    framer = StreamFramer()
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        framer.feed(stream[start:end])
        out.extend(framer.frames())
    assert out == frames
    assert framer.buffered == 0
