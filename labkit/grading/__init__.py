"""Exercises and grading: the authoring format, exercise generation, self-checks, running notebooks.

- :mod:`labkit.grading.notebook`: the format of solutions notebooks (:func:`parse_parts`,
  :func:`exercise_id`, :class:`Part`, :class:`AssignError`)
- :mod:`labkit.grading.assign`: solutions to student exercises (:func:`assign`, :func:`outdated`)
- :mod:`labkit.grading.checks`: :func:`check`, what a check cell runs, and :func:`register`
- :mod:`labkit.grading.runner`: :func:`run_notebook`, run an exercise and read each part's verdict
- :mod:`labkit.grading.grade`: :func:`grade`, fair scores for a batch of submissions, in parallel
  (``labkit grade``), and :func:`write_gradebook`
- ``labkit.grading.exNN``: the checks of exercise NN, loaded when first needed

Importing this package is cheap and has no side effects: nbformat, nbclient and jupyter_client,
the heavy dependencies, are imported only when a notebook is read, written or run.
"""

from __future__ import annotations

# The submodules are small and import nothing heavy (nbformat loads inside the functions that
# read or write notebooks), so they are imported eagerly. That also settles a name clash: loading
# the submodule ``labkit.grading.assign`` binds the package attribute ``assign`` to the module;
# ``from .assign import assign`` loads it and then rebinds the name to the function, for good,
# since later imports find the module in sys.modules and leave the package's attributes alone.
# A lazy (PEP 562) re-export would lose that race whenever the submodule is imported first.
from .assign import (
    ANSWER_STUB,
    CODE_STUB,
    DEFAULT_HINT,
    AssignReport,
    NotebookReport,
    StaleExercise,
    assign,
    make_exercise,
    outdated,
)
from .checks import CHECK_LOCK_ENV, RESULT_MIME, CheckFailed, CheckResult, Fail, NotDoneYet, check, register
from .grade import (
    Exercise,
    GradebookFiles,
    GradeError,
    GradeReport,
    GradeSettings,
    ProgressCallback,
    Submission,
    SubmissionError,
    SubmissionResult,
    SubmissionStatus,
    clean_text,
    connect_scheduler,
    default_lock_path,
    find_submissions,
    grade,
    load_exercise,
    load_solutions,
    prepare_out,
    sandbox_status,
    summary_table,
    write_gradebook,
)
from .notebook import (
    BEGIN_SOLUTION,
    CHECK_KEYS,
    END_SOLUTION,
    AssignError,
    Part,
    Region,
    describe_cell,
    exercise_id,
    find_regions,
    notebook_text,
    parse_parts,
    read_notebook,
)
from .runner import DEFAULT_CELL_TIMEOUT, PartOutcome, PartStatus, run_notebook

__all__ = [
    # checks: the self-check a check cell runs
    "check",
    "register",
    "CheckFailed",
    "CheckResult",
    "Fail",
    "NotDoneYet",
    "RESULT_MIME",
    "CHECK_LOCK_ENV",
    # runner: execute a notebook and read its verdicts
    "PartOutcome",
    "PartStatus",
    "run_notebook",
    "DEFAULT_CELL_TIMEOUT",
    # notebook: the authoring format
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
    # assign: exercise generation
    "CODE_STUB",
    "ANSWER_STUB",
    "DEFAULT_HINT",
    "NotebookReport",
    "AssignReport",
    "StaleExercise",
    "make_exercise",
    "assign",
    "outdated",
    # grade: grading a batch of submissions
    "grade",
    "load_solutions",
    "load_exercise",
    "find_submissions",
    "write_gradebook",
    "sandbox_status",
    "prepare_out",
    "summary_table",
    "clean_text",
    "connect_scheduler",
    "default_lock_path",
    "GradeSettings",
    "GradeReport",
    "GradeError",
    "SubmissionResult",
    "SubmissionStatus",
    "Submission",
    "SubmissionError",
    "Exercise",
    "GradebookFiles",
    "ProgressCallback",
]
