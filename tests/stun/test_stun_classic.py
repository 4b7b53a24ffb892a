"""The Binding responder and classic RFC 3489 clients (pystun3): MAPPED-ADDRESS,
CHANGED-ADDRESS, classic error responses, and pystun3's NAT classification through a fake NAT."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from default_settings import responder_config
from stun_requests import (
    ALTERNATE,
    CLIENT,
    FLAGS,
    PRIMARY,
    RFC5780,
    classic_reply,
    classic_request,
)

from secureconnect.netaddr import Address
from secureconnect.stun import (
    AttrType,
    BindingResponder,
    ErrorCode,
    StunCounters,
    decode_address_untrusted,
    decode_error_code_untrusted,
    encode_change_request,
)

# pystun3, the classic RFC 3489 client, driven through a fake socket. Imported by name because
# tests/stun would shadow the `stun` module for the type checker.
pystun3: Any = importlib.import_module("stun")


# ---------------------------------------------------------------------------------------------
# Classic RFC 3489


def test_classic_request_gets_mapped_source_and_changed_address() -> None:
    counters = StunCounters()
    data, tid = classic_request()
    reply = BindingResponder(RFC5780, counters).handle(data, CLIENT, PRIMARY)
    assert reply is not None
    assert reply.data[4:20] == tid  # no cookie: the 16-byte transaction id follows the length
    msg_type, attributes = classic_reply(reply)
    assert msg_type == 0x0101
    assert list(attributes) == [
        AttrType.MAPPED_ADDRESS,
        AttrType.SOURCE_ADDRESS,
        AttrType.CHANGED_ADDRESS,
    ]
    assert decode_address_untrusted(attributes[AttrType.MAPPED_ADDRESS]) == CLIENT
    assert decode_address_untrusted(attributes[AttrType.SOURCE_ADDRESS]) == PRIMARY
    assert decode_address_untrusted(attributes[AttrType.CHANGED_ADDRESS]) == ALTERNATE
    assert counters.classic_requests == 1


def test_classic_request_without_rfc5780_has_no_changed_address() -> None:
    data, _ = classic_request()
    reply = BindingResponder(responder_config(software="x")).handle(data, CLIENT, PRIMARY)
    _, attributes = classic_reply(reply)
    assert list(attributes) == [AttrType.MAPPED_ADDRESS, AttrType.SOURCE_ADDRESS]


@pytest.mark.parametrize("flags", FLAGS)
def test_classic_change_request_is_honoured(flags: tuple[bool, bool]) -> None:
    data, _ = classic_request([(AttrType.CHANGE_REQUEST, encode_change_request(*flags))])
    reply = BindingResponder(RFC5780).handle(data, CLIENT, ALTERNATE)
    assert reply is not None
    change_ip, change_port = flags
    origin = (
        PRIMARY[0] if change_ip else ALTERNATE[0],
        PRIMARY[1] if change_port else ALTERNATE[1],
    )
    assert reply.response_origin == origin
    _, attributes = classic_reply(reply)
    source = decode_address_untrusted(attributes[AttrType.SOURCE_ADDRESS])
    assert source == reply.response_origin
    assert decode_address_untrusted(attributes[AttrType.CHANGED_ADDRESS]) == PRIMARY


def test_classic_change_request_without_rfc5780_is_dropped() -> None:
    counters = StunCounters()
    data, _ = classic_request([(AttrType.CHANGE_REQUEST, encode_change_request(True, True))])
    assert BindingResponder(responder_config(), counters).handle(data, CLIENT, PRIMARY) is None
    assert (counters.requests, counters.dropped_classic_change, counters.errors_sent) == (1, 1, 0)


@pytest.mark.parametrize("reason_phrases", [False, True])
def test_classic_unknown_attributes_get_a_classic_420(reason_phrases: bool) -> None:
    data, tid = classic_request([(AttrType.RESPONSE_ADDRESS, bytes(8))])
    config = responder_config(
        primary=PRIMARY, alternate=ALTERNATE, software="x", reason_phrases=reason_phrases
    )
    reply = BindingResponder(config).handle(data, CLIENT, PRIMARY)
    assert reply is not None
    assert reply.data[4:20] == tid
    msg_type, attributes = classic_reply(reply)  # every value a multiple of 4 (RFC 3489)
    assert msg_type == 0x0111
    assert list(attributes) == [AttrType.ERROR_CODE, AttrType.UNKNOWN_ATTRIBUTES]
    code, reason = decode_error_code_untrusted(attributes[AttrType.ERROR_CODE])
    assert code == ErrorCode.UNKNOWN_ATTRIBUTE
    assert reason.rstrip() == ("Unknown Attribute" if reason_phrases else "")
    # RFC 3489 §11.2.10: an odd list repeats an entry to stay a multiple of 4 bytes.
    assert attributes[AttrType.UNKNOWN_ATTRIBUTES] == b"\x00\x02\x00\x02"


def test_malformed_classic_request_gets_a_classic_400() -> None:
    data, tid = classic_request([(AttrType.SOFTWARE, b"abcd")])
    overrun = data[:22] + b"\x00\x08" + data[24:]
    reply = BindingResponder(responder_config()).handle(overrun, CLIENT, PRIMARY)
    assert reply is not None
    assert reply.data[4:20] == tid
    msg_type, attributes = classic_reply(reply)
    assert msg_type == 0x0111
    assert decode_error_code_untrusted(attributes[AttrType.ERROR_CODE])[0] == 400


class FakeNat:
    """pystun3's socket: `sendto` hands the request to the responder, as if through a NAT with
    public address CLIENT; `recvfrom` returns replies that the NAT's filtering lets in."""

    def __init__(self, responder: BindingResponder, filtering: str) -> None:
        self.responder = responder
        self.filtering = filtering  # "none", "address" or "address-and-port"
        self.contacted: set[Address] = set()
        self.inbox: list[tuple[bytes, Address]] = []

    def sendto(self, data: bytes, address: Address) -> None:
        self.contacted.add(address)
        reply = self.responder.handle(data, CLIENT, address)
        if reply is None:
            return
        origin = reply.response_origin
        if self.filtering == "address" and origin[0] not in {ip for ip, _ in self.contacted}:
            return
        if self.filtering == "address-and-port" and origin not in self.contacted:
            return
        self.inbox.append((reply.data, origin))

    def recvfrom(self, size: int) -> tuple[bytes, Address]:
        if not self.inbox:
            raise TimeoutError
        return self.inbox.pop(0)


@pytest.mark.parametrize(
    ("filtering", "expected"),
    [
        ("none", pystun3.FullCone),
        ("address", pystun3.RestricNAT),
        ("address-and-port", pystun3.RestricPortNAT),
    ],
)
def test_pystun3_classifies_nats_against_rfc5780(filtering: str, expected: str) -> None:
    nat = FakeNat(BindingResponder(RFC5780), filtering)
    nat_type, result = pystun3.get_nat_type(
        nat, "10.0.0.2", 54320, stun_host=PRIMARY[0], stun_port=PRIMARY[1]
    )
    assert nat_type == expected
    assert (result["ExternalIP"], result["ExternalPort"]) in {CLIENT, (None, None)}


def test_pystun3_terminates_without_rfc5780() -> None:
    """Without an alternate address pystun3's change test gets no answer (not an endless loop
    of error responses) and its first test still reads MAPPED-ADDRESS."""
    pystun3._initialize()
    nat = FakeNat(BindingResponder(responder_config()), "none")
    first = pystun3.stun_test(nat, PRIMARY[0], PRIMARY[1], "10.0.0.2", 54320)
    assert first["Resp"]
    assert (first["ExternalIP"], first["ExternalPort"]) == CLIENT
    assert (first["SourceIP"], first["SourcePort"]) == PRIMARY
    change = "".join([pystun3.ChangeRequest, "0004", "00000006"])
    second = pystun3.stun_test(nat, PRIMARY[0], PRIMARY[1], "10.0.0.2", 54320, change)
    assert not second["Resp"]
