"""A TURN worker process (``turn.workers``, docs/workers.md): the worker's side.

The parent (:class:`~secureconnect.workers.TurnWorker`) starts it as::

    python -P -m secureconnect.turnworker CONTROL_FD QUOTA_FD LISTENER_FD[,LISTENER_FD...]

with the file descriptors inherited. The first message on the control socket is the
:class:`~secureconnect.workers.WorkerSpec`; the worker builds a TURN server that serves UDP on
the listening sockets it was given (its share of each reuseport group), takes relay ports from its
slice of the range and asks the parent's quota book over the quota socket, then says ``bound``.
From then on it reports its counters every second and obeys ``reload`` (new TURN secrets, sent
when the parent gets SIGHUP), ``block-user`` (a static user's backoff, counted over every
process), ``admin`` (an operator's command, docs/admin.md: answered in one or more ``admin``
reports; ``revoked`` re-reads the revocation list the parent wrote) and ``drain``. It ends
when the parent closes the control socket (the parent stops, dies, or restarts it), and an
error in the server ends the process: the parent starts a fresh one, and the other workers
never notice.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from secureconnect.admin.store import load_revocations
from secureconnect.credentials import CredentialMinter
from secureconnect.logs import configure_logging, fields
from secureconnect.runtime import Runtime, build_turn
from secureconnect.turn.serve import TurnServer
from secureconnect.turn.workerlink import (
    MAX_MESSAGE,
    RemoteQuotas,
    ReportedUserBackoff,
    decode_message,
    encode_report,
    receive_message,
)
from secureconnect.workers import WorkerSpec

log = logging.getLogger("secureconnect.turnworker")

METRICS_INTERVAL = 1.0  # seconds between counter reports to the parent
#: JSON per admin answer part: a SOCK_SEQPACKET message must fit the socket's send buffer
#: (net.core.wmem_default, 208 KiB on Linux), far below MAX_MESSAGE
ADMIN_PART_BYTES = 64 * 1024


def build_worker(
    spec: WorkerSpec, listeners: Sequence[socket.socket], quota: socket.socket
) -> tuple[TurnServer, CredentialMinter, ReportedUserBackoff]:
    """The worker's TURN server (UDP on ``listeners`` only), its credential minter and its
    share of the static users' backoff."""
    minter = CredentialMinter(spec.secrets)
    link = RemoteQuotas(quota)
    backoff = ReportedUserBackoff(link)
    runtime = Runtime(
        spec.config,
        spec.config_path,
        state_dir=Path("/nonexistent"),  # everything read from it came in the spec
        certificate=None,
        minter=minter,
        nonces=spec.nonces,
    )
    if spec.revocations_file is not None:  # RevocationError: the worker does not start
        runtime.revocations = load_revocations(spec.revocations_file)
    server = build_turn(
        runtime,
        udp_sockets=listeners,
        streams=False,
        port_range=spec.port_range,
        quotas=link,
        other_services=spec.other_services,
        user_backoff=backoff,
    )
    server.name = f"turn-worker-{spec.index}"
    return server, minter, backoff


async def serve_worker(
    spec: WorkerSpec,
    server: TurnServer,
    minter: CredentialMinter,
    backoff: ReportedUserBackoff,
    control: socket.socket,
) -> None:
    """Serve until the parent closes the control socket or a drain completes."""
    channel = trio.socket.from_stdlib_socket(control)
    async with trio.open_nursery() as nursery:

        async def run_server(*, task_status: trio.TaskStatus[None]) -> None:
            await server.serve(task_status=task_status)
            nursery.cancel_scope.cancel()  # drained: the process ends

        await nursery.start(run_server)
        await channel.send(encode_report(["bound", list(server.bound)]))
        log.info("worker-serving", extra=fields(worker=spec.index, pid=os.getpid()))
        nursery.start_soon(_report_metrics, server, channel)
        while True:
            try:
                message = decode_message(await channel.recv(MAX_MESSAGE))
            except (EOFError, OSError):
                break  # the parent is gone or wants us gone
            if message[0] == "reload":
                minter.replace_secrets(message[1])
                log.info("reloaded", extra=fields(what="turn-secrets", worker=spec.index))
            elif message[0] == "drain":
                server.begin_drain()
            elif message[0] == "block-user":  # a static user backs off in every process
                backoff.block(message[1], message[2], time.time())
            elif message[0] == "admin":
                nursery.start_soon(_answer_admin, spec, server, channel, message[1], message[2])
        nursery.cancel_scope.cancel()


async def _answer_admin(
    spec: WorkerSpec,
    server: TurnServer,
    channel: trio.socket.SocketType,
    ident: int,
    request: dict[str, Any],
) -> None:
    """Answer the parent's admin request ``ident`` (see ``TurnWorker._ask``): a listing in
    parts of at most ``ADMIN_PART_BYTES`` of JSON, a count in one."""
    try:
        op = request["op"]
        if op == "sessions":
            records = await server.admin_sessions(request["user"])
            for part, last in _parts(records):
                await channel.send(encode_report(["admin", ident, part, last]))
            return
        if op == "kill":
            count = await server.admin_kill(
                user=request["user"], allocation=request["allocation"], peer=request["peer"]
            )
        elif op == "revoked":
            if spec.revocations_file is not None:
                revocations = server.parts.auth.revocations
                revocations.replace(load_revocations(spec.revocations_file))
            count = await server.admin_revoked(request["user"])
        else:
            count = 0  # a parent newer than this worker: nothing here to do
        await channel.send(encode_report(["admin", ident, [count], True]))
    except Exception as exc:  # the parent waits for an answer: it gets the error
        log.exception("admin-request-failed", extra=fields(worker=spec.index))
        await channel.send(encode_report(["admin", ident, {"error": str(exc)}, True]))


def _parts(records: list[dict[str, object]]) -> list[tuple[list[dict[str, object]], bool]]:
    """``records`` cut into parts of at most about ``ADMIN_PART_BYTES`` of JSON each (at
    least one part, the last marked)."""
    parts: list[list[dict[str, object]]] = [[]]
    size = 0
    for record in records:
        length = len(json.dumps(record))
        if size + length > ADMIN_PART_BYTES and parts[-1]:
            parts.append([])
            size = 0
        parts[-1].append(record)
        size += length
    return [(part, index == len(parts) - 1) for index, part in enumerate(parts)]


async def _report_metrics(server: TurnServer, channel: trio.socket.SocketType) -> None:
    while True:
        await channel.send(encode_report(["metrics", server.metrics()]))
        await trio.sleep(METRICS_INTERVAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (see the module docstring); exit status 0 when told to stop, 2 on misuse."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print("usage: python -m secureconnect.turnworker CONTROL QUOTA LISTENERS", file=sys.stderr)
        return 2
    control = socket.socket(fileno=int(args[0]))
    quota = socket.socket(fileno=int(args[1]))
    listeners = [socket.socket(fileno=int(fd)) for fd in args[2].split(",") if fd]
    for sock in listeners:
        sock.setblocking(False)
    spec = receive_message(control)
    if not isinstance(spec, WorkerSpec):
        print("secureconnect.turnworker: the first message is not a WorkerSpec", file=sys.stderr)
        return 2
    general = spec.config.general
    configure_logging(general.log_level, general.log_format)
    server, minter, backoff = build_worker(spec, listeners, quota)
    trio.run(serve_worker, spec, server, minter, backoff, control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
