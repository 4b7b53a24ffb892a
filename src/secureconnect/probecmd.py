"""``secureconnect probe URL...``: test STUN/TURN servers, ours or anyone's (docs/probe.md).

This module is the wiring: arguments, the credential (a TURN REST shared secret from
``--secret-file``, minted into ``expiry:user`` with HMAC-SHA1 by `CredentialMinter`, or a static
``--username``/``--password``), then `secureconnect.probe.probe_url` for each URL in turn and the
report, human or ``--json``.

Exit status: 0 when every check is ok (warnings allowed), 1 when a check failed, 2 for a usage
error (a URL that does not parse, an unreadable or empty secret file, conflicting options), so
that CI can tell a broken server from a broken invocation.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from secureconnect.credentials import CredentialMinter
from secureconnect.probe import (
    EXIT_USAGE,
    Credential,
    ProbeOptions,
    ProbeUrl,
    UrlError,
    exit_status,
    parse_probe_url,
    probe_url,
    render_block,
    render_footer,
    render_json,
)
from secureconnect.statedir import read_secret_lines

#: Lifetime of the credential the probe mints: long enough for a slow probe of many URLs,
#: short enough that a leaked probe credential is soon worthless.
CREDENTIAL_TTL = 600
DEFAULT_USER = "secureconnect-probe"


class UsageError(Exception):
    """A bad invocation: exit status 2 with this message."""


def add_probe_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    probe = commands.add_parser(
        "probe",
        help="test STUN/TURN servers: reachability, auth, relaying, addresses, TLS, NAT",
        description="Test each stun:, stuns:, turn: or turns: URL (RFC 7064/7065, "
        "?transport=udp|tcp) and report a line per check. Exit 0: all ok (warnings allowed); "
        "1: a check failed; 2: usage error.",
    )
    probe.add_argument(
        "urls", nargs="+", metavar="URL", help="e.g. turn:turn.example.com:3478?transport=udp"
    )
    auth = probe.add_argument_group("credential (TURN URLs)")
    auth.add_argument(
        "--secret-file",
        type=Path,
        help="TURN REST shared secret (first non-comment line; ours: turn.secret_file or "
        "STATE_DIR/turn-secret, coturn: static-auth-secret)",
    )
    auth.add_argument("--user", default=DEFAULT_USER, help="user id minted into the REST username")
    auth.add_argument("--username", help="a static long-term username (with --password)")
    auth.add_argument("--password", help="its password")
    tls = probe.add_argument_group("TLS (turns:, stuns:)")
    tls.add_argument("--cafile", type=Path, help="verify against these CA certificates only")
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="go on after a failed verification (it is still reported as a failure)",
    )
    probe.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait at each step (default 5)"
    )
    probe.add_argument("--json", action="store_true", help="print the JSON report (docs/probe.md)")


def _credential(args: argparse.Namespace) -> Credential | None:
    if args.secret_file is not None and (args.username or args.password):
        raise UsageError("give --secret-file or --username/--password, not both")
    if args.secret_file is not None:
        try:
            secrets = read_secret_lines(args.secret_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the secret file {args.secret_file}: {exc}") from None
        if not secrets:
            raise UsageError(f"the secret file {args.secret_file} holds no secret")
        try:
            minted = CredentialMinter(secrets[:1]).mint(args.user, CREDENTIAL_TTL, time.time())
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return Credential(minted.username, minted.password)
    if bool(args.username) != bool(args.password):
        raise UsageError("--username and --password go together")
    if args.username:
        return Credential(args.username, args.password)
    return None


def _options(args: argparse.Namespace) -> tuple[list[ProbeUrl], ProbeOptions]:
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError("--timeout must be a positive number of seconds")
    if args.cafile is not None and not args.cafile.is_file():
        raise UsageError(f"--cafile {args.cafile} is not a readable file")
    try:
        urls = [parse_probe_url(text) for text in args.urls]
    except UrlError as exc:
        raise UsageError(str(exc)) from None
    credential = _credential(args)
    options = ProbeOptions(
        timeout=args.timeout, credential=credential, cafile=args.cafile, insecure=args.insecure
    )
    return urls, options


def run_probe(args: argparse.Namespace) -> int:
    """Probe every URL; print the report; the exit status (see the module docstring)."""
    try:
        urls, options = _options(args)
    except UsageError as exc:
        print(f"secureconnect probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    reports = []
    for url in urls:
        reports.append(probe_url(url, options))
        if not args.json:  # one block at a time: a slow URL does not hide the others
            sys.stdout.write(render_block(reports[-1]))
            sys.stdout.flush()
    if args.json:
        sys.stdout.write(render_json(reports, timeout=options.timeout))
    else:
        sys.stdout.write(render_footer(reports))
    return exit_status(reports)
