"""A CPU-bound sweep from 1 to 4 x usable cores: where throughput plateaus, and what the extra
workers cost in involuntary context switches and per-task time (lab 06, claim C13).

The worker counts are timed in turns, round after round (1, 2, 4, 8, then 2, 4, 8, 1, ...), and
every speedup is a per-round paired ratio: a count's throughput divided by the one-worker
throughput *of the same round*. A burst of background load then touches both sides of a ratio
instead of one point of the curve (a disturbed one-worker run once gave x2.26 on two cores, above
the physical limit). The tables give the min, median and max of those ratios, so the spread shows.

Run on an otherwise idle machine: ``python benchmarks/run.py scaling``.
"""

from __future__ import annotations

import statistics

from labkit.cores import usable_cores
from labkit.measure import sweep
from labkit.workloads import count_primes

# count_primes(60_000): about 0.1 s of pure Python per task, long against pool overheads.
LIMIT = 60_000
REPEATS = 5  # rounds; each round times every worker count once


def _spread(values: list[float]) -> str:
    """``median (min-max)`` of some ratios."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _rounds(counts: list[int], tasks: int) -> dict[int, list]:
    """One sweep point per count and round, the counts timed in a rotating order."""
    points: dict[int, list] = {n: [] for n in counts}
    for round_ in range(REPEATS):
        shift = round_ % len(counts)
        for n in counts[shift:] + counts[:shift]:
            result = sweep(count_primes, (LIMIT,), tasks=tasks, workers=[n], repeats=1, label="count_primes")
            points[n].append((result.point(n), result.delivered))
    return points


def run() -> str:
    """The sweep, as a Markdown section."""
    usable = usable_cores().usable
    counts = sorted({1, usable, 2 * usable, 4 * usable})
    tasks = 16 * usable  # a multiple of every worker count: no worker idles at the end
    points = _rounds(counts, tasks)
    ones = [p.throughput for p, _ in points[1]]
    at_cores = [p.throughput for p, _ in points[usable]]
    delivered = [d for n in counts for _, d in points[n]]
    lines = [
        "## Scaling sweep: one core, one worker",
        "",
        f"{tasks} tasks of count_primes({LIMIT:,}) on process pools; {REPEATS} rounds, each timing every worker "
        f"count once, in turns; {usable} usable cores; delivered parallelism before each run "
        f"{min(delivered):.2f}-{max(delivered):.2f}.",
        "",
        "Ratios are per round (this count's throughput over the same round's one-worker, or one-per-core, "
        "throughput): median (min-max) over the rounds. Other columns are medians.",
        "",
        "| workers | x usable | tasks/s | speedup vs 1 | vs 1 per core | CPU s | invol. switches / task | task p50 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in counts:
        runs = [p for p, _ in points[n]]
        throughputs = [p.throughput for p in runs]
        lines.append(
            f"| {n} | {n / usable:.1f} | {statistics.median(throughputs):.1f} | "
            f"{_spread([t / one for t, one in zip(throughputs, ones)])} | "
            f"{_spread([t / core for t, core in zip(throughputs, at_cores)])} | "
            f"{statistics.median(p.cpu_seconds for p in runs):.2f} | "
            f"{statistics.median(p.involuntary_switches for p in runs) / tasks:.1f} | "
            f"{statistics.median(p.task_p50_ms for p in runs):.0f} |"
        )
    most = 4 * usable
    plateau = [p.throughput / core for (p, _), core in zip(points[most], at_cores)]
    switches = {n: statistics.median(p.involuntary_switches for p, _ in points[n]) / tasks for n in (1, most)}
    at_usable = [core / one for core, one in zip(at_cores, ones)]
    lines += [
        "",
        f"Plateau: {most} workers deliver x{_spread(plateau)} the throughput of {usable}; involuntary switches per "
        f"task go from {switches[1]:.1f} at 1 worker to {switches[most]:.1f} at {most}.",
        f"At {usable} workers the speedup is x{_spread(at_usable)}; above x{usable} in any round means that "
        "round's one-worker run was disturbed.",
    ]
    return "\n".join(lines)
