"""The probe's sans-IO parts: requests, long-term authentication, reading untrusted replies,
and the RFC 5780 verdicts. No sockets: replies are built here with the project's codec, the
way a server would build them (or a hostile one would mangle them)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secureconnect.probe.natbehaviour import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    INCONCLUSIVE,
    NO_NAT,
    FilteringTests,
    MappingTests,
    filtering_check,
    filtering_verdict,
    mapping_check,
    mapping_verdict,
)
from secureconnect.probe.verdicts import Status
from secureconnect.probe.wire import (
    Credential,
    LongTermAuth,
    allocate_request,
    create_permission_request,
    data_indication,
    decode_reply,
    error_of,
    integrity_state,
    lifetime_of,
    mapped_address,
    plain_address,
    text_attribute,
    xor_address,
)
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_error_code,
    encode_message,
    encode_xor_address,
    long_term_key,
    verify_integrity,
)

A = AttrType
CRED = Credential("1700000000:probe", "pw")


def reply(
    method: int,
    cls: int,
    tid: bytes,
    attrs: list[tuple[int, bytes]],
    key: bytes | None = None,
) -> bytes:
    return encode_message(method, cls, tid, attrs, integrity_key=key)


def challenge(tid: bytes, code: int = 401, nonce: bytes = b"n1", realm: bytes = b"r") -> bytes:
    return reply(
        Method.ALLOCATE,
        MessageClass.ERROR,
        tid,
        [(A.ERROR_CODE, encode_error_code(code)), (A.REALM, realm), (A.NONCE, nonce)],
    )


def test_first_request_is_unauthenticated_then_signed_with_the_realms_key() -> None:
    auth = LongTermAuth(CRED)
    tid, data = allocate_request(auth)
    first = decode_message_untrusted(data)
    assert first.get(A.USERNAME) is None
    assert first.get(A.REQUESTED_TRANSPORT) == bytes((17, 0, 0, 0))
    assert first.has_fingerprint
    assert auth.learn(decode_message_untrusted(challenge(tid)))
    _, data = allocate_request(auth)
    signed = decode_message_untrusted(data)
    assert signed.get(A.USERNAME) == CRED.username.encode()
    assert (signed.get(A.REALM), signed.get(A.NONCE)) == (b"r", b"n1")
    # RFC 8489 §9.2.2: what the server computes from the same username, realm and password.
    assert verify_integrity(signed, long_term_key(CRED.username, "r", "pw"))


def test_a_stale_nonce_is_learned_and_the_same_nonce_is_not_new() -> None:
    auth = LongTermAuth(CRED)
    tid, _ = allocate_request(auth)
    assert auth.learn(decode_message_untrusted(challenge(tid)))
    assert not auth.learn(decode_message_untrusted(challenge(tid)))  # nothing to retry with
    assert auth.learn(decode_message_untrusted(challenge(tid, 438, b"n2")))
    assert auth.nonce == b"n2"


def test_a_challenge_without_nonce_or_realm_teaches_nothing() -> None:
    auth = LongTermAuth(CRED)
    tid, _ = allocate_request(auth)
    bare = reply(Method.ALLOCATE, MessageClass.ERROR, tid, [(A.ERROR_CODE, encode_error_code(401))])
    assert not auth.learn(decode_message_untrusted(bare))
    only_nonce = reply(Method.ALLOCATE, MessageClass.ERROR, tid, [(A.NONCE, b"x")])
    assert not auth.learn(decode_message_untrusted(only_nonce))
    assert not auth.ready
    with pytest.raises(ValueError, match="realm and nonce"):
        auth.sign([])


def test_reply_integrity_valid_invalid_absent() -> None:
    key = long_term_key(CRED.username, "r", "pw")
    tid = bytes(12)
    good = decode_message_untrusted(reply(Method.ALLOCATE, MessageClass.SUCCESS, tid, [], key))
    forged = decode_message_untrusted(
        reply(Method.ALLOCATE, MessageClass.SUCCESS, tid, [], b"other-key")
    )
    bare = decode_message_untrusted(reply(Method.ALLOCATE, MessageClass.SUCCESS, tid, []))
    assert integrity_state(good, key) == "valid"
    assert integrity_state(forged, key) == "invalid"
    assert integrity_state(bare, key) == "absent"
    assert integrity_state(good, None) == "absent"


def test_allocate_success_is_read() -> None:
    tid = bytes(range(12))
    data = reply(
        Method.ALLOCATE,
        MessageClass.SUCCESS,
        tid,
        [
            (A.XOR_RELAYED_ADDRESS, encode_xor_address("203.0.113.5", 50000, tid)),
            (A.XOR_MAPPED_ADDRESS, encode_xor_address("2001:db8::7", 40000, tid)),
            (A.LIFETIME, (600).to_bytes(4, "big")),
        ],
    )
    msg = decode_message_untrusted(data)
    assert error_of(msg) is None
    assert xor_address(msg, A.XOR_RELAYED_ADDRESS) == ("203.0.113.5", 50000)
    assert mapped_address(msg) == ("2001:db8::7", 40000)
    assert lifetime_of(msg) == 600


def test_error_code_is_read_and_a_malformed_one_is_code_zero() -> None:
    tid = bytes(12)
    msg = decode_message_untrusted(challenge(tid, 438))
    assert error_of(msg) == (438, "")
    broken = reply(Method.ALLOCATE, MessageClass.ERROR, tid, [(A.ERROR_CODE, b"\x00\x00\x09")])
    code, why = error_of(decode_message_untrusted(broken)) or (-1, "")
    assert code == 0
    assert "malformed" in why
    missing = reply(Method.ALLOCATE, MessageClass.ERROR, tid, [])
    assert error_of(decode_message_untrusted(missing)) == (0, "no ERROR-CODE")


def test_data_indications_and_permissions() -> None:
    auth = LongTermAuth(CRED)
    tid, _ = allocate_request(auth)
    auth.learn(decode_message_untrusted(challenge(tid)))
    ptid, data = create_permission_request(auth, ("198.51.100.9", 1234))
    perm = decode_message_untrusted(data)
    assert perm.method == Method.CREATE_PERMISSION
    value = perm.get(A.XOR_PEER_ADDRESS)
    assert value is not None
    assert decode_xor_address_untrusted(value, ptid) == ("198.51.100.9", 1234)
    itid = bytes(12)
    indication = reply(
        Method.DATA,
        MessageClass.INDICATION,
        itid,
        [(A.XOR_PEER_ADDRESS, encode_xor_address("10.0.0.2", 5, itid)), (A.DATA, b"hi")],
    )
    assert data_indication(decode_message_untrusted(indication)) == (("10.0.0.2", 5), b"hi")
    assert data_indication(decode_message_untrusted(challenge(itid))) is None


def test_non_stun_bytes_are_not_a_reply() -> None:
    assert decode_reply(b"") is None
    assert decode_reply(b"\x40\x00\x00\x04abcd") is None  # ChannelData
    assert decode_reply(bytes(19)) is None


ATTRS = st.sampled_from(
    [
        A.XOR_MAPPED_ADDRESS,
        A.XOR_RELAYED_ADDRESS,
        A.XOR_PEER_ADDRESS,
        A.MAPPED_ADDRESS,
        A.OTHER_ADDRESS,
        A.ERROR_CODE,
        A.REALM,
        A.NONCE,
        A.SOFTWARE,
        A.LIFETIME,
        A.DATA,
        A.MESSAGE_INTEGRITY,
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    cls=st.sampled_from(list(MessageClass)),
    attrs=st.lists(st.tuples(ATTRS, st.binary(max_size=40)), max_size=6),
)
def test_readers_never_raise_on_hostile_replies(
    cls: MessageClass, attrs: list[tuple[int, bytes]]
) -> None:
    """Whatever a server puts in a reply's attributes, every reader answers (None, or a value);
    nothing raises past it (replies are untrusted input)."""
    tid = bytes(range(12))
    data = encode_message(Method.ALLOCATE, cls, tid, attrs)
    msg = decode_reply(data)
    if msg is None:
        return
    auth = LongTermAuth(CRED)
    auth.learn(msg)
    error_of(msg)
    mapped_address(msg)
    plain_address(msg, A.OTHER_ADDRESS)
    xor_address(msg, A.XOR_RELAYED_ADDRESS)
    text_attribute(msg, A.REALM)
    lifetime_of(msg)
    data_indication(msg)
    integrity_state(msg, b"k")


# -- RFC 5780 verdicts -----------------------------------------------------------------------

LOCAL = ("192.168.1.10", 40000)
PUBLIC = ("203.0.113.1", 61000)


@pytest.mark.parametrize(
    ("tests", "verdict"),
    [
        (MappingTests(("198.51.100.4", 5000), ("198.51.100.4", 5000)), NO_NAT),
        (MappingTests(LOCAL, PUBLIC, PUBLIC), ENDPOINT_INDEPENDENT),
        (
            MappingTests(LOCAL, PUBLIC, ("203.0.113.1", 61001), ("203.0.113.1", 61001)),
            ADDRESS_DEPENDENT,
        ),
        (
            MappingTests(LOCAL, PUBLIC, ("203.0.113.1", 61001), ("203.0.113.1", 61002)),
            ADDRESS_AND_PORT_DEPENDENT,
        ),
        (MappingTests(LOCAL, None), INCONCLUSIVE),
        (MappingTests(LOCAL, PUBLIC, None), INCONCLUSIVE),
    ],
)
def test_mapping_verdicts(tests: MappingTests, verdict: str) -> None:
    assert mapping_verdict(tests) == verdict
    check = mapping_check(tests)
    assert check.id == "nat-mapping"
    assert check.status is (Status.WARN if verdict == INCONCLUSIVE else Status.OK)


@pytest.mark.parametrize(
    ("tests", "verdict"),
    [
        (FilteringTests(True, False), ENDPOINT_INDEPENDENT),
        (FilteringTests(False, True), ADDRESS_DEPENDENT),
        (FilteringTests(False, False), ADDRESS_AND_PORT_DEPENDENT),
    ],
)
def test_filtering_verdicts(tests: FilteringTests, verdict: str) -> None:
    assert filtering_verdict(tests) == verdict
    assert filtering_check(tests, no_nat=False).status is Status.OK


def test_a_change_request_answered_from_the_wrong_address_is_a_warning() -> None:
    check = filtering_check(FilteringTests(True, False, test2_from_expected=False), no_nat=True)
    assert check.status is Status.WARN
    assert "wrong address" in check.summary
