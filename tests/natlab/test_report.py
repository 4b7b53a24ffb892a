"""The NAT lab's rendering: JSON records, the mirrored text matrix and the SVG heat map.

Pure: results in, text out. The matrix's promises are checked from the reader's side: every cell
reads from its row's point of view (so the lower triangle shows swapped types), the diagonal
keeps peer a's view, missing pairs and failures are visible, and bad input is refused instead
of being dropped or overwritten.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.etree import ElementTree

import pytest

from secureconnect.natlab.exports import junit_xml, render_png
from secureconnect.natlab.report import (
    COLOURS,
    RECORD_KEYS,
    Outcome,
    PairResult,
    json_records,
    outcome_of,
    render_svg,
    render_table,
    write_json,
)

BEHAVIOURS = ("open", "full-cone", "restricted-cone", "port-restricted", "symmetric", "udp-blocked")
SVG = "{http://www.w3.org/2000/svg}"

RESULTS = [
    PairResult("open", "full-cone", True, "srflx", "prflx", 0.42),
    PairResult("symmetric", "port-restricted", True, "prflx", "relay", 1.96),  # b before a
    PairResult("symmetric", "symmetric", False, None, None, None),
    PairResult("full-cone", "full-cone", True, "host", "srflx", 0.05),
    PairResult("open", "udp-blocked", True, "relay", "relay", 2.0),
]


def table_cells(table: str) -> dict[tuple[str, str], str]:
    """The matrix part of ``render_table`` read back by column position."""
    lines = table.splitlines()
    header = lines[0]
    starts = [header.index(f"  {name}") + 2 for name in BEHAVIOURS]
    cells: dict[tuple[str, str], str] = {}
    for line in lines[1 : 1 + len(BEHAVIOURS)]:
        row = line.split()[0]
        for column, start, end in zip(BEHAVIOURS, starts, [*starts[1:], None], strict=True):
            cells[row, column] = line[start:end].strip()
    return cells


def test_outcomes() -> None:
    assert outcome_of(PairResult("a", "b", True, "srflx", "prflx", 1.0)) is Outcome.DIRECT
    assert outcome_of(PairResult("a", "b", True, "host", "relay", 1.0)) is Outcome.RELAY
    assert outcome_of(PairResult("a", "b", False, "relay", "relay", None)) is Outcome.FAILED


def test_json_records_have_exactly_the_documented_keys() -> None:
    records = json_records(RESULTS)
    assert [tuple(r) for r in records] == [RECORD_KEYS] * len(RESULTS)
    assert RECORD_KEYS == (
        "a",
        "b",
        "connected",
        "local",
        "remote",
        "seconds",
        "network",
        "protocol",
    )
    assert records[1] == {
        "a": "symmetric",
        "b": "port-restricted",
        "connected": True,
        "local": "prflx",
        "remote": "relay",
        "seconds": 1.96,
        "network": None,
        "protocol": None,
    }
    json.dumps(records)  # serialisable as is


def test_write_json_puts_the_records_next_to_the_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "natlab.json"
    write_json(path, RESULTS, {"timeout": 40, "behaviours": list(BEHAVIOURS)})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    document = json.loads(text)
    assert document == {
        "timeout": 40,
        "behaviours": list(BEHAVIOURS),
        "results": json_records(RESULTS),
    }
    write_json(path, [])
    assert json.loads(path.read_text(encoding="utf-8")) == {"results": []}
    with pytest.raises(ValueError, match="results"):
        write_json(path, RESULTS, {"results": "mine"})


def test_table_is_mirrored_from_each_rows_point_of_view() -> None:
    cells = table_cells(render_table(RESULTS, BEHAVIOURS))
    assert cells["open", "full-cone"] == "srflx/prflx 0.4s"
    assert cells["full-cone", "open"] == "prflx/srflx 0.4s"
    # given as (symmetric, port-restricted): normalised to behaviour order, views kept right
    assert cells["symmetric", "port-restricted"] == "prflx/relay 2.0s"
    assert cells["port-restricted", "symmetric"] == "relay/prflx 2.0s"
    assert cells["full-cone", "full-cone"] == "host/srflx 0.1s"  # the diagonal: a's view
    assert cells["symmetric", "symmetric"] == "FAILED"
    assert cells["udp-blocked", "open"] == "relay/relay 2.0s"
    assert cells["open", "open"] == "-"
    assert cells["restricted-cone", "udp-blocked"] == "-"


def test_table_has_a_summary_and_a_legend() -> None:
    table = render_table(RESULTS, BEHAVIOURS)
    lines = table.splitlines()
    assert lines[0].split() == ["a", "\\", "b", *BEHAVIOURS]
    assert [line.split()[0] for line in lines[1:7]] == list(BEHAVIOURS)
    assert "21 pairs: 2 direct, 2 via relay, 1 failed, 16 not measured" in lines
    assert "mirrored" in table
    assert "FAILED:" in table
    assert all(line == line.rstrip() for line in lines)


def test_table_summary_leaves_out_not_measured_when_everything_ran() -> None:
    names = ("open", "symmetric")
    results = [
        PairResult("open", "open", True, "host", "host", 0.1),
        PairResult("open", "symmetric", True, "srflx", "prflx", 0.3),
        PairResult("symmetric", "symmetric", True, "relay", "prflx", 1.1),
    ]
    assert "3 pairs: 2 direct, 1 via relay, 0 failed\n" in render_table(results, names)


@pytest.mark.parametrize(
    ("results", "match"),
    [
        ([PairResult("open", "cgnat", True, "host", "host", 0.1)], "unknown behaviour 'cgnat'"),
        (
            [
                PairResult("open", "symmetric", True, "srflx", "prflx", 0.3),
                PairResult("symmetric", "open", False, None, None, None),
            ],
            "more than one result",
        ),
    ],
)
def test_bad_results_are_refused(results: list[PairResult], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_table(results, BEHAVIOURS)
    with pytest.raises(ValueError, match=match):
        render_svg(results, BEHAVIOURS)


def test_svg_is_a_self_contained_heat_map() -> None:
    svg = render_svg(RESULTS, BEHAVIOURS)
    assert svg == render_svg(RESULTS, BEHAVIOURS)  # stable bytes: the docs' picture diffs
    assert "href" not in svg  # nothing external: no fonts, images or styles to fetch
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    assert root.tag == f"{SVG}svg"
    cells = [g for g in root.iter(f"{SVG}g") if g.find(f"{SVG}title") is not None]
    assert len(cells) == len(BEHAVIOURS) ** 2
    fills = {}
    for cell in cells:
        title = cell.findtext(f"{SVG}title") or ""
        rect = cell.find(f"{SVG}rect")
        assert rect is not None
        fills[title.split(":")[0]] = rect.get("fill")
        texts = [t.text for t in cell.iter(f"{SVG}text")]
        if title.startswith("open with full-cone"):
            assert texts == ["srflx/prflx", "0.4s"]
            assert "direct" in title
        if title.startswith("port-restricted with symmetric"):
            assert texts == ["relay/prflx", "2.0s"]
    assert fills["open with full-cone"] == COLOURS[Outcome.DIRECT]
    assert fills["full-cone with open"] == COLOURS[Outcome.DIRECT]
    assert fills["udp-blocked with open"] == COLOURS[Outcome.RELAY]
    assert fills["symmetric with symmetric"] == COLOURS[Outcome.FAILED]
    assert fills["open with open"] == COLOURS[Outcome.MISSING]
    labels = [t.text for t in root.iter(f"{SVG}text")]
    for name in BEHAVIOURS:
        assert labels.count(name) == 2  # a column label and a row label
    for outcome in Outcome:
        assert outcome.value in labels  # the colour legend


def test_svg_escapes_names() -> None:
    results = [PairResult("a<b", "c&d", True, "host", "host", 0.1)]
    svg = render_svg(results, ["a<b", "c&d"])
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    assert "a<b" in [t.text for t in root.iter(f"{SVG}text")]


def test_junit_xml_has_a_case_per_pair_and_discovery_and_the_failures() -> None:
    results = [
        PairResult("open", "open", True, "host", "host", 0.5),
        PairResult("open", "symmetric", False, None, None, None),
    ]
    problems = ["open <-> symmetric: did not connect (timeout)", "discovery behind open reported x"]
    xml = junit_xml(results, problems, {"open": "x", "symmetric": "symmetric"}, 12.0)
    suite = ElementTree.fromstring(xml)  # noqa: S314 - our own output
    assert (suite.get("tests"), suite.get("failures")) == ("4", "2")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["open <-> open"].find("failure") is None
    failure = cases["open <-> symmetric"].find("failure")
    assert failure is not None
    assert failure.get("message") == problems[0]
    assert cases["behind open: x"].find("failure") is not None
    assert cases["behind symmetric: symmetric"].find("failure") is None


def test_png_is_a_png_of_the_svgs_size() -> None:
    from PIL import Image  # noqa: PLC0415 - the natlab extra

    results = [PairResult("open", "symmetric", True, "host", "relay", 1.25)]
    png = render_png(results, ["open", "symmetric"])
    assert png.startswith(b"\x89PNG")
    image = Image.open(io.BytesIO(png))
    svg = render_svg(results, ["open", "symmetric"])
    assert f"width='{image.width}' height='{image.height}'" in svg
