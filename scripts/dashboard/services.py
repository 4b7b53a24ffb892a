"""The demo's services on loopback, all stopped however the run ends: Redis, the appliance
and a Prometheus that scrapes it (:func:`lab`), helper processes with their logs in the work
directory, and TURN REST credentials minted with ``secureconnect credentials``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from secureconnect.launcher import (
    PYTHON_M,
    AllInOnePorts,
    Running,
    free_port,
    run_appliance,
    stop_process,
)

from .run import log

SCRAPE = "2s"


@contextlib.contextmanager
def process(argv: list[str], workdir: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A helper process (its output in ``workdir/NAME.log``), stopped when the block ends."""
    with (workdir / f"{name}.log").open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        yield proc
    finally:
        stop_process(proc, timeout=10)


def wait_http(url: str, timeout: float, check: Callable[[bytes], bool] = lambda _b: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as response,  # noqa: S310 - loopback
        ):
            if check(response.read()):
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready in {timeout} s")


def start_redis(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "redis-server"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    proc = subprocess.Popen(  # noqa: S603
        [*argv, "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc
        time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError("redis-server did not start")


def prometheus_config(workdir: Path, signal_port: int) -> Path:
    config = workdir / "prometheus.yml"
    config.write_text(
        f"""global:
  scrape_interval: {SCRAPE}
  scrape_timeout: {SCRAPE}
  evaluation_interval: 15s
scrape_configs:
  - job_name: secureconnect
    scheme: https
    metrics_path: /metrics
    tls_config:
      insecure_skip_verify: true   # the appliance's self-signed certificate (docs/grafana.md)
    static_configs:
      - targets: ["127.0.0.1:{signal_port}"]
"""
    )
    return config


def mint(state: Path, user: str) -> tuple[str, str]:
    """``secureconnect credentials --user USER``: a TURN REST username and password."""
    out = subprocess.run(  # noqa: S603 - our own program
        [*PYTHON_M, "credentials", "--user", user, "--ttl", "3600", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    credential = json.loads(out.stdout)
    return credential["username"], credential["password"]


@dataclasses.dataclass
class Lab:
    """What :func:`lab` started: the appliance's ports, its state, Prometheus's URL."""

    app: Running
    ports: AllInOnePorts
    stun_port: int
    state: Path
    prometheus: str
    redis: dict[str, subprocess.Popen[bytes]]  # replaced when the outage restarts it
    redis_port: int


@contextlib.contextmanager
def lab(workdir: Path, prometheus: str, *, redis: bool) -> Iterator[Lab]:
    """Redis (if wanted), the appliance and Prometheus on loopback; all stopped at the end."""
    ports = AllInOnePorts.free()
    stun_port, stun_tls = free_port(), free_port(socket.SOCK_STREAM)
    prom_port, redis_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    state = workdir / "state"
    settings = [
        *ports.settings(),
        f"stun.port={stun_port}",  # its own port: the stun_* series
        f"stun.tls_port={stun_tls}",
        "general.log_level=info",
        "turn.rfc5766_channels=true",  # turnutils_uclient's channel numbers
        "turn.default_lifetime=30",
        "turn.user_quota=6",
        "turn.metrics_users=6",
        "signal.resume_grace=5",
    ]
    held: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        if redis:
            held["redis"] = start_redis(workdir, redis_port)
            stack.callback(lambda: stop_process(held["redis"], timeout=5))
            settings.append(f"signal.backplane=redis://127.0.0.1:{redis_port}/0")
        app = stack.enter_context(
            run_appliance(workdir, state_dir=state, settings=settings, log_file=workdir / "app.log")
        )
        log(f"appliance: pid {app.proc.pid}, TURN {ports.turn}, STUN {stun_port}, WSS {ports.wss}")
        argv = [
            prometheus,
            f"--config.file={prometheus_config(workdir, ports.wss)}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        stack.enter_context(process(argv, workdir, "prometheus"))
        url = f"http://127.0.0.1:{prom_port}"
        wait_http(f"{url}/-/ready", 30)
        up = urllib.parse.urlencode({"query": "up"})
        wait_http(f"{url}/api/v1/query?{up}", 30, lambda body: b'"1"]' in body)
        log(f"prometheus: {url} scrapes https://127.0.0.1:{ports.wss}/metrics every {SCRAPE}")
        yield Lab(app, ports, stun_port, state, url, held, redis_port)
