"""The supervisor's life cycle on trio's MockClock: startup, restart with backoff, drain, reload."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from secureconnect.supervisor import StartupError, Supervisor


class Probe:
    """A minimal component whose behaviour each test scripts."""

    def __init__(
        self, name: str, *, fail_at_start: bool = False, crashes: int = 0, drains: bool = True
    ) -> None:
        self.name = name
        self.fail_at_start = fail_at_start
        self.crashes = crashes
        self.drains = drains
        self.starts = 0
        self.reloads = 0
        self.crash_now = trio.Event()
        self._drain = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        if self.fail_at_start:
            raise OSError(98, "cannot bind udp 127.0.0.1:3478: Address already in use")
        task_status.started()
        if self.crashes:
            await self.crash_now.wait()
            self.crashes -= 1
            self.crash_now = trio.Event()
            raise RuntimeError("boom")
        if self.drains:
            await self._drain.wait()
        else:
            await trio.sleep_forever()

    def begin_drain(self) -> None:
        self._drain.set()

    def reload(self) -> None:
        self.reloads += 1


async def test_ready_only_after_every_component_started() -> None:
    a, b = Probe("a"), Probe("b")
    supervisor = Supervisor([a, b])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        assert (a.starts, b.starts) == (1, 1)
        assert supervisor.state == {"a": "running", "b": "running"}
        supervisor.request_shutdown()
    assert supervisor.state == {"a": "stopped", "b": "stopped"}


async def test_failure_to_start_is_fatal_and_names_the_component() -> None:
    supervisor = Supervisor([Probe("stun"), Probe("turn", fail_at_start=True)])
    with pytest.RaisesGroup(
        pytest.RaisesExc(StartupError, match="turn: cannot bind udp"), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
    assert supervisor.state["turn"] == "failed"


async def test_crash_restarts_with_backoff_and_spares_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashy, steady = Probe("crashy", crashes=2), Probe("steady")
    supervisor = Supervisor([crashy, steady], backoff=(1.0, 8.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        t0 = trio.current_time()
        crashy.crash_now.set()
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.state["crashy"] == "restarting"
        await trio.sleep(1.01)
        assert crashy.starts == 2
        crashy.crash_now.set()
        await trio.sleep(2.01)  # the second restart waits twice as long
        assert crashy.starts == 3
        assert trio.current_time() - t0 >= 3.0
        assert supervisor.restarts == {"crashy": 2, "steady": 0}
        assert steady.starts == 1
        assert supervisor.state["steady"] == "running"
        supervisor.request_shutdown()


async def test_drain_deadline_cancels_what_does_not_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stuck = Probe("stuck", drains=False)
    supervisor = Supervisor([stuck, Probe("polite")], drain_timeout=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        t0 = trio.current_time()
        supervisor.request_shutdown()
    assert 3.0 <= trio.current_time() - t0 < 3.1


async def test_second_shutdown_request_skips_the_drain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor([Probe("stuck", drains=False)], drain_timeout=30.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        t0 = trio.current_time()
        supervisor.request_shutdown()
        await trio.sleep(1)
        supervisor.request_shutdown()
    assert trio.current_time() - t0 < 2


class Lingering(Probe):
    """A component that serves on after its drain (signaling: /healthz must keep answering)
    and says when its own part of the drain is done."""

    lingers = True

    def __init__(self, name: str) -> None:
        super().__init__(name, drains=False)
        self.drained = trio.Event()

    def begin_drain(self) -> None:
        self.drained.set()


async def test_graceful_drain_waits_for_calls_then_cancels_the_lingering(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """request_drain (SIGUSR2): every state says draining, the drain waits up to
    drain_deadline (not drain_timeout) for the components that finish on their own, and the
    lingering one is cancelled once they have."""
    turn = Probe("turn", drains=False)  # its calls go on
    signal = Lingering("signal")
    supervisor = Supervisor([turn, signal], drain_timeout=1.0, drain_deadline=50.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        t0 = trio.current_time()
        supervisor.request_drain()
        await trio.sleep(10)
        assert supervisor.state == {"turn": "draining", "signal": "draining"}
        supervisor.request_drain()  # a second request changes nothing
        await trio.sleep(10)
        assert supervisor.state["turn"] == "draining"
    assert 50.0 <= trio.current_time() - t0 < 50.1  # the deadline, not drain_timeout
    assert supervisor.state == {"turn": "stopped", "signal": "stopped"}


async def test_drain_ends_when_the_last_non_lingering_component_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    polite, signal = Probe("turn"), Lingering("signal")
    supervisor = Supervisor([polite, signal], drain_deadline=50.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        t0 = trio.current_time()
        supervisor.request_drain()
    assert trio.current_time() - t0 < 1
    only_lingering = Supervisor([Lingering("signal")], drain_deadline=50.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(only_lingering.run)
        t0 = trio.current_time()
        only_lingering.request_shutdown()
    assert trio.current_time() - t0 < 1


async def test_shutdown_during_a_graceful_drain_stops_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor([Probe("turn", drains=False)], drain_deadline=600.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        t0 = trio.current_time()
        supervisor.request_drain()
        await trio.sleep(5)
        supervisor.request_shutdown()
    assert trio.current_time() - t0 < 6


async def test_reload_runs_hooks_and_survives_a_failing_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def bad() -> None:
        raise ValueError("key does not match certificate")

    component = Probe("stun")
    supervisor = Supervisor(
        [component], reload_hooks=[("tls", bad), ("turn-secrets", lambda: calls.append("secrets"))]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        supervisor.reload()
        supervisor.request_shutdown()
    assert calls == ["secrets"]
    assert component.reloads == 1
    failures = [r.sc_fields for r in caplog.records if r.getMessage() == "reload-failed"]  # type: ignore[attr-defined]
    assert failures == [{"what": "tls", "error": "key does not match certificate"}]
