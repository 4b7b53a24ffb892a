"""Your own client as the lab's peer (``secureconnect natlab --peer-cmd 'COMMAND'``).

The runner starts COMMAND (split like a shell would, no shell involved) twice per pair, inside
each client's namespace, with what it needs in the environment:

==============================  =============================================================
``SECURECONNECT_SIGNAL_URL``    the lab appliance's WSS signaling (docs/signaling-protocol.md)
``SECURECONNECT_ROOM``          the pair's room: both peers join it
``SECURECONNECT_ROLE``          ``offer`` or ``answer``: the offerer waits for the other peer
``SECURECONNECT_ICE_SERVERS``   JSON ``RTCIceServer`` list: the appliance's STUN and TURN (UDP,
                                TCP, TLS) with a fresh credential; STUN only for the lab's
                                "is there a direct path" attempt
``SECURECONNECT_CAFILE``        the appliance's self-signed certificate (WSS, TURNS)
``SECURECONNECT_TIMEOUT``       seconds the peer has (it is killed 20 s after)
``SECURECONNECT_BEHAVIOUR``     the NAT this client is behind (for logs)
==============================  =============================================================

The verdict: exit status 0 means connected. The last line of stdout may be a JSON object that
says more: ``connected`` (overrides the exit status), ``local`` and ``remote`` (the candidate
types of the selected pair: ``host``, ``srflx``, ``prflx``, ``relay``), ``seconds`` (time to
connect) and ``error``. With the candidate types the lab checks the route against what each NAT
pair allows, as for its own peers; without them only that the pair connected.
Examples: ``examples/natlab/`` (a Python peer and a browser peer, both tested).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from secureconnect.credentials import CredentialMinter
from secureconnect.natlab.behaviours import Behaviour

CREDENTIAL_TTL = 3600


def peer_environment(
    *,
    signal_url: str,
    host: str,
    turn_port: int,
    turn_tls_port: int,
    state_dir: Path,
    room: str,
    role: str,
    timeout: float,
    behaviour: Behaviour,
    turn: bool = True,
) -> dict[str, str]:
    """The variables of the module docstring for one peer."""
    servers: list[dict[str, Any]] = [{"urls": [f"stun:{host}:{turn_port}"]}]
    if turn:
        secret = (state_dir / "turn-secret").read_text().split()[0]
        credential = CredentialMinter([secret]).mint(f"lab-{role}", CREDENTIAL_TTL, time.time())
        urls = (
            f"turn:{host}:{turn_port}?transport=udp",
            f"turn:{host}:{turn_port}?transport=tcp",
            f"turns:{host}:{turn_tls_port}?transport=tcp",
        )
        servers.append(dict(credential.to_ice_server(urls)))
    return {
        "SECURECONNECT_SIGNAL_URL": signal_url,
        "SECURECONNECT_ROOM": room,
        "SECURECONNECT_ROLE": role,
        "SECURECONNECT_ICE_SERVERS": json.dumps(servers),
        "SECURECONNECT_CAFILE": str(state_dir / "selfsigned-cert.pem"),
        "SECURECONNECT_TIMEOUT": f"{timeout:g}",
        "SECURECONNECT_BEHAVIOUR": behaviour.value,
    }


def user_report(returncode: int, out: str, err: str) -> dict[str, object]:
    """The peer's report: its JSON line if it printed one, over what its exit status says."""
    report: dict[str, object] = {"connected": returncode == 0}
    if returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        report["error"] = f"exited {returncode}" + (f": {tail}" if tail else "")
    lines = out.strip().splitlines()
    if lines:
        try:
            said = json.loads(lines[-1])
        except ValueError:
            said = None
        if isinstance(said, Mapping):
            report.update({k: v for k, v in said.items() if isinstance(k, str)})
    return report
