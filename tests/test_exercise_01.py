"""Exercise 01 from the student's side: untouched, it fails every part with a next step; wrong
answers fail the part they get wrong, with the message a student can act on.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it. The solution itself passes under
nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

import nbformat
from grading_corpus import LOGIN, wrong_answers
from helpers import EXERCISES, SOLUTIONS, outcomes_by_part, replace_once

from labkit.cli import main
from labkit.grading.runner import run_notebook

SOLUTION_01 = SOLUTIONS / "01_event_loop_blocking.ipynb"
EXERCISE_01 = EXERCISES / "01_event_loop_blocking.ipynb"


def test_the_untouched_exercise_fails_every_part_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_01)]) == 1
    out = capsys.readouterr().out
    assert "0/6 points" in out
    assert out.count("not done yet") == 2
    assert "Replace the `# YOUR CODE HERE` stub" in out


def test_hashing_on_the_loop_and_counting_in_a_thread_fail_every_part_with_the_right_messages(tmp_path):
    path = tmp_path / "wrong.ipynb"
    nbformat.write(wrong_answers(), path)  # the grading corpus's student who made both classic mistakes
    by_part = outcomes_by_part(path)
    assert not by_part["ex01.offload_hash"].passed
    assert "login still blocks the event loop" in by_part["ex01.offload_hash"].message
    assert not by_part["ex01.offload_primes"].passed
    assert "computed in this process" in by_part["ex01.offload_primes"].message
    assert "use the process pool" in by_part["ex01.offload_primes"].message
    assert not by_part["ex01.many_logins"].passed  # hidden check: same blocking login
    assert sum(o.points for o in by_part.values()) == 0


def test_a_login_that_returns_something_else_than_the_hash_is_told_so(tmp_path):
    nb = nbformat.read(SOLUTION_01, as_version=4)
    # Only what the first check needs: the set-up, login and its check.
    nb.cells = [c for c in nb.cells if "import labkit" in c.source or "def login" in c.source
                or "offload_hash" in c.source]
    replace_once(nb, LOGIN, "return 'not a hash'")
    replace_once(nb, "processes.submit(labkit.count_primes, 10).result() == 4", "True")
    nb.cells.append(nbformat.v4.new_code_cell("threads.shutdown(); processes.shutdown()"))
    path = tmp_path / "wrong_result.ipynb"
    nbformat.write(nb, path)
    _, outcomes = run_notebook(path)
    assert [o.part for o in outcomes] == ["ex01.offload_hash"]
    assert not outcomes[0].passed
    assert "not the hash of the password" in outcomes[0].message
