"""The panels drawn on one matplotlib figure, each at its place on the grid: ``timeseries``
as lines (the panel's unit on the y axis, a legend from ``legendFormat``), ``stat`` as a big
number (reducer, value mappings, threshold colours, ``noValue``) over a sparkline, ``row`` as a
heading, any other type as a named placeholder. Each panel's queries are evaluated here, and
their errors are drawn in the panel and kept in :class:`Drawn`.

matplotlib comes in as ``plt`` (see :mod:`.render`) or is imported when an axis is styled: this
module imports without it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .fields import format_value, legend, reduce, stat_text
from .layout import DPI, Box, Layout
from .promql import Prometheus, QueryError, Series, intervals, substitute
from .theme import BACKGROUND, BORDER, ERROR, MUTED, PALETTE, PANEL, TEXT

MAX_LEGEND_ROWS = 4


@dataclass
class Drawn:
    """What rendering found: panels drawn, queries run, series, and the errors."""

    panels: int = 0
    queries: int = 0
    series: int = 0
    empty: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Renderer:
    """Draws the panels on one matplotlib figure."""

    def __init__(
        self,
        plt: Any,
        *,
        layout: Layout,
        prometheus: Prometheus,
        variables: dict[str, str],
        start: float,
        end: float,
        scrape: float,
    ) -> None:
        self.plt = plt
        self.layout = layout
        self.prometheus = prometheus
        self.variables = variables
        self.start = start
        self.end = end
        self.scrape = scrape
        self.drawn = Drawn()
        self.figure = plt.figure(
            figsize=(layout.width_px / DPI, layout.height_px / DPI), dpi=DPI, facecolor=BACKGROUND
        )

    # -- coordinates

    def axes(self, box: Box, *, frame: bool = False) -> Any:
        """An axes covering ``box`` (figure fractions, matplotlib counts from the bottom)."""
        w, h = self.layout.width_px, self.layout.height_px
        rect = (box.left / w, 1 - (box.top + box.height) / h, box.width / w, box.height / h)
        ax = self.figure.add_axes(rect)
        if frame:
            ax.set_xlim(0, box.width)
            ax.set_ylim(box.height, 0)
            ax.axis("off")
        return ax

    # -- queries

    def evaluate(self, panel: dict[str, Any], box: Box) -> tuple[list[tuple[str, Series]], str]:
        """Every visible target of ``panel`` over the range: (legend, series) pairs, and the
        first error Prometheus answered ("" if none; every one is kept in ``drawn.errors``)."""
        interval, builtins = intervals(panel, box.width, self.end - self.start, self.scrape)
        results: list[tuple[str, Series]] = []
        first_error = ""
        for target in panel.get("targets", []):
            if target.get("hide") or not target.get("expr"):
                continue
            expr = substitute(target["expr"], self.variables, builtins)
            self.drawn.queries += 1
            try:
                found = self.prometheus.query_range(expr, self.start, self.end, interval)
            except QueryError as exc:
                self.drawn.errors.append(f"{panel.get('title')!r} {target.get('refId')}: {exc}")
                first_error = first_error or str(exc)
                continue
            for series in found:
                results.append((legend(target.get("legendFormat", ""), series, expr), series))
        self.drawn.series += len(results)
        return results, first_error

    # -- panels

    def title(self, panel: dict[str, Any]) -> str:
        """The panel's title with the dashboard's variables filled in, as Grafana shows it."""
        return substitute(str(panel.get("title", "")), self.variables, {})

    def panel_frame(self, panel: dict[str, Any], box: Box, colour: str = PANEL) -> Any:
        frame = self.axes(box, frame=True)
        patch = self.plt.Rectangle(
            (0, 0), box.width, box.height, facecolor=colour, edgecolor=BORDER, linewidth=0.8
        )
        frame.add_patch(patch)
        frame.text(
            8,
            6,
            self.title(panel),
            color=TEXT,
            fontsize=9.5,
            fontweight="bold",
            va="top",
            ha="left",
        )
        return frame

    def draw(self, panel: dict[str, Any]) -> None:
        box = self.layout.box(panel["gridPos"])
        kind = panel.get("type", "")
        self.drawn.panels += 1
        if kind == "row":
            self.row(panel, box)
        elif kind == "timeseries":
            self.timeseries(panel, box)
        elif kind == "stat":
            self.stat(panel, box)
        else:
            frame = self.panel_frame(panel, box)
            frame.text(
                box.width / 2,
                box.height / 2,
                f"({kind} panel: not drawn by this script)",
                color=MUTED,
                ha="center",
                va="center",
                fontsize=9,
            )

    def row(self, panel: dict[str, Any], box: Box) -> None:
        frame = self.axes(box, frame=True)
        marker = "\u25b8 " if panel.get("collapsed") else "\u25be "
        frame.text(
            0,
            box.height / 2 + 2,
            marker + self.title(panel),
            color=TEXT,
            fontsize=12,
            fontweight="bold",
            va="center",
            ha="left",
        )
        frame.plot([0, box.width], [box.height, box.height], color=BORDER, linewidth=1)

    def message(self, frame: Any, box: Box, text: str, colour: str = MUTED) -> None:
        frame.text(
            box.width / 2,
            box.height / 2 + 8,
            text,
            color=colour,
            ha="center",
            va="center",
            fontsize=9,
            wrap=True,
        )

    def timeseries(self, panel: dict[str, Any], box: Box) -> None:
        frame = self.panel_frame(panel, box)
        results, error = self.evaluate(panel, box)
        title = panel.get("title", "")
        if error:
            self.message(frame, box, "query error:\n" + error[:160], ERROR)
            return
        if not results:
            self.drawn.empty.append(title)
            self.message(frame, box, "No data")
            return
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        decimals = defaults.get("decimals")
        custom = defaults.get("custom", {})
        # The legend: as many columns as the widest entry allows, at most MAX_LEGEND_ROWS rows.
        labels = [name for name, _ in results]
        widest = max(len(name) for name in labels) * 5.6 + 26
        columns = max(1, min(len(labels), int((box.width - 16) // widest)))
        rows = min(MAX_LEGEND_ROWS, math.ceil(len(labels) / columns))
        legend_px = rows * 14 + 6
        plot = Box(box.left + 58, box.top + 26, box.width - 70, box.height - 26 - 22 - legend_px)
        ax = self.axes(plot)
        ax.set_facecolor(PANEL)
        times = self.times(len(results[0][1].values))
        opacity = custom.get("fillOpacity", 0) / 100
        for index, (name, series) in enumerate(results):
            colour = PALETTE[index % len(PALETTE)]
            ax.plot(
                times,
                series.values,
                color=colour,
                linewidth=custom.get("lineWidth", 1) + 0.3,
                label=name,
            )
            if opacity:
                finite = [v if math.isfinite(v) else math.nan for v in series.values]
                ax.fill_between(times, finite, 0, color=colour, alpha=opacity, linewidth=0)
        self.axis_style(ax, unit, decimals, custom, results)
        shown = columns * rows
        handles, names = ax.get_legend_handles_labels()
        if len(names) > shown:
            handles, names = handles[: shown - 1], [*names[: shown - 1]]
            names.append(f"... {len(labels) - shown + 1} more")
            handles.append(self.plt.Line2D([], [], color=PANEL))
        ax.legend(
            handles,
            names,
            loc="upper left",
            bbox_to_anchor=(-58 / plot.width, -22 / plot.height),
            ncol=columns,
            frameon=False,
            fontsize=7.5,
            labelcolor=TEXT,
            handlelength=1.2,
            borderaxespad=0,
            columnspacing=1.2,
            handletextpad=0.4,
        )

    def times(self, steps: int) -> list[datetime]:
        span = self.end - self.start
        step = span / max(1, steps - 1)
        return [datetime.fromtimestamp(self.start + i * step, tz=UTC) for i in range(steps)]

    def axis_style(
        self,
        ax: Any,
        unit: str,
        decimals: int | None,
        custom: dict[str, Any],
        results: list[tuple[str, Series]],
    ) -> None:
        from matplotlib import dates, ticker  # noqa: PLC0415 - loaded with matplotlib

        finite = [v for _, s in results for v in s.values if math.isfinite(v)]
        low = min(finite, default=0.0)
        high = max(finite, default=0.0)
        if "axisSoftMin" in custom:
            low = min(low, custom["axisSoftMin"])
        if high <= low:
            high = low + 1
        ax.set_ylim(low, high + (high - low) * 0.08)
        ax.set_xlim(self.times(2)[0], self.times(2)[1])
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=4))
        ax.yaxis.set_major_formatter(
            ticker.FuncFormatter(lambda v, _pos: format_value(v, unit, decimals))
        )
        ax.xaxis.set_major_locator(time_locator(dates, self.end - self.start))
        ax.xaxis.set_major_formatter(
            dates.DateFormatter("%H:%M:%S" if self.end - self.start < 240 else "%H:%M", tz=UTC)
        )
        ax.tick_params(colors=MUTED, labelsize=7, length=0, pad=3)
        ax.grid(color=BORDER, linewidth=0.6)
        for spine in ax.spines.values():
            spine.set_visible(False)

    def stat(self, panel: dict[str, Any], box: Box) -> None:
        results, error = self.evaluate(panel, box)
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        title = panel.get("title", "")
        calc = (panel.get("options", {}).get("reduceOptions", {}).get("calcs") or ["last"])[0]
        reduced = [(name, reduce(series.values, calc)) for name, series in results]
        values = [(name, v) for name, v in reduced if v is not None]
        if error or not values:
            if not error:
                self.drawn.empty.append(title)
            frame = self.panel_frame(panel, box)
            text = "query error" if error else str(defaults.get("noValue", "No data"))
            frame.text(
                box.width / 2,
                box.height / 2 + 10,
                text,
                color=ERROR if error else MUTED,
                ha="center",
                va="center",
                fontsize=20,
                fontweight="bold",
            )
            return
        # One cell per series, side by side (Grafana's auto orientation for a wide panel).
        cell_width = box.width / len(values)
        for index, (name, value) in enumerate(values):
            cell = Box(box.left + index * cell_width, box.top, cell_width, box.height)
            text, colour = stat_text(value, defaults)
            frame = self.panel_frame(panel if index == 0 else {"title": ""}, cell, colour)
            if len(values) > 1:
                frame.text(8, 22, name, color="white", fontsize=8, va="top")
            series = results[[n for n, _ in results].index(name)][1]
            self.sparkline(cell, series.values)
            frame.text(
                cell.width / 2,
                cell.height / 2 + 8,
                text,
                color="white",
                ha="center",
                va="center",
                fontsize=22 if len(text) < 9 else 16,
                fontweight="bold",
            )

    def sparkline(self, cell: Box, values: list[float]) -> None:
        finite = [v for v in values if math.isfinite(v)]
        if len(finite) < 2:
            return
        ax = self.axes(
            Box(
                cell.left + 1, cell.top + cell.height * 0.55, cell.width - 2, cell.height * 0.45 - 1
            )
        )
        times = self.times(len(values))
        low, high = min(finite), max(finite)
        ax.fill_between(times, values, low, color="white", alpha=0.13, linewidth=0)
        ax.plot(times, values, color="white", alpha=0.35, linewidth=1)
        ax.set_ylim(low, high + (high - low or 1) * 0.1)
        ax.set_xlim(times[0], times[-1])
        ax.axis("off")


def time_locator(dates: Any, span: float) -> Any:
    """Ticks every round number of seconds, minutes or hours: 4 to 8 of them over ``span``."""
    for step in (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200):
        if span / step <= 8:
            break
    if step < 60:
        return dates.SecondLocator(bysecond=range(0, 60, step))
    if step < 3600:
        return dates.MinuteLocator(byminute=range(0, 60, step // 60))
    if step < 86400:
        return dates.HourLocator(byhour=range(0, 24, step // 3600))
    return dates.DayLocator()
