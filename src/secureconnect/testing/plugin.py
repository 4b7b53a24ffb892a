"""The pytest plugin (``pytest11`` entry point ``secureconnect``): fixtures that start a real
appliance for your tests (docs/testing.md).

* ``appliance``: a running appliance (:class:`~secureconnect.testing.appliance.Appliance`) for
  one test: its URLs, a fresh TURN credential (:meth:`~.Appliance.credential`), ICE servers,
  the certificate to trust, ``/metrics``. Settings on top of the embedded defaults come from
  ``@pytest.mark.secureconnect("turn.user_quota=20", ...)`` or from overriding the
  ``appliance_settings`` fixture.
* ``appliance_factory``: ``with appliance_factory("KEY=VALUE", ...) as other:`` for a test that
  needs more than one, or settings of its own.
* ``natlab`` (one per module): clients behind real NATs of the behaviours ``natlab_behaviours``
  names (override that fixture; default: all six) with the appliance inside the lab
  (:class:`~secureconnect.testing.natlab.NatLab`).
  ``natlab_networks`` adds harder networks (default: none), e.g. ``("hairpin",)``.
* ``nat_pair``: two clients of that lab, ``@pytest.mark.nat_pair("symmetric", "full-cone")`` or
  ``parametrize("nat_pair", [...], indirect=True)``, with a room of their own; or the two
  clients of a harder network, ``@pytest.mark.nat_pair("hairpin")`` (behind one NAT).

A machine that cannot build a lab (not root, no nftables) fails the tests that need one, saying
why; ``--natlab-unavailable=skip`` (or ``secureconnect_natlab_unavailable = skip`` in the ini
file) skips them with the reason instead.

Works with plain pytest, pytest-trio and anyio tests alike: the fixtures are synchronous and the
appliance runs in its own process.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from secureconnect.testing.appliance import Appliance, start_appliance

if TYPE_CHECKING:
    from secureconnect.testing.natlab import NatLab, NatPair

MARKER = "secureconnect"


UNAVAILABLE = ("fail", "skip")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "secureconnect_natlab_unavailable",
        "fail (default) or skip the tests that need a NAT lab where none can be built",
        default="fail",
    )
    parser.getgroup("secureconnect").addoption(
        "--natlab-unavailable",
        choices=UNAVAILABLE,
        default=None,
        help="fail (default) or skip the tests that need a NAT lab where none can be built",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(*settings): KEY=VALUE settings for the appliance fixture"
    )
    config.addinivalue_line(
        "markers",
        "nat_pair(a, b) or nat_pair(network): the NAT behaviours of the nat_pair fixture's two "
        "clients, or a harder network of natlab_networks (e.g. 'hairpin')",
    )


@pytest.fixture(scope="module")
def natlab_behaviours() -> tuple[str, ...]:
    """The behaviours of the module's lab; override to build fewer (faster)."""
    from secureconnect.natlab.behaviours import ALL_BEHAVIOURS  # noqa: PLC0415

    return tuple(b.value for b in ALL_BEHAVIOURS)


@pytest.fixture(scope="module")
def natlab_networks() -> tuple[str, ...]:
    """The harder networks of the module's lab (``hairpin``, ``no-hairpin``, ``double-nat``,
    ``ipv6-firewall``, ``idle-port-restricted``, ``idle-symmetric``); none unless overridden."""
    return ()


@pytest.fixture(scope="module")
def natlab(
    request: pytest.FixtureRequest,
    natlab_behaviours: tuple[str, ...],
    natlab_networks: tuple[str, ...],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NatLab]:
    """The module's lab, with the appliance running inside it."""
    from secureconnect.testing.natlab import lab_unavailable, start_natlab  # noqa: PLC0415

    why = lab_unavailable()
    if why is not None:
        choice = request.config.getoption("--natlab-unavailable") or request.config.getini(
            "secureconnect_natlab_unavailable"
        )
        if choice == "skip":
            pytest.skip(why)
        pytest.fail(f"{why} (or run with --natlab-unavailable=skip)", pytrace=False)
    workdir = tmp_path_factory.mktemp("natlab")
    with start_natlab(natlab_behaviours, workdir=workdir, networks=natlab_networks) as lab:
        yield lab


@pytest.fixture
def nat_pair(request: pytest.FixtureRequest, natlab: NatLab) -> NatPair:
    """Two clients of the module's lab and a room for them (see the module docstring)."""
    from secureconnect.testing.natlab import NatPair  # noqa: PLC0415

    marker = request.node.get_closest_marker("nat_pair")
    param = getattr(request, "param", None)
    names = tuple(param) if param is not None else tuple(marker.args) if marker else ()
    room = f"pair-{uuid.uuid4().hex[:10]}"
    if len(names) == 1:  # a harder network: its own two clients
        if names[0] not in natlab.networks:
            raise pytest.UsageError(f"nat_pair({names[0]!r}): add it to natlab_networks")
        return NatPair(natlab, *natlab.network_peers(names[0]), room=room)
    if len(names) != 2:
        raise pytest.UsageError(
            "nat_pair needs two behaviours or one network: @pytest.mark.nat_pair(a, b), "
            "@pytest.mark.nat_pair('hairpin')"
        )
    first = natlab.peer(names[0], 0)
    second = natlab.peer(names[1], 1 if names[0] == names[1] else 0)
    return NatPair(natlab, first, second, room=room)


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
