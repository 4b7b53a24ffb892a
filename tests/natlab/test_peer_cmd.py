"""``secureconnect natlab --peer-cmd``: the user's own program as the peer in every client
namespace (natlab/usercmd.py). The shipped example (examples/natlab/python_peer.py) connects
every pair as expected and reports its candidate types; a program that only exits 0 counts as
connected (route not checked); one that exits 1 is a failed pair."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from natlab_runs import run_natlab

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "natlab" / "python_peer.py"


@pytest.mark.browser
def test_the_python_example_and_chromium_connect_every_pair(tmp_path: Path) -> None:
    """The Python example as the peer, then (``--browsers chromium``) headless Chromium running
    the demo page in each client namespace (natlab/browser.py; libwebrtc, a second ICE stack;
    examples/natlab/browser_peer.py runs the same): every pair as expected, in each matrix."""
    peer = f"{shlex.quote(sys.executable)} {shlex.quote(str(EXAMPLE))}"
    status, log, records = run_natlab(tmp_path, "open,symmetric", peer, "--browsers", "chromium")
    assert status == 0, log
    routes = {(r["stack"], r["a"], r["b"]): r["route"] for r in records}
    for stack in ("yours", "chromium"):
        assert routes[(stack, "open", "open")] == "direct"
        assert routes[(stack, "open", "symmetric")] == "direct"
        assert routes[(stack, "symmetric", "symmetric")] == "relay"
    assert all(r["connected"] for r in records)
    assert (tmp_path / "pairs.json").exists()


def test_an_exit_status_is_a_verdict(tmp_path: Path) -> None:
    status, log, records = run_natlab(tmp_path, "open", "true")
    assert status == 0, log
    assert records[0]["connected"] is True
    assert records[0]["route"] == "unknown"
    status, log, records = run_natlab(tmp_path, "open", "false")
    assert status == 1
    assert "open <-> open: did not connect (exited 1)" in log


def test_the_json_follows_its_schema(tmp_path: Path) -> None:
    """docs/natlab-results.schema.json names every key the records have, and their values fit
    (checked by hand: no schema validator among our dependencies)."""
    schema = json.loads((ROOT / "docs" / "natlab-results.schema.json").read_text())
    item = schema["items"]
    peer = f"{shlex.quote(sys.executable)} {shlex.quote(str(EXAMPLE))}"
    _, _, records = run_natlab(tmp_path, "open,udp-blocked", peer)
    behaviours = schema["$defs"]["behaviour"]["enum"]
    candidates = schema["$defs"]["candidate"]["enum"]
    for record in records:
        assert set(record) == set(item["required"]) == set(item["properties"])
        assert record["a"] in behaviours
        assert record["b"] in behaviours
        assert record["local"] in candidates
        assert record["remote"] in candidates
        assert record["route"] in item["properties"]["route"]["enum"]
        assert record["expected"] in item["properties"]["expected"]["enum"]
