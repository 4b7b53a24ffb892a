"""The NAT lab's scenario run: appliance in the lab, discovery per NAT, every pair of behaviours.

:func:`run_lab` is what ``secureconnect natlab`` does:

1. builds a :class:`~secureconnect.natlab.topology.Lab` with two clients per behaviour (each
   behind its own router, so ``symmetric`` meets another symmetric NAT, not itself);
2. starts the whole appliance (``python -m secureconnect run``) inside the lab's public segment,
   on the lab's two public addresses: STUN with RFC 5780 on its own port (UDP, and TCP, which
   discovery uses to tell a UDP-blocking NAT from a server that is down), TURN over UDP, TCP and
   TLS, WSS signaling; ``turn.allowed_peers`` lets it relay to the lab's public range, which the
   built-in denylist covers (TEST-NET-2). Readiness comes from its ``READY=1`` (sd_notify on a
   path socket, which crosses network namespaces);
3. runs RFC 5780 behaviour discovery (coturn's ``turnutils_natdiscovery``) from every first
   client and compares it with the behaviour the lab configured;
4. for every unordered pair of behaviours (a before b in the lab's order) starts one peer in
   a's first client and one in b's second (``python -m secureconnect.natlab.peer``): they meet
   in a room of our signaling, take the ICE servers from the welcome and connect with aiortc;
5. checks the outcome against :func:`expected_route`: every pair must connect, relayed exactly
   where no direct path can exist. Relayed pairs and pairs expected to need the relay are
   tried once more with STUN only (:func:`needs_direct_check`): aioice's aggressive nomination
   may settle on a relayed pair first although a direct one exists, so the lab proves both
   "a direct path exists" and "only the relay works" instead of trusting one nomination.

Teardown is the lab's: every process in a lab namespace is killed and every namespace deleted,
also on an exception or Ctrl-C; a later run removes what a crashed one left.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations_with_replacement
from pathlib import Path

from secureconnect.config import render_sections
from secureconnect.launcher import ApplianceNotReady
from secureconnect.launcher import run_appliance as launch
from secureconnect.natlab.behaviours import ALL_BEHAVIOURS, Behaviour
from secureconnect.natlab.discovery import Discovery, discover
from secureconnect.natlab.labs import LabError
from secureconnect.natlab.networks import IDLE_HOLD, NETWORKS, Network
from secureconnect.natlab.report import PairResult
from secureconnect.natlab.topology import Lab, LabClient, Netem
from secureconnect.natlab.usercmd import peer_environment, user_report
from secureconnect.natlab.verdicts import (
    check_network,
    check_pair,
    dies_when_idle,
    expected_route,
    needs_direct_check,
    network_needs_direct_check,
    route_of,
)

__all__ = [
    "BROWSER_PEERS",
    "LabAppliance",
    "LabOutcome",
    "LabPlan",
    "dies_when_idle",
    "expected_route",
    "route_of",
    "run_appliance",
    "run_lab",
    "run_pair",
    "turn_transport",
]
from secureconnect.netaddr import url_host
from secureconnect.statedir import SELF_SIGNED_CERT

STUN_PORT = 3479  # RFC 5780 needs the STUN component on its own port next to TURN's 3478
STUN_ALTERNATE_PORT = 3480
TURN_PORT = 3478
TURN_TLS_PORT = 5349
SIGNAL_PORT = 8443
READY_TIMEOUT = 30.0
#: the browsers the lab can run as peers (``--browsers``): their peer program (natlab/browser.py)
BROWSER_PEERS: dict[str, tuple[str, ...]] = {
    "chromium": (sys.executable, "-m", "secureconnect.natlab.browser"),
    "firefox": (sys.executable, "-m", "secureconnect.natlab.firefox"),
}
#: seconds a STUN-only attempt gets: a direct path connects in about a second; where none
#: exists aioice would retransmit for over 30 s, so this bound is what declares "no path"
DIRECT_CHECK_TIMEOUT = 10.0


@dataclass(frozen=True)
class LabPlan:
    """What one run does; the CLI fills it from its flags."""

    behaviours: tuple[Behaviour, ...] = ALL_BEHAVIOURS
    timeout: float = 40.0  # seconds per pair (each peer's own bound)
    netem: Netem | None = None
    discovery: bool = True
    lab_id: int | None = None  # None: the first free lab id (several labs at once)
    peer_cmd: tuple[str, ...] = ()  # your own peer (natlab/usercmd.py); empty: ours (aiortc)
    browsers: tuple[str, ...] = ()  # more matrices, with browsers as the peers (BROWSER_PEERS)
    udp_timeout: int = 300  # seconds an idle UDP mapping lives in the routers
    hold: float = 0.0  # seconds each call stays idle before a second ping must get through
    networks: tuple[Network, ...] = ()  # harder networks' rows after the matrix (networks.py)
    parallel: bool = True  # the stacks' matrices at once (False: one after the other)


@dataclass
class LabOutcome:
    """Everything a run found; ``problems`` is empty when every expectation held."""

    behaviours: tuple[Behaviour, ...]
    discoveries: dict[Behaviour, Discovery] = field(default_factory=dict)
    results: list[PairResult] = field(default_factory=list)
    #: (stack, row) -> whether the row's pair connected directly with STUN only (those checked;
    #: the row is ``a <-> b`` or a network's name: PairResult.row)
    direct_possible: dict[tuple[str, str], bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- the appliance inside the lab ------------------------------------------------------------


def appliance_config(lab: Lab, state_dir: Path) -> str:
    """The appliance's TOML for the lab: everything on the lab's public addresses."""
    primary, alternate = lab.server_addresses
    return render_sections(
        {
            "general": {"state_dir": str(state_dir)},
            "tls": {"server_names": [primary]},
            "stun": {
                "listen": [primary],
                "port": STUN_PORT,
                "tls": False,
                "alternate_address": alternate,
                "alternate_port": STUN_ALTERNATE_PORT,
            },
            "turn": {
                "listen": [primary],
                "port": TURN_PORT,
                "tls_port": TURN_TLS_PORT,
                "allowed_peers": [lab.public_network],
            },
            "signal": {"listen": [primary], "port": SIGNAL_PORT},
        },
        header="Written by `secureconnect natlab` for one run; deleted with it.",
    )


@dataclass(frozen=True)
class LabAppliance:
    """The running appliance: where the peers find it and which certificate they trust."""

    url: str
    cafile: Path
    log: Path
    pid: int


@contextmanager
def run_appliance(lab: Lab, workdir: Path) -> Iterator[LabAppliance]:
    """``secureconnect run`` in the lab's public namespace, until the block ends (the launcher
    every test uses, :mod:`secureconnect.launcher`, through ``ip netns exec``)."""
    state_dir = workdir / "state"
    config = workdir / "appliance.toml"
    config.write_text(appliance_config(lab, state_dir))
    log_path = workdir / "appliance.log"
    try:
        with launch(
            workdir,
            argv_prefix=lab.exec_argv(lab.server_namespace),
            program=(sys.executable, "-m", "secureconnect"),
            extra_args=("--config", str(config)),
            log_file=log_path,
            ready_timeout=READY_TIMEOUT,
        ) as running:
            primary = lab.server_addresses[0]
            yield LabAppliance(
                url=f"wss://{url_host(primary)}:{SIGNAL_PORT}/ws",
                cafile=state_dir / SELF_SIGNED_CERT,
                log=log_path,
                pid=running.proc.pid,
            )
    except ApplianceNotReady as exc:
        raise LabError(str(exc)) from exc


# -- pairs -------------------------------------------------------------------------------------


def turn_transport(behaviour: Behaviour) -> str:
    """Which TURN URL the peer hands aiortc (it uses one): TCP where UDP is blocked."""
    return "tcp" if behaviour is Behaviour.UDP_BLOCKED else "udp"


def peer_argv(
    lab: Lab,
    client: LabClient,
    appliance: LabAppliance,
    *,
    room: str,
    role: str,
    timeout: float,
    turn: bool = True,
    hold: float = 0.0,
) -> list[str]:
    return lab.exec_argv(
        client.namespace,
        sys.executable,
        "-m",
        "secureconnect.natlab.peer",
        "--url",
        appliance.url,
        "--room",
        room,
        "--role",
        role,
        "--cafile",
        str(appliance.cafile),
        "--timeout",
        f"{timeout:g}",
        "--turn-transport",
        turn_transport(client.behaviour) if turn else "none",
        "--hold",
        f"{hold:g}",
    )


def run_pair(
    lab: Lab,
    appliance: LabAppliance,
    a: LabClient,
    b: LabClient,
    *,
    room: str,
    timeout: float,
    turn: bool = True,
    peer_cmd: tuple[str, ...] = (),
    hold: float = 0.0,
) -> tuple[PairResult, dict[str, object], dict[str, object]]:
    """Both peers at once; the result as seen from ``a`` (the offerer), plus both raw reports.
    ``turn=False`` gives the peers STUN only: whether a direct path exists at all. With
    ``peer_cmd`` the peers are the user's program (:mod:`.usercmd`)."""
    procs = []
    for client, role in ((a, "offer"), (b, "answer")):
        env = None
        argv = peer_argv(
            lab,
            client,
            appliance,
            room=room,
            role=role,
            timeout=timeout + hold,
            turn=turn,
            hold=hold,
        )
        if peer_cmd:
            argv = lab.exec_argv(client.namespace, *peer_cmd)
            env = {
                **os.environ,
                **peer_environment(
                    signal_url=appliance.url,
                    host=url_host(lab.server_addresses[0]),
                    turn_port=TURN_PORT,
                    turn_tls_port=TURN_TLS_PORT,
                    state_dir=appliance.cafile.parent,
                    room=room,
                    role=role,
                    timeout=timeout,
                    behaviour=client.behaviour,
                    turn=turn,
                ),
            }
        procs.append(
            subprocess.Popen(  # noqa: S603 - our module, or the user's own command
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    reports: list[dict[str, object]] = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout + hold + 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        report = user_report if peer_cmd else _peer_report
        reports.append(report(proc.returncode, out, err))
    mine, theirs = reports
    connected = bool(mine.get("connected")) and bool(theirs.get("connected"))
    seconds = mine.get("seconds")
    result = PairResult(
        a=a.behaviour.value,
        b=b.behaviour.value,
        connected=connected,
        local=_str_or_none(mine.get("local")),
        remote=_remote_type(mine, theirs),
        seconds=float(seconds) if isinstance(seconds, (int, float)) and connected else None,
        protocol=_protocol_of(mine),
    )
    return result, mine, theirs


def _remote_type(mine: dict[str, object], theirs: dict[str, object]) -> str | None:
    """b's candidate type as a saw it, unless b says it relays: a peer that learns the other's
    relay candidate from a check before the signalled candidate arrives calls it ``prflx``
    (Firefox does), and only b knows that address is its TURN allocation's."""
    if theirs.get("local") == "relay":
        return "relay"
    return _str_or_none(mine.get("remote"))


def _peer_report(returncode: int, out: str, err: str) -> dict[str, object]:
    lines = out.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        tail = " | ".join(err.strip().splitlines()[-5:])
        return {"connected": False, "error": f"peer exited {returncode} without a report: {tail}"}
    return report


def _protocol_of(report: dict[str, object]) -> str | None:
    """The selected pair's transport from a peer's report: its ``protocol``, or the suffix of
    our peer's ``local_candidate`` (``ip:port/udp``)."""
    said = report.get("protocol")
    if isinstance(said, str):
        return said.lower()
    candidate = report.get("local_candidate")
    if isinstance(candidate, str) and "/" in candidate:
        return candidate.rsplit("/", 1)[1].lower()
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


# -- the whole run ---------------------------------------------------------------------------


def run_lab(plan: LabPlan, log: Callable[[str], None]) -> LabOutcome:
    """Build the lab, run discovery and every pair, tear everything down; see the module doc."""
    began = time.monotonic()
    outcome = LabOutcome(plan.behaviours)
    with tempfile.TemporaryDirectory(prefix="scnl-") as tmp:
        workdir = Path(tmp)
        lab = Lab(
            plan.behaviours,
            clients_per_behaviour=2,
            netem=plan.netem,
            lab_id=plan.lab_id,
            udp_timeout=plan.udp_timeout,
            networks=plan.networks,
        )
        shown = ", ".join([*(b.value for b in plan.behaviours), *plan.networks])
        log(f"building lab {lab.lab_id}: {shown}")
        with lab:
            log(f"lab built in {time.monotonic() - began:.1f} s; starting the appliance")
            with run_appliance(lab, workdir) as appliance:
                if plan.discovery:
                    _discover_all(lab, plan.behaviours, outcome, log)
                stacks = [("yours" if plan.peer_cmd else "aiortc", plan.peer_cmd)]
                stacks += [(name, BROWSER_PEERS[name]) for name in plan.browsers]
                runs = []
                for k, (name, cmd) in enumerate(stacks):
                    label = "" if k == 0 else f"[{name}] "  # the first stack's problems: bare
                    mine = LabOutcome(plan.behaviours)
                    runs.append(_Stack(lab, appliance, plan, mine, log, name, cmd, label))
                _run_stacks(runs, parallel=plan.parallel)
                for run in runs:  # in the stacks' order, whichever finished first
                    outcome.results += run.outcome.results
                    outcome.direct_possible.update(run.outcome.direct_possible)
                    outcome.problems += run.outcome.problems
    outcome.seconds = time.monotonic() - began
    return outcome


@dataclass(frozen=True)
class _Stack:
    """One kind of peer's run through the lab: where, with what, and where results go."""

    lab: Lab
    appliance: LabAppliance
    plan: LabPlan
    outcome: LabOutcome
    log: Callable[[str], None]
    name: str  # aiortc, yours, chromium, firefox
    peer_cmd: tuple[str, ...]  # empty: the lab's own peer
    label: str  # "" for the first stack, else "[name] " before its problems

    def pair(
        self, first: LabClient, second: LabClient, room: str, *, turn: bool = True, hold: float = 0
    ) -> tuple[PairResult, dict[str, object], dict[str, object]]:
        timeout = self.plan.timeout if turn else DIRECT_CHECK_TIMEOUT
        return run_pair(
            self.lab,
            self.appliance,
            first,
            second,
            room=room,
            timeout=timeout,
            turn=turn,
            peer_cmd=self.peer_cmd,
            hold=hold,
        )

    def stun_only(
        self, first: LabClient, second: LabClient, result: PairResult
    ) -> tuple[PairResult, dict[str, object]]:
        """The pair again with STUN only (no TURN): does a direct path exist? Recorded in
        ``direct_possible`` under the row of ``result``; the attempt and a's report."""
        room = f"{self.name}-{result.row.replace(' <-> ', '-')}-stun-only"
        direct, report, _ = self.pair(first, second, room, turn=False)
        works = direct.connected and route_of(direct) == "direct"
        self.outcome.direct_possible[(self.name, result.row)] = works
        self.log(
            "       STUN only: " + (f"{direct.local}/{direct.remote}" if works else "no connection")
        )
        return direct, report

    def judged(self, problem: str) -> None:
        if problem:
            self.outcome.problems.append(self.label + problem)
            self.log(f"       UNEXPECTED: {self.label}{problem}")


def _run_stacks(runs: list[_Stack], *, parallel: bool) -> None:
    """Every stack's matrix: one after the other, or all at once (each in a thread of its own,
    with rooms of its own; two peers of different stacks in one client namespace use different
    ports, which every NAT of the lab maps apart). On an error or Ctrl-C the threads are left
    to end with their peers, which the lab's teardown kills."""
    if not parallel or len(runs) == 1:
        for run in runs:
            _run_matrix(run)
        return
    pool = ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="natlab-stack")
    try:
        for future in [pool.submit(_run_matrix, run) for run in runs]:
            future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _run_matrix(run: _Stack) -> None:
    """Every pair of behaviours with one kind of peer, then the harder networks' rows."""
    plan = run.plan
    pairs = list(combinations_with_replacement(plan.behaviours, 2))
    for n, (a, b) in enumerate(pairs, 1):
        first, second = run.lab.client(a, 0), run.lab.client(b, 1)
        result, mine, theirs = run.pair(first, second, f"{run.name}-{n}", hold=plan.hold)
        result = dataclasses.replace(result, stack=run.name)
        run.outcome.results.append(result)
        shown = (
            f"{result.local}/{result.remote} in {result.seconds:.1f} s"
            if result.connected and result.seconds is not None
            else "connected"
            if result.connected
            else "FAILED"
        )
        run.log(f"{run.label}[{n}/{len(pairs)}] {a.value} <-> {b.value}: {shown}")
        direct = run.stun_only(first, second, result)[0] if needs_direct_check(result) else None
        idle_expiry = plan.hold > plan.udp_timeout
        run.judged(check_pair(result, mine, theirs, direct, idle_expiry=idle_expiry))
    for network in plan.networks:
        _run_network(run, network)


def _run_network(run: _Stack, network: Network) -> None:
    """One harder network's row (:mod:`.networks`): its pair, a STUN-only attempt where the
    route needs proving, the verdict. The idle rows need a peer that holds a call (ours)."""
    spec = NETWORKS[network]
    if spec.idle and run.peer_cmd:
        run.log(f"{run.label}{network.value}: not run (only the lab's own peer holds a call idle)")
        return
    first, second = run.lab.network_clients(network)
    hold = IDLE_HOLD if spec.idle else 0.0
    result, mine, theirs = run.pair(first, second, f"{run.name}-{network.value}", hold=hold)
    result = dataclasses.replace(result, stack=run.name, network=network.value)
    run.outcome.results.append(result)
    shown = (
        f"{result.local}/{result.remote} in {result.seconds or 0:.1f} s"
        if result.connected
        else "not connected"
    )
    run.log(f"{run.label}{network.value} ({spec.description}): {shown}, expected {spec.expected}")
    direct = direct_report = None
    if network_needs_direct_check(result):
        direct, direct_report = run.stun_only(first, second, result)
    run.judged(check_network(result, mine, theirs, direct, direct_report))


def _discover_all(
    lab: Lab, behaviours: Sequence[Behaviour], outcome: LabOutcome, log: Callable[[str], None]
) -> None:
    """RFC 5780 discovery from every behaviour's first client, in parallel."""
    clients = [lab.client(b, 0) for b in behaviours]
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        found = list(pool.map(lambda c: discover(lab, c, port=STUN_PORT), clients))
    for client, discovery in zip(clients, found, strict=True):
        outcome.discoveries[client.behaviour] = discovery
        verdict = "ok" if discovery.behaviour is client.behaviour else "MISMATCH"
        log(
            f"discovery {client.behaviour.value:<16} mapping {discovery.mapping}, "
            f"filtering {discovery.filtering} -> {discovery.behaviour.value} ({verdict})"
        )
        if discovery.behaviour is not client.behaviour:
            outcome.problems.append(
                f"discovery behind {client.behaviour.value} reported {discovery.behaviour.value}"
            )
