"""Network addresses as every component passes them, and as text shows them.

:data:`Address` is the (ip, port) pair the STUN, TURN and transport code hand each other: what
``recvfrom`` and ``getsockname`` return for IPv4, and the first two items of IPv6's 4-tuple (the
flow label and scope id are not used). One definition, so that a change of representation is
made once and the type checker sees one type across components.

An IPv6 literal cannot stand bare where text names a host: its colons would read as the port
separator. RFC 3986 §3.2.2 writes it in brackets (``[2001:db8::1]:3478``), and the STUN/TURN
URIs of RFC 7064/7065 use that same host syntax. :func:`url_host` and :func:`format_address` are
the one spelling for URLs handed to clients, log lines and error messages, so they agree.

This module imports nothing of ours: it is the bottom layer, usable from the STUN codec up.
"""

from __future__ import annotations

import ipaddress

Address = tuple[str, int]


def url_host(ip: str) -> str:
    """``ip`` as the host part of a URL or ``host:port``: an IPv6 literal in brackets
    (RFC 3986 §3.2.2), anything else (IPv4, a host name) unchanged."""
    return f"[{ip}]" if ":" in ip else ip


def format_address(ip: str, port: int) -> str:
    """``ip:port`` for logs and messages: ``192.0.2.1:3478``, ``[2001:db8::1]:3478``."""
    return f"{url_host(ip)}:{port}"


def parse_address(text: str) -> Address:
    """``IP:PORT`` or ``[IPv6]:PORT`` as an :data:`Address`; ValueError when it is not one."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not IP:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [IP]:PORT")
    return str(ipaddress.ip_address(host)), int(port)
