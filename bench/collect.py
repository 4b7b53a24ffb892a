"""The results collector the benchmark sections share: :class:`Row` and :class:`Bench`.

Each section of ``bench/run.py`` (and ``bench/capacity.py``) appends rows - one figure per server
and their ratio - raw measurements and the exact commands it ran to one :class:`Bench`, which the
report writer turns into ``bench/results/latest.md`` and ``latest.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ROOT, SERVERS

BENCH = ROOT / "bench"


@dataclass
class Row:
    """One line of the results table: a figure for each server and, if both exist, the ratio."""

    section: str
    metric: str
    ours: float | None
    coturn: float | None
    unit: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.coturn is None or self.coturn == 0:
            return None
        return self.ours / self.coturn


class Bench:
    """Collects rows, raw results and the exact commands while the sections run."""

    def __init__(self, workroot: Path, rounds: int, log: Callable[[str], None]) -> None:
        self.workroot = workroot
        self.rounds = rounds
        self.log = log
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}
        self.commands: dict[str, list[str]] = {}
        self.timings: dict[str, float] = {}
        self.failures: list[str] = []
        self._n = 0

    def workdir(self, label: str) -> Path:
        """A fresh directory for one server start (config, logs, state)."""
        self._n += 1
        path = self.workroot / f"{self._n:03d}-{label}"
        path.mkdir()
        return path

    def order(self, rnd: int) -> tuple[str, ...]:
        """Both servers, the first one alternating per round so that drift cancels out."""
        return SERVERS if rnd % 2 == 0 else SERVERS[::-1]

    def generator(self, name: str, args: list[str], timeout: float) -> dict[str, Any]:
        """Run one of our generator scripts in its own process; its JSON line."""
        argv = [sys.executable, str(BENCH / args[0]), *args[1:]]
        self.commands.setdefault(name, [" ".join(argv)])
        done = subprocess.run(  # noqa: S603 - our own scripts with fixed arguments
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()[-400:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
