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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psutil

from .cores import measure_parallelism, usable_cores
from .errors import ConfigurationError

#: The kinds of :class:`~labkit.pool.WorkerPool` a sweep can run on.
PoolKind = Literal["process", "thread", "interpreter"]

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
    repeats: int = DEFAULT_REPEATS,
    label: str | None = None,
    progress: bool = False,
) -> SweepResult:
    """Run ``tasks`` calls of ``function(*args)`` on pools of each size in ``workers``.

    ``workers`` defaults to :func:`default_worker_counts`; ``kind`` is a
    :class:`~labkit.pool.WorkerPool` kind. Each point is repeated ``repeats`` times and the median
    run kept. ``progress=True`` shows a tqdm bar (a widget in a notebook, text on stderr elsewhere).
    The machine's delivered parallelism is measured first and stored with the result, to judge it by.
    """
    if tasks < 1 or repeats < 1:
        raise ConfigurationError("tasks and repeats must be at least 1")
    counts = list(workers) if workers is not None else default_worker_counts()
    if not counts or any(not isinstance(n, int) or n < 1 for n in counts):
        raise ConfigurationError(f"workers must be positive integers, got {counts!r}")
    cores = usable_cores().usable
    delivered = measure_parallelism(cores).delivered
    from ._progress import make_progress  # on use: a sweep without a bar never loads tqdm

    bar = make_progress(len(counts), "sweep") if progress else None
    points = []
    try:
        for n in counts:
            points.append(_run_point(function, tuple(args), tasks, n, kind, repeats))
            if bar is not None:
                bar.advance()
    finally:
        if bar is not None:
            bar.close(ok=len(points) == len(counts))
    name = str(label or getattr(function, "__name__", "task"))
    return SweepResult(label=name, kind=kind, tasks=tasks, points=tuple(points), usable=cores, delivered=delivered)


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
