"""``secureconnect init``: the files it writes, their modes, the refusal to overwrite, existing
certificates, and a generated config that really runs (secrets read the way systemd's
``LoadCredential=`` hands them over)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
from appliance import appliance_env, free_port, run_appliance
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from secureconnect.cli import main
from secureconnect.config import load_config
from secureconnect.credentials import rest_password
from secureconnect.initcmd import (
    CONFIG_NAME,
    ROOM_SECRET_NAME,
    TLS_CERT_NAME,
    TLS_KEY_NAME,
    TURN_SECRET_NAME,
)

BASE = ["--domain", "turn.example.test", "--external-ip", "203.0.113.10"]
ALL_FILES = (CONFIG_NAME, TURN_SECRET_NAME, ROOM_SECRET_NAME, TLS_CERT_NAME, TLS_KEY_NAME)


def secureconnect(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "secureconnect", *args],
        capture_output=True,
        text=True,
        env=appliance_env(tmp_path / "home", **env),
        timeout=60,
        check=False,
    )


def test_init_writes_a_production_config_that_check_config_accepts(tmp_path: Path) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state"
    result = secureconnect(
        tmp_path, "init", *BASE, "--config-dir", str(etc), "--state-dir", str(state)
    )
    assert result.returncode == 0, result.stderr
    modes = {name: (etc / name).stat().st_mode & 0o777 for name in ALL_FILES}
    assert modes == {
        CONFIG_NAME: 0o644,  # no secret in it: the dynamic service user must read it
        TURN_SECRET_NAME: 0o600,
        ROOM_SECRET_NAME: 0o600,
        TLS_CERT_NAME: 0o644,
        TLS_KEY_NAME: 0o600,
    }
    assert state.stat().st_mode & 0o777 == 0o700
    turn_secret = (etc / TURN_SECRET_NAME).read_text().strip()
    room_secret = (etc / ROOM_SECRET_NAME).read_text().strip()
    assert len(turn_secret) >= 43  # 256 bits, URL-safe base64
    assert turn_secret != room_secret
    assert turn_secret not in (etc / CONFIG_NAME).read_text()

    cert = x509.load_pem_x509_certificate((etc / TLS_CERT_NAME).read_bytes())
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["turn.example.test"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("203.0.113.10")]

    check = secureconnect(tmp_path, "check-config", str(etc / CONFIG_NAME))
    assert check.returncode == 0, check.stderr
    config = load_config(etc / CONFIG_NAME)
    assert config.turn.external_addresses == ("203.0.113.10",)
    assert config.turn.listen == ("0.0.0.0",)
    assert (config.turn.port, config.turn.tls_port, config.signal.port) == (3478, 5349, 443)
    assert config.stun.port != config.turn.port  # so the stun unit runs beside the turn unit
    assert config.signal.ice_host == config.turn.realm == "turn.example.test"
    assert config.general.state_dir == str(state)
    assert config.signal.auth == "token"  # a public server is not an open relay by default
    assert config.turn.workers == len(os.sched_getaffinity(0))  # a UDP worker per usable CPU

    steps = result.stdout
    for needle in (
        "ufw allow 3478/udp",
        "ufw allow 3478/tcp",
        "ufw allow 5349/tcp",
        "ufw allow 443/tcp",
        "ufw allow 49152:65535/udp",
        "turn.example.test. A 203.0.113.10",
        "systemctl enable --now secureconnect",
        f"secureconnect check-config {etc / CONFIG_NAME}",
        "self-signed",
    ):
        assert needle in steps, needle


def test_init_refuses_to_overwrite_and_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc"
    assert main(["init", *BASE, "--config-dir", str(etc)]) == 0
    secret = (etc / TURN_SECRET_NAME).read_bytes()
    capsys.readouterr()
    assert main(["init", *BASE, "--config-dir", str(etc)]) == 1
    error = capsys.readouterr().err
    assert f"{etc / CONFIG_NAME} exists" in error
    assert "--force" in error
    assert (etc / TURN_SECRET_NAME).read_bytes() == secret
    assert main(["init", *BASE, "--config-dir", str(etc), "--force"]) == 0
    # --force rewrites the config but keeps the secret clients already hold.
    assert (etc / TURN_SECRET_NAME).read_bytes() == secret
    assert (etc / TURN_SECRET_NAME).stat().st_mode & 0o777 == 0o600


def test_one_existing_file_stops_init_before_it_writes_anything(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / TLS_KEY_NAME).write_text("an operator's key\n")
    assert main(["init", *BASE, "--config-dir", str(etc)]) == 1
    assert sorted(p.name for p in etc.iterdir()) == [TLS_KEY_NAME]
    assert (etc / TLS_KEY_NAME).read_text() == "an operator's key\n"


def test_existing_certificate_is_linked_not_copied(tmp_path: Path) -> None:
    live = tmp_path / "letsencrypt/live/turn.example.test"
    live.mkdir(parents=True)
    issued = trustme.CA().issue_cert("turn.example.test")
    issued.cert_chain_pems[0].write_to_path(str(live / "fullchain.pem"))
    issued.private_key_pem.write_to_path(str(live / "privkey.pem"))
    etc = tmp_path / "etc"
    args = ["init", *BASE, "--config-dir", str(etc), "--open-rooms"]
    certs = ["--cert", str(live / "fullchain.pem"), "--key", str(live / "privkey.pem")]
    result = secureconnect(tmp_path, *args, *certs)
    assert result.returncode == 0, result.stderr
    # Links to the live/ names (which certbot repoints at renewal), not to what they resolve to.
    assert os.readlink(etc / TLS_CERT_NAME) == str(live / "fullchain.pem")
    assert os.readlink(etc / TLS_KEY_NAME) == str(live / "privkey.pem")
    assert load_config(etc / CONFIG_NAME).signal.auth == "open"
    assert secureconnect(tmp_path, "check-config", str(etc / CONFIG_NAME)).returncode == 0
    assert "systemctl restart secureconnect" in result.stdout


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--domain", "bad..name"], "--domain"),
        (["--external-ip", "not-an-ip"], "--external-ip: 'not-an-ip' is not an IP address"),
        (["--external-ip", "198.51.100.1"], "at most one address per IP version"),
        (["--signal-port", "3478"], "ports must differ"),
        (["--relay-ports", "1000-2000"], "--relay-ports"),
        (["--relay-ports", "60000-50000"], "--relay-ports"),
        (["--workers", "0"], "--workers must be 1 to 64"),
        (["--cert", "/nonexistent.pem"], "--cert and --key go together"),
        (["--cert", "/nonexistent.pem", "--key", "/nonexistent.key"], "cannot read"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str
) -> None:
    assert main(["init", *BASE, *extra, "--config-dir", str(tmp_path / "etc")]) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "etc").exists()


def test_mismatched_certificate_and_key_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = trustme.CA()
    one, other = ca.issue_cert("a.test"), ca.issue_cert("b.test")
    one.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    args = ["--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem")]
    assert main(["init", *BASE, *args, "--config-dir", str(tmp_path / "etc")]) == 2
    assert "do not load together" in capsys.readouterr().err


def test_workers_are_written_as_asked(tmp_path: Path) -> None:
    assert main(["init", *BASE, "--workers", "3", "--config-dir", str(tmp_path)]) == 0
    assert load_config(tmp_path / CONFIG_NAME).turn.workers == 3


def test_ipv6_external_address_adds_an_ipv6_listener(tmp_path: Path) -> None:
    args = ["--external-ip", "2001:db8::10", "--config-dir", str(tmp_path)]
    assert main(["init", *BASE, *args]) == 0
    config = load_config(tmp_path / CONFIG_NAME)
    assert config.turn.listen == ("0.0.0.0", "::")
    assert config.turn.external_addresses == ("203.0.113.10", "2001:db8::10")


def test_generated_config_runs_with_secrets_from_a_credentials_directory(tmp_path: Path) -> None:
    """What the units do: the config dir holds only config.toml for the service, the secrets
    arrive in $CREDENTIALS_DIRECTORY. The server starts, serves the generated certificate on
    WSS, and ``credentials`` mints with the generated TURN secret."""
    etc, creds = tmp_path / "etc", tmp_path / "credentials"
    turn, turns, stun, sig = (
        free_port(),
        free_port(socket.SOCK_STREAM),
        free_port(),
        free_port(socket.SOCK_STREAM),
    )
    ports = [f"--turn-port={turn}", f"--turns-port={turns}", f"--stun-port={stun}"]
    where = ["--listen", "127.0.0.1", "--config-dir", str(etc), "--state-dir", str(tmp_path / "s")]
    init = [
        "init",
        "--domain",
        "localhost",
        "--external-ip",
        "127.0.0.1",
        *ports,
        f"--signal-port={sig}",
        *where,
    ]
    assert secureconnect(tmp_path, *init).returncode == 0
    creds.mkdir()
    for name in (TURN_SECRET_NAME, ROOM_SECRET_NAME, TLS_CERT_NAME, TLS_KEY_NAME):
        shutil.move(etc / name, creds / name)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    config = str(etc / CONFIG_NAME)
    with run_appliance(
        tmp_path, extra_args=("-c", config), env=appliance_env(tmp_path / "home", **env)
    ) as app:
        context = ssl.create_default_context(cafile=str(creds / TLS_CERT_NAME))
        with (
            socket.create_connection(("127.0.0.1", sig), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.version() is not None  # verified against the generated certificate
        minted = secureconnect(tmp_path, "credentials", "-c", config, "--user", "u", **env)
        assert minted.returncode == 0, minted.stderr
        credential = json.loads(minted.stdout)
        secret = (creds / TURN_SECRET_NAME).read_text().strip()
        assert credential["password"] == rest_password(secret, credential["username"])
        assert f"turns:localhost:{turns}?transport=tcp" in credential["uris"]
        started = time.monotonic()
        assert app.stop(signal.SIGTERM, timeout=15) == 0
        assert time.monotonic() - started < 15


def test_force_keeps_the_secrets_clients_already_hold(tmp_path: Path) -> None:
    """Re-running init with --force (e.g. to switch to Let's Encrypt) rewrites the config and
    certificate but keeps the TURN and room-token secrets, which backends already use."""
    etc = tmp_path / "etc"
    assert main(["init", *BASE, "--config-dir", str(etc)]) == 0
    names = (TURN_SECRET_NAME, "room-token-secret")
    before = {name: (etc / name).read_bytes() for name in names}
    cert = (etc / TLS_CERT_NAME).read_bytes()
    assert main(["init", *BASE, "--config-dir", str(etc), "--force"]) == 0
    assert {name: (etc / name).read_bytes() for name in names} == before
    assert (etc / TLS_CERT_NAME).read_bytes() != cert  # a new self-signed certificate
