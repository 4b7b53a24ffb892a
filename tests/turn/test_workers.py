"""TURN on two worker processes (``turn.workers = 2``, docs/workers.md), black box.

Every test runs ``python -m secureconnect run`` with two UDP workers and talks to it from several
loopback source addresses (127.0.0.x), which the reuseport program spreads over the workers.
Which process serves a client is read from the relayed port: each process takes relay ports
from its own slice of the range (the parent's TCP/TLS clients the first, worker 1 the next...).
What must hold across processes: quotas, the nonce key, the 401 rate limit, restarts that
leave the other worker's allocations alone, SIGHUP, ``/metrics`` and READY=1.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance import Running, appliance_env, free_port, run_appliance
from turnwire import (
    REQUESTED_UDP,
    Conn,
    Credential,
    Session,
    StreamConn,
    UdpConn,
    decode,
    error_code,
    relayed_address,
    request,
    udp_echo,
)

from secureconnect.stun import AttrType, Method, StunMessage

A = AttrType
SECRET = "workers-secret"
PORT_MIN, SLICE = 50000, 100  # three slices: the parent's, worker 1's, worker 2's
#: sources to pick clients from; the program spreads them over both workers
SOURCES = [f"127.0.0.{n}" for n in range(2, 40)]


@dataclass
class Appliance:
    running: Running
    port: int
    signal_port: int | None = None

    @property
    def server(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def worker_pid(self, index: int, not_pid: int | None = None, timeout: float = 15.0) -> int:
        """The pid of worker ``index`` as last logged (one other than ``not_pid``)."""
        deadline = time.monotonic() + timeout
        pattern = re.compile(rf"event=worker-started worker={index} pid=(\d+)")
        while time.monotonic() < deadline:
            pids = [int(m.group(1)) for m in pattern.finditer(self.running.log_text())]
            if pids and pids[-1] != not_pid:
                return pids[-1]
            time.sleep(0.05)
        raise AssertionError(f"worker {index} (not {not_pid}) never started: {self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.running.log_text().splitlines()[-30:])


@contextmanager
def workers(tmp_path: Path, *settings: str, signal_port: bool = False) -> Iterator[Appliance]:
    """The appliance's TURN with two UDP workers (and signaling, for ``/metrics``)."""
    port = free_port()
    sig = free_port(socket.SOCK_STREAM) if signal_port else None
    base = [
        f"turn.port={port}",
        "turn.tls=false",
        f'turn.secrets=["{SECRET}"]',
        "turn.workers=2",
        f"turn.relay_port_min={PORT_MIN}",
        f"turn.relay_port_max={PORT_MIN + 3 * SLICE - 1}",
        "turn.bandwidth_limit=0",
        "general.drain_timeout=1",
    ]
    if sig is not None:
        base += [f"signal.port={sig}", "signal.tls=false", "signal.metrics_from=['127.0.0.0/8']"]
    components = ("turn", "signal") if sig is not None else ("turn",)
    with run_appliance(
        tmp_path, *components, state_dir=tmp_path / "state", settings=[*base, *settings]
    ) as running:
        yield Appliance(running, port, sig)


def credential(user: str = "alice", secret: str = SECRET) -> Credential:
    return Credential.rest(secret, user)


def code(answer: StunMessage | None) -> int | None:
    """0 for a success, the error code of an error, None when nothing came."""
    return None if answer is None else error_code(answer)


def process_of(answer: StunMessage | None) -> int:
    """0 for the parent, 1 or 2 for a worker: whose slice the relayed port is in."""
    relayed = None if answer is None else relayed_address(answer)
    assert relayed is not None, answer
    return (relayed[1] - PORT_MIN) // SLICE


def client(app: Appliance, source: str, user: str = "alice", secret: str = SECRET) -> Session:
    return Session(UdpConn(app.server, (source, 0)), credential(user, secret))


def sources_by_worker(app: Appliance, secret: str = SECRET, each: int = 2) -> dict[int, list[str]]:
    """Which worker serves each source address (``each`` of them per worker at least),
    learnt by allocating as ``probe`` and deleting again at once; the same address always
    lands on the same worker."""
    found: dict[int, list[str]] = {1: [], 2: []}
    for source in SOURCES:
        session = client(app, source, "probe", secret)
        answer = session.allocate()
        assert code(answer) == 0, (source, app.log_tail())
        found[process_of(answer)].append(source)
        assert code(session.refresh(0)) == 0
        session.conn.close()
        if min(len(v) for v in found.values()) >= each:
            return found
    raise AssertionError(f"too few addresses per worker: {found}")


def allocate_when_given_back(session: Session, within: float = 3.0) -> StunMessage | None:
    """Allocate until a slot another process gave back has reached the parent's book.

    A worker tells the book of a slot it gives back without waiting for an answer
    (turn/workerlink.py), on its own socket, so another worker's take may reach the book
    first and get 486: the slot is free *soon* after the delete is answered, not at once.
    """
    deadline = time.monotonic() + within
    while True:
        answer = session.allocate()
        if code(answer) != 486 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_quotas_hold_across_both_workers_and_the_parent(tmp_path: Path) -> None:
    """turn.user_quota = 3 is three allocations in all, not three per process: alice gets
    three spread over both workers, then 486 on either worker and over TCP (the parent);
    one deleted on worker 1 frees a slot that worker 2 can use. The total quota is global the
    same way."""
    with workers(tmp_path, "turn.user_quota=3", "turn.total_quota=5") as app:
        by_worker = sources_by_worker(app)
        time.sleep(0.2)  # the probes' slots, given back without waiting, reach the book
        order = [by_worker[1][0], by_worker[2][0], by_worker[1][0], by_worker[2][0]]
        sessions = [client(app, source) for source in order]
        answers = [s.allocate() for s in sessions[:3]]
        assert [code(a) for a in answers] == [0, 0, 0]
        assert sorted(process_of(a) for a in answers) == [1, 1, 2]
        assert code(sessions[3].allocate()) == 486  # worker 2 knows of worker 1's two
        stream = Session(StreamConn(app.server), credential())
        assert code(stream.allocate()) == 486  # and so does the parent
        assert code(sessions[0].refresh(0)) == 0  # worker 1 gives one back
        again = allocate_when_given_back(sessions[3])
        assert code(again) == 0
        assert process_of(again) == 2
        bob_sources = (by_worker[1][1], by_worker[2][1], by_worker[2][1])
        bob = [client(app, source, "bob") for source in bob_sources]
        assert [code(b.allocate()) for b in bob] == [0, 0, 486]  # alice 3 + bob 2 of 5
        stream.conn.close()


def test_a_nonce_from_one_process_verifies_in_another(tmp_path: Path) -> None:
    """A NONCE learnt over UDP (from the worker serving 127.0.0.1) authenticates an Allocate
    over TCP (the parent) at the first try: every process shares the nonce key."""
    with workers(tmp_path) as app:
        udp = Session(UdpConn(app.server), credential())
        nonce = udp.challenge()
        assert nonce
        stream = StreamConn(app.server)
        tid = os.urandom(12)
        attributes = [(A.REQUESTED_TRANSPORT, REQUESTED_UDP)]
        stream.send(request(Method.ALLOCATE, tid, attributes, udp.credential, nonce))
        frames = stream.receive(3.0)
        answers = [m for f in frames if (m := decode(f)) is not None and m.transaction_id == tid]
        assert [code(a) for a in answers] == [0]  # no 438: the nonce is good
        assert process_of(answers[0]) == 0
        stream.close()


def test_the_401_rate_limit_is_per_address_across_workers(tmp_path: Path) -> None:
    """turn.unauthorized_rate = 1 (a burst of 2): twelve unauthenticated Allocates from one
    address, each from a port of its own, get at most three 401s in all. Hashed by port, the
    requests would reach both workers and get a burst from each; the reuseport program keeps an
    address on one worker, so its limit is one."""
    with workers(tmp_path, "turn.unauthorized_rate=1") as app:
        conns = [UdpConn(app.server, ("127.0.0.9", 0)) for _ in range(12)]
        try:
            for conn in conns:
                tid = os.urandom(12)
                conn.send(request(Method.ALLOCATE, tid, [(A.REQUESTED_TRANSPORT, REQUESTED_UDP)]))
            # The first answer may take a while on a loaded machine; the rest are there by then.
            answered = sum(1 for i, conn in enumerate(conns) if conn.receive(0.5 if i else 3.0))
        finally:
            for conn in conns:
                conn.close()
        assert 1 <= answered <= 3, answered


def test_a_killed_worker_is_restarted_while_the_other_keeps_relaying(tmp_path: Path) -> None:
    """SIGKILL worker 2 while a client of worker 1 relays through its channel: every echo of
    worker 1's client comes back before, during and after; worker 2 is started again (a new
    pid), its clients' allocations are gone (437 to a Refresh) and their quota slots are
    returned (user_quota = 2 lets the client allocate again), the nonce it learnt from the
    dead worker still verifies in its successor, and /metrics keeps the dead worker's totals."""
    with ExitStack() as stack:
        app = stack.enter_context(workers(tmp_path, "turn.user_quota=2", signal_port=True))
        peer = stack.enter_context(udp_echo())
        by_worker = sources_by_worker(app)
        steady, doomed = client(app, by_worker[1][0]), client(app, by_worker[2][0])
        for session in (steady, doomed):
            assert code(session.allocate()) == 0
            assert code(session.channel_bind(0x4000, peer)) == 0
        echoes: list[bool] = []
        stop = threading.Event()

        def relay() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                echoes.append(steady.echo(0x4000, f"ping {n}".encode(), timeout=2.0))
                time.sleep(0.01)

        thread = threading.Thread(target=relay, daemon=True)
        thread.start()
        # Every allocation so far: the probes that sorted the sources, steady's and doomed's
        # (workers report their counters every second, one-way: wait for them to arrive).
        created = sum(len(sources) for sources in by_worker.values()) + 2
        metric_reaches(app, "turn_allocations_created_total", created)
        old = app.worker_pid(2)
        os.kill(old, signal.SIGKILL)
        new = app.worker_pid(2, not_pid=old)
        time.sleep(0.5)
        stop.set()
        thread.join(timeout=5)
        assert len(echoes) > 20
        assert all(echoes), (echoes.count(False), len(echoes))
        assert new != old
        assert app.running.proc.poll() is None
        tid = os.urandom(12)
        refresh = [(A.LIFETIME, (600).to_bytes(4, "big"))]
        doomed.conn.send(request(Method.REFRESH, tid, refresh, doomed.credential, doomed.nonce))
        answer = [m for f in doomed.conn.receive(3.0) if (m := decode(f)) is not None]
        assert [code(a) for a in answer] == [437]  # no 438: the nonce verified
        again = doomed.allocate()
        assert code(again) == 0
        assert process_of(again) == 2
        assert steady.echo(0x4000, b"after", timeout=2.0)
        # The dead worker's totals are kept: the counter never goes backwards.
        metric_reaches(app, "turn_allocations_created_total", created + 1)


def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    """The TURN secret file is rotated and the parent gets SIGHUP: both workers log the reload,
    credentials of the new secret allocate on both, and those of the old one get 401."""
    secret_file = tmp_path / "turn-secret"
    secret_file.write_text("old-secret\n")
    with workers(tmp_path, "turn.secrets=[]", f"turn.secret_file={secret_file}") as app:
        by_worker = sources_by_worker(app, "old-secret", each=3)
        secret_file.write_text("new-secret\n")
        app.running.proc.send_signal(signal.SIGHUP)
        for index in (1, 2):
            app.running.wait_log(f"event=reloaded what=turn-secrets worker={index}")
        for index in (1, 2):
            fresh = Session(
                UdpConn(app.server, (by_worker[index][1], 0)), credential("n", "new-secret")
            )
            assert code(fresh.allocate()) == 0
            stale = Session(
                UdpConn(app.server, (by_worker[index][2], 0)), credential("o", "old-secret")
            )
            assert code(stale.allocate()) == 401


def metric(app: Appliance, name: str) -> float:
    assert app.signal_port is not None
    connection = http.client.HTTPConnection("127.0.0.1", app.signal_port, timeout=5)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    values = re.findall(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert len(values) == 1, (name, text)  # summed: one sample, not one per process
    return float(values[0])


def metric_reaches(app: Appliance, name: str, value: float, within: float = 10.0) -> None:
    """Wait until ``name`` is ``value`` (the workers' reports come every second, one-way);
    it must never pass it."""
    deadline = time.monotonic() + within
    while (seen := metric(app, name)) != value:
        assert seen < value, (name, seen, value)
        assert time.monotonic() < deadline, (name, seen, value)
        time.sleep(0.1)


def test_metrics_sum_every_process_and_ready_waits_for_every_worker(tmp_path: Path) -> None:
    """``/metrics`` has one ``turn_allocations`` sample, the sum of both workers' and the
    parent's allocations; and the supervisor's ready line (READY=1's moment) comes after
    both workers said they serve."""
    with workers(tmp_path, signal_port=True) as app:
        log = app.running.log_text()
        ready = log.index("event=ready")
        assert log.index("event=worker-started worker=1") < ready
        assert log.index("event=worker-started worker=2") < ready
        by_worker = sources_by_worker(app)
        sessions = [client(app, by_worker[i][0]) for i in (1, 2)]
        stream = Session(StreamConn(app.server), credential())
        for session in (*sessions, stream):
            assert code(session.allocate()) == 0
        deadline = time.monotonic() + 5
        while metric(app, "turn_allocations") != 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # workers report every second
        assert metric(app, "turn_allocations") == 3
        probes = sum(len(found) for found in by_worker.values())
        assert metric(app, "turn_allocations_created_total") == 3 + probes
        stream.conn.close()


def test_no_worker_outlives_a_parent_killed_with_sigkill(tmp_path: Path) -> None:
    """The parent gets SIGKILL (no drain, no cleanup): both workers see their control socket
    close and exit within seconds, so nothing keeps the ports or relays on its own."""
    with workers(tmp_path) as app:
        pids = [app.worker_pid(1), app.worker_pid(2)]
        app.running.proc.kill()
        app.running.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: only its exit status is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_too_few_relay_ports_for_the_workers_is_a_config_error(tmp_path: Path) -> None:
    """Every process needs a slice of the relay ports: too few is a config error naming
    turn.workers (exit status 2), before anything is bound."""
    with run_appliance(
        tmp_path,
        "turn",
        state_dir=tmp_path / "state",
        settings=["turn.workers=4", "turn.relay_port_min=50000", "turn.relay_port_max=50005"],
        env=appliance_env(tmp_path),
        ready_timeout=None,
    ) as running:
        assert running.proc.wait(timeout=20) == 2
        running.stop()
        assert "turn.workers" in running.log_text()


def answer_to(conn: Conn, tid: bytes, timeout: float) -> StunMessage | None:
    """The answer to transaction ``tid`` within ``timeout`` s (other frames are skipped: a
    late answer to a retransmitted challenge, say); None if none came."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for frame in conn.receive(left):
            message = decode(frame)
            if message is not None and message.transaction_id == tid:
                return message
    return None


def failures(app: Appliance, source: str, count: int) -> None:
    """``count`` Allocates as static user carol with a wrong password from ``source``, each
    answered 401 (one failed attempt each)."""
    session = Session(UdpConn(app.server, (source, 0)), Credential("carol", "wrong"))
    nonce = session.challenge()
    assert nonce
    attributes = [(A.REQUESTED_TRANSPORT, REQUESTED_UDP)]
    for _ in range(count):
        tid = os.urandom(12)
        session.conn.send(request(Method.ALLOCATE, tid, attributes, session.credential, nonce))
        assert code(answer_to(session.conn, tid, 2.0)) == 401
    session.conn.close()


def right_password_answered(conn: Conn) -> bool:
    """Whether carol's right password gets any answer at all (a backing-off user's requests
    are dropped unevaluated)."""
    session = Session(conn, Credential("carol", "right-password"))
    nonce = session.challenge()
    assert nonce
    tid = os.urandom(12)
    attributes = [(A.REQUESTED_TRANSPORT, REQUESTED_UDP)]
    conn.send(request(Method.ALLOCATE, tid, attributes, session.credential, nonce))
    answered = answer_to(conn, tid, 0.5) is not None
    conn.close()
    return answered


def backoffs_logged(app: Appliance, count: int, within: float = 5.0) -> float:
    """Wait until the parent has logged carol's ``count``-th backoff, which it does after
    sending it to every worker (a worker reports a failure one-way, so the other worker learns
    of the backoff a moment after the 401 was sent: on a loaded machine, after the next
    request of the test); the seconds that backoff lasts."""
    deadline = time.monotonic() + within
    while True:
        lines = [
            line
            for line in app.running.log_text().splitlines()
            if "event=user-backoff" in line and "user=carol" in line
        ]
        if len(lines) >= count:
            return float(lines[count - 1].split("seconds=", 1)[1].split(" ", 1)[0])
        assert time.monotonic() < deadline, app.log_tail()
        time.sleep(0.02)


def test_a_static_user_s_failures_count_once_across_the_workers(tmp_path: Path) -> None:
    """A static user backs off after 20 failures from any address, 1 s, then 2 s, 4 s... for
    each further failure (docs/security.md). Spread over both workers' addresses (4 per
    address: the per-address backoff starts after 5) they are counted once, by the parent:
    23 failures, of which neither worker saw 20, put carol in a 4 s backoff, during which her
    right password gets no answer on either worker, nor over TCP."""
    with workers(tmp_path, 'turn.users=["carol:right-password"]') as app:
        one, two = sources_by_worker(app, each=5).values()
        for source in (*one[:3], *two[:2]):
            failures(app, source, 4)  # 20: worker 1 saw 12, worker 2 saw 8
        failures(app, two[2], 1)  # the 21st, on worker 2: a 1 s backoff everywhere
        assert backoffs_logged(app, 1) == 1.0
        time.sleep(1.2)
        failures(app, one[3], 1)  # the 22nd, on worker 1 once the backoff is over: 2 s
        assert backoffs_logged(app, 2) == 2.0
        time.sleep(2.2)
        failures(app, two[3], 1)  # the 23rd (worker 1 saw 13, worker 2 10): 4 s
        assert backoffs_logged(app, 3) == 4.0
        assert not right_password_answered(UdpConn(app.server, (one[4], 0)))
        assert not right_password_answered(UdpConn(app.server, (two[4], 0)))
        assert not right_password_answered(StreamConn(app.server))
