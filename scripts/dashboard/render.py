"""The whole image: the dashboard's variables resolved, its visible panels drawn at their
places under a title band, the PNG written (with a 128-colour palette when Pillow is there).
matplotlib is imported here, when drawing starts, with the advice to install it if missing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from .layout import DPI, GUTTER_PX, HEADER_PX, Box, Layout, visible_panels
from .panels import Drawn, Renderer
from .promql import Prometheus, resolve_variables
from .theme import BACKGROUND, MUTED, TEXT

MATPLOTLIB_HELP = (
    "matplotlib is needed to draw the PNG (it is not a dependency of secureconnect): "
    "`apt-get install python3-matplotlib` and run this with /usr/bin/python3, or "
    "`pip install matplotlib` into a virtualenv of your own"
)


def render(
    dashboard_path: Path,
    prometheus: Prometheus,
    start: float,
    end: float,
    out: Path,
    *,
    width: int,
    scrape: float,
    overrides: dict[str, str],
    palette: bool,
) -> Drawn:
    try:
        import matplotlib  # noqa: PLC0415 - optional: only drawing needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise SystemExit(MATPLOTLIB_HELP) from None

    dashboard = json.loads(dashboard_path.read_text())
    panels = visible_panels(dashboard)
    rows = max((p["gridPos"].get("y", 0) + p["gridPos"].get("h", 8) for p in panels), default=1)
    layout = Layout(width, rows)
    variables = resolve_variables(dashboard, prometheus, overrides, start, end)
    renderer = Renderer(
        plt,
        layout=layout,
        prometheus=prometheus,
        variables=variables,
        start=start,
        end=end,
        scrape=scrape,
    )
    for panel in sorted(panels, key=lambda p: (p["gridPos"].get("y", 0), p["gridPos"].get("x", 0))):
        renderer.draw(panel)
    header = renderer.axes(Box(GUTTER_PX, 0, width - 2 * GUTTER_PX, HEADER_PX), frame=True)
    fmt = "%Y-%m-%d %H:%M:%S"
    span = (
        f"{datetime.fromtimestamp(start, tz=UTC).strftime(fmt)} to "
        f"{datetime.fromtimestamp(end, tz=UTC).strftime('%H:%M:%S')} UTC"
    )
    shown_vars = ", ".join(
        f"{v['name']}={variables.get(v['name'], '')}"
        for v in dashboard.get("templating", {}).get("list", [])
    )
    header.text(
        0,
        22,
        dashboard.get("title", dashboard_path.stem),
        color=TEXT,
        fontsize=16,
        fontweight="bold",
        va="center",
    )
    header.text(0, 46, f"{span}   {shown_vars}", color=MUTED, fontsize=8.5, va="center")
    header.text(
        width - 2 * GUTTER_PX,
        22,
        f"drawn by scripts/render-dashboard.py from "
        f"{dashboard_path.name} against {prometheus.url} (not Grafana's renderer)",
        color=MUTED,
        fontsize=8,
        va="center",
        ha="right",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    plt.savefig(out, dpi=DPI, facecolor=BACKGROUND)
    plt.close(renderer.figure)
    if palette:
        shrink(out)
    return renderer.drawn


def shrink(path: Path) -> None:
    """Rewrite the PNG with a 128-colour palette when Pillow is there (it is with matplotlib)."""
    try:
        from PIL import Image  # noqa: PLC0415 - optional
    except ImportError:
        return
    with Image.open(path) as image:
        quantized = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    quantized.save(path, optimize=True)
