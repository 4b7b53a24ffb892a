"""STUN servers on real loopback sockets for the tests, their TLS context and free port pairs
(on pytest's pythonpath as ``loopback_stun``)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
import trustme
from default_settings import responder_config

from secureconnect.stun.responder import BindingResponder
from secureconnect.stun.serve import StunEndpoints, StunServer


def free_port_pair(ips: tuple[str, ...] = ("127.0.0.1", "127.0.0.2")) -> tuple[int, int]:
    """Two ports free for UDP and TCP on every IP in ``ips`` (RFC 5780 needs fixed ports)."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
        probe.close()
        ports = (base, base + 1 if base < 65535 else base - 1)
        if all(_free(ip, port) for ip in ips for port in ports):
            return ports
    raise RuntimeError("no free port pair found")


def _free(ip: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind)
        try:
            sock.bind((ip, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)
    return context


@asynccontextmanager
async def running_stun(
    *,
    addresses: tuple[str, ...] = ("127.0.0.1",),
    port: int = 0,
    alternate: tuple[str, int] | None = None,
    tls_context: Callable[[], ssl.SSLContext] | None = None,
    **options: float,
) -> AsyncIterator[StunServer]:
    """Start a StunServer with ``nursery.start`` and stop it when the block ends."""
    primary = (addresses[0], port) if alternate else None
    server = StunServer(
        responder=BindingResponder(responder_config(primary=primary, alternate=alternate)),
        endpoints=StunEndpoints(
            addresses=addresses,
            port=port,
            tls_port=0 if tls_context else None,
            alternate=alternate,
        ),
        tls_context=tls_context,
        **options,  # type: ignore[arg-type]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


def bound(server: StunServer, transport: str, ip: str | None = None) -> tuple[str, int]:
    """The (ip, port) the server bound for ``transport`` (first match, optionally on ``ip``)."""
    for kind, host, port in server.bound:
        if kind == transport and (ip is None or host == ip):
            return host, port
    raise LookupError(f"{transport} not bound")
