"""The probe's import contracts catch violations (tests/test_import_contracts.py does this for
the older contracts): the probe package stays independent of the TURN server it may test and
of the command above it, and inside it the wire codec never reaches up to the runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

VIOLATIONS = [
    ("probe-layers", "probe/wire.py", "import secureconnect.probe.runner"),
    ("probe-layers", "probe/natbehaviour.py", "import secureconnect.probe.tlsinfo"),  # siblings
    ("layers", "probe/turnchecks.py", "import secureconnect.turn.core"),  # a sibling layer
    ("layers", "probe/urls.py", "import secureconnect.probecmd"),  # the wiring above
]


def lint(tree: Path, contract: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--contract", contract, str(tree / "pyproject.toml")],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree / "src")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("contract", "module", "line"), VIOLATIONS)
def test_probe_contracts_fail_on_a_violation(
    tmp_path: Path, contract: str, module: str, line: str
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src" / "secureconnect", tree / "src" / "secureconnect")
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    kept = lint(tree, contract)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    path = tree / "src" / "secureconnect" / module
    path.write_text(path.read_text() + f"\n{line}  # a deliberate violation\n")
    broken = lint(tree, contract)
    assert broken.returncode != 0, broken.stdout
    assert "BROKEN" in broken.stdout, broken.stdout
    assert line.removeprefix("import ") in broken.stdout, broken.stdout
