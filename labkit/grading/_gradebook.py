"""What a grading run leaves behind: a CSV gradebook, JSON results, Markdown feedback, a summary.

::

    grades/
      gradebook.csv                 one row per part per submission (one row for a rejected one):
                                    student, exercise, part, points, max_points, status, message
      results/alice.ex01.json       per submission, the common autograder results shape:
                                    {"score", "execution_time", "output", "tests": [{"name", "score",
                                    "max_score", "output", "visibility", "status"}], "extra_data"}
      feedback/alice.md             per student, readable: scores, what failed and why

Every file is written to a temporary name and moved into place, so a reader never sees half of
one. Student-controlled text (names, error messages) is cleaned of control characters before it
reaches a terminal, and CSV fields that a spreadsheet would run as a formula are quoted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._engine import clean_text
from ._results import GradeError, GradeReport, SubmissionResult, SubmissionStatus
from .runner import PartStatus

__all__ = ["GRADEBOOK_COLUMNS", "GradebookFiles", "prepare_out", "write_gradebook", "gradebook_rows",
           "results_json", "feedback_markdown", "summary_table"]

#: The gradebook's header.
GRADEBOOK_COLUMNS = ("student", "exercise", "part", "points", "max_points", "status", "message")

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class GradebookFiles:
    """The files one run wrote: the gradebook, the JSON results, the feedback."""

    gradebook: Path
    results: tuple[Path, ...]
    feedback: tuple[Path, ...]


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 3)


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        value = clean_text(value, 2000)
        return "'" + value if value.startswith(_FORMULA_START) else value
    return value


def gradebook_rows(results: Sequence[SubmissionResult]) -> list[dict[str, Any]]:
    """The gradebook as dictionaries keyed by :data:`GRADEBOOK_COLUMNS`."""
    rows = []
    for result in results:
        if result.status is not SubmissionStatus.GRADED:
            rows.append({"student": result.student, "exercise": result.exercise or "", "part": "",
                         "points": 0, "max_points": _number(result.max_points), "status": result.status.value,
                         "message": f"{result.submission.path}: {result.message}"})
            continue
        for outcome in result.outcomes:
            rows.append({"student": result.student, "exercise": result.exercise, "part": outcome.part,
                         "points": _number(outcome.points), "max_points": _number(outcome.max_points),
                         "status": outcome.status.value, "message": outcome.message})
    return rows


def results_json(result: SubmissionResult) -> dict[str, Any]:
    """One submission in the common autograder results shape (Gradescope's ``results.json``)."""
    tests = [{
        "name": outcome.part,
        "score": _number(outcome.points),
        "max_score": _number(outcome.max_points),
        "status": "passed" if outcome.passed else "failed",
        "output": outcome.message,
        "visibility": "hidden" if outcome.hidden else "visible",
        "extra_data": {"labkit_status": outcome.status.value},
    } for outcome in result.outcomes]
    output = result.message or f"{result.student}: {_number(result.points)}/{_number(result.max_points)} points"
    return {
        "score": _number(result.points),
        "execution_time": round(result.seconds, 1),
        "output": output,
        "tests": tests,
        "extra_data": {
            "student": result.student, "exercise": result.exercise, "submission": str(result.submission.path),
            "status": result.status.value, "max_score": _number(result.max_points), "kernels": result.kernels,
            "problems": list(result.problems),
        },
    }


def _md(text: str) -> str:
    return clean_text(text, 2000).replace("|", "\\|")


def feedback_markdown(student: str, results: Sequence[SubmissionResult]) -> str:
    """A student's feedback: each submission's score, each part's verdict, what went wrong.

    Hidden checks show their points and verdict, not their name or message.
    """
    lines = [f"# Feedback for {_md(student)}", "",
             "Scores come from the grader's own run of your notebook in a fresh kernel, with the course's "
             "check cells (not the outputs saved in the notebook).", ""]
    for result in results:
        title = result.exercise or "unknown exercise"
        lines += [f"## {_md(title)}: {_number(result.points)}/{_number(result.max_points)} points", "",
                  f"Notebook: `{_md(result.submission.path.name)}`", ""]
        if result.status is not SubmissionStatus.GRADED:
            lines += [f"This notebook could not be graded: {_md(result.message)}", ""]
            continue
        lines += ["| part | points | result |", "|---|---|---|"]
        hidden_count = 0
        for outcome in result.outcomes:
            name = outcome.part
            if outcome.hidden:
                hidden_count += 1
                name = f"hidden check {hidden_count}"
            mark = "✔ passed" if outcome.passed else f"✘ {outcome.status.value}"
            lines.append(f"| {_md(name)} | {_number(outcome.points)}/{_number(outcome.max_points)} | {mark} |")
        lines.append("")
        for outcome in result.outcomes:
            if not outcome.passed and not outcome.hidden:
                lines += [f"### {_md(outcome.part)}", "", _md(outcome.message), ""]
        if result.problems:
            lines += ["### While your notebook ran", ""]
            lines += [f"- {_md(problem)}" for problem in result.problems[:20]]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _file_name(*parts: str) -> str:
    return ".".join(_UNSAFE_NAME.sub("_", part).strip("._") or "unnamed" for part in parts)


def prepare_out(out: str | os.PathLike[str]) -> Path:
    """Create the output folder (and its ``results``, ``feedback`` folders) and prove it writable.

    Raises :class:`GradeError` naming the folder when it cannot be used: checked before grading,
    so a long run never ends without a place for its results.
    """
    out = Path(out)
    try:
        for folder in (out, out / "results", out / "feedback"):
            folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GradeError(f"{out}: cannot write the grades there ({exc.strerror or exc}); give a writable "
                         f"folder with --out") from exc
    return out


def _write(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_gradebook(report: GradeReport, out: str | os.PathLike[str]) -> GradebookFiles:
    """Write the gradebook, one JSON file per submission and one feedback file per student.

    Everything is written into a fresh hidden folder inside ``out`` first, then moved into place:
    ``results`` and ``feedback`` are replaced whole, so no file that someone else put there (a
    submission run without a sandbox, an earlier run) survives beside the grader's own.
    """
    out = prepare_out(out)
    fresh = Path(tempfile.mkdtemp(dir=out, prefix=".gradebook-"))
    try:
        for folder in ("results", "feedback"):
            (fresh / folder).mkdir()
        written = _write_files(report, fresh)
        for folder in ("results", "feedback"):
            if (out / folder).exists():
                os.replace(out / folder, fresh / f"replaced-{folder}")
            os.replace(fresh / folder, out / folder)
        os.replace(fresh / "gradebook.csv", out / "gradebook.csv")
    finally:
        shutil.rmtree(fresh, ignore_errors=True)

    def moved(path: Path) -> Path:
        return out / path.relative_to(fresh)

    return GradebookFiles(moved(written.gradebook), tuple(map(moved, written.results)),
                          tuple(map(moved, written.feedback)))


def _write_files(report: GradeReport, out: Path) -> GradebookFiles:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=GRADEBOOK_COLUMNS)
    writer.writeheader()
    for row in gradebook_rows(report.results):
        writer.writerow({key: _cell(value) for key, value in row.items()})
    gradebook = out / "gradebook.csv"
    _write(gradebook, buffer.getvalue())
    used: set[str] = set()
    results_paths = []
    by_student: dict[str, list[SubmissionResult]] = defaultdict(list)
    for result in report.results:
        by_student[result.student].append(result)
        name = _file_name(result.student, result.exercise or "unknown")
        candidate, number = name, 1
        while candidate in used:
            number += 1
            candidate = f"{name}-{number}"
        used.add(candidate)
        path = out / "results" / f"{candidate}.json"
        _write(path, json.dumps(results_json(result), indent=1, ensure_ascii=False) + "\n")
        results_paths.append(path)
    feedback_paths = []
    used_names: set[str] = set()
    for student, results in by_student.items():
        name, number = _file_name(student), 1
        candidate = name
        while candidate in used_names:  # two names that clean to the same file name
            number += 1
            candidate = f"{name}-{number}"
        used_names.add(candidate)
        path = out / "feedback" / f"{candidate}.md"
        _write(path, feedback_markdown(student, results))
        feedback_paths.append(path)
    return GradebookFiles(gradebook, tuple(results_paths), tuple(feedback_paths))


def _note(result: SubmissionResult) -> str:
    if result.status is not SubmissionStatus.GRADED:
        return f"{result.status.value}: {result.message}"
    counts: dict[str, int] = defaultdict(int)
    for outcome in result.outcomes:
        if outcome.status is not PartStatus.PASSED:
            counts[outcome.status.value] += 1
    if not counts:
        return "all parts passed"
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))


def summary_table(report: GradeReport, *, width: int = 100) -> str:
    """The run as a table for the terminal: student, exercise, points, what happened."""
    rows = [(clean_text(r.student, 24), clean_text(r.exercise or "?", 12),
             f"{_number(r.points)}/{_number(r.max_points)}", _note(r)) for r in report.results]
    header = ("student", "exercise", "points", "notes")
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(3)]
    lines = []
    for row in [header, *rows]:
        start = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3]))
        lines.append(f"{start}  {clean_text(row[3], max(width - len(start) - 2, 20))}")
    return "\n".join(lines)
