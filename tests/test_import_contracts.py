"""Each import contract in pyproject.toml catches a violation: a check is only a check if it can
fail. For every contract, one forbidden import is added to a copy of the package and
``lint-imports`` must report that contract broken (the first two are the probes that the old,
narrower contracts let through, issue #13)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: (contract id, module file under src/secureconnect, the import added to it)
VIOLATIONS = [
    ("layers", "turn/core.py", "import secureconnect.config"),
    ("stun-alone", "stun/message.py", "import secureconnect.statedir"),
    ("stun-alone", "stun/message.py", "import secureconnect.logs"),  # below stun, still ours
    ("stun-alone", "stun/responder.py", "import secureconnect.transport"),  # only the shell may
    ("layers", "transport/listeners.py", "import secureconnect.stun.message"),  # no way back up
    ("layers", "signal/hub.py", "import secureconnect.turn.core"),  # siblings are independent
    ("layers", "credentials.py", "import secureconnect.signal.ice"),  # a utility reaching up
    ("layers", "netaddr.py", "import secureconnect.logs"),  # the bottom layer's siblings too
    ("stun-layers", "stun/message.py", "import secureconnect.stun.responder"),
    ("turn-layers", "turn/allocation.py", "import secureconnect.turn.core"),
    ("signal-layers", "signal/messages.py", "import secureconnect.signal.hub"),
    ("natlab-layers", "natlab/behaviours.py", "import secureconnect.natlab.runner"),
    ("config-layers", "config/schema.py", "import secureconnect.config.loader"),
]


def run_lint(tree: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the copy in ``tree`` (one contract, or all)."""
    only = ["--contract", contract] if contract else []
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *only, str(tree / "pyproject.toml")],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree / "src")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package and the contracts, which every contract keeps."""
    tree = tmp_path_factory.mktemp("pristine")
    shutil.copytree(ROOT / "src" / "secureconnect", tree / "src" / "secureconnect")
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    done = run_lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    return tree


@pytest.mark.parametrize(("contract", "module", "line"), VIOLATIONS)
def test_each_contract_fails_on_a_violation(
    pristine: Path, tmp_path: Path, contract: str, module: str, line: str
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    path = tree / "src" / "secureconnect" / module
    path.write_text(path.read_text() + f"\n{line}  # a deliberate violation\n")
    done = run_lint(tree, contract)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout, done.stdout
    assert line.removeprefix("import ") in done.stdout, done.stdout
