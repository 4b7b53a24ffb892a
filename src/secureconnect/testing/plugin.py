"""The pytest plugin (``pytest11`` entry point ``secureconnect``): fixtures that start a real
appliance for your tests (docs/testing.md).

* ``appliance``: a running appliance (:class:`~secureconnect.testing.appliance.Appliance`) for
  one test: its URLs, a fresh TURN credential (:meth:`~.Appliance.credential`), ICE servers,
  the certificate to trust, ``/metrics``. Settings on top of the embedded defaults come from
  ``@pytest.mark.secureconnect("turn.user_quota=20", ...)`` or from overriding the
  ``appliance_settings`` fixture.
* ``appliance_factory``: ``with appliance_factory("KEY=VALUE", ...) as other:`` for a test that
  needs more than one, or settings of its own.

Works with plain pytest, pytest-trio and anyio tests alike: the fixtures are synchronous and the
appliance runs in its own process.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from secureconnect.testing.appliance import Appliance, start_appliance

MARKER = "secureconnect"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(*settings): KEY=VALUE settings for the appliance fixture"
    )


@pytest.fixture
def appliance_settings() -> tuple[str, ...]:
    """Settings every ``appliance`` of a module (or conftest) gets; override to change them."""
    return ()


ApplianceFactory = Callable[..., AbstractContextManager[Appliance]]


@pytest.fixture
def appliance_factory(tmp_path: Path) -> ApplianceFactory:
    """Start appliances of your own: ``with appliance_factory("KEY=VALUE") as other:``."""
    numbers = itertools.count(1)

    def factory(*settings: str) -> AbstractContextManager[Appliance]:
        return start_appliance(tmp_path / f"appliance-{next(numbers)}", settings)

    return factory


@pytest.fixture
def appliance(
    request: pytest.FixtureRequest, tmp_path: Path, appliance_settings: tuple[str, ...]
) -> Iterator[Appliance]:
    """A running appliance for this test (see the module docstring)."""
    marked = [str(setting) for mark in request.node.iter_markers(MARKER) for setting in mark.args]
    with start_appliance(tmp_path / "appliance", (*appliance_settings, *marked)) as running:
        yield running
