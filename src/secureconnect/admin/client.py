"""The commands' side of the admin sockets: ask every process of this node (docs/admin.md).

Blocking sockets, one request per connection (:mod:`.protocol`). A socket whose process has gone
(connection refused: a stale file after a crash) is skipped; one the caller may not open
(permission denied: the socket is the service user's, mode 0600) is reported as such.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

MAX_REPLY: Final = 256 * 1024 * 1024  # bytes: a listing of every allocation of a busy node
TIMEOUT: Final = 30.0  # seconds for one process to answer (its workers have 10 s each)


class AdminUnreachable(Exception):
    """No answer from a socket; the message says why."""


def ask(path: Path, line: bytes, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send ``line`` to the admin socket at ``path``; its JSON reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fsencode(path))
            sock.sendall(line)
            chunks: list[bytes] = []
            size = 0
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY:
                    raise AdminUnreachable(f"{path}: the reply is over {MAX_REPLY} bytes")
        except PermissionError:
            raise AdminUnreachable(
                f"{path}: permission denied (run as the service user or root)"
            ) from None
        except (ConnectionRefusedError, FileNotFoundError):
            raise AdminUnreachable(f"{path}: no process serves it (stale)") from None
        except OSError as exc:
            raise AdminUnreachable(f"{path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise AdminUnreachable(f"{path}: the reply is not JSON") from None
    if not isinstance(reply, dict):
        raise AdminUnreachable(f"{path}: the reply is not a JSON object")
    return reply


@dataclass
class Replies:
    """What every process answered, and the problems met on the way."""

    #: (where from: a socket's path, or a node and pid, the answer)
    answers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [reply for _, reply in self.answers if reply.get("ok")]


def ask_all(sockets: Sequence[Path], line: bytes, timeout: float = TIMEOUT) -> Replies:
    """``line`` to each socket; stale sockets are skipped silently, other failures and refusals
    are problems (a process's own ``errors`` too)."""
    replies = Replies()
    for path in sockets:
        try:
            reply = ask(path, line, timeout)
        except AdminUnreachable as exc:
            if "stale" not in str(exc):
                replies.problems.append(str(exc))
            continue
        replies.answers.append((str(path), reply))
        if not reply.get("ok"):
            replies.problems.append(f"{path}: {reply.get('error', 'refused')}")
        replies.problems.extend(f"{path}: {error}" for error in reply.get("errors") or ())
    return replies


def cluster_replies(answers: list[dict[str, Any]], receivers: int) -> Replies:
    """The answers of a cluster-wide request (``admin.cluster.cluster_request``), each record
    marked with the node it came from."""
    replies = Replies()
    for answer in answers:
        source = f"{answer.get('node')} (pid {answer.get('pid')})"
        for record in answer.get("sessions") or ():
            if isinstance(record, dict):
                record["node"] = answer.get("node")
        replies.answers.append((source, answer))
        if not answer.get("ok"):
            replies.problems.append(f"{source}: {answer.get('error', 'refused')}")
        replies.problems.extend(f"{source}: {error}" for error in answer.get("errors") or ())
    if len(answers) < receivers:
        missing = receivers - len(answers)
        replies.problems.append(f"{missing} of {receivers} processes did not answer in time")
    return replies
