"""Exercise 06: the checks accept every sound way of reading the machine and the sweeps, and explain
every way of copying a rule instead.

Part 1's reader is taken from the solution's own text, edited (``replace_once``) into each correct
alternative and each classic mistake, and handed to the checks directly: fast, and it still runs in
the check's pinned worker process. Part 2's judge gets sweeps of known shape, as measured on an
idle and on a busy 2-core machine. Real kernels run the untouched exercise and a solution with the
copied rules, as ``labkit check`` runs them for a student.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import re
import shutil

import nbformat
import pytest
from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part, replace_once

import labkit
from labkit.cli import main
from labkit.grading.checks import Fail
from labkit.grading.ex06 import HIDDEN, VISIBLE, check_from_the_sweep, check_other_machines, check_usable_cores
from labkit.measure import SweepPoint, SweepResult

SOLUTION_06 = SOLUTIONS / "06_cores_equals_workers.ipynb"
EXERCISE_06 = EXERCISES / "06_cores_equals_workers.ipynb"

AFFINITY = "usable = len(os.sched_getaffinity(0))"
SPLIT = "quota, period = cpu_max.read_text().split()"
CEILING = "math.ceil(int(quota) / int(period))"
CPU_CAP = "    points = result.points\n"

MANY_CPUS = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and at least two CPUs: on one CPU, pinned or not looks the same")


def run(coroutine):
    return asyncio.run(coroutine)


def solution_function(name: str, replacements: dict[str, str] | None = None):
    """``name`` as the solution defines it, after ``replacements`` (each must occur once)."""
    nb = nbformat.read(SOLUTION_06, as_version=4)
    for old, new in (replacements or {}).items():
        replace_once(nb, old, new)
    namespace: dict = {"__name__": "ex06_solution"}  # not importable: the pool sends it by value
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.source.startswith("import") or f"def {name}(" in cell.source):
            source = cell.source.split("\n\n\nprint(")[0]  # the definition, not the demo line after it
            exec(compile(source, f"<solution {name}>", "exec"), namespace)  # our own solution, cut from the notebook
    return namespace[name]


# ---------------------------------------------------------------------------------- part 1


@pytest.mark.parametrize("replacements", [
    {},
    {SPLIT: "quota, _, period = cpu_max.read_text().strip().partition(' ')"},
    {CEILING: "-(-int(quota) // int(period))"},
    {CEILING: "(int(quota) + int(period) - 1) // int(period)"},
    {AFFINITY: "import psutil\n        usable = len(psutil.Process().cpu_affinity())"},
], ids=["the solution", "partition instead of split", "a floor-division ceiling", "an add-and-divide ceiling",
        "psutil's affinity"])
def test_every_sound_reader_passes_the_visible_and_the_hidden_check(replacements):
    reader = solution_function("usable_cores_from", replacements)
    assert "rounds a fractional quota up" in run(check_usable_cores(reader))
    assert "shapes it had not seen" in run(check_other_machines(reader))


@MANY_CPUS
def test_counting_the_machines_cpus_fails_in_the_pinned_process_and_says_what_the_affinity_is():
    reader = solution_function("usable_cores_from", {AFFINITY: "usable = os.cpu_count()"})
    with pytest.raises(Fail, match="pinned to one CPU") as failure:
        run(check_usable_cores(reader))
    assert "counts CPUs this process is not allowed to run on" in str(failure.value)
    assert "os.sched_getaffinity(0)" in str(failure.value)


@MANY_CPUS
def test_the_affinity_alone_is_never_called_os_cpu_count():
    """The old message blamed os.cpu_count() whenever the answer equalled the machine's CPUs."""
    reader = solution_function("usable_cores_from", {CEILING: "usable"})  # reads the quota, ignores it
    with pytest.raises(Fail, match="quota is 1 core") as failure:
        run(check_usable_cores(reader))
    assert "what the affinity alone allows, and the quota allows less" in str(failure.value)
    assert "os.cpu_count" not in str(failure.value)


@MANY_CPUS
def test_rounding_the_quota_down_is_told_the_course_rounds_up():
    reader = solution_function("usable_cores_from", {CEILING: "int(quota) // int(period)"})
    with pytest.raises(Fail, match="rounds the quota down") as failure:
        run(check_usable_cores(reader))
    assert "rounds a fractional quota up" in str(failure.value)


def test_asking_labkit_for_the_answer_is_not_reading_the_machine():
    def copied(root="/"):
        return labkit.usable_cores(root=root).usable

    with pytest.raises(Fail, match="asks labkit for the answer"):
        run(check_usable_cores(copied))


def test_a_helper_of_the_students_own_that_shares_labkits_name_is_not_labkit():
    reader = solution_function("usable_cores_from")
    namespace = {"__name__": "ex06_student", "usable_cores": reader}  # the student named their reader so
    exec("def usable_cores_from(root='/'):\n    return usable_cores(root)", namespace)
    mine = namespace["usable_cores_from"]
    assert "rounds a fractional quota up" in run(check_usable_cores(mine))


@MANY_CPUS
def test_a_reader_fitted_to_the_visible_shapes_fails_the_hidden_check_on_a_parents_limit():
    reader = solution_function("usable_cores_from", {"level = mount / own": "level = mount"})  # top level only
    assert "rounds a fractional quota up" in run(check_usable_cores(reader))
    with pytest.raises(Fail, match="limit sits on a parent cgroup") as failure:
        run(check_other_machines(reader))
    assert "any cgroup above it" in str(failure.value)


@MANY_CPUS
def test_a_period_taken_for_granted_fails_the_hidden_check():
    reader = solution_function("usable_cores_from", {CEILING: "math.ceil(int(quota) / 100000)"})
    assert "rounds a fractional quota up" in run(check_usable_cores(reader))
    with pytest.raises(Fail, match="reads the period as 100000"):
        run(check_other_machines(reader))


def test_the_hidden_shapes_differ_from_the_visible_ones():
    assert not {shape.files for shape in HIDDEN} & {shape.files for shape in VISIBLE}
    assert any(shape.pin == "last" for shape in HIDDEN)
    assert any("max 100000" in text for shape in HIDDEN for _, text in shape.files)


# ---------------------------------------------------------------------------------- part 2


def measured(kind: str, rates: dict[int, float], usable: int = 2, delivered: float = 2.0) -> SweepResult:
    points = tuple(SweepPoint(workers=n, seconds=1 / rate, throughput=rate, cpu_seconds=0.0, voluntary_switches=0,
                              involuntary_switches=0, task_p50_ms=1.0, task_p99_ms=1.0, runs=(1 / rate,))
                   for n, rate in rates.items())
    return SweepResult(label="test", kind=kind, tasks=16, points=points, usable=usable, delivered=delivered)


# Sweeps as lab 06 measured them on an idle 2-core machine, and as a busy one can bend them.
IDLE_CPU = {1: 43.2, 2: 86.0, 4: 83.3, 8: 84.1}
IO = {2: 97.2, 4: 194.9, 8: 352.3, 16: 773.9, 32: 1015.4}
BUSY_CPU_CLIMBING = {1: 10.9, 2: 11.8, 4: 11.4, 8: 15.2}  # 0.2 cores delivered: the 8 workers took CPU from others
BUSY_CPU_FLAT = {1: 20.6, 2: 20.9, 4: 17.1, 8: 18.0}


@pytest.mark.parametrize("cpu_rates", [IDLE_CPU, BUSY_CPU_CLIMBING, BUSY_CPU_FLAT],
                         ids=["an idle machine", "a busy machine, climbing past the cores", "a busy, flat machine"])
def test_the_solutions_reading_passes_on_an_idle_and_on_a_busy_machine(cpu_rates):
    workers_for = solution_function("workers_for")
    verdict = run(check_from_the_sweep(workers_for, measured("process", cpu_rates), measured("thread", IO)))
    assert "reads each job's own sweep" in verdict


def test_one_worker_per_usable_core_is_always_sound_for_computing():
    def by_the_cores(result, kind):
        return result.usable if kind == "cpu" else max(p.workers for p in result.points)

    for cpu_rates in (IDLE_CPU, BUSY_CPU_CLIMBING, BUSY_CPU_FLAT):
        run(check_from_the_sweep(by_the_cores, measured("process", cpu_rates), measured("thread", IO)))


def test_gunicorns_rule_for_the_waiting_job_fails_with_what_the_sweep_measured():
    workers_for = solution_function("workers_for", {CPU_CAP: CPU_CAP.replace(
        "    points", "    if kind == 'io':\n        return 2 * result.usable + 1\n    points")})
    with pytest.raises(Fail, match="I/O-bound job you chose 5 workers") as failure:
        run(check_from_the_sweep(workers_for, measured("process", IDLE_CPU), measured("thread", IO)))
    message = str(failure.value)
    assert "your sweep measured no more than that up to 5" in message
    assert "Read where this curve stops climbing" in message
    assert not re.search(r"\b(choose|use|run|pick) 32\b", message)  # the data, not the answer


def test_a_reading_of_the_whole_cpu_sweep_on_a_busy_machine_is_told_the_gain_is_borrowed():
    workers_for = solution_function("workers_for", {'if kind == "cpu":': "if False:"})
    with pytest.raises(Fail, match="more than the usable cores") as failure:
        run(check_from_the_sweep(workers_for, measured("process", BUSY_CPU_CLIMBING), measured("thread", IO)))
    assert "taken from other programs" in str(failure.value)


@pytest.mark.parametrize("choice, message", [
    (lambda result, kind: 1, "of the best your sweep measured"),
    (lambda result, kind: max(p.workers for p in result.points), "more than the usable cores"),
], ids=["one worker for everything", "the most workers for everything"])
def test_one_count_for_both_jobs_fails(choice, message):
    with pytest.raises(Fail, match=message):
        run(check_from_the_sweep(choice, measured("process", IDLE_CPU), measured("thread", IO)))


def test_more_waiting_threads_than_the_curve_rewards_are_too_many():
    flat_io = {2: 97.0, 4: 194.0, 8: 380.0, 16: 390.0, 32: 395.0}
    with pytest.raises(Fail, match="a smaller count your sweep measured already reached"):
        run(check_from_the_sweep(lambda result, kind: 2 if kind == "cpu" else 32,
                                 measured("process", IDLE_CPU), measured("thread", flat_io)))


def test_sweeps_of_the_wrong_kind_or_too_short_are_refused():
    right = solution_function("workers_for")
    with pytest.raises(Fail, match="run it on threads"):
        run(check_from_the_sweep(right, measured("process", IDLE_CPU), measured("process", IO)))
    with pytest.raises(Fail, match="measure further"):
        run(check_from_the_sweep(right, measured("process", IDLE_CPU), measured("thread", {2: 97.0, 4: 194.0})))
    with pytest.raises(Fail, match="the CPU-bound sweep itself"):
        run(check_from_the_sweep(right, IDLE_CPU, measured("thread", IO)))


# ---------------------------------------------------------------------------------- real kernels


def test_the_untouched_exercise_fails_every_part_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_06)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "0/6 points" in out
    assert out.count("not done yet") == 2
    assert "walk from its cgroup" in out  # part 1's hint
    assert "the points you trust" in out  # part 2's hint


def test_copied_rules_fail_the_right_parts_in_a_real_kernel(tmp_path):
    path = edited_notebook(SOLUTION_06, {
        AFFINITY: "usable = os.cpu_count()",
        CPU_CAP: "    if kind == 'io':\n        return 2 * result.usable + 1  # gunicorn's rule\n" + CPU_CAP,
    }, tmp_path / "copied.ipynb")
    by_part = outcomes_by_part(path)
    assert not by_part["ex06.from_the_sweep"].passed
    assert "I/O-bound job you chose" in by_part["ex06.from_the_sweep"].message
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
        assert not by_part["ex06.usable_cores"].passed
        assert "not allowed to run on" in by_part["ex06.usable_cores"].message
        assert not by_part["ex06.other_machines"].passed
        assert sum(o.points for o in by_part.values()) == 0


def test_labkit_grade_gives_the_solution_full_marks_and_the_untouched_exercise_zero(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    shutil.copy(SOLUTION_06, solutions)
    submissions = tmp_path / "submissions"
    for student, notebook in (("ada", SOLUTION_06), ("bob", EXERCISE_06)):
        (submissions / student).mkdir(parents=True)
        shutil.copy(notebook, submissions / student)
    out = tmp_path / "grades"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["grade", str(submissions), "--solutions", str(solutions), "--jobs", "2",
                     "--timeout", "60", "--out", str(out)]) == 0
    with open(out / "gradebook.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    score = {student: sum(float(r["points"]) for r in rows if r["student"] == student) for student in ("ada", "bob")}
    assert score == {"ada": 7, "bob": 0}, rows
