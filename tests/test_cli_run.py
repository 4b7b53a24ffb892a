"""`secureconnect run` as a real process: embedded defaults, signals, state files, bind failures."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from appliance import PYTHON_M, appliance_env, run_appliance

from secureconnect.credentials import rest_password
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    new_transaction_id,
)


def clean_env(tmp_path: Path) -> dict[str, str]:
    """Nothing of systemd's or XDG's; HOME and XDG_STATE_HOME (the default state) in tmp_path."""
    return appliance_env(tmp_path / "home", XDG_STATE_HOME=str(tmp_path / "state"))


def binding(target: tuple[str, int]) -> tuple[tuple[str, int], tuple[str, int]]:
    """One Binding over UDP: (XOR-MAPPED-ADDRESS, our socket's address)."""
    tid = new_transaction_id()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(encode_message(Method.BINDING, MessageClass.REQUEST, tid, ()), target)
        reply = decode_message_untrusted(sock.recv(2048))
        mine = sock.getsockname()
    value = reply.get(AttrType.XOR_MAPPED_ADDRESS)
    assert value is not None
    return decode_xor_address_untrusted(value, tid), (mine[0], mine[1])


def test_run_on_embedded_defaults_answers_on_3478_and_stops_on_sigterm(tmp_path: Path) -> None:
    with run_appliance(tmp_path, env=clean_env(tmp_path)) as app:
        mapped, mine = binding(("127.0.0.1", 3478))
        assert mapped == mine
        state = tmp_path / "state" / "secureconnect"
        assert (state / "selfsigned-key.pem").stat().st_mode & 0o777 == 0o600
        assert (state / "turn-secret").stat().st_mode & 0o777 == 0o600
        first_cert = (state / "selfsigned-cert.pem").read_bytes()
        first_secret = (state / "turn-secret").read_text()
        started = time.monotonic()
        assert app.stop(signal.SIGTERM, timeout=5) == 0
        assert time.monotonic() - started < 5
        log = app.log_text()
        assert "event=stopped" in log
    # A second run reuses what the first one generated.
    with run_appliance(tmp_path, env=clean_env(tmp_path)) as app:
        assert (state / "selfsigned-cert.pem").read_bytes() == first_cert
        assert (state / "turn-secret").read_text() == first_secret
        assert app.stop(signal.SIGINT, timeout=5) == 0


def test_sighup_reloads_and_keeps_serving(tmp_path: Path) -> None:
    settings = ("stun.port=0", "stun.tls_port=0")
    with run_appliance(tmp_path, settings=settings, env=clean_env(tmp_path)) as app:
        app.proc.send_signal(signal.SIGHUP)
        last = app.wait_log("event=reloaded what=turn-secrets", timeout=10)
        lines = app.log[: app.log.index(last) + 1]
        assert any("event=reloaded what=tls" in line for line in lines), lines
        assert app.stop(signal.SIGTERM, timeout=5) == 0


def test_without_tls_no_certificate_is_made_and_cryptography_stays_unloaded(
    tmp_path: Path,
) -> None:
    """A TURN-only process without TLS (the benchmarks' and many VPS setups) needs no
    certificate: none is generated, SIGHUP reloads only the secrets, and cryptography's native
    library is never mapped (its import is most of an idle TURN server's avoidable memory)."""
    settings = ("turn.port=0", "turn.tls=false")
    with run_appliance(tmp_path, "turn", settings=settings, env=clean_env(tmp_path)) as app:
        app.proc.send_signal(signal.SIGHUP)
        last = app.wait_log("event=reloaded what=turn-secrets", timeout=10)
        assert not any("what=tls" in line for line in app.log[: app.log.index(last) + 1])
        maps = Path(f"/proc/{app.proc.pid}/maps").read_text()
        assert "cryptography" not in maps
        assert app.stop(signal.SIGTERM, timeout=5) == 0
    state = tmp_path / "state" / "secureconnect"
    assert (state / "turn-secret").exists()
    assert not (state / "selfsigned-cert.pem").exists()


def test_a_signaling_port_in_use_on_the_second_address_is_named(tmp_path: Path) -> None:
    """The signaling bind error names the address that failed, not the first one (it goes
    through the shared transport now, issue #13)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *PYTHON_M,
                "run",
                "signal",
                "--set",
                'signal.listen=["127.0.0.1", "127.0.0.2"]',
                "--set",
                f"signal.port={port}",
                "--set",
                "signal.tls=false",
            ],
            capture_output=True,
            text=True,
            env=clean_env(tmp_path),
            timeout=30,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on tcp 127.0.0.2:{port}" in result.stderr, result.stderr


def test_a_port_in_use_is_fatal_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "secureconnect",
                "run",
                "--set",
                f"stun.port={port}",
                "--set",
                "stun.tcp=false",
                "--set",
                "stun.tls=false",
            ],
            capture_output=True,
            text=True,
            env=clean_env(tmp_path),
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert (
        f"cannot start stun: cannot bind udp 127.0.0.1:{port}: Address already in use"
        in result.stderr
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "stunn.port=1"], "stunn: unknown section"),
        (["--set", "stun.port=-1"], "stun.port: must be 0"),
        (["not-a-component"], "not-a-component: unknown component"),
    ],
)
def test_bad_configuration_exits_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "secureconnect", "run", *args],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert fragment in result.stderr


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    with run_appliance(
        tmp_path,
        settings=("stun.port=0", "stun.tls_port=0"),
        extra_args=("--log-format", "json"),
        env=clean_env(tmp_path),
    ) as app:
        assert app.stop(signal.SIGTERM, timeout=5) == 0
        events = [json.loads(line)["event"] for line in app.log_text().splitlines() if line]
    assert "ready" in events
    assert "stopped" in events


def test_credentials_command_prints_rest_json_for_the_generated_secret(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "secureconnect", "credentials", "--user", "bob", "--ttl", "60"],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    credential = json.loads(result.stdout)
    expiry, user = credential["username"].split(":")
    assert user == "bob"
    assert abs(int(expiry) - (time.time() + 60)) < 5
    assert credential["ttl"] == 60
    secret = (tmp_path / "state" / "secureconnect" / "turn-secret").read_text().strip()
    assert credential["password"] == rest_password(secret, credential["username"])
    assert credential["uris"] == [
        "turn:127.0.0.1:3478?transport=udp",
        "turn:127.0.0.1:3478?transport=tcp",
        "turns:127.0.0.1:5349?transport=tcp",
    ]
    bad = subprocess.run(
        [sys.executable, "-m", "secureconnect", "credentials", "--user", "a:b"],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2
    assert "a:b" in bad.stderr or ":" in bad.stderr


def test_embedded_defaults_run_turn_on_3478_with_stun_on_the_same_port(tmp_path: Path) -> None:
    with run_appliance(tmp_path, env=clean_env(tmp_path)) as app:
        tid = new_transaction_id()
        request = encode_message(
            Method.ALLOCATE,
            MessageClass.REQUEST,
            tid,
            [(AttrType.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0)))],
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(request, ("127.0.0.1", 3478))
            challenge = decode_message_untrusted(sock.recv(2048))
        assert challenge.cls is MessageClass.ERROR
        assert challenge.get(AttrType.REALM) == b"secureconnect"
        assert challenge.get(AttrType.NONCE)
        assert app.stop(signal.SIGTERM, timeout=5) == 0
        urls = "".join(app.output)
    assert "turn:127.0.0.1:3478?transport=udp" in urls
    assert "turns:127.0.0.1:5349?transport=tcp" in urls
