"""House rules that a reviewer would otherwise have to remember (docs/design.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "secureconnect"
MODULES = sorted(PACKAGE.rglob("*.py"))
# Only I/O shells may import trio: protocol cores stay sans-IO.
TRIO_ALLOWED = {"supervisor.py", "cli.py"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_io_shells_import_trio(path: Path) -> None:
    if path.name in TRIO_ALLOWED or path.name.startswith("serve"):
        return
    assert "trio" not in imported_roots(path), f"{path.name} is a core module: keep it sans-IO"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= 600, f"{path.name} has {lines} lines: split it by responsibility"


def test_no_top_level_package_shadows_the_standard_library() -> None:
    top = {
        p.name for p in (PACKAGE.parent).iterdir() if p.is_dir() and not p.name.endswith("egg-info")
    }
    assert top == {"secureconnect"}
    assert not (
        set(sys.stdlib_module_names)
        & {
            p.name
            for p in PACKAGE.parents[1].joinpath("tests").iterdir()
            if (p / "__init__.py").exists()
        }
    )
