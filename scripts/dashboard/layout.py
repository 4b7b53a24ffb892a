"""Grafana's 24-column grid in pixels: where each panel's ``gridPos`` puts it on the image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GRID_COLUMNS = 24
ROW_PX = 30  # Grafana's grid row height in pixels (GRID_CELL_HEIGHT)
GUTTER_PX = 8  # space between panels (GRID_CELL_VMARGIN)
HEADER_PX = 64  # our title band above the grid
DPI = 100


@dataclass
class Box:
    """A panel's rectangle in pixels from the top left of the image."""

    left: float
    top: float
    width: float
    height: float


@dataclass
class Layout:
    width_px: int
    rows: int  # grid rows used

    @property
    def height_px(self) -> int:
        return HEADER_PX + self.rows * ROW_PX + GUTTER_PX

    def box(self, grid: dict[str, int]) -> Box:
        column = (self.width_px - GUTTER_PX) / GRID_COLUMNS
        return Box(
            left=GUTTER_PX + grid.get("x", 0) * column,
            top=HEADER_PX + grid.get("y", 0) * ROW_PX,
            width=grid.get("w", 12) * column - GUTTER_PX,
            height=grid.get("h", 8) * ROW_PX - GUTTER_PX,
        )


def visible_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels Grafana shows: top level ones; the panels of a collapsed row stay hidden
    inside it, as in Grafana until the row is opened."""
    return [p for p in dashboard.get("panels", []) if "gridPos" in p]
