"""``secureconnect probe``: test any STUN/TURN server from a terminal (docs/probe.md).

Sans-IO where the protocol allows (URL parsing, messages, the verdicts of each check), thin
blocking sockets around it; the command's wiring is `secureconnect.probecmd`.
"""

from __future__ import annotations

from secureconnect.probe.addresses import PRIVATE_RANGES, is_private, private_range
from secureconnect.probe.report import (
    SCHEMA_VERSION,
    render_block,
    render_footer,
    render_json,
    render_text,
    report_document,
)
from secureconnect.probe.runner import ProbeOptions, probe_url
from secureconnect.probe.urls import ProbeUrl, UrlError, parse_probe_url
from secureconnect.probe.verdicts import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Check,
    Status,
    UrlReport,
    exit_status,
)
from secureconnect.probe.wire import Credential

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PRIVATE_RANGES",
    "SCHEMA_VERSION",
    "Check",
    "Credential",
    "ProbeOptions",
    "ProbeUrl",
    "Status",
    "UrlError",
    "UrlReport",
    "exit_status",
    "is_private",
    "parse_probe_url",
    "private_range",
    "probe_url",
    "render_block",
    "render_footer",
    "render_json",
    "render_text",
    "report_document",
]
