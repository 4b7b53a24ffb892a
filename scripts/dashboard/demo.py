"""The whole demo run: the services on loopback, 20 s of baseline, the load, then the
renderer, in a Python that has matplotlib, draws the dashboard from the run's Prometheus."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import ROOT
from .load import load
from .run import log
from .services import SCRAPE, lab


def render_python(choice: str | None) -> str | None:
    candidates = [choice] if choice else [sys.executable, "/usr/bin/python3"]
    for python in candidates:
        if (
            python
            and subprocess.run(  # noqa: S603
                [python, "-c", "import matplotlib"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return python
    return None


def demo(args: argparse.Namespace, workdir: Path) -> int:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        log("prometheus is missing: apt-get install prometheus (then keep its service off)")
        return 2
    renderer = render_python(args.render_python)
    if renderer is None:
        log("no Python with matplotlib: apt-get install python3-matplotlib")
        return 2
    redis = bool(shutil.which("redis-server")) and not args.no_redis
    with lab(workdir, prometheus, redis=redis) as running:
        started = time.time()
        log("20 s without load: the baseline")
        time.sleep(20)
        run = load(running, workdir, args.duration)
        # The picture ends 5 s before the load did: its stats show the run, not the quiet after.
        end = min(time.time(), run.wall_start + args.duration) - 5
        log("load done: 10 s more for the last scrapes")
        time.sleep(10)
        command = [
            renderer,
            str(ROOT / "scripts" / "render-dashboard.py"),
            *("--dashboard", str(ROOT / "docs" / "grafana" / "secureconnect.json")),
            *("--prometheus", running.prometheus),
            *("--minutes", f"{(end - started) / 60:.2f}", "--end", f"{end:.0f}"),
            *("--scrape-interval", SCRAPE, "--out", str(args.out)),
        ]
        log("render: " + " ".join(command))
        status = subprocess.run(command, check=False, timeout=300).returncode  # noqa: S603
        errors = [line for line in running.app.log_text().splitlines() if "level=error" in line]
        for line in errors[:10]:
            log(f"appliance error: {line}")
    if run.errors:
        log(f"load loops that failed: {run.errors}")
    return status
