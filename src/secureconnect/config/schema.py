"""The configuration schema: frozen dataclasses, one per TOML section.

This module is the single place where keys, types, defaults and their one-line descriptions live
(the ``doc`` metadata). The shipped example config is rendered from it
(:func:`secureconnect.config.render.render_example`) and a test keeps the file in sync, so the
documentation cannot drift from what the loader accepts.

Conventions:
- A key whose metadata has ``secret=True`` is masked when the effective config is printed.
- ``*_file`` keys name files holding secrets; a relative name is looked up in systemd's
  ``$CREDENTIALS_DIRECTORY`` first (``LoadCredential=``), then relative to the config file.
- ``check`` metadata holds a validator returning an error message or ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from secureconnect.config import checks
from secureconnect.config.checks import Check

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("kv", "json")


def _doc(text: str, *, secret: bool = False, check: Check | None = None) -> dict[str, Any]:
    return {"doc": text, "secret": secret, "check": check}


def _software_field() -> Any:
    """The SOFTWARE key shared by [stun] and [turn]."""
    return field(
        default="",
        metadata=_doc(
            "SOFTWARE attribute and error reason phrases; empty: none (less amplification)"
        ),
    )


def _max_connections_field() -> Any:
    return field(
        default=1024,
        metadata=_doc(
            "TCP connections open at once, and TLS connections (each has its own cap); more "
            "are closed at accept",
            check=checks.positive,
        ),
    )


def _per_ip_field(default: int) -> Any:
    return field(
        default=default,
        metadata=_doc(
            "TCP (and, separately, TLS) connections one client address may hold (0: no "
            "limit); keeps one host from taking every slot of max_connections",
            check=lambda value: None if value >= 0 else "must be 0 or more",
        ),
    )


def _handshake_timeout_field() -> Any:
    return field(
        default=10.0, metadata=_doc("seconds a TLS handshake may take", check=checks.positive)
    )


@dataclass(frozen=True, slots=True)
class GeneralConfig:
    """Process-wide settings."""

    log_level: str = field(
        default="info",
        metadata=_doc("log level: debug, info, warning or error", check=checks.one_of(*LOG_LEVELS)),
    )
    log_format: str = field(
        default="kv",
        metadata=_doc("log line format: kv (key=value) or json", check=checks.one_of(*LOG_FORMATS)),
    )
    state_dir: str = field(
        default="",
        metadata=_doc(
            "where generated files live; empty: $STATE_DIRECTORY, $XDG_STATE_HOME/secureconnect "
            "or ~/.local/state/secureconnect"
        ),
    )
    runtime_dir: str = field(
        default="",
        metadata=_doc(
            "where the admin socket lives (secureconnect sessions/kill/revoke); empty: "
            "$RUNTIME_DIRECTORY (systemd), else run/ in state_dir"
        ),
    )
    drain_timeout: float = field(
        default=3.0,
        metadata=_doc(
            "seconds to drain connections on SIGTERM before they are cut", check=checks.positive
        ),
    )
    drain_deadline: float = field(
        default=600.0,
        metadata=_doc(
            "seconds a graceful drain (secureconnect drain, SIGUSR2) lets calls in progress "
            "go on before the process exits",
            check=checks.positive,
        ),
    )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The certificate shared by STUN/TURN over TLS and WSS signaling (reloaded on SIGHUP)."""

    cert_file: str = field(
        default="",
        metadata=_doc("PEM certificate chain; empty: a self-signed one is generated in state_dir"),
    )
    key_file: str = field(
        default="",
        metadata=_doc("PEM private key for cert_file; empty together with cert_file"),
    )
    server_names: tuple[str, ...] = field(
        default=("localhost", "127.0.0.1", "::1"),
        metadata=_doc("names and addresses the generated self-signed certificate is valid for"),
    )


@dataclass(frozen=True, slots=True)
class StunConfig:
    """The STUN responder (RFC 8489 Binding, RFC 5780 discovery, classic RFC 3489 answers)."""

    enabled: bool = field(default=True, metadata=_doc("run the STUN responder"))
    listen: tuple[str, ...] = field(
        default=("127.0.0.1",),
        metadata=_doc("addresses to listen on (loopback by default)", check=checks.ip_list),
    )
    port: int = field(default=3478, metadata=_doc("UDP and TCP port", check=checks.port_or_zero))
    udp: bool = field(default=True, metadata=_doc("answer over UDP"))
    tcp: bool = field(default=True, metadata=_doc("answer over TCP"))
    tls: bool = field(default=True, metadata=_doc("answer over TLS on tls_port"))
    tls_port: int = field(
        default=5349, metadata=_doc("STUN over TLS port", check=checks.port_or_zero)
    )
    alternate_address: str = field(
        default="",
        metadata=_doc(
            "second IP of this host: enables RFC 5780 discovery (OTHER-ADDRESS, CHANGE-REQUEST); "
            "empty: off",
            check=checks.ip_or_empty,
        ),
    )
    alternate_port: int = field(
        default=3479,
        metadata=_doc("second UDP port used with alternate_address", check=checks.port),
    )
    software: str = _software_field()
    max_connections: int = _max_connections_field()
    max_connections_per_ip: int = _per_ip_field(32)
    idle_timeout: float = field(
        default=30.0,
        metadata=_doc("seconds a TCP/TLS connection may stay silent", check=checks.positive),
    )
    handshake_timeout: float = _handshake_timeout_field()


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """The TURN relay (RFC 8656) and the credentials it shares with signaling."""

    enabled: bool = field(default=True, metadata=_doc("run the TURN relay"))
    listen: tuple[str, ...] = field(
        default=("127.0.0.1",),
        metadata=_doc(
            "addresses clients reach TURN on (loopback by default)", check=checks.ip_list
        ),
    )
    port: int = field(
        default=3478,
        metadata=_doc("UDP and TCP port; also answers STUN Binding", check=checks.port_or_zero),
    )
    udp: bool = field(default=True, metadata=_doc("accept clients over UDP"))
    tcp: bool = field(default=True, metadata=_doc("accept clients over TCP"))
    tls: bool = field(default=True, metadata=_doc("accept clients over TLS on tls_port"))
    tls_port: int = field(
        default=5349, metadata=_doc("TURN over TLS port", check=checks.port_or_zero)
    )
    alternate_servers: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "IP:PORT of other TURN nodes (UDP/TCP) a new allocation is sent to with 300 Try "
            "Alternate when this node is busy (alternate_threshold) or draining",
            check=checks.address_list,
        ),
    )
    tls_alternate_servers: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "IP:PORT (their TLS port) of other TURN nodes for clients over TLS",
            check=checks.address_list,
        ),
    )
    tls_alternate_domain: str = field(
        default="",
        metadata=_doc(
            "the domain name tls_alternate_servers' certificates are valid for, sent to TLS "
            "clients as ALTERNATE-DOMAIN with a 300 (RFC 8489 §10); empty: not sent, and the "
            "client checks the alternate's certificate against the name it used for this node",
            check=checks.domain_or_empty,
        ),
    )
    alternate_threshold: int = field(
        default=0,
        metadata=_doc(
            "allocations on this node before new ones go to an alternate server (shared among "
            "turn.workers); 0: only while draining",
            check=checks.non_negative,
        ),
    )
    relay_addresses: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "local addresses relay sockets bind to, at most one per family; empty: the first "
            "listen address of each family",
            check=checks.ip_list_or_empty,
        ),
    )
    external_addresses: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "public addresses advertised as relayed addresses behind a 1:1 NAT (Docker, cloud), "
            "at most one per family; empty: the relay address itself",
            check=checks.ip_list_or_empty,
        ),
    )
    workers: int = field(
        default=1,
        metadata=_doc(
            "processes serving TURN over UDP, sharing its ports (SO_REUSEPORT, one client "
            "address per worker); TCP/TLS clients stay in the main process (docs/workers.md). "
            "init writes the CPU count",
            check=checks.workers,
        ),
    )
    relay_port_min: int = field(
        default=49152, metadata=_doc("lowest relay port", check=checks.port)
    )
    relay_port_max: int = field(
        default=65535, metadata=_doc("highest relay port", check=checks.port)
    )
    realm: str = field(default="secureconnect", metadata=_doc("long-term credential realm"))
    secrets: tuple[str, ...] = field(
        repr=False,  # a secret: never in a repr or a traceback
        default=(),
        metadata=_doc(
            "TURN REST API shared secrets, newest first (several allow rotation)", secret=True
        ),
    )
    secret_file: str = field(
        default="",
        metadata=_doc(
            "file with one shared secret per line, newest first; empty and no secrets: a random "
            "secret is generated in state_dir"
        ),
    )
    users: tuple[str, ...] = field(
        repr=False,  # a secret: never in a repr or a traceback
        default=(),
        metadata=_doc(
            'static long-term users as "user:password" (labs, legacy clients)',
            secret=True,
            check=checks.user_list,
        ),
    )
    credential_ttl: int = field(
        default=86400,
        metadata=_doc("seconds a minted REST credential stays valid", check=checks.ttl),
    )
    sha256_integrity: bool = field(
        default=False,
        metadata=_doc(
            "offer RFC 8489 password algorithms: clients that support them authenticate with "
            "SHA-256 (MESSAGE-INTEGRITY-SHA256); others keep MD5/SHA-1; 401s grow by 20 bytes"
        ),
    )
    strict_expiry: bool = field(
        default=False,
        metadata=_doc(
            "end allocations when their REST credential expires; false: expiry is checked at "
            "Allocate and sessions may refresh past it (coturn's behaviour)"
        ),
    )
    default_lifetime: int = field(
        default=600,
        metadata=_doc("allocation lifetime when the client asks for less", check=checks.positive),
    )
    max_lifetime: int = field(
        default=3600, metadata=_doc("longest allocation lifetime granted", check=checks.positive)
    )
    user_quota: int = field(
        default=32,
        metadata=_doc(
            "allocations (and EVEN-PORT reservations) one user may hold; a REST username counts "
            "for its user part. A browser allocates once per TURN URL per peer connection: a "
            "peer in a 10-person mesh with our three TURN URLs needs 27",
            check=checks.positive,
        ),
    )
    ip_quota: int = field(
        default=128,
        metadata=_doc(
            "allocations (and reservations) one client address may hold, an IPv6 client by its "
            "/64; keeps one host from taking every slot of total_quota (raise it for many users "
            "behind one NAT)",
            check=checks.positive,
        ),
    )
    total_quota: int = field(
        default=1000, metadata=_doc("allocations the server holds at most", check=checks.positive)
    )
    max_permissions: int = field(
        default=64, metadata=_doc("permissions per allocation", check=checks.positive)
    )
    max_channels: int = field(
        default=64, metadata=_doc("channel bindings per allocation", check=checks.positive)
    )
    bandwidth_limit: int = field(
        default=5_000_000,
        metadata=_doc(
            "bytes per second one allocation may relay, both directions; 0: unlimited",
            check=checks.non_negative,
        ),
    )
    metrics_users: int = field(
        default=20,
        metadata=_doc(
            "users with /metrics series of their own (turn_user_*: allocations, bytes each way), "
            "the heaviest by relayed bytes (a REST name counts for its user part); the others "
            "sum under user other; 0: no per-user series; at most 100 (docs/metrics.md)",
            check=checks.metrics_users,
        ),
    )
    rfc5766_channels: bool = field(
        default=False,
        metadata=_doc(
            "also accept RFC 5766 channel numbers 0x5000-0x7FFF (coturn's turnutils_uclient "
            "uses them); RFC 8656 allows 0x4000-0x4FFF only"
        ),
    )
    allowed_peers: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "CIDR ranges relayed to even though the denylist covers them (labs, tests)",
            check=checks.cidr_list,
        ),
    )
    denied_peers: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "CIDR ranges refused in addition to the built-in denylist", check=checks.cidr_list
        ),
    )
    loopback_peers: str = field(
        default="auto",
        metadata=_doc(
            "relay to loopback peers: auto (only when every listen address is loopback, for "
            "local demos), allow or deny",
            check=checks.one_of("auto", "allow", "deny"),
        ),
    )
    unauthorized_rate: float = field(
        default=20.0,
        metadata=_doc(
            "401 responses per second per source address (amplification); 0: unlimited",
            check=checks.non_negative,
        ),
    )
    software: str = _software_field()
    max_connections: int = _max_connections_field()
    max_connections_per_ip: int = _per_ip_field(128)
    idle_timeout: float = field(
        default=300.0,
        metadata=_doc(
            "seconds a TCP/TLS client with an allocation may stay silent", check=checks.positive
        ),
    )
    unallocated_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "seconds a TCP/TLS connection without an allocation may stay silent (a slot is "
            "for relaying: idle connections must not lock others out)",
            check=checks.positive,
        ),
    )
    handshake_timeout: float = _handshake_timeout_field()


@dataclass(frozen=True, slots=True)
class SignalConfig:
    """WSS signaling: rooms, trickle-ICE routing, resumable sessions, ICE servers per peer."""

    enabled: bool = field(default=True, metadata=_doc("run the signaling endpoint"))
    listen: tuple[str, ...] = field(
        default=("127.0.0.1",),
        metadata=_doc("addresses to listen on (loopback by default)", check=checks.ip_list),
    )
    port: int = field(
        default=8443,
        metadata=_doc(
            "HTTPS/WSS port (the demo page, /ws, /ice, /healthz, /metrics)",
            check=checks.port_or_zero,
        ),
    )
    tls: bool = field(
        default=True,
        metadata=_doc("serve TLS with [tls]'s certificate; false only behind a TLS proxy"),
    )
    auth: str = field(
        default="open",
        metadata=_doc(
            "open (any room, no token) or token (HMAC room tokens, docs/signaling-protocol.md)",
            check=checks.one_of("open", "token"),
        ),
    )
    token_secrets: tuple[str, ...] = field(
        repr=False,  # a secret: never in a repr or a traceback
        default=(),
        metadata=_doc("room-token secrets, newest first (auth = token)", secret=True),
    )
    token_secret_file: str = field(
        default="", metadata=_doc("file with one room-token secret per line, newest first")
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "browser origins allowed besides the page's own (e.g. https://app.example.com); "
            '"*": any'
        ),
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "CIDR ranges of reverse proxies whose X-Forwarded-For is believed",
            check=checks.cidr_list,
        ),
    )
    metrics_from: tuple[str, ...] = field(
        default=(
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
        ),
        metadata=_doc(
            "CIDR ranges whose clients may read /metrics (others get 403); loopback and private "
            "networks by default, where scrapers live; add your monitoring host's address; an "
            "empty list serves everyone",
            check=checks.cidr_list,
        ),
    )
    ice_host: str = field(
        default="",
        metadata=_doc(
            "host name put in the stun:/turn:/turns: URLs handed to clients (must match the "
            "certificate for turns:); empty: the TURN external or listen addresses"
        ),
    )
    ice_ttl: int = field(
        default=3600,
        metadata=_doc("seconds the TURN credentials handed to a peer live", check=checks.ttl),
    )
    backplane: str = field(
        repr=False,  # may hold a password: never in a repr or a traceback
        default="",
        metadata=_doc(
            "where rooms live: empty for this process's memory; redis://HOST:PORT/DB, "
            "rediss:// (TLS) or redis+sentinel://HOST:PORT,HOST:PORT/SERVICE to share them with "
            "every node using the same Redis (docs/cluster.md); a password in it is masked "
            "when printed",
            secret=True,
            check=checks.backplane_url,
        ),
    )
    backplane_prefix: str = field(
        default="secureconnect",
        metadata=_doc(
            "Redis key prefix: clusters sharing one Redis need different prefixes",
            check=checks.name,
        ),
    )
    node_name: str = field(
        default="",
        metadata=_doc(
            "this node's name in the cluster (unique); empty: the host name and a random suffix",
            check=checks.name_or_empty,
        ),
    )
    region: str = field(
        default="",
        metadata=_doc(
            "this node's region label: clients here are offered TURN nodes of the same region "
            "first",
            check=checks.name_or_empty,
        ),
    )
    max_room_size: int = field(default=16, metadata=_doc("peers per room", check=checks.positive))
    max_message_bytes: int = field(
        default=65536, metadata=_doc("largest message accepted", check=checks.positive)
    )
    rate_limit: float = field(
        default=50.0,
        metadata=_doc(
            "messages per second per connection before rate-limited errors; also /ice "
            "requests per second per client address (429 beyond a burst of twice this)",
            check=checks.positive,
        ),
    )
    resume_grace: float = field(
        default=30.0,
        metadata=_doc("seconds a disconnected peer may resume its session", check=checks.positive),
    )
    resume_buffer: int = field(
        default=64,
        metadata=_doc(
            "messages kept for a disconnected peer (oldest dropped)", check=checks.positive
        ),
    )
    ping_interval: float = field(
        default=20.0,
        metadata=_doc(
            "seconds between WebSocket pings (keeps proxies from dropping idle sockets)",
            check=checks.positive,
        ),
    )
    max_connections_per_ip: int = field(
        default=64,
        metadata=_doc("WebSocket connections one client address may hold", check=checks.positive),
    )
    max_connections: int = field(
        default=4096,
        metadata=_doc(
            "TCP connections open at once (handshakes, HTTP requests, WebSockets); more are "
            "closed at accept",
            check=checks.positive,
        ),
    )
    max_pending_handshakes: int = field(
        default=1024,
        metadata=_doc(
            "connections still in their TLS/HTTP handshake at once; more are closed at accept "
            "(slowloris)",
            check=checks.positive,
        ),
    )
    max_pending_handshakes_per_ip: int = field(
        default=16,
        metadata=_doc(
            "connections one client address may have in their TLS/HTTP handshake at once "
            "(not applied to trusted_proxies)",
            check=checks.positive,
        ),
    )
    handshake_timeout: float = field(
        default=5.0,
        metadata=_doc(
            "seconds a client has to finish the TLS handshake and send its HTTP request",
            check=checks.positive,
        ),
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; every key has a default, so an empty file is valid."""

    general: GeneralConfig = field(default_factory=GeneralConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    stun: StunConfig = field(default_factory=StunConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)


SECTION_DOCS: dict[str, str] = {
    "general": "Process-wide settings.",
    "tls": "The certificate for STUN/TURN over TLS and WSS (reloaded on SIGHUP).",
    "stun": "The STUN responder: RFC 8489 Binding, RFC 5780 discovery, classic RFC 3489 answers.",
    "turn": "The TURN relay (RFC 8656) and the credentials it shares with signaling.",
    "signal": "WSS signaling: rooms, trickle ICE, resume, ICE servers with TURN credentials.",
}
