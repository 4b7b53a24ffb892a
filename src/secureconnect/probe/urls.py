"""The STUN and TURN URIs the probe is given, parsed strictly (RFC 7064, RFC 7065).

::

    stunURI = ( "stun" / "stuns" ) ":" host [ ":" port ]                     RFC 7064 §3.1
    turnURI = ( "turn" / "turns" ) ":" host [ ":" port ] [ "?transport=" transport ]
                                                                            RFC 7065 §3.1

``host`` is RFC 3986's: an IPv4 address, an IPv6 address in brackets, or a name. The default
port is 3478, or 5349 for the secure schemes (RFC 7064 §3.2, RFC 7065 §3.2). A ``turns:`` URI
is TLS over TCP; ``turns:...?transport=udp`` would be DTLS, which the probe does not speak, so
it is refused rather than silently tested over something else.

One extension, documented in docs/probe.md: ``stun:`` and ``stuns:`` URIs accept the same
``?transport=udp|tcp`` as TURN URIs (RFC 7064 has no query), so that STUN over TCP can be
probed; ICE server lists in the wild carry it anyway.

Everything here is pure: `parse_probe_url` raises `UrlError` with a message for the operator,
which the command turns into exit status 2 (a usage error).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from secureconnect.netaddr import format_address, url_host

#: RFC 7064 §3.2 / RFC 7065 §3.2: the default ports.
DEFAULT_PORT: Final = 3478
DEFAULT_TLS_PORT: Final = 5349
SCHEMES: Final = ("stun", "stuns", "turn", "turns")
TRANSPORTS: Final = ("udp", "tcp")

# RFC 3986 §3.2.2 reg-name, restricted to what DNS can resolve (no percent-encoding).
_NAME = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class UrlError(ValueError):
    """A URL the probe cannot test; the message says why and how to write it."""


@dataclass(frozen=True, slots=True)
class ProbeUrl:
    """One parsed URI: ``transport`` is ``udp`` or ``tcp``; ``tls`` is set for stuns/turns."""

    text: str
    scheme: str
    host: str  # an IP literal without brackets, or a host name
    port: int
    transport: str

    @property
    def tls(self) -> bool:
        return self.scheme.endswith("s")

    @property
    def is_turn(self) -> bool:
        return self.scheme.startswith("turn")

    @property
    def host_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def transport_name(self) -> str:
        """``udp``, ``tcp`` or ``tls``: what the probe opens."""
        return "tls" if self.tls else self.transport

    @property
    def endpoint(self) -> str:
        """``host:port`` as text (IPv6 in brackets)."""
        return format_address(self.host, self.port)


def parse_probe_url(text: str) -> ProbeUrl:
    """Parse one ``stun:``/``stuns:``/``turn:``/``turns:`` URI; `UrlError` when it is not one."""
    scheme, colon, rest = text.strip().partition(":")
    scheme = scheme.lower()  # RFC 3986 §3.1: schemes are case-insensitive
    if not colon or scheme not in SCHEMES:
        raise UrlError(f"{text!r}: expected stun:, stuns:, turn: or turns: followed by a host")
    if rest.startswith("//"):
        # RFC 7064/7065 URIs have no authority part: "turn://host" is a common mistake.
        raise UrlError(f"{text!r}: write {scheme}:HOST[:PORT] without '//' (RFC 7064, RFC 7065)")
    where, question, query = rest.partition("?")
    transport = _transport(text, scheme, query) if question else _default_transport(scheme)
    host, port = _host_port(text, where, DEFAULT_TLS_PORT if scheme.endswith("s") else DEFAULT_PORT)
    return ProbeUrl(text.strip(), scheme, host, port, transport)


def _default_transport(scheme: str) -> str:
    # RFC 7065 §3: without ?transport, turn: means UDP (and TCP as a fallback) and turns: TLS
    # over TCP; RFC 7064: stuns: is TLS over TCP, stun: UDP.
    return "tcp" if scheme.endswith("s") else "udp"


def _transport(text: str, scheme: str, query: str) -> str:
    key, equals, value = query.partition("=")
    if key.lower() != "transport" or not equals or "&" in value:
        raise UrlError(f"{text!r}: the only query is ?transport=udp or ?transport=tcp")
    value = value.lower()
    if value not in TRANSPORTS:
        raise UrlError(f"{text!r}: transport {value!r} is neither udp nor tcp (RFC 7065 §3.1)")
    if scheme.endswith("s") and value == "udp":
        raise UrlError(f"{text!r}: {scheme}: over UDP is DTLS, which the probe does not speak")
    return value


def _host_port(text: str, where: str, default_port: int) -> tuple[str, int]:
    if where.startswith("["):
        # RFC 3986 §3.2.2: IP-literal = "[" IPv6address "]"
        close = where.find("]")
        if close < 0:
            raise UrlError(f"{text!r}: unclosed '[' around an IPv6 address")
        literal, tail = where[1:close], where[close + 1 :]
        try:
            host = str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise UrlError(f"{text!r}: {literal!r} is not an IPv6 address") from None
        if tail and not tail.startswith(":"):
            raise UrlError(f"{text!r}: unexpected {tail!r} after the IPv6 address")
        port_text = tail[1:] if tail else None
    else:
        if where.count(":") > 1:
            raise UrlError(f"{text!r}: write an IPv6 address in brackets, [2001:db8::1]")
        host, colon, port_text_or_empty = where.partition(":")
        port_text = port_text_or_empty if colon else None
        host = _checked_host(text, host)
    if port_text is None:
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UrlError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _checked_host(text: str, host: str) -> str:
    if not host:
        raise UrlError(f"{text!r}: no host")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if host.replace(".", "").isdigit():
        raise UrlError(f"{text!r}: {host!r} is not an IPv4 address")
    if not _NAME.match(host):
        raise UrlError(f"{text!r}: {host!r} is not a host name")
    return host.lower().rstrip(".")


def display_url(url: ProbeUrl) -> str:
    """The canonical spelling of ``url``: scheme, host, port and transport spelled out."""
    return f"{url.scheme}:{url_host(url.host)}:{url.port}?transport={url.transport}"
