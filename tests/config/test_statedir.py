"""The state directory's generated files: created private, reused, narrowed when found loose,
and the self-signed certificate renewed before it expires."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from secureconnect import certrenewal
from secureconnect.config import load_config
from secureconnect.runtime import prepare_runtime
from secureconnect.statedir import (
    SECRET_NAME,
    SELF_SIGNED_CERT,
    SELF_SIGNED_KEY,
    ensure_self_signed,
    ensure_turn_secret,
    keep_private,
    make_self_signed,
    write_private,
)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_generated_files_are_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret = ensure_turn_secret(state)
    assert mode(state) == 0o700
    assert mode(state / SECRET_NAME) == 0o600
    assert ensure_turn_secret(state) == secret
    cert, key = ensure_self_signed(state, ["localhost", "127.0.0.1"])
    assert mode(key) == 0o600
    assert ensure_self_signed(state, ["localhost", "127.0.0.1"]) == (cert, key)


def test_a_loose_secret_or_key_is_narrowed_when_reused(tmp_path: Path) -> None:
    """A secret copied in with umask 022 (or left by an older version) stops being readable by
    others the next time it is used; its contents stay the same."""
    state = tmp_path / "state"
    secret = ensure_turn_secret(state)
    _, key = ensure_self_signed(state, ["localhost"])
    (state / SECRET_NAME).chmod(0o644)
    key.chmod(0o640)
    assert ensure_turn_secret(state) == secret
    ensure_self_signed(state, ["localhost"])
    assert mode(state / SECRET_NAME) == 0o600
    assert mode(state / SELF_SIGNED_KEY) == 0o600
    assert keep_private(state / SECRET_NAME) is False  # already private: untouched
    assert keep_private(tmp_path / "missing") is False


def test_a_generated_certificate_is_renewed_before_it_expires(tmp_path: Path) -> None:
    """A server running for a year: the handshake after the renewal time gets a fresh
    certificate (and SIGHUP's hook does the same), without a restart."""
    state = tmp_path / "state"
    config = load_config(None, {"general.state_dir": str(state)})
    runtime = prepare_runtime(config, None)
    certificate = runtime.certificate
    assert certificate is not None
    assert certificate.renew_at is not None
    assert certificate.renew_at > time.time() + 300 * 86400  # a year minus a week away
    first = runtime.tls_context()
    # Three days left: inside the renewal week (a certificate made that way by hand).
    cert_pem, key_pem = make_self_signed(list(config.tls.server_names), days=3)
    write_private(state / SELF_SIGNED_KEY, key_pem)
    write_private(state / SELF_SIGNED_CERT, cert_pem, mode=0o644)
    dict(runtime.reload_hooks())["tls"]()  # SIGHUP
    assert (state / SELF_SIGNED_CERT).read_bytes() != cert_pem  # replaced, not just re-read
    renewed = runtime.tls_context()
    assert renewed is not first
    assert certificate.renew_at > time.time() + 300 * 86400
    certificate.renew_at = time.time() - 1  # due at the next handshake: checked, still valid
    runtime.tls_context()
    assert certificate.renew_at > time.time() + 300 * 86400


def test_a_failed_renewal_keeps_the_old_certificate_and_waits_an_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at renewal time: TLS goes on with the current certificate, and the renewal
    is tried again an hour later, not on every handshake."""
    config = load_config(None, {"general.state_dir": str(tmp_path / "state")})
    runtime = prepare_runtime(config, None)
    assert runtime.certificate is not None
    first = runtime.tls_context()

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(certrenewal, "ensure_self_signed", full_disk)
    runtime.certificate.renew_at = time.time() - 1
    assert runtime.tls_context() is first
    assert runtime.certificate.renew_at > time.time() + certrenewal.RETRY_AFTER - 60


def test_an_operators_certificate_is_never_replaced(tmp_path: Path) -> None:
    cert_pem, key_pem = make_self_signed(["localhost"], days=3)
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    settings = {
        "general.state_dir": str(tmp_path / "state"),
        "tls.cert_file": str(tmp_path / "c.pem"),
        "tls.key_file": str(tmp_path / "k.pem"),
    }
    runtime = prepare_runtime(load_config(None, settings), None)
    assert runtime.certificate is not None
    assert runtime.certificate.renew_at is None
    dict(runtime.reload_hooks())["tls"]()  # SIGHUP
    assert (tmp_path / "c.pem").read_bytes() == cert_pem
