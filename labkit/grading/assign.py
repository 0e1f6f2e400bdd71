"""Generate student exercise notebooks from solutions notebooks: what ``labkit assign`` runs.

::

    solutions/01_x.ipynb --read, validate--> make_exercise() --text--> exercises/01_x.ipynb
    solutions/02_y.ipynb --read, validate--> make_exercise() --text--> exercises/02_y.ipynb
                                                                       exercises/old.ipynb  (deleted:
                                                                                        no source)

Every solutions notebook is read, checked and turned into text in memory first; only when all of
them are sound is anything written, so one malformed notebook leaves ``exercises/`` exactly as it
was. Each file is written to a temporary name in the target directory and moved into place with
``os.replace``, so a reader never sees half a notebook. The output depends only on the solution's
content, so running twice gives byte-identical files, and a file that would not change is not
rewritten at all.

What changes between a solution and its exercise (see :mod:`labkit.grading.notebook` for the
format):

- each solution region becomes a stub (``# YOUR CODE HERE`` and ``raise NotImplementedError``, or
  ``YOUR ANSWER HERE`` in markdown), and its cell is marked ``{"labkit": {"solution": true}}``;
- hidden check cells are removed; the other check cells are locked against editing and deletion,
  and their output (the solution's "passed" line) is replaced by a line that says the check has
  not run yet: a student who has not run it yet must not read the
  solution's result as their own. Solutions keep their real outputs, which nbval compares;
  exercises are not replayed by nbval (their stubs raise, by design);
- every other code cell loses its outputs and execution count; cell ids and order stay as they are.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.grading.notebook import (
    AssignError,
    Part,
    describe_cell,
    exercise_id,
    find_regions,
    notebook_text,
    parse_parts,
    read_notebook,
)

__all__ = [
    "CODE_STUB",
    "ANSWER_STUB",
    "DEFAULT_HINT",
    "NotebookReport",
    "AssignReport",
    "StaleExercise",
    "make_exercise",
    "assign",
    "outdated",
]

CODE_STUB = "# YOUR CODE HERE"
ANSWER_STUB = "YOUR ANSWER HERE"
#: The NotImplementedError message of a region whose BEGIN line gives no hint.
DEFAULT_HINT = "write your solution here"

# The mark that starts the line of a check cell not run yet (the pass and fail marks are ✔ and ✘).
_NOT_RUN_MARK = "◌"

# Exercise files are read by students and committed to git; a temporary file starts as 0600.
_FILE_MODE = 0o644


def _plural(count: float, word: str) -> str:
    shown = int(count) if float(count).is_integer() else count
    return f"{shown} {word}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class NotebookReport:
    """What became of one solutions notebook: where it went and which parts it holds.

    ``parts`` are the solution's checks, hidden ones included, with the solution's cell indices.
    """

    source: Path
    target: Path
    exercise: str
    parts: tuple[Part, ...]
    changed: bool

    @property
    def visible_parts(self) -> tuple[Part, ...]:
        """The checks students see in the exercise."""
        return tuple(part for part in self.parts if not part.hidden)

    @property
    def hidden_parts(self) -> tuple[Part, ...]:
        """The hidden checks, removed from the exercise and run only by the grader."""
        return tuple(part for part in self.parts if part.hidden)

    @property
    def points(self) -> float:
        """Points of the visible parts."""
        return sum(part.points for part in self.visible_parts)

    def summary(self) -> str:
        """``'2 parts, 5 points, 1 hidden check removed'``."""
        hidden = len(self.hidden_parts)
        return (
            f"{_plural(len(self.visible_parts), 'part')}, {_plural(self.points, 'point')}, "
            f"{_plural(hidden, 'hidden check')} removed"
        )


@dataclass(frozen=True)
class AssignReport:
    """The outcome of :func:`assign`: one :class:`NotebookReport` per source, and deleted files."""

    notebooks: tuple[NotebookReport, ...]
    removed: tuple[Path, ...]

    @property
    def written(self) -> tuple[Path, ...]:
        """Exercise files that were created or changed (unchanged ones are not rewritten)."""
        return tuple(report.target for report in self.notebooks if report.changed)

    def lines(self) -> list[str]:
        """One human-readable line per notebook and per removed file."""
        lines = [
            f"{r.source} -> {r.target}: {r.summary()}{'' if r.changed else ' (unchanged)'}"
            for r in self.notebooks
        ]
        lines += [f"{path}: removed, it has no solutions notebook" for path in self.removed]
        return lines


@dataclass(frozen=True)
class StaleExercise:
    """An exercise file that does not match what :func:`assign` would write, and why."""

    target: Path
    reason: str


@dataclass(frozen=True)
class _Planned:
    source: Path
    target: Path
    exercise: str
    parts: tuple[Part, ...]
    text: str


def _stub_lines(region_indent: str, hint: str | None, cell_type: str, line_end: str) -> list[str]:
    if cell_type == "markdown":
        answer = ANSWER_STUB if hint is None else f"{ANSWER_STUB} (hint: {hint})"
        return [f"{region_indent}{answer}{line_end}"]
    message = json.dumps(hint or DEFAULT_HINT, ensure_ascii=False)  # a valid Python string literal
    return [f"{region_indent}{CODE_STUB}\n", f"{region_indent}raise NotImplementedError({message}){line_end}"]


def _replace_regions(text: str, cell_type: str, where: str) -> tuple[str, int]:
    """The cell source with every region stubbed out, and how many regions there were."""
    regions = find_regions(text, where=where)
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    position = 0
    for region in regions:
        out += lines[position : region.start]
        end_line = lines[region.end]
        line_end = end_line[len(end_line.rstrip("\r\n")) :]
        out += _stub_lines(region.indent, region.hint, cell_type, line_end)
        position = region.end + 1
    out += lines[position:]
    return "".join(out), len(regions)


def _not_run_output(part: Part) -> Any:
    """The output an exercise's check cell shows until the student runs it.

    It names the part and its points and says what running the cell does; it is plain text with
    no check record (:data:`~labkit.grading.checks.RESULT_MIME`), so no reader can take it for a
    verdict. It is the same whatever the check measures, so it can never give away the answer.
    """
    from nbformat.v4 import new_output

    text = (f"{_NOT_RUN_MARK} {part.id} not run yet ({_plural(part.points, 'point')}): running this cell runs "
            "your code above for real and measures what it does; your own result will replace this line.")
    return new_output("display_data", data={"text/plain": text})


def _lock(cell: Any) -> None:
    cell.metadata["editable"] = False
    cell.metadata["deletable"] = False


def make_exercise(nb: Any, *, source: str | os.PathLike[str] | None = None) -> Any:
    """The student version of one solutions notebook, as a new ``NotebookNode``.

    ``nb`` is left untouched; ``source`` names the file in error messages. Raises
    :class:`AssignError` if the notebook breaks the format.
    """
    exercise_id(nb, source=source)
    checks = {part.cell_index: part for part in parse_parts(nb, source=source)}
    exercise = copy.deepcopy(nb)
    cells = []
    for index, cell in enumerate(exercise.cells):
        where = describe_cell(source, index, cell)
        labkit_meta = cell.metadata.get("labkit")
        if isinstance(labkit_meta, Mapping) and "solution" in labkit_meta:
            raise AssignError(
                f"{where}: labkit.solution metadata marks a cell of a generated exercise, not of a "
                f"solution; were the directories given the wrong way round (it is 'labkit assign "
                f"SOLUTIONS_DIR EXERCISES_DIR')? If this is a solution, remove that key from the cell"
            )
        if index in checks:
            if find_regions(cell.source, where=where):
                raise AssignError(
                    f"{where}: check {checks[index].id!r} holds a solution region; keep solutions "
                    f"out of check cells, they are published as they are"
                )
            if checks[index].hidden:
                continue
            cell.outputs = [_not_run_output(checks[index])]  # never the solution's result
            cell.execution_count = None
            _lock(cell)
        elif cell.cell_type in ("code", "markdown"):
            cell.source, region_count = _replace_regions(cell.source, cell.cell_type, where)
            if region_count:
                cell.metadata["labkit"] = {"solution": True}
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
        elif find_regions(cell.source, where=where):
            raise AssignError(f"{where}: solution regions belong in code or markdown cells, not raw cells")
        cells.append(cell)
    exercise.cells = cells
    return exercise


def _source_notebooks(source_dir: Path) -> list[Path]:
    if not source_dir.is_dir():
        raise AssignError(f"{source_dir}: no such directory; give the directory of solutions notebooks")
    found = sorted(
        path for path in source_dir.glob("*.ipynb") if path.is_file() and not path.name.startswith(".")
    )
    if not found:
        raise AssignError(
            f"{source_dir}: no *.ipynb notebooks; nothing to assign (and nothing in the exercises "
            f"directory is deleted)"
        )
    return found


def _plan(source_dir: Path, target_dir: Path) -> tuple[list[_Planned], list[Path]]:
    """Read, check and render every notebook in memory; list the targets without a source."""
    if source_dir.resolve() == target_dir.resolve():
        raise AssignError(f"{source_dir}: the solutions and exercises directories must differ")
    if target_dir.exists() and not target_dir.is_dir():
        raise AssignError(f"{target_dir}: exists and is not a directory; give a directory for the exercises")
    planned: list[_Planned] = []
    owners: dict[str, Path] = {}
    for source in _source_notebooks(source_dir):
        nb = read_notebook(source)
        exercise = exercise_id(nb, source=source)
        if exercise in owners:
            raise AssignError(
                f"{source}: labkit.exercise {exercise!r} is also the exercise of {owners[exercise]}; "
                f"give each notebook its own exercise id"
            )
        owners[exercise] = source
        parts = tuple(parse_parts(nb, source=source))
        text = notebook_text(make_exercise(nb, source=source))
        planned.append(_Planned(source, target_dir / source.name, exercise, parts, text))
    names = {item.target.name for item in planned}
    stale = []
    if target_dir.is_dir():
        stale = sorted(
            path
            for path in target_dir.glob("*.ipynb")
            if path.is_file() and not path.name.startswith(".") and path.name not in names
        )
    return planned, stale


def _current_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then move it into place in one step."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def assign(source_dir: str | os.PathLike[str], target_dir: str | os.PathLike[str]) -> AssignReport:
    """Write the exercise of every ``*.ipynb`` in ``source_dir`` to ``target_dir``.

    Notebooks are taken in name order, not recursively. All are validated before any file is
    written; an :class:`AssignError` leaves ``target_dir`` untouched. Exercise notebooks in
    ``target_dir`` whose solution no longer exists are deleted and listed in the report.
    """
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    planned, stale = _plan(source_dir, target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for item in planned:
        data = item.text.encode("utf-8")
        changed = _current_bytes(item.target) != data
        if changed:
            _write_atomically(item.target, data)
        reports.append(NotebookReport(item.source, item.target, item.exercise, item.parts, changed))
    for path in stale:
        path.unlink(missing_ok=True)
    return AssignReport(notebooks=tuple(reports), removed=tuple(stale))


def outdated(source_dir: str | os.PathLike[str], target_dir: str | os.PathLike[str]) -> list[StaleExercise]:
    """The exercise files :func:`assign` would create, change or delete; empty when up to date.

    Writes nothing. Raises :class:`AssignError` like :func:`assign` if a solution is malformed.
    """
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    planned, stale = _plan(source_dir, target_dir)
    result = []
    for item in planned:
        current = _current_bytes(item.target)
        if current is None:
            result.append(StaleExercise(item.target, f"missing, {item.source} has no exercise yet"))
        elif current != item.text.encode("utf-8"):
            result.append(StaleExercise(item.target, f"differs from what {item.source} generates"))
    result += [StaleExercise(path, f"has no solutions notebook in {source_dir}") for path in stale]
    return result
