"""``secureconnect init``: write a production config and every file it names, non-interactively.

What it writes (in ``--config-dir``, ``/etc/secureconnect`` by default):

- ``config.toml`` (0644, no secrets in it): public listeners, the external address, the relay
  port range, and *relative* names for every secret file;
- ``turn-secret`` (0600): a random TURN REST API shared secret;
- ``room-token-secret`` (0600): a random signaling room-token secret, always written so that
  switching ``signal.auth`` to ``token`` later needs no new file (and so the units'
  ``LoadCredential=`` lines always find it); tokens are required unless ``--open-rooms``
  (an open signaling endpoint hands TURN credentials to anyone: an open relay);
- ``tls-cert.pem`` (0644) and ``tls-key.pem`` (0600): a self-signed ECDSA P-256 certificate for
  the domain and external addresses, or, with ``--cert``/``--key``, symlinks to existing files
  (e.g. Let's Encrypt's ``live/`` paths, so renewals are followed).

Why relative names: the shipped systemd units pass each file to the service with
``LoadCredential=NAME:/etc/secureconnect/NAME``, and the config loader looks a relative ``*_file``
up in ``$CREDENTIALS_DIRECTORY`` first, then next to the config file. One config therefore works
under the units' ``DynamicUser=`` (which cannot read the root-only files directly) and for an
administrator running ``secureconnect credentials -c ...`` as root.

Error handling: arguments are checked before anything is written (exit 2, naming the flag); an
existing file stops the command before it writes anything unless ``--force`` is given (exit 1,
naming the file); the rendered config is loaded with the real loader before it is written, so
``init`` cannot produce a file that ``secureconnect check-config`` rejects.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import ssl
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from secureconnect.config import ConfigError, load_config, toml_value
from secureconnect.config.checks import MAX_WORKERS
from secureconnect.statedir import ensure_dir, make_self_signed, write_private

DEFAULT_CONFIG_DIR = Path("/etc/secureconnect")
CONFIG_NAME = "config.toml"
TURN_SECRET_NAME = "turn-secret"  # noqa: S105 (file names, which the units' LoadCredential= use)
ROOM_SECRET_NAME = "room-token-secret"  # noqa: S105
TLS_CERT_NAME = "tls-cert.pem"
TLS_KEY_NAME = "tls-key.pem"


class InitError(Exception):
    """A problem with the arguments or the target files; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class InitOptions:
    """What ``init`` was asked for, validated."""

    domain: str
    external_ips: tuple[str, ...]
    listen: tuple[str, ...]
    turn_port: int
    turns_port: int
    stun_port: int
    signal_port: int
    relay_ports: tuple[int, int]
    workers: int
    cert: Path | None
    key: Path | None
    room_tokens: bool
    config_dir: Path
    state_dir: Path | None
    force: bool


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file ``init`` will create: bytes with a mode, or a symlink to ``link_to``."""

    path: Path
    what: str
    data: bytes = b""
    mode: int = 0o600
    link_to: Path | None = None
    keep_existing: bool = False  # secrets: --force never replaces one (clients hold it)


def add_init_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``init`` and its flags on the CLI's sub-command parser."""
    init = commands.add_parser(
        "init",
        help="write a production config, secrets and a certificate (non-interactive)",
        description="Write config.toml and the files it refers to, then print the next steps.",
    )
    init.add_argument("--domain", required=True, help="public DNS name (realm, ICE host, cert)")
    init.add_argument(
        "--external-ip",
        action="append",
        required=True,
        metavar="IP",
        help="public address clients reach, one per IP version (repeatable)",
    )
    init.add_argument(
        "--listen",
        action="append",
        metavar="IP",
        help="local addresses to bind (default: 0.0.0.0, plus :: with an IPv6 --external-ip)",
    )
    init.add_argument("--turn-port", type=int, default=3478, help="TURN (and STUN) UDP/TCP port")
    init.add_argument("--turns-port", type=int, default=5349, help="TURN over TLS port")
    init.add_argument(
        "--stun-port",
        type=int,
        default=3479,
        help="STUN component port; equal to --turn-port: TURN answers Binding alone",
    )
    init.add_argument("--signal-port", type=int, default=443, help="WSS signaling port")
    init.add_argument(
        "--workers",
        type=int,
        help="TURN worker processes for UDP (turn.workers; default: the CPUs this may use)",
    )
    init.add_argument(
        "--relay-ports", default="49152-65535", metavar="MIN-MAX", help="TURN relay UDP ports"
    )
    init.add_argument("--cert", type=Path, help="existing PEM certificate chain (with --key)")
    init.add_argument("--key", type=Path, help="existing PEM private key (with --cert)")
    init.add_argument(
        "--open-rooms",
        action="store_true",
        help="let anyone join any room and get TURN credentials (signal.auth = open); by "
        "default a public server requires signed room tokens",
    )
    init.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help=f"where to write (default {DEFAULT_CONFIG_DIR}, which the systemd units name)",
    )
    init.add_argument(
        "--state-dir",
        type=Path,
        help="general.state_dir (default: systemd's StateDirectory=, /var/lib/secureconnect)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing files (existing secret files are kept: rotate those by hand)",
    )


def options_from_args(args: argparse.Namespace) -> InitOptions:
    """Validate the parsed arguments; :class:`InitError` names the flag at fault."""
    domain = args.domain.strip().rstrip(".").lower()
    if not domain or any(not label or len(label) > 63 for label in domain.split(".")):
        raise InitError(f"--domain: {args.domain!r} is not a host name")
    externals = tuple(_address("--external-ip", ip) for ip in args.external_ip)
    versions = [ipaddress.ip_address(ip).version for ip in externals]
    if len(set(versions)) != len(versions):
        raise InitError("--external-ip: at most one address per IP version")
    if any(ipaddress.ip_address(ip).is_unspecified for ip in externals):
        raise InitError("--external-ip: must be an address clients can reach, not 0.0.0.0 or ::")
    listen = tuple(_address("--listen", ip) for ip in args.listen or ())
    if not listen:
        listen = ("0.0.0.0", "::") if 6 in versions else ("0.0.0.0",)  # noqa: S104 (public server)
    for flag in ("turn_port", "turns_port", "stun_port", "signal_port"):
        if not 1 <= getattr(args, flag) <= 65535:
            raise InitError(f"--{flag.replace('_', '-')}: must be a port from 1 to 65535")
    tcp = {
        "--turn-port": args.turn_port,
        "--turns-port": args.turns_port,
        "--signal-port": args.signal_port,
    }
    if args.stun_port != args.turn_port:
        tcp["--stun-port"] = args.stun_port
    if len(set(tcp.values())) != len(tcp):
        raise InitError(f"ports must differ: {', '.join(f'{k} {v}' for k, v in tcp.items())}")
    relay = _relay_range(args.relay_ports)
    workers = args.workers if args.workers is not None else usable_cpus()
    if not 1 <= workers <= MAX_WORKERS:
        raise InitError(f"--workers must be 1 to {MAX_WORKERS}, not {workers}")
    if (args.cert is None) != (args.key is None):
        raise InitError("--cert and --key go together")
    if args.cert is not None:
        _check_pair(args.cert, args.key)
    return InitOptions(
        domain=domain,
        external_ips=externals,
        listen=listen,
        turn_port=args.turn_port,
        turns_port=args.turns_port,
        stun_port=args.stun_port,
        signal_port=args.signal_port,
        relay_ports=relay,
        workers=workers,
        cert=args.cert.absolute() if args.cert else None,  # not resolved: follow live/ links
        key=args.key.absolute() if args.key else None,
        room_tokens=not args.open_rooms,
        config_dir=args.config_dir.absolute(),
        state_dir=args.state_dir.absolute() if args.state_dir else None,
        force=args.force,
    )


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and systemd's
    CPUAffinity= narrow), at most what ``turn.workers`` allows."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def _address(flag: str, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InitError(f"{flag}: {value!r} is not an IP address") from None


def _relay_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        pair = (int(low), int(high))
    except ValueError:
        pair = (0, 0)
    if not sep or not 1024 <= pair[0] <= pair[1] <= 65535:
        raise InitError(f"--relay-ports: {text!r} is not MIN-MAX within 1024-65535")
    return pair


def _check_pair(cert: Path, key: Path) -> None:
    """Load the certificate and key the way the server will, so a mismatch fails now."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # before OSError, its base class
        raise InitError(f"--cert {cert} and --key {key} do not load together: {exc}") from exc
    except OSError as exc:
        missing = cert if not os.access(cert, os.R_OK) else key
        raise InitError(f"cannot read {missing}: {exc.strerror or exc}") from exc


def render_config(options: InitOptions) -> str:
    """The config text: every choice ``init`` made, with the reason next to it."""
    o = options
    lines = [
        f"# SecureConnect for {o.domain}, written by `secureconnect init`.",
        "# Keys not set here keep their defaults: `secureconnect example-config` lists them all.",
        "# Secret files are named relative to this file. Under systemd the units hand them to the",
        "# service with LoadCredential= and it reads them from $CREDENTIALS_DIRECTORY instead.",
        "",
        "[general]",
        'log_level = "info"',
    ]
    if o.state_dir is not None:
        lines.append(f"state_dir = {toml_value(str(o.state_dir))}")
    else:
        lines.append("# state_dir: unset, so systemd's StateDirectory= (/var/lib/secureconnect)")
    served = o.stun_port == o.turn_port
    lines += [
        "",
        "[tls]",
        "# Shared by TURN over TLS and WSS. SIGHUP (systemctl reload) re-reads both files; under",
        "# the units that is the copy LoadCredential= took at start (systemd/README.md).",
        f"cert_file = {toml_value(TLS_CERT_NAME)}",
        f"key_file = {toml_value(TLS_KEY_NAME)}",
        "",
        "[stun]",
        *(
            ["# TURN answers STUN Binding on this port: the STUN component is not started."]
            if served
            else [
                "# TURN answers STUN Binding on its port too; the STUN component gets a port of",
                "# its own so that secureconnect-stun.service can run beside the TURN service.",
            ]
        ),
        f"listen = {toml_value(o.listen)}",
        f"port = {o.stun_port}",
        "tls = false  # STUN over TLS: the TURN TLS port answers Binding",
        "",
        "[turn]",
        f"listen = {toml_value(o.listen)}",
        f"port = {o.turn_port}",
        f"tls_port = {o.turns_port}",
        "# The public address(es) put in XOR-RELAYED-ADDRESS (1:1 NAT, cloud).",
        f"external_addresses = {toml_value(o.external_ips)}",
        "# Each allocation holds one UDP port: the units' LimitNOFILE= covers this range.",
        f"relay_port_min = {o.relay_ports[0]}",
        f"relay_port_max = {o.relay_ports[1]}",
        "# Processes serving TURN over UDP, one per CPU (docs/workers.md).",
        f"workers = {o.workers}",
        f"realm = {toml_value(o.domain)}",
        f"secret_file = {toml_value(TURN_SECRET_NAME)}",
        "",
        "[signal]",
        f"listen = {toml_value(o.listen)}",
        f"port = {o.signal_port}",
        "# The name in the turn:/turns: URLs handed to browsers: it matches the certificate.",
        f"ice_host = {toml_value(o.domain)}",
        f"auth = {toml_value('token' if o.room_tokens else 'open')}",
        f"token_secret_file = {toml_value(ROOM_SECRET_NAME)}",
    ]
    return "\n".join(lines) + "\n"


def plan_files(options: InitOptions) -> list[PlannedFile]:
    """Every file ``init`` writes, with its contents, mode or link target (nothing written)."""
    directory = options.config_dir
    config = render_config(options)
    _validate(config)
    plan = [
        PlannedFile(directory / CONFIG_NAME, "config", config.encode(), 0o644),
        PlannedFile(
            directory / TURN_SECRET_NAME, "TURN shared secret", _secret_line(), keep_existing=True
        ),
        PlannedFile(
            directory / ROOM_SECRET_NAME, "room-token secret", _secret_line(), keep_existing=True
        ),
    ]
    if options.cert is not None and options.key is not None:
        for name, target, what in (
            (TLS_CERT_NAME, options.cert, "certificate (link)"),
            (TLS_KEY_NAME, options.key, "private key (link)"),
        ):
            if target != directory / name:  # already in place: nothing to link
                plan.append(PlannedFile(directory / name, what, link_to=target))
    else:
        cert_pem, key_pem = make_self_signed([options.domain, *options.external_ips])
        plan += [
            PlannedFile(directory / TLS_CERT_NAME, "self-signed certificate", cert_pem, 0o644),
            PlannedFile(directory / TLS_KEY_NAME, "private key", key_pem),
        ]
    return plan


def _secret_line() -> bytes:
    return (secrets.token_urlsafe(32) + "\n").encode("ascii")  # 256 random bits


def _validate(config_text: str) -> None:
    """Load the rendered config with the real loader (a bug here must not reach the disk)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / CONFIG_NAME
        path.write_text(config_text, encoding="utf-8")
        try:
            load_config(path)
        except ConfigError as exc:  # pragma: no cover - a bug in render_config
            raise InitError(f"internal error, the config would not load: {exc}", 1) from exc


def write_files(plan: Sequence[PlannedFile], *, force: bool) -> None:
    """Write ``plan``; unless ``force``, refuse before writing anything if a file exists."""
    if not force:
        for item in plan:
            if os.path.lexists(item.path):
                raise InitError(f"{item.path} exists; use --force to overwrite it", 1)
    for item in plan:
        item.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if item.keep_existing and os.path.lexists(item.path):
            continue  # re-running init (e.g. to switch certificates) keeps the secrets in use
        if item.link_to is not None:
            temporary = item.path.with_name(f".{item.path.name}.{secrets.token_hex(4)}.tmp")
            temporary.symlink_to(item.link_to)
            os.replace(temporary, item.path)
        else:
            write_private(item.path, item.data, item.mode)


def next_steps(options: InitOptions) -> str:
    """What an operator does after ``init``: firewall, DNS, certificates, units, start."""
    o = options
    ports = [
        (f"{o.turn_port}/udp", "TURN and STUN"),
        (f"{o.turn_port}/tcp", "TURN over TCP"),
        (f"{o.turns_port}/tcp", "TURN over TLS"),
        (f"{o.signal_port}/tcp", "WSS signaling, /ice, the demo page"),
        (f"{o.relay_ports[0]}:{o.relay_ports[1]}/udp", "TURN relay ports (peers)"),
    ]
    if o.stun_port != o.turn_port:
        ports[2:2] = [(f"{o.stun_port}/udp", "STUN"), (f"{o.stun_port}/tcp", "STUN over TCP")]
    config = o.config_dir / CONFIG_NAME
    lines = ["", "Next steps:", "  1. Open the firewall (and any cloud security group):"]
    lines += [f"       ufw allow {port:<18} # {what}" for port, what in ports]
    lines.append(f"  2. DNS: point {o.domain} at the external address:")
    for ip in o.external_ips:
        kind = "AAAA" if ":" in ip else "A"
        lines.append(f"       {o.domain}. {kind} {ip}")
    if o.cert is None:
        lines += [
            "  3. The certificate is self-signed (browsers reject it for wss:). For a real one:",
            f"       certbot certonly --standalone -d {o.domain}",
            f"       secureconnect init ... --cert /etc/letsencrypt/live/{o.domain}/fullchain.pem"
            f" --key /etc/letsencrypt/live/{o.domain}/privkey.pem --force",
        ]
    else:
        lines += [
            f"  3. {o.config_dir / TLS_CERT_NAME} and {TLS_KEY_NAME} link to your certificate."
            " The units",
            "     load it with LoadCredential= at start, so after a renewal restart (systemd < 259",
            "     does not refresh credentials on reload):",
            "       certbot renew --deploy-hook 'systemctl restart secureconnect'",
        ]
    lines += [
        "  4. Install the units (from the source tree's systemd/ folder) and start:",
        "       cp systemd/*.service systemd/*.target /etc/systemd/system/",
        "       systemctl daemon-reload",
        f"       secureconnect check-config {config}",
        "       systemctl enable --now secureconnect",
        "     or one service per component: systemctl enable --now secureconnect-components.target",
    ]
    if o.config_dir != DEFAULT_CONFIG_DIR:
        lines.append(
            f"     The units read {DEFAULT_CONFIG_DIR}: point ExecStart= and LoadCredential= at"
            f" {o.config_dir} with `systemctl edit`."
        )
    if o.stun_port == o.turn_port:
        lines.append(
            "     STUN shares the TURN port: leave secureconnect-stun.service out (TURN answers "
            "Binding)."
        )
    return "\n".join(lines) + "\n"


def run_init(args: argparse.Namespace) -> int:
    """``secureconnect init``: validate, plan, write, report; returns the exit status."""
    try:
        options = options_from_args(args)
        plan = plan_files(options)
        write_files(plan, force=options.force)
        if options.state_dir is not None:
            ensure_dir(options.state_dir)
    except InitError as exc:
        print(f"secureconnect: init: {exc}", file=sys.stderr)
        return exc.status
    except OSError as exc:
        where = exc.filename or args.config_dir
        print(f"secureconnect: init: cannot write {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print("Wrote:")
    for item in plan:
        kind = f"-> {item.link_to}" if item.link_to else f"mode {item.mode:04o}"
        print(f"  {item.path}  ({item.what}, {kind})")
    if options.state_dir is not None:
        print(f"  {options.state_dir}/  (state directory, mode 0700)")
    print(next_steps(options), end="")
    return 0
