"""systemd integration: the notify protocol on real AF_UNIX sockets, the supervisor's use of it,
the appliance as systemd sees it (READY only once ports answer, RELOADING, STOPPING, WATCHDOG),
and the unit files checked by ``systemd-analyze verify`` and ``systemd-analyze security``."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from appliance import Running, appliance_env, free_port, run_appliance
from servers import require_tool

from secureconnect.cli import build_parser, main
from secureconnect.config import load_config
from secureconnect.initcmd import CONFIG_NAME, TLS_KEY_NAME
from secureconnect.sdnotify import Notifier, monotonic_usec, socket_address, watchdog_interval
from secureconnect.stun import MessageClass, Method, decode_message_untrusted, encode_message
from secureconnect.supervisor import Supervisor

UNITS = Path(__file__).resolve().parents[1] / "systemd"
UNIT_FILES = sorted([*UNITS.glob("*.service"), *UNITS.glob("*.target")])
SERVICES = [path for path in UNIT_FILES if path.suffix == ".service"]


@contextmanager
def notify_socket(path: Path | None = None) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's; yields it and the ``$NOTIFY_SOCKET`` value
    (a file path, or an abstract ``@name`` when ``path`` is None)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if path is None:
        name = f"secureconnect-test-{secrets.token_hex(6)}"
        sock.bind("\0" + name)
        value = "@" + name
    else:
        sock.bind(str(path))
        value = str(path)
    try:
        yield sock, value
    finally:
        sock.close()


def receive(sock: socket.socket, timeout: float = 5.0) -> dict[str, str]:
    """One datagram as a dict of its assignments."""
    sock.settimeout(timeout)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def receive_until(sock: socket.socket, key: str, timeout: float) -> list[dict[str, str]]:
    """Datagrams up to and including the first that sets ``key``."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        message = receive(sock, max(0.01, deadline - time.monotonic()))
        seen.append(message)
        if key in message:
            return seen
    raise AssertionError(f"no {key} within {timeout} s; got {seen}")


# -- the protocol ---------------------------------------------------------------------------------


def test_socket_addresses_map_abstract_names_and_refuse_unknown_kinds() -> None:
    assert socket_address("@systemd/notify") == "\0systemd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("vsock:2:1234") is None
    assert socket_address("@") is None


def test_one_datagram_per_notification_on_a_path_socket(tmp_path: Path) -> None:
    with notify_socket(tmp_path / "notify") as (sock, address):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
        assert notifier.ready("serving turn,\nsignal")
        # A newline in STATUS would start a new assignment: it is folded into one line.
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving turn, signal"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_abstract_namespace_socket_and_reloading_carries_monotonic_usec() -> None:
    with notify_socket() as (sock, address):
        assert address.startswith("@")
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
        before = monotonic_usec()
        notifier.reloading("reloading")
        message = receive(sock)
        after = monotonic_usec()
        assert message["RELOADING"] == "1"
        assert before <= int(message["MONOTONIC_USEC"]) <= after
        notifier.stopping()
        assert receive(sock) == {"STOPPING": "1"}


def test_without_systemd_or_with_a_vanished_socket_nothing_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not Notifier.from_environ({}).ready()
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert gone.enabled
    assert not gone.ready()
    assert not gone.watchdog()
    assert [r.getMessage() for r in caplog.records].count("notify-failed") == 1  # logged once


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_period_and_only_ours(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_no_watchdog_without_a_notify_socket() -> None:
    assert Notifier.from_environ({"WATCHDOG_USEC": "1000000"}).watchdog_interval is None


# -- the supervisor speaks it ---------------------------------------------------------------------


class RecordingNotifier(Notifier):
    """Keeps what would have been sent."""

    def __init__(self, watchdog_interval: float | None = None) -> None:
        super().__init__("/nonexistent", watchdog_interval=watchdog_interval)
        self.sent: list[tuple[str, ...]] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.append(assignments)
        return True

    def keys(self) -> list[str]:
        return [a.split("=")[0] for message in self.sent for a in message if a[:6] != "STATUS"]


class SlowStarter:
    """A component that takes a while to bind and records what was announced before it did."""

    def __init__(self, name: str, notifier: RecordingNotifier) -> None:
        self.name = name
        self.notifier = notifier
        self.announced_before_start: list[str] = []
        self._drain = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(1)
        self.announced_before_start = self.notifier.keys()
        task_status.started()
        await self._drain.wait()

    def begin_drain(self) -> None:
        self._drain.set()

    def reload(self) -> None:
        pass


async def test_supervisor_notifies_ready_reloading_stopping_and_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    notifier = RecordingNotifier(watchdog_interval=5.0)
    first, second = SlowStarter("turn", notifier), SlowStarter("signal", notifier)

    def bad_certificate() -> None:
        raise ValueError("key does not match certificate")

    supervisor = Supervisor(
        [first, second], reload_hooks=[("tls", bad_certificate)], notifier=notifier
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        assert "READY" not in first.announced_before_start
        assert "READY" not in second.announced_before_start  # the last start came first
        assert notifier.sent[-1] == ("READY=1", "STATUS=serving turn, signal")
        await trio.sleep(12)  # watchdog pings every 5 s of (mock) time
        supervisor.reload()
        supervisor.request_shutdown()
    reloading, ready = notifier.sent[-3], notifier.sent[-2]
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=")
    assert ready == (
        "READY=1",
        "STATUS=serving turn, signal; reload failed (tls), old state kept",
    )
    assert notifier.sent[-1] == ("STOPPING=1", "STATUS=draining connections")
    assert notifier.keys().count("WATCHDOG") >= 3


# -- the appliance under a pretend systemd ---------------------------------------------------------


@dataclass
class Appliance:
    """The running appliance (see :mod:`appliance`) and its loopback ports."""

    running: Running
    turn: int
    turns: int
    signal: int


@contextmanager
def appliance(tmp_path: Path, signal_port: int | None = None, **env: str) -> Iterator[Appliance]:
    """``python -m secureconnect run`` on free ports with ``env`` (a pretend systemd's) added.

    It is not waited for: the tests watch the start through ``$NOTIFY_SOCKET`` themselves."""
    turn, turns = free_port(), free_port(socket.SOCK_STREAM)
    sig = signal_port or free_port(socket.SOCK_STREAM)
    settings = (
        f"turn.port={turn}",
        f"stun.port={turn}",  # TURN answers Binding: the STUN component is not started
        f"turn.tls_port={turns}",
        f"signal.port={sig}",
        "general.drain_timeout=0.5",
    )
    with run_appliance(
        tmp_path,
        state_dir=tmp_path,
        settings=settings,
        env=appliance_env(tmp_path, **env),
        ready_timeout=None,
    ) as running:
        yield Appliance(running, turn, turns, sig)


BINDING = encode_message(Method.BINDING, MessageClass.REQUEST, os.urandom(12), ())


def udp_binding_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(BINDING, ("127.0.0.1", port))
        return decode_message_untrusted(sock.recv(2048)).cls is MessageClass.SUCCESS


@contextmanager
def tls_to(port: int) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to 127.0.0.1:``port`` (the generated self-signed certificate)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
        context.wrap_socket(raw) as tls,
    ):
        yield tls


def https_status(port: int, path: str) -> str:
    with tls_to(port) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return tls.recv(4096).decode(errors="replace").split("\r\n")[0]


def tls_handshake_completes(port: int) -> bool:
    with tls_to(port) as tls:
        return tls.version() is not None


def test_ready_arrives_only_once_every_listener_answers(tmp_path: Path) -> None:
    with (
        notify_socket(tmp_path / "notify") as (sock, address),
        appliance(tmp_path, NOTIFY_SOCKET=address) as app,
    ):
        messages = receive_until(sock, "READY", timeout=20)
        # Freeze the server the moment it says READY: only what it did before counts. The kernel
        # completes TCP handshakes and queues datagrams for bound sockets of a stopped process.
        app.running.proc.send_signal(signal.SIGSTOP)
        try:
            for port in (app.turn, app.turns, app.signal):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.sendto(BINDING, ("127.0.0.1", app.turn))
        finally:
            app.running.proc.send_signal(signal.SIGCONT)
        with udp:
            udp.settimeout(5)
            assert decode_message_untrusted(udp.recv(2048)).cls is MessageClass.SUCCESS
        assert tls_handshake_completes(app.turns)
        assert https_status(app.signal, "/healthz").startswith("HTTP/1.1 200")
        ready = messages[-1]
        assert ready["STATUS"] == "serving turn, signal"
        assert [m.get("STATUS") for m in messages[:-1]] == ["starting turn", "starting signal"]


def test_no_ready_when_a_port_cannot_be_bound(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with (
            notify_socket(tmp_path / "notify2") as (sock, address),
            appliance(tmp_path, signal_port=taken, NOTIFY_SOCKET=address) as app,
        ):
            assert app.running.proc.wait(timeout=20) == 1
            messages = []
            sock.setblocking(False)
            while True:
                try:
                    messages.append(sock.recv(4096).decode())
                except BlockingIOError:
                    break
    assert not any("READY=1" in m for m in messages), messages
    assert f"STATUS=cannot start signal: cannot listen on tcp 127.0.0.1:{taken}" in messages[-1]


def test_sighup_sends_reloading_with_monotonic_usec_then_ready(tmp_path: Path) -> None:
    with notify_socket() as (sock, address), appliance(tmp_path, NOTIFY_SOCKET=address) as app:
        receive_until(sock, "READY", timeout=20)
        before = monotonic_usec()
        app.running.proc.send_signal(signal.SIGHUP)
        reloading = receive(sock)
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        ready = receive(sock)
        assert ready["READY"] == "1"
        assert ready["STATUS"] == "serving turn, signal"
        app.running.wait_log("event=reloaded what=tls")
        assert udp_binding_answers(app.turn)


def test_sigterm_sends_stopping_then_exits_zero(tmp_path: Path) -> None:
    with (
        notify_socket(tmp_path / "notify") as (sock, address),
        appliance(tmp_path, NOTIFY_SOCKET=address) as app,
    ):
        receive_until(sock, "READY", timeout=20)
        app.running.proc.send_signal(signal.SIGTERM)
        assert receive(sock)["STOPPING"] == "1"
        assert app.running.proc.wait(timeout=10) == 0


def test_watchdog_pings_at_half_the_period(tmp_path: Path) -> None:
    with (
        notify_socket() as (sock, address),
        appliance(tmp_path, NOTIFY_SOCKET=address, WATCHDOG_USEC="400000"),
    ):
        receive_until(sock, "READY", timeout=20)
        times: list[float] = []
        deadline = time.monotonic() + 3.0
        while (left := deadline - time.monotonic()) > 0:
            try:
                if receive(sock, left).get("WATCHDOG") == "1":
                    times.append(time.monotonic())
            except TimeoutError:
                break
        # Every 0.2 s: about 15 in 3 s (a ping per period would give 7, a busy loop hundreds).
        # The median gap says which, whatever a stall of a loaded machine did to a few of them.
        assert len(times) >= 5, times
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert 0.1 <= statistics.median(gaps) <= 0.3, gaps


# -- the unit files -------------------------------------------------------------------------------


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of ``key=`` in a unit file (continuation lines are not used in ours)."""
    return [
        line.split("=", 1)[1]
        for line in path.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


def make_root(base: Path, units: list[Path]) -> Path:
    """A file-system root for ``systemd-analyze --root``: the host's system units, ours in
    /etc/systemd/system, /usr/bin/secureconnect as a shim (it is installed by the package, not
    here), and every other executable the units name copied from the host (which must have it)."""
    root = base / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin").mkdir()
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    target = root / "etc/systemd/system"
    target.mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, target / unit.name)
        for key in ("ExecStart", "ExecReload"):
            for value in unit_values(unit, key):
                binary = value.split()[0]
                inside = root / binary.lstrip("/")
                if binary == "/usr/bin/secureconnect":
                    inside.write_text(f'#!/bin/sh\nexec {sys.executable} -m secureconnect "$@"\n')
                    inside.chmod(0o755)
                elif not inside.exists():
                    assert Path(binary).exists(), f"{unit.name}: {binary} does not exist"
                    shutil.copy(binary, inside)
    return root


def verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze")
    return subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", f"--root={root}", *names],
        cwd=root / "etc/systemd/system",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_systemd_analyze_verify_passes_for_every_unit(tmp_path: Path) -> None:
    assert {p.name for p in UNIT_FILES} == {
        "secureconnect.service",
        "secureconnect-stun.service",
        "secureconnect-turn.service",
        "secureconnect-signal.service",
        "secureconnect-components.target",
    }
    root = make_root(tmp_path, UNIT_FILES)
    result = verify(root, [p.name for p in UNIT_FILES])
    # verify exits 0 on mere warnings (an unknown key is "ignoring"): any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_verify_check_catches_a_typo(tmp_path: Path) -> None:
    broken = tmp_path / "secureconnect.service"
    broken.write_text(
        (UNITS / "secureconnect.service").read_text().replace("ProtectHome=", "ProtectHom=")
    )
    root = make_root(tmp_path / "b", [broken])
    result = verify(root, ["secureconnect.service"])
    assert "Unknown key 'ProtectHom'" in result.stderr


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_services_are_hardened(tmp_path: Path, unit: Path) -> None:
    analyze = require_tool("systemd-analyze")
    root = make_root(tmp_path, UNIT_FILES)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", f"--root={root}", unit.name],
        cwd=root / "etc/systemd/system",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0  # systemd calls <= 1.9 "OK" and 2.0-4.9 "MEDIUM"
    assert unit_values(unit, "Type") == ["notify"]
    assert unit_values(unit, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    for key, value in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "secureconnect"),
        ("ConfigurationDirectory", "secureconnect"),
    ]:
        assert unit_values(unit, key) == [value], key


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_units_agree_with_the_cli_and_with_init(tmp_path: Path, unit: Path) -> None:
    """ExecStart parses with our CLI; credentials are the files init names; only units that may
    bind below 1024 keep CAP_NET_BIND_SERVICE; descriptors cover the relay range."""
    (exec_start,) = unit_values(unit, "ExecStart")
    program, *argv = exec_start.split()
    assert program == "/usr/bin/secureconnect"
    args = build_parser().parse_args(argv)
    assert args.command == "run"
    assert args.config == Path("/etc/secureconnect") / CONFIG_NAME
    init = ["init", "--domain", "example.test", "--external-ip", "203.0.113.9"]
    assert main([*init, "--config-dir", str(tmp_path)]) == 0
    config = load_config(tmp_path / CONFIG_NAME)
    named = {
        config.tls.cert_file,
        config.tls.key_file,
        config.turn.secret_file,
        config.signal.token_secret_file,
    }
    credentials = {v.split(":")[0]: v.split(":")[1] for v in unit_values(unit, "LoadCredential")}
    assert set(credentials) == named
    assert all(credentials[n] == f"/etc/secureconnect/{n}" for n in named)
    assert TLS_KEY_NAME in named
    caps = unit_values(unit, "AmbientCapabilities")
    components = args.components or ["stun", "turn", "signal"]
    assert caps == ([] if components == ["stun"] else ["CAP_NET_BIND_SERVICE"])
    if "turn" in components:
        assert int(unit_values(unit, "LimitNOFILE")[0]) >= 65535 - 49152 + 1 + 4096
