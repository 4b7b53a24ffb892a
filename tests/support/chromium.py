"""Headless Chromium for tests: Debian's ``chromium`` driven by Playwright with the system
executable (never ``playwright install``). A missing browser or package fails the test with
the install hint; it never skips. On pytest's pythonpath as ``chromium``."""

from __future__ import annotations

import shlex
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from secureconnect.natlab.browser import HEADLESS_FLAGS

if TYPE_CHECKING:
    from playwright.sync_api import Browser

INSTALL_HINT = (
    "install it with `sudo bash scripts/install-browser.sh` (Debian's chromium) and "
    "`.venv/bin/pip install -e '.[test]'` (Playwright); the test uses the system chromium, "
    "never `playwright install`"
)
# Chromium gathers no candidates on loopback without the last one.
CHROMIUM_FLAGS = [*HEADLESS_FLAGS, "--allow-loopback-in-peer-connection"]


@contextmanager
def launch_chromium(
    extra_flags: Sequence[str] = (), wrapper: Sequence[str] = ()
) -> Iterator[Browser]:
    """A headless Chromium with :data:`CHROMIUM_FLAGS` (and ``extra_flags``), closed after.
    ``wrapper`` runs it through another command (``ip netns exec NS``: Playwright drives it
    over pipes, so the browser's network can be a namespace's)."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(f"chromium is not installed: {INSTALL_HINT}", pytrace=False)
    try:
        # Imported here so that a missing package fails the test with the hint, not collection.
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError:
        pytest.fail(f"the Playwright Python package is missing: {INSTALL_HINT}", pytrace=False)
    with (
        tempfile.TemporaryDirectory(prefix="chromium-") as scratch,
        sync_playwright() as playwright,
    ):
        if wrapper:
            script = Path(scratch) / "chromium"
            script.write_text(f'#!/bin/sh\nexec {shlex.join([*wrapper, executable])} "$@"\n')
            script.chmod(0o755)
            executable = str(script)
        launched = playwright.chromium.launch(
            executable_path=executable, args=[*CHROMIUM_FLAGS, *extra_flags], timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()
