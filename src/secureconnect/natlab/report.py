"""The NAT lab's results as JSON records, a plain-text matrix and an SVG heat map (pure rendering).

One :class:`PairResult` per unordered pair of NAT behaviours: did two peers behind them connect,
over which candidate types, how fast. The lab runner measures; this module only renders, so the
same results give the same bytes (the docs' picture can be regenerated and diffed).

**The matrix is mirrored.** Pairs are unordered: the runner measures each one once with ``a``
before ``b`` in behaviour order. Both renderings fill the upper triangle from ``(a, b)`` and the
lower one from ``(b, a)`` with the candidate types swapped, so that every cell reads from its
row's point of view: row R, column C shows "R's candidate type / C's candidate type". The
diagonal holds pairs of two peers behind the same kind of NAT (separate NATs of one behaviour).

Cells are *direct* (connected, neither side on a ``relay`` candidate), *via relay* (connected
through TURN), *failed* (not connected) or *not measured* (no result for that pair).

Behaviour names are plain strings in the order to show (``open``, ``full-cone``,
``restricted-cone``, ``port-restricted``, ``symmetric``, ``udp-blocked`` in the lab); a result
naming another behaviour, or a pair measured twice, is a :class:`ValueError`: a silently dropped
or overwritten cell would misreport the lab.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from secureconnect.natlab.networks import NETWORKS, Network

RECORD_KEYS = ("a", "b", "connected", "local", "remote", "seconds", "network", "protocol")
NOT_MEASURED = "-"


@dataclass(frozen=True)
class PairResult:
    """Peers behind NAT behaviours ``a`` and ``b``: the outcome, seen from ``a``.

    ``local``/``remote`` are the candidate types (``host``, ``srflx``, ``prflx``, ``relay``) of
    the selected pair as peer ``a`` reported them; ``seconds`` the time to connect.
    """

    a: str
    b: str
    connected: bool
    local: str | None
    remote: str | None
    seconds: float | None
    stack: str = "aiortc"  # which peers: aiortc (ours), chromium, firefox, yours (--peer-cmd)
    network: str | None = None  # a harder network's row (natlab/networks.py); None: the matrix
    #: the selected pair's transport as ``a`` reported it: ``udp``, ``tcp`` (ICE-TCP, RFC 6544:
    #: browsers connect a UDP-blocked client directly over TCP where they can), None: unknown
    protocol: str | None = None

    @property
    def row(self) -> str:
        """The row's name: the network's, or ``a <-> b`` for a pair of the matrix."""
        return self.network or f"{self.a} <-> {self.b}"


class Outcome(Enum):
    """How a cell is classified and coloured."""

    DIRECT = "direct"
    RELAY = "via relay"
    FAILED = "failed"
    MISSING = "not measured"
    ENDED = "ended when idle"  # an idle row's expected end (natlab/networks.py)


@dataclass(frozen=True)
class _Cell:
    """One cell from its row's point of view: ``mine``/``theirs`` candidate types."""

    outcome: Outcome
    mine: str | None = None
    theirs: str | None = None
    seconds: float | None = None

    @property
    def types(self) -> str:
        return f"{self.mine or '?'}/{self.theirs or '?'}"

    @property
    def time(self) -> str:
        return "" if self.seconds is None else f"{self.seconds:.1f}s"

    def text(self) -> str:
        """The table's text: ``srflx/prflx 1.2s``, ``FAILED`` or ``-``."""
        if self.outcome is Outcome.MISSING:
            return NOT_MEASURED
        if self.outcome is Outcome.FAILED:
            return "FAILED"
        if self.outcome is Outcome.ENDED:
            return "ENDED when idle"
        return f"{self.types} {self.time}".rstrip()


def outcome_of(result: PairResult) -> Outcome:
    """``DIRECT``, ``RELAY`` (either side on a relay candidate) or ``FAILED``."""
    if not result.connected:
        return Outcome.FAILED
    if "relay" in (result.local, result.remote):
        return Outcome.RELAY
    return Outcome.DIRECT


def json_records(results: Iterable[PairResult]) -> list[dict[str, Any]]:
    """One JSON-ready dict per result, with exactly the keys of :data:`RECORD_KEYS`."""
    return [{key: getattr(result, key) for key in RECORD_KEYS} for result in results]


def write_json(
    path: str | os.PathLike[str],
    results: Iterable[PairResult],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``{**extra, "results": [records]}`` (indented, UTF-8, trailing newline) to
    ``path``; ``extra`` carries what the run needs to be understood (date, versions, timeout).
    A ``results`` key in ``extra`` is a :class:`ValueError`."""
    document: dict[str, Any] = dict(extra or {})
    if "results" in document:
        raise ValueError("extra must not have a 'results' key: the records go there")
    document["results"] = json_records(results)
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    Path(path).write_text(text, encoding="utf-8")


def matrix_cells(
    results: Iterable[PairResult], behaviours: Sequence[str]
) -> dict[tuple[str, str], _Cell]:
    """The mirrored matrix: (row, column) -> cell; pairs without a result are missing."""
    order = {name: index for index, name in enumerate(behaviours)}
    if len(order) != len(behaviours):
        raise ValueError(f"behaviours repeat a name: {list(behaviours)}")
    grid: dict[tuple[str, str], _Cell] = {}
    for result in results:
        if result.network is not None:
            continue  # a harder network's row: network_lines(), not a cell
        for name in (result.a, result.b):
            if name not in order:
                raise ValueError(f"unknown behaviour {name!r}; expected one of {list(order)}")
        a, b, local, remote = result.a, result.b, result.local, result.remote
        if order[a] > order[b]:  # keep a <= b: swap the point of view as well
            a, b, local, remote = b, a, remote, local
        if (a, b) in grid:
            raise ValueError(f"the pair {a}/{b} has more than one result")
        outcome = outcome_of(result)
        seconds = result.seconds if outcome is not Outcome.FAILED else None
        grid[a, b] = _Cell(outcome, local, remote, seconds)
        if a != b:  # the diagonal keeps a's point of view
            grid[b, a] = _Cell(outcome, remote, local, seconds)
    return grid


def cell_at(grid: Mapping[tuple[str, str], _Cell], row: str, column: str) -> _Cell:
    return grid.get((row, column), _Cell(Outcome.MISSING))


def _summary(grid: Mapping[tuple[str, str], _Cell], behaviours: Sequence[str]) -> str:
    counts = dict.fromkeys(Outcome, 0)
    for i, row in enumerate(behaviours):
        for column in behaviours[i:]:
            counts[cell_at(grid, row, column).outcome] += 1
    quiet = (Outcome.MISSING, Outcome.ENDED)  # named only when there are some
    parts = [f"{counts[o]} {o.value}" for o in Outcome if counts[o] or o not in quiet]
    return f"{sum(counts.values())} pairs: " + ", ".join(parts)


LEGEND = """\
Rows and columns are the NAT behaviours of the two peers. The matrix is mirrored: the cell in
row R, column C reads "R's candidate type / C's candidate type, time to connect" for the pair
ICE selected. Candidate types: host (the peer's own address), srflx (its address as the STUN
server saw it), prflx (learned from a connectivity check), relay (an address on our TURN
server). A pair without relay connected directly; with relay it went through TURN.
FAILED: no connection within the timeout. -: not measured."""


def render_table(results: Iterable[PairResult], behaviours: Sequence[str]) -> str:
    """A plain-text matrix (rows and columns in ``behaviours`` order), a summary and a legend."""
    behaviours, results = list(behaviours), list(results)
    grid = matrix_cells(results, behaviours)
    corner = "a \\ b"
    label_width = max([len(corner), *map(len, behaviours)])
    texts = {
        key: cell_at(grid, *key).text() for key in ((r, c) for r in behaviours for c in behaviours)
    }
    widths = [max([len(c), *(len(texts[r, c]) for r in behaviours)]) for c in behaviours]
    lines = ["  ".join([corner.ljust(label_width), *map(str.ljust, behaviours, widths)]).rstrip()]
    for row in behaviours:
        cells = [texts[row, c].ljust(w) for c, w in zip(behaviours, widths, strict=True)]
        lines.append("  ".join([row.ljust(label_width), *cells]).rstrip())
    networks = network_lines(results)
    extra = ["", "harder networks:", *networks] if networks else []
    return "\n".join([*lines, "", _summary(grid, behaviours), *extra, "", LEGEND]) + "\n"


def network_cells(results: Iterable[PairResult]) -> list[tuple[str, _Cell]]:
    """The harder networks' rows (:mod:`.networks`), in the order measured: (name, cell)."""
    cells = []
    for result in results:
        if result.network is not None:
            outcome = outcome_of(result)
            if outcome is Outcome.FAILED and expected_of(result.network) == "ends":
                outcome = Outcome.ENDED
            seconds = result.seconds if outcome is not Outcome.FAILED else None
            cells.append((result.network, _Cell(outcome, result.local, result.remote, seconds)))
    return cells


def network_lines(results: Iterable[PairResult]) -> list[str]:
    """One line per harder network's row, with what the lab expects of it:
    ``  hairpin  host/srflx 1.2s  (expected: direct)``; FAILED is the outcome an idle row
    expects to end with (``ends``)."""
    rows = network_cells(results)
    width = max((len(name) for name, _ in rows), default=0)
    texts = [cell.text() for _, cell in rows]
    cells = max(map(len, texts), default=0)
    return [
        f"  {name.ljust(width)}  {text.ljust(cells)}  (expected: {expected_of(name)})"
        for (name, _), text in zip(rows, texts, strict=True)
    ]


def expected_of(network: str) -> str:
    """A harder network's expected outcome (``direct``, ``relay``, ``ends``), or ``?``."""
    try:
        return NETWORKS[Network(network)].expected
    except ValueError:
        return "?"


# -- SVG ---------------------------------------------------------------------------------------

COLOURS = {
    Outcome.DIRECT: "#7cc47f",  # green
    Outcome.RELAY: "#f5b942",  # amber
    Outcome.FAILED: "#e0605a",  # red
    Outcome.MISSING: "#e6e6e6",  # grey
    Outcome.ENDED: "#b7a6de",  # lilac
}
CELL_W, CELL_H = 124, 46
LABEL_W, HEADER_H = 132, 58  # room for the row labels and the column labels
MARGIN, FONT = 12, "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def _text(x: float, y: float, text: str, size: int = 12, **attributes: str) -> str:
    extra = "".join(f" {key.replace('_', '-')}={quoteattr(v)}" for key, v in attributes.items())
    return f"<text x='{x:g}' y='{y:g}' font-size='{size}'{extra}>{escape(text)}</text>"


def _svg_cell(x: float, y: float, row: str, column: str, cell: _Cell) -> list[str]:
    """A coloured square with the pair types and the time, and a tooltip saying it in words."""
    cx = x + CELL_W / 2
    if cell.outcome in (Outcome.DIRECT, Outcome.RELAY):
        words = f"{row} with {column}: {cell.outcome.value} ({cell.types}) in {cell.time or '?'}"
        lines = [_text(cx, y + 20, cell.types), _text(cx, y + 36, cell.time, 11)]
    elif cell.outcome in (Outcome.FAILED, Outcome.ENDED):
        words = f"{row} with {column}: {cell.outcome.value}"
        lines = [_text(cx, y + 28, cell.text(), font_weight="bold")]
    else:
        words = f"{row} with {column}: not measured"
        lines = [_text(cx, y + 28, NOT_MEASURED)]
    return [
        "<g>",
        f"<title>{escape(words)}</title>",
        f"<rect x='{x:g}' y='{y:g}' width='{CELL_W}' height='{CELL_H}' "
        f"fill='{COLOURS[cell.outcome]}' stroke='#ffffff' stroke-width='2'/>",
        *lines,
        "</g>",
    ]


def render_svg(results: Iterable[PairResult], behaviours: Sequence[str]) -> str:
    """A self-contained SVG heat map: one coloured cell per pair (mirrored, see the module
    docstring), behaviour names on both axes, a colour legend underneath."""
    behaviours, results = list(behaviours), list(results)
    grid = matrix_cells(results, behaviours)
    rows = network_cells(results)
    n = len(behaviours)
    left, top = MARGIN + LABEL_W, MARGIN + HEADER_H
    networks_y = top + n * CELL_H + (24 if rows else 0)
    legend_y = networks_y + len(rows) * CELL_H + 24
    width = left + max(n, 2) * CELL_W + MARGIN
    height = legend_y + 52
    summary = _summary(grid, behaviours)
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img' aria-label={quoteattr(summary)}>",
        f"<title>{escape('NAT lab: ' + summary)}</title>",
        f"<rect width='{width}' height='{height}' fill='#ffffff'/>",
        f"<g {FONT} fill='#1a1a1a' text-anchor='middle'>",
        _text(left + n * CELL_W / 2, MARGIN + 14, "other peer's NAT", 13, font_weight="bold"),
    ]
    for j, column in enumerate(behaviours):
        parts.append(_text(left + j * CELL_W + CELL_W / 2, top - 10, column, 12))
    for i, row in enumerate(behaviours):
        y = top + i * CELL_H
        parts.append(_text(left - 8, y + CELL_H / 2 + 4, row, 12, text_anchor="end"))
        for j, column in enumerate(behaviours):
            parts += _svg_cell(left + j * CELL_W, y, row, column, cell_at(grid, row, column))
    for k, (name, cell) in enumerate(rows):
        y = networks_y + k * CELL_H
        parts.append(_text(left - 8, y + CELL_H / 2 + 4, name, 12, text_anchor="end"))
        parts += _svg_cell(left, y, name, "its pair", cell)
    parts.append(_text(MARGIN + LABEL_W / 2, MARGIN + 14, "peer's NAT", 13, font_weight="bold"))
    x = float(MARGIN)
    for outcome in Outcome:
        parts.append(
            f"<rect x='{x:g}' y='{legend_y}' width='14' height='14' fill='{COLOURS[outcome]}'/>"
        )
        parts.append(_text(x + 20, legend_y + 11, outcome.value, 12, text_anchor="start"))
        x += 40 + 7 * len(outcome.value)
    note = "cell: this row's candidate type / the column's, time to connect"
    parts.append(_text(MARGIN, legend_y + 36, note, 11, text_anchor="start"))
    parts += ["</g>", "</svg>"]
    return "\n".join(parts) + "\n"
