"""``secureconnect natlab --browsers firefox``: Debian's Firefox ESR (nICEr, a third ICE stack)
runs the demo page as both peers in each client namespace (natlab/firefox.py, driven over its
built-in WebDriver BiDi). A missing firefox-esr fails these tests (scripts/install-browser.sh
installs it); they never skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from natlab_runs import run_natlab

pytestmark = [pytest.mark.browser]

CANDIDATES = {"host", "srflx", "prflx", "relay"}


def require_firefox() -> None:
    assert shutil.which("firefox-esr"), "firefox-esr is missing: run scripts/install-browser.sh"


@pytest.mark.root
@pytest.mark.slow
def test_firefox_connects_every_pair_as_expected(tmp_path: Path) -> None:
    """Two behaviours, three pairs: open meets open and symmetric directly, two symmetric NATs
    need the relay (and the lab's second attempt finds no direct path). ``--peer-cmd true``
    makes the first matrix instant, so the run is the Firefox matrix."""
    require_firefox()
    status, log, everything = run_natlab(
        tmp_path, "open,symmetric", "true", "--browsers", "firefox", timeout=30
    )
    assert status == 0, log
    records = [r for r in everything if r["stack"] == "firefox"]
    routes = {(r["a"], r["b"]): r["route"] for r in records}
    assert routes == {
        ("open", "open"): "direct",
        ("open", "symmetric"): "direct",
        ("symmetric", "symmetric"): "relay",
    }
    for record in records:
        assert record["connected"] is True
        assert {record["local"], record["remote"]} <= CANDIDATES
        assert isinstance(record["seconds"], float)
    assert "[firefox] [3/3] symmetric <-> symmetric" in log


def test_a_page_that_does_not_load_is_a_verdict_and_leaves_nothing(tmp_path: Path) -> None:
    """No appliance at the URL (loopback port 1, which Firefox refuses to load): one JSON line
    saying why, exit status 1, Firefox (and its crash helper) gone, its profile removed."""
    require_firefox()
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "SECURECONNECT_SIGNAL_URL": "wss://127.0.0.1:1/ws",
        "SECURECONNECT_ROOM": "nowhere",
        "SECURECONNECT_ROLE": "offer",
        "SECURECONNECT_TIMEOUT": "20",
    }
    done = subprocess.run(
        [sys.executable, "-m", "secureconnect.natlab.firefox"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["connected"] is False
    assert report["stack"] == "firefox"
    assert "navigate" in report["error"]
    assert list(tmp_path.iterdir()) == []  # the profile
    left = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert left.stdout == ""
