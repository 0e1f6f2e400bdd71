"""Scaling sweeps: the same batch at several worker counts, measured the same way each time.

A sweep answers the article's rule of thumb with numbers from this machine: does throughput keep
growing past one worker per core, or only the context switches?

    for each worker count n in 1, 2, ..., 4 x usable cores:
        start a pool of n workers, warm it up (every worker runs a no-op once)
        repeat `repeats` times:
            read CPU time and context switches of the pool's processes
            run `tasks` tasks, wall-clock the batch
            read them again: the difference belongs to the batch
        keep the median run
        stop the pool (also when interrupted: no worker survives a sweep)

Context switches come from psutil: *voluntary* ones (a worker gave up the CPU: it waited for a
task, a lock, I/O) and *involuntary* ones (the scheduler took the CPU away because another runnable
process wanted it). With more busy workers than cores, involuntary switches climb: that is the
cost the rule of thumb warns about.

Any ``concurrent.futures.Executor`` can stand in for the WorkerPool: pass ``executor=`` either an
executor (one point, at its own size; the caller keeps it) or a factory ``executor(n)`` that
returns an executor, or a context manager that yields one, for each worker count (closed after its
point). Dask's ``client.get_executor(pure=False)`` is one: ``pure=False`` matters, because a pure
Dask executor computes identical calls once, and a batch of identical calls would measure nothing;
the sweep refuses such a batch. Without a pool to ask, the CPU time and context switches of an
executor's point are those of this process and every process it started (a local Dask cluster's
scheduler and workers, a process pool's workers), and task times come from a timer around each call.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

import psutil

from .cores import measure_parallelism, usable_cores
from .errors import ConfigurationError

#: The kinds of :class:`~labkit.pool.WorkerPool` a sweep can run on.
PoolKind = Literal["process", "thread", "interpreter"]

#: What ``sweep(executor=...)`` accepts: an executor, or a factory called with each worker count that
#: returns an executor or a context manager yielding one.
ExecutorSource = Executor | Callable[[int], Any]

__all__ = ["SweepPoint", "SweepResult", "sweep", "speedup", "default_worker_counts", "Verdict", "judge_speedup"]

# A point is repeated this many times and its median kept: three runs survive one disturbed run.
DEFAULT_REPEATS = 3


@dataclass(frozen=True)
class SweepPoint:
    """The median of the repeated runs at one worker count.

    Attributes:
        workers: pool size.
        seconds: wall time of the batch.
        throughput: tasks per second.
        cpu_seconds: CPU time the pool's processes spent on the batch (all workers together).
        voluntary_switches, involuntary_switches: context switches during the batch, summed over
            the pool's processes (threads: the whole process).
        task_p50_ms, task_p99_ms: how long single tasks ran, from the pool's own timing.
        runs: wall times of every repeat, to show the spread.
    """

    workers: int
    seconds: float
    throughput: float
    cpu_seconds: float
    voluntary_switches: int
    involuntary_switches: int
    task_p50_ms: float
    task_p99_ms: float
    runs: tuple[float, ...]


@dataclass(frozen=True)
class SweepResult:
    """A whole sweep, with what is needed to judge it: the machine and what it delivered."""

    label: str
    kind: str
    tasks: int
    points: tuple[SweepPoint, ...]
    usable: int
    delivered: float

    def point(self, workers: int) -> SweepPoint:
        """The point measured at ``workers``."""
        for p in self.points:
            if p.workers == workers:
                return p
        raise KeyError(f"no point at {workers} workers (measured: {[p.workers for p in self.points]})")

    def best(self) -> SweepPoint:
        """The point with the highest throughput."""
        return max(self.points, key=lambda p: p.throughput)

    def table(self) -> str:
        """A plain-text table of the points, for a notebook cell or a terminal."""
        base = self.points[0].throughput
        lines = [f"{self.label}: {self.tasks} tasks on {self.kind} pools; {self.usable} usable cores, "
                 f"{self.delivered:.2f} delivered when the sweep began",
                 " workers   seconds  tasks/s  speedup  CPU s  invol. switches  task p50 ms"]
        for p in self.points:
            lines.append(f"{p.workers:>8} {p.seconds:>9.3f} {p.throughput:>8.1f} {p.throughput / base:>8.2f} "
                         f"{p.cpu_seconds:>6.2f} {p.involuntary_switches:>16} {p.task_p50_ms:>12.1f}")
        return "\n".join(lines)


def default_worker_counts(usable: int | None = None) -> list[int]:
    """1, 2, ... up to the usable cores, then 2x, 3x and 4x usable: where the plateau shows."""
    usable = usable or usable_cores().usable
    counts = list(range(1, usable + 1)) + [2 * usable, 3 * usable, 4 * usable]
    return sorted(set(counts))


def _pool_processes(pool) -> list[psutil.Process]:
    if pool.kind == "thread":
        return [psutil.Process()]
    found = []
    for worker in pool.stats().workers:
        try:
            found.append(psutil.Process(worker.pid))
        except (psutil.Error, TypeError, ValueError):
            pass  # a slot between workers; it did no work
    return found


def _share_affinity(processes: list[psutil.Process]) -> None:
    """Give the pool's workers the CPU affinity of this process, as a forked child would have.

    Under ``forkserver`` a worker is forked from a server process started earlier, so it keeps
    the affinity the server had then, not the one the caller has now: a sweep run while pinned to
    one CPU would otherwise measure workers spread over every CPU (and report one usable core).
    """
    me = psutil.Process()
    if not hasattr(me, "cpu_affinity"):
        return  # macOS: no affinity to share
    try:
        wanted = me.cpu_affinity()
    except (psutil.Error, OSError):
        return
    for proc in processes:
        if proc.pid == me.pid:
            continue
        try:
            proc.cpu_affinity(wanted)
        except (psutil.Error, OSError, ValueError):
            pass  # a worker that just exited; it will run no task of this point


def _account(processes: list[psutil.Process]) -> tuple[float, int, int]:
    cpu, voluntary, involuntary = 0.0, 0, 0
    for proc in processes:
        try:
            times, switches = proc.cpu_times(), proc.num_ctx_switches()
        except psutil.Error:
            continue
        cpu += times.user + times.system
        voluntary += switches.voluntary
        involuntary += switches.involuntary
    return cpu, voluntary, involuntary


def _run_point(function, args, tasks: int, workers: int, kind: PoolKind, repeats: int) -> SweepPoint:
    from .pool import WorkerPool

    runs = []
    with WorkerPool(kind, workers=workers) as pool:
        list(pool.map(_noop_many, range(workers)))  # every worker is up before the clock starts
        processes = _pool_processes(pool)
        _share_affinity(processes)
        for _ in range(repeats):
            before = _account(processes)
            start = time.perf_counter()
            futures = [pool.submit(function, *args) for _ in range(tasks)]
            for future in futures:
                future.result()
            seconds = time.perf_counter() - start
            after = _account(processes)
            runs.append((seconds, *(a - b for a, b in zip(after, before))))
        run_times = pool.stats().run
    median_run = sorted(runs)[len(runs) // 2]
    seconds, cpu, voluntary, involuntary = median_run
    return SweepPoint(
        workers=workers, seconds=seconds, throughput=tasks / seconds, cpu_seconds=cpu,
        voluntary_switches=int(voluntary), involuntary_switches=int(involuntary),
        task_p50_ms=1e3 * run_times.p50, task_p99_ms=1e3 * run_times.p99,
        runs=tuple(r[0] for r in runs),
    )


def _noop_many(_: int) -> None:
    time.sleep(0.01)  # long enough that each warm-up task lands on a different worker


def sweep(
    function: Callable[..., Any],
    args: Sequence[Any] = (),
    *,
    tasks: int = 16,
    workers: Sequence[int] | None = None,
    kind: PoolKind = "process",
    executor: ExecutorSource | None = None,
    repeats: int = DEFAULT_REPEATS,
    label: str | None = None,
    progress: bool = False,
) -> SweepResult:
    """Run ``tasks`` calls of ``function(*args)`` on pools of each size in ``workers``.

    ``workers`` defaults to :func:`default_worker_counts`; ``kind`` is a
    :class:`~labkit.pool.WorkerPool` kind. Each point is repeated ``repeats`` times and the median
    run kept. ``progress=True`` shows a tqdm bar (a widget in a notebook, text on stderr elsewhere).
    The machine's delivered parallelism is measured first and stored with the result, to judge it by.

    ``executor`` replaces the WorkerPool (and ``kind``): an executor measured at its own size (say
    ``client.get_executor(pure=False)``; ``workers=[n]`` names its size when labkit cannot tell), or
    a factory ``executor(n)`` run for each count in ``workers``, whose executor (or context manager)
    is closed after its point.
    """
    if tasks < 1 or repeats < 1:
        raise ConfigurationError("tasks and repeats must be at least 1")
    if executor is not None and isinstance(executor, Executor):
        counts = _executor_counts(executor, workers)
    else:
        if executor is not None and not callable(executor):
            raise ConfigurationError(f"executor must be a concurrent.futures.Executor or a function of the worker "
                                     f"count that returns one, got {executor!r}")
        counts = list(workers) if workers is not None else default_worker_counts()
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
        raise ConfigurationError(f"workers must be positive integers, got {counts!r}")
    cores = usable_cores().usable
    delivered = measure_parallelism(cores).delivered
    from ._progress import make_progress  # on use: a sweep without a bar never loads tqdm

    bar = make_progress(len(counts), "sweep") if progress else None
    points = []
    shown_kind: str = kind
    try:
        for n in counts:
            if executor is None:
                points.append(_run_point(function, tuple(args), tasks, n, kind, repeats))
            elif isinstance(executor, Executor):
                shown_kind = type(executor).__name__
                points.append(_run_executor_point(executor, function, tuple(args), tasks, n, repeats))
            else:
                with _entered(executor(n), n) as made:
                    shown_kind = type(made).__name__
                    points.append(_run_executor_point(made, function, tuple(args), tasks, n, repeats))
            if bar is not None:
                bar.advance()
    finally:
        if bar is not None:
            bar.close(ok=len(points) == len(counts))
    name = str(label or getattr(function, "__name__", "task"))
    return SweepResult(label=name, kind=shown_kind, tasks=tasks, points=tuple(points), usable=cores,
                       delivered=delivered)


def _executor_counts(executor: Executor, workers: Sequence[int] | None) -> list[int]:
    """The one worker count an executor instance is measured at: the caller's, else its own size."""
    if workers is not None:
        counts = list(workers)
        if len(counts) != 1:
            raise ConfigurationError(f"an executor has one size, so workers= takes one count, got {counts!r}; "
                                     f"to measure several sizes, pass a function that builds an executor of n workers")
        return counts
    size = _executor_size(executor)
    if size is None:
        raise ConfigurationError(f"labkit cannot tell how many workers this {type(executor).__name__} has; "
                                 f"say so with workers=[n]")
    return [size]


def _executor_size(executor: Executor) -> int | None:
    size = getattr(executor, "workers", None)  # labkit's WorkerPool
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    size = getattr(executor, "_max_workers", None)  # the standard library's pools
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    client = getattr(executor, "_client", None)  # Dask's ClientExecutor: the threads of its cluster
    if client is not None and hasattr(client, "nthreads"):
        with contextlib.suppress(Exception):  # a client that cannot answer: the caller says the size
            return int(sum(client.nthreads().values())) or None
    return None


@contextlib.contextmanager
def _entered(made: Any, workers: int):
    """Enter what a factory returned: an executor is its own context manager (shut down on exit)."""
    if not hasattr(made, "__enter__"):
        raise ConfigurationError(f"the executor factory returned {made!r} for {workers} workers; it must return a "
                                 f"concurrent.futures.Executor or a context manager that yields one")
    with made as executor:
        if not isinstance(executor, Executor):
            raise ConfigurationError(f"the executor factory's context manager yielded {executor!r}, not a "
                                     f"concurrent.futures.Executor")
        yield executor


def _timed_call(function: Callable[..., Any], *args: Any) -> tuple[float, bytes]:
    """Run ``function(*args)`` wherever the executor runs it; return how long it took and a fresh token.

    The token is random per run, so the caller can tell calls that really ran from calls an executor
    answered from an earlier, identical one.
    """
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start, os.urandom(8)


def _our_processes() -> list[psutil.Process]:
    me = psutil.Process()
    try:
        return [me, *me.children(recursive=True)]
    except psutil.Error:
        return [me]


def _check_distinct(answers: list[tuple[float, bytes]], executor: Executor) -> None:
    """Refuse a batch the executor collapsed: identical calls answered by fewer runs than calls."""
    runs = len({token for _, token in answers})
    if runs < len(answers):
        raise ConfigurationError(
            f"{type(executor).__name__} answered {len(answers)} identical calls with {runs} run(s): it treats the "
            f"function as pure and computes each distinct call once, so the batch would measure nothing. With Dask, "
            f"use client.get_executor(pure=False)")


def _run_executor_point(executor: Executor, function, args, tasks: int, workers: int, repeats: int) -> SweepPoint:
    for warm in [executor.submit(_noop_many, i) for i in range(workers)]:
        warm.result()  # every worker has imported what a task needs before the clock starts
    processes = _our_processes()
    runs, task_times = [], []
    for _ in range(repeats):
        before = _account(processes)
        start = time.perf_counter()
        futures = [executor.submit(_timed_call, function, *args) for _ in range(tasks)]
        answers = [future.result() for future in futures]
        seconds = time.perf_counter() - start
        _check_distinct(answers, executor)
        times = [took for took, _ in answers]
        after = _account(processes)
        runs.append((seconds, *(a - b for a, b in zip(after, before))))
        task_times.extend(times)
    median_run = sorted(runs)[len(runs) // 2]
    seconds, cpu, voluntary, involuntary = median_run
    task_times.sort()
    return SweepPoint(
        workers=workers, seconds=seconds, throughput=tasks / seconds, cpu_seconds=cpu,
        voluntary_switches=int(voluntary), involuntary_switches=int(involuntary),
        task_p50_ms=1e3 * task_times[len(task_times) // 2],
        task_p99_ms=1e3 * task_times[min(len(task_times) - 1, int(0.99 * len(task_times)))],
        runs=tuple(r[0] for r in runs),
    )


def speedup(result: SweepResult) -> dict[int, float]:
    """Throughput at each worker count divided by the throughput of the first (fewest) workers."""
    base = result.points[0].throughput
    return {p.workers: p.throughput / base for p in result.points}


@dataclass(frozen=True)
class Verdict:
    """A judgement of a measured speedup against what the machine delivered.

    Attributes:
        shown: the expected speedup was shown.
        decidable: the machine delivered enough parallelism to show it at all; when ``False``,
            ``shown`` only says the result is consistent with what was delivered.
        text: a sentence for the student, free of numbers (safe to compare in stored notebooks).
    """

    shown: bool
    decidable: bool
    text: str


def judge_speedup(measured: float, delivered: float, *, fraction: float = 0.6, workers: int | None = None) -> Verdict:
    """Judge ``measured`` speedup against ``delivered`` parallelism (from measure_parallelism).

    Expect at least ``fraction`` of the extra parallelism the machine delivered (capped at
    ``workers`` when given): on 2 cores delivering 1.9, a speedup of 1 + 0.6 x 0.9 = 1.54 or more
    counts. When less than 1.3 cores were delivered, nothing can be shown either way, and the
    verdict says so instead of failing.
    """
    available = min(delivered, workers) if workers else delivered
    if available < 1.3:
        return Verdict(True, False, "consistent with the cores this machine delivered (too few to show a speedup)")
    expected = 1 + fraction * (available - 1)
    if measured >= expected:
        return Verdict(True, True, "it ran faster in proportion to the cores the machine delivered")
    return Verdict(False, True, "it did not speed up as much as the delivered cores allow")
