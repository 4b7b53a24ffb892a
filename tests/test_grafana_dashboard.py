"""The Grafana dashboard of issue #17 (docs/grafana/secureconnect.json, docs/grafana.md): an
importable dashboard whose every query names a metric the appliance really exposes.

The structure is checked on the file alone: a ``${DS_PROMETHEUS}`` input that every panel and
target uses, the ``job``/``instance`` variables in every selector, unique ids, a ``gridPos``
for every panel on the 24-column grid without overlaps, counters read with ``rate()`` over
``$__rate_interval`` (histogram quantiles over the ``$quantile_window`` variable).

The names are checked against a real ``/metrics``: one appliance (TURN with STUN on a port of
its own, so that the ``stun_*`` family is there, and signaling with a Redis backplane, so that
the ``signal_backplane_*`` family is) and the little traffic after which the rest appear (a
401, a wrong password, an allocation deleted, a signaling error): labelled series such as
``turn_auth_failures_total{reason}`` have no sample before their first event. So no name is
taken on trust from the docs: each one is a sample name the running appliance printed.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from appliance import AllInOnePorts, free_port, run_appliance
from redis_server import RedisServer
from turnwire import Credential, Session, UdpConn
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "secureconnect.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SELECTOR = 'job=~"$job",instance=~"$instance"'
RANGES = {"$__rate_interval", "$quantile_window"}
# PromQL words that are not metric names (functions are recognised by their parenthesis).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-level panels and those inside (collapsed) rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target."""
    return [
        (panel["title"], target["expr"])
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: label values, matchers, ranges and the label
    lists of ``by (...)``/``on (...)`` removed, then every identifier not followed by ``(``
    (a function or an aggregation) and not a keyword."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\b(?!\s*\()", bare):
        if match.group(1).lower() not in KEYWORDS:
            names.add(match.group(1))
    return names


def test_metric_names_parses_selectors_functions_and_label_lists() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(turn_x_bucket{job=~"$job",le="5"}'
        "[$__rate_interval]))) / sum(rate(turn_y_count[5m])) or vector(0) > 0 and on (user) up"
    )
    assert metric_names(expr) == {"turn_x_bucket", "turn_y_count", "up"}


def test_the_dashboard_is_importable() -> None:
    dashboard = load()
    inputs = dashboard["__inputs"]
    assert [(i["name"], i["type"], i["pluginId"]) for i in inputs] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard.get("id") is None  # an import must not overwrite someone's dashboard 1
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["definition"].startswith("label_values(")
    assert '$job"' in variables["instance"]["definition"]  # instances of the chosen jobs


def test_every_panel_has_a_place_an_id_and_the_input_datasource() -> None:
    panels = all_panels(load())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= grid.keys(), panel["title"]
        assert grid["x"] >= 0
        assert grid["w"] >= 1
        assert grid["h"] >= 1
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["refId"]
    refs = [[t["refId"] for t in p.get("targets", [])] for p in panels]
    assert all(len(r) == len(set(r)) for r in refs)


def test_every_selector_filters_by_job_and_instance_and_ranges_are_variables() -> None:
    for title, expr in expressions(load()):
        selectors = re.findall(r"\{([^}]*)\}", expr)
        assert len(selectors) == len(metric_names(expr)), (title, expr)  # no bare metric name
        for selector in selectors:
            assert selector.startswith(SELECTOR), (title, expr)
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in RANGES, (title, expr)
        if "$quantile_window" in expr:  # the histogram panels only
            assert "histogram_quantile" in expr or "_sum" in expr, (title, expr)
        for name in metric_names(expr):
            counted = name.endswith(("_total", "_bucket", "_sum", "_count"))
            assert not counted or f"rate({name}" in expr, (title, name)  # never a raw counter


# -- against a real /metrics -----------------------------------------------------------------


def scrape(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the generated self-signed certificate, on loopback
    url = f"https://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def traffic(turn_port: int, signal_port: int, secret: str) -> None:
    """What makes the labelled series appear: a 401 challenge (turn_error_responses_total), a
    wrong password (turn_auth_failures_total), an allocation deleted
    (turn_allocations_ended_total, the lifetime histogram), a signaling error
    (signal_errors_total)."""
    server = ("127.0.0.1", turn_port)
    wrong = Session(UdpConn(server), Credential("4000000000:mallory", "wrong"))
    assert wrong.allocate() is not None
    wrong.conn.close()
    good = Session(UdpConn(server), Credential.rest(secret, "alice"))
    assert good.allocate() is not None
    assert good.refresh(0) is not None
    good.conn.close()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with connect(f"wss://127.0.0.1:{signal_port}/ws", ssl=context, open_timeout=5) as ws:
        ws.send(json.dumps({"type": "signal", "to": "p-000000000000", "data": {}}))
        assert json.loads(ws.recv(timeout=5))["type"] == "error"


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> set[str]:
    """The sample names of a real appliance's /metrics, after :func:`traffic`."""
    workdir = tmp_path_factory.mktemp("dashboard")
    ports = AllInOnePorts.free()
    settings = (
        *ports.settings(),
        f"stun.port={free_port()}",  # a port of its own: the STUN component and stun_*
        f"stun.tls_port={free_port(socket.SOCK_STREAM)}",
        f"signal.backplane={redis.url}",
    )
    state = workdir / "state"
    with run_appliance(workdir, state_dir=state, settings=settings) as app:
        traffic(ports.turn, ports.wss, (state / "turn-secret").read_text().split()[0])
        text = scrape(ports.wss)
        app.stop()
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_every_metric_the_dashboard_reads_is_exposed(exposed: set[str]) -> None:
    used = {name for _, expr in expressions(load()) for name in metric_names(expr)}
    used.discard("up")  # Prometheus's own, one per scrape target
    missing = sorted(used - exposed)
    assert not missing, f"not in /metrics: {missing}"
    # and the dashboard covers every family of the accounting (docs/metrics.md)
    for family in (
        "turn_allocations_ended_total",
        "turn_allocation_lifetime_seconds_bucket",
        "turn_user_relayed_bytes_total",
        "turn_user_allocations_total",
        "turn_auth_failures_total",
        "signal_session_duration_seconds_bucket",
        "signal_backplane_up",
    ):
        assert family in used, family
