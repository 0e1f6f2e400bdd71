"""``labkit grade SUBMISSION...``: grade students' exercise notebooks and write the gradebook.

Each submission runs in a fresh kernel against the canonical checks of its exercise (found in
``--solutions``), several at once (``--jobs``), or on the workers of a Dask scheduler
(``--scheduler tcp://HOST:PORT``, checked before ``--out`` is touched). A progress line shows on stderr while it runs, a
summary table on stdout at the end, and ``--out`` receives ``gradebook.csv``, ``results/*.json``
and ``feedback/*.md``. Exit status 0 when every submission was graded (zero scores and rejected
notebooks included: they have their line in the gradebook), 1 when grading could not run or the
grader failed on a submission, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from labkit.grading import SubmissionResult
    from labkit.grading.grade import Option

__all__ = ["configure", "run"]


def _options() -> list[tuple[str, Any, Option]]:
    """(field name, command default, declaration) of each GradeSettings field that has an option."""
    from labkit.grading.grade import GradeSettings

    found = []
    for f in dataclasses.fields(GradeSettings):
        option = f.metadata.get("option")
        if option is not None:
            found.append((f.name, f.default if option.command_default is None else option.command_default, option))
    return found


def _argument_type(option: Option) -> Callable[[str], Any]:
    """``option.parse``, with its complaint shown by argparse (which hides a plain ValueError's)."""
    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = option.metavar  # argparse names the type in some messages
    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``labkit grade``: the inputs and outputs, then GradeSettings' options."""
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                        help="notebooks, folders of them (one folder per student, or files named by student), "
                             "or glob patterns")
    parser.add_argument("--solutions", default="solutions", metavar="DIR",
                        help="folder of solutions notebooks with the canonical checks (default: solutions)")
    for name, default, option in _options():
        shown = option.default_text or default
        parser.add_argument(option.flag, dest=name, type=_argument_type(option), default=default,
                            metavar=option.metavar, help=f"{option.help} (default: {shown})".replace("%", "%%"))
    parser.add_argument("--out", default="grades", metavar="DIR",
                        help="where the gradebook, results and feedback go (default: grades)")


class _Progress:
    """One line on stderr that follows the run (rewritten in place on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.started = time.monotonic()

    def __call__(self, done: int, total: int, running: tuple[str, ...], finished: SubmissionResult | None) -> None:
        from labkit.grading.grade import clean_text

        elapsed = time.monotonic() - self.started
        if self.live:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            names = ", ".join(clean_text(name, 20) for name in running)
            line = f"grading: {done}/{total} done, {elapsed:.0f} s" + (f"; running {names}" if names else "")
            self.stream.write("\r" + line[:width].ljust(width))
            if done == total:
                self.stream.write("\n")
        elif finished is not None:
            self.stream.write(f"[{done}/{total}] {clean_text(finished.student, 40)} {finished.exercise or '?'}: "
                              f"{finished.points:g}/{finished.max_points:g} ({finished.status.value})\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Grade the submissions and write the gradebook; see the module docstring for exit codes."""
    from labkit.grading.grade import GradeError, connect_scheduler, load_solutions

    def fail(message: str) -> int:
        print(f"labkit grade: {message}", file=sys.stderr)
        return 1

    try:
        exercises = load_solutions(args.solutions)
    except GradeError as exc:
        return fail(str(exc))
    cluster = None
    if args.scheduler is not None:
        # Before --out is touched: a cluster that cannot grade leaves no trace there.
        try:
            cluster = connect_scheduler(args.scheduler)
        except GradeError as exc:
            return fail(str(exc))
    try:
        return _grade(args, exercises, cluster, fail)
    finally:
        if cluster is not None:
            cluster.close()


def _grade(args: argparse.Namespace, exercises: dict[str, Any], cluster: Any, fail: Callable[[str], int]) -> int:
    from labkit.errors import ConfigurationError
    from labkit.grading.grade import (
        GradeError,
        GradeSettings,
        find_submissions,
        grade,
        prepare_out,
        sandbox_status,
        summary_table,
        write_gradebook,
    )

    try:
        out = prepare_out(args.out)
    except GradeError as exc:
        return fail(str(exc))
    for exercise in exercises.values():
        for warning in exercise.warnings:
            print(f"labkit grade: warning: {warning}", file=sys.stderr)
    names = {name for e in exercises.values() for name in (e.id, e.path.stem)}
    submissions, warnings = find_submissions(args.submissions, exercise_names=names)
    for warning in warnings:
        print(f"labkit grade: warning: {warning}", file=sys.stderr)
    if not submissions:
        return fail("no submissions matched; give notebook files, folders of them, or glob patterns")
    from labkit.cores import resolve_workers

    jobs = resolve_workers(args.jobs)  # 'max' is one job per usable core, as for pools and clusters
    try:
        chosen = {name: getattr(args, name) for name, _, _ in _options()}
        settings = GradeSettings(**{**chosen, "jobs": max(1, min(jobs, len(submissions)))})
    except ConfigurationError as exc:  # options that each parse but do not fit together: a usage error
        print(f"labkit grade: {exc}", file=sys.stderr)
        return 2
    where = (f"on {cluster.describe()}" if cluster is not None else
             f"with {settings.jobs} job{'s' if settings.jobs != 1 else ''}")
    print(f"grading {len(submissions)} submission{'s' if len(submissions) != 1 else ''} {where}, against the "
          f"{len(exercises)} exercise{'s' if len(exercises) != 1 else ''} in {args.solutions}"
          + ("" if cluster is not None else f"; {sandbox_status()}"), file=sys.stderr, flush=True)

    def notice(line: str) -> None:
        print(f"labkit grade: note: {line}", file=sys.stderr, flush=True)

    try:
        # --out is hidden from the kernels too: nothing a student runs can read or write the grades.
        report = grade(submissions, exercises, settings, progress=_Progress(sys.stderr), hidden=[out],
                       cluster=cluster, notice=notice)
    except GradeError as exc:
        return fail(str(exc))
    try:
        files = write_gradebook(report, out)
    except (GradeError, OSError) as exc:
        return fail(f"{out}: could not write the grades ({exc})")
    print(summary_table(report, width=shutil.get_terminal_size((100, 20)).columns))
    how = f"on {report.jobs} Dask worker threads" if cluster is not None else f"with {report.jobs} jobs"
    print(f"\n{len(report.results)} graded in {report.seconds:.0f} s {how}; gradebook: "
          f"{files.gradebook}, results: {out / 'results'}, feedback: {out / 'feedback'}")
    if not report.complete:
        return fail("the grader could not run some submissions (status 'error' above); fix the cause and "
                    "grade them again")
    return 0
