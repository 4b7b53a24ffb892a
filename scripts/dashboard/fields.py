"""How Grafana shows a field's values: units (``fieldConfig.defaults.unit``), a stat panel's
reducer, value mappings and threshold colours, and a series' legend (``legendFormat``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from .promql import Series
from .theme import NAMED_COLOURS

# -- units ----------------------------------------------------------------------------------


def _scaled(value: float, base: float, prefixes: tuple[str, ...]) -> tuple[float, str]:
    index = 0
    while abs(value) >= base and index < len(prefixes) - 1:
        value /= base
        index += 1
    return value, prefixes[index]


def _number(value: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{value:.{decimals}f}"
    magnitude = abs(value)
    if magnitude == 0 or magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2f}".rstrip("0").rstrip(".")


def format_value(  # noqa: PLR0911 - one return per family of units
    value: float, unit: str, decimals: int | None = None
) -> str:
    """``value`` as Grafana would print it in ``unit`` (the units this dashboard uses, and a
    few more; anything else prints as a number followed by the unit's name)."""
    if math.isnan(value):
        return "NaN"
    si = ("", " K", " M", " G", " T", " P")
    rates = {"Bps": " B/s", "pps": " p/s", "reqps": " req/s", "ops": " ops/s", "short": ""}
    if unit in ("bytes", "decbytes"):
        iec = unit == "bytes"
        scaled, prefix = _scaled(
            value, 1024 if iec else 1000, ("", "Ki", "Mi", "Gi", "Ti") if iec else si
        )
        return f"{_number(scaled, decimals)} {prefix.strip()}B"
    if unit == "Bps":
        scaled, prefix = _scaled(value, 1000, ("", " k", " M", " G", " T"))
        return f"{_number(scaled, decimals)}{prefix or ' '}B/s".replace("  ", " ")
    if unit in rates:
        scaled, prefix = _scaled(value, 1000, si)
        return f"{_number(scaled, decimals)}{prefix}{rates[unit]}"
    if unit == "s":
        magnitude = abs(value)
        for limit, div, name in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "hour")):
            if magnitude < limit:
                if name == "s" and 0 < magnitude < 1:
                    return f"{_number(value * 1000, decimals)} ms"
                return f"{_number(value / div, decimals)} {name}"
        return f"{_number(value / 86400, decimals)} day"
    if unit == "percentunit":
        return f"{_number(value * 100, decimals)}%"
    if unit in ("none", ""):
        return _number(value, decimals)
    return f"{_number(value, decimals)} {unit}"


# -- stat values and legends ----------------------------------------------------------------


def reduce(values: list[float], calc: str) -> float | None:
    """Grafana's reducers for a stat panel (the common ones)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    reducers: dict[str, Callable[[], float]] = {
        "lastNotNull": lambda: finite[-1],
        "last": lambda: values[-1] if not math.isnan(values[-1]) else finite[-1],
        "firstNotNull": lambda: finite[0],
        "first": lambda: finite[0],
        "mean": lambda: sum(finite) / len(finite),
        "max": lambda: max(finite),
        "min": lambda: min(finite),
        "sum": lambda: sum(finite),
        "count": lambda: float(len(finite)),
        "delta": lambda: finite[-1] - finite[0],
        "range": lambda: max(finite) - min(finite),
    }
    return reducers.get(calc, reducers["lastNotNull"])()


def stat_text(value: float, defaults: dict[str, Any]) -> tuple[str, str]:
    """The text and background colour of a stat value: a value mapping first, else the
    formatted value coloured by the last threshold step at or below it."""
    for mapping in defaults.get("mappings", []):
        if mapping.get("type") != "value":
            continue
        for key, result in mapping.get("options", {}).items():
            try:
                hit = float(key) == value
            except ValueError:
                hit = False
            if hit:
                colour = result.get("color")
                return str(result.get("text", key)), colour_of(colour or threshold(value, defaults))
    text = format_value(value, defaults.get("unit", "short"), defaults.get("decimals"))
    return text, colour_of(threshold(value, defaults))


def threshold(value: float, defaults: dict[str, Any]) -> str:
    steps = defaults.get("thresholds", {}).get("steps", [])
    colour = "green"
    for step in steps:
        if step.get("value") is None or value >= float(step["value"]):
            colour = step.get("color", colour)
    return colour


def colour_of(name: str) -> str:
    return NAMED_COLOURS.get(name, name if name.startswith("#") else NAMED_COLOURS["blue"])


def legend(template: str, series: Series, expr: str) -> str:
    """Grafana's legend: ``legendFormat`` with ``{{label}}`` filled in; by default the series'
    labels (or the expression when it has none)."""
    if template and template != "__auto":
        return re.sub(
            r"\{\{\s*([\w.]+)\s*\}\}", lambda m: series.labels.get(m.group(1), ""), template
        )
    labels = {k: v for k, v in series.labels.items() if k != "__name__"}
    name = series.labels.get("__name__", "")
    if not labels:
        return name or expr
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
