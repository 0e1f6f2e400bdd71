"""The :class:`Cluster` object a notebook or ``labkit serve`` holds; see :mod:`labkit.cluster`."""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
from collections.abc import Callable
from typing import Any
from functools import partial

from ._arbiter import Arbiter, ArbiterConfig
from ._balance import BALANCE_MODES, check_balance
from ._by_value import factory_name, pickled_app
from ._state import (
    ClusterEvent,
    ClusterStats,
    RestartPolicy,
    WorkerState,
    WorkerStats,
    diagnose,
)
from ._worker import WORKER_ID_ENV
from .._exits import RemoteTraceback
from ..cores import check_start_method, resolve_workers
from ..errors import ConfigurationError, ServerStartError

__all__ = [
    "Cluster",
    "WorkerState",
    "WorkerStats",
    "ClusterStats",
    "ClusterEvent",
    "RestartPolicy",
    "diagnose",
    "resolve_workers",
    "BALANCE_MODES",
    "WORKER_ID_ENV",
]

# ---------------------------------------------------------------------------------- tunables
# Every number below trades one good thing for another; the comment says which.

# First restart comes this soon after a crash. Small, so a one-off crash costs little capacity;
# not zero, so a worker that dies instantly cannot make the primary fork in a tight loop.
RESTART_DELAY = 0.1

# Each further restart in a row waits this many times longer. 2 (the classic) reaches the cap in
# a handful of crashes and then leaves a slot empty for long after a brief outage; 1.5 backs off
# more gently, so a flapping dependency is retried often while it recovers.
BACKOFF_FACTOR = 1.5

# The longest wait between restarts. Longer spares the machine from a hopeless worker; shorter
# brings the capacity back sooner once the cause is fixed.
MAX_RESTART_DELAY = 10.0

# A worker up this long has proved itself: its next crash is bad luck again and waits only
# RESTART_DELAY. Shorter forgives a flapping worker too soon; longer punishes a healthy one.
STABLE_UPTIME = 30.0

# Dying within this many seconds of starting counts as "crashing at boot" for the crash-loop
# guard (PM2's min_uptime). Too short and a slow-to-crash app loops forever; too long and a
# genuine runtime crash soon after start is mistaken for a broken app.
MIN_UPTIME = 1.0

# A worker that crashes at boot more than this many times in a row is marked errored and left
# alone: the app is broken, and restarting it forever only burns CPU and hides the error.
MAX_RESTARTS = 5

# How often a worker's event loop tells the primary it is alive (and how many requests it has
# served). More often: fresher stats and faster hang detection, but more wake-ups for everyone.
HEARTBEAT_INTERVAL = 1.0

# A worker silent for this long is hung (its loop blocked by a long synchronous computation, a
# deadlock, ...) and is killed and replaced. gunicorn's default; shorter also kills workers that
# are merely busy with a legitimately long synchronous request.
HEARTBEAT_TIMEOUT = 30.0

# How long a stopping worker may take to finish its in-flight requests before it is killed. Long
# enough for slow requests; short enough that a reload or Ctrl-C does not seem to hang.
GRACEFUL_TIMEOUT = 10.0

# Extra time after GRACEFUL_TIMEOUT before the primary kills a worker that has not exited (it
# may be writing its last responses).
KILL_MARGIN = 2.0

# How long a worker may take to import, build its app and listen. Spawned workers import
# tornado and numpy afresh: well under a second on a laptop, several on a loaded CI machine.
STARTUP_TIMEOUT = 60.0

# A draining worker exits once no request is in flight and none has started for this long. Its
# last responses say "Connection: close", so clients move on; the pause lets a request already
# on its way over a kept-alive connection arrive and be served instead of cut off.
DRAIN_QUIET = 0.3

# Longest the supervisor sleeps with nothing due. It wakes earlier for any deadline or message;
# this only bounds how stale a missed deadline could get. Once a second costs nothing.
SUPERVISOR_MAX_WAIT = 1.0

# Connections the kernel queues for accept() before refusing more. Deep enough for a burst of a
# load test's connections; a deeper queue turns overload into latency instead of refusals.
BACKLOG = 1024


class Cluster:
    """Run a tornado app in N worker processes that share one port, and keep them running.

    Think of a call centre. The phone number is the port; the operators are the workers, each
    with their own desk (process), headset (event loop) and notes (memory). The supervisor
    watches the floor: an operator who faints is replaced after a short pause, one who faints
    every time they sit down is sent home and reported, one who stops answering for too long is
    relieved. ``balance`` is how calls are routed: by the phone system (``"os"``), by a hash
    per line (``"reuseport"``), or by a receptionist handing each call to the next operator
    (``"round-robin"``).

    Use it as a context manager; the block starts once every worker listens, and everything
    stops when it ends (also on error or Ctrl-C)::

        with Cluster("labkit.demo:demo_app", workers="max") as cluster:
            report = run_load(cluster.url + "/fast", duration=3)
            print(cluster.stats())

    Supervision runs in a background thread, so the notebook's own event loop stays free.

    Args:
        app: import string ``"module:factory"`` of a tornado app factory, or the factory itself.
            A factory object (say, a function defined in a notebook) travels to the workers by
            value with cloudpickle, so a spawned worker can rebuild it without importing the
            notebook; an import string is what ``labkit serve`` and scripts use.
        workers: ``"max"`` (one per usable core), ``-1`` (all but one) or a positive count.
        balance: ``"os"``, ``"reuseport"`` or ``"round-robin"`` (see the module docstring).
        host: address to bind; 127.0.0.1 keeps the cluster private to this machine.
        port: 0 lets the system pick a free port (see :attr:`url`).
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"``; ``None`` means ``$LABKIT_START_METHOD``
            if set, else ``"forkserver"`` where the platform has it, else ``"spawn"`` (see
            :func:`labkit.cores.check_start_method`).
        min_uptime, max_restarts: the crash-loop guard (see :data:`MIN_UPTIME`, :data:`MAX_RESTARTS`).
        restart_delay, max_restart_delay, backoff_factor, stable_uptime: restart backoff.
        heartbeat_timeout: replace a worker whose loop is silent this long.
        graceful_timeout: how long stopping workers may finish in-flight requests.
        startup_timeout: how long a worker may take to get ready.
        options: keyword arguments for the app factory (picklable values).
        on_change: called with each :class:`ClusterEvent`, from the supervisor thread; keep it
            quick (append to a list, update a widget).
    """

    def __init__(
        self,
        app: str | Callable[..., Any],
        workers: int | str = "max",
        balance: str = "os",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_method: str | None = None,
        min_uptime: float = MIN_UPTIME,
        max_restarts: int = MAX_RESTARTS,
        restart_delay: float = RESTART_DELAY,
        max_restart_delay: float = MAX_RESTART_DELAY,
        backoff_factor: float = BACKOFF_FACTOR,
        stable_uptime: float = STABLE_UPTIME,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        graceful_timeout: float = GRACEFUL_TIMEOUT,
        startup_timeout: float = STARTUP_TIMEOUT,
        options: dict | None = None,
        on_change: Callable[[ClusterEvent], None] | None = None,
    ) -> None:
        options = dict(options or {})
        app_name = app
        if callable(app) and not isinstance(app, str):
            app_name = factory_name(app)
            app, options = pickled_app(app, options)
        if not isinstance(app, str):
            raise ConfigurationError(f"app must be 'module:factory' or a factory function; got {type(app).__name__}")
        module, sep, attr = app.partition(":")
        if not (module and sep and attr):
            raise ConfigurationError(f"app must look like 'module:factory' (say 'labkit.demo:demo_app'); got {app!r}")
        check_balance(balance)
        start_method = check_start_method(start_method)  # explicit, else $LABKIT_START_METHOD, else safe
        for name, value in (("min_uptime", min_uptime), ("restart_delay", restart_delay),
                            ("heartbeat_timeout", heartbeat_timeout), ("graceful_timeout", graceful_timeout),
                            ("startup_timeout", startup_timeout), ("max_restart_delay", max_restart_delay)):
            if value < 0:
                raise ConfigurationError(f"{name} must be non-negative; got {value}")
        if max_restarts < 0:
            raise ConfigurationError(f"max_restarts must be non-negative; got {max_restarts}")
        if backoff_factor < 1:
            raise ConfigurationError(f"backoff_factor must be at least 1; got {backoff_factor}")
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be between 0 and 65535; got {port}")
        self.app = app_name
        self.balance = balance
        self.host = host
        self.workers = resolve_workers(workers)
        # The supervisor is a thread of this process, so forking from it copies a threaded
        # process: labkit never does that unless asked (see cores.safe_start_method).
        self.start_method = start_method
        self.graceful_timeout = graceful_timeout
        self.startup_timeout = startup_timeout
        self.on_change = on_change
        self._port = port
        self._config = ArbiterConfig(
            app=app, name=app_name, balance=balance, host=host, port=port,
            context=multiprocessing.get_context(self.start_method),
            policy=RestartPolicy(restart_delay, backoff_factor, max_restart_delay, stable_uptime,
                                 min_uptime, max_restarts),
            heartbeat_interval=min(HEARTBEAT_INTERVAL, max(heartbeat_timeout / 4, 0.05)),
            heartbeat_timeout=heartbeat_timeout, startup_timeout=startup_timeout,
            graceful_timeout=graceful_timeout, kill_margin=KILL_MARGIN, drain_quiet=DRAIN_QUIET,
            max_wait=SUPERVISOR_MAX_WAIT, backlog=BACKLOG, options=options,
        )
        self._arbiter: Arbiter | None = None
        self._finalizer: multiprocessing.util.Finalize | None = None

    # ------------------------------------------------------------------------ properties

    @property
    def running(self) -> bool:
        """Whether the cluster has been started and not stopped."""
        return self._arbiter is not None and not self._arbiter.finished

    @property
    def port(self) -> int:
        """The port the cluster serves on (the one the system picked, for port 0)."""
        if self._arbiter is not None and self._arbiter.port is not None:
            return self._arbiter.port
        return self._port

    @property
    def url(self) -> str:
        """Base URL such as ``http://127.0.0.1:41873``."""
        if not self.running:
            raise ServerStartError("the cluster is not running; call start() or use 'with Cluster(...)'")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pids(self) -> dict[int, int]:
        """Worker id -> pid of each worker that is starting or ready."""
        return {w.id: w.pid for w in self.stats().workers
                if w.state in (WorkerState.STARTING, WorkerState.READY) and w.pid is not None}

    @property
    def events(self) -> tuple[ClusterEvent, ...]:
        """What happened so far (the latest few hundred events), oldest first."""
        if self._arbiter is None:
            return ()
        with self._arbiter.lock:
            return tuple(self._arbiter.events)

    # ------------------------------------------------------------------------- lifecycle

    def start(self) -> Cluster:
        """Bind the port, start the workers and return once each is ready (or has given up).

        Raises :class:`~labkit.errors.ServerStartError` if the port cannot be bound, the app
        fails to boot, or no worker gets ready; nothing is left running then.
        """
        if self._arbiter is not None:
            if self.running:
                return self
            raise ServerStartError("this cluster was stopped; make a new Cluster to start again")
        arbiter = Arbiter(self._config, self._notify)
        arbiter.open()  # binds the port: raises ServerStartError if it is taken
        self._arbiter = arbiter
        # Registered with multiprocessing's own exit hook, which otherwise *joins* (waits for)
        # every non-daemon child at interpreter exit: a forgotten cluster would hang the exit.
        # Workers are not daemons because a daemon process may not start a pool of its own.
        self._finalizer = multiprocessing.util.Finalize(
            self, _stop_at_exit, args=(self._arbiter, min(self.graceful_timeout, 5.0)), exitpriority=10
        )
        try:
            ids = self._arbiter.call(self._arbiter.add_slots, self.workers).result(self.startup_timeout)
            self._wait_started(ids)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_started(self, ids: list[int]) -> None:
        arbiter = self._require_running()
        settled = arbiter.wait_until(lambda: arbiter.settled(ids) or arbiter.failed_boot(ids) is not None,
                                     self.startup_timeout)
        self._raise_if_crashed()
        failed = arbiter.failed_boot(ids)
        if failed is not None:
            raise ServerStartError(f"worker {failed.id} could not start {self.app!r}: {failed.boot_error}") \
                from RemoteTraceback(failed.boot_traceback or failed.boot_error or "")
        if not settled:
            raise ServerStartError(f"the workers of {self.app!r} did not get ready within "
                                   f"startup_timeout={self.startup_timeout:g} s; raise it on a slow machine")
        stats = arbiter.snapshot()
        if stats.ready == 0:
            reasons = "; ".join(f"worker {w.id}: {w.last_exit}" for w in stats.workers)
            hint = ""
            if self.start_method != "fork":
                hint = (f". Under {self.start_method}, each worker imports your main script again: keep its "
                        "top-level code under 'if __name__ == \"__main__\":'")
            raise ServerStartError(f"no worker of {self.app!r} stayed up ({reasons}){hint}")

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: no new connections, in-flight requests finish, then workers exit.

        Workers still busy after ``timeout`` seconds (default ``graceful_timeout``) are killed.
        Calling it again does nothing.
        """
        arbiter = self._arbiter
        if arbiter is None:
            return
        _stop_at_exit(arbiter, self.graceful_timeout if timeout is None else timeout)
        if self._finalizer is not None:
            self._finalizer.cancel()

    def reload(self, timeout: float | None = None) -> None:
        """Replace every worker with a fresh one, one at a time, without failing a request.

        For each worker: start a new one, wait until it is ready, then retire the old one
        (which finishes its in-flight requests). Use it after changing the app's code, like
        ``pm2 reload``. If a new worker fails to boot, the reload stops there, the old workers
        keep serving, and :class:`~labkit.errors.ServerStartError` says why.
        """
        arbiter = self._require_running()
        wait = self.startup_timeout if timeout is None else timeout
        with arbiter.lock:
            ids = sorted(i for i, slot in arbiter.slots.items() if slot.wanted)
        for slot_id in ids:
            with arbiter.lock:
                old = [w for w in arbiter.workers if w.slot.id == slot_id]
            new = arbiter.call(arbiter.replace, slot_id).result(wait)
            if new is None:
                raise ServerStartError(f"reload stopped at worker {slot_id}: no new process could be started")
            arbiter.wait_until(partial(_past_starting, [new]), wait)
            self._raise_if_crashed()
            if new.state is not WorkerState.READY:
                why = new.boot_error or new.kill_reason or diagnose(new.exitcode)
                raise ServerStartError(f"reload stopped at worker {slot_id}: the new process {why}; "
                                       "the other workers keep serving the previous code")
            arbiter.call(arbiter.retire_workers, old).result(wait)
            arbiter.wait_until(partial(_all_exited, old), self.graceful_timeout + KILL_MARGIN + 5)
        self._notify(ClusterEvent("reloaded", f"reloaded {len(ids)} workers"))

    def scale(self, workers: int | str, timeout: float | None = None) -> None:
        """Change the number of workers while serving: start new ones, or retire the newest.

        Returns once the new workers are ready, or the retired ones have exited.
        """
        arbiter = self._require_running()
        target = resolve_workers(workers)
        wait = self.startup_timeout if timeout is None else timeout
        with arbiter.lock:
            current = sorted(i for i, slot in arbiter.slots.items() if slot.wanted)
        if target > len(current):
            ids = arbiter.call(arbiter.add_slots, target - len(current)).result(wait)
            arbiter.wait_until(lambda: arbiter.settled(ids), wait)
        elif target < len(current):
            retired = arbiter.call(arbiter.retire_slots, current[target:]).result(wait)
            arbiter.wait_until(partial(_all_exited, retired), self.graceful_timeout + KILL_MARGIN + 5)
        self._raise_if_crashed()
        self.workers = target
        self._notify(ClusterEvent("scaled", f"scaled from {len(current)} to {target} workers"))

    def wait_ready(self, timeout: float | None = None) -> ClusterStats:
        """Block until every wanted worker is ready or errored (after a crash, say); return stats."""
        arbiter = self._require_running()
        with arbiter.lock:
            ids = [i for i, slot in arbiter.slots.items() if slot.wanted]
        if not arbiter.wait_until(lambda: arbiter.settled(ids), self.startup_timeout if timeout is None else timeout):
            raise ServerStartError("workers did not get ready in time; look at cluster.events for why")
        return self.stats()

    def stats(self) -> ClusterStats:
        """A :class:`ClusterStats` snapshot: per-worker records and totals."""
        if self._arbiter is None:
            return ClusterStats(self.app, None, self.balance, self.workers, (), 0)
        return self._arbiter.snapshot()

    # ------------------------------------------------------------------------- internals

    def _require_running(self) -> Arbiter:
        if self._arbiter is None or self._arbiter.finished:
            raise ServerStartError("the cluster is not running; call start() or use 'with Cluster(...)'")
        return self._arbiter

    def _raise_if_crashed(self) -> None:
        if self._arbiter is not None and self._arbiter.crashed is not None:
            raise ServerStartError(f"the cluster's supervisor crashed: {self._arbiter.crashed!r}") \
                from self._arbiter.crashed

    def _notify(self, event: ClusterEvent) -> None:
        if self._arbiter is not None and event.kind in ("reloaded", "scaled"):
            with self._arbiter.lock:
                self._arbiter.events.append(event)
        if self.on_change is not None:
            self.on_change(event)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._arbiter is None:
            state = "not started"
        elif not self.running:
            state = "stopped"
        else:
            stats = self.stats()
            state = f"running {stats.url} {stats.ready}/{stats.wanted} ready"
            errored = sum(w.state is WorkerState.ERRORED for w in stats.workers)
            if errored:
                state += f", {errored} errored"
        return f"<Cluster {self.app!r} {state} balance={self.balance} start_method={self.start_method}>"


def _past_starting(workers) -> bool:
    return all(w.state is not WorkerState.STARTING for w in workers)


def _all_exited(workers) -> bool:
    return all(not w.state.alive for w in workers)


def _stop_at_exit(arbiter: Arbiter, timeout: float) -> None:
    """Stop a cluster's workers and supervisor; safe to call more than once."""
    if not arbiter.finished:
        arbiter.call(arbiter.shutdown, timeout)
        arbiter.wait_until(lambda: arbiter.finished, timeout + KILL_MARGIN + 5)
    arbiter.join(5)
