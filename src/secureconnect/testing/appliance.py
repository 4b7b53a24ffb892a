"""A running appliance for your tests: where it listens, a fresh TURN credential, its metrics.

:func:`start_appliance` runs ``secureconnect run`` (every component) on free loopback ports with
its embedded defaults: a generated self-signed certificate and TURN secret in a state directory
of its own, WSS signaling, STUN and TURN over UDP, TCP and TLS. It yields an :class:`Appliance`
once the appliance has said it is ready, and stops it when the block ends. No pytest here: the
fixtures of :mod:`secureconnect.testing.plugin` wrap it, and a script can use it as it is.

Everything it starts listens on 127.0.0.1 only. A client that falls back to public servers when
it is given none (aiortc without ``iceServers``) should be given :meth:`Appliance.ice_servers`.
"""

from __future__ import annotations

import ssl
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secureconnect.credentials import CredentialMinter
from secureconnect.launcher import AllInOnePorts, Running, run_appliance
from secureconnect.statedir import SELF_SIGNED_CERT

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Appliance:
    """A running appliance (see the module docstring)."""

    running: Running
    ports: AllInOnePorts
    state_dir: Path

    @property
    def signal_url(self) -> str:
        """The WebSocket signaling endpoint (docs/signaling-protocol.md)."""
        return f"wss://{HOST}:{self.ports.wss}/ws"

    @property
    def http_url(self) -> str:
        """The HTTPS base: the demo page, ``/ice``, ``/healthz``, ``/metrics``."""
        return f"https://{HOST}:{self.ports.wss}"

    @property
    def stun_url(self) -> str:
        return f"stun:{HOST}:{self.ports.turn}"

    @property
    def turn_urls(self) -> tuple[str, ...]:
        """TURN over UDP, TCP and TLS."""
        return (
            f"turn:{HOST}:{self.ports.turn}?transport=udp",
            f"turn:{HOST}:{self.ports.turn}?transport=tcp",
            f"turns:{HOST}:{self.ports.tls}?transport=tcp",
        )

    @property
    def cafile(self) -> Path:
        """The self-signed certificate the appliance generated (trust it for WSS and TURNS)."""
        return self.state_dir / SELF_SIGNED_CERT

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the appliance's certificate."""
        return ssl.create_default_context(cafile=str(self.cafile))

    @property
    def turn_secret(self) -> str:
        """The TURN REST shared secret the appliance generated."""
        return (self.state_dir / "turn-secret").read_text().split()[0]

    def credential(self, user: str = "test", ttl: int = 600) -> dict[str, Any]:
        """A fresh TURN REST credential: ``{"username", "credential", "urls"}``, as an
        ``RTCIceServer`` for every TURN URL."""
        minted = CredentialMinter([self.turn_secret]).mint(user, ttl, time.time())
        return dict(minted.to_ice_server(self.turn_urls))

    def ice_servers(self, user: str = "test", ttl: int = 600) -> list[dict[str, Any]]:
        """``RTCIceServer`` objects: this appliance's STUN and TURN, nothing else."""
        return [{"urls": [self.stun_url]}, self.credential(user, ttl)]

    def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` over HTTPS (no proxies): the status and the body."""
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=self.ssl_context()),
        )
        try:
            with opener.open(self.http_url + path, timeout=10) as reply:
                return int(reply.status), bytes(reply.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{"name{labels}": value}``."""
        status, body = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        samples: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def log_text(self) -> str:
        """What the appliance has logged so far."""
        return self.running.log_text()


@contextmanager
def start_appliance(workdir: Path, settings: Iterable[str] = ()) -> Iterator[Appliance]:
    """``secureconnect run`` on free loopback ports with ``settings`` (``KEY=VALUE``, as for
    ``--set``) on top of the embedded defaults, its state in ``workdir``; stopped after."""
    ports = AllInOnePorts.free()
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = workdir / "state"
    with run_appliance(
        workdir,
        state_dir=state_dir,
        settings=(*ports.settings(), *settings),
        log_file=workdir / "appliance.log",
        ready_timeout=30,
    ) as running:
        yield Appliance(running, ports, state_dir)
