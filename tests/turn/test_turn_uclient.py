"""The TURN relay against coturn's turnutils_uclient, with turnutils_peer as the peer: channels
and Send indications over UDP, TCP and TLS, against our server and (for comparison) Debian's
coturn. Every client runs under a timeout; only loopback is used."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import servers
from servers import SERVERS, turn_server

pytestmark = [pytest.mark.coturn, pytest.mark.slow]

# --------------------------------------------------------------------------------------------
# 3. coturn's turnutils_uclient with turnutils_peer as the peer
# --------------------------------------------------------------------------------------------

UCLIENT_CLIENTS = 2
UCLIENT_MESSAGES = 50
UCLIENT_TIMEOUT = 60.0

#: (server, transport, data path). coturn's helper runs without TLS.
UCLIENT_CASES = [
    (server, transport, path)
    for server in SERVERS
    for transport in ("udp", "tcp", "tls")
    for path in ("channel", "send")
    if not (server == "coturn" and transport == "tls")
]

_SENT_RECEIVED = re.compile(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
_LOST = re.compile(r"Total lost packets (\d+) \(")


@dataclass(frozen=True)
class UclientRun:
    command: list[str]
    returncode: int | None  # None: killed at the timeout
    output: str
    workdir: Path  # uclient.log and the server's log, kept for a failure's post-mortem

    def report(self) -> str:
        logs = sorted(self.workdir.glob("*.log"))
        server_logs = [log for log in logs if log.name != "uclient.log"]
        tails = "".join(
            f"\n--- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}"
            for log in server_logs
        )
        return f"$ {' '.join(self.command)}\n{self.output}{tails}"


@contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def uclient_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str, str], UclientRun]:
    """Every turnutils_uclient variant at once, each against its own server, one echo peer.

    uclient waits a random 1-6 s before each session sends, so one run takes about 5 s whatever
    its size: running the variants side by side keeps the module fast. Each variant gets a server
    of its own so that a failure is that variant's alone (sharing one server is how the crash that
    `test_other_clients_cannot_end_a_relay_session` pins down was found). The servers are stopped
    before the tests look at the results.
    """
    binary = servers.require_tool("turnutils_uclient")
    workdir = tmp_path_factory.mktemp("uclient")
    runs: dict[tuple[str, str, str], UclientRun] = {}
    with ExitStack() as stack:
        peer_port = stack.enter_context(servers.udp_echo_peer())
        started: dict[tuple[str, str, str], tuple[list[str], subprocess.Popen[bytes], Path]] = {}
        for case in UCLIENT_CASES:
            server, transport, path = case
            name = f"{server}-{transport}-{path}"
            (workdir / name).mkdir()
            tls = transport == "tls"
            target = stack.enter_context(turn_server(server, workdir / name, tls=tls))
            port = target.tls_port if tls else target.port
            flags = {"udp": [], "tcp": ["-t"], "tls": ["-t", "-S"]}[transport]
            if path == "send":
                flags.append("-s")
            command = [
                binary,
                *flags,
                *("-p", str(port), "-e", "127.0.0.1", "-r", str(peer_port)),
                *("-W", target.secret, "-u", "uclient"),
                *("-m", str(UCLIENT_CLIENTS), "-n", str(UCLIENT_MESSAGES), "-l", "120"),
                "127.0.0.1",
            ]
            log = workdir / name / "uclient.log"
            with log.open("wb") as sink:
                proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
            started[case] = (command, stack.enter_context(reaped(proc)), log)
        deadline = time.monotonic() + UCLIENT_TIMEOUT
        for case, (command, proc, log) in started.items():
            try:
                returncode: int | None = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                returncode = None
            runs[case] = UclientRun(
                command, returncode, log.read_text(errors="replace"), log.parent
            )
    return runs


@pytest.mark.parametrize(("server", "transport", "path"), UCLIENT_CASES)
def test_turnutils_uclient_relays_without_loss(
    uclient_runs: dict[tuple[str, str, str], UclientRun], server: str, transport: str, path: str
) -> None:
    """coturn's own load client relays through the server to turnutils_peer and back.

    Two clients (each with an RTP and an RTCP allocation, the second one reserved through
    EVEN-PORT/RESERVATION-TOKEN) send 50 packets of 120 bytes each over ChannelData or Send
    indications, via UDP, TCP or TLS (our self-signed certificate; uclient does not verify it).
    uclient must exit 0, send all 100 packets and lose at most 1% of the echoes. The UDP and TCP
    variants also run against coturn, which shows the loss figure is a real measurement.
    """
    run = uclient_runs[(server, transport, path)]
    report = run.report()
    assert run.returncode == 0, report
    counts = _SENT_RECEIVED.findall(run.output)
    lost = _LOST.findall(run.output)
    assert len(counts) == 1, report
    assert len(lost) == 1, report
    sent, received = map(int, counts[0])
    assert sent == UCLIENT_CLIENTS * UCLIENT_MESSAGES, report
    assert received <= sent, report
    assert int(lost[0]) == sent - received
    assert int(lost[0]) <= sent // 100, report
