"""Throwaway Linux network namespaces for tests (on pytest's pythonpath as ``netns``).

A namespace made here starts with nothing but its own ``lo``, brought up, plus any extra
addresses asked for; it can reach nothing outside itself, which is the point: a test can give a
client an address that is not 127.0.0.1 without touching the host's interfaces.

* :func:`netns` creates one (``sc-<pid>-<n>``), yields its name and always deletes it.
* :func:`ip` runs ``ip ARGS`` with a timeout and fails with ip's own error message.
* :func:`exec_argv` is the argv that runs a command inside a namespace (``ip netns exec``).
* :func:`call_in` runs a Python callable in a fresh thread that has joined a namespace, so
  in-process client code (asyncio, blocking sockets) creates its sockets there.

Needing root and iproute2 is a requirement, not an option: without them every helper fails the
test with a message saying so, never skips it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import pytest

from secureconnect.natlab.topology import call_in_namespace

T = TypeVar("T")

_counter = itertools.count(1)


def _require_root_and_ip() -> str:
    ip_binary = shutil.which("ip")
    if ip_binary is None:
        pytest.fail("network namespace tests need iproute2's `ip` (apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.fail("network namespace tests must run as root (they create namespaces)")
    return ip_binary


def ip(*args: str, timeout: float = 10.0) -> str:
    """Run ``ip ARGS``; return its stdout, or fail the test with its stderr."""
    argv = [_require_root_and_ip(), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def exec_argv(name: str, *argv: str) -> list[str]:
    """The argv that runs ``argv`` inside namespace ``name``."""
    return [_require_root_and_ip(), "netns", "exec", name, *argv]


@contextmanager
def netns(*, addresses: Sequence[str] = ()) -> Iterator[str]:
    """A new namespace with ``lo`` up and ``addresses`` (CIDR, e.g. ``127.0.0.2/8``) on it.

    The namespace is deleted when the block ends, however it ends. Processes started in it must
    be stopped by their owner; deleting the name does not kill them.
    """
    _require_root_and_ip()
    name = f"sc-{os.getpid()}-{next(_counter)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        for address in addresses:
            ip("-n", name, "address", "add", address, "dev", "lo")
        yield name
    finally:
        ip("netns", "del", name)


def call_in(name: str, fn: Callable[[], T], *, timeout: float) -> T:
    """Run ``fn()`` in a new thread that has joined namespace ``name``; return what it returns
    (:func:`secureconnect.natlab.topology.call_in_namespace`, which the lab fixtures use too)."""
    _require_root_and_ip()
    return call_in_namespace(name, fn, timeout=timeout)
