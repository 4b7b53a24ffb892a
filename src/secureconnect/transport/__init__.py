"""The transport layer the components share: listening sockets (bind errors naming every address
that failed), connection caps per address and in total with refusals counted by reason
(:mod:`~secureconnect.transport.caps`, used by STUN, TURN and signaling), the TLS handshake by a
deadline, idle timeouts, connection counters and drain."""

from secureconnect.netaddr import format_address
from secureconnect.transport.caps import ConnectionCaps, Network, Ticket
from secureconnect.transport.listeners import (
    BindError,
    ListeningSockets,
    StreamAcceptor,
    StreamComponent,
    StreamCounters,
    open_tcp_listeners,
    udp_socket,
)

__all__ = [
    "BindError",
    "ConnectionCaps",
    "ListeningSockets",
    "Network",
    "StreamAcceptor",
    "StreamComponent",
    "StreamCounters",
    "Ticket",
    "format_address",
    "open_tcp_listeners",
    "udp_socket",
]
