"""Reading verdicts and naming what went wrong: shared by ``labkit check`` and ``labkit grade``.

A part's outcome comes from a verdict when its check gave one (:func:`part_outcome`), and else
from how its check cell ended: timed out, killed with its kernel, never run, or raised before any
verdict. Problems in the cells above a failed check are added to its message
(:func:`problems_before`), so "name 'login' is not defined" comes with the reason: the cell that
should have defined it crashed the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ._engine import CellFate, CellRun, clean_text
from .checks import RESULT_MIME
from .notebook import Part

__all__ = ["MESSAGE_CHARS", "PartStatus", "PartOutcome", "recorded_verdict", "describe_cell_source", "cell_problems",
           "problems_before", "part_outcome"]


#: Characters kept of one part's message, whatever made it (a check, a cell's error, a seal).
MESSAGE_CHARS = 4_000


class PartStatus(str, Enum):
    """How a part ended: passed, failed its check, or never got a fair verdict (and why)."""

    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"  # the check cell ran over its time
    CRASHED = "crashed"  # the kernel died while the check ran
    NOT_RUN = "not run"  # the check never ran (time budget spent, the kernel kept dying)


@dataclass(frozen=True)
class PartOutcome:
    """One part's result: its id, points earned of those possible, and the message.

    ``status`` defaults to :attr:`PartStatus.PASSED` or :attr:`PartStatus.FAILED` from ``passed``.
    """

    part: str
    points: float
    max_points: float
    passed: bool
    message: str
    hidden: bool = False
    # Never None once made: __post_init__ fills it in from ``passed``. Typed as what readers get.
    status: PartStatus = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if len(self.message) > MESSAGE_CHARS:
            object.__setattr__(self, "message", clean_text(self.message, MESSAGE_CHARS))
        if self.status is None:
            object.__setattr__(self, "status", PartStatus.PASSED if self.passed else PartStatus.FAILED)


def recorded_verdict(cell: Any, part: Part) -> tuple[bool, str] | None:
    """The last check record of ``part`` the cell displayed, as ``(passed, message)``."""
    verdict = None
    for output in cell.get("outputs", []):
        record = output.get("data", {}).get(RESULT_MIME)
        if isinstance(record, dict) and record.get("part") == part.id:
            verdict = (bool(record.get("passed")), str(record.get("message", "")))
    return verdict


def describe_cell_source(source: str) -> str:
    """The first line of a cell, short, for a message: ``(`while True:`)``."""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    return f"(`{clean_text(first, 50)}`)" if first else ""


def cell_problems(nb: Any, runs: Sequence[CellRun | None], labels: Sequence[int | None],
                  start: int = 0, stop: int | None = None) -> list[str]:
    """One sentence per cell from ``start`` to ``stop - 1`` that did not end well.

    ``labels[i]`` is the number the reader knows cell ``i`` by (``None``: not the reader's cell,
    left out).
    """
    found = []
    for index in range(start, len(runs) if stop is None else stop):
        run = runs[index]
        if run is None or run.fate is CellFate.OK or labels[index] is None:
            continue
        name = f"cell {labels[index]} {describe_cell_source(nb.cells[index].source)}".strip()
        if run.fate is CellFate.ERROR:
            found.append(f"{name} raised {run.error}")
        elif run.fate is CellFate.TIMEOUT:
            found.append(f"{name} {run.reason}")
        elif run.fate is CellFate.DIED:
            found.append(f"{run.reason}, while {name} ran")
        else:
            found.append(f"{name} did not run: {run.reason}")
    return found


def problems_before(nb: Any, runs: Sequence[CellRun | None], start: int, stop: int, labels: Sequence[int | None],
                    limit: int = 3) -> str:
    """What went wrong in the cells ``start`` to ``stop - 1`` (see :func:`cell_problems`), as a sentence."""
    found = cell_problems(nb, runs, labels, start, stop)
    if not found:
        return ""
    more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
    return "Before this check, " + "; ".join(found[:limit]) + more + "."


def part_outcome(part: Part, run: CellRun | None, verdict: tuple[bool, str] | None, context: str = "",
                 *, no_verdict: str = "the check cell ran but showed no verdict: was it edited?") -> PartOutcome:
    """Score one part from its check's verdict, or say why there is none.

    ``context`` (from :func:`problems_before`) is added to the message of a part that did not pass.
    """
    def outcome(status: PartStatus, message: str) -> PartOutcome:
        passed = status is PartStatus.PASSED
        if not passed and context:
            message = f"{message} {context}"
        points = part.points if passed else 0
        return PartOutcome(part.id, points, part.points, passed, message, part.hidden, status)

    if verdict is not None:
        passed, message = verdict
        return outcome(PartStatus.PASSED if passed else PartStatus.FAILED, message)
    if run is None or run.fate is CellFate.NOT_RUN:
        reason = run.reason if run is not None and run.reason else "an earlier cell stopped the run"
        return outcome(PartStatus.NOT_RUN, f"the check cell did not run: {reason}.")
    if run.fate is CellFate.TIMEOUT:
        return outcome(PartStatus.TIMEOUT, f"the check cell {run.reason}: does the code it calls loop forever, "
                                           f"or wait for something that never comes?")
    if run.fate is CellFate.DIED:
        return outcome(PartStatus.CRASHED, f"{run.reason}, while this check ran.")
    if run.fate is CellFate.ERROR:
        return outcome(PartStatus.FAILED, f"the check could not run: {run.error}.")
    return outcome(PartStatus.FAILED, no_verdict)
