"""A pytest plugin (``-p parameter_markers`` in pyproject.toml): markers that follow from a
test's parameters - a case run against coturn needs coturn."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``coturn`` every case parametrized with ``server="coturn"`` (the interop tests run
    the same code against our server and Debian's coturn)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("server") == "coturn":
            item.add_marker(pytest.mark.coturn)
