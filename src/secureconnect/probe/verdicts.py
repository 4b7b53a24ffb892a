"""What a probe found: one `Check` per test, a `UrlReport` per URL, the exit status.

A check is ``ok``, ``warn`` (works, but something should be looked at), ``fail`` (broken: the
command exits 1) or ``skip`` (not applicable, or impossible after an earlier failure). A failed
or warned check carries the ``fix`` when there is one. ``details`` holds the measurements, in
the JSON units (milliseconds, ``ip:port`` text), so the report needs no knowledge of checks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

#: Exit status (docs/probe.md): every check ok or warn / a check failed / bad usage.
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class Status(enum.Enum):
    """A check's outcome; the values are the JSON spelling."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


Detail = str | int | float | bool | None | list[str]


@dataclass(frozen=True, slots=True)
class Check:
    """One test's outcome: ``id`` is stable (docs/probe.md lists them), ``summary`` one line."""

    id: str
    status: Status
    summary: str
    fix: str | None = None
    details: Mapping[str, Detail] = field(default_factory=dict)


@dataclass
class UrlReport:
    """The checks run against one URL, in the order they ran."""

    url: str
    transport: str
    server: str | None = None  # the address it resolved to and was probed at, "ip:port"
    checks: list[Check] = field(default_factory=list)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def skip_rest(self, ids: Iterable[str], why: str) -> None:
        """Record ``ids`` as skipped because of an earlier failure (``why``)."""
        for check_id in ids:
            self.checks.append(Check(check_id, Status.SKIP, why))

    @property
    def failed(self) -> bool:
        return any(check.status is Status.FAIL for check in self.checks)


def exit_status(reports: Iterable[UrlReport]) -> int:
    """0 when no check failed (warnings allowed), 1 otherwise."""
    return EXIT_FAILED if any(report.failed for report in reports) else EXIT_OK


def ms(seconds: float) -> float:
    """Seconds as milliseconds with 0.01 ms resolution, the unit of every time in the report."""
    return round(seconds * 1000.0, 2)
