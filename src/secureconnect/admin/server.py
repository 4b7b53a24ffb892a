"""The admin socket of one process: a UNIX socket for the operator's commands (docs/admin.md).

Only the service user (and root) may talk to it, twice over: the socket file is mode 0600 in a
0700 directory, and the kernel's word on who connected (``SO_PEERCRED``) is checked before a
byte is read; anyone else gets one refusal line and is logged. There is no network admin port
at all (coturn's telnet CLI and web admin have both had CVEs).

The server answers one request per connection (:mod:`.protocol`) by asking the components that
hold sessions: each in-process component with ``admin_sessions``/``admin_kill`` (TURN, signaling)
and each TURN worker, which forwards the request to its process (docs/workers.md). Every command
is logged with the uid and pid that sent it. Revocations go to the :class:`.store.RevocationStore`
first (the file), then every TURN component ends the user's allocations.

Resource handling: the socket is bound under a temporary name, narrowed to 0600 and renamed into
place, so it is never reachable with wider permissions; a stale socket of a dead process is
replaced, a live one is left alone (that process keeps it). At most :data:`MAX_CLIENTS` requests
are served at once, each read within :data:`READ_TIMEOUT` seconds and answered within
:data:`ANSWER_TIMEOUT` (a worker that does not answer is named in ``errors``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import trio

from secureconnect.admin.paths import MAX_SOCKET_PATH
from secureconnect.admin.protocol import (
    MAX_REQUEST,
    AdminError,
    Request,
    encode_reply,
    parse_request,
)
from secureconnect.admin.store import RevocationStore
from secureconnect.logs import fields
from secureconnect.statedir import ensure_dir
from secureconnect.turn.revocations import RevocationError

log = logging.getLogger("secureconnect.admin")

MAX_CLIENTS: Final = 8
READ_TIMEOUT: Final = 5.0
ACCEPT_PAUSE: Final = 0.1  # seconds after a failed accept (out of file descriptors)
ANSWER_TIMEOUT: Final = 10.0
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid


@runtime_checkable
class SessionHolder(Protocol):
    """A component whose sessions the admin commands list and end."""

    name: str

    async def admin_sessions(self, user: str | None) -> list[dict[str, object]]: ...

    async def admin_kill(
        self, *, user: str | None = None, allocation: str | None = None, peer: str | None = None
    ) -> int: ...


@runtime_checkable
class RevocationHolder(Protocol):
    """A TURN component: told when the revocation list changed and whose allocations end."""

    name: str

    async def admin_revoked(self, user: str | None) -> int: ...


class AdminUnavailable(Exception):
    """The admin socket cannot be served (the process runs without it, logged)."""


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a UNIX socket, from the kernel."""
    pid, uid, _ = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return pid, uid


@dataclass
class AdminServer:
    """Serves ``path``; see the module docstring."""

    path: Path
    holders: Sequence[object]  # the process's components: those that hold sessions are asked
    store: RevocationStore | None  # None: no TURN in this process
    metrics: Callable[[], Iterable[Mapping[str, float]]]
    components: tuple[str, ...] = ()
    wall: Callable[[], float] = time.time
    #: the uids allowed besides root: the process's own
    allowed: frozenset[int] = field(default_factory=lambda: frozenset({os.geteuid(), 0}))
    served: int = 0
    refused: int = 0
    _limit: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(MAX_CLIENTS))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report started, answer until cancelled; the socket file goes with it."""
        listener = self._bind()
        inode = os.stat(self.path).st_ino
        log.info("admin-socket", extra=fields(path=str(self.path)))
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    try:
                        conn, _ = await listener.accept()
                    except OSError as exc:  # EMFILE and the like: the appliance serves on
                        log.warning("admin-accept-failed", extra=fields(error=str(exc)))
                        await trio.sleep(ACCEPT_PAUSE)
                        continue
                    nursery.start_soon(self._connection, conn)
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == inode:  # still ours, not a successor's
                    self.path.unlink()

    def _bind(self) -> trio.socket.SocketType:
        path = self.path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise AdminUnavailable(
                f"{path} is longer than a UNIX socket path may be ({MAX_SOCKET_PATH} bytes): "
                "set general.runtime_dir to a shorter directory"
            )
        try:
            ensure_dir(path.parent)
        except OSError as exc:
            raise AdminUnavailable(f"cannot create {path.parent}: {exc.strerror}") from None
        if _alive(path):
            raise AdminUnavailable(f"another process serves {path}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead process's socket
        temporary = path.with_name(f".{os.getpid()}.tmp")  # no longer than the real name
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fsencode(temporary))
            os.chmod(temporary, 0o600)  # before anyone can find it under its real name
            sock.listen(MAX_CLIENTS)
            os.replace(temporary, path)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise AdminUnavailable(f"cannot serve {path}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return trio.socket.from_stdlib_socket(sock)

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        """One client: nothing it does, and no failure of a command, reaches the appliance
        (an unexpected error is logged and ends this connection only)."""
        with conn:
            try:
                await self._converse(conn)
            except OSError:
                return  # the client went away
            except Exception:
                log.exception("admin-connection-failed")

    async def _converse(self, conn: trio.socket.SocketType) -> None:
        try:
            pid, uid = peer_credentials(conn)
        except OSError:
            return
        if uid not in self.allowed:
            self.refused += 1
            log.warning("admin-refused", extra=fields(uid=uid, pid=pid))
            with contextlib.suppress(OSError):
                with trio.move_on_after(1.0):  # read (and ignore) what it sent: closing on
                    await _read_line(conn)  # unread bytes would reset its connection
                await conn.send(encode_reply({"ok": False, "error": "not allowed"}))
            return
        async with self._limit:
            line = None
            with trio.move_on_after(READ_TIMEOUT):
                line = await _read_line(conn)
            if line is None:  # nothing, or not within READ_TIMEOUT
                return
            reply = await self._answer(line, pid, uid)
            with trio.move_on_after(ANSWER_TIMEOUT), contextlib.suppress(OSError):
                await _send_all(conn, encode_reply(reply))

    async def _answer(self, line: bytes, pid: int, uid: int) -> dict[str, Any]:
        try:
            request = parse_request(line)
        except AdminError as exc:
            return {"ok": False, "error": str(exc)}
        self.served += 1
        log.info(
            "admin-command",
            extra=fields(
                command=request.command,
                user=request.user,
                allocation=request.allocation,
                peer=request.peer,
                until=request.until,
                uid=uid,
                pid=pid,
            ),
        )
        reply: dict[str, Any] = {"ok": True, "pid": os.getpid(), "components": self.components}
        try:
            reply.update(await self.execute(request))
        except (AdminError, RevocationError) as exc:
            return {"ok": False, "error": str(exc), "pid": os.getpid()}
        except Exception as exc:  # a bug: the command fails, the process serves on
            log.exception("admin-command-failed", extra=fields(command=request.command))
            return {"ok": False, "error": f"internal error: {exc!r}", "pid": os.getpid()}
        return reply

    async def execute(self, request: Request, now: float | None = None) -> dict[str, Any]:
        """Carry out ``request`` on this process's components; the reply's fields. ``now``: the
        revocation's Unix time (a cluster-wide one carries the time it was made; else now).
        Raises AdminError or RevocationError for a request that cannot be carried out."""
        command = request.command
        if command == "sessions":
            return await self._sessions(request.user)
        if command == "kill":
            ended, errors = await self._each_holder(
                SessionHolder,
                lambda h: h.admin_kill(
                    user=request.user, allocation=request.allocation, peer=request.peer
                ),
            )
            return {"ended": ended, "errors": errors}
        if command == "metrics":
            samples: dict[str, float] = {}
            for source in self.metrics():
                for name, value in source.items():
                    samples[name] = samples.get(name, 0.0) + value
            return {"samples": samples}
        return await self._revocations(request, self.wall() if now is None else now)

    async def _revocations(self, request: Request, now: float) -> dict[str, Any]:
        """``revocations``, ``revoke`` and ``lift``: the store first, then the TURN servers."""
        store = self.store
        if store is None:
            return {"turn": False, "ended": {}, "errors": []}
        if request.command == "revocations":
            return {"turn": True, "revocations": _listing(store)}
        user = request.user or ""  # parse_request checked: revoke and lift name one
        if request.command == "revoke":
            entry = store.revoke(user, now, request.until)
            ended, errors = await self._each_holder(
                RevocationHolder, lambda h: h.admin_revoked(user)
            )
            return {"turn": True, "revoked": entry.to_json(), "ended": ended, "errors": errors}
        lifted = store.lift(user, now)
        _, errors = await self._each_holder(RevocationHolder, lambda h: h.admin_revoked(None))
        return {"turn": True, "lifted": lifted, "errors": errors}

    async def _sessions(self, user: str | None) -> dict[str, Any]:
        sessions: list[dict[str, object]] = []
        errors: list[str] = []
        for holder in self.holders:
            if not isinstance(holder, SessionHolder):
                continue
            found: list[dict[str, object]] | None = None
            with trio.move_on_after(ANSWER_TIMEOUT):
                try:
                    found = await holder.admin_sessions(user)
                except Exception as exc:  # one component's failure is reported, not fatal
                    errors.append(f"{holder.name}: {exc}")
                    continue
            if found is None:
                errors.append(f"{holder.name}: no answer in {ANSWER_TIMEOUT:g} s")
            else:
                sessions.extend(found)
        return {"sessions": sessions, "errors": errors}

    async def _each_holder(
        self, kind: type[Any], ask: Callable[[Any], Any]
    ) -> tuple[dict[str, int], list[str]]:
        """Ask every holder of ``kind``; {name: count}, and the errors."""
        counts: dict[str, int] = {}
        errors: list[str] = []
        for holder in self.holders:
            if not isinstance(holder, kind):
                continue
            name = str(getattr(holder, "name", "?"))
            count: int | None = None
            with trio.move_on_after(ANSWER_TIMEOUT):
                try:
                    count = int(await ask(holder))
                except Exception as exc:
                    errors.append(f"{name}: {exc}")
                    continue
            if count is None:
                errors.append(f"{name}: no answer in {ANSWER_TIMEOUT:g} s")
            else:
                counts[name] = count
        return counts, errors


def _listing(store: RevocationStore) -> list[dict[str, object]]:
    return [entry.to_json() for entry in store.revocations.entries.values()]


def _alive(path: Path) -> bool:
    """Whether a process accepts connections on ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fsencode(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def _read_line(conn: trio.socket.SocketType) -> bytes | None:
    """The request line (without its newline), None when the client sent none."""
    data = b""
    while b"\n" not in data:
        chunk = await conn.recv(4096)
        if not chunk:
            return data or None
        data += chunk
        if len(data) > MAX_REQUEST + 1:
            return data  # parse_request refuses it with the reason
    return data.split(b"\n", 1)[0]


async def _send_all(conn: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await conn.send(view)
        view = view[sent:]
