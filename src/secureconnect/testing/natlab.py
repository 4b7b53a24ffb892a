"""The NAT lab for your tests: clients behind real NATs (network namespaces, nftables), the
appliance inside the lab, and ways to run your program or your Python code as a client.

:func:`start_natlab` builds a :class:`~secureconnect.natlab.topology.Lab` with the behaviours
asked for (two clients behind each, each behind a router of its own; lab ids let several run at
once), starts ``secureconnect run`` on the lab's public addresses, and yields a
:class:`NatLab`. It needs root, iproute2 and nftables: :func:`lab_unavailable` says why a
machine cannot build one (the plugin turns that into a failure or a skip, as configured).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from secureconnect.credentials import CredentialMinter
from secureconnect.natlab.behaviours import ALL_BEHAVIOURS, Behaviour, parse_behaviour
from secureconnect.natlab.networks import Network
from secureconnect.natlab.runner import (
    STUN_PORT,
    TURN_PORT,
    TURN_TLS_PORT,
    LabAppliance,
    run_appliance,
)
from secureconnect.natlab.topology import Lab, LabClient, call_in_namespace
from secureconnect.netaddr import url_host

T = TypeVar("T")


def lab_unavailable() -> str | None:
    """Why this machine cannot build a lab (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (it creates network namespaces)"
    missing = [tool for tool in ("ip", "nft", "sysctl") if shutil.which(tool) is None]
    if missing:
        return f"the NAT lab needs {', '.join(missing)} (apt-get install iproute2 nftables procps)"
    return None


@dataclass(frozen=True)
class LabPeer:
    """One client of the lab, with ways to run things as it."""

    lab: NatLab
    client: LabClient

    @property
    def behaviour(self) -> Behaviour:
        return self.client.behaviour

    @property
    def address(self) -> str:
        """Its address on its own interface (private behind a NAT)."""
        return self.client.address

    @property
    def public_address(self) -> str:
        """What the outside sees (its router's WAN address)."""
        return self.client.public_address

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        **popen: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this client's namespace and wait (bounded) for it."""
        return subprocess.run(  # noqa: S603 - the test's own command line
            self.argv(*argv),
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **popen,
        )

    def popen(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside this client's namespace (the caller waits for it)."""
        return subprocess.Popen(self.argv(*argv), text=True, **popen)  # noqa: S603

    def argv(self, *argv: str) -> list[str]:
        """``ip netns exec NAMESPACE ARGV...``."""
        return self.lab.lab.exec_argv(self.client.namespace, *argv)

    def call(self, fn: Callable[[], T], *, timeout: float = 60.0) -> T:
        """Run ``fn()`` in a thread that has joined this client's namespace (its sockets are
        the client's; asyncio code runs with ``lambda: asyncio.run(main())``)."""
        return call_in_namespace(self.client.namespace, fn, timeout=timeout)


@dataclass(frozen=True)
class NatLab:
    """A built lab with the appliance running in it (see the module docstring)."""

    lab: Lab
    appliance: LabAppliance
    state_dir: Path

    @property
    def behaviours(self) -> tuple[Behaviour, ...]:
        return tuple(dict.fromkeys(c.behaviour for c in self.lab.clients()))

    def peer(self, behaviour: Behaviour | str, index: int = 0) -> LabPeer:
        """Client ``index`` (0 or 1) behind ``behaviour``."""
        return LabPeer(self, self.lab.client(parse_behaviour(str(behaviour)), index))

    @property
    def networks(self) -> tuple[Network, ...]:
        """The harder networks built besides the behaviours (docs/natlab.md)."""
        return self.lab.networks

    def network_peers(self, network: Network | str) -> tuple[LabPeer, LabPeer]:
        """The two clients of a harder network, e.g. ``hairpin``: behind one NAT."""
        first, second = self.lab.network_clients(Network(str(network)))
        return LabPeer(self, first), LabPeer(self, second)

    @property
    def signal_url(self) -> str:
        return self.appliance.url

    @property
    def cafile(self) -> Path:
        """The appliance's self-signed certificate (trust it for WSS and TURNS)."""
        return self.appliance.cafile

    @property
    def host(self) -> str:
        return url_host(self.lab.server_addresses[0])

    @property
    def stun_url(self) -> str:
        return f"stun:{self.host}:{STUN_PORT}"

    @property
    def turn_urls(self) -> tuple[str, ...]:
        return (
            f"turn:{self.host}:{TURN_PORT}?transport=udp",
            f"turn:{self.host}:{TURN_PORT}?transport=tcp",
            f"turns:{self.host}:{TURN_TLS_PORT}?transport=tcp",
        )

    def credential(self, user: str = "test", ttl: int = 600) -> dict[str, Any]:
        secret = (self.state_dir / "turn-secret").read_text().split()[0]
        minted = CredentialMinter([secret]).mint(user, ttl, time.time())
        return dict(minted.to_ice_server(self.turn_urls))

    def ice_servers(self, user: str = "test", ttl: int = 600) -> list[dict[str, Any]]:
        """The lab appliance's STUN and TURN with a fresh credential, and nothing else."""
        return [{"urls": [self.stun_url]}, self.credential(user, ttl)]

    def environment(self, room: str, user: str = "test") -> dict[str, str]:
        """What a program of yours gets to find the appliance (docs/testing.md)."""
        return {
            "SECURECONNECT_SIGNAL_URL": self.signal_url,
            "SECURECONNECT_ROOM": room,
            "SECURECONNECT_ICE_SERVERS": json.dumps(self.ice_servers(user)),
            "SECURECONNECT_CAFILE": str(self.cafile),
        }


@dataclass(frozen=True)
class NatPair:
    """Two clients of a lab, and a room of their own on its signaling."""

    natlab: NatLab
    first: LabPeer
    second: LabPeer
    room: str


@contextmanager
def start_natlab(
    behaviours: Sequence[Behaviour | str] = ALL_BEHAVIOURS,
    *,
    workdir: Path | None = None,
    lab_id: int | None = None,
    networks: Sequence[Network | str] = (),
) -> Iterator[NatLab]:
    """Build the lab (the ``behaviours``, and the harder ``networks``) and start the appliance
    in it; tear both down after."""
    plan = [parse_behaviour(str(b)) for b in behaviours]
    extra = [Network(str(n)) for n in networks]
    with (
        contextlib_tempdir(workdir) as where,
        Lab(plan, lab_id=lab_id, networks=extra) as lab,
        run_appliance(lab, where) as appliance,
    ):
        yield NatLab(lab, appliance, where / "state")


@contextmanager
def contextlib_tempdir(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="scnl-") as tmp:
        yield Path(tmp)
