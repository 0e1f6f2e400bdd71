"""The records a grading run produces: one :class:`SubmissionResult` per notebook, one report."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from labkit.errors import LabkitError

from ._submissions import Submission
from .runner import PartOutcome

__all__ = ["PROBLEMS_KEPT", "GradeError", "SubmissionStatus", "SubmissionResult", "GradeReport"]


#: Problems kept per submission (cells that raised, timed out or crashed), and characters each;
#: the last one kept says how many more there were.
PROBLEMS_KEPT = 50
PROBLEM_CHARS = 1_000
#: Characters kept of a submission's message (why it was rejected or could not be graded).
MESSAGE_CHARS = 4_000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class GradeError(LabkitError, RuntimeError):
    """Grading cannot start (no solutions, nothing to grade, nowhere to write); the message says why."""


class SubmissionStatus(str, Enum):
    """Whether a submission was graded, turned away, or hit a failure of the grader itself."""

    GRADED = "graded"  # its cells ran; every part has a score, zeros included
    REJECTED = "rejected"  # not gradable as it is: empty, cut off, not a notebook, unknown exercise
    ERROR = "error"  # the grader could not run it (no kernel could start, a bug): not the student's fault


@dataclass(frozen=True)
class SubmissionResult:
    """Everything the grader found out about one submission.

    ``outcomes`` holds one :class:`~labkit.grading.runner.PartOutcome` per part of the exercise,
    hidden ones included, in the solution's order. ``message`` says why a submission was rejected
    or could not be graded. ``problems`` lists the student's cells that raised, timed out or
    crashed the kernel, for the feedback. ``max_points`` is the exercise's total, when known.
    ``seconds`` is the wall time the submission took, waits included; ``check_seconds`` the part
    of it spent running check cells, which take turns across jobs.
    """

    submission: Submission
    exercise: str | None
    status: SubmissionStatus
    outcomes: tuple[PartOutcome, ...] = ()
    message: str = ""
    problems: tuple[str, ...] = ()
    max_points: float = 0.0
    seconds: float = 0.0
    check_seconds: float = 0.0
    kernels: int = 0

    def __post_init__(self) -> None:
        # Whatever a submission made its kernel say, the record of it stays small.
        object.__setattr__(self, "message", _cut(str(self.message), MESSAGE_CHARS))
        problems = tuple(_cut(str(problem), PROBLEM_CHARS) for problem in self.problems[:PROBLEMS_KEPT])
        if len(self.problems) > PROBLEMS_KEPT:
            problems += (f"(and {len(self.problems) - PROBLEMS_KEPT} more problems, not listed)",)
        object.__setattr__(self, "problems", problems)

    @property
    def student(self) -> str:
        """The student the submission belongs to."""
        return self.submission.student

    @property
    def points(self) -> float:
        """Points earned, hidden parts included."""
        return sum(outcome.points for outcome in self.outcomes)

    def __repr__(self) -> str:
        return (f"<SubmissionResult {self.student} {self.exercise or '?'} {self.status.value} "
                f"{self.points:g}/{self.max_points:g}>")


@dataclass(frozen=True)
class GradeReport:
    """The results of one grading run, in the order the submissions were given.

    ``sandbox`` says how the kernels were isolated (see :func:`labkit.grading.grade.sandbox_status`).
    """

    results: tuple[SubmissionResult, ...]
    seconds: float
    jobs: int
    sandbox: str = ""

    @property
    def complete(self) -> bool:
        """True when the grader itself failed on no submission (zero scores are fine)."""
        return all(result.status is not SubmissionStatus.ERROR for result in self.results)

    def __repr__(self) -> str:
        return f"<GradeReport {len(self.results)} submissions, {self.jobs} jobs, {self.seconds:.1f} s>"
