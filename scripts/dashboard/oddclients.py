"""The demo's odd TURN clients: allocations left to expire, a user over its quota, a
CreatePermission to a private address, and failed logins (wrong passwords, a burst of them,
expired REST credentials, a wrong realm) from other loopback addresses."""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

from secureconnect.stun import Method

from .run import USERS, Run, log
from .turnclient import (
    REQUESTED_UDP,
    A,
    Credential,
    Session,
    UdpConn,
    error_code,
    peer_attribute,
)


def allocate(credential: Credential, port: int, bind: str = "127.0.0.1") -> tuple[Session, int]:
    """An Allocate from ``bind``: the session and 0, the error code, or -1 without an answer."""
    session = Session(UdpConn(("127.0.0.1", port), (bind, 0)), credential)
    answer = session.allocate()
    return session, -1 if answer is None else error_code(answer)


def once(credential: Credential, port: int, bind: str) -> None:
    """One Allocate with ``credential`` from ``bind`` (a failed login, when it is wrong)."""
    allocate(credential, port, bind)[0].conn.close()


def wrong_realm(secret: str, port: int) -> None:
    """A client configured with another realm: learns the nonce, keeps its own realm."""
    credential = Credential.rest(secret, "legacy", realm="example.org")
    session = Session(UdpConn(("127.0.0.1", port), ("127.0.0.3", 0)), credential)
    session.challenge()
    session.credential = credential  # challenge() took the server's realm: put ours back
    session.transact(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, REQUESTED_UDP)])
    session.conn.close()


def denied_peer(secret: str, port: int) -> None:
    """403 on CreatePermission to a private address (nothing is sent there)."""
    session, code = allocate(Credential.rest(secret, "scanner"), port)
    if code == 0:
        session.transact(Method.CREATE_PERMISSION, [peer_attribute(("10.1.2.3", 9), bytes(12))])
        session.refresh(0)
    session.conn.close()


def odd_clients(run: Run, turn_port: int, state: Path) -> None:
    """Every 5 s, some of: abandoned allocations, a denied peer, failed logins; once, a user
    over its quota (at 25 %) and a burst of wrong passwords (at 55 %)."""
    secret = (state / "turn-secret").read_text().split()[0]
    rng = random.Random(5)
    once_at = {"greedy": 0.25, "burst": 0.55}
    for tick in range(1, 400):
        if not run.running():
            return
        if tick % 8 == 1:  # every ~40 s: two allocations nobody refreshes (expired after 30 s)
            for _ in range(2):
                once(Credential.rest(secret, "probe"), turn_port, "127.0.0.1")
        if tick % 9 == 4:
            denied_peer(secret, turn_port)
        if tick % 3 == 0:  # a mistyped password, from another loopback address
            user = rng.choice(USERS)
            once(Credential(f"{int(time.time()) + 600}:{user}", "typo"), turn_port, "127.0.0.3")
        if tick % 6 == 2:  # a REST credential that expired an hour ago
            once(Credential.rest(secret, "laptop", ttl=-3600), turn_port, "127.0.0.3")
        if tick == 30:
            wrong_realm(secret, turn_port)
        for name, fraction in list(once_at.items()):
            if run.running() and run.elapsed() >= fraction * run.duration:
                del once_at[name]
                if name == "greedy":
                    greedy(run, turn_port, secret)
                else:
                    burst(turn_port)
        run.sleep(5)


def greedy(run: Run, port: int, secret: str) -> None:
    """One user asks for 8 allocations with turn.user_quota = 6: two 486s; freed 20 s later."""
    held: list[Session] = []
    codes = []
    for _ in range(8):
        session, code = allocate(Credential.rest(secret, "mallory"), port)
        codes.append(code)
        held.append(session)
    log(f"quota: mallory's 8 allocations answered {codes}")
    run.sleep(20)
    for session in held:
        with contextlib.suppress(OSError):
            session.refresh(0)
        session.conn.close()


def burst(port: int) -> None:
    """60 wrong passwords in ~3 s from 127.0.0.2: 401s, then drops (rate limit, back-off)."""
    sent = 0
    for index in range(60):
        bad = Credential(f"{int(time.time()) + 600}:guess{index % 3}", f"guess-{index}")
        session = Session(UdpConn(("127.0.0.1", port), ("127.0.0.2", 0)), bad)
        session.nonce = session.challenge(timeout=0.3)
        if session.nonce:
            session.transact(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, REQUESTED_UDP)], 0.3)
        session.conn.close()
        sent += 1
    log(f"auth burst: {sent} wrong passwords from 127.0.0.2")
