"""The status board: the live view of the running components that signaling's ``/healthz`` and
``/metrics`` read.

It is an explicit object rather than a global so that the three parties meet without importing
each other: the runtime fills in the metric sources as it builds the components, the CLI points
:attr:`StatusBoard.states` at the supervisor's live state table, and the signaling routes are
handed the two bound methods (they never see the board's type, nor the supervisor). Reads are
computed on demand, so a scrape sees the state of that moment.

This module imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass
class StatusBoard:
    """The components' states (name -> ``starting``/``running``/``restarting``/...) and the
    callables that report their counters."""

    states: dict[str, str] = field(default_factory=dict)
    sources: list[Callable[[], Mapping[str, float]]] = field(default_factory=list)
    #: parts a component depends on (e.g. ``signal-backplane``), each reporting ``running`` or
    #: what is wrong; anything but ``running`` makes ``/healthz`` say degraded
    checks: dict[str, Callable[[], str]] = field(default_factory=dict)

    def health(self) -> dict[str, str]:
        """A copy of the states and the checks' answers, for ``/healthz``."""
        return {**self.states, **{name: check() for name, check in self.checks.items()}}

    @property
    def draining(self) -> bool:
        """Whether a graceful drain is under way (the node registry says so)."""
        return "draining" in self.states.values()

    def metrics(self) -> list[Mapping[str, float]]:
        """Every source's counters as of now, for ``/metrics``."""
        return [source() for source in self.sources]
