"""Prometheus text exposition (format 0.0.4) of the components' samples.

Components report ``{"name{label=\"v\"}": value}`` dicts (``TurnCore.metrics``,
``SignalHub.metrics``, ...); this renders them with one ``# TYPE`` line per metric family:
``histogram`` for a family with ``_bucket{le=...}`` samples (its ``_bucket``, ``_sum`` and
``_count`` samples are one family, buckets in increasing ``le`` order; see
:class:`secureconnect.accounting.Histogram`), ``counter`` for names ending in ``_total``,
``gauge`` otherwise. Pure function, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from secureconnect.accounting import HISTOGRAM_SUFFIXES, number_text

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LE = re.compile(r'(?:^|,)le="([^"]*)"')


def render(sources: Iterable[Mapping[str, float]]) -> str:
    """All samples of all sources, grouped by family, as exposition text. A name reported by
    several sources (the processes of one component: TURN's workers and the main process,
    docs/workers.md) is one sample, their sum: every sample is a count (a histogram's buckets
    are cumulative counts over the same bounds), so the sum is the component's."""
    summed: dict[str, float] = {}
    for samples in sources:
        for name, value in samples.items():
            summed[name] = summed.get(name, 0.0) + value
    histograms = {
        base.removesuffix("_bucket")
        for name in summed
        if (base := name.split("{", 1)[0]).endswith("_bucket") and _LE.search(_labels(name))
    }
    families: dict[str, list[tuple[str, float]]] = {}
    for name, value in summed.items():
        families.setdefault(_family(name, histograms), []).append((name, value))
    lines: list[str] = []
    for family in sorted(families):
        rows = families[family]
        if family in histograms:
            kind = "histogram"
            rows.sort(key=_histogram_order)
        else:
            kind = "counter" if family.endswith("_total") else "gauge"
        lines.append(f"# TYPE {family} {kind}")
        lines.extend(f"{name} {number_text(value)}" for name, value in rows)
    return "\n".join(lines) + "\n"


def _labels(name: str) -> str:
    return name.partition("{")[2].removesuffix("}")


def _family(name: str, histograms: set[str]) -> str:
    base = name.split("{", 1)[0]
    for suffix in HISTOGRAM_SUFFIXES:
        if base.endswith(suffix) and base.removesuffix(suffix) in histograms:
            return base.removesuffix(suffix)
    return base


def _histogram_order(sample: tuple[str, float]) -> tuple[str, int, float]:
    """Per label set (``le`` aside): buckets by bound, then ``_sum``, then ``_count``."""
    name = sample[0]
    base, labels = name.split("{", 1)[0], _labels(name)
    match = _LE.search(labels)
    rest = _LE.sub("", labels).strip(",") if match else labels
    if base.endswith("_bucket") and match:
        bound = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
        return rest, 0, bound
    return rest, 1 if base.endswith("_sum") else 2, 0.0
