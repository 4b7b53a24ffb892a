"""Appliance nodes of a cluster for tests and benchmarks: node N listens on 127.0.0.N and uses
the Redis at ``redis.url`` as its backplane, with one TURN secret for all (docs/cluster.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from appliance import Running, free_port, run_appliance
from redis_server import RedisServer

TURN_SECRET = "cluster-test-secret"
GRACE = 8.0  # signal.resume_grace of the nodes: a resume after a kill -9 fits in it


@dataclass
class Node:
    """One appliance of the cluster."""

    index: int
    port: int
    turn_port: int | None
    running: Running
    workdir: Path

    @property
    def ip(self) -> str:
        return f"127.0.0.{self.index}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.ip}:{self.port}/ws"

    def http(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.ip}:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def health(self) -> tuple[int, dict[str, object]]:
        status, body = self.http("/healthz")
        return status, json.loads(body)

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

        status, body = self.http("/metrics")
        assert status == 200
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if not sample.labels
        }

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye to Redis."""
        self.running.stop(signal.SIGKILL)


@contextlib.contextmanager
def node(
    workdir: Path, index: int, redis: RedisServer, *settings: str, turn: bool = False
) -> Iterator[Node]:
    port = free_port(socket.SOCK_STREAM)
    turn_port = free_port() if turn else None
    ip = f"127.0.0.{index}"
    workdir.mkdir(parents=True, exist_ok=True)
    common = (
        f'signal.listen=["{ip}"]',
        f"signal.port={port}",
        "signal.tls=false",
        f"signal.backplane={redis.url}",
        f"signal.node_name=node{index}",
        f"signal.resume_grace={GRACE}",
        "signal.max_room_size=3",
        "signal.rate_limit=1000",
        f'turn.secrets=["{TURN_SECRET}"]',
        "general.drain_timeout=0.5",
    )
    turn_settings = (
        (
            f'turn.listen=["{ip}"]',
            f"turn.port={turn_port}",
            "turn.tcp=false",
            "turn.tls=false",
        )
        if turn
        else ("turn.enabled=false",)
    )
    components = ("signal", "turn") if turn else ("signal",)
    with run_appliance(
        workdir,
        *components,
        state_dir=workdir / "state",
        extra_args=("--log-level", "info"),
        settings=(*common, *turn_settings, *settings),
        log_file=workdir / "stderr.log",
    ) as running:
        # Ready comes before the node's admin agent has read the cluster's revocations and
        # subscribed to its admin channel (it logs cluster-admin-up then): wait for that too,
        # so a cluster-wide command or a revoked credential does not race the node's start.
        log = workdir / "stderr.log"
        deadline = time.monotonic() + STEP
        while "event=cluster-admin-up" not in log.read_text(errors="replace"):
            assert running.proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the node's admin agent never reached Redis"
            time.sleep(0.05)
        yield Node(index, port, turn_port, running, workdir)


T = TypeVar("T")
STEP = 10.0  # seconds for any one step of a cluster scenario


def room(prefix: str = "c") -> str:
    """A room name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run(scenario: Awaitable[T], timeout: float = 60.0) -> T:
    """Run one asyncio scenario with an overall bound."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await scenario

    return asyncio.run(bounded())


async def until(check: Callable[[], bool], what: str, seconds: float = STEP) -> None:
    """Wait until ``check()`` (run in a thread: it may block on HTTP) holds."""
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
