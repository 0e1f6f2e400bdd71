"""Exercise 04, as students get it: untouched it fails both parts with a next step, and deliberately
wrong answers fail the part they get wrong, with the message that says why.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it for a student. The solution itself
passes under nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part

from labkit.cli import main

SOLUTION_04 = SOLUTIONS / "04_worker_pools_and_the_gil.ipynb"
EXERCISE_04 = EXERCISES / "04_worker_pools_and_the_gil.ipynb"


def test_the_untouched_exercise_fails_both_parts_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_04)]) == 1
    out = " ".join(capsys.readouterr().out.split())  # the report wraps long lines
    assert "0/6 points" in out
    assert out.count("not done yet") == 2
    assert "one pool call hands over the whole batch" in out  # part 1's hint
    assert "primes_pool.map(primes_between" in out  # part 2's hint


def test_swapped_pool_kinds_fail_each_part_with_the_kind_it_should_have_been(tmp_path):
    path = edited_notebook(SOLUTION_04, {
        'hash_pool = WorkerPool("thread", workers="max")': 'hash_pool = WorkerPool("process", workers="max")',
        'primes_pool = WorkerPool("process", workers="max")': 'primes_pool = WorkerPool("thread", workers="max")',
    }, tmp_path / "swapped.ipynb")
    parts = outcomes_by_part(path)
    hashing, counting = parts["ex04.hash_batch"], parts["ex04.count_batch"]
    assert not hashing.passed and "hashed in other processes" in hashing.message
    assert "use WorkerPool('thread', ...)" in hashing.message
    assert not counting.passed and "counted in this process" in counting.message
    assert "use WorkerPool('process', ...)" in counting.message
    assert parts["ex04.edges"].passed  # the counts are right; only the kinds are wrong
    assert sum(o.points for o in parts.values()) == 1


def test_pieces_that_miss_the_last_number_fail_the_count_and_the_hidden_edges(tmp_path):
    path = edited_notebook(SOLUTION_04, {
        "bounds = [limit * i // pieces for i in range(pieces + 1)]":
            "bounds = [limit * i // pieces for i in range(pieces + 1)]\n    bounds[-1] -= 1",
    }, tmp_path / "short.ipynb")
    parts = outcomes_by_part(path)
    assert parts["ex04.hash_batch"].passed
    assert not parts["ex04.count_batch"].passed
    assert "there are 17984 primes below 200000" in parts["ex04.count_batch"].message
    assert not parts["ex04.edges"].passed and "Check the ends of your pieces" in parts["ex04.edges"].message
