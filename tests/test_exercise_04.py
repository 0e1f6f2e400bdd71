"""Exercise 04, as students get it: untouched it fails both parts with a next step, deliberately
wrong answers fail the part they get wrong with a message that says what was measured (and never
names the pool kind or worker count to write), and the other correct ways to cut the range pass.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it for a student. The solution itself
passes under nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

import pytest
from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part

from labkit.cli import main
from labkit.grading import ex04
from labkit.workloads import count_primes

SOLUTION_04 = SOLUTIONS / "04_worker_pools_and_the_gil.ipynb"
EXERCISE_04 = EXERCISES / "04_worker_pools_and_the_gil.ipynb"

SPLIT = "    bounds = [limit * i // pieces for i in range(pieces + 1)]\n"
SUM = "    return sum(primes_pool.map(primes_between, bounds[:-1], bounds[1:]))\n"

# What a failure message may never contain: the pool kind or the worker count the student must write.
ANSWERS = ("WorkerPool('thread'", "WorkerPool('process'", 'WorkerPool("thread"', 'WorkerPool("process"',
           "workers='max'", 'workers="max"', "one worker per usable core")


def assert_gives_no_answer(message: str) -> None:
    for answer in ANSWERS:
        assert answer not in message, f"the message gives the answer away ({answer!r}): {message}"


def test_the_visible_limit_leaves_a_remainder_for_every_piece_count_and_a_prime_in_it():
    limit = ex04.COUNT_LIMIT
    assert all(limit % pieces for pieces in range(3, 129))
    assert count_primes(limit) - count_primes(limit - 1) == 1  # limit - 1 is prime: losing it changes the count


def test_the_untouched_exercise_fails_both_parts_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_04)]) == 1
    out = " ".join(capsys.readouterr().out.split())  # the report wraps long lines
    assert "0/6 points" in out
    assert out.count("not done yet") == 2
    assert "one pool call hands over the whole batch" in out  # part 1's hint
    assert "primes_pool.map(primes_between" in out  # part 2's hint


def test_swapped_pool_kinds_fail_each_part_with_what_was_measured_and_not_the_kind_to_use(tmp_path):
    # "Passes without understanding": pools that do run the work, just on the wrong kind of worker.
    path = edited_notebook(SOLUTION_04, {
        'hash_pool = WorkerPool("thread", workers="max")': 'hash_pool = WorkerPool("process", workers="max")',
        'primes_pool = WorkerPool("process", workers="max")': 'primes_pool = WorkerPool("thread", workers="max")',
    }, tmp_path / "swapped.ipynb")
    parts = outcomes_by_part(path)
    hashing, counting = parts["ex04.hash_batch"], parts["ex04.count_batch"]
    assert not hashing.passed and "hashed in other processes" in hashing.message
    assert "this kernel spent" in hashing.message and "releases the GIL" in hashing.message
    if ex04.gil_enabled():  # a free-threaded build without its GIL may count on threads
        assert not counting.passed and "counted in this process" in counting.message
        assert "this kernel spent" in counting.message and "This Python runs with a GIL" in counting.message
        assert_gives_no_answer(counting.message)
        assert sum(o.points for o in parts.values()) == 1
    assert_gives_no_answer(hashing.message)
    assert parts["ex04.edges"].passed  # the counts are right; only the kinds are wrong


def test_pieces_that_drop_the_remainder_fail_the_visible_count_and_the_hidden_edges(tmp_path):
    path = edited_notebook(SOLUTION_04, {
        SPLIT: "    step = limit // pieces\n    bounds = [i * step for i in range(pieces + 1)]\n",
    }, tmp_path / "remainder.ipynb")
    parts = outcomes_by_part(path)
    assert parts["ex04.hash_batch"].passed
    counting = parts["ex04.count_batch"]
    assert not counting.passed
    assert f"there are {count_primes(ex04.COUNT_LIMIT)} primes below {ex04.COUNT_LIMIT}" in counting.message
    assert "Some numbers were never counted" in counting.message
    assert not parts["ex04.edges"].passed and "Check the ends of your pieces" in parts["ex04.edges"].message


def test_a_split_fitted_to_the_visible_limit_passes_it_and_fails_the_hidden_edges(tmp_path):
    # Two pieces, ends rounded down: right for the visible limit (two divides it), wrong elsewhere.
    path = edited_notebook(SOLUTION_04, {
        "    pieces = 8 * primes_pool.workers": "    pieces = 2",
        SPLIT: "    step = limit // pieces\n    bounds = [i * step for i in range(pieces + 1)]\n",
    }, tmp_path / "fitted.ipynb")
    parts = outcomes_by_part(path)
    counting = parts["ex04.count_batch"]
    # Two unequal pieces may be too slow on a busy machine; the count itself is right.
    assert counting.passed or "primes below" not in counting.message
    edges = parts["ex04.edges"]
    assert not edges.passed and "count_below(3) returned 0; there are 1 primes below 3" in edges.message


def test_pieces_that_overlap_fail_with_numbers_counted_twice(tmp_path):
    path = edited_notebook(SOLUTION_04, {
        SUM: "    return sum(primes_pool.map(primes_between, bounds[:-1], [b + 1 for b in bounds[1:]]))\n",
    }, tmp_path / "overlap.ipynb")
    parts = outcomes_by_part(path)
    counting = parts["ex04.count_batch"]
    assert not counting.passed and "counted twice" in counting.message


ALTERNATIVES = {
    "array_split": {
        SPLIT: "    import numpy as np\n"
               "    chunks = [c for c in np.array_split(np.arange(limit), pieces) if len(c)]\n",
        SUM: "    return sum(primes_pool.map(primes_between, [int(c[0]) for c in chunks],"
             " [int(c[-1]) + 1 for c in chunks]))\n",
    },
    "divmod": {
        SPLIT: "    size, extra = divmod(limit, pieces)\n"
               "    bounds = [i * size + min(i, extra) for i in range(pieces + 1)]\n",
    },
    "match": {
        "    pieces = 8 * primes_pool.workers": "    match limit:\n"
                                               "        case int() if limit < 3:\n"
                                               "            return 0\n"
                                               "        case _:\n"
                                               "            pieces = 8 * primes_pool.workers",
    },
}


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_other_correct_ways_to_cut_the_range_pass_the_count_and_the_edges(tmp_path, name):
    path = edited_notebook(SOLUTION_04, ALTERNATIVES[name], tmp_path / f"{name}.ipynb")
    parts = outcomes_by_part(path)
    counting, edges = parts["ex04.count_batch"], parts["ex04.edges"]
    assert edges.passed, edges.message
    # The count is right and in processes; only a busy machine could leave it short of the speed asked.
    assert counting.passed or "as fast as doing the work one piece at a time" in counting.message, counting.message


def _primes_between(lo: int, hi: int) -> int:
    return count_primes(hi) - count_primes(max(lo, 0))


@pytest.mark.parametrize("gil", [True, False])
def test_counting_on_threads_is_refused_for_its_kind_only_where_the_build_has_a_gil(monkeypatch, gil):
    import asyncio

    from labkit import WorkerPool
    from labkit.grading.checks import Fail

    monkeypatch.setattr(ex04, "gil_enabled", lambda: gil)  # as sys._is_gil_enabled() would answer
    with WorkerPool("thread", 2) as threads:
        def count_below(limit):
            bounds = [limit * i // 8 for i in range(9)]
            return sum(threads.map(_primes_between, bounds[:-1], bounds[1:]))

        try:
            message = asyncio.run(ex04.check_count_batch(count_below, limit=60_000))
        except Fail as failure:
            message, passed = str(failure), False
        else:
            passed = True
    if gil:
        assert not passed and "counted in this process" in message and "This Python runs with a GIL" in message
    else:  # without a GIL threads may use every core: the speed alone is judged, and the GIL never blamed
        assert "GIL" not in message.replace("without a GIL", "")
        assert ("from threads" in message) if passed else ("as fast as doing the work one piece at a time" in message)
