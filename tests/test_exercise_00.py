"""Exercise 00: the usable cores of described machines, by labkit's rule (affinity, quota rounded up).

The function is pure, so most tests take it from the solution's own text, edited (``replace_once``)
into each correct alternative and each classic mistake, and call the checks directly. Real kernels
run the untouched exercise, a wrongly rounding solution, and ``labkit grade`` over both, as an
instructor would.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import shutil

import nbformat
import pytest
from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part, replace_once

from labkit.cli import main
from labkit.grading.checks import Fail
from labkit.grading.ex00 import MACHINES, MORE_MACHINES, check_more_machines, check_three_machines, expected_usable

SOLUTION_00 = SOLUTIONS / "00_your_machine.ipynb"
EXERCISE_00 = EXERCISES / "00_your_machine.ipynb"

CEILING = "math.ceil(int(quota) / int(period))"
SPLIT = "quota, period = cpu_max.split()"
AFFINITY = "usable = min(logical, len(affinity))"


def run(coroutine):
    return asyncio.run(coroutine)


def solution_function(replacements: dict[str, str] | None = None):
    """``usable_cores_of`` as the solution defines it, after ``replacements`` (each must occur once)."""
    nb = nbformat.read(SOLUTION_00, as_version=4)
    for old, new in (replacements or {}).items():
        replace_once(nb, old, new)
    namespace: dict = {}
    source = next(cell.source for cell in nb.cells if "def usable_cores_of(" in cell.source)
    exec(compile("import math\n" + source.split("\n\n\nfor ")[0], "<solution>", "exec"), namespace)
    return namespace["usable_cores_of"]


def test_the_exercise_machines_are_the_ones_the_issue_asks_for():
    container = next(m for m in MACHINES if m.name == "the container")
    assert container.cpu_max == "150000 100000" and expected_usable(container) == 2  # 1.5 cores, rounded up
    assert [expected_usable(m) for m in MACHINES] == [8, 2, 3]
    assert [expected_usable(m) for m in MORE_MACHINES] == [1, 2, 3, 2, 1]


@pytest.mark.parametrize("replacements", [
    {},
    {SPLIT: "quota, _, period = cpu_max.partition(' ')"},
    {CEILING: "-(-int(quota) // int(period))"},
    {CEILING: "(int(quota) + int(period) - 1) // int(period)"},
    {AFFINITY: "usable = len(affinity)"},
], ids=["the solution", "partition instead of split", "a floor-division ceiling", "an add-and-divide ceiling",
        "the affinity alone"])
def test_every_sound_answer_passes_the_visible_and_the_hidden_check(replacements):
    usable_cores_of = solution_function(replacements)
    assert "rounding up" in run(check_three_machines(usable_cores_of))
    assert "had not seen" in run(check_more_machines(usable_cores_of))


def test_rounding_the_quota_down_fails_with_a_lesson_and_not_the_number():
    floored = solution_function({CEILING: "int(quota) // int(period)"})
    with pytest.raises(Fail, match="For the container") as failure:
        run(check_three_machines(floored))
    message = str(failure.value)
    assert "rounds a quota of 1.5 cores' worth of time down" in message
    assert "rounds a fractional quota up" in message
    assert not re.search(r"(?<![\d.])2(?![\d.])", message), message  # the right answer is never given


def test_counting_the_machines_cpus_fails_on_the_pinned_process():
    by_count = solution_function({AFFINITY: "usable = logical"})
    with pytest.raises(Fail, match="For the pinned process") as failure:
        run(check_three_machines(by_count))
    assert "counts CPUs outside the affinity" in str(failure.value)
    assert not re.search(r"(?<![\d.])3(?![\d.])", str(failure.value).split("returned")[1])


def test_ignoring_the_quota_fails_on_the_container():
    no_quota = solution_function({'if quota != "max":': "if False:"})
    with pytest.raises(Fail, match="For the container.*the quota allows less"):
        run(check_three_machines(no_quota))


@pytest.mark.parametrize("replacements, message", [
    ({CEILING: "round(int(quota) / int(period))"}, "rounds a quota of 2.5 cores' worth of time down"),
    ({CEILING: "int(quota) // int(period) + 1"}, "nothing to round, so no extra worker"),
    ({CEILING: "math.ceil(int(quota) / 100000)"}, "divides the quota by 100000"),
], ids=["Python's round", "always one more", "a period taken for granted"])
def test_answers_fitted_to_the_three_machines_fail_the_hidden_check(replacements, message):
    fitted = solution_function(replacements)
    assert "rounding up" in run(check_three_machines(fitted))  # the three visible machines cannot tell
    with pytest.raises(Fail, match=message):
        run(check_more_machines(fitted))


def test_the_untouched_exercise_fails_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_00)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "0/3 points" in out
    assert out.count("not done yet") == 1
    assert "apply the rounding rule" in out  # the hint


def test_a_wrong_rounding_fails_in_a_real_kernel_with_the_lesson(tmp_path):
    path = edited_notebook(SOLUTION_00, {CEILING: "int(quota) // int(period)"}, tmp_path / "floored.ipynb")
    by_part = outcomes_by_part(path)
    assert not by_part["ex00.three_machines"].passed
    assert "rounds a fractional quota up" in by_part["ex00.three_machines"].message
    assert not by_part["ex00.more_machines"].passed


def test_labkit_grade_gives_the_solution_full_marks_and_the_untouched_exercise_zero(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    shutil.copy(SOLUTION_00, solutions)
    submissions = tmp_path / "submissions"
    for student, notebook in (("ada", SOLUTION_00), ("bob", EXERCISE_00)):
        (submissions / student).mkdir(parents=True)
        shutil.copy(notebook, submissions / student)
    out = tmp_path / "grades"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["grade", str(submissions), "--solutions", str(solutions), "--jobs", "2",
                     "--timeout", "30", "--out", str(out)]) == 0
    with open(out / "gradebook.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    score = {student: sum(float(r["points"]) for r in rows if r["student"] == student) for student in ("ada", "bob")}
    assert score == {"ada": 4, "bob": 0}, rows
    assert {r["part"] for r in rows} == {"ex00.three_machines", "ex00.more_machines"}
