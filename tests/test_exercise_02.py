"""Exercise 02 from the student's side: untouched, it fails both parts with a next step; a wrong
layout fails the part it gets wrong, with the message a student can act on.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it. The solution itself passes under
nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part

from labkit.cli import main

SOLUTION_02 = SOLUTIONS / "02_cluster_mode.ipynb"
EXERCISE_02 = EXERCISES / "02_cluster_mode.ipynb"


def test_the_untouched_exercise_fails_both_parts_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_02)]) == 1
    out = capsys.readouterr().out
    assert "0/5 points" in out
    assert out.count("not done yet") == 2
    assert "Replace the `# YOUR CODE HERE` stub" in out


def test_one_worker_for_the_cpu_service_and_several_for_the_gateway_fail_the_right_parts(tmp_path):
    wrong = edited_notebook(SOLUTION_02, {
        'return {"workers": "max", "balance": "round-robin"}': 'return {"workers": 1, "balance": "round-robin"}',
        'return {"workers": 1}': 'return {"workers": 3}',
    }, tmp_path / "wrong.ipynb")
    by_part = outcomes_by_part(wrong)
    assert "cores idle" in by_part["ex02.cpu_service"].message
    assert "one worker already answers" in by_part["ex02.io_service"].message
    assert sum(o.points for o in by_part.values()) == 0
