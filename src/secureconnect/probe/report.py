"""The probe's output: one block per URL for people, one JSON document for CI (docs/probe.md
has the schema).

Human output::

    turn:127.0.0.1:3478?transport=udp  →  127.0.0.1:3478 over udp
      ok    binding           reachable, RTT 0.21 ms, mapped 127.0.0.1:40211
      FAIL  credential        credential rejected (401 Unauthorized, realm 'x'): ...
                              fix: use the server's current shared secret ...
      => FAIL: 1 check failed

Both renderings are pure functions of the `UrlReport`s, so a test can check them without a
server and the JSON never disagrees with the text.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from typing import Any, Final

from secureconnect import __version__
from secureconnect.probe.verdicts import Status, UrlReport, exit_status

#: The JSON document's ``schema``: bumped when a field changes meaning or goes away.
SCHEMA_VERSION: Final = 1
_LABELS: Final = {Status.OK: "ok", Status.WARN: "warn", Status.FAIL: "FAIL", Status.SKIP: "skip"}
_ID_WIDTH: Final = 17
_WIDTH: Final = 100


def _wrap(text: str, width: int) -> list[str]:
    # Names like "self-signed" and "turn.relay_port_min" stay whole.
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)


def _verdict_line(report: UrlReport) -> str:
    failed = sum(check.status is Status.FAIL for check in report.checks)
    warned = sum(check.status is Status.WARN for check in report.checks)
    if failed:
        return f"=> FAIL: {failed} check{'s' * (failed > 1)} failed"
    if warned:
        return f"=> ok, with {warned} warning{'s' * (warned > 1)}"
    return "=> ok"


def render_block(report: UrlReport) -> str:
    """One URL's block: its heading, a line per check with its fix indented below, a verdict."""
    indent = " " * (2 + 6 + _ID_WIDTH)
    where = f"{report.server} over {report.transport}" if report.server else report.transport
    lines = [f"{report.url}  →  {where}"]
    for check in report.checks:
        head = f"  {_LABELS[check.status]:<5} {check.id:<{_ID_WIDTH}}"
        body = _wrap(check.summary, _WIDTH - len(indent)) or [""]
        lines.append(f"{head}{body[0]}")
        lines.extend(indent + more for more in body[1:])
        if check.fix and check.status in (Status.FAIL, Status.WARN):
            lines.extend(indent + part for part in _wrap("fix: " + check.fix, _WIDTH - len(indent)))
    lines.append(f"  {_verdict_line(report)}")
    return "\n".join(lines) + "\n\n"


def render_footer(reports: Sequence[UrlReport]) -> str:
    """The last line: how many URLs, how many with failures."""
    failed = sum(report.failed for report in reports)
    probed = f"{len(reports)} URL{'s' * (len(reports) != 1)} probed"
    return f"{probed}: {failed} with failures\n" if failed else f"{probed}: all ok\n"


def render_text(reports: Sequence[UrlReport]) -> str:
    """The human-readable report: every block, then the footer."""
    return "".join(render_block(report) for report in reports) + render_footer(reports)


def report_document(reports: Sequence[UrlReport], *, timeout: float) -> dict[str, Any]:
    """The JSON document (docs/probe.md, "JSON output")."""
    status = exit_status(reports)
    return {
        "schema": SCHEMA_VERSION,
        "tool": f"secureconnect probe {__version__}",
        "ok": status == 0,
        "exit_status": status,
        "timeout_s": timeout,
        "urls": [
            {
                "url": report.url,
                "transport": report.transport,
                "server": report.server,
                "ok": not report.failed,
                "checks": [
                    {
                        "id": check.id,
                        "status": check.status.value,
                        "summary": check.summary,
                        "fix": check.fix,
                        "details": dict(check.details),
                    }
                    for check in report.checks
                ],
            }
            for report in reports
        ],
    }


def render_json(reports: Sequence[UrlReport], *, timeout: float) -> str:
    return (
        json.dumps(report_document(reports, timeout=timeout), indent=2, ensure_ascii=False) + "\n"
    )
