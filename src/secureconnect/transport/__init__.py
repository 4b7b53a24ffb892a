"""The transport layer the components share: listening sockets, connection caps per address and
in total, the TLS handshake under a deadline, idle timeouts and connection counters."""

from secureconnect.netaddr import format_address
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
    "ListeningSockets",
    "StreamAcceptor",
    "StreamComponent",
    "StreamCounters",
    "format_address",
    "open_tcp_listeners",
    "udp_socket",
]
