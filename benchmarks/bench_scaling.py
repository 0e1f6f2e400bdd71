"""A CPU-bound sweep from 1 to 4 x usable cores: where throughput plateaus, and what the extra
workers cost in involuntary context switches and per-task time (lab 06, claim C13).

Run on an otherwise idle machine: ``python benchmarks/run.py scaling``.
"""

from __future__ import annotations

from labkit.cores import usable_cores
from labkit.measure import sweep
from labkit.workloads import count_primes

# count_primes(60_000): about 0.1 s of pure Python per task, long against pool overheads.
LIMIT = 60_000
REPEATS = 5


def run() -> str:
    usable = usable_cores().usable
    counts = sorted({1, usable, 2 * usable, 4 * usable})
    tasks = 16 * usable  # a multiple of every worker count: no worker idles at the end
    result = sweep(count_primes, (LIMIT,), tasks=tasks, workers=counts, repeats=REPEATS, label="count_primes")
    base = result.point(1).throughput
    at_cores = result.point(usable)
    lines = [
        "## Scaling sweep: one core, one worker",
        "",
        f"{tasks} tasks of count_primes({LIMIT:,}) on process pools; median of {REPEATS} runs per point; "
        f"{usable} usable cores, {result.delivered:.2f} delivered at the start.",
        "",
        "| workers | x usable | tasks/s | speedup vs 1 | vs 1 per core | CPU s | invol. switches / task | task p50 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result.points:
        lines.append(
            f"| {p.workers} | {p.workers / usable:.1f} | {p.throughput:.1f} | {p.throughput / base:.2f} | "
            f"{p.throughput / at_cores.throughput:.2f} | {p.cpu_seconds:.2f} | "
            f"{p.involuntary_switches / tasks:.1f} | {p.task_p50_ms:.0f} |"
        )
    past = result.point(4 * usable)
    lines += [
        "",
        f"Plateau: {4 * usable} workers deliver {past.throughput / at_cores.throughput:.2f}x the throughput of "
        f"{usable}; involuntary switches per task go from {result.point(1).involuntary_switches / tasks:.1f} "
        f"at 1 worker to {past.involuntary_switches / tasks:.1f} at {4 * usable}.",
    ]
    return "\n".join(lines)
