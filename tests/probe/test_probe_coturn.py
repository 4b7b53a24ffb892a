"""``secureconnect probe`` against Debian's coturn (4.6.1): the reference implementation passes
every check over UDP, TCP and TLS, and coturn with ``no-auth`` is diagnosed an OPEN RELAY.

coturn runs on free loopback ports with a REST shared secret and a certificate made by the
test (``make_certificate``, given to the probe as ``--cafile``).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from appliance import free_port, stop_process
from servers import coturn_binary, wait_listening

pytestmark = [pytest.mark.coturn, pytest.mark.timeout(60)]

SECRET = "probe-coturn-secret"
TURN_CHECKS = ("binding", "open-relay", "credential", "relayed-address", "relay", "cleanup")


@dataclass(frozen=True)
class Coturn:
    port: int
    tls_port: int

    @property
    def urls(self) -> list[str]:
        return [
            f"turn:127.0.0.1:{self.port}?transport=udp",
            f"turn:127.0.0.1:{self.port}?transport=tcp",
            f"turns:127.0.0.1:{self.tls_port}?transport=tcp",
        ]


@contextmanager
def coturn(workdir: Path, cert: Any, *, auth: bool = True) -> Iterator[Coturn]:
    """coturn on loopback with TLS (``cert``) and, with ``auth``, the REST secret; without it
    ``no-auth``: an open relay."""
    port, tls_port = free_port(), free_port(socket.SOCK_STREAM)
    low = 40000 + (port % 1000) * 10
    credentials = ["use-auth-secret", f"static-auth-secret={SECRET}"] if auth else ["no-auth"]
    conf = workdir / "coturn.conf"
    conf.write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1",
                "relay-ip=127.0.0.1",
                f"listening-port={port}",
                f"tls-listening-port={tls_port}",
                f"min-port={low}",
                f"max-port={low + 2000}",
                *credentials,
                "realm=coturn",
                f"cert={cert.cert}",
                f"pkey={cert.key}",
                "no-dtls",
                "no-cli",
                "allow-loopback-peers",
                "no-stdout-log",
                f"log-file={workdir / 'coturn.log'}",
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen(
        [coturn_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)
        wait_listening(tls_port, proc)
        yield Coturn(port, tls_port)
    finally:
        stop_process(proc)


def test_coturn_over_udp_tcp_and_tls(make_certificate: Any, tmp_path: Path, run_probe: Any) -> None:
    cert = make_certificate("coturn.test")
    secret = tmp_path / "secret"
    secret.write_text(f"{SECRET}\n")
    with coturn(tmp_path, cert) as server:
        run = run_probe(*server.urls, "--secret-file", secret, "--cafile", cert.cert, "--json")
        text = run_probe(server.urls[0], "--secret-file", secret)
    assert run.status == 0, run.out
    assert text.status == 0, text.out
    for index in range(3):
        statuses = run.statuses(index)
        assert all(statuses[cid] == "ok" for cid in TURN_CHECKS), statuses
        checks = run.checks(index)
        assert checks["open-relay"]["details"]["realm"] == "coturn"
        assert checks["credential"]["details"]["integrity"] == "valid"
    assert run.statuses(2)["tls-certificate"] == "ok"


def test_coturn_wrong_secret(make_certificate: Any, tmp_path: Path, run_probe: Any) -> None:
    cert = make_certificate("coturn.test")
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    with coturn(tmp_path, cert) as server:
        run = run_probe(server.urls[1], "--secret-file", wrong, "--json")
    assert run.status == 1
    credential = run.checks()["credential"]
    assert credential["status"] == "fail"
    assert "credential rejected" in credential["summary"]
    assert "realm 'coturn'" in credential["summary"]


def test_coturn_without_auth_is_an_open_relay(
    make_certificate: Any, tmp_path: Path, run_probe: Any
) -> None:
    cert = make_certificate("coturn.test")
    with coturn(tmp_path, cert, auth=False) as server:
        run = run_probe(server.urls[0], "--username", "x", "--password", "y", "--json")
        text = run_probe(server.urls[0])
    assert run.status == text.status == 1
    checks = run.checks()
    relay = checks["open-relay"]
    assert relay["status"] == "fail"
    assert relay["summary"].startswith("OPEN RELAY")
    assert "no-auth" in relay["fix"]
    # The rest still runs (on a fresh 5-tuple) and cleans up after itself.
    assert checks["credential"]["status"] == "warn"
    assert checks["relay"]["status"] == "ok"
    assert checks["cleanup"]["status"] == "ok"
    assert "FAIL  open-relay       OPEN RELAY" in text.out
