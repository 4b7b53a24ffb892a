"""SIGKILL of each per-component process under a real systemd (issue #12, "Faults").

What: ``secureconnect-{stun,turn,signal}.service`` (copies of ``systemd/``, see below) run under
a real systemd booted by ``tests/support/systemdlab.py`` (PID 1 of private namespaces, the
host's network), with a config written by ``secureconnect init`` on free loopback ports. A TURN
client holds an allocation that relays through a channel; two ``SignalClient`` peers share a
room. Then, one component after the other, the test sends SIGKILL to the service's main process
from outside systemd (what the OOM killer or ``kill -9`` does) and checks:

- systemd logs the kill (``code=killed, status=9/KILL``) and restarts the service
  (``Restart=on-failure``, ``RestartSec=``: 5 s in the lab, below): active again with a new
  main PID and one more ``NRestarts`` within :data:`RESTART_BOUND` seconds, ``Type=notify``
  READY=1 included;
- the other two keep their main PIDs and restart counts, and keep serving while the killed one is
  down: STUN Binding answered on the STUN port and on the TURN port, the TURN allocation refreshes
  and relays, the signaling peers answer pings without reconnecting;
- clients recover. After STUN's restart, Binding is answered again. After TURN's: the old
  allocation is gone - Refresh is answered 438 first (each process mints nonces with a fresh
  random key, so the old NONCE is stale), then, with the new NONCE, 437 (no allocation on this
  5-tuple) - and a fresh Allocate on the same 5-tuple relays again; a credential the signaling
  process mints is accepted by the new TURN process. After signal's: resume tokens live in the
  killed process's memory only, so each ``SignalClient`` reconnects by itself, its ``resume``
  re-join becomes a new join (``welcome`` with ``resumed: false`` and a new peer id), both
  peers see each other again under their new ids and signal messages are routed between them.

Why: these are the faults the per-component deployment exists for (one crashing component must
not take the others down) and the promises ``systemd/README.md`` makes (restart on failure;
"clients reconnect and signaling sessions are resumed only within one process"). Only a real
systemd shows them: the restart, READY=1 gating, DynamicUser=, LoadCredential= and the sandbox
are systemd's; a pretend supervisor would test our assumptions about systemd instead.

The unit copies differ from the shipped files only where this machine forces it:

- ``ExecStart=`` runs the test's interpreter (``python -m secureconnect``) instead of
  ``/usr/bin/secureconnect``, which a development machine does not have;
- when that interpreter lives under a home directory (pyenv in ``/root``), ``ProtectHome=yes``
  would hide it (203/EXEC), so it becomes ``ProtectHome=tmpfs`` (home still hidden) plus
  ``BindReadOnlyPaths=`` of the interpreter's own directories;
- when those directories lie in ``/tmp`` (a CI checkout), ``PrivateTmp=`` would hide them: the
  lab keeps them visible and the units get ``BindReadOnlyPaths=`` for them;
- ``RestartSec=2s`` becomes 5 s: every check meant for the killed service's downtime (the other
  services serving, several ``systemctl show`` calls) must fit in it, which 2 s does on an idle
  machine but not always on a loaded 2-core one.

Everything else is as shipped: ``Type=notify``, the watchdog, ``DynamicUser=``,
``StateDirectory=``, ``LoadCredential=`` of every secret file, the capability sets,
``PrivateUsers=`` (STUN) and the whole sandbox. (``LimitNOFILE=65536`` stays in the files; where
the lab's hard limit is lower and CAP_SYS_RESOURCE is not in the bounding set, systemd clamps it.)

A missing prerequisite (root, systemd, unshare, nsenter, a cgroup v2 hierarchy) fails the test
with what is missing: nothing is skipped. Everything is bounded: the restarts by
:data:`RESTART_BOUND`, each wire exchange by socket timeouts, the scenario by :data:`BUDGET`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from appliance import appliance_env, free_port
from attacker import Bystander, WireClient, echo_peer, error_code
from systemdlab import LabUnavailable, Systemd, systemd_lab

import secureconnect
from secureconnect.credentials import rest_password
from secureconnect.signal.client import SignalClient
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StunMessage,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    new_transaction_id,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

T = TypeVar("T")
A = AttrType
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "systemd"
CONFIG = "/etc/secureconnect/config.toml"  # what the shipped units name
TARGET = "secureconnect-components.target"
STUN, TURN, SIGNAL = (f"secureconnect-{c}.service" for c in ("stun", "turn", "signal"))
SERVICES = (STUN, TURN, SIGNAL)
LAB_RESTART_SEC = 5  # the unit copies' RestartSec= (2 s as shipped; see the module docstring)
RESTART_BOUND = 15.0  # seconds from SIGKILL to active again (RestartSec= + a start)
STEP = 5.0  # seconds for one expected message or state change
BUDGET = 90.0  # seconds for the whole scenario once the lab runs
HOMES = ("/root", "/home", "/run/user")  # what ProtectHome= hides
KILLED = "Main process exited, code=killed, status=9/KILL"
# SignalClient's default budget (6 attempts, 0.1 s doubling, jittered to 50-100%) retries for
# 3.15-6.3 s in all, barely longer than RestartSec=2s plus a start (2.3-2.7 s measured on an idle
# machine, up to 3.4 s with every CPU busy): a loaded machine can exhaust it. The clients here
# get a budget that cannot run out in time (>= 13 s), so that the test checks what the client
# does once the server is back, not that race.
SIGNAL_RETRIES = 10


# -- the units and the config ----------------------------------------------------------------------


#: The interpreter's directories (a venv, its base, the source tree of an editable install).
INTERPRETER_PATHS = sorted(
    {sys.prefix, sys.base_prefix, str(Path(secureconnect.__file__).parents[1])}
)
#: Where the lab mounts its own empty file systems, and so does PrivateTmp= in the units.
PRIVATE_ROOTS = ("/tmp/", "/var/", "/run/")  # noqa: S108 - compared against, never written


def _home_paths() -> list[str]:
    """The interpreter's directories that lie under a home directory (hidden by ProtectHome)."""
    return [p for p in INTERPRETER_PATHS if p.startswith(tuple(h + "/" for h in HOMES))]


def _private_paths() -> list[str]:
    """The interpreter's directories in /tmp, /var or /run (a CI checkout in /tmp): the lab
    keeps them visible, and the units bind them in over their PrivateTmp."""
    return [p for p in INTERPRETER_PATHS if p.startswith(PRIVATE_ROOTS)]


def unit_copy(component: str) -> str:
    """The shipped ``secureconnect-<component>.service`` with the changes the module docstring
    lists (and only those); fails if the shipped lines they replace are gone."""
    text = (SHIPPED / f"secureconnect-{component}.service").read_text()
    shipped = f"ExecStart=/usr/bin/secureconnect run {component} -c {CONFIG}\n"
    ours = f"ExecStart={sys.executable} -m secureconnect run {component} -c {CONFIG}\n"
    assert shipped in text, f"the shipped unit changed: no {shipped!r}"
    text = text.replace(shipped, ours)
    assert "RestartSec=2s\n" in text, "the shipped unit changed: no RestartSec=2s"
    text = text.replace("RestartSec=2s\n", f"RestartSec={LAB_RESTART_SEC}s\n")
    hidden = _home_paths()
    if hidden:
        assert "ProtectHome=yes\n" in text, "the shipped unit changed: no ProtectHome=yes"
        binds = "".join(f"BindReadOnlyPaths={path}\n" for path in hidden)
        text = text.replace("ProtectHome=yes\n", f"ProtectHome=tmpfs\n{binds}")
    private = _private_paths()
    if private:
        binds = "".join(f"BindReadOnlyPaths={path}\n" for path in private)
        text = text.replace("[Service]\n", f"[Service]\n{binds}", 1)
    return text


@dataclass(frozen=True)
class Ports:
    """The loopback ports of this run (free on the host, whose network the lab shares)."""

    stun: int
    turn: int
    turns: int
    signal: int

    @classmethod
    def free(cls) -> Ports:
        return cls(
            stun=free_port(),
            turn=free_port(),
            turns=free_port(socket.SOCK_STREAM),
            signal=free_port(socket.SOCK_STREAM),
        )


def write_config(etc: Path, ports: Ports, home: Path) -> Path:
    """``secureconnect init`` for a loopback-only production config in ``etc/secureconnect``
    (the config, the secret files, a certificate for 127.0.0.1); the directory."""
    target = etc / "secureconnect"
    argv = [sys.executable, "-m", "secureconnect", "init", "--domain", "localhost"]
    argv += ["--external-ip", "127.0.0.1", "--listen", "127.0.0.1", "--open-rooms"]
    argv += ["--stun-port", str(ports.stun), "--turn-port", str(ports.turn)]
    argv += ["--turns-port", str(ports.turns), "--signal-port", str(ports.signal)]
    argv += ["--config-dir", str(target)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env=appliance_env(home), check=False
    )
    assert done.returncode == 0, f"secureconnect init failed: {done.stdout}{done.stderr}"
    return target


# -- wire checks -----------------------------------------------------------------------------------


def stun_binding(port: int, attempts: int = 3) -> None:
    """A STUN Binding over UDP to 127.0.0.1:``port`` is answered with the client's own address
    as XOR-MAPPED-ADDRESS (retransmitted up to ``attempts`` times, 1 s apart)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.connect(("127.0.0.1", port))
        for _ in range(attempts):
            tid = new_transaction_id()
            sock.send(encode_message(Method.BINDING, MessageClass.REQUEST, tid, []))
            try:
                reply = decode_message_untrusted(sock.recv(2048))
            except TimeoutError:
                continue
            value = reply.get(A.XOR_MAPPED_ADDRESS)
            assert reply.cls is MessageClass.SUCCESS, reply
            assert value is not None, reply
            assert decode_xor_address_untrusted(value, tid) == sock.getsockname(), reply
            return
    raise AssertionError(f"no STUN Binding answer from port {port} in {attempts} tries")


def turn_client(port: int, secret: str, user: str) -> WireClient:
    """A UDP TURN client with a REST credential minted from ``secret`` (the lab's)."""
    client = WireClient("udp", port, user=user, password="")
    client.password = rest_password(secret, client.username)
    return client


def relaying(client: WireClient, peer: socket.socket, channel: int = 0x4001) -> Bystander:
    """Allocate (if not yet) and bind ``channel`` to ``peer``: a client whose
    :meth:`Bystander.check` refreshes and relays a datagram both ways."""
    allocated = client.allocate()
    assert error_code(allocated) is None, f"Allocate failed: {allocated}"
    bound = client.call(client.channel_bind_bytes(channel, peer.getsockname()))
    assert error_code(bound) is None, f"ChannelBind failed: {bound}"
    return Bystander(client, peer, channel)


def refresh_codes_after_restart(client: WireClient) -> list[int | None]:
    """Refresh on a 5-tuple whose allocation died with the process: the error codes in order,
    learning the NONCE a 438 brings (at most two answers)."""
    codes: list[int | None] = []
    for _ in range(2):
        reply: StunMessage = client.call(client.refresh_bytes(600))
        codes.append(error_code(reply))
        nonce = reply.get(A.NONCE)
        if codes[-1] != 438 or nonce is None:
            break
        client.nonce = nonce
    return codes


# -- the scenario ----------------------------------------------------------------------------------


@dataclass
class Scene:
    """The lab, its ports and secret, and the clients that outlive each kill."""

    lab: Systemd
    ports: Ports
    secret: str
    tls: ssl.SSLContext
    peer: socket.socket
    turn: Bystander | None = None
    alice: SignalClient | None = None
    bob: SignalClient | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.ports.signal}/ws"

    def signal_clients(self) -> tuple[SignalClient, SignalClient]:
        assert self.alice is not None
        assert self.bob is not None
        return self.alice, self.bob

    def relay(self) -> Bystander:
        assert self.turn is not None
        return self.turn

    def diagnosis(self) -> str:
        """What systemd says about the services, for failure messages."""
        return f"{self.lab.status(*SERVICES)}\n{self.lab.journal(*SERVICES, lines=60)}"


async def blocking(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` (sockets, systemctl) in a thread, so the signaling clients keep reading."""
    return await asyncio.to_thread(call, *args)


async def within(seconds: float, what: str, awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result; an :class:`AssertionError` naming ``what`` after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"{what}: not within {seconds} s") from None


async def next_message(client: SignalClient, kind: str) -> dict[str, Any]:
    """The next queued message of type ``kind`` (others are skipped); callers bound it."""
    while (message := await client.receive())["type"] != kind:
        pass
    return message


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (state another task or process updates) until it holds; callers bound it."""
    while not check():  # noqa: ASYNC110 - the state changes in a reader task or in systemd
        await asyncio.sleep(0.02)


async def until_state(lab: Systemd, unit: str, sub_state: str) -> None:
    """Poll systemd until ``unit`` is in ``sub_state`` (within :data:`STEP`)."""

    async def reached() -> None:
        while True:
            state = await blocking(lab.show, unit, "SubState")
            if state["SubState"] == sub_state:
                return
            await asyncio.sleep(0.02)

    await within(STEP, f"{unit} {sub_state}", reached())


async def signal_pair_talks(scene: Scene, data: str) -> None:
    """Alice routes ``data`` to Bob and both answer a ping: the room works."""
    alice, bob = scene.signal_clients()
    assert bob.peer is not None
    await alice.send(bob.peer, data)
    message = await within(STEP, "the signal message", next_message(bob, "signal"))
    message.pop("seq")
    assert message == {"type": "signal", "from": alice.peer, "data": data}
    assert await alice.ping() < STEP
    assert await bob.ping() < STEP


async def bystanders_serve(scene: Scene, down: str) -> None:
    """Everything but ``down`` answers while ``down`` waits for its restart."""
    if down != STUN:
        await blocking(stun_binding, scene.ports.stun)
    if down != TURN:
        await blocking(stun_binding, scene.ports.turn)  # TURN answers Binding too
        await blocking(scene.relay().check)  # refresh and a relayed round trip
    if down != SIGNAL:
        alice, bob = scene.signal_clients()
        await signal_pair_talks(scene, f"while {down} is down")
        assert (alice.reconnects, bob.reconnects) == (0, 0), "signaling connections dropped"


async def kill_and_restart(
    scene: Scene, unit: str, while_down: Callable[[], Awaitable[None]]
) -> None:
    """SIGKILL ``unit``'s main process, run ``while_down`` before systemd restarts it, then
    check the restart and that the other services kept their processes."""
    lab = scene.lab
    others = {u: await blocking(lab.show, u, "MainPID", "NRestarts") for u in SERVICES if u != unit}
    restarts = int((await blocking(lab.show, unit, "NRestarts"))["NRestarts"])
    killed_at = time.monotonic()
    old = await blocking(lab.kill_main, unit)
    await until_state(lab, unit, "auto-restart")  # systemd saw the death: RestartSec runs
    await while_down()
    state = await blocking(lab.show, unit, "SubState")
    assert state["SubState"] == "auto-restart", (
        f"the checks meant for {unit}'s downtime outlasted it: {state}"
    )
    new = await blocking(lambda: lab.wait_running(unit, not_pid=old, timeout=RESTART_BOUND))
    scene.timings[unit] = time.monotonic() - killed_at
    assert new != old
    assert int((await blocking(lab.show, unit, "NRestarts"))["NRestarts"]) == restarts + 1
    journal = await blocking(lab.journal, unit)
    assert f"{unit}: {KILLED}" in journal, journal
    for other, before in others.items():
        now = await blocking(lab.show, other, "MainPID", "NRestarts", "ActiveState")
        assert now["ActiveState"] == "active", f"{other} after killing {unit}: {now}"
        assert now["MainPID"] == before["MainPID"], f"{other} changed its process: {now}"
        assert now["NRestarts"] == before["NRestarts"], f"{other} was restarted: {now}"


async def stun_is_killed(scene: Scene) -> None:
    """STUN killed: TURN and signal serve meanwhile; STUN answers Binding again after."""

    async def meanwhile() -> None:
        await bystanders_serve(scene, STUN)

    await kill_and_restart(scene, STUN, meanwhile)
    await blocking(stun_binding, scene.ports.stun)


async def turn_is_killed(scene: Scene) -> None:
    """TURN killed: STUN and signal serve meanwhile; after the restart the client's old
    allocation is gone (437: its NONCE is still good, the nonce key derives from the TURN
    secret, docs/cluster.md), a new one on the same 5-tuple relays, and a credential minted by
    the (untouched) signaling process is accepted by the new TURN process."""

    async def meanwhile() -> None:
        await bystanders_serve(scene, TURN)

    await kill_and_restart(scene, TURN, meanwhile)
    client = scene.relay().client
    codes = await blocking(refresh_codes_after_restart, client)
    assert codes == [437], (
        f"Refresh after TURN's restart answered {codes}; expected 437 (no allocation on this "
        "5-tuple; the NONCE stays good: the new process derives the same nonce key)"
    )
    scene.turn = await blocking(relaying, client, scene.peer)  # same 5-tuple, new allocation
    await blocking(scene.relay().check)
    # A credential the signaling process mints works on the new TURN process.
    alice, _ = scene.signal_clients()
    servers = await alice.request_ice()
    turn_server = next(s for s in servers if "username" in s)
    minted = WireClient("udp", scene.ports.turn, password=str(turn_server["credential"]))
    minted.username = str(turn_server["username"])
    try:
        allocated = await blocking(minted.allocate)
        assert error_code(allocated) is None, f"signal's credential refused: {allocated}"
    finally:
        minted.close()


async def signal_is_killed(scene: Scene) -> None:
    """Signal killed: STUN and TURN serve meanwhile; both clients reconnect by themselves and
    meet again in their room as new sessions (resume state died with the process)."""
    alice, bob = scene.signal_clients()
    old_ids = (alice.peer, bob.peer)

    async def meanwhile() -> None:
        await bystanders_serve(scene, SIGNAL)

    await kill_and_restart(scene, SIGNAL, meanwhile)
    # Each client reconnects and re-joins with its resume token, which the new process has never
    # seen: a fresh session (new id, resumed false) in the same room.
    for client in (alice, bob):
        welcome = await within(STEP, "the re-join's welcome", next_message(client, "welcome"))
        assert welcome["resumed"] is False, welcome
        assert welcome["room"] == client.room
    await within(
        STEP,
        "both peers back in the room under their new ids",
        until(lambda: (alice.peers, bob.peers) == ((bob.peer,), (alice.peer,))),
    )
    assert alice.peer not in old_ids, (old_ids, alice.peer)
    assert bob.peer not in old_ids, (old_ids, bob.peer)
    assert (alice.reconnects, bob.reconnects) == (1, 1)
    assert alice.connected
    assert bob.connected
    await signal_pair_talks(scene, "after the restart")


async def scenario(scene: Scene) -> None:
    """Clients first, then STUN, TURN and signal killed in turn."""
    scene.turn = await blocking(
        relaying, turn_client(scene.ports.turn, scene.secret, "faults"), scene.peer
    )
    await blocking(scene.relay().check)
    room = "systemd-faults"
    options: dict[str, Any] = {"ssl": scene.tls, "retries": SIGNAL_RETRIES, "timeout": 5.0}
    try:
        scene.alice = await SignalClient.connect(scene.url, room, **options)
        scene.bob = await SignalClient.connect(scene.url, room, **options)
        await within(STEP, "peer-joined", next_message(scene.alice, "peer-joined"))
        await signal_pair_talks(scene, "before")
        await stun_is_killed(scene)
        await turn_is_killed(scene)
        await signal_is_killed(scene)
    finally:
        for client in (scene.alice, scene.bob):
            if client is not None:
                await client.close()


@contextmanager
def lab_or_fail(tmp_path: Path, etc: Path) -> Iterator[Systemd]:
    """The lab with our three units and the target; a missing prerequisite fails the test."""
    units = {f"secureconnect-{c}.service": unit_copy(c) for c in ("stun", "turn", "signal")}
    units[TARGET] = (SHIPPED / TARGET).read_text()
    try:
        with systemd_lab(tmp_path, units, etc=etc, keep=_private_paths()) as lab:
            yield lab
    except LabUnavailable as exc:
        pytest.fail(f"no real systemd for this test: {exc}", pytrace=False)


@pytest.mark.timeout(BUDGET + 60)
def test_sigkill_of_each_component_is_restarted_and_clients_recover(tmp_path: Path) -> None:
    """Each per-component service, SIGKILLed under systemd, comes back on its own while the
    other two keep serving, and the clients recover (see the module docstring)."""
    ports = Ports.free()
    config = write_config(tmp_path / "etc", ports, tmp_path)
    secret = (config / "turn-secret").read_text().strip()
    tls = ssl.create_default_context(cafile=str(config / "tls-cert.pem"))  # has IP:127.0.0.1
    with lab_or_fail(tmp_path, tmp_path / "etc") as lab, echo_peer() as peer:
        scene = Scene(lab, ports, secret, tls, peer)
        try:
            lab.systemctl("start", TARGET, *SERVICES)  # returns once each sent READY=1
            for unit in SERVICES:
                lab.wait_running(unit)
            asyncio.run(asyncio.wait_for(scenario(scene), BUDGET))
        except (AssertionError, TimeoutError) as exc:
            raise AssertionError(f"{exc!r}\n--- systemd's view ---\n{scene.diagnosis()}") from exc
        finally:
            if scene.turn is not None:
                scene.turn.close()
        print(
            "seconds from SIGKILL to active again: "
            + ", ".join(f"{u} {t:.2f}" for u, t in scene.timings.items())
        )


@pytest.mark.timeout(BUDGET + 60)
def test_per_component_units_share_the_admin_commands_and_one_metrics_endpoint(
    tmp_path: Path,
) -> None:
    """Run as three units, the node still answers as one (docs/admin.md, docs/metrics.md): each
    unit's admin socket is in the shared ``/run/secureconnect``, 0600 and the dynamic user's,
    ``secureconnect sessions`` run by root in the lab sees a TURN allocation made from outside,
    and signaling's ``/metrics`` carries the TURN and STUN processes' samples."""
    ports = Ports.free()
    config = write_config(tmp_path / "etc", ports, tmp_path)
    secret = (config / "turn-secret").read_text().strip()
    tls = ssl.create_default_context(cafile=str(config / "tls-cert.pem"))
    with lab_or_fail(tmp_path, tmp_path / "etc") as lab, echo_peer() as peer:
        lab.systemctl("start", TARGET, *SERVICES)
        for unit in SERVICES:
            lab.wait_running(unit)
        sockets = [f"/run/secureconnect/admin-{c}.sock" for c in ("signal", "stun", "turn")]
        for line in lab.run("stat", "-c", "%n %a %U", *sockets).splitlines():
            _, mode, owner = line.split()
            assert (mode, owner) == ("600", "secureconnect"), line
        stun_binding(ports.stun)
        relay = relaying(turn_client(ports.turn, secret, "alice"), peer)
        relay.check()
        try:
            sessions = json.loads(
                lab.run(sys.executable, "-m", "secureconnect", "sessions", "--json", "-c", CONFIG)
            )
            assert [a["user"] for a in sessions["turn"]] == ["alice"], sessions
            deadline = time.monotonic() + STEP
            while True:  # the signal process asks its siblings every 2 s
                text = _https_get(ports.signal, "/metrics", tls)
                if "turn_allocations 1" in text and "stun_requests_total" in text:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.2)
        finally:
            relay.close()


def _https_get(port: int, path: str, tls: ssl.SSLContext) -> str:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=STEP)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode()
    finally:
        connection.close()
