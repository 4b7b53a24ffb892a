"""`secureconnect run` as a real process: embedded defaults, signals, state files, bind failures."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "STATE_DIRECTORY"))}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env


@contextmanager
def appliance(tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Start `python -m secureconnect run ARGS` and wait until it says it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "secureconnect", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(tmp_path),
    )
    try:
        wait_for_line(proc, "SecureConnect is ready", timeout=20)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    seen = []
    while time.monotonic() < deadline:
        if selector.select(timeout=0.1):
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if text in line:
                return line
    err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
    raise AssertionError(f"{text!r} not seen; stdout={''.join(seen)!r} stderr={err!r}")


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
    with appliance(tmp_path) as proc:
        mapped, mine = binding(("127.0.0.1", 3478))
        assert mapped == mine
        state = tmp_path / "state" / "secureconnect"
        assert (state / "selfsigned-key.pem").stat().st_mode & 0o777 == 0o600
        assert (state / "turn-secret").stat().st_mode & 0o777 == 0o600
        first_cert = (state / "selfsigned-cert.pem").read_bytes()
        first_secret = (state / "turn-secret").read_text()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 5
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert "event=stopped" in log
    # A second run reuses what the first one generated.
    with appliance(tmp_path) as proc:
        assert (state / "selfsigned-cert.pem").read_bytes() == first_cert
        assert (state / "turn-secret").read_text() == first_secret
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0


def test_sighup_reloads_and_keeps_serving(tmp_path: Path) -> None:
    with appliance(tmp_path, "--set", "stun.port=0", "--set", "stun.tls_port=0") as proc:
        assert proc.stderr is not None
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "event=reloaded what=turn-secrets" in line:
                break
        assert any("event=reloaded what=tls" in line for line in lines), lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


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
    with appliance(
        tmp_path, "--log-format", "json", "--set", "stun.port=0", "--set", "stun.tls_port=0"
    ) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None
        events = [json.loads(line)["event"] for line in proc.stderr.read().splitlines() if line]
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
    with appliance(tmp_path) as proc:
        assert proc.stdout is not None
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
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        urls = proc.stdout.read()
    assert "turn:127.0.0.1:3478?transport=udp" in urls
    assert "turns:127.0.0.1:5349?transport=tcp" in urls
