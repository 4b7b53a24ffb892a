"""Turn a loaded :class:`~secureconnect.config.Config` into running components: wiring only.

This is the one place that knows both the config schema and the component constructors, so the
protocol packages never import the config (they take plain parameters) and the supervisor never
imports a protocol package. Shared state lives in :class:`Runtime` and is handed to components
explicitly; the jobs it is made of live in modules of their own: the secrets and certificate a
process starts with (:mod:`~secureconnect.secretfiles`), the certificate kept current
(:mod:`~secureconnect.certrenewal`), the live view for ``/healthz`` and ``/metrics``
(:mod:`~secureconnect.statusboard`) and the URLs clients are told
(:mod:`~secureconnect.serviceurls`).

Each entry of :data:`BUILDERS` says how one kind of component is built from its config section
(a :class:`Builder`; TURN with ``turn.workers`` is several components, see
:func:`build_turn_components` and :mod:`~secureconnect.workers`), and which URLs it serves once
bound, so the start-up banner never has to ask what a component is.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from secureconnect.admin.store import FILE_NAME as REVOCATIONS_FILE
from secureconnect.admin.store import load_revocations
from secureconnect.certrenewal import ServerCertificate
from secureconnect.config import Config, ConfigError, SignalConfig, StunConfig, TurnConfig
from secureconnect.credentials import CredentialMinter, NonceMint
from secureconnect.logs import fields
from secureconnect.netaddr import Address, parse_address
from secureconnect.ratelimit import RateLimiter, burst_for
from secureconnect.secretfiles import load_certificates, load_room_secrets, load_turn_secrets
from secureconnect.serviceurls import (
    UrlSource,
    signal_server_urls,
    stun_server_urls,
    stun_uris,
    turn_server_urls,
    turn_uris,
)
from secureconnect.signal.tokens import RoomTokens
from secureconnect.statedir import resolve_state_dir
from secureconnect.statusboard import StatusBoard
from secureconnect.stun.responder import BindingResponder, ResponderConfig
from secureconnect.stun.serve import StunEndpoints, StunServer
from secureconnect.supervisor import Component
from secureconnect.turn.auth import Authenticator, UserBackoff
from secureconnect.turn.core import TurnSettings
from secureconnect.turn.peerpolicy import DEFAULT_DENY, LOOPBACK_RANGES, PeerPolicy
from secureconnect.turn.quotas import QuotaBook, QuotaGate
from secureconnect.turn.revocations import RevocationError, Revocations
from secureconnect.turn.serve import CoreParts, TurnEndpoints, TurnServer
from secureconnect.workers import TurnWorker, WorkerPool, WorkerSpec, port_slices

if TYPE_CHECKING:
    # Imported where the signaling component is built (or its settings mapped): a STUN- or
    # TURN-only process never loads websockets (and asyncio with it), which is a third of an
    # idle TURN server's memory.
    from secureconnect.signal.http import HttpSettings
    from secureconnect.signal.hub import HubSettings
    from secureconnect.signal.redisplane import RedisBackplane
    from secureconnect.signal.serve import SignalServer

log = logging.getLogger("secureconnect.runtime")


@dataclass
class Runtime:
    """Objects shared by components, built once at startup (and reloaded on SIGHUP)."""

    config: Config
    config_path: Path | None
    state_dir: Path
    certificate: ServerCertificate | None  # None when no component that runs serves TLS
    minter: CredentialMinter  # shared by TURN (checks) and signaling (mints)
    nonces: NonceMint = field(default_factory=NonceMint.random)
    board: StatusBoard = field(default_factory=StatusBoard)
    room_tokens: RoomTokens | None = None
    #: what each built component serves, in start order (read by ``service_urls`` once bound)
    url_sources: list[UrlSource] = field(default_factory=list)
    #: users the operator revoked (``secureconnect revoke``, docs/admin.md): read by TURN's
    #: authenticator, changed by the admin socket, kept in ``revocations_file``
    revocations: Revocations = field(default_factory=Revocations)

    @property
    def revocations_file(self) -> Path:
        return self.state_dir / REVOCATIONS_FILE

    def tls_context(self) -> ssl.SSLContext:
        """The current server TLS context; components ask per handshake, so a reload or a
        renewal applies to the next connection."""
        if self.certificate is None:  # pragma: no cover - prepare_runtime was told no TLS
            raise RuntimeError("no TLS certificate was loaded: no component was to serve TLS")
        return self.certificate.context()

    def reload_room_tokens(self) -> None:
        """Re-read the signaling room-token secrets."""
        if self.room_tokens is not None:
            self.room_tokens.replace_secrets(load_room_secrets(self.config, self.config_path))

    def reload_turn_secrets(self) -> None:
        """Re-read the TURN shared secrets (config text stays as loaded; files are re-read)."""
        self.minter.replace_secrets(
            load_turn_secrets(self.config, self.config_path, self.state_dir)
        )

    def reload_hooks(self) -> list[tuple[str, Callable[[], None]]]:
        """What SIGHUP reloads, in order."""
        hooks = [
            ("turn-secrets", self.reload_turn_secrets),
            ("room-token-secrets", self.reload_room_tokens),
        ]
        if self.certificate is not None:
            hooks.insert(0, ("tls", self.certificate.reload))
        return hooks


def uses_tls(config: Config, names: Sequence[str]) -> bool:
    """Whether a component among ``names`` (all enabled ones when empty) serves TLS."""
    chosen = set(names) or {n for n in COMPONENT_NAMES if getattr(config, n).enabled}
    return any(getattr(config, n).tls for n in chosen if n in COMPONENT_NAMES)


def prepare_runtime(config: Config, config_path: Path | None, *, tls: bool = True) -> Runtime:
    """Resolve the state dir, the certificate and the TURN secrets (creating them if needed).

    With ``tls=False`` (no component that will run serves TLS, see :func:`uses_tls`) no
    certificate is loaded or generated, and cryptography is never imported.
    """
    state_dir = resolve_state_dir(config.general.state_dir)
    secrets = load_turn_secrets(config, config_path, state_dir)
    certificate = None
    if tls:
        store = load_certificates(config, config_path, state_dir)
        generated = not config.tls.cert_file  # else the operator's: re-read, never replaced
        certificate = ServerCertificate.watch(
            store, state_dir, config.tls.server_names, generated=generated
        )
    runtime = Runtime(config, config_path, state_dir, certificate, CredentialMinter(secrets))
    try:
        runtime.revocations = load_revocations(runtime.revocations_file)
    except RevocationError as exc:
        raise ConfigError(str(runtime.revocations_file), "", str(exc)) from None
    if secrets:  # nodes sharing the secret share nonces (ALTERNATE-SERVER, docs/cluster.md)
        runtime.nonces = NonceMint.shared(secrets[0])
    if config.signal.auth == "token":
        runtime.room_tokens = RoomTokens(load_room_secrets(config, config_path))
    return runtime


def build_components(runtime: Runtime, names: Sequence[str]) -> list[Component]:
    """The enabled components among ``names`` (all when empty), in start order; what each
    serves is added to ``runtime.url_sources`` and its counters to the status board.

    With no names, a STUN component that would share its port with TURN is not built: the TURN
    listener answers Binding on that port itself (as coturn does).
    """
    config = runtime.config
    wanted = list(names) or list(COMPONENT_NAMES)
    for name in wanted:
        if name not in BUILDERS:
            raise ConfigError(
                "<command line>", name, f"unknown component (known: {', '.join(COMPONENT_NAMES)})"
            )
    if not names and "turn" in wanted and config.turn.enabled and stun_served_by_turn(config):
        log.info("stun-served-by-turn", extra=fields(port=config.turn.port))
        wanted.remove("stun")
    components: list[Component] = []
    for name in wanted:
        if getattr(config, name).enabled or names:
            built, urls = BUILDERS[name](runtime)
            runtime.url_sources.append(urls)
            for component in built:
                components.append(component)
                metrics = getattr(component, "metrics", None)
                if callable(metrics):  # several processes of TURN: /metrics sums them
                    runtime.board.sources.append(metrics)
    return components


def stun_served_by_turn(config: Config) -> bool:
    """Whether the STUN component's port is one the TURN listener already answers on."""
    stun, turn = config.stun, config.turn
    return stun.enabled and stun.port == turn.port and bool(set(stun.listen) & set(turn.listen))


def build_stun(runtime: Runtime) -> StunServer:
    """The STUN component from ``[stun]``."""
    stun = runtime.config.stun
    return StunServer(
        responder=BindingResponder(responder_config(stun)),
        endpoints=StunEndpoints(
            addresses=stun.listen,
            port=stun.port,
            udp=stun.udp,
            tcp=stun.tcp,
            tls_port=stun.tls_port if stun.tls else None,
            alternate=_stun_alternate(stun),
        ),
        tls_context=runtime.tls_context,
        max_connections=stun.max_connections,
        max_connections_per_ip=stun.max_connections_per_ip,
        idle_timeout=stun.idle_timeout,
        handshake_timeout=stun.handshake_timeout,
    )


def _stun_alternate(stun: StunConfig) -> tuple[str, int] | None:
    """RFC 5780's alternate address and port; None when ``alternate_address`` is empty (off)."""
    return (stun.alternate_address, stun.alternate_port) if stun.alternate_address else None


def _per_family(addresses: Sequence[str]) -> dict[int, str]:
    """The first address of each IP version."""
    found: dict[int, str] = {}
    for address in addresses:
        found.setdefault(ipaddress.ip_address(address).version, address)
    return found


def peer_policy(config: Config) -> PeerPolicy:
    """The relay's peer policy: the built-in denylist plus ``denied_peers``, with
    ``allowed_peers`` (and loopback, when ``loopback_peers`` says so) as exceptions."""
    turn = config.turn
    allow = list(turn.allowed_peers)
    all_loopback = all(ipaddress.ip_address(a).is_loopback for a in turn.listen)
    if turn.loopback_peers == "allow" or (turn.loopback_peers == "auto" and all_loopback):
        allow += LOOPBACK_RANGES
    return PeerPolicy(deny=(*DEFAULT_DENY, *turn.denied_peers), allow=allow)


def turn_settings(turn: TurnConfig) -> TurnSettings:
    """``[turn]`` as the core's parameters: the one mapping from the schema (where every
    default lives) to :class:`TurnSettings`."""
    relay = _per_family(turn.relay_addresses or turn.listen)
    external = _per_family(turn.external_addresses)
    return TurnSettings(
        relay_ipv4=relay.get(4),
        relay_ipv6=relay.get(6),
        external_ipv4=external.get(4),
        external_ipv6=external.get(6),
        default_lifetime=turn.default_lifetime,
        max_lifetime=turn.max_lifetime,
        user_quota=turn.user_quota,
        ip_quota=turn.ip_quota,
        total_quota=turn.total_quota,
        max_permissions=turn.max_permissions,
        max_channels=turn.max_channels,
        bandwidth=turn.bandwidth_limit,
        rfc5766_channels=turn.rfc5766_channels,
        software=turn.software or None,
        reason_phrases=bool(turn.software),
        metrics_users=turn.metrics_users,
        alternate_servers=tuple(parse_address(a) for a in turn.alternate_servers),
        tls_alternate_servers=tuple(parse_address(a) for a in turn.tls_alternate_servers),
        tls_alternate_domain=turn.tls_alternate_domain,
        # Each process counts its own allocations; client addresses spread evenly over workers.
        alternate_threshold=-(-turn.alternate_threshold // max(1, turn.workers)),
    )


def responder_config(stun: StunConfig) -> ResponderConfig:
    """``[stun]`` as the Binding responder's parameters: the one mapping from the schema (where
    every default lives) to :class:`ResponderConfig`. An alternate address turns RFC 5780 on,
    with the first listen address and the port as the primary; SOFTWARE brings reason phrases."""
    alternate = _stun_alternate(stun)
    return ResponderConfig(
        software=stun.software or None,
        reason_phrases=bool(stun.software),
        primary=(stun.listen[0], stun.port) if alternate else None,
        alternate=alternate,
    )


def hub_settings(signal: SignalConfig) -> HubSettings:
    """``[signal]`` as the hub's parameters: the one mapping from the schema to
    :class:`~secureconnect.signal.hub.HubSettings`. ``rate_limit`` also sets the burst
    (:func:`~secureconnect.ratelimit.burst_for`) and how many rate-limited messages close a
    connection (ten seconds' worth)."""
    from secureconnect.signal.hub import HubSettings  # noqa: PLC0415 - see TYPE_CHECKING above

    return HubSettings(
        max_room_size=signal.max_room_size,
        max_message_bytes=signal.max_message_bytes,
        rate_limit=signal.rate_limit,
        rate_burst=burst_for(signal.rate_limit),
        abuse_strikes=int(10 * signal.rate_limit),
        resume_grace=signal.resume_grace,
        resume_buffer=signal.resume_buffer,
        require_tokens=signal.auth == "token",
    )


def http_settings(signal: SignalConfig) -> HttpSettings:
    """``[signal]`` as the HTTP routes' parameters: the one mapping from the schema to
    :class:`~secureconnect.signal.http.HttpSettings` (``rate_limit`` also paces /ice)."""
    from secureconnect.signal.http import HttpSettings  # noqa: PLC0415 - see TYPE_CHECKING above

    return HttpSettings(
        allowed_origins=signal.allowed_origins,
        metrics_from=tuple(ipaddress.ip_network(n, strict=False) for n in signal.metrics_from),
        ice_rate=signal.rate_limit,
    )


def build_turn(
    runtime: Runtime,
    *,
    udp_sockets: Sequence[socket.socket] = (),
    udp: bool | None = None,
    streams: bool = True,
    port_range: tuple[int, int] | None = None,
    quotas: QuotaGate | None = None,
    other_services: Sequence[Address] | None = None,
    user_backoff: UserBackoff | None = None,
) -> TurnServer:
    """The TURN component from ``[turn]``; it also answers STUN Binding on its ports.

    With workers (docs/workers.md) the parent's serves TCP/TLS clients only (``udp=False``,
    the pool's listeners among ``other_services``) and each worker's serves its share of the
    UDP listeners (``udp_sockets``, ``streams=False``); both take a slice of the relay ports,
    the parent's quota book and the static users' backoff shared by every process
    (``user_backoff``)."""
    turn = runtime.config.turn
    settings = turn_settings(turn)
    users = dict(user.split(":", 1) for user in turn.users)
    auth = Authenticator(
        realm=turn.realm,
        minter=runtime.minter,
        nonces=runtime.nonces,
        static_users=users,
        strict_expiry=turn.strict_expiry,
        sha256=turn.sha256_integrity,
        unauthorized=RateLimiter.per_second(turn.unauthorized_rate),
        user_backoff=user_backoff,
        revocations=runtime.revocations,
    )
    parts = CoreParts(
        settings,
        auth=auth,
        peers=peer_policy(runtime.config),
        port_range=port_range or (turn.relay_port_min, turn.relay_port_max),
        quotas=quotas,
    )
    return TurnServer(
        parts,
        TurnEndpoints(
            addresses=turn.listen,
            port=turn.port,
            udp=turn.udp if udp is None else udp,
            tcp=turn.tcp and streams,
            tls_port=turn.tls_port if turn.tls and streams else None,
        ),
        tls_context=runtime.tls_context,
        max_connections=turn.max_connections,
        max_connections_per_ip=turn.max_connections_per_ip,
        idle_timeout=turn.idle_timeout,
        unallocated_timeout=turn.unallocated_timeout,
        handshake_timeout=turn.handshake_timeout,
        other_services=(
            stun_udp_endpoints(runtime.config) if other_services is None else other_services
        ),
        udp_sockets=udp_sockets,
    )


def build_turn_components(runtime: Runtime) -> tuple[list[Component], UrlSource]:
    """TURN as one component, or with ``turn.workers`` > 1 (and UDP on) as a worker process
    per UDP share plus, for TCP/TLS clients, the main process's own TURN server (started
    last: the workers bind the listeners it must never relay to). docs/workers.md."""
    turn = runtime.config.turn
    if turn.workers <= 1 or not turn.udp:
        return TURN_BUILDER(runtime)
    streams = turn.tcp or turn.tls
    slices = port_slices(turn.relay_port_min, turn.relay_port_max, turn.workers + streams)
    pool = WorkerPool.create(
        turn.workers,
        [(ip, turn.port) for ip in turn.listen],
        QuotaBook(turn_settings(turn)),
        partial(worker_spec, runtime, slices[-turn.workers :]),
        stun_udp_endpoints(runtime.config),
    )
    pool.quotas.logged_users = frozenset(user.split(":", 1)[0] for user in turn.users)
    components: list[Component] = [TurnWorker(pool, i) for i in range(1, turn.workers + 1)]
    parent: TurnServer | None = None
    if streams:
        parent = build_turn(
            runtime,
            udp=False,
            port_range=slices[0],
            quotas=pool.quotas.gate(0),
            other_services=pool.own_services,
            user_backoff=pool.quotas.user_backoff(),
        )
        components.append(parent)

    def urls() -> list[str]:
        return turn_server_urls([*pool.bound(), *(parent.bound if parent else ())])

    return components, urls


def worker_spec(runtime: Runtime, slices: Sequence[tuple[int, int]], index: int) -> WorkerSpec:
    """What TURN worker ``index`` is built from now (the secrets as last reloaded)."""
    config = runtime.config
    return WorkerSpec(
        index=index,
        count=config.turn.workers,
        config=config,
        config_path=runtime.config_path,
        secrets=runtime.minter.secrets,
        nonces=runtime.nonces,
        port_range=slices[index - 1],
        other_services=stun_udp_endpoints(config),
        revocations_file=runtime.revocations_file,
    )


def stun_udp_endpoints(config: Config) -> tuple[tuple[str, int], ...]:
    """The STUN component's UDP endpoints (RFC 5780's alternates included), which the TURN relay
    must never send to; fixed ports only (port 0 is chosen at bind time, by another process
    when the components run as separate units)."""
    stun = config.stun
    if not (stun.enabled and stun.udp):
        return ()
    addresses = [*stun.listen, *([stun.alternate_address] if stun.alternate_address else [])]
    ports = [stun.port, *([stun.alternate_port] if stun.alternate_address else [])]
    return tuple((ip, port) for ip in addresses for port in ports if port)


def _redis_backplane(
    runtime: Runtime,
    settings: HubSettings,
    stun_urls: tuple[str, ...],
    turn_urls: tuple[str, ...],
) -> RedisBackplane:
    """The Redis backplane of ``signal.backplane``, publishing this node's load report."""
    from secureconnect.signal.hub import mailbox_limits  # noqa: PLC0415 - see TYPE_CHECKING
    from secureconnect.signal.redisplane import RedisBackplane  # noqa: PLC0415
    from secureconnect.signal.registry import LoadMeter, node_report  # noqa: PLC0415

    sig = runtime.config.signal
    meter = LoadMeter()

    def report() -> dict[str, Any]:
        return node_report(
            runtime.board.metrics(),
            region=sig.region,
            stun_urls=stun_urls,
            turn_urls=turn_urls,
            meter=meter,
            now=time.monotonic(),
            draining=runtime.board.draining,
        )

    redis = RedisBackplane(
        sig.backplane,
        mailbox_limits(settings),
        prefix=sig.backplane_prefix,
        node=sig.node_name or None,
        report=report,
    )
    runtime.board.checks["signal-backplane"] = redis.health_state
    return redis


def build_signal(runtime: Runtime) -> SignalServer:
    """The signaling component from ``[signal]``, minting with the shared credential minter."""
    from secureconnect.signal.http import HttpRoutes  # noqa: PLC0415 - see TYPE_CHECKING above
    from secureconnect.signal.hub import SignalHub  # noqa: PLC0415
    from secureconnect.signal.ice import IceConfig  # noqa: PLC0415
    from secureconnect.signal.registry import ranked_urls  # noqa: PLC0415
    from secureconnect.signal.serve import SignalServer  # noqa: PLC0415
    from secureconnect.signal.serve_admission import AdmissionLimits  # noqa: PLC0415

    config = runtime.config
    sig = config.signal
    turn_urls = tuple(turn_uris(config)) if config.turn.enabled else ()
    stun_urls = tuple(stun_uris(config))
    ice = IceConfig(
        minter=runtime.minter,
        stun_urls=stun_urls,
        turn_urls=turn_urls,
        ttl=sig.ice_ttl,
    )
    settings = hub_settings(sig)
    backplane = None
    if sig.backplane:
        redis = backplane = _redis_backplane(runtime, settings, stun_urls, turn_urls)
        ice = replace(ice, cluster=lambda: ranked_urls(redis.nodes, sig.region))
    hub = SignalHub(settings, ice.servers_for, tokens=runtime.room_tokens, backplane=backplane)
    routes = HttpRoutes(
        ice=ice,
        health=runtime.board.health,
        metrics=runtime.board.metrics,
        settings=http_settings(sig),
        tokens=runtime.room_tokens,
    )
    return SignalServer(
        hub,
        routes,
        addresses=sig.listen,
        port=sig.port,
        limits=AdmissionLimits(
            max_connections=sig.max_connections,
            max_pending=sig.max_pending_handshakes,
            max_pending_per_ip=sig.max_pending_handshakes_per_ip,
            handshake_timeout=sig.handshake_timeout,
            exempt=tuple(ipaddress.ip_network(n, strict=False) for n in sig.trusted_proxies),
        ),
        tls_context=runtime.tls_context if sig.tls else None,
        ping_interval=sig.ping_interval,
        max_connections_per_ip=sig.max_connections_per_ip,
        trusted_proxies=sig.trusted_proxies,
    )


ComponentT = TypeVar("ComponentT", bound=Component)


@dataclass(frozen=True)
class Builder(Generic[ComponentT]):
    """One kind of component: ``build`` makes it from its config section, ``urls`` says what a
    built one serves once it has bound. Calling the builder returns both, the URLs as a
    :data:`~secureconnect.serviceurls.UrlSource` tied to that component; the type checker sees
    that each pair fits (``urls`` takes what ``build`` returns)."""

    build: Callable[[Runtime], ComponentT]
    urls: Callable[[ComponentT], list[str]]

    def __call__(self, runtime: Runtime) -> tuple[list[Component], UrlSource]:
        component = self.build(runtime)
        return [component], partial(self.urls, component)


TURN_BUILDER = Builder(build_turn, lambda turn: turn_server_urls(turn.bound))
#: How each kind of component is built: its components (TURN with workers is several) and
#: what they serve once bound.
BUILDERS: dict[str, Callable[[Runtime], tuple[list[Component], UrlSource]]] = {
    "stun": Builder(
        build_stun,
        lambda stun: stun_server_urls(stun.bound, stun.endpoints.port, stun.endpoints.addresses),
    ),
    "turn": build_turn_components,
    "signal": Builder(build_signal, lambda signal: signal_server_urls(signal.bound)),
}
#: The components, in start order (the names ``secureconnect run`` takes).
COMPONENT_NAMES = tuple(BUILDERS)
