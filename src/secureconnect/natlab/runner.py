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
from secureconnect.natlab.report import PairResult
from secureconnect.natlab.topology import Lab, LabClient, Netem
from secureconnect.natlab.usercmd import peer_environment, user_report
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
}
#: seconds a STUN-only attempt gets: a direct path connects in about a second; where none
#: exists aioice would retransmit for over 30 s, so this bound is what declares "no path"
DIRECT_CHECK_TIMEOUT = 10.0


def expected_route(a: Behaviour, b: Behaviour) -> str:
    """``"relay"`` where no direct path can exist between clients behind ``a`` and ``b``, else
    ``"direct"`` (host, srflx or prflx candidates on both sides).

    - UDP blocked: only the TURN server is reachable (over TCP or TLS).
    - Symmetric mapping (RFC 4787 §4.1: a new mapping per destination) against a NAT that also
      filters by port (§5: address-and-port-dependent filtering, i.e. port-restricted or another
      symmetric NAT): the port the symmetric NAT opens towards the peer is not the one its STUN
      server saw, and the peer's filter admits only the latter.
    - Everything else punches through: the other side's mapping is endpoint-independent, and its
      filter admits the symmetric side's new port (restricted cone filters by address only).
    """
    pair = {a, b}
    if Behaviour.UDP_BLOCKED in pair:
        return "relay"
    if Behaviour.SYMMETRIC in pair and pair <= {Behaviour.SYMMETRIC, Behaviour.PORT_RESTRICTED}:
        return "relay"
    return "direct"


def route_of(result: PairResult) -> str:
    """How a connected pair went: through the TURN relay if either end used a relay candidate;
    ``unknown`` when a peer of the user's did not say which pair it selected."""
    if result.local is None or result.remote is None:
        return "unknown"
    return "relay" if "relay" in (result.local, result.remote) else "direct"


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


@dataclass
class LabOutcome:
    """Everything a run found; ``problems`` is empty when every expectation held."""

    behaviours: tuple[Behaviour, ...]
    discoveries: dict[Behaviour, Discovery] = field(default_factory=dict)
    results: list[PairResult] = field(default_factory=list)
    #: (stack, a, b) -> whether the pair connected directly with STUN only (pairs checked)
    direct_possible: dict[tuple[str, str, str], bool] = field(default_factory=dict)
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
        remote=_str_or_none(mine.get("remote")),
        seconds=float(seconds) if isinstance(seconds, (int, float)) and connected else None,
    )
    return result, mine, theirs


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


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


# -- the whole run ---------------------------------------------------------------------------


def needs_direct_check(result: PairResult) -> bool:
    """Whether the route seen needs a STUN-only attempt to be judged.

    aioice nominates aggressively (every check of the controlling agent carries USE-CANDIDATE,
    so the first pair that answers wins): between two filtering NATs a host->relay pair can
    answer before the hole punching of the direct pair completes, and the peers then relay
    although a direct path exists. A relayed pair expected direct is therefore tried again with
    STUN only, and must connect directly. A pair expected to need the relay (and reachable over
    UDP at all) is tried with STUN only too, and must not connect: "only via relay".
    """
    a, b = Behaviour(result.a), Behaviour(result.b)
    if not result.connected or Behaviour.UDP_BLOCKED in (a, b) or route_of(result) == "unknown":
        return False
    return expected_route(a, b) == "relay" or route_of(result) == "relay"


IDLE_STAGE = "pinging again after"  # natlab/peer.py's stage once the hold is over


def dies_when_idle(result: PairResult) -> bool:
    """Whether a call outlives no idle period longer than the NATs' UDP timeout: when a peer
    behind a symmetric NAT relays. Its NAT gives the next packet after the mapping expired a new
    port (RFC 4787 §4.1, address-and-port-dependent mapping), and the TURN allocation, bound to
    the old 5-tuple (RFC 8656 §2.2), is lost with it. A relay behind a NAT that keeps its port
    (endpoint-independent mapping), and every direct pair, get going again with the next
    consent check (RFC 7675, every 5 s)."""
    a, b = Behaviour(result.a), Behaviour(result.b)
    return (result.local == "relay" and a is Behaviour.SYMMETRIC) or (
        result.remote == "relay" and b is Behaviour.SYMMETRIC
    )


def _check_idle_death(name: str, result: PairResult, reason: str) -> str:
    """A call :func:`dies_when_idle` must have connected, then ended once idle."""
    if result.connected:
        return f"{name}: the relayed call outlived the NAT's idle timeout, expected it to end"
    if IDLE_STAGE not in reason:
        return f"{name}: did not connect ({reason})"
    return ""


def check_pair(
    result: PairResult,
    mine: dict[str, object],
    theirs: dict[str, object],
    direct: PairResult | None = None,
    *,
    idle_expiry: bool = False,
) -> str:
    """What is wrong with one pair's outcome, or ``""``; ``direct`` is the STUN-only attempt
    (:func:`needs_direct_check`); ``idle_expiry``: each call stayed idle longer than the NATs'
    UDP timeout (:func:`dies_when_idle` says which calls that ends)."""
    a, b = Behaviour(result.a), Behaviour(result.b)
    name = f"{a.value} <-> {b.value}"
    reason = str(mine.get("error") or theirs.get("error") or "no connection")
    if idle_expiry and dies_when_idle(result):
        return _check_idle_death(name, result, reason)
    if not result.connected:
        return f"{name}: did not connect ({reason})"
    direct_ok = direct is not None and direct.connected and route_of(direct) == "direct"
    return _check_route(name, expected_route(a, b), result, direct_ok=direct_ok)


def _check_route(name: str, want: str, result: PairResult, *, direct_ok: bool) -> str:
    """What is wrong with a connected pair's route, or ``""``."""
    got = route_of(result)
    if got == "unknown":
        return ""  # connected; the user's peer did not say how
    if want == "relay" and got != "relay":
        return f"{name}: connected via {result.local}/{result.remote}, expected relay"
    if want == "relay" and direct_ok:
        return f"{name}: connected directly with STUN only, expected to need the relay"
    if want == "direct" and got == "relay" and not direct_ok:
        return f"{name}: relayed ({result.local}/{result.remote}) and no direct path with STUN only"
    return ""


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
        )
        log(f"building lab {lab.lab_id}: {', '.join(b.value for b in plan.behaviours)}")
        with lab:
            log(f"lab built in {time.monotonic() - began:.1f} s; starting the appliance")
            with run_appliance(lab, workdir) as appliance:
                if plan.discovery:
                    _discover_all(lab, plan.behaviours, outcome, log)
                stacks = [("yours" if plan.peer_cmd else "aiortc", plan.peer_cmd)]
                stacks += [(name, BROWSER_PEERS[name]) for name in plan.browsers]
                for stack, peer_cmd in stacks:
                    _run_matrix(lab, appliance, plan, outcome, log, stack=stack, peer_cmd=peer_cmd)
    outcome.seconds = time.monotonic() - began
    return outcome


def _run_matrix(
    lab: Lab,
    appliance: LabAppliance,
    plan: LabPlan,
    outcome: LabOutcome,
    log: Callable[[str], None],
    *,
    stack: str,
    peer_cmd: tuple[str, ...],
) -> None:
    """Every pair of behaviours with one kind of peer (``stack``); a problem of a stack after
    the first is prefixed with its name in brackets."""
    label = "" if not outcome.results else f"[{stack}] "
    pairs = list(combinations_with_replacement(plan.behaviours, 2))
    for n, (a, b) in enumerate(pairs, 1):
        first, second = lab.client(a, 0), lab.client(b, 1)
        result, mine, theirs = run_pair(
            lab,
            appliance,
            first,
            second,
            room=f"{stack}-{n}",
            timeout=plan.timeout,
            peer_cmd=peer_cmd,
            hold=plan.hold,
        )
        result = dataclasses.replace(result, stack=stack)
        outcome.results.append(result)
        shown = (
            f"{result.local}/{result.remote} in {result.seconds:.1f} s"
            if result.connected and result.seconds is not None
            else "connected"
            if result.connected
            else "FAILED"
        )
        log(f"{label}[{n}/{len(pairs)}] {a.value} <-> {b.value}: {shown}")
        direct = None
        if needs_direct_check(result):
            direct, _, _ = run_pair(
                lab,
                appliance,
                first,
                second,
                room=f"{stack}-{n}-stun-only",
                timeout=DIRECT_CHECK_TIMEOUT,
                turn=False,
                peer_cmd=peer_cmd,
            )
            works = direct.connected and route_of(direct) == "direct"
            outcome.direct_possible[(stack, a.value, b.value)] = works
            log(
                "       STUN only: "
                + (f"{direct.local}/{direct.remote}" if works else "no connection")
            )
        idle_expiry = plan.hold > plan.udp_timeout
        problem = check_pair(result, mine, theirs, direct, idle_expiry=idle_expiry)
        if problem:
            outcome.problems.append(label + problem)
            log(f"       UNEXPECTED: {label}{problem}")


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
