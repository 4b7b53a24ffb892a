"""Which peers a TURN allocation may relay to: the server's defence against relay SSRF.

Theory of operation
-------------------
A TURN server sends datagrams wherever its authenticated clients ask (RFC 8656 §9, §10, §11:
CreatePermission, ChannelBind, Send). Unchecked, that turns the relay into a proxy into the server's
own network: loopback services, the private LAN, the cloud metadata endpoint at 169.254.169.254.
coturn shipped two such holes:

- CVE-2020-26262: ``0.0.0.0`` (which Linux delivers to the local host) and ``[::1]`` slipped
  past a loopback check that only knew 127.0.0.0/8;
- CVE-2026-27624: the IPv4-mapped form ``::ffff:127.0.0.1`` got past a deny list written in IPv4
  terms, although on a dual-stack socket it reaches 127.0.0.1.

The lesson of both is that a deny list must be checked against *every address a peer can reach*,
not against the literal the client sent. `PeerPolicy` therefore judges a set of candidates:

1. the address itself, with any IPv6 scope id (``fe80::1%eth0``) dropped: a scope selects an
   interface and never changes which range the address belongs to;
2. for the IPv4-mapped block ``::ffff:0:0/96`` (RFC 4291 §2.5.5.2), the embedded IPv4 address:
   a dual-stack socket sends to that IPv4 address, so it is the address actually contacted, and it
   is judged by the IPv4 entries exactly as if the client had sent it in IPv4 form;
3. for every other IPv6 address, each IPv4 address embedded in it by a transition mechanism:

   - IPv4-compatible ``::a.b.c.d`` (RFC 4291 §2.5.5.1, deprecated; still routed by some stacks'
     automatic tunnels; ``::`` and ``::1`` are excluded: they are the unspecified and
     loopback addresses of §2.5.2 and §2.5.3);
   - IPv4-translated ``::ffff:0:a.b.c.d`` (RFC 2765 §2.1, SIIT);
   - NAT64 well-known prefix ``64:ff9b::/96`` (RFC 6052 §2.1): the last 32 bits;
   - NAT64 local-use prefix ``64:ff9b:1::/48`` (RFC 8215): an operator may carve any RFC 6052 §2.2
     prefix length of 48, 56, 64 or 96 out of it and the server cannot know which, so the IPv4
     address for each of those lengths is derived (bits 48..64 + 72..88, 56..64 + 72..96, 72..104,
     96..128). This is deliberately conservative: the unused bits of a real address read as
     0.0.x.x at the other lengths, which is denied, so even with 64:ff9b:1::/48 allowed a
     local-use peer passes only if every reading is allowed. A deployment that needs local-use
     NAT64 peers wants a setting naming its prefix length, not a wider allow list;
   - 6to4 ``2002:AABB:CCDD::/48`` (RFC 3056 §2): bits 16..48;
   - Teredo ``2001:0::/32`` (RFC 4380 §4): the server at bits 32..64 and the client at bits
     96..128, stored XOR 0xffffffff;
   - ISATAP interface identifiers ``…:0:5efe:a.b.c.d`` and ``…:200:5efe:a.b.c.d`` (RFC 5214 §6.1),
     whatever the prefix.

A peer is refused when *any* candidate is inside a ``deny`` entry and not inside an ``allow`` entry.
Text that does not parse as an address is refused, never raised: peer addresses are untrusted input.
Strict parsing is inherited from `ipaddress`: ``010.0.0.1`` (which ``inet_aton`` reads as octal
8.0.0.1) and surrounding whitespace are rejected.

Allow-list semantics
--------------------
``allow`` entries are exceptions to ``deny``, meant for labs and tests (``127.0.0.0/8`` to relay to
a local echo peer, ``10.99.0.0/16`` for a lab network). Each candidate is exempted on its own, so an
allow entry only ever opens the addresses it names:

- allowing 127.0.0.0/8 permits ``127.0.0.1`` and ``::ffff:127.0.0.1`` (the contacted address is
  127.0.0.1 in both) and ``::127.0.0.1`` (its literal is in no default deny entry; its embedded
  address is allowed), but not ``64:ff9b::7f00:1`` or ``2002:7f00:1::1``, whose literals stay
  denied until 64:ff9b::/96 or 2002::/16 are allowed too; nor ``0.0.0.0``;
- allowing 2002::/16 alone still refuses ``2002:a9fe:a9fe::1``, because its embedded
  169.254.169.254 is denied and not allowed.

IPv4 entries judge IPv4 addresses (plain or mapped) and IPv6 entries judge IPv6 literals (mapped
ones included): entries are never translated between families, so ``allow = ["::ffff:0:0/96"]``
opens nothing, and ``deny = ["::/0"]`` refuses every IPv6 peer, mapped ones included, but no plain
IPv4 peer. A mapped peer is therefore never more permissive than the IPv4 address it embeds. Relay
sockets in this project are IPv6-only (IPV6_V6ONLY), so a mapped peer on an IPv6 relay reaches
nothing anyway; refusing it whenever its IPv4 address is refused is the safe, predictable choice.

Resource handling: a policy is immutable after construction; `refusal` keeps a bounded memo of
recent answers (peer addresses repeat: every CreatePermission refresh names the same peers).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_DENY",
    "LOOPBACK_RANGES",
    "PeerPolicy",
    "Refusal",
    "embedded_ipv4",
]

#: The deny-by-default list of hardened public TURN configurations (docs/security.md): "this
#: network", private, shared (CGNAT), loopback, link-local, IETF protocol assignments,
#: documentation, benchmarking, multicast and reserved IPv4; unspecified, loopback, NAT64, discard,
#: IETF protocol assignments (incl. Teredo), documentation, 6to4, segment routing, ULA, link-local
#: and multicast IPv6. 255.255.255.255 is inside 240.0.0.0/4.
DEFAULT_DENY: Final[tuple[str, ...]] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "5f00::/16",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)

#: The allow entries that let a relay reach loopback peers (a test echo peer, coturn's
#: ``allow-loopback-peers``). ``0.0.0.0`` and ``::`` stay refused: they are not loopback ranges.
LOOPBACK_RANGES: Final[tuple[str, ...]] = ("127.0.0.0/8", "::1/128")


_U32: Final = 0xFFFFFFFF
# RFC 4291 §2.5.5.2: ::ffff:0:0/96, compared on the top 96 bits.
_MAPPED_HI96: Final = 0xFFFF
# RFC 2765 §2.1: ::ffff:0:0:0/96.
_TRANSLATED_HI96: Final = 0xFFFF0000
# RFC 6052 §2.1: 64:ff9b::/96.
_NAT64_WKP_HI96: Final = 0x0064FF9B << 64
# RFC 8215: 64:ff9b:1::/48, compared on the top 48 bits.
_NAT64_LOCAL_HI48: Final = 0x0064FF9B0001
# RFC 3056 §2: 2002::/16.
_SIXTOFOUR_HI16: Final = 0x2002
# RFC 4380 §4: 2001:0::/32.
_TEREDO_HI32: Final = 0x20010000
# RFC 5214 §6.1: the ISATAP interface identifier starts 0000:5efe, with the u/g bits (0x02/0x01
# of its first octet) possibly set.
_ISATAP_IID_MASK: Final = 0xFCFFFFFF
_ISATAP_IID: Final = 0x00005EFE

#: Bounded memo size; entries longer than this many characters are never memoised.
_MEMO_SIZE: Final = 4096
_MEMO_KEY_CHARS: Final = 64

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Rules = tuple[tuple[int, int, str], ...]  # (network bits, mask, configured text)


def _bits(value: int, start: int, end: int) -> int:
    """Bits ``start..end`` of a 128-bit address, numbered from the most significant (bit 0) as
    the RFCs draw them."""
    return (value >> (128 - end)) & ((1 << (end - start)) - 1)


def embedded_ipv4(value: int) -> list[tuple[str, int]]:
    """Every IPv4 address a transition mechanism embeds in the IPv6 address ``value``.

    Returns ``(form, ipv4)`` pairs (``ipv4`` as an int). The IPv4-mapped block is *not* handled
    here: `PeerPolicy` judges a mapped address as the IPv4 address a dual-stack socket reaches.
    """
    found: list[tuple[str, int]] = []
    hi96 = value >> 32
    low32 = value & _U32
    if hi96 == 0:
        # RFC 4291 §2.5.5.1; "::" and "::1" are the unspecified and loopback addresses
        # (§2.5.2, §2.5.3), judged by their own deny entries, not IPv4-compatible ones.
        if value > 1:
            found.append(("IPv4-compatible", low32))
    elif hi96 == _TRANSLATED_HI96:
        found.append(("IPv4-translated", low32))
    elif hi96 == _NAT64_WKP_HI96:
        found.append(("NAT64", low32))
    if value >> 80 == _NAT64_LOCAL_HI48:
        # RFC 6052 §2.2: the IPv4 bits skip the "u" octet (bits 64..72) for every length below 96.
        found.append(("local-use NAT64 /48", (_bits(value, 48, 64) << 16) | _bits(value, 72, 88)))
        found.append(("local-use NAT64 /56", (_bits(value, 56, 64) << 24) | _bits(value, 72, 96)))
        found.append(("local-use NAT64 /64", _bits(value, 72, 104)))
        found.append(("local-use NAT64 /96", low32))
    if value >> 112 == _SIXTOFOUR_HI16:
        found.append(("6to4", _bits(value, 16, 48)))
    if value >> 96 == _TEREDO_HI32:
        found.append(("Teredo server", _bits(value, 32, 64)))
        # RFC 4380 §4: the client's external IPv4 address is stored with every bit inverted.
        found.append(("Teredo client", low32 ^ _U32))
    if (_bits(value, 64, 96) & _ISATAP_IID_MASK) == _ISATAP_IID:
        found.append(("ISATAP", low32))
    return found


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a peer was refused, for a log line or a counter label.

    ``kind`` is ``"unparsable"``, ``"denied"`` (the address itself, or the IPv4 address it maps
    to, is denied) or ``"embedded"`` (an IPv4 address embedded by a transition mechanism is).
    ``address`` is the canonical text of the parsed peer (never the raw input, which may be
    hostile); ``rule`` is the deny entry as configured; ``form`` names the embedding.
    """

    kind: str
    address: str = ""
    rule: str = ""
    form: str = ""
    matched: str = ""

    def __str__(self) -> str:
        if self.kind == "unparsable":
            return "unparsable address"
        if not self.form:
            return f"denied {self.rule}"
        return f"denied {self.rule} ({self.form} {self.matched} of {self.address})"


_UNPARSABLE: Final = Refusal("unparsable")


def _compile(entries: Iterable[str], what: str) -> tuple[_Rules, _Rules, tuple[str, ...]]:
    """Parse CIDR text into per-family (bits, mask, text) rules, plus the canonical texts.

    Host bits are an error (``10.0.0.1/8`` is more likely a typo than a wish for 10.0.0.0/8).
    """
    if isinstance(entries, str):
        raise TypeError(f"{what} must be a list of CIDR strings, not one string")
    v4: list[tuple[int, int, str]] = []
    v6: list[tuple[int, int, str]] = []
    canonical: list[str] = []
    for entry in entries:
        try:
            net = ipaddress.ip_network(entry, strict=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} entry {entry!r} is not a CIDR network: {exc}") from None
        text = str(net)
        canonical.append(text)
        if isinstance(net, ipaddress.IPv4Network):
            v4.append((int(net.network_address), int(net.netmask), text))
        else:
            v6.append((int(net.network_address), int(net.netmask), text))
    return tuple(v4), tuple(v6), tuple(canonical)


def _parse_untrusted(ip: object) -> _Address | None:
    """An address from text or an address object; None for anything else."""
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ip
    if not isinstance(ip, str):
        # ip_address() would read 4 or 16 bytes, or an int, as a packed address.
        return None
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def _match(rules: _Rules, value: int) -> str | None:
    for bits, mask, text in rules:
        if value & mask == bits:
            return text
    return None


class PeerPolicy:
    """An immutable deny/allow policy for TURN peer addresses (see the module docstring).

    Build one from configuration and share it; `permits` is called once per peer named in a
    CreatePermission, ChannelBind or Send, never per relayed packet. Construction raises
    ValueError naming the bad entry; checking never raises.
    """

    __slots__ = ("_allow", "_allow4", "_allow6", "_deny", "_deny4", "_deny6", "_memo")

    def __init__(self, deny: Iterable[str] = DEFAULT_DENY, allow: Iterable[str] = ()) -> None:
        self._deny4, self._deny6, self._deny = _compile(deny, "deny")
        self._allow4, self._allow6, self._allow = _compile(allow, "allow")
        self._memo: dict[object, Refusal | None] = {}

    @property
    def deny(self) -> tuple[str, ...]:
        """The deny entries, canonical CIDR text, in configured order."""
        return self._deny

    @property
    def allow(self) -> tuple[str, ...]:
        """The allow entries (exceptions to `deny`), canonical CIDR text."""
        return self._allow

    def __repr__(self) -> str:
        return f"PeerPolicy(deny={list(self._deny)!r}, allow={list(self._allow)!r})"

    def permits(self, ip: str | _Address) -> bool:
        """True when the relay may send to ``ip`` (text from the wire, or an address object)."""
        return self.refusal(ip) is None

    def refusal(self, ip: str | _Address) -> Refusal | None:
        """Why ``ip`` is refused, or None when it is permitted; never raises."""
        memo = self._memo
        memoise = not isinstance(ip, str) or len(ip) <= _MEMO_KEY_CHARS
        if memoise:
            try:
                return memo[ip]
            except KeyError:
                pass
            except TypeError:  # unhashable junk: typed out, but untrusted paths must not raise
                return _UNPARSABLE
        found = self._judge(ip)
        if memoise:
            if len(memo) >= _MEMO_SIZE:
                # Dicts keep insertion order: drop the oldest entry.
                del memo[next(iter(memo))]
            memo[ip] = found
        return found

    def _judge(self, ip: object) -> Refusal | None:
        parsed = _parse_untrusted(ip)
        if parsed is None:
            return _UNPARSABLE
        value = int(parsed)  # drops any scope id
        if parsed.version == 6:
            return self._judge_v6(value)
        rule = self._denied_v4(value)
        return None if rule is None else Refusal("denied", _text(value, 4), rule)

    def _judge_v6(self, value: int) -> Refusal | None:
        rule = _match(self._deny6, value)
        if rule is not None and _match(self._allow6, value) is None:
            return Refusal("denied", _text(value, 6), rule)
        if value >> 32 == _MAPPED_HI96:
            # RFC 4291 §2.5.5.2: a mapped address is the IPv4 address a dual-stack socket reaches.
            embedded = value & _U32
            rule = self._denied_v4(embedded)
            if rule is None:
                return None
            return Refusal("denied", _text(value, 6), rule, "IPv4-mapped", _text(embedded, 4))
        for form, embedded in embedded_ipv4(value):
            rule = self._denied_v4(embedded)
            if rule is not None:
                return Refusal("embedded", _text(value, 6), rule, form, _text(embedded, 4))
        return None

    def _denied_v4(self, value: int) -> str | None:
        """The deny entry refusing IPv4 ``value``, or None when it is not denied or allowed."""
        rule = _match(self._deny4, value)
        if rule is None or _match(self._allow4, value) is not None:
            return None
        return rule


def _text(value: int, version: int) -> str:
    """Canonical text of an address int, built only for refusals (it costs more than the check)."""
    if version == 4:
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv6Address(value))


class OwnEndpoints:
    """The server's own UDP service endpoints (STUN/TURN listeners): a relay never sends there.

    `PeerPolicy` judges addresses, because permissions are per IP (RFC 8656 §9) and a relay may
    well reach its own IP: two clients relaying to each other's relayed addresses on the same
    server is the common case. What it must not reach is the server's *service* ports: a Send or
    channel to them is TURN-in-TURN (a client hiding behind the server's own address, looping
    requests through itself, getting around per-source limits). ChannelBind to one gets 403, a
    Send to one is dropped and counted.

    Endpoints on a wildcard address (``0.0.0.0``, ``::``) are matched by port on any address in
    ``local_ips`` (the relay and external addresses: those a client knows as the server's) and
    on loopback. Never raises: peer addresses are untrusted text.
    """

    __slots__ = ("_exact", "_local_ips", "_wildcard_ports")

    def __init__(
        self, endpoints: Iterable[tuple[str, int]] = (), local_ips: Iterable[str] = ()
    ) -> None:
        exact: set[tuple[str, int]] = set()
        wildcard: set[int] = set()
        for ip, port in endpoints:
            address = ipaddress.ip_address(ip)
            if address.is_unspecified:
                wildcard.add(port)
            else:
                exact.add((str(address), port))
        self._exact = frozenset(exact)
        self._wildcard_ports = frozenset(wildcard)
        self._local_ips = frozenset(str(ipaddress.ip_address(ip)) for ip in local_ips)

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, tuple) or len(peer) != 2:
            return False
        ip, port = peer
        if self._matches(ip, port):
            return True
        if not isinstance(ip, str) or ":" not in ip:
            return False
        # An IPv6 spelling of an IPv4 endpoint (IPv4-mapped, NAT64, 6to4... as the peer
        # policy reads them) names the same service: TURN-in-TURN all the same.
        parsed = _parse_untrusted(ip)
        if parsed is None:
            return False
        value = int(parsed)
        embedded = [value & _U32] if value >> 32 == _MAPPED_HI96 else []
        embedded += [v4 for _, v4 in embedded_ipv4(value)]
        return any(self._matches(_text(v4, 4), port) for v4 in embedded)

    def _matches(self, ip: object, port: object) -> bool:
        if (ip, port) in self._exact:
            return True
        if port not in self._wildcard_ports:
            return False
        if ip in self._local_ips:
            return True
        parsed = _parse_untrusted(ip)
        return parsed is not None and parsed.is_loopback

    def ports_on(self, ip: str) -> tuple[int, ...]:
        """The ports that are our own service endpoints on ``ip`` (for the compiled fast path,
        which checks a Send's peer port against this list instead of these rules)."""
        candidates = {port for _, port in self._exact} | self._wildcard_ports
        return tuple(sorted(port for port in candidates if (ip, port) in self))

    def __bool__(self) -> bool:
        return bool(self._exact or self._wildcard_ports)

    def __repr__(self) -> str:
        wildcard = sorted(self._wildcard_ports)
        return f"OwnEndpoints(exact={sorted(self._exact)!r}, wildcard_ports={wildcard!r})"
