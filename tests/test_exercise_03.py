"""Exercise 03 from the student's side: untouched, it fails both parts with a next step; a single
worker and a thread pool fail the parts they get wrong, with the message a student can act on.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it. The solution itself passes under
nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part

from labkit.cli import main

SOLUTION_03 = SOLUTIONS / "03_crash_isolation.ipynb"
EXERCISE_03 = EXERCISES / "03_crash_isolation.ipynb"


def test_the_untouched_exercise_fails_both_parts_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_03)]) == 1
    out = capsys.readouterr().out
    assert "0/6 points" in out
    assert out.count("not done yet") == 2


def test_one_worker_and_a_thread_pool_fail_the_right_parts(tmp_path):
    wrong = edited_notebook(SOLUTION_03, {
        'return {"workers": max(2, labkit.usable_cores().usable)}': 'return {"workers": 1}',
        'WorkerPool("process", workers=2)': 'WorkerPool("thread", workers=2)',
    }, tmp_path / "wrong.ipynb")
    by_part = outcomes_by_part(wrong)
    assert "no other worker answered" in by_part["ex03.survive_crashes"].message
    assert "took its whole process down" in by_part["ex03.isolate_render"].message
    assert "WorkerPool('process')" in by_part["ex03.isolate_render"].message
    assert not by_part["ex03.many_crashes"].passed  # hidden check: the same thread pool
    assert sum(o.points for o in by_part.values()) == 0
