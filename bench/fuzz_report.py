"""What the fuzzing campaign (``bench/fuzz.py``) measured, checked and writes.

* :class:`Campaign` collects the figures: per transport and target what was sent and what came
  back, the appliance's RSS and descriptors from /proc at start and end, the checks after the
  blast, what the log says, the sequence fuzzer's cases and failures.
* :func:`after_checks` asks the battered appliance for the basics, each with a deadline:
  Binding on the STUN and TURN ports over UDP, TCP and TLS, Allocate over UDP, TCP and TLS,
  a WebSocket join answered by ``welcome``, ``/healthz`` saying every component runs, and the
  gauges of ``/metrics`` (live allocations explain descriptors held at the end).
* :func:`log_findings` counts tracebacks, restarts and error lines and groups the exceptions.
* :func:`markdown` renders ``bench/results/fuzz-latest.md``; :meth:`Campaign.findings` decides
  the exit status.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fuzz_blast import Tally
from turnwire import (
    Credential,
    Session,
    StreamConn,
    UdpConn,
    error_code,
    exception_summary,
    is_restart,
    problem_lines,
)
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

CHECK_TIMEOUT = 5.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class LogSummary:
    lines: int = 0
    tracebacks: int = 0
    restarts: int = 0
    errors: int = 0
    exceptions: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


@dataclass
class SequenceStats:
    seconds: float = 0.0
    cases: int = 0
    steps: int = 0
    restarts: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


@dataclass
class Campaign:
    seed: str
    argv: list[str]
    commit: str = "unknown"
    started: float = field(default_factory=time.monotonic)
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    seconds: float = 0.0
    tallies: list[tuple[str, str, Tally]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    start_rss: int = 0
    start_fds: int = 0
    end_rss: int = 0
    end_fds: int = 0
    alive_at_end: bool = True
    checks: tuple[list[Check], dict[str, float]] = field(default_factory=lambda: ([], {}))
    log_summary: LogSummary = field(default_factory=LogSummary)
    sequences: SequenceStats = field(default_factory=SequenceStats)

    def log(self, line: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {line}", file=sys.stderr, flush=True)

    def findings(self) -> list[str]:
        """Everything that counts as a bug found (empty: a clean run)."""
        found = list(self.problems)
        summary = self.log_summary
        if summary.restarts:
            found.append(f"{summary.restarts} component restart(s)")
        if summary.tracebacks:
            found.append(f"{summary.tracebacks} traceback(s) in the log")
        if summary.errors:
            found.append(f"{summary.errors} error line(s) in the log")
        if not self.alive_at_end:
            found.append("the appliance exited during the campaign")
        found += [f"check failed: {c.name} ({c.detail})" for c in self.checks[0] if not c.ok]
        if self.sequences.failures:
            found.append(f"{len(self.sequences.failures)} sequence invariant failure(s)")
        return found

    def verdict(self) -> str:
        found = self.findings()
        return "clean: nothing found" if not found else "FINDINGS: " + "; ".join(found)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "argv": self.argv,
            "commit": self.commit,
            "date": self.date,
            "seconds": round(self.seconds, 1),
            "load": [{"transport": t, "target": g, **vars(tally)} for t, g, tally in self.tallies],
            "process": {
                "rss_kib": [self.start_rss, self.end_rss],
                "fds": [self.start_fds, self.end_fds],
            },
            "checks": [vars(c) for c in self.checks[0]],
            "metrics": self.checks[1],
            "log": {
                "lines": self.log_summary.lines,
                "tracebacks": self.log_summary.tracebacks,
                "restarts": self.log_summary.restarts,
                "errors": self.log_summary.errors,
                "exceptions": dict(self.log_summary.exceptions),
            },
            "sequences": {
                "cases": self.sequences.cases,
                "steps": self.sequences.steps,
                "failures": self.sequences.failures,
            },
            "findings": self.findings(),
        }


def log_findings(lines: list[str]) -> LogSummary:
    summary = LogSummary(lines=len(lines))
    for line in problem_lines(lines):
        summary.restarts += is_restart(line)
        summary.tracebacks += "Traceback" in line
        summary.errors += "level=error" in line or "level=critical" in line
        if "Traceback" in line:
            summary.exceptions[exception_summary(line)] += 1
        if len(summary.examples) < 5:
            summary.examples.append(line.strip()[:600])
    return summary


# -- after the blast -----------------------------------------------------------------------------


def after_checks(
    ports: dict[str, int], tls: ssl.SSLContext, secret: str
) -> tuple[list[Check], dict[str, float]]:
    """The basics, each bounded (see the module docstring); and the /metrics gauges."""
    checks: list[Check] = []
    for name in ("turn", "stun"):
        for transport in ("udp", "tcp", "tls"):
            port = ports[f"{name}_tls" if transport == "tls" else name]
            checks.append(_binding(f"Binding {name.upper()}/{transport}", transport, port, tls))
    for transport in ("udp", "tcp", "tls"):
        port = ports["turn_tls" if transport == "tls" else "turn"]
        checks.append(_allocate(transport, port, tls, secret))
    checks.append(_join(ports["signal"], tls))
    health = _get(ports["signal"], "/healthz", tls)
    body = " ".join(health[1].split())
    ok = health[0] == 200 and '"status": "ok"' in body.replace('":"', '": "')
    checks.append(Check("/healthz", ok, f"{health[0]} {body[:160]}"))
    return checks, _gauges(_get(ports["signal"], "/metrics", tls)[1])


def _conn(transport: str, port: int, tls: ssl.SSLContext) -> UdpConn | StreamConn:
    server = ("127.0.0.1", port)
    if transport == "udp":
        return UdpConn(server)
    return StreamConn(server, tls if transport == "tls" else None)


def _binding(name: str, transport: str, port: int, tls: ssl.SSLContext) -> Check:
    try:
        conn = _conn(transport, port, tls)
    except OSError as exc:
        return Check(name, False, f"cannot connect: {exc}")
    try:
        answer = Session(conn, Credential("", "")).binding(CHECK_TIMEOUT)
    finally:
        conn.close()
    if answer is None:
        return Check(name, False, "no answer")
    return Check(name, error_code(answer) == 0, f"answer {error_code(answer) or 'success'}")


def _allocate(transport: str, port: int, tls: ssl.SSLContext, secret: str) -> Check:
    name = f"Allocate TURN/{transport}"
    try:
        conn = _conn(transport, port, tls)
    except OSError as exc:
        return Check(name, False, f"cannot connect: {exc}")
    session = Session(conn, Credential.rest(secret, f"after-{transport}-{os.getpid()}"))
    try:
        answer = session.allocate()
        if answer is not None and error_code(answer) == 0:
            session.refresh(0)
    finally:
        conn.close()
    if answer is None:
        return Check(name, False, "no answer")
    return Check(name, error_code(answer) == 0, f"answer {error_code(answer) or 'success'}")


def _join(port: int, tls: ssl.SSLContext) -> Check:
    name = "WebSocket join"
    try:
        with connect(f"wss://127.0.0.1:{port}/ws", ssl=tls, open_timeout=CHECK_TIMEOUT) as ws:
            ws.send(json.dumps({"type": "join", "room": "after-fuzz"}))
            deadline = time.monotonic() + CHECK_TIMEOUT
            while time.monotonic() < deadline:
                message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if message.get("type") == "welcome":
                    return Check(name, True, "welcome")
    except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
        return Check(name, False, repr(exc)[:200])
    return Check(name, False, "no welcome")


def _get(port: int, path: str, tls: ssl.SSLContext) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=CHECK_TIMEOUT, context=tls)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, repr(exc)
    finally:
        conn.close()


def _gauges(text: str) -> dict[str, float]:
    wanted = {
        "turn_allocations",
        "turn_reservations",
        "turn_stream_connections",
        "turn_requests_total",
        "turn_packet_errors_total",
        "stun_requests_total",
        "stun_stream_connections",
        "stun_stream_handler_failures_total",
        "signal_connections",
    }
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name in wanted:
            try:
                gauges[name] = float(value)
            except ValueError:
                continue
    return gauges


# -- the report ----------------------------------------------------------------------------------


def markdown(c: Campaign) -> str:
    """``bench/results/fuzz-latest.md``."""
    out = [
        "# Fuzzing campaign",
        "",
        f"**Verdict: {c.verdict()}**",
        "",
        f"- date: {c.date}; commit {c.commit}; {c.seconds:.0f} s in all",
        f"- command: `bench/fuzz.py {' '.join(c.argv)}`; seed `{c.seed}`",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        "## Load (mutated from valid templates, paced, loopback)",
        "",
        "| transport | target | sent | per s | answers | connections | closed by server |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    totals: Counter[str] = Counter()
    for transport, target, t in c.tallies:
        totals[transport] += t.sent
        out.append(
            f"| {transport} | {target} | {t.sent:,} | {t.rate:,.0f} | {t.responses:,} | "
            f"{t.connections or '-'} | {t.closed_by_server or '-'} |"
        )
    out += ["", "Totals: " + ", ".join(f"{k} {v:,}" for k, v in totals.items()), ""]
    for transport, _, t in c.tallies:
        if t.closes:
            codes = ", ".join(f"{code}: {n}" for code, n in sorted(t.closes.items()))
            out += [f"{transport} connections closed by the server, by close code: {codes}", ""]
    s = c.log_summary
    gauges = c.checks[1]
    relays = gauges.get("turn_allocations", 0) + gauges.get("turn_reservations", 0)
    out += [
        "## The appliance (`secureconnect run stun turn signal`)",
        "",
        "| | start | end |",
        "|---|---:|---:|",
        f"| RSS (KiB) | {c.start_rss:,} | {c.end_rss:,} |",
        f"| open descriptors | {c.start_fds} | {c.end_fds} |",
        f"| descriptors less live relay sockets | {c.start_fds} | {c.end_fds - relays:g} |",
        "",
        f"Live relay sockets at the end: {relays:g} (allocations and reservations that intact "
        "templates made; they expire with their lifetime).",
        "",
        f"Log: {s.lines} lines, {s.restarts} component restarts, {s.tracebacks} tracebacks, "
        f"{s.errors} error lines. Gauges at the end: "
        + (", ".join(f"{k}={v:g}" for k, v in gauges.items()) or "(none read)"),
        "",
    ]
    if s.exceptions:
        out += ["| exception | count |", "|---|---:|"]
        out += [f"| `{e}` | {n} |" for e, n in s.exceptions.most_common()]
        out.append("")
    if s.examples:
        out += ["First problem lines:", "", "```", *s.examples, "```", ""]
    out += ["## After the campaign", "", "| check | result | detail |", "|---|---|---|"]
    out += [f"| {ch.name} | {'ok' if ch.ok else 'FAILED'} | {ch.detail} |" for ch in c.checks[0]]
    q = c.sequences
    out += [
        "",
        "## Sequence fuzzer (TURN state machines, invariants after every case)",
        "",
        f"{q.cases:,} cases, {q.steps:,} steps in about {q.seconds:.0f} s; "
        f"{len(q.failures)} failing case(s); appliance restarted {q.restarts} time(s) "
        "(after each failure).",
        "",
        "Answers: " + ", ".join(f"{k} {v:,}" for k, v in q.answers.most_common(16)),
        "",
    ]
    for n, failure in enumerate(q.failures, 1):
        out += [f"### Failure {n}", "", "```", failure, "```", ""]
    if c.problems:
        out += ["## Tool problems", "", *(f"- {p}" for p in c.problems), ""]
    return "\n".join(out)
