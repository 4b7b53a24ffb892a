"""Drive pystun3 (module ``stun``) against one server and print what it saw as one JSON object.

Run as a subprocess by the interop tests: pystun3 uses blocking sockets and retransmits on its
own schedule (and forever on an error response), so only a process with a timeout bounds it.

    pystun_client.py binding HOST PORT
        one classic (RFC 3489) Binding from a socket on 127.0.0.1:
        {"local": [ip, port], "result": {"Resp": ..., "ExternalIP": ..., ...}}
    pystun_client.py classify SOURCE_IP HOST PORT
        pystun3's RFC 3489 NAT classification from a socket bound to SOURCE_IP:
        {"local": [ip, port], "nat_type": "...", "result": {...the last test's answer}}

``--timeout`` is pystun3's per-try receive timeout (it tries four times before giving up).
"""

from __future__ import annotations

import argparse
import importlib
import json
import socket
from typing import Any

# The name `stun` is also a test package here; importlib keeps mypy from resolving it there.
stun: Any = importlib.import_module("stun")


def _socket(source_ip: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.bind((source_ip, 0))
    return sock


def binding(host: str, port: int, timeout: float) -> dict[str, Any]:
    stun._initialize()  # fills the message-type table that stun_test reads
    with _socket("127.0.0.1", timeout) as sock:
        result = stun.stun_test(sock, host, port, "127.0.0.1", 0)
        local = sock.getsockname()
    return {"local": list(local), "result": result}


def classify(source_ip: str, host: str, port: int, timeout: float) -> dict[str, Any]:
    # get_nat_type is what stun.get_ip_info runs, on a socket of ours so we know its port.
    with _socket(source_ip, timeout) as sock:
        local = sock.getsockname()
        nat_type, result = stun.get_nat_type(
            sock, source_ip, local[1], stun_host=host, stun_port=port
        )
    return {"local": list(local), "nat_type": nat_type, "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=2.0)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("binding")
    one.add_argument("host")
    one.add_argument("port", type=int)
    nat = commands.add_parser("classify")
    nat.add_argument("source_ip")
    nat.add_argument("host")
    nat.add_argument("port", type=int)
    args = parser.parse_args()
    if args.command == "binding":
        out = binding(args.host, args.port, args.timeout)
    else:
        out = classify(args.source_ip, args.host, args.port, args.timeout)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
