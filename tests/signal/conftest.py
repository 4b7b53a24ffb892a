"""Fixtures of the signaling contract tests: the two appliances, started once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from signal_peers import (
    GRACE,
    ICE_TTL,
    ROOM_SECRET,
    Appliance,
    appliance,
)


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with appliance(
        tmp_path_factory.mktemp("main"),
        "signal.max_room_size=3",
        "signal.max_message_bytes=2048",
        "signal.rate_limit=20",
        f"signal.resume_grace={GRACE}",
        "signal.resume_buffer=4",
        'signal.allowed_origins=["https://app.example.com"]',
        tls=True,
    ) as app:
        yield app


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with appliance(
        tmp_path_factory.mktemp("token"),
        "signal.auth=token",
        f'signal.token_secrets=["{ROOM_SECRET}"]',
        f"signal.ice_ttl={ICE_TTL}",
        "signal.max_connections_per_ip=3",
        'signal.trusted_proxies=["127.0.0.2/32"]',
        tls=False,
    ) as app:
        yield app
