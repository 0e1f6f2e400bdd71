"""labkit grade --scheduler: what the Dask route costs against local jobs, on one machine.

Twenty copies of ``solutions/01_event_loop_blocking.ipynb`` are graded with ``--jobs 2`` on this
machine alone, and through a Dask scheduler with two workers (one thread each) on this same
machine, alternating (local, dask, dask, local, local, dask) so that a drift in the machine's load
touches both alike. The scheduler and workers are started once, before the timed runs, and a
one-copy batch warms each route up (imports, the workers' first connection) untimed.

The table gives the median wall time of each route, the ratio local / Dask (target >= 0.9x: the
cluster, with the same two cores, grades at least nine tenths as fast) and the time the Dask route
adds per submission: the difference in wall time, times the two jobs working at once, divided by
the copies. Every copy must score full marks on both routes; the table says so if one did not.

    python benchmarks/run.py grade_dask          # the real measurement, on an idle machine
    python benchmarks/bench_grade_dask.py 2      # a smoke run with 2 copies (prints, writes nothing)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from labkit.grading import GradeSettings, find_submissions, grade, load_exercise
from labkit.grading.grade import connect_scheduler

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "solutions" / "01_event_loop_blocking.ipynb"
COPIES = 20
JOBS = 2  # local jobs, and Dask workers (one thread each)
ORDER = ("local", "dask", "dask", "local", "local", "dask")
STARTUP_SECONDS = 60


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int) -> Iterator[str]:
    """A scheduler and ``workers`` one-thread workers on 127.0.0.1; its address; all killed at the end."""
    scheduler_file = folder / "scheduler.json"
    common = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True,
              "cwd": folder}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(scheduler_file)], **common)]
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if time.monotonic() > deadline or processes[0].poll() is not None:
                raise RuntimeError("the Dask scheduler did not start")
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for number in range(workers):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(folder / f"worker{number}")],
                **common))
        from distributed import Client

        with Client(address, set_as_default=False, timeout=STARTUP_SECONDS) as client:
            client.wait_for_workers(workers, timeout=STARTUP_SECONDS)
        yield address
    finally:
        # SIGTERM first: a nanny then stops its worker, and its resource tracker (which ignores
        # SIGTERM) unlinks the nanny's named semaphores; SIGKILL to the group at once would leave them.
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        time.sleep(1)  # the trackers finish once their nanny has gone
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in processes:
            process.wait()


def _batch(folder: Path, copies: int) -> list:
    folder.mkdir()
    text = SOLUTION.read_text(encoding="utf-8")
    for number in range(1, copies + 1):
        (folder / f"student{number:02d}.ipynb").write_text(text, encoding="utf-8")
    submissions, _ = find_submissions([folder])
    return submissions


def run(copies: int = COPIES) -> str:
    """Grade the batch on both routes, alternating, and return the Markdown section."""
    exercise = load_exercise(SOLUTION)
    exercises = {exercise.id: exercise}
    settings = GradeSettings(jobs=JOBS)
    seconds: dict[str, list[float]] = {"local": [], "dask": []}
    not_full = {"local": 0, "dask": 0}
    with tempfile.TemporaryDirectory(prefix="bench-grade-dask-") as scratch:
        submissions = _batch(Path(scratch) / "submissions", copies)
        with dask_cluster(Path(scratch), JOBS) as address, connect_scheduler(address) as cluster:
            routes = {"local": lambda batch: grade(batch, exercises, settings),
                      "dask": lambda batch: grade(batch, exercises, settings, cluster=cluster)}
            for route in routes.values():  # warm-up, untimed
                route(submissions[:1])
            for name in ORDER:
                report = routes[name](submissions)
                seconds[name].append(report.seconds)
                not_full[name] += sum(1 for r in report.results if r.points != exercise.points)
    local, dask = statistics.median(seconds["local"]), statistics.median(seconds["dask"])
    runs = len(seconds["local"])
    overhead = (dask - local) * JOBS / copies
    lines = [
        f"## Grading on a Dask cluster (`labkit grade --scheduler`, {copies} copies of the exercise 01 solution)",
        "",
        f"| route | wall time (median of {runs}) | per submission | not full marks |",
        "|---|---|---|---|",
        f"| local, `--jobs {JOBS}` | {local:.1f} s | {local / copies:.2f} s | {not_full['local']} of {copies * runs} |",
        f"| Dask, {JOBS} workers on this machine | {dask:.1f} s | {dask / copies:.2f} s | "
        f"{not_full['dask']} of {copies * runs} |",
        "",
        f"Local / Dask: **{local / dask:.2f}x** (target >= 0.9x). Every run, in the order run: "
        + ", ".join(f"{name} {value:.1f} s" for name, value in _in_order(seconds)) + ".",
        "",
        f"What the Dask route adds per submission (wall-time difference x {JOBS} jobs / {copies} copies): "
        f"**{overhead * 1000:+.0f} ms**. " + _reading(seconds, overhead),
    ]
    return "\n".join(lines)


def _in_order(seconds: dict[str, list[float]]) -> list[tuple[str, float]]:
    """The runs as ``(route, seconds)`` in the order ``ORDER`` ran them."""
    taken = {name: iter(values) for name, values in seconds.items()}
    return [(name, next(taken[name])) for name in ORDER]


def _reading(seconds: dict[str, list[float]], overhead: float) -> str:
    """One honest sentence on the overhead: a cost, or a difference smaller than the runs' spread."""
    spread = max(max(values) - min(values) for values in seconds.values()) * JOBS / COPIES
    if abs(overhead) <= spread:
        return (f"That is within the spread of one route's own runs ({spread * 1000:.0f} ms per "
                "submission on the same scale), so this run measured no cost it can tell from noise; "
                "what the route does add (a round trip to the scheduler per task, the attempts "
                "counter, pickling the notebook both ways) is a few milliseconds against seconds of "
                "grading.")
    if overhead < 0:
        return ("The Dask route finished sooner, so this run measured no cost at all. The routes differ "
                "in more than the scheduler: each Dask worker is a process of its own grading one "
                "submission at a time, while the local jobs share one grader process.")
    return ("That is one task's round trip to the scheduler, its attempts counter, and pickling the "
            "notebook both ways.")


if __name__ == "__main__":
    print(run(int(sys.argv[1]) if len(sys.argv) > 1 else COPIES))
