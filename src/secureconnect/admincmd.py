"""``secureconnect sessions | kill | revoke | metrics``: the operator's commands (docs/admin.md).

Each talks to the admin socket of every SecureConnect process of this node (the all-in-one
process, or one per component unit; TURN workers answer through their parent), found where
:mod:`secureconnect.admin.paths` says, and merges the answers:

* ``sessions [--user U] [--json]``: TURN allocations (user, client address and transport, relayed
  address, age, lifetime left, packets and bytes each way, permissions, channels) and signaling
  sessions (peer id, room, address, age).
* ``kill --user U | --allocation RELAYED | --peer ID``: end them now (``allocation-ended`` is
  logged with reason ``killed``). A signaling peer's TURN allocations end with it.
* ``revoke --user U [--until T]``: refuse the credentials minted before now (and, with
  ``--until``, every credential of U until T) and end U's allocations; kept in the state
  directory across restarts. ``revoke --lift --user U`` undoes it, ``revoke --list`` shows them.
* ``metrics``: the node's ``/metrics`` samples, every process summed, as Prometheus text.

Exit status: 0 done, 1 nothing found (no process, nothing matched, a process failed), 2 misuse.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from secureconnect.admin.client import Replies, ask_all, cluster_replies
from secureconnect.admin.cluster import cluster_request
from secureconnect.admin.paths import candidate_dirs, find_sockets, resolve_runtime_dir
from secureconnect.admin.protocol import AdminError, parse_request, request_line
from secureconnect.config import Config
from secureconnect.signal.exposition import render
from secureconnect.signal.redisplane import redacted
from secureconnect.statedir import resolve_state_dir

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_admin_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The four commands, each with the config flags (for the state and runtime dirs)."""
    sessions = commands.add_parser("sessions", help="list TURN allocations and signaling sessions")
    sessions.add_argument("--user", help="only this user's (a REST name's user part, or a peer)")
    sessions.add_argument("--json", action="store_true", help="JSON instead of tables")
    kill = commands.add_parser("kill", help="end allocations or signaling sessions now")
    which = kill.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", help="every allocation of this user")
    which.add_argument("--allocation", help="the allocation relaying from this address")
    which.add_argument("--peer", help="this signaling peer (and its allocations)")
    revoke = commands.add_parser(
        "revoke", help="refuse a TURN user's credentials minted before now; end its allocations"
    )
    revoke.add_argument("--user", help="the user (a REST name's user part, or a static user)")
    revoke.add_argument(
        "--until", help="also refuse new credentials until then: Unix seconds, ISO 8601, or 2h/7d"
    )
    revoke.add_argument("--lift", action="store_true", help="forget the user's revocation")
    revoke.add_argument("--list", action="store_true", help="show the revoked users")
    commands.add_parser("metrics", help="print this node's metrics (every process, summed)")
    for name in ("sessions", "kill", "revoke", "metrics"):
        config_flags(commands.choices[name])
        commands.choices[name].add_argument(
            "--socket", type=Path, action="append", default=[], help="an admin socket to ask"
        )
        if name != "metrics":
            commands.choices[name].add_argument(
                "--local",
                action="store_true",
                help="this node only (with signal.backplane the commands act cluster-wide)",
            )


def parse_until(text: str, now: float) -> float:
    """``--until``: Unix seconds, a duration from now (``90s``, ``30m``, ``12h``, ``7d``) or an
    ISO 8601 time (UTC unless it says otherwise). ValueError when it is none of these."""
    text = text.strip()
    if match := _DURATION.match(text):
        return now + float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


class _Asker:
    """Sends a command to this node's sockets, or to the whole cluster over Redis (with
    ``signal.backplane``, unless ``--local`` or ``--socket``)."""

    def __init__(self, args: argparse.Namespace, config: Config) -> None:
        state_dir = resolve_state_dir(config.general.state_dir)
        self.dirs = candidate_dirs(resolve_runtime_dir(config.general.runtime_dir, state_dir))
        self.sockets = list(args.socket) or find_sockets(self.dirs)
        signal = config.signal
        local = getattr(args, "local", True) or bool(args.socket)
        self.cluster = None if local or not signal.backplane else signal
        self.static_users = frozenset(user.split(":", 1)[0] for user in config.turn.users)
        self.failure = ""

    def ask(self, command: str, **fields: Any) -> Replies | None:
        """Every process's answer; None (and ``failure`` says why) when nobody could be asked."""
        if self.cluster is not None:
            url, prefix = self.cluster.backplane, self.cluster.backplane_prefix
            try:
                answers, receivers = trio.run(
                    cluster_request, url, prefix, command, fields, self.static_users
                )
            except Exception as exc:  # Redis unreachable, a timeout
                self.failure = (
                    f"cannot reach the cluster's Redis ({redacted(url)}): {exc}; "
                    "--local asks this node only"
                )
                return None
            if not receivers:
                self.failure = "no process of the cluster listens for admin requests"
                return None
            return cluster_replies(answers, receivers)
        if not self.sockets:
            where = ", ".join(str(d) for d in self.dirs)
            self.failure = f"no admin socket found in {where}"
            return None
        return ask_all(self.sockets, request_line(command, **fields))


def run_admin(args: argparse.Namespace, config: Config) -> int:
    """Run one of the commands; see the module docstring."""
    try:
        command, fields = _request(args)
        parse_request(request_line(command, **fields))  # refused here, not by every process
    except (ValueError, AdminError) as exc:
        print(f"secureconnect: {exc}", file=sys.stderr)
        return 2
    asker = _Asker(args, config)
    replies = asker.ask(command, **fields)
    if replies is None:
        print(f"secureconnect: {asker.failure}", file=sys.stderr)
        return 1
    show: dict[str, Callable[[Replies], int]] = {
        "sessions": lambda r: _sessions(r, as_json=args.json),
        "kill": _kill,
        "metrics": _metrics,
        "revoke": lambda r: _revoke(args, r),
    }
    return show[args.command](replies)


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The admin request the command line asks for (ValueError: misuse)."""
    if args.command == "sessions":
        return "sessions", {"user": args.user}
    if args.command == "kill":
        return "kill", {"user": args.user, "allocation": args.allocation, "peer": args.peer}
    if args.command == "metrics":
        return "metrics", {}
    if args.list:
        return "revocations", {}
    if not args.user:
        raise ValueError("revoke needs --user (or --list)")
    if args.lift:
        return "lift", {"user": args.user}
    try:
        until = None if args.until is None else parse_until(args.until, time.time())
    except ValueError:
        raise ValueError(f"--until {args.until!r}: not a time") from None
    return "revoke", {"user": args.user, "until": until}


def _report(replies: Replies) -> bool:
    for problem in replies.problems:
        print(f"secureconnect: {problem}", file=sys.stderr)
    return not replies.problems


def _sessions(replies: Replies, *, as_json: bool) -> int:
    clean = _report(replies)
    if not replies.ok:
        return 1
    records = [record for reply in replies.ok for record in reply.get("sessions", ())]
    turn = [r for r in records if r.get("kind") == "turn"]
    signal = [r for r in records if r.get("kind") == "signal"]
    if as_json:
        print(json.dumps({"turn": turn, "signal": signal}, indent=2))
    else:
        node = [NODE_COLUMN] if any("node" in r for r in records) else []  # cluster-wide
        print(_table(f"TURN allocations: {len(turn)}", node + TURN_COLUMNS, turn))
        print(_table(f"Signaling sessions: {len(signal)}", node + SIGNAL_COLUMNS, signal))
    return 0 if clean else 1


def _kill(replies: Replies) -> int:
    clean = _report(replies)
    ended = sum(int(count) for reply in replies.ok for count in (reply.get("ended") or {}).values())
    print(f"ended {ended}")
    return 0 if ended and clean else 1


def _revoke(args: argparse.Namespace, replies: Replies) -> int:
    clean = _report(replies)
    if args.list:
        seen: dict[str, dict[str, Any]] = {}
        for reply in replies.ok:
            for entry in reply.get("revocations") or ():
                seen[str(entry.get("user"))] = entry
        for entry in seen.values():
            until = entry.get("until")
            print(
                f"{entry['user']}\trevoked {_when(entry['revoked_at'])}"
                + (f"\tuntil {_when(until)}" if until is not None else "")
            )
        return 0 if clean else 1
    turn = [reply for reply in replies.ok if reply.get("turn")]
    if not turn:
        print("secureconnect: no process of this node serves TURN", file=sys.stderr)
        return 1
    if args.lift:
        print(f"lifted {args.user}" if any(r.get("lifted") for r in turn) else "not revoked")
    else:
        ended = sum(int(n) for reply in turn for n in (reply.get("ended") or {}).values())
        print(f"revoked {args.user}; ended {ended} allocations")
    return 0 if clean else 1


def _metrics(replies: Replies) -> int:
    clean = _report(replies)
    sys.stdout.write(render(reply.get("samples") or {} for reply in replies.ok))
    return 0 if clean and replies.ok else 1


def _when(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _traffic(packets: object, octets: object) -> str:
    return f"{packets}/{_bytes(octets)}"


def _bytes(value: object) -> str:
    size = float(value) if isinstance(value, int | float) else 0.0
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1000
    return f"{size:.1f}GB"  # pragma: no cover - the loop returns


NODE_COLUMN: tuple[str, Callable[[dict[str, Any]], str]] = ("NODE", lambda r: str(r.get("node")))
TURN_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("ALLOCATION", lambda r: str(r["id"])),
    ("USER", lambda r: str(r["user"])),
    ("TRANSPORT", lambda r: str(r["transport"])),
    ("CLIENT", lambda r: str(r["client"])),
    ("AGE", lambda r: f"{r['age']:.0f}s"),
    ("LEFT", lambda r: f"{r['lifetime_left']:.0f}s"),
    ("TO PEER", lambda r: _traffic(r["to_peer_packets"], r["to_peer_bytes"])),
    ("TO CLIENT", lambda r: _traffic(r["to_client_packets"], r["to_client_bytes"])),
    ("PERMISSIONS", lambda r: ",".join(r["permissions"]) or "-"),
    ("CHANNELS", lambda r: ",".join(f"{k}>{v}" for k, v in r["channels"].items()) or "-"),
]
SIGNAL_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("PEER", lambda r: str(r["peer"])),
    ("ROOM", lambda r: str(r["room"])),
    ("ADDRESS", lambda r: str(r["address"])),
    ("AGE", lambda r: f"{r['age']:.0f}s"),
]


def _table(
    title: str,
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]],
    rows: list[dict[str, Any]],
) -> str:
    cells = [[header for header, _ in columns]]
    cells += [[cell(row) for _, cell in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [title]
    if rows:
        for line in cells:
            lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)
