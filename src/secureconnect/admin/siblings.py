"""The other processes' metrics in this one's ``/metrics`` (docs/metrics.md, "Metrics from every
process").

Run as per-component units, STUN, TURN and signaling are separate processes, and only signaling
serves HTTP. Rather than a metrics port per process (each a port to open, secure and scrape, all
from one config file), the process that serves ``/metrics`` asks its siblings — every other
admin socket of the node (:mod:`.paths`) — for their samples every :data:`INTERVAL` seconds and
adds them to its own: one scrape target per node whichever way it runs. A sibling that does not
answer drops out until it answers again (its counters restart from what it then reports, which
Prometheus reads as a reset when it restarted). The admin ``metrics`` command answers with the
process's own samples only, so no process counts another's twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from secureconnect.admin.client import AdminUnreachable, ask
from secureconnect.admin.paths import find_sockets
from secureconnect.admin.protocol import request_line
from secureconnect.logs import fields

log = logging.getLogger("secureconnect.admin")

INTERVAL: Final = 2.0  # seconds between asks: half Prometheus' shortest usual scrape interval
TIMEOUT: Final = 2.0  # seconds one sibling may take


@dataclass
class SiblingMetrics:
    """Samples of the node's other processes, refreshed by :meth:`run`."""

    dirs: Sequence[Path]
    own: Path  # this process's socket, never asked
    samples: dict[Path, dict[str, float]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Every sibling's last samples, summed (a board source)."""
        summed: dict[str, float] = {}
        for samples in self.samples.values():
            for name, value in samples.items():
                summed[name] = summed.get(name, 0.0) + value
        return summed

    async def run(self) -> None:
        """Ask the siblings every :data:`INTERVAL` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here costs the siblings' samples, never the process
                log.exception("sibling-metrics-failed")
            await trio.sleep(INTERVAL)

    async def refresh(self) -> None:
        found = [path for path in find_sockets(self.dirs) if path != self.own]
        for gone in set(self.samples) - set(found):
            del self.samples[gone]
        for path in found:
            try:
                reply = await trio.to_thread.run_sync(ask, path, request_line("metrics"), TIMEOUT)
            except AdminUnreachable as exc:
                if self.samples.pop(path, None) is not None:
                    log.warning("sibling-metrics-lost", extra=fields(reason=str(exc)))
                continue
            samples = reply.get("samples")
            if reply.get("ok") and isinstance(samples, dict):
                self.samples[path] = {
                    str(name): float(value)
                    for name, value in samples.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)
                }
