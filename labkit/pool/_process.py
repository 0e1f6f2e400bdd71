"""The process kind of :class:`labkit.pool.WorkerPool`: worker processes and their dispatcher.

The picture, the message formats and the tunable constants are described in :mod:`labkit.pool`
and :mod:`labkit.pool._worker`. Here is the machinery:

- ``submit`` (any thread) pickles the task, appends it to ``_pending`` and wakes the dispatcher.
- The dispatcher thread owns the worker processes. Each turn of its loop it hands pending tasks to
  idle workers, then sleeps in ``multiprocessing.connection.wait`` until a worker replies, a worker
  process ends, someone wakes it, or the nearest task deadline passes.
- One lock, ``_lock``, guards every field that other threads read or change: the queue, the
  slots' states and tasks, and the counters. Sending and receiving bytes happens outside it.
"""

from __future__ import annotations

import io
import linecache
import os
import pickle
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection, Pipe
from multiprocessing.connection import wait as wait_for_ready
from multiprocessing.process import BaseProcess
from typing import Any

import cloudpickle

from .._exits import RemoteTraceback
from ..errors import LabkitError
from . import _worker as worker
from ._base import (
    LIFECYCLE,
    Percentiles,
    PoolStats,
    QueueLimit,
    SlotTally,
    TaskExitError,
    TaskFuture,
    TaskSerializationError,
    TaskTimeoutError,
    TaskUnpicklingError,
    Tuning,
    WorkerCrashedError,
    WorkerStartError,
    WorkerState,
    describe_exit,
    settle,
)

# Why a running task stopped early; the dispatcher leaves such a task's future alone.
TIMED_OUT = "timed out"
CANCELLED = "cancelled"


class _Task:
    """One submitted call, from the queue to its outcome."""

    __slots__ = ("future", "payload", "name", "origin", "timeout", "submitted", "started", "deadline",
                 "slot", "stop_reason", "in_queue", "forgotten")

    def __init__(self, backend: ProcessBackend, payload: bytes, name: str, origin: Callable[..., Any],
                 timeout: float | None) -> None:
        self.future = TaskFuture(backend, self)
        self.payload: bytes | None = payload
        self.name = name
        self.origin: Callable[..., Any] | None = origin  # the user's function, to put source lines back into tracebacks
        self.timeout = timeout
        self.submitted = 0.0
        self.started = 0.0
        self.deadline: float | None = None
        self.slot: _Slot | None = None
        self.stop_reason: str | None = None
        self.in_queue = False
        self.forgotten = False  # counted as cancelled while pending


class _Slot(SlotTally):
    """A place for one worker process; a replacement takes the same slot and keeps its counts."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.state = WorkerState.NEW
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None  # set and cleared together with process
        self.conn_open = False
        self.pid: int | None = None
        self.task: _Task | None = None
        self.tasks_by_this_process = 0  # for max_tasks_per_child

    def move(self, new: WorkerState) -> None:
        """Move to ``new``; an illegal move raises :class:`labkit._exits.IllegalMoveError`."""
        self.state = LIFECYCLE.move(self.state, new, f"worker slot {self.index}")


class ProcessBackend(QueueLimit):
    """Worker processes fed one task at a time by a dispatcher thread (see :mod:`labkit.pool`)."""

    kind = "process"

    def __init__(self, *, workers: int, context, max_queue: int | None, on_full: str,
                 init_payload: worker.InitPayload | None, tuning: Tuning,
                 max_tasks_per_child: int | None = None) -> None:
        self.workers = workers
        self.context = context
        self._max_queue = max_queue
        self._on_full = on_full
        self._init_payload = init_payload
        self._max_tasks_per_child = max_tasks_per_child
        self._tuning = tuning
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified when the queue shrinks or closes
        self._pending: deque[_Task] = deque()
        self._pending_cancelled = 0  # cancelled tasks still sitting in _pending
        self._slots = [_Slot(i) for i in range(workers)]
        self._closing = False
        self._broken: WorkerStartError | None = None
        self._boot_failures = 0
        self._dispatcher: threading.Thread | None = None
        self._wake_lock = threading.Lock()
        self._wake_reader: Connection | None = None
        self._wake_writer: Connection | None = None
        self._wake_sent = False
        self._submitted = self._succeeded = self._raised = 0
        self._crashed = self._timed_out = self._cancelled = 0
        self._waits: deque[float] = deque(maxlen=tuning.stats_window)
        self._runs: deque[float] = deque(maxlen=tuning.stats_window)

    # ----------------------------------------------------------------------------------------
    # called from any thread

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict, *, name: str,
               timeout: float | None, block: bool, origin: Callable[..., Any] | None = None) -> Future:
        try:
            payload = cloudpickle.dumps((fn, args, kwargs))
        except (Exception, SystemExit) as exc:  # pickling raises many kinds
            error = _task_pickling_error(name, exc)
            if error is exc:
                raise
            raise error from exc
        task = _Task(self, payload, name, origin or fn, timeout)
        with self._lock:
            self._admit(block)
            if self._dispatcher is None:
                self._start()
            task.submitted = time.monotonic()
            task.in_queue = True
            self._pending.append(task)
            self._submitted += 1
        self._wake()
        return task.future

    def forget_pending(self, task: _Task) -> None:
        """A pending task's future was cancelled: stop counting it as waiting."""
        with self._lock:
            if task.forgotten:
                return
            task.forgotten = True
            self._cancelled += 1
            if task.in_queue:
                self._pending_cancelled += 1
                self._room.notify_all()

    def stop_running(self, task: _Task) -> bool:
        """Kill the worker running ``task`` (``WorkerPool.kill_task``); ``False`` if it is not running."""
        with self._lock:
            slot = task.slot
            if slot is None or slot.task is not task:
                return False
            if task.stop_reason is not None:
                return task.stop_reason == CANCELLED
            task.stop_reason = CANCELLED
            self._cancelled += 1
            if LIFECYCLE.allows(slot.state, WorkerState.STOPPING):
                slot.move(WorkerState.STOPPING)
            _kill(slot)
        return True

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closing = True
            self._room.notify_all()
            dispatcher = self._dispatcher
        if cancel_futures:
            self._cancel_pending()
        if dispatcher is None:
            return
        self._wake()
        if wait and threading.current_thread() is not dispatcher:
            dispatcher.join()

    def terminate(self) -> None:
        """Cancel everything, pending and running, and stop the workers now."""
        running = []
        with self._lock:
            self._closing = True
            self._room.notify_all()
            for slot in self._slots:
                task = slot.task
                if task is not None and task.stop_reason is None:
                    task.stop_reason = CANCELLED
                    self._cancelled += 1
                    if LIFECYCLE.allows(slot.state, WorkerState.STOPPING):
                        slot.move(WorkerState.STOPPING)
                    _kill(slot)
                    running.append(task)
            dispatcher = self._dispatcher
        self._cancel_pending()
        for task in running:
            task.future._mark_cancelled()
        if dispatcher is not None:
            self._wake()
            if threading.current_thread() is not dispatcher:
                dispatcher.join()

    def counts(self) -> tuple[int, int]:
        """(pending, running) right now."""
        with self._lock:
            return self._pending_count(), self._running_count()

    @property
    def closed(self) -> bool:
        """Whether the pool accepts no more work."""
        return self._closing

    def stats(self) -> PoolStats:
        with self._lock:
            workers = tuple(s.record(s.pid, s.state) for s in self._slots)
            waits, runs = list(self._waits), list(self._runs)
            pending = self._pending_count()
            running = self._running_count()
            counts = (self._submitted, self._succeeded, self._raised, self._crashed,
                      self._timed_out, self._cancelled)
        return PoolStats(self.kind, workers, pending, running, *counts,
                         wait=Percentiles.of(waits), run=Percentiles.of(runs))

    # ----------------------------------------------------------------------------------------
    # queue bookkeeping (with _lock held)

    def _pending_count(self) -> int:
        return len(self._pending) - self._pending_cancelled

    def _running_count(self) -> int:
        return sum(s.task is not None and s.task.stop_reason is None for s in self._slots)

    def _refusal(self) -> BaseException | None:
        if self._broken is not None:  # checked first: a broken pool is closed too, and says why
            error = WorkerStartError(str(self._broken))
            error.__cause__ = self._broken.__cause__
            return error
        return super()._refusal()

    def _in_pool_thread(self) -> bool:
        return threading.current_thread() is self._dispatcher

    def _next_task(self) -> _Task | None:
        """Pop the next task that still wants to run; drop cancelled ones on the way."""
        while self._pending:
            task = self._pending.popleft()
            task.in_queue = False
            if task.forgotten:
                self._pending_cancelled -= 1
            if task.future.set_running_or_notify_cancel():
                return task
            if not task.forgotten:  # cancelled a moment ago; forget_pending has not run yet
                task.forgotten = True
                self._cancelled += 1
        return None

    def _cancel_pending(self) -> None:
        with self._lock:
            tasks = list(self._pending)
            self._pending.clear()
            self._pending_cancelled = 0
            for task in tasks:
                task.in_queue = False
            self._room.notify_all()
        for task in tasks:
            if Future.cancel(task.future):
                task.future.set_running_or_notify_cancel()  # tells wait()/as_completed waiters
        with self._lock:
            for task in tasks:
                if not task.forgotten:
                    task.forgotten = True
                    self._cancelled += 1

    # ----------------------------------------------------------------------------------------
    # start-up (with _lock held)

    def _start(self) -> None:
        self._wake_reader, self._wake_writer = Pipe(duplex=False)
        try:
            for slot in self._slots:
                self._start_worker(slot)
        except BaseException:
            for slot in self._slots:
                if slot.process is not None:
                    slot.process.kill()
                    slot.process.join()
                    assert slot.conn is not None, "a slot's process and connection are set together"
                    slot.conn.close()
                    slot.process = slot.conn = None
                    slot.state = WorkerState.NEW
            self._wake_reader.close()
            self._wake_writer.close()
            self._wake_reader = self._wake_writer = None
            raise
        self._dispatcher = threading.Thread(target=self._serve, name="labkit-pool-dispatcher", daemon=True)
        self._dispatcher.start()

    def _start_worker(self, slot: _Slot) -> None:
        parent_end, child_end = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=worker.serve,
            args=(child_end, os.getpid(), self._init_payload),
            name=f"labkit-pool-worker-{slot.index}",
            daemon=True,  # multiprocessing terminates daemonic children when this process exits
        )
        try:
            process.start()
        finally:
            child_end.close()  # ours; the worker has its own copy now, and EOF needs ours gone
        if slot.state is WorkerState.EXITED:
            slot.restarts += 1
        slot.move(WorkerState.STARTING)
        slot.process, slot.conn, slot.conn_open, slot.pid = process, parent_end, True, process.pid
        slot.tasks_by_this_process = 0

    # ----------------------------------------------------------------------------------------
    # the dispatcher thread

    def _serve(self) -> None:
        try:
            while self._turn():
                pass
        except BaseException as exc:
            self._fail_everything(LabkitError(f"the pool's dispatcher stopped unexpectedly: {exc!r}"))
            raise
        finally:
            self._stop_workers()

    def _turn(self) -> bool:
        """One turn of the dispatcher: hand out tasks, sleep, handle what woke it. ``False``: done.

        A method of its own so that its locals (the tasks it just sent, with their functions and
        arguments) die at the end of each turn instead of living until the next task is sent.
        """
        with self._lock:
            if self._finished():
                return False
            assigned = self._assign()
            waitables = self._waitables()
            timeout = self._seconds_to_next_deadline()
        self._send_all(assigned)
        del assigned
        ready = wait_for_ready(waitables, timeout)
        self._handle(ready)
        self._expire_deadlines()
        return True

    def _finished(self) -> bool:
        if not self._closing or any(slot.task is not None for slot in self._slots):
            return False
        if self._pending_count() > 0:
            return False
        self._next_task()  # only cancelled tasks are left: tell their waiters, empty the queue
        return True

    def _assign(self) -> list[tuple[_Slot, _Task]]:
        assigned = []
        now = time.monotonic()
        for slot in self._slots:
            if slot.state is not WorkerState.IDLE:
                continue
            task = self._next_task()
            if task is None:
                break
            slot.move(WorkerState.BUSY)
            slot.task, task.slot, task.started = task, slot, now
            if task.timeout is not None:
                task.deadline = now + task.timeout
            assigned.append((slot, task))
        if assigned:
            self._room.notify_all()
        return assigned

    def _waitables(self) -> list:
        objects: list = [self._wake_reader]
        for slot in self._slots:
            if slot.process is not None:
                objects.append(slot.process.sentinel)
                if slot.conn_open:
                    objects.append(slot.conn)
        return objects

    def _seconds_to_next_deadline(self) -> float | None:
        deadlines = [s.task.deadline for s in self._slots
                     if s.task is not None and s.task.deadline is not None and s.task.stop_reason is None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _send_all(self, assigned: list[tuple[_Slot, _Task]]) -> None:
        for slot, task in assigned:
            self._send(slot, task)

    def _send(self, slot: _Slot, task: _Task) -> None:
        payload, task.payload = task.payload, None
        assert payload is not None, "a task is sent once, and only the dispatcher sends"
        assert slot.conn is not None, "an idle slot's worker runs; only the dispatcher reaps it"
        try:
            slot.conn.send_bytes(payload)
        except OSError:
            slot.conn_open = False  # the worker is gone; _handle reaps it and fails the task

    def _handle(self, ready: list) -> None:
        reader = self._wake_reader  # changed only on this thread: by _start before it, at its end
        if reader is not None and reader in ready:
            with self._wake_lock:
                while reader.poll():
                    reader.recv_bytes()
                self._wake_sent = False
        # Decide per slot from this one snapshot: after a reap, a new worker's file descriptors
        # may reuse the numbers of the old one's, and must not be mistaken for ready.
        events = [(slot, slot.conn_open and slot.conn in ready,
                   slot.process is not None and slot.process.sentinel in ready)
                  for slot in self._slots]
        for slot, message_ready, ended in events:
            if message_ready:
                self._read(slot)
            if slot.process is not None and (ended or not slot.conn_open):
                self._reap(slot)

    def _read(self, slot: _Slot) -> None:
        conn = slot.conn
        assert conn is not None, "called only while conn_open, when the slot has its connection"
        try:
            while slot.conn_open and conn.poll():
                message = pickle.loads(conn.recv_bytes())
                if message[0] in (worker.RESULT_BUFFERS, worker.RESULT_BYTES):
                    message = _receive_raw(conn, message)
                self._on_message(slot, message)
                del message
        except (EOFError, OSError):
            slot.conn_open = False

    def _on_message(self, slot: _Slot, message: tuple) -> None:
        tag = message[0]
        if tag == worker.READY:
            with self._lock:
                if slot.state is WorkerState.STARTING:
                    slot.move(WorkerState.IDLE)
                    self._boot_failures = 0
        elif tag == worker.INIT_FAILED:
            _, _, type_name, text, tb = message
            error = WorkerStartError(
                f"the pool's initializer raised {type_name}: {text}. No task can run until it "
                "works; fix it (its traceback is above) and create a new pool."
            )
            error.__cause__ = RemoteTraceback(tb)
            self._break(error)
        else:
            self._finish(slot, message)

    def _finish(self, slot: _Slot, message: tuple) -> None:
        now = time.monotonic()
        task = slot.task
        if task is None:
            return
        result, error = _decode(task, message)
        task.origin = None  # the user's function (and what it holds) is no longer needed here
        with self._lock:
            if slot.task is not task or task.stop_reason is not None:
                return  # timed out or cancelled while the reply was on its way
            slot.task = None
            slot.move(WorkerState.IDLE)
            slot.tasks_by_this_process += 1
            retire = (self._max_tasks_per_child is not None
                      and slot.tasks_by_this_process >= self._max_tasks_per_child)
            if retire:
                slot.move(WorkerState.STOPPING)  # _reap starts its successor once it has exited
            run = now - task.started
            slot.count_task(run)
            self._waits.append(task.started - task.submitted)
            self._runs.append(run)
            if message[0] == worker.RESULT:
                self._succeeded += 1
            else:
                self._raised += 1
        if retire:
            _ask_to_stop(slot)
        _settle(task, result=result, error=error)

    def _reap(self, slot: _Slot) -> None:
        process, conn = slot.process, slot.conn
        assert process is not None and conn is not None, "_handle reaps only a slot with a process"
        if slot.conn_open:
            self._read(slot)  # a reply sent just before the end still counts
        process.join(self._tuning.reap_grace)
        if process.exitcode is None:  # closed its pipe but lingers: finish it
            process.kill()
            process.join()
        exitcode = process.exitcode
        with self._lock:
            task, slot.task = slot.task, None
            if task is not None:
                task.origin = None
            boot_failed = slot.state is WorkerState.STARTING
            slot.move(WorkerState.EXITED)
            crashed = task is not None and task.stop_reason is None
            if crashed:
                self._crashed += 1
            if boot_failed:
                self._boot_failures += 1
        conn.close()
        process.close()
        slot.process = slot.conn = None
        slot.conn_open = False
        if crashed:
            assert task is not None, "crashed means a task was running"
            _settle(task, error=WorkerCrashedError(
                f"the worker process running {task.name} (pid {slot.pid}) died: "
                f"{_sentence(describe_exit(exitcode))} Only this task failed; a new worker took its place.",
                pid=slot.pid, exitcode=exitcode))
        if boot_failed and self._boot_failures >= self._tuning.max_boot_failures:
            self._break(WorkerStartError(
                f"{self._boot_failures} worker processes in a row died while starting (the last "
                f"{describe_exit(exitcode)}). Their stderr (the terminal, or the Jupyter server's "
                "log) shows why. Under 'spawn' and 'forkserver' every worker imports your main "
                "module: in a script, put the code that uses the pool under "
                "`if __name__ == '__main__':`."))
            return
        with self._lock:
            if self._broken is not None or (self._closing and self._pending_count() == 0):
                return  # nothing left for a new worker to do
            try:
                self._start_worker(slot)
                return
            except Exception as exc:  # noqa: BLE001 - e.g. out of file descriptors or memory
                error = WorkerStartError(f"could not start a replacement worker: {exc!r}")
        self._break(error)

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        expired = []
        with self._lock:
            for slot in self._slots:
                task = slot.task
                if (task is not None and task.stop_reason is None and task.deadline is not None
                        and now >= task.deadline):
                    task.stop_reason = TIMED_OUT
                    task.origin = None
                    self._timed_out += 1
                    slot.move(WorkerState.STOPPING)
                    _kill(slot)
                    expired.append(task)
        for task in expired:
            _settle(task, error=TaskTimeoutError(
                f"{task.name} ran longer than its timeout of {task.timeout:g} s, so its worker was "
                "stopped and replaced. Give it more time (WorkerPool(timeout=...), or "
                "submit_with(..., timeout=...)) or split the work into smaller tasks."))

    def _break(self, error: WorkerStartError) -> None:
        """Workers cannot start: fail what waits, refuse new work, finish what runs."""
        with self._lock:
            if self._broken is not None:
                return
            self._broken = error
            self._closing = True
            tasks = list(self._pending)
            self._pending.clear()
            self._pending_cancelled = 0
            self._room.notify_all()
        for task in tasks:
            task.in_queue = False
            _settle(task, error=error)

    def _fail_everything(self, error: BaseException) -> None:
        with self._lock:
            self._closing = True
            tasks = list(self._pending) + [s.task for s in self._slots if s.task is not None]
            self._pending.clear()
            self._pending_cancelled = 0
            for slot in self._slots:
                slot.task = None
            self._room.notify_all()
        for task in tasks:
            _settle(task, error=error)

    def _stop_workers(self) -> None:
        """Ask every worker to exit, give them a moment, then insist."""
        slots = [slot for slot in self._slots if slot.process is not None]
        with self._lock:
            for slot in slots:
                if LIFECYCLE.allows(slot.state, WorkerState.STOPPING):
                    slot.move(WorkerState.STOPPING)
        # This thread alone starts and reaps workers, so these stay as they are until the end.
        workers = []
        for slot in slots:
            process, conn = slot.process, slot.conn
            assert process is not None and conn is not None, "a slot's process and connection go together"
            workers.append((slot, process, conn))
        for slot, _, conn in workers:
            if slot.conn_open:
                try:
                    conn.send_bytes(worker.STOP)
                except OSError:
                    pass  # already gone
        deadline = time.monotonic() + self._tuning.shutdown_grace
        for _, process, _ in workers:
            process.join(max(0.0, deadline - time.monotonic()))
        for _, process, _ in workers:
            if process.exitcode is None:
                process.terminate()
                process.join(1.0)
            if process.exitcode is None:
                process.kill()
                process.join()
        with self._lock:
            for slot, process, conn in workers:
                slot.move(WorkerState.EXITED)
                conn.close()
                process.close()
                slot.process = slot.conn = None
                slot.conn_open = False
        with self._wake_lock:
            reader, writer = self._wake_reader, self._wake_writer
            assert reader is not None and writer is not None, "_start opened them before this thread ran"
            reader.close()
            writer.close()
            self._wake_reader = self._wake_writer = None

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_writer is None or self._wake_sent:
                return
            self._wake_sent = True
            try:
                self._wake_writer.send_bytes(b"!")
            except OSError:
                pass  # the dispatcher has exited: nobody left to wake


def _task_pickling_error(name: str, exc: BaseException) -> BaseException:
    """What ``submit`` raises when a task does not pickle: catchable as what pickling raised.

    ``ProcessPoolExecutor`` fails such a task with the pickling error itself. A ``TypeError`` or
    ``PicklingError`` (the usual kinds) becomes a :class:`TaskSerializationError`, which is both;
    another error is raised as itself with the advice as a note; a ``SystemExit`` from a
    ``__reduce__`` becomes :class:`TaskExitError`, so that it cannot end a notebook's kernel.
    """
    advice = (f"cannot send {name} to a worker process: {exc}. The function and its arguments "
              "travel by pickle; locks, open files, sockets and generators cannot. Pass plain "
              "data, and create such objects inside the task.")
    if isinstance(exc, (TypeError, pickle.PicklingError)):
        return TaskSerializationError(advice)
    if isinstance(exc, Exception):
        if sys.version_info >= (3, 11):  # add_note is 3.11+; on 3.10 the error is raised without it
            exc.add_note(advice)
        return exc
    return TaskExitError(f"pickling {name} raised {type(exc).__name__}({exc}) in this process; "
                         "it was stopped so that it cannot end the program")


def _sentence(text: str) -> str:
    return text if text.endswith(("?", "!", ".")) else text + "."


def _settle(task: _Task, *, result: Any = None, error: BaseException | None = None) -> None:
    """Give ``task``'s future its outcome, then cut the future's link back to the task.

    The future and the task point at each other; once the outcome is set, the future no longer
    needs the task, and without the cycle a result is freed as soon as its reader drops it.
    """
    future = task.future
    settle(future, result=result, error=error)
    task.origin = None
    future._task = None


def _ask_to_stop(slot: _Slot) -> None:
    conn = slot.conn
    if conn is None:
        return  # already gone: _reap handles it the same way
    try:
        conn.send_bytes(worker.STOP)
    except (OSError, AttributeError):
        pass  # already gone: _reap handles it the same way


def _kill(slot: _Slot) -> None:
    process = slot.process
    if process is None:
        return  # already reaped
    try:
        process.kill()
    except (OSError, ValueError, AttributeError):
        pass  # already reaped or closed


def _decode(task: _Task, message: tuple) -> tuple[Any, BaseException | None]:
    """Turn a worker's reply into (result, None) or (None, exception with its remote traceback).

    Runs on the dispatcher thread, so nothing that unpickling raises, not even ``SystemExit``,
    may escape: it becomes that one task's :class:`TaskUnpicklingError`.
    """
    name = task.name
    if message[0] in (worker.RESULT, worker.RESULT_BUFFERS, worker.RESULT_BYTES):
        try:
            if message[0] == worker.RESULT_BYTES:
                return message[1], None
            if message[0] == worker.RESULT_BUFFERS:
                return pickle.loads(message[1], buffers=message[2]), None
            return pickle.loads(message[1]), None
        except BaseException as exc:  # noqa: BLE001 - a result's __reduce__ may raise anything
            return None, _unpickling_error(
                f"the result of {name} could not be unpickled here: {exc!r}. Only this task "
                "failed; the pool keeps serving.", exc)
    _, exc_bytes, type_name, text, tb = message
    if message[0] == worker.UNPICKLE_FAILED:
        original = _load_exception(exc_bytes)
        if original is not None:
            original.__cause__ = RemoteTraceback(tb)
        return None, _unpickling_error(
            f"{name} could not be unpickled in its worker: {type_name}: {text}. A class or module "
            "it needs may be missing there, or an argument's __reduce__ failed. Only this task "
            "failed; the pool keeps serving.", original if original is not None else RemoteTraceback(tb))
    error = _load_exception(exc_bytes)
    if not isinstance(error, Exception):
        if isinstance(error, BaseException):  # SystemExit, KeyboardInterrupt
            error = TaskExitError(f"{name} raised {type_name}({text}) in its worker")
        elif exc_bytes is None:  # it did not pickle in the worker: ProcessPoolExecutor says so too
            error = TaskSerializationError(
                f"{name} raised {type_name}: {text} (the exception could not be pickled to be sent "
                "back; its traceback is above)")
        else:  # it did not unpickle here: ProcessPoolExecutor calls its pool broken
            error = TaskUnpicklingError(
                f"{name} raised {type_name}: {text} (the exception could not be unpickled here, "
                "for instance a class whose __init__ wants other arguments; its traceback is "
                "above). Only this task failed; the pool keeps serving.")
    error.__cause__ = RemoteTraceback(_restore_sources(tb, task.origin))
    return None, error


def _receive_raw(conn: Connection, header: tuple) -> tuple:
    """Read the raw data that follows a big result's header, each buffer into its final memory.

    Buffers of an array land in a ``bytearray`` that the unpickled array then uses as it is
    (writable, like any array). A ``bytes`` result lands in the buffer of a ``BytesIO`` whose
    ``getvalue()`` then hands over that very buffer as the ``bytes`` object, without a copy.
    """
    fd = conn.fileno()
    if header[0] == worker.RESULT_BYTES:
        size = header[1]
        sink = io.BytesIO()
        if size:
            sink.seek(size - 1)
            sink.write(b"\0")  # sizes its buffer once, exactly
            with sink.getbuffer() as view:
                worker.read_into(fd, view)
        return (worker.RESULT_BYTES, sink.getvalue())
    tag, stream, sizes = header
    buffers = []
    for size in sizes:
        buffer = bytearray(size)
        worker.read_into(fd, memoryview(buffer))
        buffers.append(buffer)
    return (tag, stream, buffers)


def _load_exception(exc_bytes: bytes | None) -> BaseException | None:
    """The exception a worker sent, or ``None`` if it did not come or does not unpickle here."""
    if exc_bytes is None:
        return None
    try:
        error = pickle.loads(exc_bytes)
    except BaseException:  # noqa: BLE001 - e.g. a class whose __init__ wants other arguments
        return None
    return error if isinstance(error, BaseException) else None


def _unpickling_error(message: str, cause: BaseException) -> TaskUnpicklingError:
    error = TaskUnpicklingError(message)
    error.__cause__ = cause
    return error


# cloudpickle renames the file of every function it sends by value (a notebook's, a lambda) to
# "<dynamic-code>", so the worker's traceback cannot show their source lines. Line numbers and
# names survive, and the parent still has the originals: put file and line back where they match.
_DYNAMIC_FRAME = re.compile(r'^  File "<dynamic-code>", line (\d+), in (\S+)$', re.MULTILINE)


def _restore_sources(text: str, origin: Callable[..., Any] | None) -> str:
    if "<dynamic-code>" not in text:
        return text
    files: dict[str, str] = {}
    namespace = getattr(origin, "__globals__", {})
    for obj in [origin, *list(namespace.values())]:
        code = getattr(obj, "__code__", None)
        if code is not None:
            files.setdefault(code.co_name, code.co_filename)

    def restore(match: re.Match) -> str:
        lineno, function = int(match[1]), match[2]
        filename = files.get(function)
        if filename is None:
            return match[0]
        line = linecache.getline(filename, lineno).strip()
        return f'  File "{filename}", line {lineno}, in {function}' + (f"\n    {line}" if line else "")

    return _DYNAMIC_FRAME.sub(restore, text)
