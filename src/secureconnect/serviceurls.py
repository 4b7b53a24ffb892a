"""What clients are told: the URLs the components bound (printed at start) and the STUN/TURN URIs
handed out with credentials (RFC 7064/7065), on ``signal.ice_host`` or the external/listen
address."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from secureconnect.config import Config
from secureconnect.stun.serve import StunServer
from secureconnect.supervisor import Component
from secureconnect.turn.serve import TurnServer

if TYPE_CHECKING:
    from secureconnect.signal.serve import SignalServer


def service_urls(components: Sequence[Component]) -> list[str]:
    """The URLs a user needs, from what the components actually bound."""
    urls: list[str] = []
    for component in components:
        if isinstance(component, StunServer):
            primary = _primary_udp(component)
            for transport, ip, port in component.bound:
                if transport != "udp" or (ip, port) in primary:
                    urls.append(_url("stun", transport, ip, port))
        elif isinstance(component, TurnServer):
            for transport, ip, port in component.bound:
                urls.append(_url("turn", transport, ip, port))
            urls += [_url("stun", t, ip, port) for t, ip, port in component.bound if t == "udp"]
        elif component.name == "signal":
            for transport, ip, port in cast("SignalServer", component).bound:
                host = f"[{ip}]" if ":" in ip else ip
                secure = transport == "tls"
                urls.append(f"{'wss' if secure else 'ws'}://{host}:{port}/ws")
                urls.append(f"{'https' if secure else 'http'}://{host}:{port}/  (demo page)")
    return urls


def _url(scheme: str, transport: str, ip: str, port: int) -> str:
    """RFC 7064/7065 URIs: stun:, stuns:, turn:...?transport=udp|tcp, turns:...?transport=tcp."""
    host = f"[{ip}]" if ":" in ip else ip
    if scheme == "stun":
        return {"udp": f"stun:{host}:{port}", "tcp": f"stun:{host}:{port}?transport=tcp"}.get(
            transport, f"stuns:{host}:{port}"
        )
    if transport == "tls":
        return f"turns:{host}:{port}?transport=tcp"
    return f"turn:{host}:{port}?transport={transport}"


def _primary_udp(server: StunServer) -> set[tuple[str, int]]:
    return {(ip, server.endpoints.port) for ip in server.endpoints.addresses} | {
        (ip, port) for t, ip, port in server.bound if t == "udp" and server.endpoints.port == 0
    }


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
