"""Run an exercise notebook in a fresh kernel and read back each part's verdict.

This is what ``labkit check NOTEBOOK`` does for a student, on the same engine the grader uses
(:mod:`labkit.grading._engine`): every cell runs in order (a failing cell does not stop the run, so
one unfinished part does not hide the others), a cell over its timeout is interrupted and the run
goes on, and a kernel that dies is replaced so the later parts still get their verdict. Then each
check cell is read:

- it displayed a check record (:data:`~labkit.grading.checks.RESULT_MIME`): that is the verdict;
- it raised before any record (say, ``NameError`` for a function the student deleted): failed,
  with the error as the reason, and with what went wrong in the cells just above it;
- it timed out, or the kernel died while it ran, or it never ran: the part's
  :class:`PartStatus` says which, and the message says why.

This reader trusts the notebook it runs: it is a student checking their own work. The grader
(:mod:`labkit.grading.grade`) reads verdicts that the student's code cannot forge.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._engine import DEFAULT_CELL_TIMEOUT, EngineSettings, NotebookRun, run_sync
from ._outcomes import PartOutcome, PartStatus, part_outcome, problems_before, recorded_verdict
from .notebook import parse_parts, read_notebook

__all__ = ["PartOutcome", "PartStatus", "run_notebook", "DEFAULT_CELL_TIMEOUT"]


def run_notebook(path: str | os.PathLike[str], *, timeout: int = DEFAULT_CELL_TIMEOUT,
                 kernel_name: str = "python3", cwd: str | os.PathLike[str] | None = None):
    """Execute the notebook at ``path`` in a fresh kernel; return ``(executed notebook, outcomes)``.

    ``outcomes`` holds one :class:`PartOutcome` per check cell, in cell order. The kernel starts
    in ``cwd`` (default: the notebook's folder), so the notebook finds the files beside it.
    """
    path = Path(path)
    nb = read_notebook(path)
    parts = parse_parts(nb, source=path)
    check_cells = {part.cell_index for part in parts}
    engine = NotebookRun(
        nb, EngineSettings(timeout=timeout, kernel_name=kernel_name), workdir=Path(cwd or path.parent),
        replayable=lambda index: index not in check_cells,
    )
    runs = run_sync(engine.run)
    labels = list(range(1, len(nb.cells) + 1))
    outcomes = []
    previous = 0
    for part in parts:
        run = runs[part.cell_index]
        verdict = recorded_verdict(nb.cells[part.cell_index], part)
        context = problems_before(nb, runs, previous, part.cell_index, labels)
        outcomes.append(part_outcome(part, run, verdict, context))
        previous = part.cell_index + 1
    return nb, outcomes
