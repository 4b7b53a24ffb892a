"""What a sans-IO signaling hub returns, sorted for a test (on pytest's pythonpath as
``hub_outbound``)."""

from __future__ import annotations

from typing import Any

from secureconnect.signal.hub import Outbound

Message = dict[str, Any]


def by_connection(outbound: list[Outbound], closes: dict[int, int]) -> dict[int, list[Message]]:
    """The messages of ``outbound`` by connection; each close code is recorded in ``closes``."""
    out: dict[int, list[Message]] = {}
    for item in outbound:
        if item.message is not None:
            out.setdefault(item.conn, []).append(item.message)
        if item.close is not None:
            closes[item.conn] = item.close
    return out
