"""Prometheus text exposition (format 0.0.4) of the components' samples.

Components report ``{"name{label=\"v\"}": value}`` dicts (``TurnCore.metrics``,
``SignalHub.metrics``, ...); this renders them with one ``# TYPE`` line per metric family:
``counter`` for names ending in ``_total``, ``gauge`` otherwise. Pure function, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(sources: Iterable[Mapping[str, float]]) -> str:
    """All samples of all sources, grouped by family, as exposition text. A name reported by
    several sources (the processes of one component: TURN's workers and the main process,
    docs/workers.md) is one sample, their sum: every sample is a count, so the sum is the
    component's."""
    summed: dict[str, float] = {}
    for samples in sources:
        for name, value in samples.items():
            summed[name] = summed.get(name, 0.0) + value
    families: dict[str, list[tuple[str, float]]] = {}
    for name, value in summed.items():
        families.setdefault(name.split("{", 1)[0], []).append((name, value))
    lines: list[str] = []
    for family in sorted(families):
        kind = "counter" if family.endswith("_total") else "gauge"
        lines.append(f"# TYPE {family} {kind}")
        lines.extend(f"{name} {_number(value)}" for name, value in families[family])
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))
