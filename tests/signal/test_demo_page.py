"""The demo page in headless Chromium against the real appliance.

``python -m secureconnect run`` starts on free loopback ports; Debian's ``chromium``, driven by
Playwright with the system executable, opens the page twice in one room with ``?relay=1``. The two
pages must connect through our TURN relay, say so ("relay"), and exchange data-channel messages.
A missing browser or Playwright package fails the test with the install hint; it never skips.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from appliance import AllInOnePorts, ApplianceNotReady, Running, run_appliance
from chromium import launch_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Page

CONNECT_TIMEOUT = 30.0  # seconds for both pages to report a relayed, open connection
STEP_TIMEOUT_MS = 10_000


@dataclass
class Appliance:
    """A running ``secureconnect run`` and where its demo page is."""

    url: str
    running: Running

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.running.log_text().splitlines()[-lines:])


@dataclass
class DemoPage:
    """One browser page showing the demo, with what it printed to its console."""

    name: str
    page: Page
    console: list[str] = field(default_factory=list)

    def state(self) -> Any:
        return self.page.evaluate(
            "() => window.demo ? {state: demo.state, pairType: demo.pairType, rtt: demo.rtt,"
            " id: demo.id, peers: demo.peers, iceRestarts: demo.iceRestarts,"
            " received: demo.received.map(m => m.text)} : 'no window.demo'"
        )

    def diagnostics(self) -> str:
        try:
            state = self.state()
            log = self.page.inner_text("#log", timeout=2000)
        except Exception as exc:  # the page may be gone; say so instead of hiding the cause
            state, log = f"unavailable: {exc}", ""
        console = "\n".join(self.console[-20:])
        return f"--- page {self.name}: {state}\n{log}\n--- console:\n{console}"

    def on_console(self, message: ConsoleMessage) -> None:
        self.console.append(message.text)

    def on_error(self, error: Error) -> None:
        self.console.append(f"uncaught {error}")


@contextmanager
def _start_appliance(workdir: Path) -> Iterator[Appliance]:
    """The whole appliance on free loopback ports, once it is ready (bounded)."""
    ports = AllInOnePorts.free()
    with run_appliance(
        workdir,
        state_dir=workdir / "state",
        settings=ports.settings(),
        log_file=workdir / "stderr.log",
    ) as running:
        yield Appliance(f"https://127.0.0.1:{ports.wss}/", running)


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    error: ApplianceNotReady | None = None
    for attempt in range(3):  # a free port may be taken between the probe and the bind
        with ExitStack() as stack:
            try:
                app = stack.enter_context(
                    _start_appliance(tmp_path_factory.mktemp(f"appliance{attempt}"))
                )
            except ApplianceNotReady as exc:
                error = exc
                continue
            yield app
            return
    raise AssertionError(f"the appliance did not start three times; last: {error}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.fixture
def open_pages(browser: Browser, appliance: Appliance) -> Iterator[list[DemoPage]]:
    """Two pages in two browser contexts (two "users"), in a fresh room, relay only."""
    room = f"chromium-{uuid.uuid4().hex[:8]}"
    contexts = [browser.new_context(ignore_https_errors=True) for _ in range(2)]
    pages: list[DemoPage] = []
    try:
        for name, context in zip("AB", contexts, strict=True):
            demo = DemoPage(name, context.new_page())
            demo.page.on("console", demo.on_console)
            demo.page.on("pageerror", demo.on_error)
            demo.page.set_default_timeout(STEP_TIMEOUT_MS)
            demo.page.goto(f"{appliance.url}?room={room}&relay=1")
            pages.append(demo)
        yield pages
    finally:
        for context in contexts:
            context.close()


def wait_all(
    pages: list[DemoPage], appliance: Appliance, condition: str, what: str, timeout: float
) -> None:
    """Wait until the JS ``condition`` holds on every page, sharing one deadline."""
    deadline = time.monotonic() + timeout
    for demo in pages:
        remaining_ms = max(100.0, (deadline - time.monotonic()) * 1000)
        try:
            demo.page.wait_for_function(condition, timeout=remaining_ms, polling=200)
        except Exception as exc:
            report = "\n".join(d.diagnostics() for d in pages)
            raise AssertionError(
                f"{what}: not within {timeout} s ({type(exc).__name__})\n{report}\n"
                f"--- appliance log:\n{appliance.log_tail()}"
            ) from None


RELAYED = (
    "() => window.demo && demo.state === 'connected' && demo.pairType === 'relay'"
    " && Object.values(demo.peers).every(p => p.channel === 'open' && p.remoteType === 'relay')"
)


def exchange(pages: list[DemoPage], appliance: Appliance, tag: str) -> None:
    """Each page types a message into the form; the other page must show it."""
    for demo in pages:
        demo.page.fill("#message", f"{tag} from {demo.name}")
        demo.page.click("#send")
    for demo, other in zip(pages, reversed(pages), strict=True):
        text = f"{tag} from {other.name}"
        wait_all(
            [demo],
            appliance,
            f"() => demo.received.some(m => m.text === {text!r})",
            f"page {demo.name} receiving {text!r}",
            10,
        )
        assert text in demo.page.inner_text("#received")


def test_two_pages_connect_through_the_relay_and_exchange_messages(
    open_pages: list[DemoPage], appliance: Appliance
) -> None:
    wait_all(open_pages, appliance, RELAYED, "both pages relayed", CONNECT_TIMEOUT)
    for demo in open_pages:
        # What a person sees, and the machine-readable copy of it.
        assert demo.page.inner_text("#pair-type") == "relay"
        assert demo.page.get_attribute("body", "data-pair-type") == "relay"
        assert demo.page.inner_text("#state") == "connected"
    a, b = (demo.state() for demo in open_pages)
    assert list(a["peers"]) == [b["id"]]
    assert list(b["peers"]) == [a["id"]]
    exchange(open_pages, appliance, "hello")
    # The data-channel ping/pong measures a round trip within a second.
    wait_all(open_pages, appliance, "() => demo.rtt !== null && demo.rtt > 0", "an RTT", 5)


def test_fresh_ice_servers_restart_ice_and_keep_the_call(
    open_pages: list[DemoPage], appliance: Appliance
) -> None:
    wait_all(open_pages, appliance, RELAYED, "both pages relayed", CONNECT_TIMEOUT)
    a, b = open_pages
    (old_ufrag,) = [peer["localUfrag"] for peer in a.state()["peers"].values()]
    # The server's answer to `ice` is the same message it pushes before credentials expire:
    # the page must apply it with setConfiguration and an ICE restart (new ufrag, same call).
    a.page.evaluate("demo.refreshIce()")
    wait_all([a], appliance, "() => demo.iceRestarts === 1", "an ICE restart on page A", 10)
    restarted = (
        "() => Object.values(demo.peers).every(p => p.remoteUfrag && p.remoteUfrag !== "
        f"{old_ufrag!r} && p.signalingState === 'stable')"
    )
    wait_all([b], appliance, restarted, "page B applying A's restart", 10)
    (new_ufrag,) = [peer["localUfrag"] for peer in a.state()["peers"].values()]
    (seen_by_b,) = [peer["remoteUfrag"] for peer in b.state()["peers"].values()]
    assert new_ufrag == seen_by_b != old_ufrag
    wait_all(open_pages, appliance, RELAYED, "relayed again after the restart", CONNECT_TIMEOUT)
    exchange(open_pages, appliance, "after the restart")
