"""Start real TURN servers as subprocesses: ours (``secureconnect run turn``) and coturn.

Used by the interop tests and by the benchmarks (``bench/`` puts ``tests/support`` on its path),
so both run the same servers the same way. Each context manager yields a :class:`TurnTarget`
once the server is ready (ours: its ready line, see :mod:`appliance`; coturn: its TCP port
accepts), and stops the server (SIGTERM, then SIGKILL) however the block ends. Everything
listens on loopback only.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance import free_port, run_appliance, stop_process

from secureconnect.credentials import CredentialMinter

SECRET = "interop-secret"
#: The servers of the interop tests: a test that passes against the reference implementation
#: shows that it checks real behaviour, not our own reading of the RFC; ours runs both in one
#: process and with UDP on two worker processes (turn.workers = 2).
SERVERS = ("secureconnect", "secureconnect-workers", "coturn")
#: RFC 8656 §5 / IANA: relay ports come from the dynamic range (coturn is configured the same way).
RELAY_PORTS = range(49152, 65536)


@dataclass(frozen=True)
class TurnTarget:
    """Where a running TURN server listens and how to authenticate to it."""

    name: str  # "secureconnect" or "coturn"
    host: str
    port: int  # UDP and TCP
    tls_port: int | None
    secret: str
    realm: str
    pid: int


def require_tool(name: str) -> str:
    """The path of an executable the tests need; a loud failure when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: run `make test` (it installs Debian's coturn package)"
        )
    return path


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s")


@contextmanager
def secureconnect_turn(
    workdir: Path, *overrides: str, tls: bool = False, secret: str = SECRET
) -> Iterator[TurnTarget]:
    """Our TURN component in a subprocess; ``overrides`` are extra ``KEY=VALUE`` settings.

    Defaults suit tests and benchmarks: RFC 5766 channel numbers (turnutils_uclient uses them),
    no bandwidth cap, generous user, total and per-address quotas, loopback peers (allowed
    automatically on loopback).
    """
    port = free_port()
    tls_port = free_port(socket.SOCK_STREAM) if tls else None
    settings = [
        f"turn.port={port}",
        f"turn.tls={'true' if tls else 'false'}",
        f"turn.tls_port={tls_port or 0}",
        f'turn.secrets=["{secret}"]',
        "turn.rfc5766_channels=true",
        "turn.bandwidth_limit=0",
        "turn.user_quota=100000",
        "turn.total_quota=100000",
        "turn.ip_quota=100000",  # every load generator comes from 127.0.0.1
        "turn.unauthorized_rate=0",
        *overrides,
    ]
    with run_appliance(
        workdir,
        "turn",
        state_dir=workdir / "state",
        settings=settings,
        log_file=workdir / "secureconnect.log",
    ) as running:
        pid = running.proc.pid
        yield TurnTarget("secureconnect", "127.0.0.1", port, tls_port, secret, "secureconnect", pid)


#: the benchmarks' ``--coturn PATH`` (another coturn build, e.g. 4.17.1 from
#: ../shared/tools/build-coturn-4.17.sh); the tests use Debian's ``turnserver`` on PATH
COTURN_ENV = "SECURECONNECT_COTURN"


def coturn_binary() -> str:
    """The coturn ``turnserver`` to run: ``$SECURECONNECT_COTURN`` or the one on PATH."""
    chosen = os.environ.get(COTURN_ENV)
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise RuntimeError(f"{COTURN_ENV}={chosen} is not an executable turnserver")
        return chosen
    return require_tool("turnserver")


def coturn_version(binary: str | None = None) -> tuple[int, ...]:
    """``turnserver --version`` as numbers (e.g. (4, 6, 1)); () when it says nothing parseable."""
    out = subprocess.run(
        [binary or coturn_binary(), "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    return tuple(int(n) for n in match.groups()) if match else ()


@contextmanager
def coturn(workdir: Path, *extra: str, secret: str = SECRET) -> Iterator[TurnTarget]:
    """coturn (``coturn_binary()``) on loopback with REST secrets, for side-by-side runs. From
    4.7 on coturn takes only RFC 8656 channel numbers unless told otherwise; Debian's
    ``turnutils_uclient`` picks RFC 5766 ones, so the old range is switched back on there."""
    binary = coturn_binary()
    old_channels = ["rfc5766-channel-numbers"] if coturn_version(binary) >= (4, 7) else []
    port = free_port()
    low = 40000 + (port % 1000) * 10
    conf = workdir / "coturn.conf"
    conf.write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1",
                "relay-ip=127.0.0.1",
                f"listening-port={port}",
                f"min-port={low}",
                f"max-port={low + 9000}",
                "use-auth-secret",
                f"static-auth-secret={secret}",
                "realm=coturn",
                "no-cli",
                "no-tls",
                "no-dtls",
                "allow-loopback-peers",
                "no-stdout-log",
                f"log-file={workdir / 'coturn.log'}",
                "user-quota=0",
                "total-quota=0",
                *old_channels,
                *extra,
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)
        yield TurnTarget("coturn", "127.0.0.1", port, None, secret, "coturn", proc.pid)
    finally:
        stop_process(proc)


@contextmanager
def udp_echo_peer(port: int | None = None) -> Iterator[int]:
    """coturn's ``turnutils_peer``: a UDP echo server on 127.0.0.1 (the relay's peer)."""
    binary = require_tool("turnutils_peer")
    port = port or free_port()
    proc = subprocess.Popen(
        [binary, "-p", str(port), "-L", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.2)  # it has no readiness signal; a UDP bind is immediate
        if proc.poll() is not None:
            raise RuntimeError("turnutils_peer exited early")
        yield port
    finally:
        stop_process(proc)


@contextmanager
def turn_server(kind: str, workdir: Path, *, tls: bool = False) -> Iterator[TurnTarget]:
    """Our server or coturn, both handing relay ports out of `RELAY_PORTS`."""
    if kind.startswith("secureconnect"):
        # "secureconnect-workers": UDP served by two worker processes (docs/workers.md)
        workers = ["turn.workers=2"] if kind == "secureconnect-workers" else []
        with secureconnect_turn(workdir, *workers, tls=tls) as target:
            yield target
    else:
        assert not tls, "the coturn helper runs without TLS"
        # Later lines of coturn's config file override the helper's narrower test range.
        with coturn(workdir, "min-port=49152", "max-port=65535") as target:
            yield target


def rest_credential(target: TurnTarget, user: str = "alice") -> tuple[str, str]:
    """A TURN REST API (username, password) valid for ten minutes."""
    cred = CredentialMinter((target.secret,)).mint(user, 600, time.time())
    return cred.username, cred.password


def self_signed_context(workdir: Path) -> ssl.SSLContext:
    """A client context that trusts only the certificate our server generated in ``workdir``."""
    certs = list((workdir / "state").rglob("selfsigned-cert.pem"))
    assert len(certs) == 1, certs
    return ssl.create_default_context(cafile=str(certs[0]))
