"""The probe's rule for "private" addresses: which relayed addresses a remote peer cannot reach.

A TURN server hands each client a relayed address (XOR-RELAYED-ADDRESS, RFC 8656 §18.5) that
the client then gives its peers as a relay candidate. If the server is reached at an address the
Internet can route to, but advertises a relayed address from a private range, every peer outside
the server's own network gets a candidate it cannot reach: the classic misconfiguration of a
server behind a 1:1 NAT (a cloud VM, a container) that was not told its public address.

The rule, written out rather than taken from ``ipaddress.is_private`` (which also counts the
documentation ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32 and the
benchmarking range 198.18.0.0/15 as private, and so would call a lab "misconfigured" for using
them as stand-ins for public addresses, RFC 5737 §1):

An address is **private** when it is in one of `PRIVATE_RANGES`:

* 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16: private internets (RFC 1918 §3);
* 100.64.0.0/10: shared address space behind carrier-grade NAT (RFC 6598 §7);
* 127.0.0.0/8 and ::1/128: loopback (RFC 1122 §3.2.1.3, RFC 4291 §2.5.3);
* 169.254.0.0/16 and fe80::/10: link-local (RFC 3927 §2.1, RFC 4291 §2.5.6);
* fc00::/7: unique local IPv6 (RFC 4193 §3.1);
* 0.0.0.0/8 and ::/128: "this host" and the unspecified address (RFC 1122 §3.2.1.3,
  RFC 4291 §2.5.2) - a relayed address no peer can use at all.

An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, RFC 4291 §2.5.5.2) is judged as the IPv4
address it embeds. Every other address, documentation and benchmarking ranges included, counts
as **non-private**. Pure functions; text that is not an address raises ValueError.
"""

from __future__ import annotations

import ipaddress
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: (range, why it is private): the whole rule, in one table (see the module docstring).
PRIVATE_RANGES: Final[tuple[tuple[str, str], ...]] = (
    ("10.0.0.0/8", "RFC 1918 private"),
    ("172.16.0.0/12", "RFC 1918 private"),
    ("192.168.0.0/16", "RFC 1918 private"),
    ("100.64.0.0/10", "RFC 6598 shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("0.0.0.0/8", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "unique local (ULA)"),
    ("::/128", "unspecified"),
)
_NETWORKS: Final = tuple((ipaddress.ip_network(net), why) for net, why in PRIVATE_RANGES)


def _address(ip: str) -> IPAddress:
    address = ipaddress.ip_address(ip.split("%", 1)[0])  # a scope id never changes the range
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def private_range(ip: str) -> str | None:
    """Why ``ip`` is private (e.g. ``"RFC 1918 private (10.0.0.0/8)"``), or None when it is not."""
    address = _address(ip)
    for network, why in _NETWORKS:
        if address.version == network.version and address in network:
            return f"{why} ({network})"
    return None


def is_private(ip: str) -> bool:
    """Whether ``ip`` is in the probe's private ranges (the module docstring's rule)."""
    return private_range(ip) is not None
