"""The thread and interpreter kinds of :class:`labkit.pool.WorkerPool`: a thin layer on the
standard executors that adds the pool's queue limit and statistics.

Threads run in this process, so nothing is pickled and the task's traceback stays intact. But a
running thread cannot be stopped from outside: no timeouts, and ``cancel()`` only works before the
task starts. Interpreters (Python 3.14+) run each task in a sub-interpreter of this process; the
standard executor pickles functions by reference, so they must be importable (not defined in a
notebook), and they hide their workers, so only counts are reported for them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ._base import (
    Percentiles,
    PoolStats,
    QueueLimit,
    SlotTally,
    TaskExitError,
    Tuning,
    WorkerState,
    label,
)


class _ThreadSlot(SlotTally):
    """One thread of the executor, found when it first runs a task; threads are never replaced."""

    def __init__(self, index: int, name: str) -> None:
        super().__init__(index, name)
        self.busy = False


class ExecutorBackend(QueueLimit):
    """Threads (``ThreadPoolExecutor``) or interpreters (``InterpreterPoolExecutor``)."""

    def __init__(self, *, kind: str, workers: int, max_queue: int | None, on_full: str,
                 initializer: Callable[..., Any] | None, initargs: tuple, tuning: Tuning) -> None:
        self.kind = kind
        self.workers = workers
        self._max_queue = max_queue
        self._on_full = on_full
        self._prefix = f"labkit-{kind}-{id(self):x}"
        if kind == "thread":
            factory = ThreadPoolExecutor
        elif sys.version_info >= (3, 14):
            from concurrent.futures import InterpreterPoolExecutor

            factory = InterpreterPoolExecutor
        else:  # WorkerPool checks the version first; this is for a backend made by hand
            raise ImportError("cannot import name 'InterpreterPoolExecutor' from 'concurrent.futures' (Python 3.14+)")
        self._executor = factory(max_workers=workers, thread_name_prefix=self._prefix,
                                 initializer=initializer, initargs=initargs)
        self._timed = kind == "thread"  # a sub-interpreter cannot call back into our bookkeeping
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._closed = False
        self._outstanding = 0  # submitted and not done
        self._queued = 0  # submitted and not started (threads only)
        self._running = 0
        self._slots: dict[int, _ThreadSlot] = {}
        self._submitted = self._succeeded = self._raised = self._cancelled = 0
        self._waits: deque[float] = deque(maxlen=tuning.stats_window)
        self._runs: deque[float] = deque(maxlen=tuning.stats_window)

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict, *, name: str,
               timeout: float | None, block: bool, origin: Callable[..., Any] | None = None) -> Future:
        with self._lock:
            self._admit(block)
            self._outstanding += 1
            self._queued += self._timed
            self._submitted += 1
        try:
            if self._timed:
                future = self._executor.submit(self._run, fn, args, kwargs, time.monotonic())
            else:
                future = self._executor.submit(fn, *args, **kwargs)
        except BaseException:
            with self._lock:
                self._outstanding -= 1
                self._queued -= self._timed
                self._submitted -= 1
                self._room.notify_all()
            raise
        future.add_done_callback(self._on_done)
        return future

    def _pending_count(self) -> int:
        if self._timed:
            return self._queued
        return max(0, self._outstanding - self.workers)  # interpreters: an estimate

    def _in_pool_thread(self) -> bool:
        return threading.current_thread().name.startswith(self._prefix)

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict, submitted: float) -> Any:
        started = time.monotonic()
        thread = threading.current_thread()
        with self._lock:
            self._queued -= 1
            self._running += 1
            ident = threading.get_ident()  # thread.ident, which mypy types as int | None
            slot = self._slots.get(ident)
            if slot is None:
                slot = self._slots[ident] = _ThreadSlot(len(self._slots), thread.name)
            slot.busy = True
            self._room.notify_all()
        try:
            return fn(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt) as exc:
            # As in the process kind: sys.exit() in a task fails the task, never the caller.
            raise TaskExitError(f"{label(fn)} raised {type(exc).__name__}({exc}) in its thread") from exc
        finally:
            ended = time.monotonic()
            with self._lock:
                self._running -= 1
                slot.busy = False
                slot.count_task(ended - started)
                self._waits.append(started - submitted)
                self._runs.append(ended - started)

    def _on_done(self, future: Future) -> None:
        with self._lock:
            self._outstanding -= 1
            if future.cancelled():
                self._cancelled += 1
                self._queued -= self._timed  # it never started
            elif future.exception() is not None:
                self._raised += 1
            else:
                self._succeeded += 1
            self._room.notify_all()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            self._room.notify_all()
        self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)

    def terminate(self) -> None:
        """Cancel what has not started; running threads cannot be stopped and finish on their own."""
        self.shutdown(wait=False, cancel_futures=True)

    @property
    def closed(self) -> bool:
        """Whether the pool accepts no more work."""
        return self._closed

    def counts(self) -> tuple[int, int]:
        with self._lock:
            if self._timed:
                return self._queued, self._running
            return self._pending_count(), min(self._outstanding, self.workers)

    def stats(self) -> PoolStats:
        with self._lock:
            pid = os.getpid()
            workers = tuple(s.record(pid, WorkerState.BUSY if s.busy else WorkerState.IDLE)
                            for s in sorted(self._slots.values(), key=lambda s: s.index))
            waits, runs = list(self._waits), list(self._runs)
            pending, running = (self._queued, self._running) if self._timed else (
                self._pending_count(), min(self._outstanding, self.workers))
            counts = (self._submitted, self._succeeded, self._raised, 0, 0, self._cancelled)
        return PoolStats(self.kind, workers, pending, running, *counts,
                         wait=Percentiles.of(waits), run=Percentiles.of(runs))
