"""The colours the renderer draws with: Grafana's dark theme, roughly, its classic palette
for series, and the named colours of thresholds and value mappings."""

from __future__ import annotations

BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9e"
ERROR = "#f2495c"
PALETTE = (  # Grafana's "classic palette"
    "#7eb26d",
    "#eab839",
    "#6ed0e0",
    "#ef843c",
    "#e24d42",
    "#1f78c1",
    "#ba43a9",
    "#705da0",
    "#508642",
    "#cca300",
    "#447ebc",
    "#c15c17",
    "#890f02",
    "#0a437c",
    "#6d1f62",
    "#584477",
)
NAMED_COLOURS = {
    "green": "#37872d",
    "red": "#c4162a",
    "orange": "#fa6400",
    "yellow": "#e0b400",
    "blue": "#1f60c4",
    "purple": "#8f3bb8",
    "transparent": PANEL,
    "text": PANEL,
}
