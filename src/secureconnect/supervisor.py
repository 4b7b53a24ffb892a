"""The trio supervisor: starts components, keeps them running, drains and reloads them.

Theory of operation
-------------------
Every component is started with ``nursery.start()``, so the supervisor is *ready* only when every
component is listening. A component that fails before it calls ``task_status.started()`` (it could
not bind, say) is fatal: the supervisor raises :class:`StartupError` and nothing keeps running
half-configured. A component that crashes after it started is logged and restarted with
exponential backoff; the other components are not disturbed, since each runs in its own nursery.

Shutdown is two-phase: :meth:`Supervisor.request_shutdown` (SIGINT/SIGTERM) asks every component to
stop accepting (``begin_drain``) and waits up to ``drain_timeout`` seconds for them to finish on
their own, then cancels whatever is left. A second signal during the drain cancels at once.
:meth:`Supervisor.request_drain` (SIGUSR2, ``secureconnect drain``) is the graceful drain of a
rolling upgrade: the same steps, with each component's state ``draining`` (``/healthz`` says so),
and ``drain_deadline`` seconds for calls in progress to end; the process then exits 0. A
component that *lingers* (signaling: its ``/healthz`` must keep answering) is not waited for to
return, only for its ``drained`` event; it is cancelled with the rest at the end.
:meth:`Supervisor.reload` (SIGHUP) runs the reload hooks (TLS certificates, TURN secrets) and then
each component's ``reload``; a failing hook is logged and keeps the old state.

Components share state only through objects passed to them when they are built (the certificate
store, the credential minter); the supervisor holds no globals.

Under systemd (``Type=notify``) the supervisor reports each of these steps through its
:class:`~secureconnect.sdnotify.Notifier`: ``READY=1`` once every ``nursery.start()`` has returned
(so every port is bound), ``RELOADING=1`` then ``READY=1`` around a reload, ``STOPPING=1`` when
the drain begins, ``STATUS=`` lines naming what runs, and ``WATCHDOG=1`` at the interval systemd
asked for, from a task in the same trio loop (a wedged loop stops the pings and gets restarted).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from secureconnect.logs import fields
from secureconnect.sdnotify import Notifier

log = logging.getLogger("secureconnect.supervisor")

STABLE_SECONDS = 60.0  # a component that ran this long before crashing restarts without delay


class Component(Protocol):
    """What the supervisor runs. ``serve`` binds, calls ``task_status.started()``, then serves
    until cancelled or until a drain completes (then it returns)."""

    name: str

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report started, serve."""

    def begin_drain(self) -> None:
        """Stop accepting new work; ``serve`` returns once in-flight work is done (a component
        with ``lingers = True`` sets its ``drained`` event instead and serves on)."""

    def reload(self) -> None:
        """Pick up reloadable state (called after the supervisor's reload hooks)."""


class StartupError(Exception):
    """A component could not start (typically: a port could not be bound)."""

    def __init__(self, component: str, cause: BaseException) -> None:
        self.component = component
        super().__init__(f"{component}: {describe(cause)}")


def describe(exc: BaseException) -> str:
    """A one-line description, looking through single-exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, OSError) and exc.strerror and exc.filename is None:
        return exc.strerror  # our BindError carries "cannot bind udp ADDR: reason" here
    return str(exc) or type(exc).__name__


class Supervisor:
    """Runs ``components`` in one nursery; see the module docstring for the life cycle."""

    def __init__(
        self,
        components: Sequence[Component],
        *,
        drain_timeout: float = 3.0,
        drain_deadline: float = 600.0,
        reload_hooks: Sequence[tuple[str, Callable[[], None]]] = (),
        backoff: tuple[float, float] = (0.5, 30.0),
        notifier: Notifier | None = None,
    ) -> None:
        self.components = list(components)
        self.drain_timeout = drain_timeout
        self.drain_deadline = drain_deadline
        self.graceful = False  # the drain in progress is request_drain's
        self.reload_hooks = list(reload_hooks)
        self.backoff = backoff
        self.notifier = notifier or Notifier(None)
        self.restarts: dict[str, int] = {c.name: 0 for c in self.components}
        self.state: dict[str, str] = {c.name: "starting" for c in self.components}
        self._shutdown = trio.Event()
        self._draining = False
        self._running = 0
        self._all_stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every component, report ready, and run until shut down."""
        async with trio.open_nursery() as nursery:
            if self.notifier.watchdog_interval:
                nursery.start_soon(self._ping_watchdog, self.notifier.watchdog_interval)
            for component in self.components:
                self.notifier.status(f"starting {component.name}")
                await nursery.start(self._keep_running, component)
            log.info("ready", extra=fields(components=",".join(self.state)))
            self.notifier.ready(self.summary())
            task_status.started()
            await self._shutdown.wait()
            self.notifier.stopping("draining connections")
            for component in self.components:
                if self.graceful:
                    self.state[component.name] = "draining"
                component.begin_drain()
            if self._running == 0:  # only lingering components
                self._all_stopped.set()
            seconds = self.drain_deadline if self.graceful else self.drain_timeout
            with trio.move_on_after(seconds) as deadline:
                await self._all_stopped.wait()
                for component in self.components:
                    drained = getattr(component, "drained", None)
                    if getattr(component, "lingers", False) and drained is not None:
                        await drained.wait()
            if deadline.cancelled_caught:
                log.warning("drain-timeout", extra=fields(seconds=seconds))
            nursery.cancel_scope.cancel()
        log.info("stopped")

    def request_shutdown(self) -> None:
        """Begin the drain; a second call (or one during a graceful drain) cancels the drain
        and stops at once."""
        if self._draining:
            self.drain_timeout = self.drain_deadline = 0
            self._all_stopped.set()
        self._draining = True
        self._shutdown.set()

    def request_drain(self) -> None:
        """Begin the graceful drain (a second request changes nothing)."""
        if self._draining:
            return
        self.graceful = True
        self._draining = True
        self._shutdown.set()

    def summary(self) -> str:
        """The one-line state for ``systemctl status``: running components, then the others."""
        running = [name for name, state in self.state.items() if state == "running"]
        others = [f"{name} {state}" for name, state in self.state.items() if state != "running"]
        return "; ".join([f"serving {', '.join(running) or 'nothing'}", *others])

    def reload(self) -> None:
        """Run the reload hooks and each component's ``reload``; failures keep the old state."""
        self.notifier.reloading("reloading certificates and secrets")
        failed: list[str] = []
        for name, hook in self.reload_hooks:
            try:
                hook()
            except Exception as exc:  # a bad new certificate must not take the server down
                failed.append(name)
                log.error("reload-failed", extra=fields(what=name, error=describe(exc)))
            else:
                log.info("reloaded", extra=fields(what=name))
        for component in self.components:
            try:
                component.reload()
            except Exception as exc:
                failed.append(component.name)
                log.error("reload-failed", extra=fields(what=component.name, error=describe(exc)))
        problem = f"; reload failed ({', '.join(failed)}), old state kept" if failed else ""
        self.notifier.ready(self.summary() + problem)

    async def serve_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Map SIGINT/SIGTERM to shutdown, SIGUSR2 to the graceful drain and SIGHUP to reload
        (main thread only)."""
        watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2)
        with trio.open_signal_receiver(*watched) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("signal", extra=fields(signal="SIGHUP", action="reload"))
                    self.reload()
                elif signum == signal.SIGUSR2:
                    log.info("signal", extra=fields(signal="SIGUSR2", action="drain"))
                    self.request_drain()
                else:
                    name = signal.Signals(signum).name
                    log.info("signal", extra=fields(signal=name, action="shutdown"))
                    self.request_shutdown()

    async def _keep_running(
        self, component: Component, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run one component; fatal before it started, restarted with backoff after."""
        started = False
        delay = self.backoff[0]
        lingers = bool(getattr(component, "lingers", False))
        self._running += not lingers
        try:
            while True:
                began = trio.current_time()
                try:
                    async with trio.open_nursery() as inner:
                        await inner.start(component.serve)
                        self.state[component.name] = "running"
                        if not started:
                            started = True
                            task_status.started()
                        else:
                            self.notifier.status(self.summary())
                except Exception as exc:
                    if not started:
                        self.state[component.name] = "failed"
                        raise StartupError(component.name, exc) from exc
                    if self._draining:
                        return
                    self.restarts[component.name] += 1
                    self.state[component.name] = "restarting"
                    if trio.current_time() - began >= STABLE_SECONDS:
                        delay = self.backoff[0]
                    log.error(
                        "component-crashed",
                        exc_info=exc,
                        extra=fields(component=component.name, restart_in=delay),
                    )
                    self.notifier.status(self.summary())
                    await trio.sleep(delay)
                    delay = min(delay * 2, self.backoff[1])
                    continue
                if self._draining:
                    return
                # serve() returned without a drain: treat like a crash, but it is not an error.
                log.warning("component-exited", extra=fields(component=component.name))
                await trio.sleep(delay)
        finally:
            self.state[component.name] = "stopped" if started else self.state[component.name]
            self._running -= not lingers
            if self._running == 0:
                self._all_stopped.set()

    async def _ping_watchdog(self, interval: float) -> None:
        """``WATCHDOG=1`` every ``interval`` seconds for as long as the trio loop is healthy."""
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)
