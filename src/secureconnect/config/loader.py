"""Load TOML into the frozen schema objects, with errors that name the file and the dotted key.

The loader is generic: it walks the dataclasses of :mod:`secureconnect.config.schema` using their
type hints, so adding a key means adding a field there and nothing here. Supported field types are
``bool``, ``int``, ``float``, ``str``, ``tuple[str, ...]`` and nested sections.

Overrides (from the CLI's flags and ``--set key=value``) are applied to the raw TOML tree before
validation, so they get exactly the same checks and error messages as the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from secureconnect.config.schema import Config


class ConfigError(Exception):
    """A configuration problem; ``str()`` reads ``FILE: dotted.key: what is wrong``."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (None: embedded defaults), apply ``overrides`` and validate everything."""
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(source, "", "not UTF-8 text") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "", f"not valid TOML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, source)
    config: Config = _build(Config, raw, "", source)
    _cross_check(config, source)
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` from ``--set``; the value is TOML (``3479``, ``true``, ``["a"]``) or,
    if it does not parse as TOML, a plain string (so ``--set general.log_level=debug`` works)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected KEY=VALUE, e.g. stun.port=3478")
    try:
        parsed: Any = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *sections, leaf = dotted.split(".")
    node = raw
    for section in sections:
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise ConfigError(source, dotted, f"{section} is not a section")
        node = child
    node[leaf] = value


def _build(cls: type[Any], raw: Any, prefix: str, source: str) -> Any:
    """Turn one TOML table into an instance of the dataclass ``cls``, checking every key."""
    if not isinstance(raw, dict):
        raise ConfigError(source, prefix, "must be a table (a [section])")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else key
            what = "section" if not prefix else "key"
            known = ", ".join(sorted(fields))
            raise ConfigError(source, dotted, f"unknown {what} (known: {known})")
    values: dict[str, Any] = {}
    for name, fld in fields.items():
        if name not in raw:
            continue
        dotted = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(typing.cast(type[Any], hint), raw[name], dotted, source)
            continue
        value = _coerce(hint, raw[name], dotted, source)
        check = fld.metadata.get("check")
        if check is not None and (problem := check(value)) is not None:
            raise ConfigError(source, dotted, problem)
        values[name] = value
    return cls(**values)


def _coerce(hint: Any, value: Any, dotted: str, source: str) -> Any:
    """Check ``value`` against the field's type; TOML has no tuples, so lists become tuples."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(source, dotted, f"must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(source, dotted, f"must be a whole number, not {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(source, dotted, f"must be a number, not {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(source, dotted, f"must be a string, not {value!r}")
    if typing.get_origin(hint) is tuple:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ConfigError(source, dotted, f"must be a list of strings, not {value!r}")
    raise TypeError(f"schema field {dotted} has an unsupported type {hint!r}")  # pragma: no cover


def _cross_check(config: Config, source: str) -> None:
    """Checks that involve more than one key; each names the key a user should change."""
    tls = config.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        missing = "tls.key_file" if tls.cert_file else "tls.cert_file"
        raise ConfigError(source, missing, "tls.cert_file and tls.key_file go together")
    stun = config.stun
    if stun.enabled and not (stun.udp or stun.tcp or stun.tls):
        raise ConfigError(source, "stun.udp", "stun is enabled but udp, tcp and tls are all off")
    if stun.alternate_address:
        if len(stun.listen) != 1:
            raise ConfigError(
                source,
                "stun.listen",
                "RFC 5780 (alternate_address) needs exactly one listen address",
            )
        named = {"stun.listen": stun.listen[0], "stun.alternate_address": stun.alternate_address}
        for key, address in named.items():
            # RFC 5780 §7.3: OTHER-ADDRESS tells the client where the alternate address is; a
            # wildcard would advertise 0.0.0.0 and every CHANGE-REQUEST test would fail.
            if _unspecified(address):
                raise ConfigError(
                    source,
                    key,
                    "RFC 5780 needs concrete addresses (clients are told them), not a wildcard",
                )
        if stun.alternate_address == stun.listen[0]:
            raise ConfigError(
                source, "stun.alternate_address", "must differ from the listen address"
            )
        if (":" in stun.alternate_address) != (":" in stun.listen[0]):
            raise ConfigError(
                source, "stun.alternate_address", "must be of the listen address's family"
            )
        if stun.alternate_port == stun.port:
            raise ConfigError(source, "stun.alternate_port", "must differ from stun.port")
        if stun.port == 0:
            raise ConfigError(source, "stun.port", "RFC 5780 needs a fixed port, not 0")
    _check_turn(config, source)
    _check_signal(config, source)


def _unspecified(address: str) -> bool:
    """Whether ``address`` is 0.0.0.0 or :: (any text that is not an IP address: False)."""
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _families(addresses: tuple[str, ...]) -> list[int]:
    return [ipaddress.ip_address(a).version for a in addresses]


def _check_turn(config: Config, source: str) -> None:
    """TURN keys that depend on each other or on ``[stun]``."""
    turn = config.turn
    if not turn.enabled:
        return
    if not (turn.udp or turn.tcp or turn.tls):
        raise ConfigError(source, "turn.udp", "turn is enabled but udp, tcp and tls are all off")
    if turn.relay_port_min > turn.relay_port_max:
        raise ConfigError(
            source, "turn.relay_port_min", "is above turn.relay_port_max (range upside down)"
        )
    if turn.relay_port_min < 1024:
        raise ConfigError(source, "turn.relay_port_min", "relay ports never come from 0-1023")
    slices = turn.workers + 1  # docs/workers.md: a slice of the range per process
    if turn.workers > 1 and turn.relay_port_max - turn.relay_port_min + 1 < 2 * slices:
        raise ConfigError(
            source,
            "turn.workers",
            f"{turn.workers} workers need at least {2 * slices} relay ports"
            f" (turn.relay_port_min..max holds {turn.relay_port_max - turn.relay_port_min + 1})",
        )
    if turn.default_lifetime > turn.max_lifetime:
        raise ConfigError(source, "turn.default_lifetime", "is above turn.max_lifetime")
    for key, addresses in (
        ("turn.relay_addresses", turn.relay_addresses),
        ("turn.external_addresses", turn.external_addresses),
    ):
        families = _families(addresses)
        if len(set(families)) != len(families):
            raise ConfigError(source, key, "at most one address per family")
    wildcard = any(ipaddress.ip_address(a).is_unspecified for a in turn.listen)
    if wildcard and not (turn.relay_addresses or turn.external_addresses):
        raise ConfigError(
            source,
            "turn.external_addresses",
            "with a wildcard turn.listen, set the public address clients must relay to "
            "(or turn.relay_addresses): 0.0.0.0 is no relayed address",
        )
    stun = config.stun
    shared = stun.enabled and stun.port == turn.port and set(stun.listen) & set(turn.listen)
    if shared and stun.alternate_address:
        raise ConfigError(
            source,
            "stun.port",
            "RFC 5780 needs the STUN component on its own port: TURN already answers Binding "
            f"on {turn.port}",
        )


def _check_signal(config: Config, source: str) -> None:
    """Signaling keys that depend on each other."""
    sig = config.signal
    if sig.enabled and sig.auth == "token" and not (sig.token_secrets or sig.token_secret_file):
        raise ConfigError(
            source, "signal.token_secrets", "auth = token needs token_secrets or token_secret_file"
        )
