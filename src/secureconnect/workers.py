"""TURN over UDP on several processes (``turn.workers``): the parent's side. docs/workers.md.

The parent keeps everything the workers share and starts one process per worker:

* :class:`WorkerPool` binds the UDP listening sockets once, a
  :class:`~secureconnect.turn.reuseport.ReuseportGroup` per address, and keeps them open for
  its whole life (a crashed worker's socket stays in the group, so no other worker's clients
  move); it holds the quota book every worker asks (:class:`~secureconnect.turn.workerlink.
  QuotaService`) and the static users' backoff, which it sends every worker when it starts,
  and knows what a worker is built from (:class:`WorkerSpec`).
* :class:`TurnWorker` is one worker process as a supervised component: ``serve`` spawns
  ``python -m secureconnect.turnworker`` with its share of the sockets, reports started once
  the worker says every socket serves (so the supervisor's READY=1 waits for every worker),
  relays ``reload`` and ``drain``, keeps the worker's last metrics, and raises when the process
  dies, so the supervisor restarts this worker alone. Whatever the dead worker held in the
  quota book is given back once the process is gone.

A worker is a child of this process in a session of its own (a terminal's Ctrl-C reaches the
parent only, which drains the workers) and ends when its control socket closes, so no worker
outlives the parent, even one killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from secureconnect.accounting import is_cumulative
from secureconnect.config import Config
from secureconnect.credentials import NonceMint
from secureconnect.logs import fields
from secureconnect.netaddr import Address
from secureconnect.turn.quotas import QuotaBook
from secureconnect.turn.reuseport import ReuseportGroup, bind_groups
from secureconnect.turn.settings import retired_name
from secureconnect.turn.workerlink import (
    MAX_MESSAGE,
    QuotaService,
    decode_report,
    encode_message,
    send_message,
    socket_pair,
)

log = logging.getLogger("secureconnect.workers")

#: how long a worker may take from spawn to serving every socket
START_TIMEOUT = 30.0
#: how long a worker asked to stop (or whose parent task was cancelled) gets before SIGKILL
STOP_GRACE = 5.0


@dataclass(frozen=True)
class WorkerSpec:
    """What worker ``index`` (1-based) of ``count`` is built from, pickled to it at start."""

    index: int
    count: int
    config: Config
    config_path: Path | None
    #: the TURN REST secrets as the parent holds them now (a SIGHUP sends the new ones)
    secrets: tuple[str, ...]
    #: the parent's nonce key: a nonce one process issued verifies in every other
    nonces: NonceMint
    #: this worker's slice of the relay port range (no two processes pick the same port)
    port_range: tuple[int, int]
    #: UDP endpoints of the other services (STUN): never relayed to
    other_services: tuple[Address, ...]
    #: where the parent keeps the revocation list: read at start and when told (docs/admin.md)
    revocations_file: Path | None = None


def port_slices(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """``low..high`` in ``count`` contiguous slices of (nearly) equal size, in order."""
    size, extra = divmod(high - low + 1, count)
    slices, start = [], low
    for i in range(count):
        end = start + size + (1 if i < extra else 0) - 1
        slices.append((start, end))
        start = end + 1
    return slices


@dataclass
class WorkerPool:
    """What the workers share in the parent; see the module docstring."""

    count: int
    addresses: Sequence[Address]  # where to listen (port 0: the first socket's, for all)
    quotas: QuotaService
    #: worker index -> what it is built from (asked at every start: the secrets of that moment)
    spec: Callable[[int], WorkerSpec]
    #: the other services' UDP endpoints first, then every bound listener: what the parent's
    #: own TURN server (TCP/TLS clients) never relays to; filled in when the groups are bound
    own_services: list[Address] = field(default_factory=list)
    groups: list[ReuseportGroup] = field(default_factory=list)
    #: a thread per worker answers its quota requests for as long as it lives: they must
    #: not take tokens of trio's default limiter (40), which 40 workers would use up
    threads: trio.CapacityLimiter = field(init=False)

    #: quota book owners: one per worker process started (0 is the parent's own server)
    owners: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: the live workers' control sockets, by worker index (for :meth:`broadcast_block`)
    controls: dict[int, socket.socket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.threads = trio.CapacityLimiter(max(1, self.count))

    @classmethod
    def create(
        cls,
        count: int,
        addresses: Sequence[Address],
        book: QuotaBook,
        spec: Callable[[int], WorkerSpec],
        other_services: Sequence[Address] = (),
    ) -> WorkerPool:
        pool = cls(count, addresses, QuotaService(book), spec, list(other_services))
        pool.quotas.on_block = pool.broadcast_block
        return pool

    def broadcast_block(self, user: str, until: float) -> None:
        """Tell every live worker that static user ``user`` backs off until ``until`` (from
        the quota service's thread; a worker that cannot be told is being replaced)."""
        for control in list(self.controls.values()):
            with contextlib.suppress(OSError):
                send_message(control, ("block-user", user, until))

    def sockets_for(self, index: int) -> list[socket.socket]:
        """Worker ``index``'s socket of every group, binding the groups on first use (a
        :class:`~secureconnect.transport.BindError` names every address that failed)."""
        if not self.groups:
            self.groups = bind_groups(self.addresses, self.count)
            self.own_services.extend(group.address for group in self.groups)
        return [group.sockets[index - 1] for group in self.groups]

    def bound(self) -> list[tuple[str, str, int]]:
        """(transport, ip, port) of every listener, for service URLs."""
        return [("udp", *group.address) for group in self.groups]

    def close(self) -> None:
        for group in self.groups:
            group.close()
        self.groups.clear()


class _Answer:
    """A worker's answer to an admin request, as its parts arrive (a listing of many
    allocations comes in several messages, each under ``MAX_MESSAGE``)."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self.error: str | None = None
        self.done = trio.Event()

    def take(self, part: object, last: bool) -> None:
        if isinstance(part, list):
            self.items.extend(part)
        elif isinstance(part, dict) and isinstance(part.get("error"), str):
            self.error = part["error"]
        else:
            self.items.append(part)
        if last:
            self.done.set()


def _count(items: list[object]) -> int:
    return sum(item for item in items if isinstance(item, int) and not isinstance(item, bool))


class WorkerExited(Exception):
    """A worker process ended without being asked to."""


@dataclass
class TurnWorker:
    """One TURN worker process, supervised like any component; see the module docstring."""

    pool: WorkerPool
    index: int
    name: str = ""
    #: the worker's counters as it last reported them (every second)
    samples: dict[str, float] = field(default_factory=dict)
    #: the counters (``_total``, histograms) of this worker's earlier processes: a restart
    #: starts its counters at zero, and ``/metrics`` must not go backwards; per-user series
    #: are kept under ``user="other"`` (``turn.settings.retired_name``), so that the names of
    #: users from every past process are not kept forever
    retired: dict[str, float] = field(default_factory=dict)
    pid: int | None = None
    _control: socket.socket | None = None
    _draining: bool = False
    #: admin requests sent to the worker and not yet answered, by id (see ``_ask``)
    _asked: dict[int, _Answer] = field(default_factory=dict)
    _ask_ids: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.name = self.name or f"turn-worker-{self.index}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Spawn the worker, report started once it serves, and wait for it to end."""
        listeners = self.pool.sockets_for(self.index)
        control, control_child = socket_pair()
        quota, quota_child = socket_pair()
        child_fds = [control_child.fileno(), quota_child.fileno(), *(s.fileno() for s in listeners)]
        try:
            process = await trio.lowlevel.open_process(
                self._command(child_fds),
                pass_fds=child_fds,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
            )
        except BaseException:
            control.close()
            quota.close()
            raise
        finally:
            control_child.close()
            quota_child.close()
        self.pid = process.pid
        owner = next(self.pool.owners)  # this process's slots in the quota book
        self._control = control
        self.pool.controls[self.index] = control
        self._draining = False
        trio_control = trio.socket.from_stdlib_socket(control)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_quotas, quota, owner)
                await trio_control.send(encode_message(self.pool.spec(self.index)))
                with trio.fail_after(START_TIMEOUT):
                    await self._until_bound(trio_control, process)
                log.info("worker-started", extra=fields(worker=self.index, pid=process.pid))
                task_status.started()
                await self._follow(trio_control)
                status = await process.wait()
                if not self._draining:
                    raise WorkerExited(f"{self.name} (pid {process.pid}) exited: {status}")
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(process)
            self._control = None
            self.pool.controls.pop(self.index, None)
            for answer in self._asked.values():  # nobody is left to answer them
                answer.take({"error": "the worker exited"}, True)
            for name, value in self.samples.items():
                if is_cumulative(name):
                    kept = retired_name(name)
                    self.retired[kept] = self.retired.get(kept, 0.0) + value
            self.samples = {}
            trio_control.close()
            quota.close()
            returned = self.pool.quotas.drop_owner(owner)
            if returned:
                log.info("worker-quota-returned", extra=fields(worker=self.index, slots=returned))

    def _command(self, child_fds: Sequence[int]) -> list[str]:
        control, quota, *listeners = child_fds
        return [
            sys.executable,
            "-P",  # nothing from the working directory on sys.path (a signal/ would shadow ours)
            "-m",
            "secureconnect.turnworker",
            str(control),
            str(quota),
            ",".join(map(str, listeners)),
        ]

    @staticmethod
    def _environment() -> dict[str, str]:
        """Ours, with our ``sys.path``: the worker imports what we import (a venv, the single
        file's extracted site-packages, a source tree on PYTHONPATH)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.pop("NOTIFY_SOCKET", None)  # systemd hears from the parent only
        env.pop("WATCHDOG_PID", None)
        return env

    async def _until_bound(self, control: trio.socket.SocketType, process: trio.Process) -> None:
        while True:
            message = await self._receive(control)
            if message is None:
                status = await process.wait()
                raise WorkerExited(f"{self.name} exited before it served: status {status}")
            if message[0] == "bound":
                return

    async def _follow(self, control: trio.socket.SocketType) -> None:
        """Take the worker's reports until it closes its end (it exits)."""
        while (message := await self._receive(control)) is not None:
            if message[0] == "admin" and len(message) == 4:
                answer = self._asked.get(message[1]) if isinstance(message[1], int) else None
                if answer is not None:
                    answer.take(message[2], bool(message[3]))
            elif message[0] == "metrics" and len(message) == 2 and isinstance(message[1], dict):
                self.samples = {
                    str(name): float(value)
                    for name, value in message[1].items()
                    if isinstance(value, int | float)
                }

    @staticmethod
    async def _receive(control: trio.socket.SocketType) -> Any:
        """The worker's next report (JSON, never unpickled here); None once it is gone or has
        sent something that is not a report (it is stopped then: see ``serve``)."""
        try:
            message = decode_report(await control.recv(MAX_MESSAGE))
        except (EOFError, OSError):
            return None
        except ValueError as exc:
            log.error("worker-bad-report", extra=fields(error=repr(exc)))
            return None
        return message if isinstance(message, list) and message else None

    async def _serve_quotas(self, quota: socket.socket, owner: int) -> None:
        """The quota service for this worker in a thread; shut down to end it."""
        try:
            await trio.to_thread.run_sync(
                self.pool.quotas.serve,
                quota,
                owner,
                abandon_on_cancel=True,
                limiter=self.pool.threads,  # not trio's default limiter, which DNS shares
            )
        finally:
            with contextlib.suppress(OSError):
                quota.shutdown(socket.SHUT_RDWR)  # wakes the thread's recv

    async def _stop(self, process: trio.Process) -> None:
        """End the process: it is asked (its control socket closes) and killed if it lingers."""
        if process.returncode is None and self._control is not None:
            with contextlib.suppress(OSError):
                self._control.shutdown(socket.SHUT_RDWR)
        with trio.move_on_after(STOP_GRACE):
            await process.wait()
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()

    def begin_drain(self) -> None:
        """Ask the worker to drain; it exits when done (``serve`` then returns)."""
        self._draining = True
        self._tell(("drain",))

    def reload(self) -> None:
        """Send the worker the TURN secrets the parent has just (re)loaded."""
        self._tell(("reload", self.pool.spec(self.index).secrets))

    def _tell(self, message: tuple[Any, ...]) -> None:
        if self._control is None:
            return
        try:
            send_message(self._control, message)
        except OSError as exc:
            log.warning("worker-unreachable", extra=fields(worker=self.index, error=str(exc)))

    # -- the operator's commands, answered by the worker (docs/admin.md) ---------------------

    async def admin_sessions(self, user: str | None) -> list[dict[str, object]]:
        """The worker's allocations, as its own ``TurnServer.admin_sessions`` lists them."""
        return [r for r in await self._ask({"op": "sessions", "user": user}) if isinstance(r, dict)]

    async def admin_kill(
        self, *, user: str | None = None, allocation: str | None = None, peer: str | None = None
    ) -> int:
        request = {"op": "kill", "user": user, "allocation": allocation, "peer": peer}
        return _count(await self._ask(request))

    async def admin_revoked(self, user: str | None) -> int:
        """The worker re-reads the revocation list, then ends ``user``'s allocations."""
        return _count(await self._ask({"op": "revoked", "user": user}))

    async def _ask(self, request: Mapping[str, object]) -> list[object]:
        """Send the worker an admin request and wait for every part of its answer (the
        admin server bounds the wait). RuntimeError when the worker is not running or says
        the request failed."""
        if self._control is None:
            raise RuntimeError("the worker is not running")
        ident = next(self._ask_ids)
        answer = self._asked[ident] = _Answer()
        try:
            send_message(self._control, ("admin", ident, request))
            await answer.done.wait()
        except OSError as exc:
            raise RuntimeError(f"the worker cannot be reached: {exc}") from None
        finally:
            del self._asked[ident]
        if answer.error is not None:
            raise RuntimeError(answer.error)
        return answer.items

    def metrics(self) -> dict[str, float]:
        """The worker's counters as last reported, its earlier processes' totals added
        (``/metrics`` sums them with the other workers' and the parent's)."""
        merged = dict(self.retired)
        for name, value in self.samples.items():
            merged[name] = merged.get(name, 0.0) + value
        return merged
