"""Mutated STUN/TURN messages and signaling frames for the fuzzing campaign (``bench/fuzz.py``).

Pure functions of a seeded ``random.Random``: nothing here touches a socket, so a campaign's
inputs are reproducible from its seed. :class:`Templates` holds valid messages (Binding, classic
RFC 3489 Binding, an unauthenticated and an authenticated Allocate, authenticated Refresh,
CreatePermission, ChannelBind, a Send indication, ChannelData), re-encoded with fresh
transaction ids from time to time. :func:`mutate` applies one to three mutators:

* bit flips and "interesting" byte values anywhere, truncation, random tails;
* length-field lies: the header's length, one attribute's length, a ChannelData length;
* attribute duplication, huge attribute counts (up to a 64 KiB message of tiny attributes),
  random attribute types (comprehension-required or not), random attributes inserted between
  others or after MESSAGE-INTEGRITY, a corrupted magic cookie, other method/class bits, two
  messages spliced together.

Streams need framing that still parses, or the server (rightly) closes the connection at the
first bad frame and nothing after it is read: :func:`reframe` fixes a mutated message's first
two bits, cookie, length field and padding so that it stays one frame; :func:`framing_breaker`
makes the frame that ends a connection on purpose.

:func:`json_frame` does the same for the signaling WebSocket: valid messages of the protocol,
then text-level damage (truncation, deleted, inserted or replaced characters) or
structure-level lies (wrong types, huge strings, deep nesting, lone surrogate escapes, huge
numbers, unknown types, duplicate keys) and the odd binary frame.

:meth:`Templates.signed` makes the other kind of input: requests whose MESSAGE-INTEGRITY is
valid but whose attributes are random or malformed (wrong lengths, extreme values, duplicates,
unknown types), so that mutation also reaches the code behind authentication.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from typing import Any

from secureconnect.stun import AttrType, MessageClass, Method, encode_message, encode_xor_address
from secureconnect.stun.constants import MAGIC_COOKIE

A = AttrType
COOKIE = MAGIC_COOKIE.to_bytes(4, "big")
MAX_UDP = 65507  # the largest IPv4 UDP payload
MAX_STREAM_FRAME = 0xFFFF + 20  # the server's framer refuses anything larger
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x40, 0x20)
REQUESTED_UDP = bytes((17, 0, 0, 0))
REENCODE = 2000  # picks between two encodings of the templates (fresh transaction ids)


class Templates:
    """Valid messages to mutate; ``refresh`` re-encodes them (fresh transaction ids, the
    current nonce). ``username``/``key`` authenticate, ``peer`` is where relays send."""

    def __init__(
        self,
        rng: random.Random,
        *,
        username: str,
        realm: str,
        key: bytes,
        peer: tuple[str, int],
    ) -> None:
        self.rng = rng
        self.username = username
        self.realm = realm
        self.key = key
        self.peer = peer
        self.nonce = b""
        self.picks = 0
        self.messages: list[tuple[str, bytes]] = []
        self.refresh(self.nonce)

    def refresh(self, nonce: bytes) -> None:
        self.nonce = nonce
        rng = self.rng
        out: list[tuple[str, bytes]] = []
        for _ in range(4):
            tid = rng.randbytes(12)
            peer = (A.XOR_PEER_ADDRESS, encode_xor_address(*self.peer, tid))
            channel = (A.CHANNEL_NUMBER, b"\x40\x00\x00\x00")
            out += [
                ("binding", encode_message(Method.BINDING, MessageClass.REQUEST, tid)),
                (
                    "binding+fp",
                    encode_message(Method.BINDING, MessageClass.REQUEST, tid, [], fingerprint=True),
                ),
                ("classic", b"\x00\x01\x00\x00" + rng.randbytes(16)),
                ("allocate-401", self._plain(Method.ALLOCATE, tid, [self._transport()])),
                (
                    "allocate",
                    self._auth(
                        Method.ALLOCATE,
                        tid,
                        [self._transport(), (A.LIFETIME, (600).to_bytes(4, "big"))],
                    ),
                ),
                (
                    "allocate-even",
                    self._auth(Method.ALLOCATE, tid, [self._transport(), (A.EVEN_PORT, b"\x80")]),
                ),
                ("refresh", self._auth(Method.REFRESH, tid, [(A.LIFETIME, b"\0\0\x02\x58")])),
                ("permission", self._auth(Method.CREATE_PERMISSION, tid, [peer])),
                ("channel-bind", self._auth(Method.CHANNEL_BIND, tid, [channel, peer])),
                (
                    "send",
                    encode_message(
                        Method.SEND, MessageClass.INDICATION, tid, [peer, (A.DATA, b"fuzz" * 8)]
                    ),
                ),
                ("channel-data", b"\x40\x00\x00\x20" + rng.randbytes(32)),
            ]
        self.messages = out

    def _transport(self) -> tuple[int, bytes]:
        return (int(A.REQUESTED_TRANSPORT), REQUESTED_UDP)

    def _plain(self, method: int, tid: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
        return encode_message(method, MessageClass.REQUEST, tid, attrs)

    def _auth(self, method: int, tid: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
        auth = [
            (int(A.USERNAME), self.username.encode()),
            (int(A.REALM), self.realm.encode()),
            (int(A.NONCE), self.nonce),
        ]
        return encode_message(
            method,
            MessageClass.REQUEST,
            tid,
            [*attrs, *auth],
            integrity_key=self.key,
            fingerprint=self.rng.random() < 0.3,
        )

    def pick(self) -> tuple[str, bytes]:
        """A template; every :data:`REENCODE` picks they get fresh transaction ids."""
        self.picks += 1
        if self.picks % REENCODE == 0:
            self.refresh(self.nonce)
        return self.rng.choice(self.messages)

    def signed(self) -> bytes:
        """An authenticated request (valid MESSAGE-INTEGRITY) whose other attributes are
        random or malformed: it passes authentication and reaches the request handlers, which
        a mutated message (its integrity broken) never does."""
        rng = self.rng
        tid = rng.randbytes(12)
        method = rng.choice(_SIGNED_METHODS)
        attrs = [(t, _odd_attribute_value(rng, t, tid)) for t in rng.sample(_SIGNED_TYPES, 3)]
        if rng.random() < 0.3:
            attrs += attrs[: rng.randint(1, len(attrs))]  # duplicates
        if rng.random() < 0.2:
            attrs.append((rng.randrange(0x10000), rng.randbytes(rng.choice((0, 3, 8)))))
        while sum(len(v) + 8 for _, v in attrs) > 0xFFFF - 200:  # room for the auth attributes
            attrs.pop()
        return self._auth(method, tid, attrs)


_ODD_PEERS = ("127.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "::", "::ffff:1.2.3.4")  # noqa: S104 - peers, nothing binds
_SIGNED_METHODS = (
    int(Method.ALLOCATE),
    int(Method.ALLOCATE),
    int(Method.REFRESH),
    int(Method.CREATE_PERMISSION),
    int(Method.CHANNEL_BIND),
    0x000A,  # Connect (RFC 6062): not served
    0x0FFF,
)
_SIGNED_TYPES = [
    int(A.REQUESTED_TRANSPORT),
    int(A.LIFETIME),
    int(A.DONT_FRAGMENT),
    int(A.EVEN_PORT),
    int(A.RESERVATION_TOKEN),
    int(A.REQUESTED_ADDRESS_FAMILY),
    int(A.ADDITIONAL_ADDRESS_FAMILY),
    int(A.XOR_PEER_ADDRESS),
    int(A.XOR_PEER_ADDRESS),
    int(A.CHANNEL_NUMBER),
    int(A.DATA),
    int(A.PASSWORD_ALGORITHM),
    int(A.ICMP),
]


def _odd_attribute_value(  # noqa: PLR0911 - one kind of value per attribute type
    rng: random.Random, atype: int, tid: bytes
) -> bytes:
    """A value for ``atype``: well-formed but extreme, or the wrong length."""
    roll = rng.random()
    if roll < 0.3:
        return rng.randbytes(rng.choice((0, 1, 2, 3, 5, 7, 9, 17, 19, 21, 200)))
    if atype == A.XOR_PEER_ADDRESS:
        ip = rng.choice(_ODD_PEERS)
        return encode_xor_address(ip, rng.choice((0, 1, 65535, 3478)), tid)
    if atype in (A.LIFETIME, A.REQUESTED_TRANSPORT, A.CHANNEL_NUMBER):
        return struct.pack(">I", rng.choice((0, 1, 0x40000000, 0x4FFF0000, 0x11000000, 2**32 - 1)))
    if atype in (A.REQUESTED_ADDRESS_FAMILY, A.ADDITIONAL_ADDRESS_FAMILY):
        return bytes((rng.choice((0, 1, 2, 3, 0xFF)), 0, 0, 0))
    if atype == A.EVEN_PORT:
        return bytes((rng.choice((0, 0x80, 0xFF, 0x7F)),))
    if atype == A.DATA:
        return rng.randbytes(rng.choice((0, 1, 1500, 60000)))
    return rng.randbytes(rng.choice((4, 8)))


# -- the mutators ------------------------------------------------------------------------------


def _attributes(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, length) of the attributes that parse, in order (stops at the first lie)."""
    found = []
    pos = 20
    while pos + 4 <= len(data):
        atype, length = struct.unpack_from(">HH", data, pos)
        found.append((pos, atype, length))
        pos += 4 + length + (-length & 3)
    return found


def _with_length(data: bytes) -> bytes:
    """``data`` with its STUN header length set to what follows the header."""
    if len(data) < 20:
        return data
    return data[:2] + struct.pack(">H", (len(data) - 20) & 0xFFFF) + data[4:]


def _tlv(atype: int, value: bytes) -> bytes:
    return struct.pack(">HH", atype, len(value)) + value + bytes(-len(value) & 3)


def bit_flips(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def interesting_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if out:
            out[rng.randrange(len(out))] = rng.choice(INTERESTING)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def random_tail(rng: random.Random, data: bytes) -> bytes:
    return data + rng.randbytes(rng.choice((1, 3, 4, 16, 200)))


def header_length_lie(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 4:
        return data
    real = struct.unpack_from(">H", data, 2)[0]
    lie = rng.choice((0, 4, 0xFFFF, 0xFFFC, real + 4, max(0, real - 4), rng.randrange(0x10000)))
    lie &= 0xFFFF
    return data[:2] + struct.pack(">H", lie) + data[4:]


def attribute_length_lie(rng: random.Random, data: bytes) -> bytes:
    attrs = _attributes(data)
    if not attrs:
        return header_length_lie(rng, data)
    pos, _, length = rng.choice(attrs)
    lie = rng.choice((0, 1, 3, 0xFFFF, length + 4, length + 1, max(0, length - 1))) & 0xFFFF
    return data[: pos + 2] + struct.pack(">H", lie) + data[pos + 4 :]


def duplicate_attribute(rng: random.Random, data: bytes) -> bytes:
    attrs = [a for a in _attributes(data) if a[0] + 4 + a[2] <= len(data)]
    if not attrs:
        return data
    pos, _, length = rng.choice(attrs)
    block = data[pos : pos + 4 + length + (-length & 3)]
    at = rng.choice([a[0] for a in attrs])
    return _with_length(data[:at] + block * rng.randint(1, 3) + data[at:])


def _floods() -> list[bytes]:
    """Attribute floods, built once (a fresh 8,000-attribute body per message would cost more
    than everything else together): 129 to 8,000 tiny attributes of one type or of random
    types, with the odd two-byte value."""
    rng = random.Random(8000)
    bodies = []
    for count in (129, 500, 2000, 8000):
        for atype in (0x8000, 0x0003, 0x7FFF, 0xC001, int(A.SOFTWARE), int(A.XOR_PEER_ADDRESS)):
            for varied in (False, True):
                blocks = [
                    _tlv(rng.randrange(0x10000) if varied else atype, b"xy" if i % 7 == 0 else b"")
                    for i in range(count)
                ]
                bodies.append(b"".join(blocks))
    return bodies


_FLOODS: list[bytes] = []


def many_attributes(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 20:
        return data
    if not _FLOODS:
        _FLOODS.extend(_floods())
    body = rng.choice(_FLOODS)[: MAX_UDP - len(data)]
    body = body[: len(body) - len(body) % 4]
    return _with_length(data[:20] + body + data[20:])


def random_attribute_type(rng: random.Random, data: bytes) -> bytes:
    attrs = _attributes(data)
    if not attrs:
        return data
    pos = rng.choice(attrs)[0]
    new = rng.choice((rng.randrange(0x8000), 0x8000 | rng.randrange(0x8000), 0x0000, 0xFFFF))
    return data[:pos] + struct.pack(">H", new) + data[pos + 2 :]


def insert_attribute(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 20:
        return data
    points = [20, *(a[0] for a in _attributes(data)), len(data)]
    at = rng.choice(points)
    value = rng.randbytes(rng.choice((0, 1, 2, 4, 8, 20, 32, 300)))
    atype = rng.choice(
        (rng.randrange(0x10000), int(A.MESSAGE_INTEGRITY), int(A.FINGERPRINT), int(A.LIFETIME))
    )
    return _with_length(data[:at] + _tlv(atype, value) + data[at:])


def corrupt_cookie(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 8:
        return data
    return data[:4] + rng.choice((bytes(4), rng.randbytes(4), COOKIE[::-1])) + data[8:]


def method_and_class(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 2:
        return data
    new = rng.choice((rng.randrange(0x4000), 0x0111, 0x0103, 0x0016, 0x0017, 0x0009, 0x3FFF))
    return struct.pack(">H", new) + data[2:]


def channel_length_lie(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 4:
        return data
    number = rng.choice((0x4000, 0x4FFF, 0x5000, 0x7FFF, rng.randrange(0x4000, 0x8000)))
    length = rng.choice((0, len(data) - 4, len(data), 0xFFFF, rng.randrange(0x10000))) & 0xFFFF
    return struct.pack(">HH", number, length) + data[4:]


MUTATORS: tuple[Callable[[random.Random, bytes], bytes], ...] = (
    bit_flips,
    bit_flips,
    interesting_bytes,
    truncate,
    random_tail,
    header_length_lie,
    attribute_length_lie,
    attribute_length_lie,
    duplicate_attribute,
    duplicate_attribute,
    many_attributes,
    random_attribute_type,
    random_attribute_type,
    insert_attribute,
    insert_attribute,
    corrupt_cookie,
    method_and_class,
    channel_length_lie,
)


def mutate(rng: random.Random, templates: Templates, valid: float = 0.1) -> bytes:
    """A template (unchanged with probability ``valid``) after one to three mutators, or two
    templates spliced."""
    if rng.random() < 0.15:
        return templates.signed()[:MAX_UDP]
    _, data = templates.pick()
    if rng.random() < valid:
        return data
    if rng.random() < 0.05:
        other = templates.pick()[1]
        cut = rng.randrange(min(len(data), len(other)) or 1)
        data = data[:cut] + other[cut:]
    for _ in range(rng.choice((1, 1, 2, 3))):
        data = rng.choice(MUTATORS)(rng, data)
    return data[:MAX_UDP]


def reframe(data: bytes) -> bytes:
    """``data`` made into one frame a stream reader accepts: STUN (first bits 00, the cookie,
    a length field that matches the padded body) or ChannelData (first bits 01, padded)."""
    if len(data) < 4:
        data = data + bytes(4 - len(data))
    if data[0] >> 6 == 1:
        payload = data[4 : 4 + 0xFFFF]
        return data[:2] + struct.pack(">H", len(payload)) + payload + bytes(-len(payload) & 3)
    head = bytes((data[0] & 0x3F,)) + data[1:2]
    body = data[20 : 20 + 0xFFFC] if len(data) > 20 else b""
    body += bytes(-len(body) & 3)
    tid = data[8:20].ljust(12, b"\0")
    return head + struct.pack(">H", len(body)) + COOKIE + tid + body


def framing_breaker(rng: random.Random) -> bytes:
    """A frame the server must refuse (it then closes the connection): bits 10/11, a STUN
    length that is not a multiple of 4, no cookie, or a frame larger than it accepts."""
    kind = rng.randrange(4)
    if kind == 0:
        return bytes((0x80 | rng.randrange(0x80),)) + rng.randbytes(19)
    if kind == 1:
        return b"\x00\x01\x00\x03" + COOKIE + rng.randbytes(15)
    if kind == 2:
        return b"\x00\x01\x00\x00" + rng.randbytes(16)
    return b"\x00\x01\xff\xfc" + COOKIE + rng.randbytes(12) + rng.randbytes(64)


# -- signaling frames ------------------------------------------------------------------------

_JSON_TEMPLATES: tuple[dict[str, Any], ...] = (
    {"type": "join", "room": "fuzz"},
    {"type": "join", "room": "fuzz", "resume": "r" * 20},
    {"type": "signal", "to": "p-000000000000", "data": {"sdp": "v=0", "type": "offer"}},
    {"type": "ice"},
    {"type": "leave"},
    {"type": "ping", "id": 1},
    {"type": "ping", "id": "x"},
)
_ODD_VALUES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    "",
    [],
    {},
    ["fuzz"],
    {"room": "fuzz"},
    "é" * 40,
    "\u0000",
    "x" * 5000,
)


def _odd_value(rng: random.Random) -> Any:
    return rng.choice(_ODD_VALUES)


def json_frame(rng: random.Random) -> str | bytes:
    """One signaling frame: a protocol message, usually damaged (see the module docstring)."""
    message: dict[str, Any] = dict(rng.choice(_JSON_TEMPLATES))
    roll = rng.random()
    if roll < 0.1:
        return json.dumps(message)
    if roll < 0.3:
        key = rng.choice([*message, "type", "room", "to", "data", "id", "extra"])
        message[key] = _odd_value(rng)
        return json.dumps(message)
    text = json.dumps(message)
    if roll < 0.55:
        return _damage_text(rng, text)
    return _structural_lie(rng, text)


def _damage_text(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        if not chars:
            break
        i = rng.randrange(len(chars))
        how = rng.randrange(4)
        if how == 0:
            del chars[i]
        elif how == 1:
            chars.insert(i, rng.choice('{}[]":,\\0e-+.nt \x00é\u2028'))
        elif how == 2:
            chars[i] = chr(rng.randrange(32, 0x2FF))
        else:
            chars = chars[:i]
    return "".join(chars)


def _structural_lie(rng: random.Random, text: str) -> str | bytes:  # noqa: PLR0911 - one each
    kind = rng.randrange(9)
    if kind == 0:
        depth = rng.choice((31, 33, 100, 5000))
        return '{"type":"signal","to":"p-0","data":' + "[" * depth + "]" * depth + "}"
    if kind == 1:
        size = rng.choices((65, 70000, 300000), weights=(5, 4, 1))[0]  # 300000: closed, 1009
        return '{"type":"join","room":"' + "a" * size + '"}'
    if kind == 2:
        return '{"type":"ping","id":"\\ud800"}'
    if kind == 3:
        return '{"type":"ping","id":' + rng.choice(("1e999", "-1e999", "NaN", "Infinity")) + "}"
    if kind == 4:
        return '{"type":"join","type":"leave","room":"fuzz","room":[]}'
    if kind == 5:
        return json.dumps({"type": "x" * rng.choice((1, 41, 1000))})
    if kind == 6:
        return rng.randbytes(rng.choice((0, 1, 100, 2000)))  # a binary frame
    if kind == 7:
        return json.dumps(rng.choice(([], "join", 1, None, [{"type": "join"}])))
    return text * rng.randint(2, 50)
