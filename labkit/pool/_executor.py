"""The :class:`WorkerPool` executor a notebook holds; see :mod:`labkit.pool` for the picture."""

from __future__ import annotations

import atexit
import functools
import math
import multiprocessing
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, Literal

import cloudpickle

from .._exits import RemoteTraceback
from .._progress import make_progress
from ..cores import check_start_method, resolve_workers
from ..errors import ConfigurationError
from ._base import (
    Percentiles,
    PoolBackend,
    PoolClosedError,
    PoolStats,
    QueueFullError,
    TaskExitError,
    TaskFuture,
    TaskSerializationError,
    TaskTimeoutError,
    TaskUnpicklingError,
    Tuning,
    WorkerCrashedError,
    WorkerStartError,
    WorkerState,
    WorkerStats,
    describe_exit,
    label,
)
from ._worker import InitPayload, run_chunk

__all__ = [
    "WorkerPool",
    "TaskFuture",
    "PoolStats",
    "WorkerStats",
    "WorkerState",
    "Percentiles",
    "WorkerCrashedError",
    "TaskTimeoutError",
    "QueueFullError",
    "PoolClosedError",
    "WorkerStartError",
    "TaskSerializationError",
    "TaskUnpicklingError",
    "TaskExitError",
    "RemoteTraceback",
    "describe_exit",
]

# After shutdown asks the workers to exit (an empty message on each pipe), how long it waits before
# terminating them. An idle worker exits in milliseconds; the grace only matters for one that is
# still starting under spawn (a fraction of a second). Longer is kinder to slow machines, shorter
# makes a stuck shutdown give up sooner.
SHUTDOWN_GRACE_SECONDS = 2.0

# After a worker's pipe reports end-of-file, how long the dispatcher waits for its process to end
# before killing it. The process normally ends at once; a worker whose task left a child process
# behind holding the pipe open is the rare case this bounds. The dispatcher waits synchronously,
# so this is also the longest a strange death can delay other workers' replies.
REAP_GRACE_SECONDS = 2.0

# How many workers in a row may die before saying "ready" before the pool stops trying and fails
# with WorkerStartError. One failure can be bad luck (killed while starting); several in a row mean
# every worker will fail the same way (a script without `if __name__ == "__main__":` under spawn,
# an import error), and restarting forever would only burn CPU, like a crash-looping server.
MAX_BOOT_FAILURES = 3

# stats() keeps the wait and run times of this many most recent tasks. Percentiles over 10,000
# tasks are stable to a fraction of a percent, take ~160 kB, and sort in about a millisecond, so
# stats() stays cheap enough to call from a live widget.
STATS_WINDOW = 10_000

_TUNING = Tuning(
    shutdown_grace=SHUTDOWN_GRACE_SECONDS,
    reap_grace=REAP_GRACE_SECONDS,
    max_boot_failures=MAX_BOOT_FAILURES,
    stats_window=STATS_WINDOW,
)

Kind = Literal["process", "thread", "interpreter"]
_KINDS = ("process", "thread", "interpreter")


class WorkerPool(Executor):
    """A pool of workers (processes, threads or interpreters) behind one Executor API.

    Args:
        kind: ``"process"`` (the default: one interpreter and GIL per worker, true CPU
            parallelism, crash isolation), ``"thread"`` (shared memory, one GIL: good for I/O and
            for code that releases the GIL) or ``"interpreter"`` (Python 3.14+).
        workers: ``"max"`` for :func:`labkit.usable_cores` (one worker per core you may use), ``-1``
            for all of them but one, or a positive number (see :func:`labkit.cores.resolve_workers`).
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"`` (process kind; default: the
            environment variable ``LABKIT_START_METHOD`` if set, else ``"forkserver"`` where the
            platform has it, else ``"spawn"``; never ``"fork"`` unless asked, which is unsafe in a
            process that runs threads, as every notebook kernel does). See
            :func:`labkit.cores.check_start_method`.
        max_queue: at most this many tasks may wait for a worker; ``None`` for no limit.
        on_full: what ``submit`` does when the queue is full: ``"wait"`` until there is room
            (backpressure), or ``"raise"`` :class:`QueueFullError`. ``map`` always waits.
        timeout: default per-task time limit in seconds, counted from the moment a worker starts
            the task (process kind only). A task past it is stopped by killing its worker, and
            fails with :class:`TaskTimeoutError`.
        initializer, initargs: called as ``initializer(*initargs)`` in each worker at start.
            ``multiprocessing`` queues, locks, values and events may be among ``initargs``, as
            with ``ProcessPoolExecutor``: workers inherit them at start.
        max_tasks_per_child: a worker process that has run this many tasks exits and a fresh one
            takes its place (process kind; as in ``ProcessPoolExecutor`` since Python 3.11).
            Useful when tasks leak memory or other resources. ``None``: workers live as long as
            the pool. Each planned replacement counts in ``stats().restarts``.

    Workers start on the first ``submit``/``map``, not here. Use the pool in a ``with`` block, or
    call :meth:`shutdown`: either way no worker outlives it. A pool that is garbage-collected
    without shutdown is shut down then (its pending tasks still run first). At a script's
    normal exit, the work already submitted is finished before the workers stop.

    >>> with WorkerPool("process", workers=2) as pool:          # doctest: +SKIP
    ...     squares = list(pool.map(lambda x: x * x, range(10)))

    **Same contract as concurrent.futures.** Code written for ``ProcessPoolExecutor`` or
    ``ThreadPoolExecutor`` runs unchanged, and catches the same errors. What each stage's failure
    raises (tests/test_pool_contract.py checks both columns):

    ============================================  ======================  ==========================
    what fails (process kind)                     ProcessPoolExecutor     WorkerPool
    ============================================  ======================  ==========================
    the task does not pickle here                 the pickling error      the same type, from
                                                                          ``submit`` (fails fast):
                                                                          TaskSerializationError
                                                                          for TypeError and
                                                                          PicklingError, else the
                                                                          original with a note
    the task does not unpickle in the worker      BrokenProcessPool       TaskUnpicklingError (a
                                                                          BrokenProcessPool; the
                                                                          original is its cause)
    the task raises                               the exception           the exception
    ... an exception that does not pickle there   the pickling error      TaskSerializationError
    ... an exception that does not unpickle here  BrokenProcessPool       TaskUnpicklingError
    the worker dies (crash, os._exit, SIGKILL)    BrokenProcessPool       WorkerCrashedError (a
                                                                          BrokenProcessPool)
    the result does not pickle in the worker      the pickling error      as for the task, above
    the result does not unpickle here             BrokenProcessPool       TaskUnpicklingError
    the initializer raises                        BrokenProcessPool       WorkerStartError (a
                                                                          BrokenProcessPool)
    ============================================  ======================  ==========================

    **Differences from concurrent.futures**, all deliberate:

    - A ``SystemExit`` or ``KeyboardInterrupt`` raised by a task (or by pickling it or its result)
      comes back as :class:`TaskExitError`, so ``sys.exit()`` in a task cannot end a notebook's
      kernel or your script.
    - A crash, or a task or result that does not unpickle, fails only that task: the pool starts
      a new worker and keeps serving, where ``ProcessPoolExecutor`` breaks the whole pool and
      fails every pending task. The error is still a ``BrokenProcessPool``.
    - ``workers`` counts the cores you may use (affinity and cgroup quota), not the machine's
      (``max_workers=None`` is ``os.cpu_count()``); ``-1`` means all of them but one.
    - The default start method is ``forkserver`` (or ``LABKIT_START_METHOD``), never ``fork``,
      which is unsafe in a process with threads. ``max_tasks_per_child`` works with ``fork`` too.
    - An error, an interrupt or an abandoned iterator of :meth:`map` stops the map's running
      tasks too (their workers are killed and replaced), not only its pending ones.
    - Functions defined in a notebook or in a script's ``__main__`` travel by value (cloudpickle),
      each with the globals it uses as they are at ``submit`` time, instead of by name. So a
      global that the initializer (or an earlier task) sets in a worker is not seen by such a
      function, where ``ProcessPoolExecutor`` (which sends them by name) would see it. Keep
      such per-worker state in an importable module.

    Everything else is an addition: per-task ``timeout``, ``max_queue``, :meth:`kill_task`,
    :meth:`stats`, ``map(progress=..., return_exceptions=...)``, functions and lambdas defined in
    a notebook under every start method (they travel by cloudpickle).
    """

    def __init__(
        self,
        kind: Kind = "process",
        workers: int | Literal["max"] = "max",
        *,
        start_method: str | None = None,
        max_queue: int | None = None,
        on_full: Literal["wait", "raise"] = "wait",
        timeout: float | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_child: int | None = None,
    ) -> None:
        self._kind = _check_kind(kind)
        self._workers = resolve_workers(workers)
        if max_queue is not None and (not _is_int(max_queue) or max_queue < 1):
            raise ConfigurationError(f"max_queue must be a positive integer or None, got {max_queue!r}")
        if on_full not in ("wait", "raise"):
            raise ConfigurationError(f"on_full must be 'wait' or 'raise', got {on_full!r}")
        if initializer is not None and not callable(initializer):
            raise ConfigurationError(f"initializer must be callable, got {initializer!r}")
        initargs = tuple(initargs)
        if max_tasks_per_child is not None:
            if not _is_int(max_tasks_per_child) or max_tasks_per_child < 1:
                raise ConfigurationError(
                    f"max_tasks_per_child must be a positive integer or None, got {max_tasks_per_child!r}")
            if self._kind != "process":
                raise ConfigurationError(
                    f"max_tasks_per_child applies to kind='process' only: a {self._kind} pool does "
                    "not replace its workers")
        self._on_full = on_full
        self._timeout = self._check_timeout(timeout, "timeout")
        self._finalizer: weakref.finalize | None = None
        self._finalizer_lock = threading.Lock()
        self._backend: PoolBackend
        self._start_method: str | None
        if self._kind == "process":
            self._start_method = check_start_method(start_method)
            from ._process import ProcessBackend

            self._backend = ProcessBackend(
                workers=self._workers,
                context=multiprocessing.get_context(self._start_method),
                max_queue=max_queue,
                on_full=on_full,
                init_payload=_pickle_initializer(initializer, initargs),
                tuning=_TUNING,
                max_tasks_per_child=max_tasks_per_child,
            )
        else:
            if start_method is not None:
                raise ConfigurationError(f"start_method applies to kind='process' only, not kind={kind!r}")
            self._start_method = None
            from ._threads import ExecutorBackend

            self._backend = ExecutorBackend(
                kind=self._kind, workers=self._workers, max_queue=max_queue, on_full=on_full,
                initializer=initializer, initargs=initargs, tuning=_TUNING,
            )

    # ----------------------------------------------------------------------------------------
    # what the pool is

    @property
    def kind(self) -> str:
        """``"process"``, ``"thread"`` or ``"interpreter"``."""
        return self._kind

    @property
    def workers(self) -> int:
        """How many workers the pool runs (``"max"`` and ``-1`` resolved to a number)."""
        return self._workers

    @property
    def start_method(self) -> str | None:
        """The ``multiprocessing`` start method of the process kind; ``None`` for the others."""
        return self._start_method

    @property
    def timeout(self) -> float | None:
        """The default per-task time limit in seconds, or ``None``."""
        return self._timeout

    @property
    def closed(self) -> bool:
        """Whether the pool has been shut down (it accepts no more work)."""
        return self._backend.closed

    # ----------------------------------------------------------------------------------------
    # giving it work

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` and return a :class:`~concurrent.futures.Future`.

        ``cancel()`` on it works as usual: only while the task waits for a worker. To stop a
        task that already runs (process kind), call :meth:`kill_task`. The pool's ``timeout``
        applies; for a different limit on one task, use :meth:`submit_with`.
        """
        return self._submit(fn, args, kwargs, timeout=self._timeout, block=self._on_full == "wait")

    def submit_with(self, fn: Callable[..., Any], args: Iterable[Any] = (),
                    kwargs: dict[str, Any] | None = None, *, timeout: float | None = None) -> Future:
        """Like :meth:`submit`, with options for this one task.

        The task's arguments are passed as a tuple and a dict, so that an option such as
        ``timeout`` can never collide with an argument of ``fn``::

            future = pool.submit_with(count_primes, (2_000_000,), timeout=5.0)

        Args:
            timeout: seconds this task may run, counted from its start; ``None`` means the pool's
                ``timeout``; ``math.inf`` means no limit even if the pool has one.
        """
        chosen = self._timeout if timeout is None else self._check_timeout(timeout, "timeout")
        return self._submit(fn, tuple(args), dict(kwargs or {}), timeout=chosen,
                            block=self._on_full == "wait")

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, progress: bool = False, task_timeout: float | None = None,
            return_exceptions: bool = False) -> Iterator[Any]:
        """Run ``fn`` over the items of ``iterables`` in parallel; yield the results in order.

        All tasks are submitted before this returns (waiting for room if ``max_queue`` is set).
        Iterating the result waits for each answer in turn.

        Args:
            timeout: seconds, from this call, for the whole map; past it, iterating raises
                ``TimeoutError`` and the unfinished tasks are cancelled.
            chunksize: items per trip to a worker (process kind). Bigger chunks amortise the
                pickling and pipe round-trip of tiny tasks; a crash or timeout then fails the
                whole chunk.
            progress: show a progress bar: a widget in Jupyter, a text line on stderr elsewhere.
            task_timeout: per-task limit like :meth:`submit_with`'s ``timeout`` (default: the pool's).
            return_exceptions: yield a failed task's exception in its place instead of raising it,
                so that one bad item does not hide the others' results.

        The first error raised (without ``return_exceptions``), an interrupt (Ctrl-C, or the
        notebook's stop button) or abandoning the iterator once it has started cancels every task
        of this map that has not finished, including running ones in the process kind (as
        :meth:`kill_task` does; ``concurrent.futures`` cancels only pending ones), and re-raises.
        Like the standard library's, the iterator drops each result once it has yielded it.
        """
        if not _is_int(chunksize) or chunksize < 1:
            raise ConfigurationError(f"chunksize must be a positive integer, got {chunksize!r}")
        if timeout is not None and not timeout >= 0:
            raise ConfigurationError(f"timeout must be non-negative seconds or None, got {timeout!r}")
        per_task = self._timeout if task_timeout is None else self._check_timeout(task_timeout, "task_timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables))
        if chunksize == 1:
            calls = [(fn, args, 1) for args in items]
        else:
            calls = [(run_chunk, (fn, items[i:i + chunksize]), len(items[i:i + chunksize]))
                     for i in range(0, len(items), chunksize)]
        bar = make_progress(len(items)) if progress else None
        futures: list[tuple[Future, int]] = []
        try:
            for target, args, size in calls:
                name = label(fn) if size == 1 and chunksize == 1 else f"{label(fn)} over {size} items"
                future = self._submit(target, args, {}, timeout=per_task, block=True, name=name, origin=fn)
                futures.append((future, size))
            if bar is not None:
                _follow(bar, futures)
        except BaseException:
            for future, _ in futures:
                self._stop_for_map(future)
            if bar is not None:
                bar.close(ok=False)
            raise
        return _results(futures, deadline, chunksize > 1, bar, return_exceptions, self._stop_for_map)

    def kill_task(self, future: Future) -> bool:
        """Stop one task of this pool now, even a running one; ``True`` if it ends cancelled.

        ``future.cancel()`` keeps the standard contract: it cancels a task that has not started
        and returns ``False`` for a running one (so ``asyncio.wrap_future`` and friends stay
        correct). This is the explicit way to stop a running task, in the spirit of Python 3.14's
        ``ProcessPoolExecutor.kill_workers()`` but for one task: a pending task is cancelled; a
        running task of the process kind has its worker killed (SIGKILL) and replaced, and its
        future ends cancelled. Threads cannot be killed: for the thread kind a running task
        keeps running and this returns ``False``. ``False`` as well once the task has finished.
        """
        if future.cancel():
            return True
        stop = getattr(self._backend, "stop_running", None)
        if not isinstance(future, TaskFuture) or stop is None or future._backend is not self._backend:
            return future.cancelled()
        task = future._task
        if task is not None and stop(task):
            future._mark_cancelled()
            return True
        return future.cancelled()

    def _stop_for_map(self, future: Future) -> None:
        # map's own tasks: an error, an interrupt or an abandoned iterator stops running ones too
        # (a listed difference from concurrent.futures, whose map only cancels pending ones).
        self.kill_task(future)

    def _submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict, *, timeout: float | None,
                block: bool, name: str | None = None, origin: Callable[..., Any] | None = None) -> Future:
        if not callable(fn):
            raise TypeError(f"the first argument must be callable, got {fn!r}")
        if self._finalizer is None:
            self._register_finalizer()
        if timeout is not None and math.isinf(timeout):
            timeout = None
        return self._backend.submit(fn, args, kwargs, name=name or label(fn), timeout=timeout,
                                    block=block, origin=origin)

    def _register_finalizer(self) -> None:
        # On first use, not at construction or import: a pool that never ran owns nothing.
        with self._finalizer_lock:
            if self._finalizer is None:
                self._finalizer = weakref.finalize(self, _shut_down_quietly, self._backend)
                self._finalizer.atexit = False  # exit is _finish_live_pools's job
                _track(self._backend)

    def _check_timeout(self, timeout: float | None, name: str) -> float | None:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigurationError(f"{name} must be positive seconds (or None), got {timeout!r}")
        if self._kind != "process":
            raise ConfigurationError(
                f"a {self._kind} pool cannot enforce {name}={timeout!r}: a running "
                f"{self._kind} cannot be stopped from outside. Use WorkerPool('process', ...), whose "
                "workers can be killed and replaced, or check the time inside the task."
            )
        return float(timeout)

    # ----------------------------------------------------------------------------------------
    # ending it

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; finish what was submitted; then stop every worker.

        Args:
            wait: block until all tasks are done and the workers have exited.
            cancel_futures: cancel the tasks that have not started instead of running them.

        An interrupt (Ctrl-C) while waiting turns into :meth:`terminate`, then is re-raised.
        """
        try:
            self._backend.shutdown(wait, cancel_futures)
        except KeyboardInterrupt:
            self._backend.terminate()
            raise
        finally:
            if self._finalizer is not None:
                self._finalizer.detach()

    def terminate(self) -> None:
        """Stop now: cancel pending tasks, stop running ones, stop the workers.

        For the process kind, running tasks are killed with their workers and their futures are
        cancelled. Threads cannot be killed: a thread pool cancels what has not started and lets
        running tasks finish in the background.
        """
        self._backend.terminate()
        if self._finalizer is not None:
            self._finalizer.detach()

    def terminate_workers(self) -> None:
        """Python 3.14's ``ProcessPoolExecutor.terminate_workers()``, for code written for it:
        :meth:`terminate`."""
        self.terminate()

    def kill_workers(self) -> None:
        """Python 3.14's ``ProcessPoolExecutor.kill_workers()``, for code written for it:
        :meth:`terminate` (which already kills with SIGKILL)."""
        self.terminate()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.terminate()  # the person wants it to stop, not to finish
        else:
            # Leaving because of an error: the remaining results have no reader, skip them.
            self.shutdown(wait=True, cancel_futures=exc_type is not None)
        return False

    # ----------------------------------------------------------------------------------------
    # watching it

    def stats(self) -> PoolStats:
        """A frozen :class:`PoolStats` snapshot: per-worker counts and task time percentiles."""
        return self._backend.stats()

    def __repr__(self) -> str:
        pending, running = self._backend.counts()
        method = f" start_method={self._start_method!r}" if self._start_method else ""
        state = "closed" if self.closed else "open"
        return (f"<WorkerPool kind={self._kind!r} workers={self._workers}{method} "
                f"pending={pending} running={running} {state}>")


# --------------------------------------------------------------------------------------------
# helpers


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_kind(kind: str) -> str:
    if kind not in _KINDS:
        raise ConfigurationError(f"kind must be one of {', '.join(map(repr, _KINDS))}; got {kind!r}")
    if kind == "interpreter" and sys.version_info < (3, 14):
        raise ConfigurationError(
            "kind='interpreter' needs Python 3.14 or newer (concurrent.futures."
            f"InterpreterPoolExecutor); this is Python {sys.version_info.major}."
            f"{sys.version_info.minor}. Use kind='process' for parallel CPU work on this Python."
        )
    return kind


def _pickle_initializer(initializer: Callable[..., Any] | None, initargs: tuple) -> InitPayload | None:
    """The initializer and its arguments, ready to hand to each new worker process.

    The function goes by cloudpickle (it may be defined in a notebook). The arguments do too when
    they can; when they cannot, for instance a ``multiprocessing.Queue``, ``Lock``, ``Value`` or
    ``Event``, which refuse to be pickled except while a process is being started, they are
    handed over as they are, as ``ProcessPoolExecutor`` does: inherited under fork, pickled by
    multiprocessing itself at start under spawn and forkserver.
    """
    if initializer is None:
        return None
    try:
        function = cloudpickle.dumps(initializer)
    except Exception as exc:
        raise TaskSerializationError(f"cannot send the initializer to worker processes: {exc}") from exc
    try:
        return InitPayload(function, cloudpickle.dumps(initargs), pickled=True)
    except Exception:  # noqa: BLE001 - multiprocessing's primitives travel only at process start
        return InitPayload(function, initargs, pickled=False)


def _shut_down_quietly(backend: PoolBackend) -> None:
    """The finalizer of a pool collected without shutdown: finish its work, then stop workers."""
    backend.shutdown(wait=False)


# Pools in use, so that interpreter exit can finish them. The exit hook is registered by the first
# pool that runs a task (never at import). atexit runs hooks last-registered first, so ours runs
# before multiprocessing's own, which would otherwise terminate our workers while our dispatcher
# is still running their tasks, reaping and replacing them.
_live_backends: weakref.WeakSet = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _track(backend: PoolBackend) -> None:
    global _exit_hook_registered
    with _exit_hook_lock:
        _live_backends.add(backend)
        if not _exit_hook_registered:
            atexit.register(_finish_live_pools)
            _exit_hook_registered = True


def _finish_live_pools() -> None:
    """At a normal interpreter exit: run what was submitted to its end, then stop the workers.

    As the standard library's executors do: a script that submits work and falls off its end
    still gets that work done (with or without ``shutdown(wait=False)`` before). A second Ctrl-C
    while waiting stops everything at once. A notebook kernel that is shut down or restarted
    loses its children first (ipykernel terminates them), so its pools end at once here. A
    kernel that dies without a normal exit never gets here; its workers notice through
    labkit._lifeline and exit on their own.
    """
    for backend in list(_live_backends):
        try:
            try:
                backend.shutdown(wait=True)
            except KeyboardInterrupt:
                backend.terminate()
        except Exception as exc:  # noqa: BLE001 - one broken pool must not keep the others alive
            print(f"labkit: could not stop a {backend.kind} pool at exit: {exc!r}", file=sys.stderr)


def _follow(bar, futures: list[tuple[Future, int]]) -> None:
    """Advance ``bar`` as futures finish; close it when the last one has.

    The callbacks hold only counters, never the futures themselves, so that a finished result
    is freed as soon as the map's reader has taken it.
    """
    left = [len(futures)]
    failed = [False]
    lock = threading.Lock()

    def done(future: Future, size: int) -> None:
        bad = future.cancelled() or future.exception() is not None
        if not future.cancelled():
            bar.advance(size)
        with lock:
            left[0] -= 1
            failed[0] = failed[0] or bad
            last = left[0] == 0
        if last:
            bar.close(ok=not failed[0])

    if not futures:
        bar.close()
    for future, size in futures:
        future.add_done_callback(functools.partial(done, size=size))


def _results(futures: list[tuple[Future, int]], deadline: float | None, chunked: bool, bar,
             return_exceptions: bool, stop: Callable[[Future], Any]) -> Iterator[Any]:
    # Futures are taken off the list as they are yielded (like the standard library's map), so
    # each result can be freed once the reader is done with it, not when the whole map is.
    futures.reverse()
    finished = False
    try:
        while futures:
            future, size = futures[-1]  # popped once read: until then, still this map's to stop
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                value = future.result(wait)
            except Exception as exc:
                if not return_exceptions or not future.done():  # not done: the map's own deadline
                    raise
                value = [exc] * size if chunked else exc
            futures.pop()
            del future
            if chunked:
                yield from value
            else:
                yield value
            del value
        finished = True
    finally:
        for future, _ in futures:
            stop(future)  # no-op for finished ones; stops the rest (interrupt, error, abandon)
        if bar is not None:
            bar.close(ok=finished)
