#!/usr/bin/env python3
"""Render a Grafana dashboard's JSON to a PNG from a live Prometheus, without Grafana.

This stands in for Grafana's image renderer where Grafana cannot be installed (as on the
machine that drew ``docs/grafana/dashboard.png``: no Grafana package, no route to Grafana's
downloads, no container runtime). It draws **the same queries**: every panel's ``targets[].expr``
from the dashboard file, with the dashboard's variables and Grafana's built-in intervals filled
in, evaluated with the Prometheus HTTP API (``/api/v1/query_range``), drawn at the panel's
``gridPos`` on Grafana's 24-column grid. It is a faithful reading of the queries, not a copy
of Grafana's look:

* ``timeseries`` panels are lines (with the panel's unit on the y axis and a legend from each
  target's ``legendFormat``); ``stat`` panels a big number (the reducer of
  ``reduceOptions.calcs``, value mappings, threshold colours, ``noValue``) over a sparkline;
  ``row`` panels a heading. Any other panel type is drawn as a named placeholder.
* Variables: ``query`` variables of the form ``label_values(SELECTOR, LABEL)`` or
  ``label_values(LABEL)`` are asked of Prometheus (``/api/v1/label/LABEL/values``); a multi-value
  "All" becomes the regex of every value (or ``allValue``), as Grafana does for Prometheus.
  ``interval``, ``custom`` and ``constant`` variables take their ``current`` value. ``--var
  NAME=VALUE`` overrides any of them.
* ``$__interval`` is the range over the panel's width in pixels (Grafana's ``maxDataPoints``),
  rounded up to a round duration and at least the scrape interval; ``$__rate_interval`` is
  ``max($__interval + scrape, 4 * scrape)``, Grafana's formula. Give ``--scrape-interval`` the
  scrape interval of your Prometheus job (Grafana's data source setting; 15s by default).
* A query Prometheus rejects is drawn as an error in its panel and makes the exit status 1, so
  this also checks that every expression of the dashboard parses and runs.

Needs only the standard library and matplotlib (which is not a dependency of secureconnect)::

    apt-get install python3-matplotlib       # Debian; then run it with /usr/bin/python3
    pip install matplotlib                   # or into any virtualenv of your own

Pillow (which matplotlib depends on) is used when present to write the PNG with a 128-colour
palette (a quarter of the size, the same picture).

Example (scripts/dashboard-demo.py runs it this way after a real run)::

    python3 scripts/render-dashboard.py --dashboard docs/grafana/secureconnect.json \\
        --prometheus http://127.0.0.1:9090 --minutes 10 --scrape-interval 2s \\
        --out docs/grafana/dashboard.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the dashboard package beside this script, however it is run
    sys.path.insert(0, HERE)

from dashboard.promql import (  # noqa: E402 - on the path just above
    Prometheus,
    QueryError,
    parse_duration,
)
from dashboard.render import render  # noqa: E402 - on the path just above


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Render a Grafana dashboard JSON to a PNG from Prometheus (see the docstring)."
    )
    parser.add_argument("--dashboard", type=Path, required=True, help="the dashboard JSON file")
    parser.add_argument(
        "--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090"
    )
    parser.add_argument("--minutes", type=float, default=15, help="time range (default 15)")
    parser.add_argument(
        "--end", type=float, default=None, help="end of the range, Unix seconds (default: now)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1800, help="image width in px (1800)")
    parser.add_argument(
        "--scrape-interval",
        default="15s",
        help="the job's scrape interval, for $__interval and $__rate_interval (default 15s)",
    )
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a dashboard variable instead of asking Prometheus (repeatable)",
    )
    parser.add_argument(
        "--full-colour", action="store_true", help="keep the PNG's full colours (larger)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 7 * 24 * 60:
        parser.error("--minutes must be in (0, 10080]")
    if not 400 <= args.width <= 6000:
        parser.error("--width must be in [400, 6000]")
    for item in args.var:
        if "=" not in item:
            parser.error(f"--var {item!r}: NAME=VALUE expected")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    end = args.end if args.end is not None else time.time()
    start = end - args.minutes * 60
    overrides = dict(item.split("=", 1) for item in args.var)
    prometheus = Prometheus(args.prometheus)
    try:
        drawn = render(
            args.dashboard,
            prometheus,
            start,
            end,
            args.out,
            width=args.width,
            scrape=parse_duration(args.scrape_interval),
            overrides=overrides,
            palette=not args.full_colour,
        )
    except QueryError as exc:
        print(f"render-dashboard: {exc}", file=sys.stderr)
        return 2
    size = args.out.stat().st_size
    print(
        f"{args.out}: {size / 1024:.0f} KiB, {drawn.panels} panels, {drawn.queries} queries, "
        f"{drawn.series} series"
    )
    if drawn.empty:
        print(f"no data in {len(drawn.empty)}: {', '.join(drawn.empty)}")
    for error in drawn.errors:
        print(f"query error: {error}", file=sys.stderr)
    return 1 if drawn.errors else 0


if __name__ == "__main__":
    sys.exit(main())
