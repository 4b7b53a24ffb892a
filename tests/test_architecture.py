"""House rules that a reviewer would otherwise have to remember (docs/design.md)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "secureconnect"
MODULES = sorted(PACKAGE.rglob("*.py"))
# Only I/O shells may import trio: protocol cores stay sans-IO. Named module by module (a new
# shell is added here on purpose, not by choosing a file name).
TRIO_ALLOWED = {
    "cli",
    "admincmd",  # the admin commands: trio.run for a cluster-wide request over Redis
    "supervisor",
    "stun.serve",
    "transport.listeners",
    "turn.serve",
    "signal.serve",
    "signal.serve_admission",
    "signal.redisplane",  # the Redis backplane's I/O (its scripts and events are sans-IO)
    "workers",  # the TURN worker processes, from the parent's side
    "turnworker",  # and from the worker's
    "admin.server",  # the admin socket's I/O (its protocol and store are sans-IO)
    "admin.siblings",  # and the other processes' metrics, asked over it
    "admin.cluster",  # and the cluster's admin channel on Redis
}
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]


#: subpackages with a layers contract of their own (transport is one layer as a whole)
LAYERED_PACKAGES = ("stun", "turn", "signal", "natlab", "config", "admin")


def module_name(path: Path) -> str:
    """``stun/serve.py`` -> ``stun.serve``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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
    if module_name(path) in TRIO_ALLOWED:
        return
    assert "trio" not in imported_roots(path), f"{path.name} is a core module: keep it sans-IO"


def _layer_names(contract: dict[str, object]) -> set[str]:
    layers = contract["layers"]
    assert isinstance(layers, list)
    return {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_is_in_a_layer(path: Path) -> None:
    """The import contracts cover the whole package: every top-level module or package is in
    the package's layers, and every module inside a subpackage in that subpackage's layers (a
    new module has to be placed, or lint-imports would not look at it)."""
    name = module_name(path)
    if not name:
        return  # the package's own __init__
    top = next(c for c in CONTRACTS if c.get("id") == "layers")
    assert f"secureconnect.{name.split('.')[0]}" in _layer_names(top), name
    if "." in name and name.split(".")[0] in LAYERED_PACKAGES:
        package, module = name.split(".", 1)
        inner = [c for c in CONTRACTS if c.get("containers") == [f"secureconnect.{package}"]]
        assert inner, f"secureconnect.{package} has no layers contract"
        assert module.split(".")[0] in _layer_names(inner[0]), name


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
