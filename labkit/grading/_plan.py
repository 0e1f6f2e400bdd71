"""What the grader runs for one submission: the student's cells with the canonical checks put back.

The grader never runs a student's check cells. It runs the student's other cells, in their order,
with the solution's own check cells (hidden ones included) slotted in where they belong::

    solution:   [setup] [md] [login*] [CHECK 1] [md] [report*] [CHECK 2] [HIDDEN 3] [md] [tidy]
    student:    [setup] [md] [login ] [check 1, edited] [extra] [md] [report ] [md] [tidy]
                                       (check 2 deleted)
    graded:     GRADER-SETUP [setup] [md] [login] CHECK 1 [extra] [md] [report] CHECK 2 HIDDEN 3 [md] [tidy]

How a check finds its place, first rule that applies:

1. the student's copy of the check replaces it in place: the cell whose metadata names the check,
   or whose cell id is the solution check cell's id, or whose source is exactly the check's source
   (metadata stripped, but unedited);
2. else just before the student's cell that matches the next solution cell after the check (same
   cell id, or, ids lost, same source): work the student added below a part stays above its check;
3. else just after the student's cell matching the previous solution cell;
4. else at the end.

Canonical check cells are rewritten so that every ``labkit`` name in them refers to a private copy
of the module bound by the grader's setup cell under a random name
(:func:`labkit.grading._inkernel.arm`): rebinding ``labkit`` or ``check`` in the notebook does not
reach them.
"""

from __future__ import annotations

import io
import os
import secrets
import tokenize
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabkitError

from ._submissions import StudentCell
from .notebook import AssignError, Part, exercise_id, parse_parts, read_notebook

__all__ = ["Exercise", "SolutionCell", "PlannedCell", "load_exercise", "plan_cells", "privatize", "new_alias"]


@dataclass(frozen=True)
class SolutionCell:
    """One cell of a solutions notebook, as the grader needs it."""

    cell_type: str
    source: str
    cell_id: str | None
    part: Part | None


@dataclass(frozen=True)
class Exercise:
    """An exercise as the grader knows it: its solutions notebook's cells and graded parts.

    ``warnings`` name checks that labkit does not provide (a notebook cell registers them, and a
    student can edit that cell): worth knowing before trusting their scores.
    """

    id: str
    path: Path
    parts: tuple[Part, ...]
    cells: tuple[SolutionCell, ...]
    kernel_name: str
    warnings: tuple[str, ...] = ()

    @property
    def points(self) -> float:
        """Points of every part, hidden ones included: the most a submission can score."""
        return sum(part.points for part in self.parts)

    def __repr__(self) -> str:
        return f"<Exercise {self.id} from {self.path}: {len(self.parts)} parts, {self.points:g} points>"


@dataclass(frozen=True)
class PlannedCell:
    """One code cell the grader runs: the grader's setup, a student's cell, or a canonical check.

    ``student_index`` (from 0) is set for the student's cells, ``part`` for checks.
    """

    kind: str  # "setup", "student" or "check"
    source: str
    student_index: int | None = None
    part: Part | None = None


def _normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def privatize(source: str, alias: str) -> str:
    """``source`` with every use of the name ``labkit`` replaced by ``alias``.

    ``labkit.check(...)`` becomes ``alias.check(...)``; attribute names (``x.labkit``) and import
    statements are left alone. Raises :class:`AssignError` if the source cannot be tokenized.
    """
    spots = []
    previous = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NAME and token.string == "labkit":
                after_dot = previous is not None and previous.string == "."
                in_import = previous is not None and previous.string in ("import", "from", "as")
                if not after_dot and not in_import:
                    spots.append(token.start)
            if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT,
                                  tokenize.DEDENT):
                previous = token
    except (tokenize.TokenError, SyntaxError) as exc:
        raise AssignError(f"a check cell cannot be tokenized ({exc}); fix the check cell's code") from exc
    lines = source.splitlines(keepends=True)
    for row, column in reversed(spots):
        line = lines[row - 1]
        lines[row - 1] = line[:column] + alias + line[column + len("labkit"):]
    return "".join(lines)


def new_alias() -> str:
    """A fresh, unguessable name for the grader's private ``labkit`` in one run."""
    return f"_labkit_grader_{secrets.token_hex(6)}"


def setup_source(alias: str, parts: Sequence[Part]) -> str:
    """The grader's first cell: arm the kernel, bind the private ``labkit`` to ``alias``."""
    ids = [part.id for part in parts]
    return f"{alias} = __import__('labkit.grading._inkernel', fromlist=['arm']).arm({ids!r})"


def load_exercise(path: str | os.PathLike[str]) -> Exercise:
    """Read one solutions notebook as an :class:`Exercise`; raise :class:`AssignError` if malformed."""
    from . import checks

    path = Path(path)
    nb = read_notebook(path)
    exercise = exercise_id(nb, source=path)
    parts = parse_parts(nb, source=path)
    by_index = {part.cell_index: part for part in parts}
    warnings = []
    for part in parts:
        source = nb.cells[part.cell_index].source
        if privatize(source, "_") == source:
            raise AssignError(f"{path}: check cell of {part.id!r} never names labkit; the grader runs check "
                              f"cells that call labkit.check(\"{part.id}\", ...)")
        try:
            checks._find(part.id)
        except LabkitError:
            warnings.append(f"{path}: {part.id!r} is not one of labkit's checks; a cell of the notebook "
                            f"registers it, and students can edit that cell, so its score is not tamper-proof")
    cells = tuple(SolutionCell(cell.cell_type, cell.source, cell.get("id"), by_index.get(index))
                  for index, cell in enumerate(nb.cells))
    kernel = nb.metadata.get("kernelspec", {}).get("name") or "python3"
    return Exercise(exercise, path, tuple(parts), cells, kernel, tuple(warnings))


def _student_copies(exercise: Exercise, cells: Sequence[StudentCell]) -> dict[int, str]:
    """Student cell index -> the check it is a copy of (rule 1 of the module docstring)."""
    by_id = {cell.cell_id: cell.part.id for cell in exercise.cells if cell.part and cell.cell_id}
    by_source = {_normalized(cell.source): cell.part.id for cell in exercise.cells if cell.part}
    known = {part.id for part in exercise.parts}
    copies = {}
    for cell in cells:
        claimed = cell.check if cell.check in known else None
        claimed = claimed or by_id.get(cell.cell_id or "")
        if claimed is None and cell.cell_type == "code":
            claimed = by_source.get(_normalized(cell.source))
        if claimed:
            copies[cell.index] = claimed
    return copies


def _anchors(exercise: Exercise, cells: Sequence[StudentCell], taken: Mapping[int, str]) -> dict[int, int]:
    """Solution cell index -> the student cell that matches it, by cell id, else by exact source."""
    student_by_id = {cell.cell_id: cell.index for cell in cells if cell.cell_id and cell.index not in taken}
    anchors: dict[int, int] = {}
    used: set[int] = set()
    for index, cell in enumerate(exercise.cells):
        if cell.part is None and cell.cell_id in student_by_id:
            anchors[index] = student_by_id[cell.cell_id]
            used.add(anchors[index])
    for index, cell in enumerate(exercise.cells):
        if cell.part is not None or index in anchors or not cell.source.strip():
            continue
        wanted = _normalized(cell.source)
        match = next((c.index for c in cells if c.index not in used and c.index not in taken
                      and c.cell_type == cell.cell_type and _normalized(c.source) == wanted), None)
        if match is not None:
            anchors[index] = match
            used.add(match)
    return anchors


def plan_cells(exercise: Exercise, cells: Sequence[StudentCell], alias: str) -> list[PlannedCell]:
    """The code cells to run for a submission, in order: setup, the student's, the canonical checks."""
    copies = _student_copies(exercise, cells)
    anchors = _anchors(exercise, cells, copies)
    first_copy: dict[str, int] = {}
    for index, part_id in sorted(copies.items()):
        first_copy.setdefault(part_id, index)
    keyed: list[tuple[tuple[int, int, int], PlannedCell]] = []
    for cell in cells:
        if cell.cell_type == "code" and cell.index not in copies:
            keyed.append(((cell.index, 0, 0), PlannedCell("student", cell.source, student_index=cell.index)))
    end = len(cells)
    for solution_index, solution_cell in enumerate(exercise.cells):
        part = solution_cell.part
        if part is None:
            continue
        if part.id in first_copy:
            key = (first_copy[part.id], 0, solution_index)
        else:
            following = [anchors[i] for i in range(solution_index + 1, len(exercise.cells)) if i in anchors]
            preceding = [anchors[i] for i in range(solution_index - 1, -1, -1) if i in anchors]
            if following:
                key = (following[0], -1, solution_index)
            elif preceding:
                key = (preceding[0], 1, solution_index)
            else:
                key = (end, 1, solution_index)
        keyed.append((key, PlannedCell("check", privatize(solution_cell.source, alias), part=part)))
    keyed.sort(key=lambda item: item[0])
    return [PlannedCell("setup", setup_source(alias, exercise.parts))] + [cell for _, cell in keyed]
