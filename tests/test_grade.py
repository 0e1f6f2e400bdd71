"""labkit grade: fair scores for a batch of notebooks, whatever the notebooks do.

The corpus (tests/grading_corpus.py) is graded once, in one run of ``labkit grade --jobs 2``, and
each test below reads one thing off that run. The rest are fast tests of the parts: finding and
naming submissions, reading them, placing the canonical checks, verifying seals, writing the
gradebook, the measurement lock, the command's exit codes, and the engine's limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
import pytest
from helpers import is_interpreter_helper

import grading_corpus
from grading_corpus import EXERCISE_01, SOLUTION_01, STUDENTS
from labkit.cli import main
from labkit.grading import checks
from labkit.grading._engine import CellFate, EngineSettings, NotebookRun, run_sync
from labkit.grading._gradebook import GRADEBOOK_COLUMNS, write_gradebook
from labkit.grading._inkernel import seal_token, verify_seals
from labkit.grading._plan import load_exercise, plan_cells, privatize
from labkit.grading._submissions import read_submission
from labkit.grading.grade import (
    GradeReport,
    GradeSettings,
    Submission,
    SubmissionError,
    SubmissionResult,
    SubmissionStatus,
    find_submissions,
)
from labkit.grading.runner import PartOutcome, PartStatus

# ============================================================================ the corpus, one run


@dataclass(frozen=True)
class CorpusRun:
    code: int
    stdout: str
    stderr: str
    rows: list[dict[str, str]]
    out: Path
    expected: dict[str, grading_corpus.Expected]
    leftover: list[str]
    new_semaphores: list[str]


def _semaphores() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.iterdir() if p.name.startswith("sem.")} if shm.is_dir() else set()


def _in_use() -> set[str]:
    """Semaphores some live process has mapped: other programs' pools, not leftovers of this run.

    A process maps a named semaphore under the temporary name glibc created it with, so the
    mapping is recognised by its inode (the fifth field of a line of /proc/PID/maps).
    """
    inodes = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            lines = maps.read_text(errors="replace").splitlines()
        except OSError:
            continue  # the process ended, or is not ours to read
        inodes.update(int(line.split()[4]) for line in lines if "/dev/shm/" in line)
    in_use = set()
    for name in _semaphores():
        try:
            if (Path("/dev/shm") / name).stat().st_ino in inodes:
                in_use.add(name)
        except OSError:
            pass  # removed meanwhile: not a leftover either
    return in_use


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusRun:
    root = tmp_path_factory.mktemp("corpus")
    solutions, submissions, expected = grading_corpus.build(root)
    out = root / "grades"
    stdout, stderr = io.StringIO(), io.StringIO()
    semaphores_before = _semaphores()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["grade", str(submissions), "--solutions", str(solutions), "--jobs", "2",
                     "--timeout", "30", "--out", str(out)])
    leftover = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and not is_interpreter_helper(p)]
    with open(out / "gradebook.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # A semaphore that appeared during the run and that no live process maps was left behind; one
    # that some process maps belongs to another program running beside the tests.
    new_semaphores = sorted(_semaphores() - semaphores_before - _in_use())
    return CorpusRun(code, stdout.getvalue(), stderr.getvalue(), rows, out, expected, leftover, new_semaphores)


def test_grading_the_corpus_exits_0_although_some_notebooks_are_broken(corpus):
    assert corpus.code == 0, corpus.stderr


@pytest.mark.parametrize("student", STUDENTS)
def test_each_submission_gets_the_score_it_deserves(corpus, student):
    due = corpus.expected[student]
    rows = [row for row in corpus.rows if row["student"] == student]
    assert rows, f"{student} is missing from the gradebook"
    assert {row["exercise"] for row in rows} == {due.exercise}
    assert sum(float(row["points"]) for row in rows) == due.points, rows
    assert sum(float(row["max_points"]) for row in rows) == due.max_points, rows
    by_part = {row["part"]: row for row in rows}
    for part, status, phrase in due.parts:
        assert by_part[part]["status"] == status, by_part[part]
        assert phrase in by_part[part]["message"], by_part[part]


def test_the_hidden_check_is_graded_and_marked_hidden_in_the_results(corpus):
    results = json.loads((corpus.out / "results" / "alice.ex01.json").read_text(encoding="utf-8"))
    hidden = [test for test in results["tests"] if test["visibility"] == "hidden"]
    assert [(test["name"], test["score"], test["max_score"]) for test in hidden] == [("ex01.many_logins", 1, 1)]


def test_results_json_has_the_common_autograder_shape(corpus):
    results = json.loads((corpus.out / "results" / "dan.ex01.json").read_text(encoding="utf-8"))
    assert results["score"] == 4
    assert results["score"] == sum(test["score"] for test in results["tests"])
    for test in results["tests"]:
        assert set(test) >= {"name", "score", "max_score", "output", "visibility"}
        assert test["visibility"] in ("visible", "hidden")


def test_every_student_gets_a_feedback_file_that_keeps_hidden_checks_secret(corpus):
    assert sorted(path.stem for path in (corpus.out / "feedback").glob("*.md")) == sorted(STUDENTS)
    carol = (corpus.out / "feedback" / "carol.md").read_text(encoding="utf-8")
    assert "0/7 points" in carol and "login still blocks the event loop" in carol
    assert "hidden check 1" in carol and "many_logins" not in carol and "concurrent logins" not in carol


def test_the_terminal_gets_a_summary_and_progress_but_no_tracebacks_or_kernel_noise(corpus):
    for student in STUDENTS:
        assert student in corpus.stdout
    assert "[20/20]" in corpus.stderr
    assert "Traceback" not in corpus.stderr + corpus.stdout
    assert "IPKernelApp" not in corpus.stderr


def test_the_first_line_says_how_the_kernels_are_isolated(corpus):
    from labkit.grading.grade import sandbox_status

    first = next(line for line in corpus.stderr.splitlines() if line.startswith("grading "))  # after any warning
    assert first.startswith("grading 20 submissions") and first.endswith(sandbox_status()), first
    if shutil.which("bwrap"):  # CI installs bubblewrap: there the sandbox must really be in use
        assert "sandbox: bubblewrap" in first, first


def test_the_tiny_exercise_is_flagged_because_its_check_lives_in_the_notebook(corpus):
    assert "'ex90.answer' is not one of labkit's checks" in corpus.stderr


def test_grading_leaves_no_kernel_or_worker_process_behind(corpus):
    assert corpus.leftover == []


def test_killed_kernels_leave_no_named_semaphore_behind(corpus):
    # The solution's spawn-context process pool makes named POSIX semaphores; the looping,
    # exiting and crashing submissions are killed while they exist. The kernels' resource
    # trackers must live long enough to remove them.
    assert corpus.new_semaphores == []


# ============================================================================ submissions


def _notebook(path: Path, exercise: str = "ex01") -> Path:
    nb = nbformat.v4.new_notebook(metadata={"labkit": {"exercise": exercise}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


NAMES = {"01_event_loop_blocking", "ex01"}


def test_a_folder_per_student_names_the_student_by_the_folder(tmp_path):
    _notebook(tmp_path / "alice" / "01_event_loop_blocking.ipynb")
    _notebook(tmp_path / "bob" / "attempt-2" / "mine.ipynb")
    found, warnings = find_submissions([tmp_path], exercise_names=NAMES)
    assert sorted(s.student for s in found) == ["alice", "bob"] and warnings == []


def test_files_named_by_student_name_the_student_by_the_stem(tmp_path):
    _notebook(tmp_path / "carol.ipynb")
    found, _ = find_submissions([tmp_path / "carol.ipynb"], exercise_names=NAMES)
    assert found == [Submission(tmp_path / "carol.ipynb", "carol")]


def test_a_file_named_like_the_exercise_belongs_to_its_folder(tmp_path):
    path = _notebook(tmp_path / "dave" / "01_event_loop_blocking.ipynb")
    found, _ = find_submissions([path], exercise_names=NAMES)
    assert found[0].student == "dave"


def test_glob_patterns_are_expanded_and_each_file_is_graded_once(tmp_path):
    for student in ("erin", "frank"):
        _notebook(tmp_path / student / "01_event_loop_blocking.ipynb")
    pattern = str(tmp_path / "*" / "*.ipynb")
    found, _ = find_submissions([pattern, tmp_path / "erin"], exercise_names=NAMES)
    assert sorted(s.student for s in found) == ["erin", "frank"]


def test_checkpoints_and_hidden_files_are_skipped(tmp_path):
    _notebook(tmp_path / "grace.ipynb")
    _notebook(tmp_path / ".ipynb_checkpoints" / "grace-checkpoint.ipynb")
    _notebook(tmp_path / ".hidden.ipynb")
    found, _ = find_submissions([tmp_path], exercise_names=NAMES)
    assert [s.student for s in found] == ["grace"]


def test_an_argument_that_matches_nothing_is_a_warning(tmp_path):
    found, warnings = find_submissions([tmp_path / "nobody.ipynb", str(tmp_path / "*.ipynb")])
    assert found == [] and len(warnings) == 2 and "no such file or folder" in warnings[0]


@pytest.mark.parametrize("content, phrase", [
    (b"", "the file is empty"),
    (b'{"nbformat": 4, "cells": [', "not valid notebook JSON (line 1"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b'{"hello": "world"}', "not a Jupyter notebook of format 4"),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}', "no labkit.exercise"),
    (b'{"nbformat": 4, "metadata": {"labkit": {"exercise": "ex01"}}, '
     b'"cells": [{"cell_type": "code", "source": 3}]}', "cell 1 is malformed"),
    (b"[" * 200_000 + b"]" * 200_000, "nests JSON lists or objects more deeply"),
])
def test_a_broken_submission_is_named_in_one_clear_sentence(tmp_path, content, phrase):
    path = tmp_path / "broken.ipynb"
    path.write_bytes(content)
    with pytest.raises(SubmissionError, match=re.escape(phrase)):
        read_submission(path)


def test_stored_outputs_are_not_kept_when_a_submission_is_read(tmp_path):
    nb = nbformat.read(SOLUTION_01, as_version=4)
    nbformat.write(nb, tmp_path / "a.ipynb")
    cells = read_submission(tmp_path / "a.ipynb").cells
    assert not any(hasattr(cell, "outputs") for cell in cells)
    assert [cell.check for cell in cells if cell.check] == ["ex01.offload_hash", "ex01.offload_primes",
                                                             "ex01.many_logins"]


# ============================================================================ placing the checks


@pytest.fixture(scope="module")
def exercise01():
    return load_exercise(SOLUTION_01)


def _cells(nb, tmp_path: Path):
    nbformat.write(nb, tmp_path / "s.ipynb")
    return read_submission(tmp_path / "s.ipynb").cells


def _kinds(plan) -> list[str]:
    return [cell.part.id if cell.kind == "check" else cell.kind for cell in plan]


def test_every_part_is_planned_once_with_the_hidden_check_after_the_second_part(exercise01, tmp_path):
    plan = plan_cells(exercise01, _cells(nbformat.read(EXERCISE_01, as_version=4), tmp_path), "_alias")
    checks_in_order = [cell.part.id for cell in plan if cell.kind == "check"]
    assert checks_in_order == ["ex01.offload_hash", "ex01.offload_primes", "ex01.many_logins"]
    assert plan[0].kind == "setup" and plan[-1].kind == "student"  # the tidy-up cell stays last


def test_an_edited_check_is_replaced_in_place_by_the_canonical_one(exercise01, tmp_path):
    plan = plan_cells(exercise01, _cells(grading_corpus.edited_check(), tmp_path), "_alias")
    check = next(cell for cell in plan if cell.kind == "check" and cell.part.id == "ex01.offload_hash")
    assert check.source == 'await _alias.check("ex01.offload_hash", login, cost=COST)'
    assert not any("passed: login()" in cell.source for cell in plan)


def test_a_deleted_check_comes_back_between_its_part_and_the_next(exercise01, tmp_path):
    nb = grading_corpus.deleted_check()
    nb.cells.insert(4, nbformat.v4.new_code_cell("helper = 1  # the student's own cell after login"))
    kinds = _kinds(plan_cells(exercise01, _cells(nb, tmp_path), "_a"))
    assert kinds[:5] == ["setup", "student", "student", "student", "ex01.offload_hash"]


def test_a_check_copy_without_metadata_or_id_is_recognised_by_its_source(exercise01, tmp_path):
    nb = nbformat.read(EXERCISE_01, as_version=4)
    for cell in nb.cells:
        cell.metadata = {}
        cell.id = f"new-{cell.id}"  # a tool gave every cell a new id
    plan = plan_cells(exercise01, _cells(nb, tmp_path), "_a")
    assert _kinds(plan) == ["setup", "student", "student", "ex01.offload_hash", "student",
                            "ex01.offload_primes", "ex01.many_logins", "student"]


def test_checks_use_the_private_labkit_and_not_the_students_names():
    source = "import labkit\nawait labkit.check('ex01.x', self.labkit, labkit)  # labkit"
    assert privatize(source, "_p") == "import labkit\nawait _p.check('ex01.x', self.labkit, _p)  # labkit"


def test_the_setup_cell_arms_the_kernel_before_any_student_code(exercise01, tmp_path):
    plan = plan_cells(exercise01, _cells(nbformat.read(EXERCISE_01, as_version=4), tmp_path), "_alias_1")
    assert plan[0].source.startswith("_alias_1 = __import__('labkit.grading._inkernel'")
    assert "ex01.many_logins" in plan[0].source


# ============================================================================ seals


KEY = b"k" * 32


def _seal(part, passed, message="", key=KEY):
    return {"part": part, "passed": passed, "message": message, "token": seal_token(key, part, passed, message)}


def test_a_seal_made_with_the_runs_key_is_the_verdict():
    assert verify_seals([_seal("ex01.a", True)], "ex01.a", KEY) == ((True, ""), 0)


@pytest.mark.parametrize("record", [
    {"part": "ex01.a", "passed": True, "message": "", "token": "0" * 64},
    _seal("ex01.a", True, key=b"another key"),
    _seal("ex01.b", True),
    {"part": "ex01.a", "passed": True, "message": "fake"},
    "✔ ex01.a passed",
])
def test_anything_else_is_counted_as_forged_and_never_passes(record):
    assert verify_seals([record], "ex01.a", KEY) == (None, 1)


def test_a_failing_seal_wins_over_a_passing_one():
    verdict, _ = verify_seals([_seal("ex01.a", True), _seal("ex01.a", False, "slow")], "ex01.a", KEY)
    assert verdict == (False, "slow")


# ============================================================================ the gradebook


def _report(tmp_path: Path) -> GradeReport:
    def part(name, points, max_points, status=PartStatus.PASSED, hidden=False, message="ok"):
        return PartOutcome(name, points, max_points, status is PartStatus.PASSED, message, hidden, status)

    graded = SubmissionResult(
        Submission(tmp_path / "alice.ipynb", "alice"), "ex01", SubmissionStatus.GRADED,
        outcomes=(part("ex01.a", 3, 3), part("ex01.b", 0, 2, PartStatus.TIMEOUT, message="=HYPERLINK(\"x\")"),
                  part("ex01.secret", 0, 1, PartStatus.FAILED, hidden=True, message="the secret reason")),
        problems=("cell 3 raised NameError: x",), max_points=6)
    rejected = SubmissionResult(Submission(tmp_path / "bob.ipynb", "bob"), None, SubmissionStatus.REJECTED,
                                message="the file is empty")
    twin = SubmissionResult(Submission(tmp_path / "a" / "alice.ipynb", "alice"), "ex01", SubmissionStatus.GRADED,
                            outcomes=(part("ex01.a", 3, 3),), max_points=6)
    return GradeReport((graded, rejected, twin), seconds=1.0, jobs=1)


def test_the_gradebook_has_one_row_per_part_and_one_per_rejected_notebook(tmp_path):
    files = write_gradebook(_report(tmp_path), tmp_path / "grades")
    with open(files.gradebook, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == GRADEBOOK_COLUMNS
    assert [(r["student"], r["part"], r["points"], r["max_points"], r["status"]) for r in rows] == [
        ("alice", "ex01.a", "3", "3", "passed"), ("alice", "ex01.b", "0", "2", "timeout"),
        ("alice", "ex01.secret", "0", "1", "failed"), ("bob", "", "0", "0", "rejected"),
        ("alice", "ex01.a", "3", "3", "passed")]
    assert "the file is empty" in rows[3]["message"]


def test_gradebook_text_a_spreadsheet_would_run_as_a_formula_is_quoted(tmp_path):
    files = write_gradebook(_report(tmp_path), tmp_path / "grades")
    assert "'=HYPERLINK" in files.gradebook.read_text(encoding="utf-8")


def test_two_submissions_of_one_student_get_two_results_files_and_one_feedback_file(tmp_path):
    files = write_gradebook(_report(tmp_path), tmp_path / "grades")
    assert sorted(p.name for p in files.results) == ["alice.ex01-2.json", "alice.ex01.json", "bob.unknown.json"]
    assert sorted(p.name for p in files.feedback) == ["alice.md", "bob.md"]
    feedback = (tmp_path / "grades" / "feedback" / "alice.md").read_text(encoding="utf-8")
    assert feedback.count("\n## ex01:") == 2 and "cell 3 raised NameError" in feedback
    assert "hidden check 1" in feedback and "secret" not in feedback


def test_results_json_scores_add_up_and_name_the_visibility(tmp_path):
    write_gradebook(_report(tmp_path), tmp_path / "grades")
    data = json.loads((tmp_path / "grades" / "results" / "alice.ex01.json").read_text(encoding="utf-8"))
    assert data["score"] == 3 and data["extra_data"]["max_score"] == 6
    assert [(t["name"], t["visibility"], t["status"]) for t in data["tests"]] == [
        ("ex01.a", "visible", "passed"), ("ex01.b", "visible", "failed"), ("ex01.secret", "hidden", "failed")]


# ============================================================================ the measurement lock


@checks.register("extest.lock_probe")
async def _probe_lock(path):
    import fcntl

    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "the lock was held"
        fcntl.flock(handle, fcntl.LOCK_UN)
    raise checks.Fail("the lock was free while the check ran")


def test_check_holds_the_lock_file_named_by_the_environment_while_it_runs(tmp_path, monkeypatch, capsys):
    lock = tmp_path / "checks.lock"
    monkeypatch.setenv(checks.CHECK_LOCK_ENV, str(lock))
    asyncio.run(checks.check("extest.lock_probe", lock))
    assert "the lock was held" in capsys.readouterr().out
    with pytest.raises(checks.Fail, match="the lock was free"):  # and it is free again afterwards
        asyncio.run(_probe_lock(lock))


def test_a_lock_file_that_cannot_be_opened_never_fails_a_check(tmp_path, monkeypatch, capsys):
    @checks.register("extest.unlocked")
    async def _unlocked():
        return "measured without the lock."

    monkeypatch.setenv(checks.CHECK_LOCK_ENV, str(tmp_path / "no-such-folder" / "checks.lock"))
    asyncio.run(checks.check("extest.unlocked"))
    assert "passed: measured without the lock." in capsys.readouterr().out


def test_check_takes_no_lock_when_the_variable_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv(checks.CHECK_LOCK_ENV, raising=False)
    lock = tmp_path / "checks.lock"
    lock.touch()
    with pytest.raises(checks.CheckFailed, match="the lock was free"):
        asyncio.run(checks.check("extest.lock_probe", lock))


# ============================================================================ the command


def _solutions(tmp_path: Path) -> Path:
    folder = tmp_path / "solutions"
    folder.mkdir()
    nbformat.write(nbformat.read(SOLUTION_01, as_version=4), folder / SOLUTION_01.name)
    return folder


def test_grade_without_a_solutions_folder_exits_1_and_says_so(tmp_path, capsys):
    assert main(["grade", str(tmp_path), "--solutions", str(tmp_path / "none")]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_grade_with_an_empty_solutions_folder_exits_1(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    assert main(["grade", str(tmp_path), "--solutions", str(tmp_path / "solutions")]) == 1
    assert "no solutions notebooks" in capsys.readouterr().err


def test_grade_with_an_unwritable_out_exits_1_before_grading(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    code = main(["grade", str(tmp_path), "--solutions", str(_solutions(tmp_path)),
                 "--out", str(tmp_path / "a-file")])
    assert code == 1 and "cannot write the grades there" in capsys.readouterr().err


def test_grade_with_no_matching_submissions_exits_1(tmp_path, capsys):
    code = main(["grade", str(tmp_path / "*.ipynb"), "--solutions", str(_solutions(tmp_path)),
                 "--out", str(tmp_path / "grades")])
    assert code == 1 and "no submissions matched" in capsys.readouterr().err


@pytest.mark.parametrize("jobs", ["0", "many"])
def test_grade_refuses_a_bad_job_count_as_a_usage_error(tmp_path, jobs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["grade", str(tmp_path), "--jobs", jobs])
    assert exc.value.code == 2 and "--jobs" in capsys.readouterr().err


def test_rejected_notebooks_still_exit_0_with_their_line_in_the_gradebook(tmp_path, capsys):
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    (submissions / "empty.ipynb").write_bytes(b"")
    _notebook(submissions / "other.ipynb", exercise="ex99")
    code = main(["grade", str(submissions), "--solutions", str(_solutions(tmp_path)), "--out", str(tmp_path / "g"),
                 "--jobs", "1"])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "g" / "gradebook.csv", encoding="utf-8", newline="")))
    assert [(r["student"], r["status"]) for r in rows] == [("empty", "rejected"), ("other", "rejected")]
    assert "'ex99', which has no solutions notebook (known exercises: ex01)" in rows[1]["message"]
    assert "rejected" in capsys.readouterr().out


def test_settings_refuse_a_budget_shorter_than_one_cell():
    with pytest.raises(ValueError, match="at least one cell timeout"):
        GradeSettings(timeout=60, budget=10)


# ============================================================================ the engine's limits


@dataclass(frozen=True)
class EngineOutcome:
    nb: object
    runs: list
    kernels: int


@pytest.fixture(scope="module")
def engine_outcome(tmp_path_factory) -> EngineOutcome:
    sources = [
        "x = 1",
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)",
        "print('after the loop', x)",
        "print('y' * 5_000_000)",
        "import time\nblocks = []\nwhile True:\n    blocks.append(b'm' * 2**20)\n    time.sleep(0.001)",
        "print('after the blow-up', x)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    settings = EngineSettings(timeout=3, memory_limit=600 * 2**20)
    run = NotebookRun(nb, settings, workdir=tmp_path_factory.mktemp("engine"), fresh_dirs=True)
    runs = run_sync(run.run)
    return EngineOutcome(nb, runs, run.kernels_started)


def test_a_loop_that_ignores_interrupts_gets_a_fresh_kernel_and_the_run_goes_on(engine_outcome):
    assert engine_outcome.runs[1].fate is CellFate.TIMEOUT
    assert "did not stop when interrupted" in engine_outcome.runs[1].reason
    assert engine_outcome.runs[2].fate is CellFate.OK
    assert engine_outcome.nb.cells[2].outputs[0]["text"] == "after the loop 1\n"  # earlier cells were replayed


def test_huge_output_is_cut_as_it_arrives_and_the_cut_is_said(engine_outcome):
    outputs = engine_outcome.nb.cells[3].outputs
    assert sum(len(o.get("text", "")) for o in outputs) < 300_000
    assert "were not kept by labkit" in outputs[-1]["text"]


def test_a_kernel_over_its_memory_limit_is_stopped_with_the_reason(engine_outcome):
    assert engine_outcome.runs[4].fate is CellFate.DIED
    assert "more than the grader's limit of 600 MB" in engine_outcome.runs[4].reason
    assert engine_outcome.runs[5].fate is CellFate.OK
    assert engine_outcome.kernels == 3


def test_no_kernel_outlives_the_engine(engine_outcome):
    assert not [p for p in psutil.Process().children(recursive=True)
                if p.status() != psutil.STATUS_ZOMBIE and not is_interpreter_helper(p)]


def test_the_kernels_own_output_never_reaches_the_terminal(tmp_path):
    noisy = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nos.write(2, b'NOISE\\n')")])
    nbformat.write(noisy, tmp_path / "noisy.ipynb")
    done = subprocess.run([sys.executable, "-m", "labkit", "check", str(tmp_path / "noisy.ipynb")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "NOISE" not in done.stdout + done.stderr and "IPKernelApp" not in done.stderr
