"""RFC 5780 NAT behaviour discovery, the client's tests over real UDP sockets (the verdicts are
`secureconnect.probe.natbehaviour`'s).

Each test is one Binding transaction (`transact`, RFC 8489 §6.2.1 retransmissions) on an
unconnected socket bound to the local address the route to the server uses, so that "no NAT" can
be recognised by the mapped address being that very address. An answer to a CHANGE-REQUEST must
come from the address asked for (RFC 5780 §6.1); its source is recorded and compared.

Error handling: a test without an answer within ``timeout`` is recorded as unanswered (that is
what the filtering tests measure); a socket error ends discovery with `ChannelError`.
"""

from __future__ import annotations

from secureconnect.netaddr import Address
from secureconnect.probe.natbehaviour import NO_NAT, FilteringTests, MappingTests, mapping_verdict
from secureconnect.probe.transport import (
    Channel,
    NoAnswer,
    UdpSocket,
    local_address_towards,
    transact,
)
from secureconnect.probe.wire import binding_request, mapped_address


class _AimedSocket(Channel):
    """An unconnected socket as a `Channel` that sends to one server address and hears answers
    from any; ``last_source`` is where the latest datagram came from."""

    def __init__(self, sock: UdpSocket, server: Address) -> None:
        self.udp = sock
        self.server = server
        self.last_source: Address | None = None

    def send(self, data: bytes) -> None:
        self.udp.sendto(data, self.server)

    def receive(self, deadline: float) -> bytes | None:
        got = self.udp.receive_from(deadline)
        if got is None:
            return None
        data, self.last_source = got
        return data

    def close(self) -> None:
        self.udp.close()

    @property
    def local(self) -> Address:
        return self.udp.local


def _binding(
    sock: UdpSocket,
    server: Address,
    timeout: float,
    *,
    change_ip: bool = False,
    change_port: bool = False,
) -> tuple[Address | None, Address | None]:
    """(mapped address, source of the answer) of one Binding, (None, None) without an answer."""
    aimed = _AimedSocket(sock, server)
    tid, data = binding_request(change_ip=change_ip, change_port=change_port)
    try:
        exchange = transact(aimed, tid, data, timeout)
    except NoAnswer:
        return None, None
    return mapped_address(exchange.reply), aimed.last_source


def _same_ip(a: str, b: str) -> bool:
    return a.removeprefix("::ffff:") == b.removeprefix("::ffff:")


def run_mapping_tests(primary: Address, other: Address, timeout: float) -> MappingTests:
    """RFC 5780 §4.3 from one socket (see `secureconnect.probe.natbehaviour`)."""
    sock = UdpSocket((local_address_towards(primary), 0))
    try:
        local = sock.local
        test1, _ = _binding(sock, primary, timeout)
        tests = MappingTests(local, test1)
        if mapping_verdict(tests) == NO_NAT or test1 is None:
            return tests
        test2, _ = _binding(sock, (other[0], primary[1]), timeout)
        if test2 is None or test2 == test1:
            return MappingTests(local, test1, test2)
        test3, _ = _binding(sock, other, timeout)
        return MappingTests(local, test1, test2, test3)
    finally:
        sock.close()


def run_filtering_tests(primary: Address, other: Address, timeout: float) -> FilteringTests:
    """RFC 5780 §4.4 from a fresh socket (see `secureconnect.probe.natbehaviour`)."""
    sock = UdpSocket((local_address_towards(primary), 0))
    try:
        # Test I opens the NAT's mapping (and filter) towards the primary address.
        _binding(sock, primary, timeout)
        _, source = _binding(sock, primary, timeout, change_ip=True, change_port=True)
        if source is not None:
            expected = _same_ip(source[0], other[0]) and source[1] == other[1]
            return FilteringTests(True, False, test2_from_expected=expected)
        _, source = _binding(sock, primary, timeout, change_port=True)
        if source is not None:
            expected = _same_ip(source[0], primary[0]) and source[1] == other[1]
            return FilteringTests(False, True, test3_from_expected=expected)
        return FilteringTests(False, False)
    finally:
        sock.close()
