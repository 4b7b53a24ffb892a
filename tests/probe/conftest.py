"""Fixtures of the ``secureconnect probe`` tests: the command run in-process, certificates.

The probe is run through the real command line (`secureconnect.cli.main`), in this process, so
a test sees exactly what an operator sees: the exit status, the text and the JSON. Tests that
need it in a network namespace run it as a subprocess instead (test_probe_netns.py).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secureconnect.cli import main


@dataclass(frozen=True)
class ProbeRun:
    """One ``secureconnect probe`` run: exit status, stdout, stderr."""

    status: int
    out: str
    err: str

    def document(self) -> dict[str, Any]:
        """The ``--json`` output, parsed (the run must have used ``--json``)."""
        parsed = json.loads(self.out)
        assert isinstance(parsed, dict)
        return parsed

    def checks(self, index: int = 0) -> dict[str, dict[str, Any]]:
        """The checks of URL ``index`` of a ``--json`` run, by id."""
        return {check["id"]: check for check in self.document()["urls"][index]["checks"]}

    def statuses(self, index: int = 0) -> dict[str, str]:
        return {cid: check["status"] for cid, check in self.checks(index).items()}


ProbeRunner = Callable[..., ProbeRun]


@pytest.fixture
def run_probe() -> ProbeRunner:
    """``run_probe(*args)``: ``secureconnect probe ARGS`` in this process."""

    def run(*args: str | Path) -> ProbeRun:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(["probe", *(str(arg) for arg in args)])
            except SystemExit as exc:  # argparse's own usage errors
                status = int(exc.code or 0)
        return ProbeRun(status, out.getvalue(), err.getvalue())

    return run


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


CertMaker = Callable[..., CertFiles]


@pytest.fixture
def make_certificate(tmp_path: Path) -> CertMaker:
    """``make_certificate(name, valid_from=-30, valid_until=365, ips=("127.0.0.1",))``: a
    self-signed certificate (its own CA, so it can be given as ``--cafile``), validity in days
    relative to now, written as PEM files."""

    def make(
        name: str = "probe.test",
        *,
        valid_from: float = -30,
        valid_until: float = 365,
        ips: tuple[str, ...] = ("127.0.0.1",),
        dns: tuple[str, ...] = (),
    ) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=valid_from))
            .not_valid_after(now + datetime.timedelta(days=valid_until))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        files = CertFiles(tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return files

    return make
