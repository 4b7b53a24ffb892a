"""Which NAT labs run on this machine: lab ids, their locks and their names.

Several labs can run at once (pytest-xdist workers, two CI jobs): each has a lab id N from 0 to
:data:`MAX_LABS` - 1, namespace names that start with ``scnl-N-`` and an exclusive ``flock`` on
``/run/secureconnect-natlab-N.lock``, which the kernel drops when its holder dies, so a crashed
run never blocks the next one. (docs/natlab.md)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

PREFIX = "scnl-"
MAX_LABS = 32  # lab ids 0..31: labs at once on one machine
LOCK_DIR = Path("/run")  # secureconnect-natlab-N.lock, one per lab id


class LabError(Exception):
    """Building, using or tearing down the lab failed; the message says which command and why."""


class LabBusy(LabError):
    """The lab id is taken (by a lab in this or another process)."""


class LabLock:
    """An exclusive ``flock`` on lab ``lab_id``'s lock file. The kernel drops it when the
    holder dies, so a crashed run never blocks the next one."""

    def __init__(self, lab_id: int) -> None:
        self.lab_id = lab_id
        self.path = LOCK_DIR / f"secureconnect-natlab-{lab_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        if not self.try_acquire():
            holder = _holder(self.path)
            raise LabBusy(
                f"another natlab is running as lab {self.lab_id} (pid {holder}, lock "
                f"{self.path}); stop it first, or use another lab id"
            )

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def free_lab() -> LabLock:
    """The lock of the first free lab id, held (LabError when all :data:`MAX_LABS` are taken)."""
    for lab_id in range(MAX_LABS):
        lock = LabLock(lab_id)
        if lock.try_acquire():
            return lock
    raise LabBusy(f"all {MAX_LABS} lab ids are in use on this machine")


def lab_prefix(lab_id: int) -> str:
    """The start of every namespace name of lab ``lab_id``."""
    return f"{PREFIX}{lab_id}-"
