"""``secureconnect drain``: the graceful drain of a rolling upgrade, from outside the process.

A running appliance drains on SIGUSR2 (:meth:`~secureconnect.supervisor.Supervisor.request_drain`):
``/healthz`` says ``draining`` (load balancers stop sending clients), signaling closes its
WebSockets with 1001 so clients reconnect (and, with a Redis backplane, resume) on another node,
TURN sends new allocations to ``turn.alternate_servers`` (300) or refuses them (486), and the
process exits 0 once the allocations in progress have ended or ``general.drain_deadline`` has
passed (docs/cluster.md).

This command finds the processes to drain (``--pid``, or the pid files ``secureconnect run``
keeps in the state directory, one per set of components: ``run-all.pid``, ``run-turn.pid``...),
checks that each is a secureconnect process (a stale pid file may name someone else's), sends
SIGUSR2 and, with ``--wait``, waits until they have exited. Under systemd:
``ExecStop=secureconnect drain --pid $MAINPID --wait`` with ``TimeoutStopSec=`` above the
deadline.

Exit status: 0 when every process was told (and, with ``--wait``, has exited), 1 when none was
found or one outlived ``--timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

POLL = 0.2  # seconds between looks at whether a drained process has exited


def pid_file(state_dir: Path, components: Sequence[str]) -> Path:
    """Where ``secureconnect run COMPONENTS`` keeps its pid."""
    return state_dir / f"run-{'-'.join(sorted(components)) or 'all'}.pid"


@contextlib.contextmanager
def keep_pid_file(path: Path) -> Iterator[None]:
    """Write this process's pid to ``path`` for the block (removed after, if still ours)."""
    try:
        path.write_text(f"{os.getpid()}\n")
    except OSError:  # a read-only state directory: drain by --pid then
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()


def add_drain_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    drain = commands.add_parser(
        "drain", help="drain running appliances gracefully (rolling upgrades), then they exit"
    )
    drain.add_argument(
        "--pid", type=int, action="append", default=[], help="the process to drain (repeatable)"
    )
    drain.add_argument("--wait", action="store_true", help="wait until the processes exit")
    drain.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait (general.drain_deadline + 30)"
    )


def run_drain(args: argparse.Namespace, state_dir: Path, deadline: float) -> int:
    """Send SIGUSR2 to each process; see the module docstring."""
    pids = list(args.pid) or _pids_in(state_dir)
    pids = [pid for pid in pids if _is_ours(pid)]
    if not pids:
        where = "the given pids" if args.pid else f"pid files in {state_dir}"
        print(f"secureconnect: no running secureconnect process found ({where})", file=sys.stderr)
        return 1
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
        print(f"draining {pid}", flush=True)
    if not args.wait:
        return 0
    timeout = args.timeout if args.timeout is not None else deadline + 30
    ends = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < ends:
        time.sleep(POLL)
    if alive:
        print(f"secureconnect: still running after {timeout:g} s: {alive}", file=sys.stderr)
        return 1
    print("drained", flush=True)
    return 0


def _pids_in(state_dir: Path) -> list[int]:
    pids = []
    for path in sorted(state_dir.glob("run-*.pid")):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(path.read_text().strip()))
    return pids


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` runs ``secureconnect run`` (its command line says so)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"secureconnect" in part for part in argv) and b"run" in argv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text()
        return status.rsplit(")", 1)[1].split()[0] != "Z"
    return False
