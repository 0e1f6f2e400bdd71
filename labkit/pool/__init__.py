"""One pool API over threads, processes and (Python 3.14+) interpreters: :class:`WorkerPool`.

Picture a kitchen. Orders (tasks) go on a rail (the pending queue); one expediter (the dispatcher
thread) hands each free cook (worker) exactly one order at a time and watches them all. If a cook
collapses, only the dish in their hands is lost: the expediter reports it and calls in a new cook.
If a dish takes too long, or the customer calls it off, the expediter sends that cook home and calls
in a fresh one. This is Node's piscina or ``cluster`` idea, for Python functions.

The process kind, who sends what to whom::

    your threads                   dispatcher thread (one per pool)        worker processes
    ────────────                   ────────────────────────────────        ────────────────
    submit(fn, *args)
      │ cloudpickle(fn, args, kwargs)
      ▼
    pending queue ── wake pipe ──▶ sleeps in connection.wait() on: the
    (max_queue; on_full =          wake pipe, every worker's pipe, every
     "wait" | "raise")             worker's process sentinel, and the
                                   nearest task deadline
                                        │
                                        ├── task bytes ───── pipe 0 ──▶ worker 0: run one task,
                                        │◀─ ready | result | raised ──  reply, wait for the next
                                        │   (+ traceback text)
                                        ├── task bytes ───── pipe 1 ──▶ worker 1: ...
                                        │
    future.result() ◀── set_result ─────┤
      or raise error from               │
      RemoteTraceback(worker's text)    │
                                        ├── sentinel fires: it died ──▶ its task fails with
                                        │                               WorkerCrashedError; a new
                                        │                               worker takes the slot
                                        ├── deadline passed, or ──────▶ SIGKILL that worker; its task
                                        │   kill_task() while running   fails with TaskTimeoutError
                                        │                               or is cancelled; new worker
                                        └── shutdown ──── b"" (stop) ─▶ each exits; join; kill what
                                                                        lingers

    Each worker ignores SIGINT (the parent decides what Ctrl-C means) and runs
    labkit._lifeline.watch_parent(), so it exits when the pool's process dies.

Only one task is in flight per worker: a worker gets its next task after it has replied. That
costs one pipe round-trip per task (tens of microseconds), and buys exact failure semantics: a
crash or a timeout loses exactly the one task that caused it, and a long task never holds short
ones hostage behind it. For many tiny tasks, ``map(..., chunksize=n)`` sends n calls per trip.

What a result costs: a small one is pickled in the worker and unpickled here, as usual. A big
numpy array (any buffer of 1 MiB or more that pickle protocol 5 can hand out of band) or a big
``bytes`` result is not copied into a pickle: the worker writes it straight from its memory and
the dispatcher reads it straight into the memory the result keeps, so receiving an N-byte result
adds about N bytes to this process, not two or three times that (``benchmarks/bench_pool.py big``
measures it). The worker holds its own N bytes until it has sent them.

Functions and arguments travel with cloudpickle, so functions and lambdas defined in a notebook
(module ``__main__``) work under every start method; importable functions go by name as usual.
The thread kind runs tasks in this process (nothing pickled, nothing killable); the interpreter
kind uses the standard library's ``InterpreterPoolExecutor``.
"""

from __future__ import annotations

from ._executor import (
    Percentiles,
    PoolClosedError,
    PoolStats,
    QueueFullError,
    RemoteTraceback,
    TaskExitError,
    TaskFuture,
    TaskSerializationError,
    TaskTimeoutError,
    TaskUnpicklingError,
    WorkerCrashedError,
    WorkerPool,
    WorkerStartError,
    WorkerState,
    WorkerStats,
    describe_exit,
)

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
