"""The secrets and the certificate a process starts with: TURN REST secrets and room-token
secrets from the config text and their files (``$CREDENTIALS_DIRECTORY`` first, then next to the
config), the configured certificate or the self-signed one generated in the state directory.
Errors name the config key (``ConfigError``)."""

from __future__ import annotations

import logging
from pathlib import Path

from secureconnect.config import Config, ConfigError
from secureconnect.logs import fields
from secureconnect.statedir import (
    ensure_self_signed,
    ensure_turn_secret,
    read_secret_lines,
    resolve_secret_file,
)
from secureconnect.tlscontext import CertificateStore

log = logging.getLogger("secureconnect.runtime")


def load_certificates(
    config: Config, config_path: Path | None, state_dir: Path
) -> CertificateStore:
    """The configured certificate, or the generated self-signed one."""
    tls = config.tls
    if tls.cert_file:
        base = config_path.parent if config_path else None
        cert = resolve_secret_file(tls.cert_file, base)
        key = resolve_secret_file(tls.key_file, base)
    else:
        cert, key = ensure_self_signed(state_dir, tls.server_names)
        log.info("self-signed-certificate", extra=fields(path=str(cert)))
    try:
        return CertificateStore(cert, key)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(config_path or "<defaults>"), "tls.cert_file", str(exc)) from exc


def _secrets(
    inline: tuple[str, ...], file_name: str, key: str, config_path: Path | None
) -> tuple[str, ...]:
    """Secrets from the config text, then one per line from the ``key`` file (if named)."""
    if not file_name:
        return inline
    path = resolve_secret_file(file_name, config_path.parent if config_path else None)
    try:
        return inline + read_secret_lines(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(config_path), key, f"cannot read {path}: {exc}") from exc


def load_room_secrets(config: Config, config_path: Path | None) -> tuple[str, ...]:
    """Room-token secrets from ``signal.token_secrets`` then ``signal.token_secret_file``."""
    sig = config.signal
    return _secrets(
        sig.token_secrets, sig.token_secret_file, "signal.token_secret_file", config_path
    )


def load_turn_secrets(config: Config, config_path: Path | None, state_dir: Path) -> tuple[str, ...]:
    """Secrets from the config text, then from ``turn.secret_file``; none: the generated one."""
    turn = config.turn
    secrets = _secrets(turn.secrets, turn.secret_file, "turn.secret_file", config_path)
    return secrets or (ensure_turn_secret(state_dir),)
