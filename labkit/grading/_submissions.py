"""Finding students' notebooks, naming their owners, and reading them without trusting them.

Instructors collect submissions in one of two shapes, and may mix them::

    submissions/alice/01_event_loop_blocking.ipynb    one folder per student: the student is "alice"
    submissions/bob.ipynb                              files named by student: the student is "bob"

A notebook found in a sub-folder of a folder given on the command line belongs to that sub-folder
(``submissions/alice/attempt-2/x.ipynb`` is alice's). A notebook given directly, or lying directly
in a given folder, belongs to its file stem, unless the stem is the name of an exercise
(``01_event_loop_blocking`` or ``ex01``): then it is the folder's (``alice/01_event_loop_blocking.ipynb``
given alone is still alice's). Arguments that do not exist are expanded as glob patterns
(``'submissions/*/01_*.ipynb'``, ``**`` included), for shells that leave patterns to the program.
Hidden files and folders and ``.ipynb_checkpoints`` are skipped.

A submission is read leniently but never trusted: only what grading needs is kept (cell types,
sources, cell ids, the ``labkit`` metadata), stored outputs are dropped at once, and anything
malformed raises :class:`SubmissionError` with a sentence an instructor can act on.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError

__all__ = [
    "Submission",
    "StudentCell",
    "StudentNotebook",
    "SubmissionError",
    "MAX_NOTEBOOK_BYTES",
    "find_submissions",
    "read_submission",
]

#: Largest notebook file read. Outputs are what make notebooks big, and a student's stored
#: outputs are ignored anyway; a bigger file is refused rather than parsed whole into memory.
MAX_NOTEBOOK_BYTES = 100 * 2**20

_GLOB_MAGIC = frozenset("*?[")


class SubmissionError(LabkitError, ValueError):
    """A submission cannot be graded as it is (empty, cut off, not a notebook, no exercise id)."""


@dataclass(frozen=True)
class Submission:
    """One notebook to grade, and the student it belongs to."""

    path: Path
    student: str


@dataclass(frozen=True)
class StudentCell:
    """What the grader keeps of one cell of a submission (outputs are never kept).

    ``index`` counts from 0; ``check`` is the check id the cell's metadata claims, if any.
    """

    index: int
    cell_type: str
    source: str
    cell_id: str | None
    check: str | None


@dataclass(frozen=True)
class StudentNotebook:
    """A submission as read: the exercise its metadata names, and its cells."""

    exercise: str
    cells: tuple[StudentCell, ...]


def _skipped(path: Path) -> bool:
    return any(part.startswith(".") for part in path.parts) or path.name.endswith("-checkpoint.ipynb")


def _notebooks_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.ipynb")
                  if path.is_file() and not _skipped(path.relative_to(folder)))


def _owner(path: Path, exercise_names: Collection[str]) -> str:
    if path.stem in exercise_names:
        folder = path.resolve().parent.name
        if folder:
            return folder
    return path.stem


def _expand(argument: str, exercise_names: Collection[str]) -> list[Submission]:
    path = Path(argument)
    if path.is_file():
        return [Submission(path, _owner(path, exercise_names))]
    if path.is_dir():
        found = []
        for notebook in _notebooks_under(path):
            inside = notebook.relative_to(path).parts
            student = inside[0] if len(inside) > 1 else _owner(notebook, exercise_names)
            found.append(Submission(notebook, student))
        return found
    if _GLOB_MAGIC & set(argument):
        found = []
        for match in sorted(glob.glob(argument, recursive=True)):
            if os.path.isfile(match) or os.path.isdir(match):
                found += _expand(match, exercise_names)
        return found
    return []


def find_submissions(arguments: Iterable[str | os.PathLike[str]], *,
                     exercise_names: Collection[str] = ()) -> tuple[list[Submission], list[str]]:
    """The submissions that ``arguments`` (files, folders, glob patterns) name, and warnings.

    ``exercise_names`` are the stems and ids of the known exercises, used to name students (see
    the module docstring). A file named twice is graded once. Each argument that matches nothing
    gives a warning; it is up to the caller to decide whether no submission at all is an error.
    """
    submissions: list[Submission] = []
    warnings: list[str] = []
    seen: set[Path] = set()
    for argument in arguments:
        text = os.fspath(argument)
        found = _expand(text, exercise_names)
        if not found:
            what = "no notebooks" if Path(text).is_dir() else "no such file or folder"
            warnings.append(f"{text}: {what}, nothing to grade there")
        for submission in found:
            key = submission.path.resolve()
            if key not in seen:
                seen.add(key)
                submissions.append(submission)
    return submissions, warnings


def _source(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "".join(value)
    return None


def _cell(index: int, cell: Any) -> StudentCell:
    if not isinstance(cell, Mapping):
        raise SubmissionError(f"cell {index + 1} is not a JSON object; the notebook is damaged")
    cell_type = cell.get("cell_type")
    source = _source(cell.get("source", ""))
    if cell_type not in ("code", "markdown", "raw") or source is None:
        raise SubmissionError(f"cell {index + 1} is malformed (cell_type {cell_type!r}, or a source that is "
                              f"not text); the notebook is damaged")
    metadata = cell.get("metadata")
    labkit_meta = metadata.get("labkit") if isinstance(metadata, Mapping) else None
    check = labkit_meta.get("check") if isinstance(labkit_meta, Mapping) else None
    cell_id = cell.get("id")
    return StudentCell(index, cell_type, source, cell_id if isinstance(cell_id, str) else None,
                       check if isinstance(check, str) else None)


def read_submission(path: str | os.PathLike[str]) -> StudentNotebook:
    """Read a student's notebook file; raise :class:`SubmissionError` saying what is wrong with it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise SubmissionError("the file is empty (0 bytes): was the notebook saved before it was submitted?")
        if size > MAX_NOTEBOOK_BYTES:
            raise SubmissionError(
                f"the file is {size / 2**20:,.0f} MB, more than the {MAX_NOTEBOOK_BYTES // 2**20} MB the grader "
                f"reads; clear its outputs (Edit > Clear Outputs of All Cells) and grade it again")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError("the file is not UTF-8 text, so it is not a notebook") from None
    except OSError as exc:
        raise SubmissionError(f"the file cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubmissionError(
            f"the file is not valid notebook JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); it may have "
            f"been cut off while saving or uploading, ask the student for the file again") from None
    except RecursionError:
        raise SubmissionError("the file nests JSON lists or objects more deeply than Python reads (a notebook "
                              "nests a few levels): it is not a notebook") from None
    del text
    if not isinstance(data, Mapping) or data.get("nbformat") != 4 or not isinstance(data.get("cells"), list):
        raise SubmissionError("the file is JSON but not a Jupyter notebook of format 4 (no 'nbformat': 4 and "
                              "'cells' list)")
    metadata = data.get("metadata")
    labkit_meta = metadata.get("labkit") if isinstance(metadata, Mapping) else None
    exercise = labkit_meta.get("exercise") if isinstance(labkit_meta, Mapping) else None
    if not isinstance(exercise, str) or not exercise:
        raise SubmissionError(
            "the notebook has no labkit.exercise in its metadata, so the grader cannot tell which exercise "
            "it is; was it started from a file in exercises/? (Copy the student's cells into a fresh copy "
            "of the exercise to grade it.)")
    cells = tuple(_cell(index, cell) for index, cell in enumerate(data["cells"]))
    return StudentNotebook(exercise, cells)
