"""Structured logs: one line per event, ``key=value`` or JSON, to stderr (journald captures it).

Call sites log an event name and fields:
``log.info("listening", extra=fields(addr=..., port=...))``.
Nothing on a per-packet path logs; hot paths count instead (see the components' counters).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "sc_fields"


def fields(**values: Any) -> dict[str, Any]:
    """The ``extra=`` argument carrying an event's fields."""
    return {_FIELDS: values}


class _Formatter(logging.Formatter):
    def __init__(self, style: str) -> None:
        super().__init__()
        self._json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info).replace("\n", " | ")
        if self._json:
            return json.dumps(data, default=str)
        return " ".join(f"{key}={_kv(value)}" for key, value in data.items())


def _kv(value: Any) -> str:
    text = str(value)
    # Quoted (JSON escapes) when it could be taken for more than one value: a space, a quote,
    # '=' or any unprintable character (a CR or an escape sequence in a client's user name).
    if text == "" or any(ch in text for ch in ' "=') or not text.isprintable():
        return json.dumps(text)
    return text


def configure_logging(level: str, style: str) -> None:
    """Send the ``secureconnect`` loggers to stderr at ``level`` in ``style`` (kv or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(style))
    root = logging.getLogger("secureconnect")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
