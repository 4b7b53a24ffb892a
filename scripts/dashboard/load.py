"""The demo's load, each loop in a thread of its own (:func:`load`): STUN Bindings, calls
through the relay (aioice), turnutils_uclient runs and a Redis outage here; the odd TURN
clients are in :mod:`.oddclients`, the signaling peers in :mod:`.signaling`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aioice

from secureconnect.launcher import stop_process
from secureconnect.stun import MessageClass, Method, encode_message, new_transaction_id

from .oddclients import odd_clients
from .run import STEP, USERS, Run, log
from .services import Lab, mint, start_redis
from .signaling import signaling_load
from .turnclient import udp_echo

HEAVY = ("video-gw", "recorder", "sfu-1")  # turnutils_uclient's users


# -- load: STUN --------------------------------------------------------------------------------


def stun_load(run: Run, port: int) -> None:
    """Bindings at 5-30/s (a slow wave), junk every 10 s, one TCP Binding every 20 s."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        last_junk = last_tcp = 0.0
        while run.running() and sent < 50_000:
            now = run.elapsed()
            rate = 17.5 + 12.5 * math.sin(now / 45)
            request = encode_message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(), ())
            with contextlib.suppress(OSError):
                sock.sendto(request, ("127.0.0.1", port))
                sent += 1
            with contextlib.suppress(OSError):
                while sock.recv(2048):
                    pass
            if now - last_junk > 10:
                last_junk = now
                with contextlib.suppress(OSError):
                    sock.sendto(b"GET / HTTP/1.0\r\n\r\n", ("127.0.0.1", port))
            if now - last_tcp > 20:
                last_tcp = now
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=2) as tcp,
                ):
                    tcp.sendall(request)
                    tcp.recv(2048)
                    run.sleep(min(3.0, run.left()))  # an open STUN TCP connection for a while
            run.sleep(1 / rate)
    log(f"stun: {sent} Binding requests")


# -- load: calls through the relay (aioice) ----------------------------------------------------


async def call(
    turn: tuple[str, int],
    ends: tuple[tuple[str, str], tuple[str, str]],
    transport: str,
    seconds: float,
    size: int,
) -> int:
    """Two relay-only ICE agents, connected through the TURN server, exchanging ~40 packets/s
    each way for ``seconds``; the number of packets relayed."""
    agents = [
        aioice.Connection(
            ice_controlling=index == 0,
            turn_server=turn,
            turn_username=username,
            turn_password=password,
            turn_transport=transport,
            use_ipv6=False,
            transport_policy=aioice.TransportPolicy.RELAY,
        )
        for index, (username, password) in enumerate(ends)
    ]
    a, b = agents
    try:
        async with asyncio.timeout(STEP * 2):
            await asyncio.gather(a.gather_candidates(), b.gather_candidates())
            for mine, theirs in ((a, b), (b, a)):
                for candidate in theirs.local_candidates:
                    await mine.add_remote_candidate(candidate)
                await mine.add_remote_candidate(None)
                mine.remote_username = theirs.local_username
                mine.remote_password = theirs.local_password
            await asyncio.gather(a.connect(), b.connect())
        count = 0
        deadline = time.monotonic() + seconds
        payload = os.urandom(size)
        while time.monotonic() < deadline and count < 100_000:
            await a.send(payload)
            await b.send(payload[: size // 2])
            async with asyncio.timeout(STEP):
                await b.recv()
                await a.recv()
            count += 2
            await asyncio.sleep(0.025)
        return count
    finally:
        for agent in agents:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STEP):
                    await agent.close()


def calls_load(run: Run, turn_port: int, credentials: dict[str, tuple[str, str]]) -> None:
    async def main() -> None:
        rng = random.Random(17)
        weights = [10, 8, 6, 5, 4, 3, 2, 1.5, 1, 0.5]  # a few heavy callers, a long tail
        tasks: set[asyncio.Task[int]] = set()
        started = relayed = failed = 0
        while run.running() and started < 60:
            for task in [t for t in tasks if t.done()]:
                if task.exception() is None:
                    relayed += task.result()
                else:
                    failed += 1
                    log(f"calls: one failed: {task.exception()!r}")
            tasks = {t for t in tasks if not t.done()}
            if len(tasks) < 4:
                one, two = rng.choices(USERS, weights=weights, k=2)
                transport = "tcp" if rng.random() < 0.25 else "udp"
                seconds = min(rng.uniform(10, 60), max(5.0, run.left() - 5))
                task = asyncio.create_task(
                    call(
                        ("127.0.0.1", turn_port),
                        (credentials[one], credentials[two]),
                        transport,
                        seconds,
                        rng.choice((200, 400, 800, 1000)),
                    )
                )
                tasks.add(task)
                started += 1
            await asyncio.sleep(rng.uniform(3, 12))
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, int):
                relayed += result
            else:
                failed += 1
        log(f"calls: {started} started, {failed} failed, {relayed} packets relayed")

    asyncio.run(main())


# -- load: turnutils_uclient -------------------------------------------------------------------


def uclient_load(run: Run, workdir: Path, turn_port: int, state: Path) -> None:
    binary = shutil.which("turnutils_uclient")
    if binary is None:
        log("uclient: turnutils_uclient missing (apt-get install coturn): skipped")
        return
    with udp_echo() as peer:
        for fraction, user, size in (
            (0.12, HEAVY[0], 1000),
            (0.42, HEAVY[1], 600),
            (0.7, HEAVY[2], 1200),
        ):
            if not run.until(fraction):
                return
            username, password = mint(state, user)
            argv = [binary, "-c", "-m", "3", "-n", "1200", "-l", str(size)]
            argv += ["-e", peer[0], "-r", str(peer[1]), "-u", username, "-w", password]
            argv += ["-p", str(turn_port), "127.0.0.1"]
            log(f"uclient: {user}, 3 flows x 1200 packets of {size} B")
            with (workdir / f"uclient-{user}.log").open("wb") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
                try:
                    proc.wait(timeout=min(90.0, max(5.0, run.left())))
                except subprocess.TimeoutExpired:
                    log(f"uclient: {user} cut at the end of its time")
                finally:
                    stop_process(proc, timeout=5)


# -- load: a Redis outage ----------------------------------------------------------------------


def redis_outage(
    run: Run, holder: dict[str, subprocess.Popen[bytes]], workdir: Path, port: int
) -> None:
    if not run.until(0.6):
        return
    log("redis: stopped for 12 s")
    stop_process(holder["redis"], timeout=5)
    run.sleep(12)
    holder["redis"] = start_redis(workdir, port)
    log("redis: started again")


# -- every loop at once ------------------------------------------------------------------------


def load(lab: Lab, workdir: Path, duration: float) -> Run:
    """Every load loop in its thread, until the run's time is over (or Ctrl-C / SIGTERM)."""
    credentials = {user: mint(lab.state, user) for user in USERS}
    run = Run(duration)
    turn = lab.ports.turn
    threads = [
        run.guarded("stun", lambda: stun_load(run, lab.stun_port)),
        run.guarded("calls", lambda: calls_load(run, turn, credentials)),
        run.guarded("uclient", lambda: uclient_load(run, workdir, turn, lab.state)),
        run.guarded("odd", lambda: odd_clients(run, turn, lab.state)),
        run.guarded("signaling", lambda: signaling_load(run, lab.ports.wss)),
    ]
    if lab.redis:
        outage = lambda: redis_outage(run, lab.redis, workdir, lab.redis_port)  # noqa: E731
        threads.append(run.guarded("redis", outage))
    next_report = 30.0
    try:
        while any(t.is_alive() for t in threads) and run.elapsed() < duration + 60:
            time.sleep(1)
            status = lab.app.proc.poll()
            if status is not None:  # it died: say so (the picture would show it as DOWN)
                run.errors.append(f"the appliance exited with status {status}")
                log(f"the appliance exited with status {status}: stopping the load")
                break
            if run.elapsed() >= next_report:
                next_report += 30
                log(f"{run.elapsed():.0f} s of {duration:.0f}")
    except KeyboardInterrupt:
        log("interrupted: stopping the load")
    run.stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return run
