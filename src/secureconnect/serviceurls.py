"""What clients are told: the URLs the components bound (printed at start) and the STUN/TURN URIs
handed out with credentials (RFC 7064/7065), on ``signal.ice_host`` or the external/listen
address.

Which URLs a component serves is said where the component is built, not found out here: the
runtime's table of builders pairs each kind of component with the function of this module that
turns what it bound into URLs (:func:`stun_server_urls`, :func:`turn_server_urls`,
:func:`signal_server_urls`), and hands back, with each component, a :data:`UrlSource` bound to
that very component. :func:`service_urls` then only collects, without asking what each component
is. The alternatives were worse: asking here (``isinstance`` per server class, a test of the
component's name, a ``cast``) made this module import every component and know each one's
insides; a method on each server class would put text for the start-up banner into the protocol
packages. So this module takes plain data (``bound``: the (transport, ip, port) triples a
component's sockets have, read once it has started) and imports no component.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from secureconnect.config import Config
from secureconnect.netaddr import url_host

#: What one built component serves, as URLs; called once it has bound (port 0 is resolved then).
UrlSource = Callable[[], list[str]]


def service_urls(sources: Iterable[UrlSource]) -> list[str]:
    """The URLs a user needs, from what the components actually bound, in start order."""
    return [url for source in sources for url in source()]


def stun_server_urls(
    bound: Sequence[tuple[str, str, int]], port: int, addresses: Sequence[str]
) -> list[str]:
    """A STUN server's URLs: every TCP/TLS listener, and the UDP sockets on its listen
    ``addresses`` and ``port`` (RFC 5780's alternate address and port only answer NAT tests).
    With ``port`` 0 (chosen at bind time) every UDP socket counts."""
    primary = {(ip, port) for ip in addresses}
    return [
        _url("stun", transport, ip, bound_port)
        for transport, ip, bound_port in bound
        if transport != "udp" or port == 0 or (ip, bound_port) in primary
    ]


def turn_server_urls(bound: Sequence[tuple[str, str, int]]) -> list[str]:
    """A TURN server's URLs: ``turn:``/``turns:`` for every socket, then ``stun:`` for the UDP
    ones (the TURN listener answers Binding itself)."""
    urls = [_url("turn", transport, ip, port) for transport, ip, port in bound]
    return urls + [_url("stun", t, ip, port) for t, ip, port in bound if t == "udp"]


def signal_server_urls(bound: Sequence[tuple[str, str, int]]) -> list[str]:
    """The signaling server's WebSocket endpoint and demo page on every listener."""
    urls: list[str] = []
    for transport, ip, port in bound:
        host = url_host(ip)
        secure = transport == "tls"
        urls.append(f"{'wss' if secure else 'ws'}://{host}:{port}/ws")
        urls.append(f"{'https' if secure else 'http'}://{host}:{port}/  (demo page)")
    return urls


def _url(scheme: str, transport: str, ip: str, port: int) -> str:
    """RFC 7064/7065 URIs: stun:, stuns:, turn:...?transport=udp|tcp, turns:...?transport=tcp."""
    host = url_host(ip)
    if scheme == "stun":
        return {"udp": f"stun:{host}:{port}", "tcp": f"stun:{host}:{port}?transport=tcp"}.get(
            transport, f"stuns:{host}:{port}"
        )
    if transport == "tls":
        return f"turns:{host}:{port}?transport=tcp"
    return f"turn:{host}:{port}?transport={transport}"


def ice_host(config: Config) -> str:
    """The host name or address clients should use for STUN/TURN."""
    if config.signal.ice_host:
        return config.signal.ice_host
    candidates = list(config.turn.external_addresses) + [
        a for a in config.turn.listen if not ipaddress.ip_address(a).is_unspecified
    ]
    return candidates[0] if candidates else "127.0.0.1"


def turn_uris(config: Config) -> list[str]:
    """The TURN URIs to hand to clients (``signal.ice_host``, else external/listen address)."""
    turn = config.turn
    host = ice_host(config)
    uris: list[str] = []
    if turn.udp:
        uris.append(_url("turn", "udp", host, turn.port))
    if turn.tcp:
        uris.append(_url("turn", "tcp", host, turn.port))
    if turn.tls:
        uris.append(_url("turn", "tls", host, turn.tls_port))
    return uris


def stun_uris(config: Config) -> list[str]:
    """STUN URIs for clients: the TURN port answers Binding, else the STUN component's."""
    host = ice_host(config)
    if config.turn.enabled and config.turn.udp:
        return [_url("stun", "udp", host, config.turn.port)]
    if config.stun.enabled and config.stun.udp:
        return [_url("stun", "udp", host, config.stun.port)]
    return []
