"""The exercise authoring format: reading it, checking it, and naming what is wrong with it.

An exercise is written once, complete, as a solutions notebook. Three kinds of marks turn it into
something :mod:`labkit.grading.assign` can publish and the grader can score::

    notebook metadata   {"labkit": {"exercise": "ex01", "lab": "01_event_loop_blocking"}}

    code cell           def handler():
                            ### BEGIN SOLUTION hint: hand the work to a thread pool
                            return await loop.run_in_executor(pool, work)
                            ### END SOLUTION

    check cell          metadata {"labkit": {"check": "ex01.offload", "points": 3}}
                        labkit.check("ex01.offload", ...)     (add "hidden": true to keep it secret)

Think of the markers as the tape an editor puts over the answers before photocopying a worksheet:
everything between them is covered, everything else is copied as it is. Markdown cells may hold a
region too, for written answers.

Everything here is strict on purpose. A typo in a marker (``# BEGIN SOLUTION``) or in a check's
metadata (``"hiden": true``) would otherwise publish a solution or a hidden check to every student, so
each of them raises :class:`AssignError` naming the notebook, the cell and the fix.

Cell indices in messages and in :class:`Part` count from 0, like ``nb.cells``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError

__all__ = [
    "AssignError",
    "Part",
    "Region",
    "BEGIN_SOLUTION",
    "END_SOLUTION",
    "CHECK_KEYS",
    "exercise_id",
    "parse_parts",
    "find_regions",
    "read_notebook",
    "notebook_text",
    "describe_cell",
]

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"

#: Keys a check cell's ``labkit`` metadata may hold. Anything else is refused, so that a misspelt
#: ``"hidden"`` cannot quietly publish a hidden check. Extend this set when the format grows.
CHECK_KEYS = frozenset({"check", "points", "hidden"})

# "ex01": the exercise; "ex01.offload", "ex01.part_2.fast": its checks.
_EXERCISE_RE = re.compile(r"[a-z0-9_]+")
_CHECK_ID_RE = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)+")

_BEGIN_RE = re.compile(r"(?P<indent>[ \t]*)### BEGIN SOLUTION(?P<rest>.*?)[ \t]*\r?\n?")
_END_RE = re.compile(r"(?P<indent>[ \t]*)### END SOLUTION[ \t]*\r?\n?")
_HINT_RE = re.compile(r"[ \t]+hint:[ \t]*(?P<hint>.*)")
# Anything that looks like a marker but is not one exactly: "# BEGIN SOLUTION", "###end solution".
_NEAR_MISS_RE = re.compile(r"[ \t]*#+[ \t]*(?:BEGIN|END)[ \t]+SOLUTION\b", re.IGNORECASE)


class AssignError(LabkitError, ValueError):
    """A solutions notebook breaks the authoring format; the message names the file, cell and fix."""


@dataclass(frozen=True)
class Part:
    """One graded part of an exercise: a check cell, its id and what it is worth.

    ``cell_index`` counts from 0 in the notebook the part was parsed from; ``cell_id`` is the
    nbformat cell id (``None`` in notebooks older than format 4.5, which have none).
    """

    id: str
    points: float
    hidden: bool
    cell_index: int
    cell_id: str | None


@dataclass(frozen=True)
class Region:
    """One solution region of a cell: source lines ``start`` to ``end`` inclusive (the markers)."""

    start: int
    end: int
    indent: str
    hint: str | None


def describe_cell(source: str | os.PathLike[str] | None, index: int, cell: Mapping[str, Any]) -> str:
    """Name a cell for an error message: ``solutions/01_x.ipynb: cell 3 (id 'a1b2')``."""
    where = f"{os.fspath(source)}: " if source is not None else ""
    cell_id = cell.get("id")
    return f"{where}cell {index} ({f'id {cell_id!r}' if cell_id else 'no id'}, {cell.get('cell_type', '?')})"


def _name(source: str | os.PathLike[str] | None) -> str:
    return os.fspath(source) if source is not None else "notebook"


def exercise_id(nb: Mapping[str, Any], *, source: str | os.PathLike[str] | None = None) -> str:
    """The exercise a notebook belongs to, from ``nb.metadata["labkit"]["exercise"]``.

    Raises :class:`AssignError` if the metadata is missing or malformed; ``source`` (the file name)
    only makes the message more useful.
    """
    meta = nb.get("metadata", {}).get("labkit")
    fix = (
        'add {"labkit": {"exercise": "ex01", "lab": "01_event_loop_blocking"}} to the notebook '
        "metadata (JupyterLab: Property Inspector, Notebook metadata)"
    )
    if not isinstance(meta, Mapping) or "exercise" not in meta:
        raise AssignError(f"{_name(source)}: no labkit.exercise in the notebook metadata; {fix}")
    exercise = meta["exercise"]
    if not isinstance(exercise, str) or not _EXERCISE_RE.fullmatch(exercise):
        raise AssignError(
            f"{_name(source)}: labkit.exercise is {exercise!r}; it must be a short id of lowercase "
            f"letters, digits and underscores such as 'ex01'"
        )
    lab = meta.get("lab")
    if lab is not None and (not isinstance(lab, str) or not lab):
        raise AssignError(f"{_name(source)}: labkit.lab is {lab!r}; use the lab's notebook name or drop it")
    return exercise


def _check_part(
    nb: Mapping[str, Any], index: int, cell: Mapping[str, Any], meta: Mapping[str, Any], source: Any
) -> Part:
    where = describe_cell(source, index, cell)
    exercise = exercise_id(nb, source=source)
    if "check" not in meta:
        raise AssignError(
            f"{where}: labkit metadata {dict(meta)!r} has no check id; add "
            f'"check": "{exercise}.<name>" or remove the labkit metadata'
        )
    check_id = meta["check"]
    if not isinstance(check_id, str) or not _CHECK_ID_RE.fullmatch(check_id):
        raise AssignError(
            f"{where}: check id {check_id!r} is invalid; use '{exercise}.<name>' with lowercase "
            f"letters, digits, dots and underscores, e.g. '{exercise}.offload'"
        )
    if check_id.split(".", 1)[0] != exercise:
        raise AssignError(
            f"{where}: check id {check_id!r} does not belong to exercise {exercise!r}; "
            f"rename it '{exercise}.{check_id.split('.', 1)[1]}'"
        )
    unknown = sorted(set(meta) - CHECK_KEYS)
    if unknown:
        raise AssignError(
            f"{where}: check {check_id!r} has unknown labkit metadata {unknown}; "
            f"allowed keys are {sorted(CHECK_KEYS)}"
        )
    if cell.get("cell_type") != "code":
        raise AssignError(f"{where}: check {check_id!r} is not a code cell; a check must be code that runs")
    points = meta.get("points")
    if isinstance(points, bool) or not isinstance(points, (int, float)) or not math.isfinite(points) or points <= 0:
        raise AssignError(
            f"{where}: check {check_id!r} has points {points!r}; "
            f'give it a positive number, e.g. "points": 2'
        )
    hidden = meta.get("hidden", False)
    if not isinstance(hidden, bool):
        raise AssignError(f'{where}: check {check_id!r} has "hidden": {hidden!r}; use true or false')
    return Part(id=check_id, points=points, hidden=hidden, cell_index=index, cell_id=cell.get("id"))


def parse_parts(nb: Mapping[str, Any], *, source: str | os.PathLike[str] | None = None) -> list[Part]:
    """Every check cell of a notebook as a :class:`Part`, hidden ones included, in cell order.

    A cell is a check cell when its ``labkit`` metadata has a ``"check"`` id. Raises
    :class:`AssignError` for a malformed check (bad id, points, hidden flag or unknown key), a check
    that is not a code cell, or two checks with the same id.
    """
    parts: list[Part] = []
    seen: dict[str, int] = {}
    for index, cell in enumerate(nb.get("cells", [])):
        meta = cell.get("metadata", {}).get("labkit")
        if meta is None:
            continue
        if not isinstance(meta, Mapping):
            raise AssignError(
                f"{describe_cell(source, index, cell)}: labkit metadata is {meta!r}; it must be an object "
                f'such as {{"check": "ex01.name", "points": 1}}'
            )
        if set(meta) <= {"solution"}:
            continue  # a solution cell of a generated exercise, not a check
        part = _check_part(nb, index, cell, meta, source)
        if part.id in seen:
            raise AssignError(
                f"{describe_cell(source, index, cell)}: check id {part.id!r} is already used by cell "
                f"{seen[part.id]}; give each check its own id"
            )
        seen[part.id] = index
        parts.append(part)
    return parts


def find_regions(text: str, *, where: str = "cell") -> list[Region]:
    """The solution regions of one cell's source, in order.

    ``where`` names the cell in error messages. Raises :class:`AssignError` for a BEGIN without END,
    an END without BEGIN, a BEGIN inside a region, an empty hint, or a line that looks like a marker
    but is not exactly one (``# BEGIN SOLUTION``, ``### end solution``).
    """
    regions: list[Region] = []
    open_at: int | None = None
    indent, hint = "", None
    for number, line in enumerate(text.splitlines(keepends=True)):
        begin, end = _BEGIN_RE.fullmatch(line), _END_RE.fullmatch(line)
        if begin:
            rest = begin["rest"]
            hint_match = _HINT_RE.fullmatch(rest)
            if rest and not hint_match:
                raise AssignError(
                    f"{where}, line {number + 1}: unexpected text {rest.strip()!r} after {BEGIN_SOLUTION}; "
                    f"write '{BEGIN_SOLUTION} hint: <hint>' or nothing after the marker"
                )
            if open_at is not None:
                raise AssignError(
                    f"{where}, line {number + 1}: {BEGIN_SOLUTION} inside the region opened on line "
                    f"{open_at + 1}; regions cannot nest, close the first with {END_SOLUTION}"
                )
            if hint_match and not hint_match["hint"].strip():
                raise AssignError(
                    f"{where}, line {number + 1}: empty hint after {BEGIN_SOLUTION}; "
                    f"write the hint after 'hint:' or drop 'hint:'"
                )
            open_at, indent = number, begin["indent"]
            hint = hint_match["hint"].strip() if hint_match else None
        elif end:
            if open_at is None:
                raise AssignError(
                    f"{where}, line {number + 1}: {END_SOLUTION} without a {BEGIN_SOLUTION} before it; "
                    f"add the BEGIN marker above the solution or delete this line"
                )
            regions.append(Region(start=open_at, end=number, indent=indent, hint=hint))
            open_at = None
        elif _NEAR_MISS_RE.match(line):
            raise AssignError(
                f"{where}, line {number + 1}: {line.strip()!r} looks like a solution marker but is not "
                f"one; write exactly '{BEGIN_SOLUTION}' or '{END_SOLUTION}' on its own line"
            )
    if open_at is not None:
        raise AssignError(
            f"{where}, line {open_at + 1}: {BEGIN_SOLUTION} is never closed; "
            f"add '{END_SOLUTION}' after the solution"
        )
    return regions


def _check_ids(data: Mapping[str, Any], source: str) -> None:
    """Cell ids must be present and unique from format 4.5 on; nbformat would invent random ones."""
    if data.get("nbformat_minor", 0) < 5:
        return
    seen: dict[str, int] = {}
    for index, cell in enumerate(data["cells"]):
        cell_id = cell.get("id") if isinstance(cell, Mapping) else None
        if not isinstance(cell_id, str) or not cell_id:
            raise AssignError(
                f"{describe_cell(source, index, cell if isinstance(cell, Mapping) else {})}: the cell has "
                f"no id; open and save the notebook in JupyterLab 4 to give every cell one"
            )
        if cell_id in seen:
            raise AssignError(
                f"{describe_cell(source, index, cell)}: cell id {cell_id!r} is also used by cell "
                f"{seen[cell_id]}; change one of them"
            )
        seen[cell_id] = index


def read_notebook(path: str | os.PathLike[str]) -> Any:
    """Read and validate a format-4 notebook file into an ``nbformat.NotebookNode``.

    Unlike ``nbformat.read`` it never repairs quietly: missing or duplicate cell ids, invalid JSON
    and schema violations raise :class:`AssignError` naming the file.
    """
    import nbformat  # deferred: importing nbformat takes a noticeable fraction of a second

    source = os.fspath(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AssignError(f"{source}: cannot read the notebook ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise AssignError(
            f"{source}: not valid notebook JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            f"fix the file or restore it from git"
        ) from exc
    if not isinstance(data, dict) or data.get("nbformat") != 4 or not isinstance(data.get("cells"), list):
        raise AssignError(
            f"{source}: not an nbformat 4 notebook (no 'nbformat': 4 and 'cells' list); "
            f"save it with JupyterLab 4"
        )
    _check_ids(data, source)
    try:
        nb = nbformat.v4.to_notebook_json(data)
        nbformat.validate(nb)  # ids were checked above, so this cannot invent any
    except (nbformat.ValidationError, AttributeError, KeyError, TypeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AssignError(f"{source}: invalid notebook ({message}); fix the file or restore it from git") from exc
    return nb


def notebook_text(nb: Any) -> str:
    """The notebook as the exact text written to disk: nbformat JSON, indent 1, one final newline."""
    import nbformat  # deferred, see read_notebook

    return nbformat.writes(nb, version=nbformat.NO_CONVERT).rstrip("\n") + "\n"
