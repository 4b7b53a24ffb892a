"""The state directory's generated files: created private, reused, and narrowed when found loose."""

from __future__ import annotations

from pathlib import Path

from secureconnect.statedir import (
    KEY_NAME,
    SECRET_NAME,
    ensure_self_signed,
    ensure_turn_secret,
    keep_private,
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
    assert mode(state / KEY_NAME) == 0o600
    assert keep_private(state / SECRET_NAME) is False  # already private: untouched
    assert keep_private(tmp_path / "missing") is False
