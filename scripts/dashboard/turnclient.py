"""The tests' blocking TURN client (``tests/support/turnwire.py``), which the demo's odd
clients and echo peers use: this puts ``tests/support`` on the import path and re-exports the
parts of it the demo needs."""

from __future__ import annotations

import sys

from . import ROOT

SUPPORT = str(ROOT / "tests" / "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)

from turnwire import (  # noqa: E402 - on the path just above
    REQUESTED_UDP,
    A,
    Credential,
    Session,
    UdpConn,
    error_code,
    peer_attribute,
    udp_echo,
)

__all__ = [
    "REQUESTED_UDP",
    "A",
    "Credential",
    "Session",
    "UdpConn",
    "error_code",
    "peer_attribute",
    "udp_echo",
]
