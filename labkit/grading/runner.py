"""Run an exercise notebook in a fresh kernel and read back each part's verdict.

This is what ``labkit check NOTEBOOK`` does for a student, and the first step of grading: execute
every cell in order (a failing cell does not stop the run, so one unfinished part does not hide
the others), then look at each check cell:

- it displayed a check record (:data:`~labkit.grading.checks.RESULT_MIME`): that is the verdict;
- it raised before any record (say, ``NameError`` for a function the student deleted): failed,
  with the error as the reason;
- it never finished (the cell timed out): failed, "timed out".
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .checks import RESULT_MIME
from .notebook import parse_parts, read_notebook

__all__ = ["PartOutcome", "run_notebook", "DEFAULT_CELL_TIMEOUT"]

#: Seconds one cell may run. Checks retry a spoiled measurement up to three times, and the slowest
#: does a few seconds of work each time on a loaded machine; a minute leaves a wide margin.
DEFAULT_CELL_TIMEOUT = 60


@dataclass(frozen=True)
class PartOutcome:
    """One part's result: its id, points earned of those possible, and the message."""

    part: str
    points: float
    max_points: float
    passed: bool
    message: str
    hidden: bool = False


def run_notebook(path: str | os.PathLike[str], *, timeout: int = DEFAULT_CELL_TIMEOUT,
                 kernel_name: str = "python3", cwd: str | os.PathLike[str] | None = None):
    """Execute the notebook at ``path`` in a fresh kernel; return ``(executed notebook, outcomes)``."""
    import nbclient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path = Path(path)
    nb = read_notebook(path)
    parts = parse_parts(nb, source=path)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )
    failure = None
    try:
        # The kernel's own log lines (transport warnings and the like) are not the student's
        # business; its outputs arrive through the notebook protocol, not through stderr.
        client.execute(stderr=subprocess.DEVNULL)
    except CellTimeoutError:
        failure = f"a cell ran longer than {timeout} s and was stopped"
    except DeadKernelError:
        failure = "the kernel died while running the notebook"
    return nb, [_outcome(nb.cells[p.cell_index], p, failure) for p in parts]


def _outcome(cell, part, failure: str | None) -> PartOutcome:
    def result(passed: bool, message: str) -> PartOutcome:
        return PartOutcome(part.id, part.points if passed else 0, part.points, passed, message, part.hidden)

    for output in cell.get("outputs", []):
        record = output.get("data", {}).get(RESULT_MIME)
        if record and record.get("part") == part.id:
            return result(bool(record.get("passed")), str(record.get("message", "")))
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return result(False, f"the check could not run: {output.get('ename')}: {output.get('evalue')}")
    if cell.get("execution_count") is None:
        return result(False, f"the check cell did not run ({failure or 'an earlier cell stopped the run'})")
    return result(False, "the check cell ran but reported nothing: was it edited?")
