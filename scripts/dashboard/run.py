"""What the demo's load loops share: :class:`Run` (the clock, the stop flag, the errors),
:func:`log`, the users they log in as, and how long any one exchange may take."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
STEP = 10.0  # seconds any one exchange may take


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Run:
    """The shared clock and stop flag of the load loops."""

    def __init__(self, duration: float) -> None:
        self.start = time.monotonic()
        self.wall_start = time.time()
        self.duration = duration
        self.stop = threading.Event()
        self.errors: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.duration - self.elapsed()

    def running(self) -> bool:
        return not self.stop.is_set() and self.left() > 0

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (less if the run ends); whether it still runs."""
        self.stop.wait(max(0.0, min(seconds, self.left())))
        return self.running()

    def until(self, fraction: float) -> bool:
        """Wait until ``fraction`` of the run; whether it still runs."""
        return self.sleep(fraction * self.duration - self.elapsed())

    def guarded(self, name: str, body: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # a load loop that fails is reported, the others go on
                self.errors.append(f"{name}: {exc!r}")
                log(f"load {name} failed: {exc!r}")

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread
