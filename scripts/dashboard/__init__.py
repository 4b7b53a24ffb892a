"""The code behind ``scripts/render-dashboard.py`` and ``scripts/dashboard-demo.py``
(docs/grafana.md), in modules named for what they hold.

The renderer (any Python 3.11; matplotlib only where it draws):

* :mod:`.promql`: durations, the dashboard's variables, Grafana's built-in intervals
  (``$__interval``, ``$__rate_interval``) and the Prometheus HTTP API;
* :mod:`.fields`: how a value is shown: units, reducers, value mappings, thresholds, legends;
* :mod:`.layout` and :mod:`.theme`: Grafana's grid in pixels, its dark theme's colours;
* :mod:`.panels`: each panel drawn on a matplotlib figure; :mod:`.render`: the whole image.

The demo (the project's virtualenv: it needs the package, aioice and websockets):

* :mod:`.run`: the load loops' clock, stop flag and log; :mod:`.turnclient`: the tests' TURN
  client; :mod:`.services`: Redis, the appliance and Prometheus on loopback;
* :mod:`.load`, :mod:`.oddclients`, :mod:`.signaling`: the load; :mod:`.demo`: the whole run.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
