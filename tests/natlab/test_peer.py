"""``python -m secureconnect.natlab.peer``: two real peer processes meet through our appliance.

The appliance (``secureconnect run signal turn``) and the peers run in a throwaway network
namespace of the test's own, never on the host's interfaces: aioice gathers host candidates on
every non-loopback address, and the host's is not ours to send to. In a namespace with only
``lo`` aioice has no host candidates (it skips 127.0.0.1), so the pair is relay/relay through
our TURN on 127.0.0.1 (which relays to loopback peers when it listens only there). Each TURN
URL kind is tried, as the lab runner would pick it: ``udp``, ``tcp`` (the udp-blocked client)
and ``tls`` (``turns:``, our self-signed certificate trusted through ``--cafile``). A second
namespace with a private address on ``lo`` shows host candidates win when they can, and that
``--relay-only`` still forces the relay. Each test is bounded to 60 s.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from appliance import run_appliance, stop_process
from netns import exec_argv, netns

from secureconnect.natlab.peer import (
    PeerFailed,
    PeerResult,
    ice_configuration,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.root, pytest.mark.slow]

MODULE = "secureconnect.natlab.peer"
KEYS = {
    "connected",
    "local",
    "remote",
    "seconds",
    "local_candidate",
    "remote_candidate",
    "error",
}
ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+:\d+/udp")
PEER_TIMEOUT = 20.0
SIGNAL_PORT, TURN_PORT, TURNS_PORT = 8443, 3478, 5349  # the namespace is ours: no clashes


@dataclass(frozen=True)
class Appliance:
    """The appliance running inside ``namespace``, and what a peer needs to reach it."""

    namespace: str
    url: str
    cafile: Path


@contextmanager
def appliance_in_namespace(workdir: Path, addresses: Sequence[str] = ()) -> Iterator[Appliance]:
    with netns(addresses=addresses) as namespace:
        state = workdir / "state"
        with run_appliance(
            workdir,
            "signal",
            "turn",
            state_dir=state,
            argv_prefix=exec_argv(namespace),
            extra_args=("--log-level", "warning"),
            settings=(
                f"signal.port={SIGNAL_PORT}",
                f"turn.port={TURN_PORT}",
                f"turn.tls_port={TURNS_PORT}",
                "general.drain_timeout=0.5",
            ),
            log_file=workdir / "appliance.log",
        ):
            url = f"wss://127.0.0.1:{SIGNAL_PORT}/ws"
            yield Appliance(namespace, url, state / "selfsigned-cert.pem")


@pytest.fixture(scope="module")
def loopback_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with appliance_in_namespace(tmp_path_factory.mktemp("loopback")) as app:
        yield app


def start_peer(
    app: Appliance, role: str, room: str, *extra: str, timeout: float = PEER_TIMEOUT
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", MODULE, "--url", app.url, "--room", room, "--role", role]
    argv += ["--cafile", str(app.cafile), "--timeout", f"{timeout:g}", *extra]
    return subprocess.Popen(
        exec_argv(app.namespace, *argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def report_of(proc: subprocess.Popen[str], timeout: float = PEER_TIMEOUT + 10) -> dict[str, Any]:
    """The peer's one JSON line, once it exited 0; fails the test otherwise."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc, timeout=2)
        out, err = proc.communicate()
        pytest.fail(f"the peer overran its own timeout; stderr: {err[-2000:]}")
    assert proc.returncode == 0, err[-2000:]
    lines = out.splitlines()
    assert len(lines) == 1, out
    report: dict[str, Any] = json.loads(lines[0])
    assert set(report) == KEYS
    return report


def run_pair(app: Appliance, *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An offerer and an answerer in a fresh room, started together as the lab runner does."""
    room = f"natlab-{uuid.uuid4().hex[:8]}"
    procs = [start_peer(app, role, room, *extra) for role in ("offer", "answer")]
    try:
        offer, answer = (report_of(proc) for proc in procs)
    finally:
        for proc in procs:
            stop_process(proc, timeout=2)
    return offer, answer


def assert_connected(
    offer: dict[str, Any], answer: dict[str, Any], local: str, remote: str
) -> None:
    for report in (offer, answer):
        assert report["connected"] is True, report
        assert report["error"] is None
        assert 0 < report["seconds"] < PEER_TIMEOUT
        assert ADDRESS.fullmatch(report["local_candidate"]), report
        assert ADDRESS.fullmatch(report["remote_candidate"]), report
    assert (offer["local"], offer["remote"]) == (local, remote)
    assert (answer["local"], answer["remote"]) == (remote, local)
    # one pair seen from both ends
    assert offer["local_candidate"] == answer["remote_candidate"]
    assert offer["remote_candidate"] == answer["local_candidate"]


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_peers_connect_through_our_turn(loopback_only: Appliance, transport: str) -> None:
    offer, answer = run_pair(loopback_only, "--turn-transport", transport)
    assert_connected(offer, answer, "relay", "relay")
    assert offer["local_candidate"].startswith("127.0.0.1:")  # relayed addresses on our TURN


def test_host_candidates_win_and_relay_only_forces_the_relay(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("private")
    with appliance_in_namespace(workdir, addresses=["10.99.0.1/24"]) as app:
        offer, answer = run_pair(app)
        assert_connected(offer, answer, "host", "host")
        assert offer["local_candidate"].startswith("10.99.0.1:")
        offer, answer = run_pair(app, "--relay-only")
        assert_connected(offer, answer, "relay", "relay")


@pytest.mark.parametrize(("role", "waiting"), [("offer", "other peer"), ("answer", "offer")])
def test_a_peer_alone_gives_up_in_time_and_exits_0(
    loopback_only: Appliance, role: str, waiting: str
) -> None:
    started = time.monotonic()
    proc = start_peer(loopback_only, role, f"alone-{uuid.uuid4().hex[:8]}", timeout=3)
    report = report_of(proc)
    assert time.monotonic() - started < 3 + 10  # its timeout plus start-up (aiortc, loaded)
    assert report["connected"] is False
    assert report["seconds"] is None
    assert report["local"] is None
    assert re.fullmatch(
        rf"timed out after [\d.]+ s while waiting for the {waiting}", report["error"]
    )


def test_an_untrusted_certificate_is_a_report_not_a_crash(loopback_only: Appliance) -> None:
    argv = [sys.executable, "-m", MODULE, "--url", loopback_only.url, "--room", "r"]
    proc = subprocess.Popen(
        exec_argv(loopback_only.namespace, *argv, "--role", "offer", "--timeout", "5"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    report = report_of(proc, timeout=15)
    assert report["connected"] is False
    assert "CERTIFICATE_VERIFY_FAILED" in report["error"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "wss://127.0.0.1:1/ws", "--room", "r"],  # no --role
        ["--url", "wss://127.0.0.1:1/ws", "--room", "r", "--role", "both"],
        ["--url", "https://127.0.0.1:1/", "--room", "r", "--role", "offer"],
        ["--url", "wss://127.0.0.1:1/ws", "--room", "r", "--role", "offer", "--timeout", "0"],
        ["--url", "wss://x/ws", "--room", "r", "--role", "offer", "--turn-transport", "dtls"],
    ],
)
def test_usage_errors_exit_2_without_a_report(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", MODULE, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "usage:" in done.stderr


# -- the pure parts --------------------------------------------------------------------------

WELCOME_SERVERS: list[dict[str, Any]] = [
    {"urls": ["stun:198.51.100.2:3478"]},
    {
        "urls": [
            "turn:[2001:db8::2]:3478?transport=udp",  # aiortc cannot parse IPv6 literals
            "turn:198.51.100.2:3478?transport=udp",
            "turn:198.51.100.2:3478?transport=tcp",
            "turns:198.51.100.2:5349?transport=tcp",
        ],
        "username": "1764000000:p-3f9a1c2e",
        "credential": "secret",
    },
]


@pytest.mark.parametrize(
    ("transport", "url"),
    [
        ("udp", "turn:198.51.100.2:3478?transport=udp"),
        ("tcp", "turn:198.51.100.2:3478?transport=tcp"),
        ("tls", "turns:198.51.100.2:5349?transport=tcp"),
    ],
)
def test_ice_configuration_gives_aiortc_one_turn_url(transport: Any, url: str) -> None:
    config = ice_configuration(WELCOME_SERVERS, turn_transport=transport)
    stun, turn = config.iceServers or []
    assert stun.urls == "stun:198.51.100.2:3478"
    assert (turn.urls, turn.username, turn.credential) == (url, "1764000000:p-3f9a1c2e", "secret")
    assert config.iceTransportPolicy.value == "all"
    relay = ice_configuration(WELCOME_SERVERS, turn_transport=transport, relay_only=True)
    assert relay.iceTransportPolicy.value == "relay"


def test_ice_configuration_without_turn_is_stun_only() -> None:
    config = ice_configuration(WELCOME_SERVERS, turn_transport="none")
    assert [server.urls for server in config.iceServers or []] == ["stun:198.51.100.2:3478"]
    with pytest.raises(PeerFailed, match="relay-only needs a TURN URL"):
        ice_configuration(WELCOME_SERVERS, turn_transport="none", relay_only=True)


def test_ice_configuration_without_the_wanted_turn_url_fails() -> None:
    servers = [{"urls": "turn:198.51.100.2:3478?transport=udp"}]  # and no credential
    with pytest.raises(PeerFailed, match="no TURN URL for transport udp"):
        ice_configuration(servers)
    plain = [{**WELCOME_SERVERS[1], "urls": WELCOME_SERVERS[1]["urls"][:3]}]  # no turns:
    with pytest.raises(PeerFailed, match="no TURN URL for transport tls"):
        ice_configuration(plain, turn_transport="tls")


def test_result_json_is_one_line_with_every_field() -> None:
    result = PeerResult(connected=True, local="srflx", remote="prflx", seconds=1.25)
    text = result.to_json()
    assert "\n" not in text
    assert json.loads(text) == {
        "connected": True,
        "local": "srflx",
        "remote": "prflx",
        "seconds": 1.25,
        "local_candidate": None,
        "remote_candidate": None,
        "error": None,
    }
