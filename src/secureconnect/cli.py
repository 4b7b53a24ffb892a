"""The ``secureconnect`` command line.

``run`` starts the supervisor (all enabled components, or the ones named), ``drain`` drains a
running one gracefully (:mod:`secureconnect.draincmd`), ``probe`` tests STUN/TURN servers
(:mod:`secureconnect.probecmd`), ``sessions``, ``kill``, ``revoke`` and ``metrics`` talk to the
running processes' admin sockets (:mod:`secureconnect.admincmd`), ``check-config``
validates a file and prints the effective config with secrets masked, ``example-config`` prints
the commented example, ``init`` writes a production config and its files
(:mod:`secureconnect.initcmd`). Flags that change config keys go through one table,
:data:`FLAG_KEYS`, and ``--set KEY=VALUE`` reaches every other key, so the CLI never
re-implements a config rule.

Exit status: 0 on success or clean shutdown, 1 when a component cannot start, 2 for a bad config
or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
import typing
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from secureconnect import __version__
from secureconnect.admin.cluster import ClusterAdmin
from secureconnect.admin.paths import resolve_runtime_dir, socket_name
from secureconnect.admin.server import (
    AdminServer,
    AdminUnavailable,
    RevocationHolder,
    SessionHolder,
)
from secureconnect.admin.siblings import SiblingMetrics
from secureconnect.admin.store import RevocationStore
from secureconnect.admincmd import add_admin_parsers, run_admin
from secureconnect.config import (
    Config,
    ConfigError,
    load_config,
    parse_override,
    render_effective,
    render_example,
)
from secureconnect.credentials import CredentialMinter
from secureconnect.draincmd import add_drain_parser, keep_pid_file, pid_file, run_drain
from secureconnect.initcmd import add_init_parser, run_init
from secureconnect.logs import configure_logging, fields
from secureconnect.natlab.command import add_natlab_parser, run_natlab
from secureconnect.probecmd import add_probe_parser, run_probe
from secureconnect.runtime import (
    COMPONENT_NAMES,
    Runtime,
    build_components,
    prepare_runtime,
    uses_tls,
)
from secureconnect.sdnotify import Notifier
from secureconnect.secretfiles import load_room_secrets, load_turn_secrets
from secureconnect.serviceurls import service_urls, turn_uris
from secureconnect.signal.tokens import RoomTokens
from secureconnect.statedir import resolve_state_dir
from secureconnect.supervisor import Component, StartupError, Supervisor

log = logging.getLogger("secureconnect.cli")
ADMIN_COMMANDS = ("sessions", "kill", "revoke", "metrics")

# argparse destination -> dotted config key: the one table of CLI overrides.
FLAG_KEYS: dict[str, str] = {
    "log_level": "general.log_level",
    "log_format": "general.log_format",
    "state_dir": "general.state_dir",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="secureconnect", description="STUN, TURN and WSS signaling for WebRTC."
    )
    parser.add_argument("--version", action="version", version=f"secureconnect {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the appliance (all enabled components by default)")
    run.add_argument(
        "components",
        nargs="*",
        metavar="COMPONENT",
        help=f"run only these: {', '.join(COMPONENT_NAMES)}",
    )
    _config_flags(run, config_optional=True)

    check = commands.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("config", type=Path, help="the TOML file to check")
    _config_flags(check, config_optional=False)

    commands.add_parser("example-config", help="print the commented example config")

    creds = commands.add_parser(
        "credentials", help="print a fresh TURN REST API credential as JSON"
    )
    creds.add_argument("--user", help="user id embedded in the username (optional)")
    creds.add_argument(
        "--ttl", type=int, help="seconds the credential is valid (turn.credential_ttl)"
    )
    _config_flags(creds, config_optional=True)

    token = commands.add_parser(
        "room-token", help="print a signaling room token (signal.auth = token)"
    )
    token.add_argument("room", help='the room, or "*" for any room')
    token.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid")
    _config_flags(token, config_optional=True)
    add_init_parser(commands)
    add_natlab_parser(commands)
    add_drain_parser(commands)
    add_probe_parser(commands)
    add_admin_parsers(commands, partial(_config_flags, config_optional=True))
    _config_flags(commands.choices["drain"], config_optional=True)
    return parser


def _config_flags(parser: argparse.ArgumentParser, *, config_optional: bool) -> None:
    if config_optional:
        parser.add_argument(
            "-c", "--config", type=Path, help="TOML config (default: embedded defaults)"
        )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["kv", "json"])
    parser.add_argument("--state-dir", help="where generated files live")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="set",
        help="set any config key, e.g. --set stun.port=3479 (repeatable)",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = dict(parse_override(item) for item in args.set)
    for dest, key in FLAG_KEYS.items():
        if getattr(args, dest, None) is not None:
            overrides[key] = getattr(args, dest)
    return overrides


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 (one return per command)
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "example-config":
            sys.stdout.write(render_example())
            return 0
        if args.command == "init":
            return run_init(args)
        if args.command == "natlab":
            return run_natlab(args)
        if args.command == "probe":
            return run_probe(args)
        if args.command == "check-config":
            config = load_config(args.config, _overrides(args))
            sys.stdout.write(render_effective(config))
            return 0
        config = load_config(args.config, _overrides(args))
        if args.command == "credentials":
            return print_credentials(config, args.config, args.user, args.ttl)
        if args.command == "room-token":
            return print_room_token(config, args.config, args.room, args.ttl)
        if args.command in ADMIN_COMMANDS:
            return run_admin(args, config)
        if args.command == "drain":
            state_dir = resolve_state_dir(config.general.state_dir)
            return run_drain(args, state_dir, config.general.drain_deadline)
    except ConfigError as exc:
        print(f"secureconnect: config error: {exc}", file=sys.stderr)
        return 2
    return run(config, args.config, args.components)


def print_room_token(config: Config, config_path: Path | None, room: str, ttl: int) -> int:
    """``secureconnect room-token``: a token for ``room`` signed with the newest secret."""
    secrets = load_room_secrets(config, config_path)
    if not secrets:
        print(
            "secureconnect: set signal.token_secrets or signal.token_secret_file", file=sys.stderr
        )
        return 2
    try:
        print(RoomTokens(secrets).mint(room, ttl, time.time()))
    except ValueError as exc:
        print(f"secureconnect: {exc}", file=sys.stderr)
        return 2
    return 0


def print_credentials(
    config: Config, config_path: Path | None, user: str | None, ttl: int | None
) -> int:
    """``secureconnect credentials``: the TURN REST API JSON for the newest shared secret."""
    secrets = load_turn_secrets(config, config_path, resolve_state_dir(config.general.state_dir))
    try:
        credential = CredentialMinter(secrets).mint(
            user, ttl or config.turn.credential_ttl, time.time()
        )
    except ValueError as exc:
        print(f"secureconnect: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(credential.to_json(turn_uris(config)), indent=2))
    return 0


def run(config: Config, config_path: Path | None, names: Sequence[str]) -> int:
    """Run the supervisor until SIGINT/SIGTERM; return the exit status."""
    configure_logging(config.general.log_level, config.general.log_format)
    try:
        runtime = prepare_runtime(config, config_path, tls=uses_tls(config, names))
        components = build_components(runtime, names)
    except ConfigError as exc:
        print(f"secureconnect: config error: {exc}", file=sys.stderr)
        return 2
    if not components:
        print("secureconnect: no component is enabled", file=sys.stderr)
        return 2
    notifier = Notifier.from_environ()  # systemd Type=notify; a no-op elsewhere
    supervisor = Supervisor(
        components,
        drain_timeout=config.general.drain_timeout,
        drain_deadline=config.general.drain_deadline,
        reload_hooks=runtime.reload_hooks(),
        notifier=notifier,
    )
    runtime.board.states = supervisor.state  # /healthz reads the supervisor's live states

    admin = admin_server(runtime, components, names)
    cluster = None
    if config.signal.backplane and any(isinstance(c, SessionHolder) for c in components):
        node = config.signal.node_name or socket.gethostname()
        cluster = ClusterAdmin(config.signal.backplane, config.signal.backplane_prefix, node, admin)
    siblings = None
    if any(component.name == "signal" for component in components):  # it serves /metrics
        siblings = SiblingMetrics([admin.path.parent], admin.path)
        runtime.board.sources.append(siblings.metrics)

    async def serve_admin(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            await admin.serve(task_status=task_status)
        except AdminUnavailable as exc:  # the appliance serves on; the commands cannot reach it
            log.warning("admin-socket-unavailable", extra=fields(reason=str(exc)))
            task_status.started()

    async def main_task() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.serve_signals)
            await nursery.start(serve_admin)
            if siblings is not None:
                nursery.start_soon(siblings.run)
            if cluster is not None:
                await nursery.start(cluster.run)
            async with trio.open_nursery() as running:
                await running.start(supervisor.run)
                urls = service_urls(runtime.url_sources)
                log.info(
                    "serving", extra=fields(urls=" ".join(urls), state_dir=str(runtime.state_dir))
                )
                print(
                    "SecureConnect is ready:", *(f"  {url}" for url in urls), sep="\n", flush=True
                )
            # supervisor.run has returned: the shutdown is complete; stop listening for signals.
            nursery.cancel_scope.cancel()

    failure: StartupError | None = None
    try:
        with keep_pid_file(pid_file(runtime.state_dir, names)):
            trio.run(main_task)
    except* StartupError as group:
        failure = _first_leaf(group)
    if failure is not None:
        print(f"secureconnect: cannot start {failure}", file=sys.stderr)
        notifier.status(f"cannot start {failure}")
        return 1
    return 0


def admin_server(
    runtime: Runtime, components: Sequence[Component], names: Sequence[str]
) -> AdminServer:
    """The process's admin socket (docs/admin.md): asks ``components`` for their sessions and
    keeps the revocation list when TURN runs here."""
    config = runtime.config
    runtime_dir = resolve_runtime_dir(config.general.runtime_dir, runtime.state_dir)
    store = None
    if any(isinstance(c, RevocationHolder) for c in components):
        store = RevocationStore(
            runtime.revocations_file,
            runtime.revocations,
            max_ttl=runtime.minter.max_ttl,
            static_users=[user.split(":", 1)[0] for user in config.turn.users],
        )
    own = list(runtime.board.sources)  # not the siblings' (cli.run adds them after)
    return AdminServer(
        runtime_dir / socket_name(names),
        components,
        store,
        lambda: [source() for source in own],
        components=tuple(c.name for c in components),
    )


def _first_leaf(group: BaseExceptionGroup[StartupError]) -> StartupError:
    """The first StartupError in a (possibly nested) exception group."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return typing.cast(StartupError, first)
