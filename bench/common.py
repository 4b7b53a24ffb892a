"""Helpers shared by the benchmarks: /proc readers, server launchers, percentiles, limits.

The benchmarks compare our server with coturn on the same machine in the same run, so they all
need the same few measurements (a process's CPU seconds and resident set from /proc), the same
launchers (``tests/support/servers.py``, which the interop tests use too, put on the import path
here once) and the same readiness probe. Keeping them in one module means every figure in
``bench/results/latest.md`` is measured the same way.
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests" / "support") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "support"))

from servers import TurnTarget, coturn, secureconnect_turn  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("coturn", "secureconnect")


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (our TURN workers, docs/workers.md), every
    thread counted: see :func:`own_cpu`."""
    return own_cpu(pid) + sum(own_cpu(child) for child in children(pid))


def own_cpu(pid: int) -> float:
    """CPU seconds of one process: its live threads' run time in nanoseconds (schedstat), plus
    what its exited threads used, which only the process's utime+stime still hold, in clock
    ticks. Ticks alone (10 ms) made a relay run of 30,000 round trips a count of ~10 ticks."""
    try:
        total = _ticks(f"/proc/{pid}/stat")
        live_ticks, live_ns = 0, 0
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                ticks = _ticks(f"/proc/{pid}/task/{task}/stat")
                ns = int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile: counted in the process's ticks
            live_ticks, live_ns = live_ticks + ticks, live_ns + ns
    except (FileNotFoundError, ProcessLookupError):
        return 0.0  # a child that has exited
    return live_ns / 1e9 + max(0, total - live_ticks) / CLK_TCK


def _ticks(path: str) -> int:
    """utime+stime (fields 14 and 15 of proc(5)) of a ``stat`` file, in clock ticks."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def rss_kib(pid: int) -> int:
    """The resident set (VmRSS) of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_udp_ready(target: TurnTarget, timeout: float = 10.0) -> None:
    """Wait until the server answers a STUN Binding request over UDP (the launchers only wait
    for the TCP listener; coturn may open its UDP listener a moment later)."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                probe.sendto(request, (target.host, target.port))
                if probe.recv(2048)[8:20] == request[8:20]:
                    return
            except OSError:  # timeout, or ICMP port unreachable while the listener starts
                time.sleep(0.1)
    raise RuntimeError(f"{target.name} did not answer STUN over UDP within {timeout:.0f} s")


def server_for(
    name: str, workdir: Path, coturn_extra: tuple[str, ...] = (), workers: int = 1
) -> AbstractContextManager[TurnTarget]:
    """A fresh coturn or ``secureconnect run turn`` in ``workdir``; ``coturn_extra`` are extra
    coturn config lines (our server's defaults already suit the benchmarks), ``workers`` our
    ``turn.workers`` (docs/workers.md)."""
    if name == "coturn":
        return coturn(workdir, *coturn_extra)
    return secureconnect_turn(workdir, *([f"turn.workers={workers}"] if workers > 1 else []))


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to ``needed`` (children, i.e. the servers, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"need {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``samples`` (at least two), and their count."""
    ordered = sorted(samples)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": cut[49], "p99": cut[98], "max": ordered[-1], "n": len(ordered)}
