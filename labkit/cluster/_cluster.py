"""The :class:`Cluster` object a notebook or ``labkit serve`` holds; see :mod:`labkit.cluster`."""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.util
import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .._exits import RemoteTraceback
from .._format import format_host
from ..cores import check_start_method, resolve_workers
from ..errors import ConfigurationError, ServerStartError
from ._arbiter import Arbiter, ArbiterConfig
from ._balance import BALANCE_MODES
from ._by_value import factory_name, pickled_app
from ._settings import KILL_MARGIN, ClusterSettings, declared
from ._state import (
    ClusterEvent,
    ClusterStats,
    RestartPolicy,
    WorkerState,
    WorkerStats,
    diagnose,
)
from ._worker import WORKER_ID_ENV

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

# Cluster's keyword defaults come from the settings' declarations.
_DEFAULT = ClusterSettings()
_SETTING_NAMES = frozenset(declaration.name for declaration in declared())


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
        balance: ``"os"``, ``"reuseport"`` or ``"round-robin"`` (see the module docstring); by
            default ``"round-robin"`` where the platform can pass sockets (``socket.send_fds``),
            ``"os"`` elsewhere.
        host: address to bind; 127.0.0.1 keeps the cluster private to this machine.
        port: 0 lets the system pick a free port (see :attr:`url`).
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"``; ``None`` means ``"forkserver"``
            where the platform has it, else ``"spawn"``; ``$LABKIT_START_METHOD`` overrides that default
            (see :func:`labkit.cores.check_start_method`).
        app_dir: folder put first on the workers' import path (default ``"."``, the folder the
            cluster is made in), so an import string may name a module of that folder.
        min_uptime, max_restarts: the crash-loop guard (see :mod:`labkit.cluster._settings` for
            every setting's default and the trade-off behind it).
        restart_delay, max_restart_delay, backoff_factor, stable_uptime: restart backoff.
        heartbeat_timeout: replace a worker whose loop is silent this long.
        graceful_timeout: how long stopping workers may finish in-flight requests.
        idle_timeout: a client connection that sends nothing, or only part of a request header,
            for this long is closed by its worker.
        startup_timeout: how long a worker may take to get ready.
        options: keyword arguments for the app factory (picklable values).
        on_change: called with each :class:`ClusterEvent`, from the supervisor thread; keep it
            quick (append to a list, update a widget).
    """

    def __init__(
        self,
        app: str | Callable[..., Any],
        workers: int | str = _DEFAULT.workers,
        balance: str = _DEFAULT.balance,
        host: str = _DEFAULT.host,
        port: int = _DEFAULT.port,
        *,
        start_method: str | None = _DEFAULT.start_method,
        app_dir: str = _DEFAULT.app_dir,
        min_uptime: float = _DEFAULT.min_uptime,
        max_restarts: int = _DEFAULT.max_restarts,
        restart_delay: float = _DEFAULT.restart_delay,
        max_restart_delay: float = _DEFAULT.max_restart_delay,
        backoff_factor: float = _DEFAULT.backoff_factor,
        stable_uptime: float = _DEFAULT.stable_uptime,
        heartbeat_timeout: float = _DEFAULT.heartbeat_timeout,
        graceful_timeout: float = _DEFAULT.graceful_timeout,
        idle_timeout: float = _DEFAULT.idle_timeout,
        startup_timeout: float = _DEFAULT.startup_timeout,
        options: dict | None = None,
        on_change: Callable[[ClusterEvent], None] | None = None,
    ) -> None:
        # Every argument but the app, its options and the callback is a setting: ClusterSettings
        # checks each one by its own declaration (tests/test_settings.py keeps the two in step).
        chosen = {name: value for name, value in locals().items() if name in _SETTING_NAMES}
        options = dict(options or {})
        if callable(app) and not isinstance(app, str):
            app_name = factory_name(app)
            app, options = pickled_app(app, options)
        elif isinstance(app, str):
            app_name = app
        if not isinstance(app, str):
            raise ConfigurationError(f"app must be 'module:factory' or a factory function; got {type(app).__name__}")
        module, sep, attr = app.partition(":")
        if not (module and sep and attr):
            raise ConfigurationError(f"app must look like 'module:factory' (say 'labkit.demo:demo_app'); got {app!r}")
        settings = ClusterSettings(**chosen)
        # Workers resolve the folder as the primary sees it now, whatever their own directory.
        settings = dataclasses.replace(settings, app_dir=os.path.abspath(settings.app_dir))
        self.app = app_name
        self.balance = balance
        self.host = host
        self.workers = resolve_workers(workers)
        # The supervisor is a thread of this process, so forking from it copies a threaded
        # process: labkit never does that unless asked (see cores.check_start_method).
        self.start_method = check_start_method(start_method)  # explicit, else $LABKIT_START_METHOD, else safe
        self.graceful_timeout = graceful_timeout
        self.startup_timeout = startup_timeout
        self.on_change = on_change
        self._port = port
        self._config = ArbiterConfig(app=app, name=app_name, settings=settings, options=options,
                                     context=multiprocessing.get_context(self.start_method))
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
        return f"http://{format_host(self.host)}:{self.port}"

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

        After the cluster gave up (every worker errored, see ``stats().gave_up``), a reload
        starts over: it listens on the same port again and starts every worker afresh.
        """
        arbiter = self._require_running()
        wait = self.startup_timeout if timeout is None else timeout
        count = self._answer(arbiter.perform(arbiter.reload, wait))
        self._notify(ClusterEvent("reloaded", f"reloaded {count} workers"))

    def scale(self, workers: int | str, timeout: float | None = None) -> None:
        """Change the number of workers while serving: start new ones, or retire the newest.

        Returns once the new workers are ready, or the retired ones have exited.
        """
        arbiter = self._require_running()
        target = resolve_workers(workers)
        wait = self.startup_timeout if timeout is None else timeout
        before = self._answer(arbiter.perform(arbiter.scale, target, wait))
        self.workers = target
        self._notify(ClusterEvent("scaled", f"scaled from {before} to {target} workers"))

    def wait_ready(self, timeout: float | None = None) -> ClusterStats:
        """Block until every wanted worker is ready or errored (after a crash, say); return stats."""
        arbiter = self._require_running()
        ids = arbiter.wanted_slots()
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

    def _answer(self, future: Future) -> Any:
        """Wait for a command's answer; the arbiter's own deadlines bound the wait."""
        arbiter = self._require_running()
        try:
            while True:
                try:
                    return future.result(timeout=_ANSWER_POLL)
                except TimeoutError:
                    if arbiter.finished and not future.done():  # queued just as the loop ended
                        raise ServerStartError("the cluster stopped before it could do that") from None
        except ServerStartError:
            self._raise_if_crashed()  # the real cause, if the supervisor died under the command
            raise

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
            if stats.gave_up:
                state += ", gave up (port closed; reload() starts over)"
        return f"<Cluster {self.app!r} {state} balance={self.balance} start_method={self.start_method}>"


# While waiting for the arbiter's answer, how often to check that it is still there to answer.
_ANSWER_POLL = 1.0


def _stop_at_exit(arbiter: Arbiter, timeout: float) -> None:
    """Stop a cluster's workers and supervisor; safe to call more than once."""
    if not arbiter.finished:
        arbiter.call(arbiter.shutdown, timeout)
        arbiter.wait_until(lambda: arbiter.finished, timeout + KILL_MARGIN + 5)
    arbiter.join(5)
