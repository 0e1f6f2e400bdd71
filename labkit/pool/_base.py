"""The vocabulary shared by the pool's backends: errors, stats records, worker states, futures,
what a backend is (:class:`PoolBackend`) and the queue limit every backend applies (:class:`QueueLimit`).

The names a pool's user meets are re-exported by :mod:`labkit.pool`, which is where readers should
look; :class:`PoolBackend`, :class:`QueueLimit` and :class:`SlotTally` are for writing backends.
How a process ended, remote tracebacks and the lifecycle helper are shared with the cluster and
live in :mod:`labkit._exits`.
"""

from __future__ import annotations

import enum
import math
import pickle
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import _base as futures_base
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._exits import Lifecycle, ending
from ..errors import LabkitError

# --------------------------------------------------------------------------------------------
# errors


class WorkerCrashedError(LabkitError, BrokenProcessPool):
    """A worker process died while it ran this task; only this task fails.

    It is a :class:`concurrent.futures.process.BrokenProcessPool`, so code written for
    ``ProcessPoolExecutor`` (or loky, whose ``TerminatedWorkerError`` does the same) catches it.
    But here the pool is not broken, only the task is: a new worker takes the dead one's place
    and the pool keeps serving.

    Attributes:
        pid: the dead worker's process id.
        exitcode: its exit status as ``multiprocessing`` reports it: ``-9`` for SIGKILL, ``3`` for
            ``os._exit(3)``, ``None`` if it could not be read.
    """

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


class TaskTimeoutError(LabkitError, TimeoutError):
    """A task ran longer than its timeout; its worker was stopped and replaced."""


class QueueFullError(LabkitError, RuntimeError):
    """``submit`` found ``max_queue`` tasks already waiting and the pool was told ``on_full="raise"``."""


class PoolClosedError(LabkitError, RuntimeError):
    """Work was submitted to a pool that is shut down (or shutting down)."""


class WorkerStartError(LabkitError, BrokenProcessPool):
    """Workers could not start (the initializer raised, or they kept dying at start-up).

    A :class:`concurrent.futures.process.BrokenProcessPool`, as ``ProcessPoolExecutor`` raises
    when its initializer fails: this pool is broken for good and refuses further work.
    """


class TaskSerializationError(LabkitError, TypeError, pickle.PicklingError):
    """A task's function or arguments (in this process), or its result (in the worker), could not
    be pickled.

    It is both a ``TypeError`` and a :class:`pickle.PicklingError`, the two errors pickling raises
    for what cannot travel, so code written for ``ProcessPoolExecutor`` catches it as before. A
    pickling failure of another type (say a ``ValueError`` from a class's ``__reduce__``) comes
    back as itself, with the explanation added as a note.
    """


class TaskUnpicklingError(LabkitError, BrokenProcessPool):
    """A task could not be unpickled in its worker, or its result could not be unpickled here.

    ``ProcessPoolExecutor`` calls its pool broken in these cases, so this is a
    :class:`concurrent.futures.process.BrokenProcessPool` too; but only this task fails and the
    pool keeps serving. The error that unpickling raised (even a ``SystemExit``) is the
    ``__cause__``.
    """


class TaskExitError(LabkitError, RuntimeError):
    """A task raised ``SystemExit`` or ``KeyboardInterrupt`` in its worker.

    It comes back as this error, not as the original, so that ``sys.exit()`` inside a task can
    never end the parent (a notebook kernel or your script).
    """


for _cls in (WorkerCrashedError, TaskTimeoutError, QueueFullError, PoolClosedError,
             WorkerStartError, TaskSerializationError, TaskUnpicklingError, TaskExitError):
    _cls.__module__ = "labkit.pool"  # where users import them from; shows in tracebacks

# --------------------------------------------------------------------------------------------
# tuning and stats records


@dataclass(frozen=True)
class Tuning:
    """The pool's tunable constants, handed to a backend (defaults and trade-offs: labkit.pool)."""

    shutdown_grace: float
    reap_grace: float
    max_boot_failures: int
    stats_window: int


class WorkerState(str, enum.Enum):
    """Where one worker slot is in its life. The legal moves are in :data:`LIFECYCLE`."""

    NEW = "new"  # never started
    STARTING = "starting"  # process started, has not said "ready" yet
    IDLE = "idle"  # ready for a task
    BUSY = "busy"  # running one task
    STOPPING = "stopping"  # asked to exit, or being killed (timeout, cancel, shutdown)
    EXITED = "exited"  # process gone; a new one may start in the same slot

    def __str__(self) -> str:
        return self.value


#: The legal moves between states; anything else is a bug in the dispatcher, and moving a slot
#: there raises :class:`labkit._exits.IllegalMoveError` (the cluster's workers use the same helper).
LIFECYCLE: Lifecycle[WorkerState] = Lifecycle({
    WorkerState.NEW: {WorkerState.STARTING},
    WorkerState.STARTING: {WorkerState.IDLE, WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.IDLE: {WorkerState.BUSY, WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.BUSY: {WorkerState.IDLE, WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.STOPPING: {WorkerState.EXITED},
    WorkerState.EXITED: {WorkerState.STARTING},
})
#: The same table as a plain mapping, for readers of older code.
TRANSITIONS = LIFECYCLE.table


@dataclass(frozen=True)
class Percentiles:
    """A distribution of durations, in seconds; all zero when ``count`` is zero."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Percentiles:
        """Nearest-rank percentiles of ``values`` (no interpolation: every number was observed)."""
        data = sorted(values)
        n = len(data)
        if n == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0)

        def rank(q: float) -> float:
            return data[min(n - 1, max(0, math.ceil(q * n) - 1))]

        return cls(n, rank(0.50), rank(0.90), rank(0.99), data[-1])

    def summary(self) -> str:
        """One line in milliseconds, e.g. ``p50 12.0 ms, p99 48.1 ms, max 51.3 ms (200 tasks)``."""
        return (
            f"p50 {self.p50 * 1e3:.1f} ms, p90 {self.p90 * 1e3:.1f} ms, p99 {self.p99 * 1e3:.1f} ms, "
            f"max {self.max * 1e3:.1f} ms ({self.count} tasks)"
        )


@dataclass(frozen=True)
class WorkerStats:
    """One worker slot as the pool saw it.

    Attributes:
        slot: the slot number, 0 to ``workers - 1``; a replacement worker keeps its slot.
        pid: the current process id (threads: the pool's own process), ``None`` before start.
        state: a :class:`WorkerState`.
        tasks: tasks this slot ran to their end (result or exception), across restarts.
        busy_seconds: wall time this slot spent running those tasks.
        restarts: how many times a new worker replaced a dead or stopped one in this slot.
        name: the thread's name for the thread kind, else ``""``.
    """

    slot: int
    pid: int | None
    state: WorkerState
    tasks: int
    busy_seconds: float
    restarts: int
    name: str = ""


class SlotTally:
    """What every worker slot of a pool counts, whatever runs in it (a process or a thread).

    A slot outlives its workers: a replacement process takes the same slot and adds to the same
    counts. :meth:`record` turns the counts into the public :class:`WorkerStats`.
    """

    def __init__(self, index: int, name: str = "") -> None:
        self.index = index
        self.name = name
        self.tasks = 0
        self.busy_seconds = 0.0
        self.restarts = 0

    def count_task(self, seconds: float) -> None:
        """One task ran to its end (a result or an exception) in ``seconds``."""
        self.tasks += 1
        self.busy_seconds += seconds

    def record(self, pid: int | None, state: WorkerState) -> WorkerStats:
        """A frozen :class:`WorkerStats` of this slot, with the given process id and state."""
        return WorkerStats(slot=self.index, pid=pid, state=state, tasks=self.tasks,
                           busy_seconds=self.busy_seconds, restarts=self.restarts, name=self.name)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool, from :meth:`WorkerPool.stats`. Cheap to take; never changes.

    Task outcomes are disjoint: every submitted task is pending, running, or exactly one of
    succeeded, raised, crashed, timed out and cancelled.

    Attributes:
        kind: ``"process"``, ``"thread"`` or ``"interpreter"``.
        workers: one :class:`WorkerStats` per slot (empty for interpreters, which hide theirs).
        pending, running: tasks waiting for a worker, and tasks being run, right now.
        submitted: tasks accepted since the pool was created.
        succeeded, raised: tasks that returned, and tasks whose function raised.
        crashed, timed_out, cancelled: tasks that lost their worker, ran out of time, were cancelled.
        wait: time from submit to start, over the most recent tasks that ran to their end.
        run: time from start to end, over the same tasks.
    """

    kind: str
    workers: tuple[WorkerStats, ...]
    pending: int
    running: int
    submitted: int
    succeeded: int
    raised: int
    crashed: int
    timed_out: int
    cancelled: int
    wait: Percentiles
    run: Percentiles

    @property
    def completed(self) -> int:
        """Tasks that ran to their end: ``succeeded + raised``."""
        return self.succeeded + self.raised

    @property
    def restarts(self) -> int:
        """Replacement workers started, over all slots."""
        return sum(w.restarts for w in self.workers)

    def summary(self) -> str:
        """A few readable lines: counts, then wait and run percentiles."""
        workers = f", {len(self.workers)} workers, {self.restarts} restarts" if self.workers else ""
        return (
            f"{self.kind} pool{workers}: "
            f"{self.completed} done ({self.raised} raised), {self.crashed} crashed, "
            f"{self.timed_out} timed out, {self.cancelled} cancelled, {self.pending} pending, "
            f"{self.running} running\n  wait {self.wait.summary()}\n  run  {self.run.summary()}"
        )


# --------------------------------------------------------------------------------------------
# exit statuses, read aloud

def describe_exit(exitcode: int | None) -> str:
    """Turn a ``multiprocessing`` exit code into words and a likely cause (see :mod:`labkit._exits`).

    >>> describe_exit(-9)
    "killed by SIGKILL (signal 9): out of memory (the kernel's OOM killer; see dmesg), or killed by hand?"
    >>> describe_exit(-11)
    'segmentation fault (SIGSEGV, signal 11): a bug in native code (a C extension, ctypes)'
    """
    end = ending(exitcode)
    if end.exitcode is None:
        return "vanished without an exit status"
    if end.signal is not None:
        meaning = end.signal
        if not meaning.name.startswith("SIG"):
            return f"killed by {meaning.name}"  # a number without a name: nothing more is known
        if meaning.sent:
            return f"killed by {meaning.name} (signal {meaning.number}): {meaning.cause}"
        return f"{meaning.event} ({meaning.name}, signal {meaning.number}): {meaning.cause}"
    if end.orphaned:
        return f"exited with code {exitcode}: it believed the pool's process had died"
    # A task's own exceptions, sys.exit() included, come back as errors: only os._exit() or
    # native code can end a worker with a status.
    return f"exited with code {exitcode} via os._exit or sys.exit in a C extension"


# --------------------------------------------------------------------------------------------
# what a backend is, and the queue limit every backend applies


@runtime_checkable
class PoolBackend(Protocol):
    """What :class:`~labkit.pool.WorkerPool` needs from the machinery that runs its tasks.

    ``WorkerPool`` checks arguments, owns the finalizer and the exit hook, and turns ``map`` into
    submissions; everything that depends on *where* tasks run is a backend's job: the process
    backend (``_process.ProcessBackend``) and the executor backend for threads and interpreters
    (``_threads.ExecutorBackend``). A new kind of worker needs only a class with these members.
    """

    #: ``"process"``, ``"thread"`` or ``"interpreter"``.
    kind: str
    #: How many workers it runs.
    workers: int

    @property
    def closed(self) -> bool:
        """Whether it accepts no more work."""
        ...

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict, *, name: str,
               timeout: float | None, block: bool, origin: Callable[..., Any] | None = None) -> Future:
        """Queue ``fn(*args, **kwargs)``; ``name`` is how messages call it; ``block`` waits for room."""
        ...

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Accept no more work, finish (or cancel) what is queued, then stop the workers."""
        ...

    def terminate(self) -> None:
        """Stop now: cancel what is queued, stop what runs where that is possible."""
        ...

    def counts(self) -> tuple[int, int]:
        """(pending, running) tasks right now."""
        ...

    def stats(self) -> PoolStats:
        """A frozen snapshot of the workers and the task counts."""
        ...


class QueueLimit:
    """Admission to a pool's queue, written once for every backend (``max_queue``, ``on_full``).

    A backend that inherits it sets ``_max_queue`` and ``_room`` (a ``threading.Condition`` on
    the lock that guards its queue, notified whenever the queue shrinks or the pool closes), and
    says how many tasks wait (:meth:`_pending_count`) and whether the calling thread belongs to the
    pool (:meth:`_in_pool_thread`).
    """

    _max_queue: int | None
    _room: threading.Condition

    @property
    def closed(self) -> bool:
        """Whether the pool accepts no more work."""
        raise NotImplementedError

    def _pending_count(self) -> int:
        raise NotImplementedError

    def _in_pool_thread(self) -> bool:
        raise NotImplementedError

    def _refusal(self) -> BaseException | None:
        """Why no task may be admitted at all right now, or ``None``."""
        if self.closed:
            return PoolClosedError(
                "this WorkerPool is shut down and takes no more work; create a new one, or "
                "use `with WorkerPool() as pool:` to tie a pool's life to a block"
            )
        return None

    def _admit(self, block: bool) -> None:
        """Return once a task may join the queue, or raise why not. The caller holds the lock."""
        while True:
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
            if self._max_queue is None or self._pending_count() < self._max_queue:
                return
            if self._in_pool_thread():
                return  # a task or done-callback of this pool: waiting could stop what makes room
            if not block:
                raise QueueFullError(
                    f"the pool's queue is full: {self._pending_count()} tasks wait for a worker "
                    f"(max_queue={self._max_queue}). Collect some results before submitting more, "
                    "raise max_queue, or create the pool with on_full='wait' to block until there is room."
                )
            self._room.wait()


class _CancelsTasks(Protocol):
    """What a :class:`TaskFuture` asks of the backend that runs its task."""

    def forget_pending(self, task: Any) -> None: ...

    def stop_running(self, task: Any) -> bool: ...


# --------------------------------------------------------------------------------------------
# futures that can be cancelled while running


class TaskFuture(Future):
    """The :class:`concurrent.futures.Future` of a process pool's task.

    ``cancel()`` keeps the standard contract: it succeeds while the task waits for a worker and
    returns ``False`` once the task runs. A running task can still be stopped, by the pool that
    runs it: :meth:`labkit.pool.WorkerPool.kill_task` kills its worker, and the future then ends
    cancelled.
    """

    def __init__(self, backend: _CancelsTasks, task: Any) -> None:
        super().__init__()
        self._backend = backend
        self._task = task

    def cancel(self) -> bool:
        """Cancel the task if it has not started; ``False`` if it runs or has finished."""
        task = self._task
        if super().cancel():
            self._backend.forget_pending(task)  # idempotent: counts each task once
            return True
        return False

    def _mark_cancelled(self) -> None:
        # Moving a RUNNING future to cancelled is not something Future offers, so this does what
        # Future.cancel() plus set_running_or_notify_cancel() would do for a pending one: change
        # the state, tell the waiters of concurrent.futures.wait / as_completed, run callbacks.
        with self._condition:
            if self._state != futures_base.RUNNING:
                return
            self._state = futures_base.CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]  # Future's own helper; typeshed omits it


def settle(future: Future, *, result=None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless it was cancelled (or settled) meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except futures_base.InvalidStateError:
        pass  # cancelled by its owner a moment ago: the owner no longer wants this outcome


def label(fn) -> str:
    """A short name for a callable in messages: ``count_primes()``, ``<lambda>()``."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{name}()"
