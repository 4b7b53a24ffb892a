"""Turn a loaded :class:`~secureconnect.config.Config` into running components.

This is the one place that knows both the config schema and the component constructors, so the
protocol packages never import the config (they take plain parameters) and the supervisor never
imports a protocol package. Shared state lives in :class:`Runtime` and is handed to components
explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from secureconnect.config import Config, ConfigError
from secureconnect.logs import fields
from secureconnect.statedir import (
    ensure_self_signed,
    ensure_turn_secret,
    read_secret_lines,
    resolve_secret_file,
    resolve_state_dir,
)
from secureconnect.stun.responder import BindingResponder, ResponderConfig
from secureconnect.stun.serve import StunEndpoints, StunServer
from secureconnect.supervisor import Component
from secureconnect.tlscontext import CertificateStore

log = logging.getLogger("secureconnect.runtime")

COMPONENT_NAMES = ("stun", "turn", "signal")


@dataclass
class Runtime:
    """Objects shared by components, built once at startup (and reloaded on SIGHUP)."""

    config: Config
    config_path: Path | None
    state_dir: Path
    certificates: CertificateStore
    turn_secrets: tuple[str, ...]

    def reload_turn_secrets(self) -> None:
        """Re-read the TURN shared secrets (config text stays as loaded; files are re-read)."""
        self.turn_secrets = load_turn_secrets(self.config, self.config_path, self.state_dir)

    def reload_hooks(self) -> list[tuple[str, Callable[[], None]]]:
        """What SIGHUP reloads, in order."""
        return [("tls", self.certificates.reload), ("turn-secrets", self.reload_turn_secrets)]


def prepare_runtime(config: Config, config_path: Path | None) -> Runtime:
    """Resolve the state dir, the certificate and the TURN secrets (creating them if needed)."""
    state_dir = resolve_state_dir(config.general.state_dir)
    tls = config.tls
    if tls.cert_file:
        base = config_path.parent if config_path else None
        cert = resolve_secret_file(tls.cert_file, base)
        key = resolve_secret_file(tls.key_file, base)
    else:
        cert, key = ensure_self_signed(state_dir, tls.server_names)
        log.info("self-signed-certificate", extra=fields(path=str(cert)))
    try:
        certificates = CertificateStore(cert, key)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(config_path or "<defaults>"), "tls.cert_file", str(exc)) from exc
    secrets = load_turn_secrets(config, config_path, state_dir)
    return Runtime(config, config_path, state_dir, certificates, secrets)


def load_turn_secrets(config: Config, config_path: Path | None, state_dir: Path) -> tuple[str, ...]:
    """Secrets from the config text, then from ``turn.secret_file``; none: the generated one."""
    secrets = config.turn.secrets
    if config.turn.secret_file:
        path = resolve_secret_file(
            config.turn.secret_file, config_path.parent if config_path else None
        )
        try:
            secrets += read_secret_lines(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                str(config_path), "turn.secret_file", f"cannot read {path}: {exc}"
            ) from exc
    return secrets or (ensure_turn_secret(state_dir),)


def build_components(runtime: Runtime, names: Sequence[str]) -> list[Component]:
    """The enabled components among ``names`` (all when empty), in start order."""
    config = runtime.config
    wanted = list(names) or [n for n in COMPONENT_NAMES if n in BUILDERS]
    for name in wanted:
        if name not in COMPONENT_NAMES:
            raise ConfigError(
                "<command line>", name, f"unknown component (known: {', '.join(COMPONENT_NAMES)})"
            )
        if name not in BUILDERS:
            raise ConfigError("<command line>", name, "this component is not available yet")
    components: list[Component] = []
    for name in wanted:
        if getattr(config, name).enabled or names:
            components.append(BUILDERS[name](runtime))
    return components


def build_stun(runtime: Runtime) -> StunServer:
    """The STUN component from ``[stun]``."""
    stun = runtime.config.stun
    alternate = (stun.alternate_address, stun.alternate_port) if stun.alternate_address else None
    primary = (stun.listen[0], stun.port) if alternate else None
    responder = BindingResponder(
        ResponderConfig(
            software=stun.software or None,
            primary=primary,
            alternate=alternate,
            reason_phrases=bool(stun.software),
        )
    )
    return StunServer(
        responder=responder,
        endpoints=StunEndpoints(
            addresses=stun.listen,
            port=stun.port,
            udp=stun.udp,
            tcp=stun.tcp,
            tls_port=stun.tls_port if stun.tls else None,
            alternate=alternate,
        ),
        tls_context=lambda: runtime.certificates.context,
        max_connections=stun.max_connections,
        idle_timeout=stun.idle_timeout,
        handshake_timeout=stun.handshake_timeout,
    )


BUILDERS: dict[str, Callable[[Runtime], Component]] = {"stun": build_stun}


def service_urls(components: Sequence[Component]) -> list[str]:
    """The URLs a user needs, from what the components actually bound."""
    urls: list[str] = []
    for component in components:
        if isinstance(component, StunServer):
            for transport, ip, port in component.bound:
                host = f"[{ip}]" if ":" in ip else ip
                if transport == "udp" and (ip, port) in _primary_udp(component):
                    urls.append(f"stun:{host}:{port}")
                elif transport == "tcp":
                    urls.append(f"stun:{host}:{port}?transport=tcp")
                elif transport == "tls":
                    urls.append(f"stuns:{host}:{port}")
    return urls


def _primary_udp(server: StunServer) -> set[tuple[str, int]]:
    return {(ip, server.endpoints.port) for ip in server.endpoints.addresses} | {
        (ip, port) for t, ip, port in server.bound if t == "udp" and server.endpoints.port == 0
    }
