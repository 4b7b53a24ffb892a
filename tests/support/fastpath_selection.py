"""A pytest plugin (``-p fastpath_selection`` in pyproject.toml): what the TURN tests collect
when the compiled fast path is switched off.

``make test`` runs the TURN tests twice: as installed (the compiled fast path), then with
``SECURECONNECT_NO_EXTENSIONS=1`` (the pure-Python one). The second pass leaves out what needs
the compiled path by its nature - the differential test compares the two paths and ran in the
first pass - instead of collecting it to skip it; the tests of the extension itself stay in
while it is built. Without the variable nothing is left out: a missing extension fails those
tests loudly.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from secureconnect.turn.fastpath import NO_EXTENSIONS_ENV

NEEDS_BOTH_PATHS = frozenset({"test_fastpath_differential.py"})
NEEDS_THE_EXTENSION = frozenset(
    {"test_fastpath_compiled.py", "test_fastpath_compiled_robustness.py"}
)


def left_out() -> frozenset[str]:
    """The test files (by name) this run does not collect."""
    if os.environ.get(NO_EXTENSIONS_ENV, "") in ("", "0"):
        return frozenset()
    if importlib.util.find_spec("secureconnect.turn._fastpath") is None:
        return NEEDS_BOTH_PATHS | NEEDS_THE_EXTENSION
    return NEEDS_BOTH_PATHS


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """pytest's hook: True leaves ``collection_path`` out; None lets the others decide."""
    return True if collection_path.name in left_out() else None
