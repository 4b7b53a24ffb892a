"""A private relayed address on a server reached at a non-private address, in a network
namespace: our TURN listens on 198.51.100.2 (TEST-NET-2, which the probe's rule counts as
non-private, docs/probe.md) and relays from 10.0.0.2, like a cloud VM behind a 1:1 NAT that was
not told its public address (`turn.external_addresses` unset). The probe runs in the same
namespace; nothing leaves it, and the namespace is deleted however the test ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from appliance import run_appliance
from netns import exec_argv, netns

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

SECRET = "probe-netns-secret"
PUBLIC = "198.51.100.2"
PRIVATE = "10.0.0.2"


def probe_in(namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = exec_argv(namespace, sys.executable, "-m", "secureconnect", "probe", *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=40, check=False)


def test_private_relayed_address_on_a_public_server(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"{SECRET}\n")
    settings = [
        f'turn.listen=["{PUBLIC}"]',
        f'turn.relay_addresses=["{PRIVATE}"]',
        # The relay test sends to the other allocation's relayed address, 10.0.0.2, which the
        # default peer denylist refuses: allowed here so that only the address is wrong.
        'turn.allowed_peers=["10.0.0.0/8"]',
        f'turn.secrets=["{SECRET}"]',
        "turn.tls=false",
    ]
    with (
        netns(addresses=(f"{PUBLIC}/32", f"{PRIVATE}/32")) as namespace,
        run_appliance(
            tmp_path,
            "turn",
            state_dir=tmp_path / "state",
            settings=settings,
            argv_prefix=exec_argv(namespace),
            log_file=tmp_path / "turn.log",
        ),
    ):
        done = probe_in(namespace, f"turn:{PUBLIC}", "--secret-file", str(secret), "--json")
        text = probe_in(namespace, f"turn:{PUBLIC}?transport=tcp", "--secret-file", str(secret))
    assert done.returncode == 1, done.stdout + done.stderr
    checks = {c["id"]: c for c in json.loads(done.stdout)["urls"][0]["checks"]}
    check = checks["relayed-address"]
    assert check["status"] == "fail"
    assert check["details"]["relayed_address"].startswith(f"{PRIVATE}:")
    assert check["details"]["relayed_private"] == "RFC 1918 private (10.0.0.0/8)"
    assert check["details"]["server_private"] is None
    assert "turn.external_addresses" in check["fix"]
    assert "external-ip" in check["fix"]
    # Only the address is wrong: everything else works.
    others = {cid: c["status"] for cid, c in checks.items() if cid != "relayed-address"}
    assert set(others.values()) == {"ok"}, others
    assert text.returncode == 1
    assert f"FAIL  relayed-address  relayed address {PRIVATE}:" in text.stdout
