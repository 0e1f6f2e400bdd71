"""Grade a batch of students' exercise notebooks, fairly and in parallel: what ``labkit grade`` runs.

::

    SUBMISSION...  --find_submissions-->  [alice.ipynb, bob/01_x.ipynb, ...]
                                               |  read leniently; matched to its exercise by
                                               |  metadata (labkit.exercise), not by file name
    solutions/  --load_solutions-->  Exercise  |
                                        \\      v
                           plan: the student's cells + the canonical checks (hidden ones too)
                                               |
       --jobs workers, each: fresh kernel in a sandbox of its own, fresh key (engine: _engine.py)
                                               |  check cells take turns (one at a time), and
                                               |  hold the machine-wide lock file while they run
                                               v
                   SubmissionResult per notebook --write_gradebook--> CSV, JSON per submission,
                                                                      Markdown per student

Every submission ends as one :class:`SubmissionResult`, whatever it does: a notebook that loops,
crashes its kernel, is cut off mid-JSON or belongs to an unknown exercise gets zeros with the
reason, and the batch goes on. Only a broken grading setup (no solutions, no kernel) is an error.

On a Dask cluster
-----------------
With ``scheduler`` (``labkit grade --scheduler tcp://HOST:PORT``), the submissions are read here
and each is sent, with its exercise, as one task to a Dask worker, which runs the same engine in
the same sandbox and returns the :class:`SubmissionResult`; the gradebook is written here. How
workers are checked, how a worker's death is survived and how checks take turns per machine:
:mod:`labkit.grading._dask`.

Speed checks and parallel grading
---------------------------------
Checks that measure speed compare the student's code with a reference run on the same machine,
so two checks measuring at once would disturb each other. Check cells therefore take turns across
the jobs of a run (their timeout starts when their turn does), and :func:`labkit.check` holds the
lock file named by :data:`~labkit.grading.checks.CHECK_LOCK_ENV` while it runs, which also keeps
two graders on one machine from measuring at once. Students' other cells run in parallel.

Threat model
------------
The grader runs students' code, so it assumes that code may try to raise its own score.

Defended (a notebook cannot raise its score by):

- editing, deleting, moving or re-tagging check cells, or stripping metadata: the solution's check
  cells replace the student's (see :mod:`labkit.grading._plan`) and hidden checks are added;
- stored outputs: they are dropped unread; everything is scored from the grader's own run;
- printing a pass line or displaying a fake check record (``RESULT_MIME``), in any cell or from
  code a check calls: a part scores only from a *seal* displayed by the canonical check cell's own
  execution and carrying an HMAC under a per-submission secret key that no cell source,
  variable, file or environment variable holds once the student's code starts
  (:mod:`labkit.grading._inkernel`);
- rebinding ``labkit``, ``check`` or other names in its namespace: check cells use a private copy
  of ``labkit`` bound under a random name before the student's code runs;
- changing labkit's functions, classes' attributes or constants, or the ``time`` module's functions
  (``labkit.measure.best_of = ...``, ``labkit.probe.LoopProbe.timeline = ...``,
  ``labkit.grading.ex01.BLOCKED_SHARE = 1e9``), before a check or while it runs: a check finds the
  change and fails with a message naming it;
- returning objects that decide comparisons (an ``__eq__`` that always agrees, a subclass of the
  expected type, a metaclass that lies about its classes): answers are rebuilt from plain built-in
  values before any comparison, and anything else is refused (:mod:`labkit.grading._values`);
- a malformed submission file, JSON nested too deep included, or any error while one submission is
  read or planned: that submission's ``rejected`` or ``error`` line, and the batch goes on;
- looping, sleeping, crashing or exhausting memory: per-cell and per-submission time limits, a
  memory limit, and a fresh kernel after a crash give zeros for the parts broken, no more;
- huge outputs, control characters and terminal escapes in messages, names starting with ``=``
  (spreadsheet formulas), thousands of records of the grader's own seal type: capped, stripped,
  quoted (:mod:`labkit.grading._kernel`, :mod:`labkit.grading._results`);
- stealing keys: every kernel, a replacement after a crash included, gets a fresh key in a 0700
  folder of its own, read and deleted by the grader's first cell; a seal counts only under the key
  of the kernel that ran the check, so a key from another kernel is worth nothing.

With the sandbox (:mod:`labkit.grading._sandbox`; bubblewrap, on Linux; the run's
:func:`sandbox_status` line says whether it is in use), each kernel also runs in PID, network,
IPC and mount namespaces of its own, without capabilities, so a notebook cannot:

- leave a process behind (new sessions and double forks die with the kernel's namespace);
- leave shared memory behind (its ``/dev/shm`` is a private tmpfs);
- reach the grader, another submission's servers or anything on the host's network (loopback only;
  the kernel's channels are Unix sockets in its own folder);
- write anywhere but its own working folder, ``/tmp``, IPython's folders and ``/dev/shm`` (the
  root is read-only and cannot be remounted), nor see the solutions, the other submissions, their
  scratch folders or ``--out`` (covered, and ``/proc`` lists only its own processes);
  ``--out`` is in any case written from a fresh folder moved into place at the end.

Without the sandbox (no bwrap, no namespaces, or ``LABKIT_GRADE_SANDBOX=0``), kernels run in
sessions of their own and processes that carry a kernel's environment mark are killed with it;
network, file and cross-submission reads are then as open as the grader's own user's.

Out of scope, even with the sandbox:

- deliberate introspection of the grader's agent in the kernel (closures, ``gc``, frames) to
  find the key of *its own* kernel, or patching IPython, the kernel or native code: the key
  lives in the same interpreter as the student's code (it is gone from files and the
  environment, but not from memory);
- filling its private ``/tmp`` or ``/dev/shm`` (tmpfs, held in the machine's memory, not counted
  by the memory watch), fork bombs, and holding the machine-wide lock file (bound read-only into
  every sandbox: ``flock`` needs no write access) to slow other checks down;
- reading files the grader's user may read outside the covered folders (the root file system is
  visible, read-only).

For hostile code without bubblewrap, run ``labkit grade`` inside a container or a throwaway user
account.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.errors import ConfigurationError

from ._engine import (
    DEFAULT_CELL_TIMEOUT,
    MAX_KERNELS,
    CellFate,
    EngineSettings,
    NotebookRun,
    check_cell_timeout,
    run_sync,
)
from ._gradebook import GradebookFiles, prepare_out, summary_table, write_gradebook
from ._inkernel import ARM_ENV, SEAL_MIME, verify_seals
from ._kernel import clean_text
from ._outcomes import PartOutcome, cell_problems, part_outcome, problems_before, recorded_verdict
from ._plan import Exercise, load_exercise, new_alias, plan_cells
from ._results import GradeError, GradeReport, SubmissionResult, SubmissionStatus
from ._sandbox import Room, SandboxInfo, describe_sandbox, detect
from ._submissions import StudentNotebook, Submission, SubmissionError, find_submissions, read_submission
from .checks import CHECK_LOCK_ENV
from .notebook import AssignError, Part

if TYPE_CHECKING:
    from ._dask import DaskCluster

__all__ = [
    "GradeError",
    "GradeSettings",
    "GradeReport",
    "SubmissionResult",
    "SubmissionStatus",
    "Submission",
    "SubmissionError",
    "Exercise",
    "GradebookFiles",
    "find_submissions",
    "load_solutions",
    "load_exercise",
    "grade",
    "write_gradebook",
    "default_lock_path",
    "ProgressCallback",
    "sandbox_status",
    "connect_scheduler",
    # for front ends such as `labkit grade`: the --out folder, the closing table, names made safe to print
    "prepare_out",
    "summary_table",
    "clean_text",
]

#: A submission may use this many per-cell timeouts in all, restarts and replays included.
BUDGET_CELLS = 10
#: Share of the machine's memory all the jobs' kernels may use together (when no limit is given).
MEMORY_SHARE = 0.8


@dataclass(frozen=True)
class Option:
    """How a :class:`GradeSettings` field appears on ``labkit grade``'s command line.

    ``parse`` turns the option's text into the field's value (raising ``ValueError`` with a
    message for a bad one). ``default_text`` says what the default means when the value alone
    would not (``None`` for the budget is "ten cell timeouts"); ``command_default`` is the
    command's own default when it differs from the field's (the command grades with every core).
    """

    flag: str
    help: str
    parse: Callable[[str], Any]
    metavar: str
    default_text: str | None = None
    command_default: Any = None


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def _at_least_one(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise ValueError(f"expected at least 1, got {value}")
    return value


def _cell_timeout(text: str) -> int:
    value = _whole_number(text)
    check_cell_timeout(value)
    return value


def _megabytes(text: str) -> int:
    return _at_least_one(text) * 2**20


def _jobs(text: str) -> int | str:
    if text == "max":
        return text
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected 'max' or a whole number, got {text!r}") from None
    if value < 1:
        raise ValueError(f"expected at least 1 job, got {value}")
    return value


def _scheduler_address(text: str) -> str:
    address = text.strip()
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or (scheme and scheme not in ("tcp", "tls")):
        raise ValueError(f"expected a Dask scheduler's address such as tcp://192.0.2.7:8786, got {text!r}")
    return address if scheme else f"tcp://{address}"


def _option(default: Any, flag: str, help: str, parse: Callable[[str], Any], metavar: str, **more: Any) -> Any:
    return field(default=default, metadata={"option": Option(flag, help, parse, metavar, **more)})


@dataclass(frozen=True)
class GradeSettings:
    """How a grading run is bounded and spread.

    ``timeout``: seconds per cell. ``budget``: seconds per submission, restarts included (default
    ``BUDGET_CELLS`` cell timeouts). ``memory_limit``: bytes one kernel and its processes may hold
    (default: ``MEMORY_SHARE`` of the machine's memory, shared by the jobs). ``jobs``: submissions
    graded at once. ``scheduler``: the address of a Dask scheduler whose workers grade the
    submissions instead of this machine (:mod:`labkit.grading._dask`); ``jobs`` is then unused.
    ``lock_path``: the machine-wide lock file of speed checks (default
    :func:`default_lock_path`). ``max_kernels``: kernel starts per submission before the grader
    gives up on it. ``extra_env``: environment variables added to every kernel's.
    """

    timeout: int = _option(DEFAULT_CELL_TIMEOUT, "--timeout", "seconds one cell may run", _cell_timeout,
                           "SECONDS")
    budget: float | None = _option(None, "--submission-timeout",
                                   "seconds one submission may run in all, restarts included", _at_least_one,
                                   "SECONDS", default_text=f"{BUDGET_CELLS} cell timeouts")
    memory_limit: int | None = _option(None, "--memory-limit", "memory one kernel and its processes may use",
                                       _megabytes, "MB",
                                       default_text=f"{MEMORY_SHARE:.0%} of the machine's, shared by the jobs")
    jobs: int = _option(1, "--jobs", "submissions graded at once: a number, or 'max' for this machine's usable "
                        "cores", _jobs, "N", command_default="max")
    scheduler: str | None = _option(None, "--scheduler", "grade on the Dask cluster of this scheduler, one "
                                    "submission per worker thread, instead of this machine's --jobs",
                                    _scheduler_address, "tcp://HOST:PORT", default_text="this machine alone")
    lock_path: Path | None = None
    max_kernels: int = MAX_KERNELS
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_cell_timeout(self.timeout)
        if self.jobs < 1:
            raise ConfigurationError(f"jobs must be at least 1, got {self.jobs}")
        if self.budget is not None and self.budget < self.timeout:
            raise ConfigurationError(f"the submission budget ({self.budget:g} s) must be at least one cell "
                                     f"timeout ({self.timeout} s)")

    def engine(self, kernel_name: str) -> EngineSettings:
        """The engine's settings for one submission of an exercise run by ``kernel_name``."""
        memory = self.memory_limit
        if memory is None:
            import psutil

            memory = int(psutil.virtual_memory().total * MEMORY_SHARE / self.jobs)
        return EngineSettings(
            timeout=self.timeout, budget=self.budget or BUDGET_CELLS * self.timeout, kernel_name=kernel_name,
            memory_limit=memory, max_kernels=self.max_kernels, env=dict(self.extra_env))


def default_lock_path() -> Path:
    """The lock file speed checks share on this machine.

    ``$LABKIT_CHECK_LOCK`` when set (:data:`~labkit.grading.checks.CHECK_LOCK_ENV`), else
    ``labkit-checks.lock`` in the temporary folder.
    """
    return Path(os.environ.get(CHECK_LOCK_ENV) or Path(tempfile.gettempdir()) / "labkit-checks.lock")


def load_solutions(folder: str | os.PathLike[str]) -> dict[str, Exercise]:
    """Every exercise of the solutions notebooks in ``folder``, by exercise id.

    Raises :class:`GradeError` when the folder holds no notebook, when one is malformed, or when
    two notebooks claim the same exercise.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise GradeError(f"{folder}: no such folder; give the solutions folder with --solutions")
    paths = sorted(p for p in folder.glob("*.ipynb") if p.is_file() and not p.name.startswith("."))
    if not paths:
        raise GradeError(f"{folder}: no solutions notebooks (*.ipynb); give the solutions folder with --solutions")
    exercises: dict[str, Exercise] = {}
    for path in paths:
        try:
            exercise = load_exercise(path)
        except AssignError as exc:
            raise GradeError(str(exc)) from exc
        if exercise.id in exercises:
            raise GradeError(f"{path}: exercise {exercise.id!r} is also the exercise of "
                             f"{exercises[exercise.id].path}; give each notebook its own exercise id")
        exercises[exercise.id] = exercise
    return exercises


def sandbox_status() -> str:
    """How this machine's kernels will be isolated, in one line for the start of a grading run.

    ``sandbox: bubblewrap (...)`` or ``sandbox: NONE, <why>; ...`` when the grader falls back to
    sessions of their own (no bwrap, no namespaces, or ``LABKIT_GRADE_SANDBOX=0``).
    """
    return describe_sandbox(detect())


def _guess_exercise(submission: Submission, exercises: Mapping[str, Exercise]) -> Exercise | None:
    stem = submission.path.stem
    return next((e for e in exercises.values() if stem in (e.id, e.path.stem)), None)


def read_for_grading(submission: Submission,
                     exercises: Mapping[str, Exercise]) -> SubmissionResult | tuple[StudentNotebook, Exercise]:
    """Read one submission and find its exercise: ``(notebook, exercise)``, or the result that ends it.

    A notebook that cannot be read, or belongs to no known exercise, ends here with its
    ``rejected`` line (or ``error``, for a failure of the grader); only the others need a kernel.
    """
    try:
        notebook = read_submission(submission.path)
    except SubmissionError as exc:
        guess = _guess_exercise(submission, exercises)
        return SubmissionResult(submission, guess.id if guess else None, SubmissionStatus.REJECTED,
                                message=str(exc), max_points=guess.points if guess else 0.0)
    except Exception as exc:  # noqa: BLE001 - a grader failure: recorded on this submission's line, the batch goes on
        guess = _guess_exercise(submission, exercises)
        return SubmissionResult(
            submission, guess.id if guess else None, SubmissionStatus.ERROR,
            max_points=guess.points if guess else 0.0,
            message=f"the grader could not read or plan this notebook ({type(exc).__name__}: "
                    f"{str(exc)[:300]}); grade it again once fixed")
    exercise = exercises.get(notebook.exercise)
    if exercise is None:
        known = ", ".join(sorted(exercises)) or "none"
        return SubmissionResult(
            submission, notebook.exercise, SubmissionStatus.REJECTED,
            message=f"the notebook is exercise {notebook.exercise!r}, which has no solutions notebook "
                    f"(known exercises: {known})")
    return notebook, exercise


class _Grader:
    """One grading run: shared turn for check cells, scratch folder, sandbox, settings."""

    def __init__(self, exercises: Mapping[str, Exercise], settings: GradeSettings, scratch: Path,
                 sandbox: SandboxInfo, hidden: Sequence[Path] = (), submissions: Sequence[Submission] = ()) -> None:
        self.exercises = exercises
        self.settings = settings
        self.scratch = scratch
        self.turn = asyncio.Lock()
        self.lock_path = settings.lock_path or default_lock_path()
        self.sandbox = sandbox
        # Kernels never see the solutions (read into memory already), where grades are written, nor
        # the submissions (read by the grader, given to kernels as cells): no student's code can
        # run another student's.
        self.hidden = tuple(dict.fromkeys([*(e.path.parent.resolve() for e in exercises.values()),
                                           *(Path(p).resolve() for p in hidden),
                                           *(s.path.resolve().parent for s in submissions)]))
        self.blanked = tuple(dict.fromkeys(s.path.resolve() for s in submissions))

    async def grade(self, submission: Submission) -> SubmissionResult:
        """Read, plan, run and score one submission; whatever happens, one result."""
        started = time.monotonic()
        read = read_for_grading(submission, self.exercises)
        if isinstance(read, SubmissionResult):
            return replace(read, seconds=time.monotonic() - started)
        return await self.grade_read(submission, *read, started=started)

    async def grade_read(self, submission: Submission, notebook: StudentNotebook, exercise: Exercise, *,
                         started: float | None = None) -> SubmissionResult:
        """Run and score a submission already read (by :func:`read_for_grading`); one result."""
        started = time.monotonic() if started is None else started
        try:
            result = await self._run(submission, notebook, exercise)
        except Exception as exc:  # noqa: BLE001 - a grader failure: recorded on this submission's line, the batch goes on
            result = SubmissionResult(
                submission, exercise.id, SubmissionStatus.ERROR, max_points=exercise.points,
                message=f"the grader could not run this notebook ({type(exc).__name__}: {exc}); "
                        f"this is not the student's doing, grade it again once fixed")
        return replace(result, seconds=time.monotonic() - started)

    def _kernel_env(self, room: Room | None, keys: dict[int, bytes], number: int) -> dict[str, str]:
        """A fresh key for kernel ``number``, in a file of its room's private (0700) arm folder."""
        if room is None:
            raise GradeError("grading kernels need rooms of their own (fresh_dirs)")
        key = keys[number] = secrets.token_bytes(32)
        fd, path = tempfile.mkstemp(dir=room.arm, prefix="arm-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"key": key.hex()}, handle)
        return {ARM_ENV: path, CHECK_LOCK_ENV: str(self.lock_path)}

    async def _run(self, submission: Submission, notebook: Any, exercise: Exercise) -> SubmissionResult:
        import nbformat

        keys: dict[int, bytes] = {}  # one fresh key per kernel, by the kernel's number
        plan = plan_cells(exercise, notebook.cells, new_alias())
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell.source) for cell in plan])
        workdir = Path(tempfile.mkdtemp(dir=self.scratch, prefix="run-"))
        engine = NotebookRun(
            nb, self.settings.engine(exercise.kernel_name), workdir=workdir, fresh_dirs=True,
            replayable=lambda index: plan[index].kind != "check",
            exclusive=lambda index: plan[index].kind == "check",
            turn=self.turn, aside_mime=SEAL_MIME,
            kernel_env=lambda room: self._kernel_env(room, keys, engine.kernels_started),
            sandbox=self.sandbox, read_only=(Path(self.lock_path),), hidden=self.hidden, blanked=self.blanked,
        )
        try:
            runs = await engine.run()
        finally:
            # What student code made unremovable stays in the scratch folder, removed at the end.
            shutil.rmtree(workdir, ignore_errors=True)
        setup = runs[0]
        if setup is None or setup.fate is not CellFate.OK:
            detail = (setup.error or setup.reason) if setup is not None else "it did not run"
            raise GradeError(f"the grader's setup cell failed in the kernel: {detail}; is labkit installed "
                             f"for the {exercise.kernel_name!r} kernel?")
        # Only the student's cells have a student_index, and only the checks a part (see _plan).
        labels = [cell.student_index + 1 if cell.student_index is not None else None for cell in plan]
        by_part: dict[str, PartOutcome] = {}
        previous = 1
        for index, cell in enumerate(plan):
            if cell.kind != "check":
                continue
            part = cell.part
            assert part is not None, "every planned check names its part"
            run = runs[index]
            key = keys.get(run.kernel, b"") if run is not None else b""
            by_part[part.id] = self._outcome(part, run, nb.cells[index], key,
                                             problems_before(nb, runs, previous, index, labels))
            previous = index + 1
        return SubmissionResult(
            submission, exercise.id, SubmissionStatus.GRADED,
            outcomes=tuple(by_part[part.id] for part in exercise.parts),
            problems=tuple(cell_problems(nb, runs, labels)), max_points=exercise.points,
            check_seconds=sum(run.seconds for run, cell in zip(runs, plan) if run and cell.kind == "check"),
            kernels=engine.kernels_started)

    @staticmethod
    def _outcome(part: Part, run: Any, cell: Any, key: bytes, context: str) -> PartOutcome:
        records = run.aside if run is not None and key else ()
        verdict, forged = verify_seals(records, part.id, key)
        if verdict is not None and verdict[0]:
            shown = recorded_verdict(cell, part)
            verdict = (True, shown[1] if shown and shown[0] else "passed")
        outcome = part_outcome(part, run, verdict, context,
                               no_verdict="the check cell ran but showed no verdict the grader could verify.")
        if forged and not outcome.passed:
            note = f"(The grader ignored {forged} check result{'s' if forged > 1 else ''} it did not make.)"
            outcome = replace(outcome, message=f"{outcome.message} {note}")
        return outcome


#: ``progress(done, total, running_students, finished_result)``: what :func:`grade` reports as it
#: goes; ``finished_result`` is ``None`` when a submission starts.
ProgressCallback = Callable[[int, int, tuple[str, ...], "SubmissionResult | None"], None]


async def _grade_all(submissions: Sequence[Submission], exercises: Mapping[str, Exercise],
                     settings: GradeSettings, progress: ProgressCallback | None,
                     hidden: Sequence[Path]) -> GradeReport:
    started = time.monotonic()
    results: list[SubmissionResult | None] = [None] * len(submissions)
    waiting = list(enumerate(submissions))
    running: dict[int, str] = {}
    done = 0

    def report(finished: SubmissionResult | None) -> None:
        if progress is not None:
            progress(done, len(submissions), tuple(running.values()), finished)

    # The lock file exists before any kernel opens it; a file another user created is fine.
    lock_path = settings.lock_path or default_lock_path()
    try:
        os.close(os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644))
    except OSError as exc:
        raise GradeError(f"{lock_path}: cannot create the checks' lock file ({exc.strerror or exc}); "
                         f"set {CHECK_LOCK_ENV} to a file you may create") from exc
    with tempfile.TemporaryDirectory(prefix="labkit-grade-", ignore_cleanup_errors=True) as scratch:
        sandbox = detect()
        grader = _Grader(exercises, replace(settings, lock_path=lock_path), Path(scratch), sandbox, hidden,
                         submissions)

        async def worker() -> None:
            nonlocal done
            while waiting:
                position, submission = waiting.pop(0)
                running[position] = submission.student
                report(None)
                results[position] = await grader.grade(submission)
                del running[position]
                done += 1
                report(results[position])

        await asyncio.gather(*(worker() for _ in range(min(settings.jobs, len(submissions)))))
    return GradeReport(tuple(r for r in results if r is not None), time.monotonic() - started, settings.jobs,
                       sandbox=describe_sandbox(sandbox))


def grade(submissions: Sequence[Submission], exercises: Mapping[str, Exercise],
          settings: GradeSettings | None = None, *, progress: ProgressCallback | None = None,
          hidden: Sequence[str | os.PathLike[str]] = (), cluster: DaskCluster | None = None,
          notice: Callable[[str], None] | None = None) -> GradeReport:
    """Grade ``submissions`` against ``exercises`` (from :func:`load_solutions`); one result each.

    ``progress(done, total, running_students, finished_result)`` is called when a submission
    starts (``finished_result`` is ``None``) and when it ends. ``hidden``: folders the kernels must
    not see (the gradebook's ``--out``); the solutions' folders are always hidden from sandboxed
    kernels. Raises :class:`GradeError` only for a run that cannot start (no submissions, a Dask
    scheduler that cannot be used); a submission's own trouble is in its result.

    With ``settings.scheduler`` (or a ``cluster`` from :func:`connect_scheduler`, kept open by the
    caller), the submissions are graded by the Dask workers of that scheduler, one task each,
    and ``notice(line)`` hears of workers that died under a submission. Points and statuses are
    those of a local run; only what the checks measured may differ in their messages.
    """
    if not submissions:
        raise GradeError("no submissions to grade; give notebook files, folders of them, or glob patterns")
    settings = settings or GradeSettings()
    folders = [Path(folder) for folder in hidden]
    if cluster is not None:
        from ._dask import grade_on_cluster

        return grade_on_cluster(cluster, submissions, exercises, settings, progress, folders, notice)
    if settings.scheduler is not None:
        with connect_scheduler(settings.scheduler) as opened:
            return grade(submissions, exercises, settings, progress=progress, hidden=hidden, cluster=opened,
                         notice=notice)
    return run_sync(lambda: _grade_all(submissions, exercises, settings, progress, folders))


def connect_scheduler(address: str) -> DaskCluster:
    """Connect to the Dask scheduler at ``address`` and check that its workers can grade.

    Waits a bounded time for a first worker, then asks every worker for its labkit version and
    sandbox. Raises :class:`GradeError` with one line saying what to do when the scheduler cannot
    be reached, has no worker, or a worker lacks labkit (or has another version, or no sandbox).
    Use it as a context manager, or call ``close()``; :meth:`DaskCluster.describe` gives one line
    about the cluster for the start of a run.
    """
    from ._dask import connect

    return connect(address)
