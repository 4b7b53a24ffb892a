"""The NAT lab's results for CI systems and documents: JUnit XML and a PNG of the matrix.

* :func:`junit_xml`: one ``<testcase>`` per pair (``natlab.pairs``, named ``A <-> B``, its time to
  connect) and per discovery (``natlab.discovery``); a pair or a discovery the lab found
  unexpected carries a ``<failure>`` with the lab's message. Jenkins, GitLab, GitHub Actions'
  test reporters read it.
* :func:`render_png`: the same heat map as ``report.render_svg``, drawn with Pillow (the
  ``natlab`` extra), for places that show no SVG (issue trackers, chat).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

from secureconnect.natlab.report import (
    CELL_H,
    CELL_W,
    COLOURS,
    HEADER_H,
    LABEL_W,
    MARGIN,
    Outcome,
    PairResult,
    cell_at,
    matrix_cells,
    network_cells,
)


def junit_xml(
    results: Sequence[PairResult],
    problems: Sequence[str],
    discoveries: Mapping[str, str],
    seconds: float,
) -> str:
    """The run as a JUnit XML document; ``discoveries`` maps each behaviour to what RFC 5780
    discovery reported behind it."""
    cases: list[str] = []
    failures = 0
    first = results[0].stack if results else ""
    for result in results:
        label = "" if result.stack == first else f"[{result.stack}] "
        name = f"{label}{result.row}"
        problem = next((p for p in problems if p.startswith(name + ":")), None)
        time = result.seconds if result.seconds is not None else 0.0
        suite = "natlab.networks" if result.network else "natlab.pairs"
        cases.append(_case(suite, name, time, problem))
        failures += problem is not None
    for behaviour, found in discoveries.items():
        prefix = f"discovery behind {behaviour} "
        problem = next((p for p in problems if p.startswith(prefix)), None)
        cases.append(_case("natlab.discovery", f"behind {behaviour}: {found}", 0.0, problem))
        failures += problem is not None
    head = (
        f'<testsuite name="secureconnect natlab" tests="{len(cases)}" failures="{failures}" '
        f'errors="0" time="{seconds:.1f}">'
    )
    return (
        "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', head, *cases, "</testsuite>"]) + "\n"
    )


def _case(classname: str, name: str, time: float, problem: str | None) -> str:
    attributes = f'classname={quoteattr(classname)} name={quoteattr(name)} time="{time:.2f}"'
    if problem is None:
        return f"  <testcase {attributes}/>"
    return f"  <testcase {attributes}>\n    <failure message={quoteattr(problem)}/>\n  </testcase>"


def render_png(results: Iterable[PairResult], behaviours: Sequence[str]) -> bytes:
    """The matrix as PNG bytes (see the module docstring)."""
    try:
        from PIL import Image, ImageDraw  # noqa: PLC0415 - the natlab extra only
    except ImportError as exc:
        raise RuntimeError("a PNG needs Pillow: pip install 'secureconnect[natlab]'") from exc
    behaviours, results = list(behaviours), list(results)
    grid = matrix_cells(results, behaviours)
    rows = network_cells(results)
    n = len(behaviours)
    left, top = MARGIN + LABEL_W, MARGIN + HEADER_H
    networks_y = top + n * CELL_H + (24 if rows else 0)
    legend_y = float(networks_y + len(rows) * CELL_H + 24)
    width, height = left + max(n, 2) * CELL_W + MARGIN, int(legend_y) + 52
    image = Image.new("RGB", (width, height), "#ffffff")
    draw = ImageDraw.Draw(image)
    ink = "#1a1a1a"
    draw.text((left + n * CELL_W / 2, MARGIN + 8), "other peer's NAT", fill=ink, anchor="mm")
    draw.text((MARGIN + LABEL_W / 2, MARGIN + 8), "peer's NAT", fill=ink, anchor="mm")
    for j, column in enumerate(behaviours):
        draw.text((left + j * CELL_W + CELL_W / 2, top - 12), column, fill=ink, anchor="mm")
    for i, row in enumerate(behaviours):
        y = top + i * CELL_H
        draw.text((left - 8, y + CELL_H / 2), row, fill=ink, anchor="rm")
        for j, column in enumerate(behaviours):
            _png_cell(draw, left + j * CELL_W, y, cell_at(grid, row, column))
    for k, (name, cell) in enumerate(rows):
        y = networks_y + k * CELL_H
        draw.text((left - 8, y + CELL_H / 2), name, fill=ink, anchor="rm")
        _png_cell(draw, left, y, cell)
    key_x = float(MARGIN)
    for outcome in Outcome:
        draw.rectangle((key_x, legend_y, key_x + 14, legend_y + 14), fill=COLOURS[outcome])
        draw.text((key_x + 20, legend_y + 7), outcome.value, fill=ink, anchor="lm")
        key_x += 40 + 7 * len(outcome.value)
    note = "cell: this row's candidate type / the column's, time to connect"
    draw.text((MARGIN, legend_y + 36), note, fill=ink, anchor="lm")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _png_cell(draw: Any, x: float, y: float, cell: Any) -> None:
    """One coloured cell with its candidate types and time (or FAILED, or -)."""
    box = (x + 1, y + 1, x + CELL_W - 2, y + CELL_H - 2)
    draw.rectangle(box, fill=COLOURS[cell.outcome], outline="#ffffff")
    failed = cell.outcome in (Outcome.FAILED, Outcome.MISSING, Outcome.ENDED)
    lines = [cell.text()] if failed else [cell.types, cell.time]
    lines = [line for line in lines if line]
    for k, line in enumerate(lines):
        offset = (k - (len(lines) - 1) / 2) * 14
        draw.text((x + CELL_W / 2, y + CELL_H / 2 + offset), line, fill="#1a1a1a", anchor="mm")
