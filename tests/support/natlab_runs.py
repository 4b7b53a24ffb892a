"""``secureconnect natlab`` run as a subprocess by the lab's tests, with its JSON records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_natlab(
    tmp_path: Path, behaviours: str, peer: str, *extra: str, timeout: float = 20
) -> tuple[int, str, list[dict[str, object]]]:
    """The lab on ``behaviours`` without discovery, ``peer`` as ``--peer-cmd``, ``extra`` flags;
    its exit status, its log (stderr) and its ``--json`` records (empty if it wrote none)."""
    out = tmp_path / "pairs.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "secureconnect",
            "natlab",
            "--behaviours",
            behaviours,
            "--no-discovery",
            "--timeout",
            f"{timeout:g}",
            "--peer-cmd",
            peer,
            "--json",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    records = json.loads(out.read_text()) if out.exists() else []
    return done.returncode, done.stderr, records
