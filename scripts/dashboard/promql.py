"""The queries' side of the renderer: PromQL durations, the dashboard's variables, Grafana's
built-in intervals (``$__interval``, ``$__rate_interval``, ``$__range``) and the few calls of
the Prometheus HTTP API it needs (``query_range``, label values)."""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

# -- durations -------------------------------------------------------------------------------


# Round durations (seconds) that $__interval is rounded up to, like Grafana's roundInterval.
ROUND_INTERVALS = (
    0.001,
    0.01,
    0.1,
    0.5,
    1,
    2,
    5,
    10,
    15,
    20,
    30,
    60,
    120,
    300,
    600,
    900,
    1200,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    604800,
)


def parse_duration(text: str) -> float:
    """``15s``, ``1m``, ``2h``, ``500ms``, ``1h30m`` -> seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def promql_duration(seconds: float) -> str:
    """Seconds as a PromQL duration (whole seconds when it is one, else milliseconds)."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def round_interval(seconds: float) -> float:
    """The smallest round duration at least ``seconds``."""
    for candidate in ROUND_INTERVALS:
        if candidate >= seconds:
            return candidate
    return ROUND_INTERVALS[-1]


# -- Prometheus --------------------------------------------------------------------------------


class QueryError(RuntimeError):
    """Prometheus answered with an error (a bad expression) or could not be reached."""


@dataclass
class Series:
    """One series of a range query: its labels and a value per step (NaN where absent)."""

    labels: dict[str, str]
    values: list[float]


class Prometheus:
    """The few calls of the Prometheus HTTP API this needs."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--prometheus must be an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            # The URL is the operator's --prometheus, checked to be http(s) above.
            with urllib.request.urlopen(  # noqa: S310
                f"{self.url}{path}?{query}", timeout=self.timeout
            ) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: the answer says why
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise QueryError(f"HTTP {exc.code} from {path}") from None
        except (OSError, ValueError) as exc:
            raise QueryError(f"{self.url}{path}: {exc}") from None
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = self._get(
            "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step}
        )
        if data.get("resultType") != "matrix":
            raise QueryError(f"unexpected result type {data.get('resultType')!r}")
        steps = round((end - start) / step) + 1
        out: list[Series] = []
        for item in data["result"]:
            values = [math.nan] * steps
            for stamp, text in item["values"]:
                index = round((float(stamp) - start) / step)
                if 0 <= index < steps:
                    values[index] = float(text)  # "NaN", "+Inf" parse too
            out.append(Series(dict(item["metric"]), values))
        return out

    def label_values(self, label: str, match: str | None, start: float, end: float) -> list[str]:
        params: dict[str, Any] = {"start": start, "end": end}
        if match:
            params["match[]"] = match
        values = self._get(f"/api/v1/label/{urllib.parse.quote(label)}/values", params)
        return sorted(str(v) for v in values)


# -- variables -------------------------------------------------------------------------------


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    if isinstance(query, dict):
        query = query.get("query", "")
    return str(query or variable.get("definition", ""))


def _current(variable: dict[str, Any]) -> str:
    current = variable.get("current") or {}
    value = current.get("value")
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else "|".join(value)
    if value in (None, "") and variable.get("options"):
        value = variable["options"][0].get("value")
    if value in (None, "") and variable.get("type") in ("interval", "custom"):
        value = str(variable.get("query", "")).split(",")[0].strip()
    return "" if value is None else str(value)


def resolve_variables(
    dashboard: dict[str, Any],
    prometheus: Prometheus,
    overrides: dict[str, str],
    start: float,
    end: float,
) -> dict[str, str]:
    """Each template variable's value as it goes into an expression, in the dashboard's order
    (a later variable's query may use an earlier one)."""
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if name in overrides:
            values[name] = overrides[name]
            continue
        if variable.get("type") != "query":
            values[name] = _current(variable)
            continue
        match = LABEL_VALUES.match(substitute(_variable_query(variable), values, {}))
        if match is None:
            raise ValueError(f"variable {name}: only label_values(...) queries are supported")
        found = prometheus.label_values(match["label"], match["selector"], start, end)
        if variable.get("includeAll") or variable.get("multi"):
            all_value = variable.get("allValue")
            values[name] = all_value or (
                "(" + "|".join(regex_escape(v) for v in found) + ")" if found else ""
            )
        else:
            values[name] = _current(variable) or (found[0] if found else "")
    return values


def regex_escape(value: str) -> str:
    """``value`` as a literal inside a regex inside a PromQL string, as Grafana escapes a
    multi-value variable for Prometheus (a backslash doubled for the string, again for the
    regex)."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def substitute(expr: str, variables: dict[str, str], builtins: dict[str, str]) -> str:
    """``$name``, ``${name}``, ``${name:format}`` and ``[[name]]`` replaced (longest names
    first, so ``$__rate_interval`` is not read as ``$__rate``)."""
    everything = {**variables, **builtins}
    for name in sorted(everything, key=len, reverse=True):
        value = everything[name].replace("\\", "\\\\")  # literal in re.sub's replacement
        expr = re.sub(r"\$\{" + re.escape(name) + r"(?::[^}]*)?\}", value, expr)
        expr = expr.replace(f"[[{name}]]", everything[name])
        expr = re.sub(r"\$" + re.escape(name) + r"(?!\w)", value, expr)
    return expr


# -- Grafana's built-in intervals -------------------------------------------------------------


def intervals(
    panel: dict[str, Any], width_px: float, span: float, scrape: float
) -> tuple[float, dict[str, str]]:
    """The step of ``panel``'s queries over ``span`` seconds, and Grafana's built-in variables:
    ``$__interval`` is the range over the panel's width in pixels (or its ``maxDataPoints``),
    rounded up to a round duration and at least the scrape interval (and the panel's own
    ``interval``); ``$__rate_interval`` is ``max($__interval + scrape, 4 * scrape)``."""
    points = max(1, int(panel.get("maxDataPoints") or width_px))
    interval = max(round_interval(span / points), scrape)
    if panel.get("interval"):
        interval = max(interval, parse_duration(substitute(panel["interval"], {}, {})))
    builtins = {
        "__rate_interval": promql_duration(max(interval + scrape, 4 * scrape)),
        "__interval": promql_duration(interval),
        "__interval_ms": str(int(interval * 1000)),
        "__range": promql_duration(span),
        "__range_s": str(int(span)),
        "__range_ms": str(int(span * 1000)),
    }
    return interval, builtins
