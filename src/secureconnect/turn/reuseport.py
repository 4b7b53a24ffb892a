"""UDP listening sockets shared by the TURN workers, each client address kept on one worker.

With ``SO_REUSEPORT`` several sockets bind one address and port, and the kernel hands each
datagram to one of them (Linux ``reuseport_select_sock``). Left to itself it hashes the 4-tuple
and scales the hash to the number of sockets in the group, which has two flaws for a TURN relay:

1. The mapping changes whenever the group does. A worker that crashes and closes its socket
   shrinks the group (the kernel moves the last socket into the freed slot), and clients of the
   *other* workers land on a worker that has no allocation for them.
2. One client address spreads over every worker by its source port, so whatever is kept per
   address (the 401 rate limit, the password-guessing backoff per address and user) would be
   kept N times.

So :class:`ReuseportGroup` (a) is created and kept open by the parent process for its whole
life, one socket per worker, each worker serving a duplicate of its own (a crashed worker's
socket stays in the group: datagrams for its clients queue and then drop until its successor
serves the same socket, and nobody else's mapping moves), and (b) attaches a classic BPF program
(``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5) that picks the socket by the client's *address* alone:
the IPv4 source address, or the /64 of an IPv6 one (the unit ``turn.ip_quota`` counts, see
``source_key``), multiplied by a constant and taken modulo the number of workers. Every 5-tuple
of one client address then lands on one worker, restarts included. docs/workers.md has the rest.

The program runs with the packet's data at the UDP payload; it reads the IP header through
``SKF_NET_OFF`` (linux/filter.h). An index it returns beyond the group makes the kernel fall
back to its own hash, which cannot happen once every socket is bound.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from secureconnect.netaddr import Address
from secureconnect.transport import BindError, udp_socket

__all__ = ["ReuseportGroup", "bind_groups", "client_affinity_program"]

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h
SKF_NET_OFF = -0x100000  # linux/filter.h: offsets from the network header
_GOLDEN = 0x9E3779B1  # 2^32 / phi: a multiplicative hash spreads nearby addresses

# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
_LD_W_ABS, _LD_B_ABS = 0x20, 0x30
_ALU_RSH_K, _ALU_MUL_K, _ALU_MOD_K, _ALU_XOR_X = 0x74, 0x24, 0x94, 0xAC
_JMP_JA, _JMP_JEQ_K = 0x05, 0x15
_MISC_TAX, _RET_A = 0x07, 0x16


def _net(offset: int) -> int:
    """A load offset into the IP header, as the unsigned 32-bit ``k`` the kernel reads."""
    return (SKF_NET_OFF + offset) & 0xFFFFFFFF


def client_affinity_program(count: int) -> bytes:
    """The ``struct sock_filter`` array that picks socket ``hash(client address) % count``."""
    if not 1 <= count <= 0xFFFF:
        raise ValueError(f"a reuseport group holds 1 to 65535 sockets, not {count}")
    program = [
        (_LD_B_ABS, 0, 0, _net(0)),  # 0: version and IHL / version and traffic class
        (_ALU_RSH_K, 0, 0, 4),  # 1: the IP version
        (_JMP_JEQ_K, 0, 2, 4),  # 2: IPv4 -> 3, else -> 5
        (_LD_W_ABS, 0, 0, _net(12)),  # 3: IPv4 source address
        (_JMP_JA, 0, 0, 4),  # 4: -> 9
        (_LD_W_ABS, 0, 0, _net(8)),  # 5: IPv6 source address, first word
        (_MISC_TAX, 0, 0, 0),  # 6
        (_LD_W_ABS, 0, 0, _net(12)),  # 7: second word (the /64 ends here)
        (_ALU_XOR_X, 0, 0, 0),  # 8
        (_ALU_MUL_K, 0, 0, _GOLDEN),  # 9
        (_ALU_RSH_K, 0, 0, 16),  # 10: the well-mixed middle bits
        (_ALU_MOD_K, 0, 0, count),  # 11
        (_RET_A, 0, 0, 0),  # 12: the socket's index in the group
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def attach_program(sock: socket.socket, program: bytes) -> None:
    """``SO_ATTACH_REUSEPORT_CBPF``: ``struct sock_fprog`` points at the filter array, which
    must stay alive through the call (the kernel copies it)."""
    filters = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


@dataclass
class ReuseportGroup:
    """The sockets of one listening address, one per worker in worker order (the kernel's
    order too: a socket's index in the group is the order it was bound in)."""

    address: Address
    sockets: list[socket.socket] = field(default_factory=list)

    @classmethod
    def bind(cls, ip: str, port: int, count: int) -> ReuseportGroup:
        """Bind ``count`` sockets on ``ip``:``port`` (port 0: the first one's port for all) and
        attach the client-affinity program; a :class:`BindError` names the address."""
        group = cls((ip, port))
        try:
            for _ in range(count):
                sock = udp_socket(ip, group.address[1], reuse_port=True)
                group.sockets.append(sock)
                group.address = sock.getsockname()[:2]
            try:
                attach_program(group.sockets[0], client_affinity_program(count))
            except OSError as exc:
                raise BindError(exc.errno, f"cannot attach the reuseport program: {exc}") from exc
        except BaseException:
            group.close()
            raise
        return group

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def bind_groups(addresses: Sequence[Address], count: int) -> list[ReuseportGroup]:
    """A group per address, all or nothing; one :class:`BindError` names every failure."""
    groups: list[ReuseportGroup] = []
    failures: list[BindError] = []
    for ip, port in addresses:
        try:
            groups.append(ReuseportGroup.bind(ip, port, count))
        except BindError as exc:
            failures.append(exc)
    if failures:
        for group in groups:
            group.close()
        BindError.raise_for(failures)
    return groups
