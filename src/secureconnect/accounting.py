"""Bounded accounting for ``/metrics``: fixed-bucket histograms and a top-N table.

Both keep their memory fixed however many observations, or distinct keys, come and go, and both
report Prometheus samples, ``{"name{labels}": value}`` (what every component's ``metrics()``
returns and :mod:`secureconnect.signal.exposition` renders). Samples of several processes are
summed by name (TURN's workers, docs/workers.md); both structures stay meaningful summed:

* :class:`Histogram`: cumulative bucket counts, ``_sum`` and ``_count`` (a Prometheus
  histogram). Processes with the same bounds sum to the histogram of all their observations.
* :class:`TopTable`: at most ``capacity`` keys, each with exact counts since it entered the
  table, and everything else summed under :data:`OTHER`. Which keys stay is Space-Saving's
  choice (Metwally, Agrawal, El Abbadi, "Efficient Computation of Frequent and Top-k Elements
  in Data Streams", 2005), weighted: every key whose weight exceeds the total weight over
  ``capacity`` is in the table. The counts a key reports are its own since it (last) entered,
  not Space-Saving's estimate, so a key's series is an honest counter, and an evicted key's
  series ends (when it comes back it starts at 0: a counter reset, as Prometheus reads it).
  docs/metrics.md says what that means for the per-user TURN series.

Pure data structures: no I/O, no clock; the caller passes what it measured.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

#: seconds: from a failed call's few seconds to a day-long session (allocation lifetimes,
#: signaling sessions)
DURATION_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
#: the label value of what no tracked key holds
OTHER: Final = "other"
#: sample name endings of counters: summed over a process's restarts, never reset by them
#: (``workers.TurnWorker.retired``); a histogram's parts count too
CUMULATIVE_SUFFIXES: Final = ("_total", "_bucket", "_sum", "_count")
HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")


def label_value(text: str) -> str:
    """``text`` escaped for a label value of the text format (backslash, double quote, line
    feed): a user name is client-chosen text and must not end the label or the line."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def is_cumulative(name: str) -> bool:
    """Whether sample ``name`` only grows (a counter, or a part of a histogram)."""
    return name.split("{", 1)[0].endswith(CUMULATIVE_SUFFIXES)


def number_text(value: float) -> str:
    """A sample value or a bucket bound as the text format writes it: integers without a
    fraction, ``+Inf``/``-Inf``/``NaN`` by name."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Histogram:
    """Observations counted into fixed buckets (``value <= bound``), with their sum and count.

    Memory is one integer per bucket, whatever is observed; :meth:`samples` renders the
    Prometheus form (cumulative ``_bucket{le=...}``, then ``_sum`` and ``_count``)."""

    __slots__ = ("_counts", "bounds", "count", "total")

    def __init__(self, bounds: Sequence[float] = DURATION_BUCKETS) -> None:
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise ValueError("a histogram needs finite bucket bounds")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError("bucket bounds must increase")
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation (a negative one, from a clock that stepped back, as 0)."""
        value = max(0.0, value)
        self._counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def samples(self, name: str) -> dict[str, float]:
        """``name_bucket{le="..."}`` (cumulative, +Inf last), ``name_sum``, ``name_count``."""
        out: dict[str, float] = {}
        running = 0
        for bound, count in zip(self.bounds, self._counts, strict=False):
            running += count
            out[f'{name}_bucket{{le="{number_text(bound)}"}}'] = running
        out[f'{name}_bucket{{le="+Inf"}}'] = self.count
        out[f"{name}_sum"] = self.total
        out[f"{name}_count"] = self.count
        return out


class _Row:
    """A key's place in a :class:`TopTable`: its weight, its counts, and the counts as last
    reported (what a scrape may have seen under the key's own name)."""

    __slots__ = ("counts", "reported", "weight")

    def __init__(self, weight: int, size: int) -> None:
        self.weight = weight
        self.counts = [0] * size
        self.reported = [0] * size


class TopTable:
    """At most ``capacity`` keys with their counts, the rest under :data:`OTHER` (see the
    module docstring).

    Each observation is a key, a weight (what ranks keys: bytes, for TURN's users) and a tuple
    of ``size`` counts to add. A key in the table adds to its own counts and weight. A key not
    in it enters while there is room; once the table is full, an observation of weight > 0
    replaces the key of least weight (Space-Saving: the newcomer's weight starts at the evicted
    one's, an over-estimate by at most that much, used only to rank), and one of weight 0 goes
    to :data:`OTHER` (a key that relays nothing never pushes out one that did). The key
    :data:`OTHER` itself always counts under :data:`OTHER`.

    Nothing is lost or counted twice across series: what an evicted key counted since its
    counts were last :meth:`report`-ed moves to :data:`OTHER`, what was reported stays in its
    series' past (the series then ends). Summed over every label, the increases of the series
    are the increases of everything observed. Eviction scans the table (``capacity`` is
    bounded by configuration); a hit is one dict lookup.
    """

    __slots__ = ("_rows", "capacity", "evictions", "other", "size")

    def __init__(self, capacity: int, size: int) -> None:
        if capacity < 0 or size < 1:
            raise ValueError("capacity must be >= 0 and size >= 1")
        self.capacity = capacity
        self.size = size
        self._rows: dict[str, _Row] = {}
        self.other = [0] * size
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def add(self, key: str, weight: int, counts: Sequence[int]) -> None:
        """One observation of ``key``; see the class docstring."""
        rows = self._rows
        row = rows.get(key)
        if row is None:
            full = len(rows) >= self.capacity
            if key == OTHER or self.capacity == 0 or (full and weight <= 0):
                other = self.other
                for i, value in enumerate(counts):
                    other[i] += value
                return
            row = rows[key] = _Row(self._evict_lightest() if full else 0, self.size)
        row.weight += weight
        row_counts = row.counts
        for i, value in enumerate(counts):
            row_counts[i] += value

    def resize(self, capacity: int) -> None:
        """Keep at most ``capacity`` keys from now on, evicting the lightest ones first."""
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        while len(self._rows) > capacity:
            self._evict_lightest()

    def report(self) -> list[tuple[str, tuple[int, ...]]]:
        """(key, counts) of every key in the table, heaviest first, then :data:`OTHER`, as the
        samples of a scrape: from now on these counts are what the keys' series showed.
        Nothing at all when the capacity is 0 (the series are off)."""
        if self.capacity == 0:
            return []
        out: list[tuple[str, tuple[int, ...]]] = []
        for key, row in sorted(self._rows.items(), key=lambda item: -item[1].weight):
            row.reported = list(row.counts)
            out.append((key, tuple(row.counts)))
        out.append((OTHER, tuple(self.other)))
        return out

    def _evict_lightest(self) -> int:
        """Drop the key of least weight; what it counted since its last report goes to
        :data:`OTHER`. Its weight (the newcomer's start)."""
        rows = self._rows
        victim = rows.pop(min(rows, key=lambda k: rows[k].weight))
        other = self.other
        for i, (count, reported) in enumerate(zip(victim.counts, victim.reported, strict=True)):
            other[i] += count - reported
        self.evictions += 1
        return victim.weight
