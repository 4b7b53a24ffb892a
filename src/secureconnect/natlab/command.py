"""``secureconnect natlab``: the command line of the NAT lab (see :mod:`.runner`).

It checks what the lab needs before building anything (root, ``ip``, ``nft``,
``turnutils_natdiscovery``, aiortc) and names the missing piece; prints progress on stderr and the
matrix on stdout; writes ``--json`` (one record per pair) and ``--svg`` (the heat-map for the
docs). The exit status is 0 only when every pair connected, relayed exactly where expected, and
discovery reported every configured behaviour; 1 when an expectation failed; 2 when the lab
could not run at all; 130 on Ctrl-C or SIGTERM (after the teardown).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from secureconnect.natlab.behaviours import ALL_BEHAVIOURS, Behaviour
from secureconnect.natlab.networks import ALL_NETWORKS, NETWORKS, Network, parse_networks


def add_natlab_parser(commands: Any) -> None:
    """Register ``natlab`` on the CLI's subparsers."""
    lab = commands.add_parser(
        "natlab",
        help="connect WebRTC peers behind lab NATs of every RFC 4787 behaviour (root)",
        description=(
            "Build network namespaces with NAT routers of every behaviour, run the appliance "
            "in the lab, check RFC 5780 discovery from behind each NAT, and connect two aiortc "
            "peers through our signaling for every pair of behaviours."
        ),
    )
    lab.add_argument("--json", type=Path, metavar="FILE", help="write one record per pair")
    lab.add_argument("--svg", type=Path, metavar="FILE", help="write the matrix as a heat-map")
    lab.add_argument("--png", type=Path, metavar="FILE", help="the same heat-map as PNG")
    lab.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML for CI systems")
    lab.add_argument(
        "--behaviours",
        default=",".join(b.value for b in ALL_BEHAVIOURS),
        help="comma-separated, from: " + ", ".join(b.value for b in ALL_BEHAVIOURS),
    )
    lab.add_argument("--delay", type=float, default=0.0, help="netem delay (ms) on each uplink")
    lab.add_argument("--jitter", type=float, default=0.0, help="netem jitter (ms)")
    lab.add_argument("--loss", type=float, default=0.0, help="netem loss (%%) on each uplink")
    lab.add_argument("--timeout", type=float, default=40.0, help="seconds per pair (5-300)")
    lab.add_argument("--no-discovery", action="store_true", help="skip RFC 5780 discovery")
    lab.add_argument(
        "--peer-cmd",
        metavar="COMMAND",
        default="",
        help="your own peer program instead of ours, run in each client namespace; what it "
        "gets and how it reports: docs/natlab.md",
    )
    lab.add_argument(
        "--nat-udp-timeout",
        type=int,
        default=300,
        help="seconds an idle UDP mapping lives in the NATs (1-3600; RFC 4787: at least 300)",
    )
    lab.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="seconds each connected call stays idle before a second ping must get through",
    )
    lab.add_argument(
        "--networks",
        default=None,
        help="the harder networks' rows after the matrix: all, none or comma-separated, from: "
        + ", ".join(n.value for n in ALL_NETWORKS)
        + " (default: all with every behaviour, none when --behaviours picks some)",
    )
    lab.add_argument(
        "--browsers",
        default="",
        help="comma-separated: also run every pair with these browsers as the peers (chromium: "
        "Playwright; firefox: Firefox ESR over WebDriver BiDi), each a matrix of its own",
    )
    lab.add_argument(
        "--sequential",
        action="store_true",
        help="with --browsers: run the stacks' matrices one after the other instead of at once "
        "(slower; each stack has the CPU to itself)",
    )
    lab.add_argument(
        "--lab-id",
        type=int,
        default=None,
        help="which lab of this machine (0-31: its namespace names and lock); default: the "
        "first one free, so several labs can run at once",
    )
    lab.add_argument(
        "--cleanup",
        action="store_true",
        help="only remove what crashed runs left (labs that are not running), then exit",
    )


@contextmanager
def _interrupts_tear_down() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt while the lab runs, so the teardown runs.

    Set explicitly: a process started in the background by a non-interactive shell inherits
    SIGINT ignored (and Python then installs no handler), and SIGTERM's default would kill the
    process and leave the namespaces and the appliance behind.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _behaviours(text: str) -> tuple[Behaviour, ...]:
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = chosen - {b.value for b in ALL_BEHAVIOURS}
    if unknown or not chosen:
        names = ", ".join(b.value for b in ALL_BEHAVIOURS)
        raise ValueError(f"--behaviours: unknown {sorted(unknown)}; choose from {names}")
    return tuple(b for b in ALL_BEHAVIOURS if b.value in chosen)


def _browsers(text: str, known: Mapping[str, object]) -> tuple[str, ...]:
    browsers = tuple(b for b in text.split(",") if b)
    for browser in browsers:
        if browser not in known:
            raise ValueError(f"unknown browser {browser!r} (known: {', '.join(known)})")
    return browsers


def _missing_prerequisite() -> str:
    """What the lab needs and this machine lacks, as a message; ``""`` when all is there."""
    from secureconnect.natlab.labs import LabError  # noqa: PLC0415
    from secureconnect.natlab.topology import require_root  # noqa: PLC0415

    try:
        require_root()
    except LabError as exc:
        return str(exc)
    if shutil.which("turnutils_natdiscovery") is None:
        return "turnutils_natdiscovery is missing: apt-get install coturn (used for RFC 5780)"
    if importlib.util.find_spec("aiortc") is None:
        return "aiortc is missing: pip install 'secureconnect[natlab]'"
    return ""


def run_natlab(args: argparse.Namespace) -> int:
    """Run the lab as the flags say; see the module docstring for the exit status."""
    from secureconnect.natlab import report, runner  # noqa: PLC0415 - only this command
    from secureconnect.natlab.labs import LabError  # noqa: PLC0415
    from secureconnect.natlab.topology import Netem, cleanup_stale  # noqa: PLC0415

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    missing = _missing_prerequisite()
    if missing:
        log(f"secureconnect natlab: {missing}")
        return 2
    if args.cleanup:
        removed = cleanup_stale()
        log(f"removed {len(removed)} lab namespace(s): {' '.join(removed) or '-'}")
        return 0
    try:
        behaviours = _behaviours(args.behaviours)
        every = behaviours == ALL_BEHAVIOURS
        networks = parse_networks(args.networks or ("all" if every else "none"))
        netem = None
        if args.delay or args.jitter or args.loss:
            netem = Netem(delay_ms=args.delay, jitter_ms=args.jitter, loss_percent=args.loss)
        browsers = _browsers(args.browsers, runner.BROWSER_PEERS)
    except ValueError as exc:
        log(f"secureconnect natlab: {exc}")
        return 2
    plan = runner.LabPlan(
        behaviours=behaviours,
        networks=networks,
        parallel=not args.sequential,
        timeout=max(5.0, min(args.timeout, 300.0)),
        netem=netem,
        discovery=not args.no_discovery,
        lab_id=args.lab_id,
        peer_cmd=tuple(shlex.split(args.peer_cmd)),
        browsers=browsers,
        udp_timeout=args.nat_udp_timeout,
        hold=max(0.0, args.hold),
    )
    try:
        with _interrupts_tear_down():
            outcome = runner.run_lab(plan, log)
    except KeyboardInterrupt:
        log("secureconnect natlab: interrupted; the lab is torn down")
        return 130
    except LabError as exc:
        log(f"secureconnect natlab: {exc}")
        return 2
    names = [b.value for b in behaviours]
    for stack in dict.fromkeys(r.stack for r in outcome.results):
        if stack != outcome.results[0].stack:
            print(f"\n== with {stack} as the peers")
        print(report.render_table([r for r in outcome.results if r.stack == stack], names))
    for behaviour, found in outcome.discoveries.items():
        print(
            f"discovery behind {behaviour.value}: {found.mapping} mapping, "
            f"{found.filtering} filtering -> {found.behaviour.value}"
        )
    _write_files(args, outcome, names)
    for (stack, row), works in outcome.direct_possible.items():
        verdict = "connects directly" if works else "no connection"
        print(f"STUN only ({stack}), {row}: {verdict}")
    for problem in outcome.problems:
        print(f"UNEXPECTED: {problem}")
    verdict = "as expected" if not outcome.problems else f"{len(outcome.problems)} problem(s)"
    print(f"{len(outcome.results)} pairs in {outcome.seconds:.0f} s: {verdict}")
    return 0 if not outcome.problems else 1


def _write_files(args: argparse.Namespace, outcome: Any, names: list[str]) -> None:
    """What ``--json``, ``--svg``, ``--png`` and ``--junit`` asked for."""
    from secureconnect.natlab import exports, report, runner  # noqa: PLC0415 - only here

    if args.json:
        # The shape: a list, one record per pair with a, b, connected, local, remote,
        # seconds (candidate types as seen from a); plus the route it took and the one expected.
        records = report.json_records(outcome.results)
        for record, result in zip(records, outcome.results, strict=True):
            record["route"] = runner.route_of(result) if result.connected else None
            record["expected"] = (
                NETWORKS[Network(result.network)].expected
                if result.network
                else runner.expected_route(Behaviour(result.a), Behaviour(result.b))
            )
            record["direct_possible"] = outcome.direct_possible.get((result.stack, result.row))
            record["stack"] = result.stack
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    for stack in dict.fromkeys(r.stack for r in outcome.results):
        results = [r for r in outcome.results if r.stack == stack]
        first = stack == outcome.results[0].stack  # the others go next to it: NAME-STACK.svg
        if args.svg:
            path = args.svg if first else args.svg.with_stem(f"{args.svg.stem}-{stack}")
            path.write_text(report.render_svg(results, names))
        if args.png:
            path = args.png if first else args.png.with_stem(f"{args.png.stem}-{stack}")
            path.write_bytes(exports.render_png(results, names))
    if args.junit:
        seen = {b.value: d.behaviour.value for b, d in outcome.discoveries.items()}
        xml = exports.junit_xml(outcome.results, outcome.problems, seen, outcome.seconds)
        args.junit.write_text(xml)
