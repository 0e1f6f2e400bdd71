"""Exercise 03 from the student's side, in fresh kernels, as ``labkit check`` and ``labkit grade`` run it.

Untouched, it fails both parts with a next step. The answers a student could copy from lab 03
(two workers with the default restart policy; the lab's process pool that catches only crashes)
fail, and so do ``"max"`` workers and a batch that asks ``is_corrupt`` first; every failure says
what was measured and never the value the solution writes. ``labkit grade`` gives the solution
full marks and the untouched exercise zero. The solution itself passes under nbval (plain
``pytest`` replays solutions/); the checks' other verdicts are in test_exercise_03_checks.py.
"""

from __future__ import annotations

import ast
import csv
import shutil

import nbformat
from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part

from labkit.cli import main

SOLUTION_03 = SOLUTIONS / "03_crash_isolation.ipynb"
EXERCISE_03 = EXERCISES / "03_crash_isolation.ipynb"

SETTINGS = 'return {"workers": max(2, labkit.usable_cores().usable), "stable_uptime": 1.0}'
POOL = 'with WorkerPool("process", workers=2, timeout=5.0) as pool:'
CAUGHT = "except (WorkerCrashedError, TaskTimeoutError):"
IS_CORRUPT_FIRST = """    return {doc: None if is_corrupt(doc) else render(doc) for doc in docs}
    rendered = {}"""


def solution_answers() -> set[str]:
    """Ways a message could spell a value the solution regions write: ``name=value``, quoted kinds, ...

    Read from the solution's code between ``### BEGIN SOLUTION`` and ``### END SOLUTION``: each
    keyword argument and dict entry with a constant value, and each constant string argument.
    """
    nb = nbformat.read(SOLUTION_03, as_version=4)
    regions = [cell.source.split("### BEGIN SOLUTION", 1)[1].split("### END SOLUTION", 1)[0].split("\n", 1)[1]
               for cell in nb.cells if cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source]
    spelled = {"max(2", "at least two", "at least 2", "two workers", "2 workers"}
    for region in regions:
        tree = ast.parse("def _():\n" + "\n".join("    " + line for line in region.splitlines()))
        for node in ast.walk(tree):
            pairs = []
            if isinstance(node, ast.Dict):
                pairs = [(k.value, v.value) for k, v in zip(node.keys, node.values, strict=True)
                         if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)]
            elif isinstance(node, ast.Call):
                pairs = [(kw.arg, kw.value.value) for kw in node.keywords if isinstance(kw.value, ast.Constant)]
                spelled |= {f"{q}{arg.value}{q}" for arg in node.args if isinstance(arg, ast.Constant)
                            and isinstance(arg.value, str) for q in "'\""}
            for name, value in pairs:
                shown = {repr(value), f"{value:g}" if isinstance(value, float) else str(value)}
                spelled |= {f"{name}{sep}{text}" for sep in ("=", ": ", "': ", '": ') for text in shown}
    return spelled


def assert_no_answer_given(message: str) -> None:
    given = [answer for answer in solution_answers() if answer in message]
    assert not given, f"this failure message gives away {given}: {message}"


def test_the_solution_answers_are_found_so_the_message_test_can_fail():
    answers = solution_answers()
    assert {"stable_uptime=1", "timeout=5", "'process'", "workers=2"} <= answers
    assert_no_answer_given("the supervisor restarted it")
    try:
        assert_no_answer_given("use WorkerPool('process') with stable_uptime=1")
    except AssertionError:
        return
    raise AssertionError("a message stating the solution's values went unnoticed")


def test_the_untouched_exercise_fails_both_parts_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_03)]) == 1
    out = capsys.readouterr().out
    assert "0/6 points" in out
    assert out.count("not done yet") == 2


def test_the_answers_copied_from_lab_03_fail_and_say_what_was_measured(tmp_path):
    copied = edited_notebook(SOLUTION_03, {
        SETTINGS: 'return {"workers": 2}',  # lab 03, section 1
        POOL: 'with WorkerPool("process", workers=2) as pool:',  # lab 03, cell 15
        CAUGHT: "except WorkerCrashedError:",
    }, tmp_path / "copied.ipynb")
    by_part = outcomes_by_part(copied)
    restarts = by_part["ex03.survive_crashes"].message
    assert "killed once it had served for 2 s" in restarts and "requests were answered" in restarts
    assert "each crash made the next wait longer" in restarts or "gave up" in restarts
    batch = by_part["ex03.isolate_render"].message
    assert "had not returned after 30 s" in batch and "never finish" in batch
    assert not by_part["ex03.faster_crashes"].passed and not by_part["ex03.many_crashes"].passed
    assert sum(o.points for o in by_part.values()) == 0
    for outcome in by_part.values():
        assert_no_answer_given(outcome.message)


def test_max_workers_and_a_batch_that_asks_is_corrupt_first_fail_the_right_parts(tmp_path):
    wrong = edited_notebook(SOLUTION_03, {
        SETTINGS: 'return {"workers": "max", "stable_uptime": 1.0}',
        "    rendered = {}\n    # A process per render": IS_CORRUPT_FIRST + "\n    # A process per render",
    }, tmp_path / "wrong.ipynb")
    by_part = outcomes_by_part(wrong)
    workers = by_part["ex03.survive_crashes"].message
    assert "on a machine with one CPU, your settings run 1 worker (workers='max')" in workers
    assert "no other worker answered" in workers
    batch = by_part["ex03.isolate_render"].message
    assert "took its whole process down" in batch and "SIGSEGV" in batch
    assert not by_part["ex03.many_crashes"].passed
    assert by_part["ex03.survive_crashes"].points == by_part["ex03.isolate_render"].points == 0
    for outcome in by_part.values():
        if not outcome.passed:
            assert_no_answer_given(outcome.message)


def test_labkit_grade_gives_the_solution_full_marks_and_the_untouched_exercise_zero(tmp_path):
    submissions = tmp_path / "submissions"
    for student, source in (("ada", SOLUTION_03), ("bo", EXERCISE_03)):
        (submissions / student).mkdir(parents=True)
        shutil.copy(source, submissions / student / source.name)
    out = tmp_path / "grades"
    assert main(["grade", str(submissions), "--solutions", str(SOLUTIONS), "--jobs", "2", "--out", str(out)]) == 0
    with open(out / "gradebook.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))

    def total(column: str) -> dict[str, float]:
        return {who: sum(float(row[column]) for row in rows if row["student"] == who) for who in ("ada", "bo")}

    points, most = total("points"), total("max_points")
    assert most == {"ada": 8, "bo": 8}, rows
    assert points == {"ada": 8, "bo": 0}, [row for row in rows if row["status"] != "passed"]
