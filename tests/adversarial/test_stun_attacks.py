"""Regression tests for the STUN codec's resource findings of the adversarial pass (issue #12):
the work one message can ask for is bounded, whatever its size."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
from attacker import Target, WireClient, error_code, turn_target

from secureconnect.stun import MessageClass, Method, decode_message_untrusted, new_transaction_id


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unknown_attribute_bomb(method: int = Method.BINDING) -> bytes:
    """A request of almost 64 KiB: 16,371 distinct, empty, comprehension-required attribute
    types that nobody knows (0x0100 onwards skips every assigned one below 0x8000)."""
    count = 16_371
    body = b"".join(struct.pack(">HH", 0x0100 + i, 0) for i in range(count))
    msg_type = 0x0001 if method == Method.BINDING else 0x0003  # request class
    header = struct.pack(">HHI", msg_type, len(body), 0x2112A442) + new_transaction_id()
    return header + body


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("method", [Method.BINDING, Method.ALLOCATE])
def test_a_message_of_thousands_of_unknown_attributes_costs_little(
    tmp_path: Path, transport: str, method: int
) -> None:
    """Finding 2: one 65 KB Binding with 16,371 distinct unknown comprehension-required
    attributes cost 1.1 s of CPU (a list scanned per attribute); at 2 such datagrams a second
    Binding answers were lost. Now a message of more than MAX_ATTRIBUTES attributes is a small
    400, and 20 of them cost the server a fraction of a second in all (1.1 s each before)."""
    bomb = unknown_attribute_bomb(method)
    with turn_target(tmp_path) as target:
        client = WireClient(transport, target.port)
        before = cpu_seconds(target.pid)
        for _ in range(20):
            client.send_raw(bomb)
            reply = client.receive_message()
            assert reply.cls is MessageClass.ERROR
            assert error_code(reply) == 400
            assert len(reply.raw) < 100  # no echo of the types: nothing to amplify
        spent = cpu_seconds(target.pid) - before
        assert spent < 1.0, f"20 bombs cost {spent:.2f} s of server CPU"
        check_binding(target)
        target.assert_healthy()


def test_the_attribute_cap_leaves_real_messages_alone() -> None:
    """MAX_ATTRIBUTES is above what a real request carries: a CreatePermission for 64 peers
    with its authentication attributes decodes."""
    from secureconnect.stun.constants import MAX_ATTRIBUTES  # noqa: PLC0415 - new in #12

    body = b"".join(struct.pack(">HH", 0x0012, 8) + bytes(8) for _ in range(64))
    body += b"".join(struct.pack(">HH", 0x8022, 4) + b"abcd" for _ in range(MAX_ATTRIBUTES - 64))
    header = struct.pack(">HHI", 0x0008, len(body), 0x2112A442) + new_transaction_id()
    msg = decode_message_untrusted(header + body)
    assert len(msg.attributes) == MAX_ATTRIBUTES


def check_binding(target: Target) -> None:
    """A plain Binding request over UDP still gets its success response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        tid = new_transaction_id()
        sock.sendto(struct.pack(">HHI", 1, 0, 0x2112A442) + tid, ("127.0.0.1", target.port))
        reply = decode_message_untrusted(sock.recv(2048))
        assert reply.cls is MessageClass.SUCCESS
        assert reply.transaction_id == tid
