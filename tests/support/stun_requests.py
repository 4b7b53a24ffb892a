"""Shared by the STUN responder tests: addresses, an RFC 5769 sample, request builders and
readers of (classic) replies. On pytest's pythonpath as ``stun_requests``."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from default_settings import responder_config

from secureconnect.netaddr import Address
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    Reply,
    StunMessage,
    decode_address_untrusted,
    decode_error_code_untrusted,
    decode_message_untrusted,
    encode_message,
    new_transaction_id,
)

PRIMARY: Address = ("192.0.2.10", 3478)
ALTERNATE: Address = ("192.0.2.20", 3479)
RFC5780 = responder_config(primary=PRIMARY, alternate=ALTERNATE)
CLIENT: Address = ("203.0.113.5", 54321)

RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)


def request(
    attributes: Iterable[tuple[int, bytes]] = (),
    *,
    fingerprint: bool = False,
    tid: bytes | None = None,
    method: int = Method.BINDING,
    cls: int = MessageClass.REQUEST,
) -> bytes:
    return encode_message(
        method, cls, tid or new_transaction_id(), attributes, fingerprint=fingerprint
    )


def classic_request(attributes: Iterable[tuple[int, bytes]] = ()) -> tuple[bytes, bytes]:
    tid = bytes(range(1, 17))
    return encode_message(Method.BINDING, MessageClass.REQUEST, tid, attributes), tid


def reply_message(reply: Reply | None) -> StunMessage:
    assert reply is not None
    return decode_message_untrusted(reply.data)


def error_code(msg: StunMessage) -> int:
    assert msg.cls is MessageClass.ERROR
    value = msg.get(AttrType.ERROR_CODE)
    assert value is not None
    return decode_error_code_untrusted(value)[0]


def address_of(msg: StunMessage, attr: int) -> Address | None:
    value = msg.get(attr)
    return None if value is None else decode_address_untrusted(value)


def classic_reply(reply: Reply | None) -> tuple[int, dict[int, bytes]]:
    """Read a classic reply the way an RFC 3489 client (pystun3) does: the decoder accepts
    classic messages only as requests. Values must be multiples of 4 (pystun3 skips no padding).
    """
    assert reply is not None
    msg_type, length = struct.unpack_from(">HH", reply.data)
    assert length == len(reply.data) - 20
    attributes: dict[int, bytes] = {}
    offset = 20
    while offset < len(reply.data):
        atype, alen = struct.unpack_from(">HH", reply.data, offset)
        assert alen % 4 == 0
        attributes.setdefault(atype, reply.data[offset + 4 : offset + 4 + alen])
        offset += 4 + alen
    return msg_type, attributes


def other_of(local: Address) -> Address:
    ip = ALTERNATE[0] if local[0] == PRIMARY[0] else PRIMARY[0]
    port = ALTERNATE[1] if local[1] == PRIMARY[1] else PRIMARY[1]
    return ip, port


LOCAL_SOCKETS = [
    PRIMARY,
    (PRIMARY[0], ALTERNATE[1]),
    (ALTERNATE[0], PRIMARY[1]),
    ALTERNATE,
]
FLAGS = [(False, False), (False, True), (True, False), (True, True)]  # CHANGE-REQUEST (ip, port)
