"""Exercises 02 and 03 from the student's side: untouched, they fail every part helpfully; a
deliberately wrong answer fails the part it gets wrong, with the message a student can act on.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it. The solutions themselves pass
under nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from labkit.cli import main
from labkit.grading.runner import run_notebook

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_02 = ROOT / "solutions" / "02_cluster_mode.ipynb"
EXERCISE_02 = ROOT / "exercises" / "02_cluster_mode.ipynb"
SOLUTION_03 = ROOT / "solutions" / "03_crash_isolation.ipynb"
EXERCISE_03 = ROOT / "exercises" / "03_crash_isolation.ipynb"


def with_replacements(solution: Path, replacements: dict[str, str], tmp_path: Path) -> Path:
    """A copy of ``solution`` with each old text replaced once; fails if the solution changed."""
    nb = nbformat.read(solution, as_version=4)
    left = dict(replacements)
    for cell in nb.cells:
        for old in list(left):
            if old in cell.source:
                cell.source = cell.source.replace(old, left.pop(old))
    assert not left, f"the solution changed; update this test ({list(left)})"
    path = tmp_path / f"wrong_{solution.name}"
    nbformat.write(nb, path)
    return path


def test_the_untouched_exercise_02_fails_both_parts_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_02)]) == 1
    out = capsys.readouterr().out
    assert "0/5 points" in out
    assert out.count("not done yet") == 2
    assert "Replace the `# YOUR CODE HERE` stub" in out


def test_the_untouched_exercise_03_fails_both_parts_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_03)]) == 1
    out = capsys.readouterr().out
    assert "0/6 points" in out
    assert out.count("not done yet") == 2


def test_one_worker_for_the_cpu_service_and_several_for_the_gateway_fail_the_right_parts(tmp_path):
    wrong = with_replacements(SOLUTION_02, {
        'return {"workers": "max", "balance": "round-robin"}': 'return {"workers": 1, "balance": "round-robin"}',
        'return {"workers": 1}': 'return {"workers": 3}',
    }, tmp_path)
    _, outcomes = run_notebook(wrong)
    by_part = {o.part: o for o in outcomes}
    assert "cores idle" in by_part["ex02.cpu_service"].message
    assert "one worker already answers" in by_part["ex02.io_service"].message
    assert sum(o.points for o in outcomes) == 0


def test_one_worker_and_a_thread_pool_fail_the_right_parts_of_exercise_03(tmp_path):
    wrong = with_replacements(SOLUTION_03, {
        'return {"workers": max(2, labkit.usable_cores().usable)}': 'return {"workers": 1}',
        'WorkerPool("process", workers=2)': 'WorkerPool("thread", workers=2)',
    }, tmp_path)
    _, outcomes = run_notebook(wrong)
    by_part = {o.part: o for o in outcomes}
    assert "no other worker answered" in by_part["ex03.survive_crashes"].message
    assert "took its whole process down" in by_part["ex03.isolate_render"].message
    assert "WorkerPool('process')" in by_part["ex03.isolate_render"].message
    assert not by_part["ex03.many_crashes"].passed  # hidden check: the same thread pool
    assert sum(o.points for o in outcomes) == 0
