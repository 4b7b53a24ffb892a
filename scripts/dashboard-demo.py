#!/usr/bin/env python3
"""A real run for the Grafana dashboard's picture (docs/grafana.md): the appliance, a Redis
backplane and a Prometheus on loopback, a few minutes of varied load, then
``scripts/render-dashboard.py`` draws ``docs/grafana/secureconnect.json`` from that Prometheus.

Run it with the project's virtualenv (it needs the package, aioice and websockets) from the
repository's root::

    .venv/bin/python scripts/dashboard-demo.py                    # about 7 minutes
    .venv/bin/python scripts/dashboard-demo.py --duration 90 --out /tmp/dashboard.png

Needs Debian's ``prometheus`` (its packaged service stays off: this starts its own),
``turnutils_uclient`` and ``turnutils_peer`` (coturn), ``redis-server`` (optional: without it the
backplane row is empty), and matplotlib for the renderer (``apt-get install python3-matplotlib``:
the rendering runs with ``--render-python``, by default the first of this interpreter and
/usr/bin/python3 that has it).

Everything stays on loopback: the appliance listens on 127.0.0.1 (ports picked free), the clients
connect from 127.0.0.1 (and 127.0.0.2/127.0.0.3 for the failed logins, so that their rate limit
does not hit the others), relays go to echo peers on 127.0.0.1. Every loop is bounded in count
and in time (``--duration``, at most 15 minutes), and every process this starts is stopped at the
end, however it ends (the work directory in /tmp is removed unless ``--keep``).

What the load does (times are fractions of ``--duration``):

* STUN Binding requests to the STUN port at a rate that rises and falls (5-30/s), a non-STUN
  datagram now and then, a Binding over TCP every 20 s;
* calls: pairs of aioice agents, relay only, each end with TURN REST credentials of its own
  user minted by ``secureconnect credentials --user NAME`` (ten users; ``turn.metrics_users = 6``
  so the lightest fall into ``other``), over UDP or TCP, 10-60 s of 200-1000 byte packets each
  way, then closed (Refresh 0); up to 4 at once;
* three ``turnutils_uclient`` runs (3 flows each, to a ``turnutils_peer`` echo) with REST
  credentials of heavier users;
* allocations left to expire (``turn.default_lifetime = 30``), a user over its quota
  (``turn.user_quota = 6``: 486), CreatePermission to a private address (403);
* failed logins: a burst of wrong passwords from 127.0.0.2 (401 unauthorized, then dropped by
  ``turn.unauthorized_rate`` and the back-off), single wrong passwords, expired REST credentials
  and a wrong realm from 127.0.0.3;
* signaling: WebSocket peers in rooms of 2-3 exchanging messages, leaving, or dropping their
  connection (some resume, the others expire after ``signal.resume_grace = 5``), and a few
  protocol errors (``not-joined``, ``unknown-peer``);
* Redis stopped for 12 s at 60 % of the run and started again (``signal_backplane_up`` drops).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the dashboard package beside this script, however it is run
    sys.path.insert(0, HERE)

from dashboard import ROOT  # noqa: E402 - on the path just above
from dashboard.demo import demo  # noqa: E402 - on the path just above
from dashboard.run import log  # noqa: E402 - on the path just above

MAX_DURATION = 900.0


def interrupted(_signum: int, _frame: object) -> None:
    """SIGTERM: stop like Ctrl-C (the load stops, every process started is stopped)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=360, help="seconds of load (360)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "grafana" / "dashboard.png", help="the PNG"
    )
    parser.add_argument("--render-python", help="a Python with matplotlib for the renderer")
    parser.add_argument("--no-redis", action="store_true", help="no Redis backplane")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if not 30 <= args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in [30, {MAX_DURATION:.0f}]")
    args.out = args.out.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="secureconnect-dashboard-"))
    signal.signal(signal.SIGTERM, interrupted)
    try:
        return demo(args, workdir)
    finally:
        if args.keep:
            log(f"kept {workdir} (app.log, prometheus.log, tsdb/)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
