"""What the relay benchmark reads from /proc while a run goes on: per-thread CPU time of a
process, the machine's busy ticks, a process's sockets and their UDP drop counters, and the
:class:`Sampler` thread that samples them every ``SAMPLE_INTERVAL`` to find the window in which
the server was busy relaying (see bench/turn_relay.py and bench/README.md)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

SAMPLE_INTERVAL = 0.05  # seconds between CPU samples of the server
DROPS_EVERY = 5  # socket drop counters are read every DROPS_EVERY samples
BUSY_FLOOR = 0.02  # a sample interval counts as busy above 2% of a core ...
BUSY_OF_PEAK = 0.10  # ... and above 10% of the run's busiest interval
NCPU = os.cpu_count() or 1


# -- /proc readers -------------------------------------------------------------------------


def threads_cpu_ns(pid: int) -> int:
    """Nanosecond CPU time of the process's live threads (for fine-grained busy detection)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread exited meanwhile
    return total


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user/nice
    return total - idle, total


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process has open."""
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def udp_drops() -> dict[int, tuple[int, int]]:
    """(local port, kernel drop count) of every UDP socket in this netns, by inode; a drop is a
    datagram that arrived while the socket's receive buffer was full."""
    drops: dict[int, tuple[int, int]] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 13:
                port = int(parts[1].rsplit(":", 1)[1], 16)
                drops[int(parts[9])] = (port, int(parts[12]))
    return drops


def find_pid(binary: str, needle: str) -> int | None:
    """The pid of a running ``binary`` whose command line contains ``needle``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(binary.encode()) and needle.encode() in argv:
            return int(entry)
    return None


# -- sampling during a run -----------------------------------------------------------------


class Sample(NamedTuple):
    """One sample: monotonic time, CPU ns of server, client and peer, machine jiffies."""

    t: float
    server: int
    client: int
    peer: int
    busy: int
    total: int


@dataclass(frozen=True)
class Window:
    """The busy window of one run: its length and the CPU (seconds) used inside it."""

    seconds: float
    server_cpu: float
    client_cpu: float
    peer_cpu: float
    machine_cores: float  # busy cores of the whole machine, on average


class Sampler(threading.Thread):
    """Samples CPU use (server, client, peer, machine) every SAMPLE_INTERVAL and the UDP drop
    counters of the server's, the peer's and the client's sockets; bounded by a deadline."""

    def __init__(self, server_pid: int, peer_pid: int | None, deadline: float) -> None:
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.peer_pid = peer_pid
        self.client_pid: int | None = None
        self.deadline = deadline
        self.samples: list[Sample] = []
        self.first_drops: dict[int, int] = {}
        self.last_drops: dict[int, int] = {}
        self.owners: dict[int, str] = {}  # inode -> "server" | "peer" | "client"
        self.ports: dict[int, int] = {}  # inode -> local port
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        count = 0
        while not self._stop_event.is_set() and time.monotonic() < self.deadline:
            busy, total = machine_busy_ticks()
            client = threads_cpu_ns(self.client_pid) if self.client_pid else 0
            peer = threads_cpu_ns(self.peer_pid) if self.peer_pid else 0
            server = threads_cpu_ns(self.server_pid)
            self.samples.append(Sample(time.monotonic(), server, client, peer, busy, total))
            if count % DROPS_EVERY == 0:
                self.sample_drops()
            count += 1
            self._stop_event.wait(SAMPLE_INTERVAL)
        self.sample_drops()

    def sample_drops(self) -> None:
        """Remember the first and last drop count of every socket the three processes own."""
        owners = (("server", self.server_pid), ("peer", self.peer_pid), ("client", self.client_pid))
        for name, pid in owners:
            if pid is not None:
                for inode in socket_inodes(pid):
                    self.owners.setdefault(inode, name)
        for inode, (port, count) in udp_drops().items():
            if inode in self.owners:
                self.ports[inode] = port
                self.first_drops.setdefault(inode, count)
                self.last_drops[inode] = count

    def drops(self, owner: str, port: int | None = None, *, on_port: bool = True) -> int:
        """Drops on ``owner``'s UDP sockets during the run; with ``port``, only on the socket
        bound to it (``on_port``) or only on the others."""
        return sum(
            self.last_drops[inode] - self.first_drops[inode]
            for inode, name in self.owners.items()
            if name == owner
            and inode in self.last_drops
            and (port is None or (self.ports[inode] == port) == on_port)
        )

    def peak_server_util(self, span: float = 0.5) -> float:
        """The server's highest CPU use (cores) over any ``span`` seconds of the run."""
        best = 0.0
        samples = self.samples
        j = 0
        for i in range(len(samples)):
            while j < i and samples[i].t - samples[j].t > span:
                j += 1
            elapsed = samples[i].t - samples[j].t
            if elapsed >= span * 0.8:
                best = max(best, (samples[i].server - samples[j].server) / 1e9 / elapsed)
        return best

    def busy_window(self, after: float) -> Window | None:
        """The span in which the server was busy after ``after`` (uclient's connect phase):
        from the first to the last sample interval above the busy threshold."""
        steps = [
            (a.t, b.t, (b.server - a.server) / 1e9 / (b.t - a.t))
            for a, b in zip(self.samples, self.samples[1:], strict=False)
            if b.t > a.t and b.t > after
        ]
        if not steps:
            return None
        threshold = max(BUSY_FLOOR, BUSY_OF_PEAK * max(rate for _, _, rate in steps))
        busy = [(t0, t1) for t0, t1, rate in steps if rate >= threshold]
        if not busy:
            return None
        start, end = busy[0][0], busy[-1][1]
        inside = [s for s in self.samples if start <= s.t <= end]
        first, last = inside[0], inside[-1]
        jiffies = last.total - first.total
        return Window(
            seconds=end - start,
            server_cpu=(last.server - first.server) / 1e9,
            client_cpu=(last.client - first.client) / 1e9,
            peer_cpu=(last.peer - first.peer) / 1e9,
            machine_cores=NCPU * (last.busy - first.busy) / jiffies if jiffies else 0.0,
        )
