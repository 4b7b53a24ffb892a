"""Fixtures of the cluster tests (a plugin: ``-p cluster_fixtures`` in pyproject.toml): a real
``redis-server`` and three appliance nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 sharing it
(``signal.backplane``) and one TURN secret.

Nodes 1 and 2 run signaling only; node 3 runs signaling and TURN, so ICE servers handed out by
nodes 1 and 2 can only come from the node registry. Each test gets fresh nodes (some kill or
drain one) on one Redis per module; room names are unique per test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_nodes import Node, node
from redis_server import RedisServer


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(tmp_path: Path, redis: RedisServer) -> Iterator[list[Node]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(node(tmp_path / f"node{i}", i, redis, turn=i == 3))
            for i in (1, 2, 3)
        ]
