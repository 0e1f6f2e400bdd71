"""labkit grade: how much faster two jobs grade a batch than one, on the real exercise 01.

Twenty copies of ``solutions/01_event_loop_blocking.ipynb`` are graded with ``--jobs 1`` and with
``--jobs 2``, alternating (1, 2, 2, 1, 1, 2) so that a drift in the machine's load touches both
alike; the table gives the median wall time of each and their ratio (target >= 1.7x on an idle
2-core machine).

Every copy must score full marks in every run: parallel grading that made a correct speed check
fail would be faster and wrong. The table says so if it happens.

What bounds the ratio: check cells that measure speed take turns across jobs (and hold the
machine-wide lock), so only the rest of a submission (kernel start, the student's cells, shutdown)
overlaps. With a share ``s`` of a submission's time in check cells, two jobs can at best reach
``1 / max(s, 1/2)``; the table reports ``s`` and that bound beside the measured ratio.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from labkit.grading import GradeSettings, find_submissions, grade, load_exercise

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "solutions" / "01_event_loop_blocking.ipynb"
COPIES = 20
ORDER = (1, 2, 2, 1, 1, 2)  # jobs per run, alternating


def _batch(folder: Path) -> list:
    text = SOLUTION.read_text(encoding="utf-8")
    for number in range(1, COPIES + 1):
        (folder / f"student{number:02d}.ipynb").write_text(text, encoding="utf-8")
    submissions, _ = find_submissions([folder])
    return submissions


def run() -> str:
    """Grade the batch with one and two jobs, alternating, and return the Markdown section."""
    exercise = load_exercise(SOLUTION)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    check_share: list[float] = []
    not_full: dict[int, int] = {1: 0, 2: 0}
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as scratch:
        submissions = _batch(Path(scratch))
        for jobs in ORDER:
            report = grade(submissions, {exercise.id: exercise}, GradeSettings(jobs=jobs))
            seconds[jobs].append(report.seconds)
            not_full[jobs] += sum(1 for r in report.results if r.points != exercise.points)
            if jobs == 1:  # one job: no waiting for turns, so the share is the submissions' own
                check_share += [r.check_seconds / r.seconds for r in report.results if r.seconds]
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    share = statistics.median(check_share)
    bound = 1 / max(share, 0.5)
    runs = len(seconds[1])
    lines = [
        f"## Grading in parallel (`labkit grade`, {COPIES} copies of the exercise 01 solution)",
        "",
        f"| jobs | wall time (median of {runs}) | per submission | not full marks |",
        "|---|---|---|---|",
        f"| 1 | {one:.1f} s | {one / COPIES:.2f} s | {not_full[1]} of {COPIES * runs} |",
        f"| 2 | {two:.1f} s | {two / COPIES:.2f} s | {not_full[2]} of {COPIES * runs} |",
        "",
        f"Speed-up with 2 jobs: **{one / two:.2f}x** (target >= 1.7x on an idle 2-core machine). "
        f"Check cells, which take turns, are {100 * share:.0f}% of a submission's time with one job, "
        f"which bounds two jobs at about {bound:.2f}x.",
    ]
    return "\n".join(lines)
