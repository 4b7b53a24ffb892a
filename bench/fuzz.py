"""The fuzzing campaign: mutated STUN/TURN/signaling input against the real appliance, with numbers.

Why: the CI fuzzer (``tests/adversarial/test_turn_sequences.py``) is bounded to about a minute;
this runs the same state-machine fuzzer for as long as asked, plus a mutation campaign of a
million datagrams and a hundred thousand stream frames, and writes what happened to
``bench/results/fuzz-latest.md`` (``make fuzz``; not part of ``make test``).

What, in order:

1. ``secureconnect run stun turn signal`` starts on loopback with its own ports (STUN apart from
   TURN, so both components are hit), a REST secret, no 401 rate limit (every request is
   answered, more code runs) and a generous signaling rate limit (frames reach the parser).
2. **Mutation blast** (``fuzz_mutate``, ``fuzz_blast``): UDP datagrams (70 % to the TURN port,
   30 % to the STUN port) and, at the same time, TCP and TLS frames (same split) mutated from
   valid templates - Binding, classic Binding, Allocate with and without credentials,
   authenticated Refresh/CreatePermission/ChannelBind, Send, ChannelData - by bit flips,
   truncation, length-field lies, duplicated attributes, floods of attributes, random types;
   and authenticated requests (valid MESSAGE-INTEGRITY) whose other attributes are garbage, so
   that the handlers behind authentication get malformed input too. Streams keep their
   framing (or the server would stop reading) except for a few frames that must make it close
   the connection. Then WebSocket frames of damaged JSON.
3. **Sequence fuzzer** (``tests/support/turnfuzz.py``) against a TURN-only appliance of its own,
   for ``--sequence-seconds``: every failing case is shrunk and reported, then fuzzing goes on.
4. **After**: the log is searched for tracebacks, errors and component restarts; RSS and
   descriptors are read from /proc at start and end; Binding (STUN and TURN ports, UDP/TCP/TLS),
   Allocate (UDP/TCP/TLS), a WebSocket join and /healthz must still work.

Bounded: every phase has a count and a deadline (``--max-seconds`` overall); all load is paced
(``--udp-rate``, ``--stream-rate``, ``--wss-rate``) so that a shared 2-core machine stays usable,
and never leaves 127.0.0.1. ``--quick`` is a smoke run of under a minute. Exit status 1 when
anything was found (a crash, a restart, a traceback, a failed check, a broken invariant).

    .venv/bin/python bench/fuzz.py --quick
    .venv/bin/python bench/fuzz.py                      # ~10 minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import common  # noqa: F401 - puts tests/support on the import path
from appliance import free_port, run_appliance
from fuzz_blast import Tally, blast_stream, blast_udp, blast_wss
from fuzz_mutate import Templates, json_frame, mutate
from fuzz_report import Campaign, after_checks, log_findings, markdown
from turnfuzz import case_source, explain, fuzz
from turnharness import Harness
from turnwire import Credential, Session, UdpConn, fd_count, rss_kib, trusting_context, udp_echo

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "fuzz-campaign-secret"  # noqa: S105 - a test secret for a loopback server
SEQUENCE_SHRINK = 60.0  # seconds to shrink each failing sequence
MAX_SEQUENCE_FAILURES = 5  # distinct failing cases reported before the sequence phase stops


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    parser.add_argument("--udp", type=int, default=1_000_000, help="UDP datagrams in all")
    parser.add_argument("--stream", type=int, default=100_000, help="frames per TCP and TLS")
    parser.add_argument("--wss", type=int, default=20_000, help="WebSocket frames")
    parser.add_argument("--udp-rate", type=float, default=12_000.0, help="datagrams per second")
    parser.add_argument("--stream-rate", type=float, default=3_000.0, help="frames/s each")
    parser.add_argument("--wss-rate", type=float, default=800.0, help="WebSocket frames/s")
    parser.add_argument("--sequence-seconds", type=float, default=360.0, help="0: none")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="overall cap")
    parser.add_argument("--seed", default="", help="random seed (default: a fresh one)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz-latest.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.udp = min(args.udp, 150_000)
        args.stream = min(args.stream, 15_000)
        args.wss = min(args.wss, 4_000)
        args.sequence_seconds = min(args.sequence_seconds, 20.0)
    for name, cap in (("udp", 5_000_000), ("stream", 1_000_000), ("wss", 200_000)):
        if not 0 <= getattr(args, name) <= cap:
            parser.error(f"--{name} must be between 0 and {cap}")
    for name, cap in (("sequence_seconds", 7200), ("max_seconds", 4 * 3600)):
        if not 0 <= getattr(args, name) <= cap:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and {cap}")
    for name, cap in (("udp_rate", 50_000), ("stream_rate", 20_000), ("wss_rate", 5_000)):
        if not 0 < getattr(args, name) <= cap:
            parser.error(f"--{name.replace('_', '-')} must be above 0 and at most {cap}")
    args.seed = args.seed or secrets.token_hex(4)
    return args


def appliance_settings(ports: dict[str, int]) -> list[str]:
    """STUN, TURN and signaling on the given loopback ports (see the module docstring)."""
    return [
        f"stun.port={ports['stun']}",
        f"stun.tls_port={ports['stun_tls']}",
        f"turn.port={ports['turn']}",
        f"turn.tls_port={ports['turn_tls']}",
        f"signal.port={ports['signal']}",
        f'turn.secrets=["{SECRET}"]',
        "turn.unauthorized_rate=0",
        "signal.rate_limit=100000",
        "general.drain_timeout=1",
    ]


def mutation_phase(
    args: argparse.Namespace, campaign: Campaign, ports: dict[str, int], workdir: Path
) -> None:
    """The UDP, TCP and TLS blasts at the same time, then the WebSocket pass."""
    tls = trusting_context(workdir / "state")
    deadline = campaign.started + args.max_seconds * 0.6
    with udp_echo() as peer:
        credential = Credential.rest(SECRET, "fuzz")
        probe = Session(UdpConn(("127.0.0.1", ports["turn"])), credential)
        probe.allocate()  # learns the nonce (for 127.0.0.1) and the realm
        probe.conn.close()
        jobs: list[tuple[str, tuple[str, int], str, int]] = []
        turn_share = 0.7
        for transport, count in (("udp", args.udp), ("tcp", args.stream), ("tls", args.stream)):
            turn_port = ports["turn_tls" if transport == "tls" else "turn"]
            stun_port = ports["stun_tls" if transport == "tls" else "stun"]
            turn_count = int(count * turn_share)
            jobs.append((transport, ("127.0.0.1", turn_port), "TURN", turn_count))
            jobs.append((transport, ("127.0.0.1", stun_port), "STUN", count - turn_count))
        threads = []
        for n, (transport, server, target, count) in enumerate(jobs):
            rng = random.Random(f"{args.seed}-{n}")
            templates = Templates(
                rng,
                username=credential.username,
                realm=probe.credential.realm,
                key=probe.credential.key,
                peer=peer,
            )
            templates.refresh(probe.nonce)
            share = count / max(1, args.udp if transport == "udp" else args.stream)
            job = Job(
                transport,
                target,
                server,
                templates,
                rng,
                count,
                rate=(args.udp_rate if transport == "udp" else args.stream_rate) * share,
                deadline=deadline,
                tls=tls if transport == "tls" else None,
            )
            thread = threading.Thread(
                target=_blast, args=(campaign, job), name=f"blast-{transport}-{target}", daemon=True
            )
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(timeout=max(1.0, deadline - time.monotonic() + 30))
        campaign.log(f"mutation blasts done in {time.monotonic() - campaign.started:.0f} s")
        rng = random.Random(f"{args.seed}-wss")
        url = f"wss://127.0.0.1:{ports['signal']}/ws"
        tally = blast_wss(
            url,
            tls,
            lambda: json_frame(rng),
            count=args.wss,
            rate=args.wss_rate,
            deadline=campaign.started + args.max_seconds * 0.7,
        )
        campaign.tallies.append(("WSS", "signal", tally))
        campaign.log(f"websocket pass: {tally.sent} frames, {tally.responses} answers")


@dataclass
class Job:
    """One blaster thread's work: a transport, a target port, its own templates and rng."""

    transport: str
    target: str  # "TURN" or "STUN"
    server: tuple[str, int]
    templates: Templates
    rng: random.Random
    count: int
    rate: float
    deadline: float
    tls: ssl.SSLContext | None = None


def _blast(campaign: Campaign, job: Job) -> None:
    """One blaster thread; its tally goes into ``campaign`` (also when it fails)."""
    tally = Tally()

    def source() -> bytes:
        return mutate(job.rng, job.templates)

    try:
        if job.transport == "udp":
            tally = blast_udp(
                job.server, source, count=job.count, rate=job.rate, deadline=job.deadline
            )
        else:
            tally = blast_stream(
                job.server,
                job.tls,
                source,
                job.rng,
                count=job.count,
                rate=job.rate,
                deadline=job.deadline,
            )
    except Exception as exc:  # a broken generator is a finding about the tool, reported
        campaign.problems.append(f"{job.transport} {job.target} blaster failed: {exc!r}")
    campaign.tallies.append((job.transport.upper(), job.target, tally))
    campaign.log(f"{job.transport} -> {job.target}: {tally.sent} sent, {tally.responses} answers")


def sequence_phase(args: argparse.Namespace, campaign: Campaign, workdir: Path) -> None:
    """The state-machine fuzzer on a TURN-only appliance, rotating the first client's
    transport; every failing case is shrunk and kept for the report."""
    if args.sequence_seconds <= 0:
        return
    end = min(time.monotonic() + args.sequence_seconds, campaign.started + args.max_seconds * 0.95)
    seq = campaign.sequences
    with Harness(workdir) as harness:
        round_ = 0
        while time.monotonic() < end and len(seq.failures) < MAX_SEQUENCE_FAILURES:
            transport = ("udp", "tcp", "tls")[round_ % 3]
            source = case_source(f"{args.seed}-seq-{round_}", transport)
            slice_ = min(30.0, end - time.monotonic())
            result = fuzz(harness, source, seconds=slice_, max_cases=100_000)
            seq.cases += result.cases
            seq.steps += result.steps
            seq.answers.update(result.answers)
            if result.failing is not None:
                report = explain(
                    harness,
                    result,
                    seed=f"{args.seed}-seq-{round_}",
                    label=f"first client over {transport}",
                    shrink_seconds=min(SEQUENCE_SHRINK, max(5.0, end - time.monotonic())),
                )
                seq.failures.append(report)
                campaign.log(f"sequence fuzzer: invariant broken ({transport}), shrunk")
            round_ += 1
        seq.restarts = harness.restarts
    seq.seconds = args.sequence_seconds
    campaign.log(f"sequence fuzzer: {seq.cases} cases, {seq.steps} steps")


def git_commit() -> str:
    """The commit under test (read-only git commands), and whether src/ differs from it."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        head = subprocess.run(  # noqa: S603 - fixed argv of an installed tool
            [git, "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(  # noqa: S603 - fixed argv of an installed tool
            [git, "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + (" (src/ modified)" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The websockets client logs a traceback when a server it fuzzes hangs up mid-frame: noise.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    campaign = Campaign(seed=args.seed, argv=sys.argv[1:] if argv is None else argv)
    campaign.commit = git_commit()
    campaign.log(f"fuzz campaign, seed {args.seed}")
    with tempfile.TemporaryDirectory(prefix="sc-fuzz-") as tmp:
        workdir = Path(tmp)
        main_dir = workdir / "main"
        main_dir.mkdir()
        names = ("stun", "stun_tls", "turn", "turn_tls", "signal")
        ports = {name: free_port() for name in names}
        with run_appliance(
            main_dir,
            "stun",
            "turn",
            "signal",
            state_dir=main_dir / "state",
            settings=appliance_settings(ports),
        ) as running:
            pid = running.proc.pid
            time.sleep(0.5)
            campaign.start_rss, campaign.start_fds = rss_kib(pid), fd_count(pid)
            mutation_phase(args, campaign, ports, main_dir)
            time.sleep(2.0)  # connections the server is closing, relayed data in flight
            campaign.end_rss, campaign.end_fds = rss_kib(pid), fd_count(pid)
            campaign.checks = after_checks(ports, trusting_context(main_dir / "state"), SECRET)
            campaign.alive_at_end = running.proc.poll() is None
        campaign.log_summary = log_findings(running.log_text().splitlines())
        (workdir / "seq").mkdir()
        sequence_phase(args, campaign, workdir / "seq")
    campaign.seconds = time.monotonic() - campaign.started
    text = markdown(campaign)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(campaign.as_json(), indent=2) + "\n")
    campaign.log(f"wrote {args.out} ({campaign.verdict()})")
    return 1 if campaign.findings() else 0


if __name__ == "__main__":
    sys.exit(main())
