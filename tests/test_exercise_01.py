"""Exercise 01 from the student's side: untouched, it fails every part with a next step; wrong
answers fail the part they get wrong, with a message that is true, teaches the idea and does not
give the answer away; the other correct ways to write it pass.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it. The solution itself passes under
nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

import asyncio
import threading
import time

import nbformat
import pytest
from grading_corpus import LOGIN, LOGIN_DEF, REPORT, REPORT_DEF, wrong_answers
from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part, replace_once

from labkit.cli import main
from labkit.grading import ex01
from labkit.grading.checks import Fail
from labkit.grading.runner import run_notebook

SOLUTION_01 = SOLUTIONS / "01_event_loop_blocking.ipynb"
EXERCISE_01 = EXERCISES / "01_event_loop_blocking.ipynb"

# What the solution regions write: a failure message may echo the student's own choice, never
# name the one to make.
ANSWERS = ("ThreadPoolExecutor", "ProcessPoolExecutor", "thread pool", "process pool", "(threads", "(processes",
           "`threads`", "`processes`", "'threads'", "'processes'", "hash_password(password")


def assert_teaches_without_the_answer(message: str) -> None:
    given = [answer for answer in ANSWERS if answer.lower() in message.lower()]
    assert not given, f"the message gives the answer away ({given}): {message}"


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
    hashing = by_part["ex01.offload_hash"].message
    assert not by_part["ex01.offload_hash"].passed
    assert "login still blocks the event loop" in hashing and "ran on the loop's thread" in hashing
    counting = by_part["ex01.offload_primes"].message
    assert not by_part["ex01.offload_primes"].passed
    assert "computed in this process" in counting and "takes turns with the event loop" in counting
    assert not by_part["ex01.many_logins"].passed  # hidden check: same blocking login
    assert sum(o.points for o in by_part.values()) == 0
    for message in (hashing, counting, by_part["ex01.many_logins"].message):
        assert_teaches_without_the_answer(message)


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
    assert "not the hash of that password" in outcomes[0].message
    assert_teaches_without_the_answer(outcomes[0].message)


def test_hashing_in_a_process_pool_passes_no_part_that_hashes(tmp_path):
    # Passes without understanding: the loop stays free, but scrypt releases the GIL, so another
    # process adds pickling and an interpreter per worker and buys nothing.
    path = edited_notebook(SOLUTION_01, {
        LOGIN: "return await loop.run_in_executor(processes, labkit.hash_password, password, SALT, COST)",
    }, tmp_path / "process_login.ipynb")
    by_part = outcomes_by_part(path)
    for part in ("ex01.offload_hash", "ex01.many_logins"):
        message = by_part[part].message
        assert not by_part[part].passed, message
        assert "keeps the loop free, but the hashing ran in another process" in message
        assert "releases the GIL" in message and "ms of CPU time" in message and " MB " in message
        assert "thread" not in message  # the idea, not the pool that is the answer
        assert_teaches_without_the_answer(message)
    assert by_part["ex01.offload_primes"].passed


def test_a_forgotten_await_and_hashes_left_running_do_not_let_a_thread_count_as_another_process(tmp_path):
    # The hashes this login never awaits, and six more a cell fired off, are still running when the
    # report is checked: they must not inflate the reference and let a thread pass as "another process".
    path = edited_notebook(SOLUTION_01, {
        LOGIN: "return loop.run_in_executor(threads, labkit.hash_password, password, SALT, COST)",
        REPORT: "return await loop.run_in_executor(threads, labkit.count_primes, limit)",
        REPORT_DEF: "strays = [threads.submit(labkit.hash_password, f'user-{i}', SALT, COST) for i in range(6)]\n\n"
                    + REPORT_DEF,
    }, tmp_path / "forgotten_await.ipynb")
    by_part = outcomes_by_part(path)
    for part in ("ex01.offload_hash", "ex01.many_logins"):
        message = by_part[part].message
        assert not by_part[part].passed
        assert "returned an asyncio Future" in message and "nothing awaited its result" in message, message
        assert "Await it" in message and "another user" not in message
        assert_teaches_without_the_answer(message)
    counting = by_part["ex01.offload_primes"].message
    assert not by_part["ex01.offload_primes"].passed, counting
    assert "computed in this process" in counting
    assert_teaches_without_the_answer(counting)


def test_waiting_for_the_result_on_the_loop_is_told_it_waited_not_that_it_computed(tmp_path):
    path = edited_notebook(SOLUTION_01, {
        LOGIN: "return threads.submit(labkit.hash_password, password, SALT, COST).result()",
    }, tmp_path / "result_on_the_loop.ipynb")
    by_part = outcomes_by_part(path)
    for part in ("ex01.offload_hash", "ex01.many_logins"):
        message = by_part[part].message
        assert not by_part[part].passed
        assert "still blocks the event loop" in message and "the work ran elsewhere" in message, message
        assert "future.result()" in message and "directly" not in message
        assert_teaches_without_the_answer(message)


def test_shared_state_between_logins_and_a_stored_count_fail_with_what_went_wrong(tmp_path):
    # Both fit the visible checks: one login at a time is right, and the count is the right number.
    path = edited_notebook(SOLUTION_01, {
        LOGIN_DEF: "current = None\n\n" + LOGIN_DEF,
        LOGIN: "global current\n    current = password\n    await asyncio.sleep(0)\n"
               "    return await asyncio.to_thread(lambda: labkit.hash_password(current, SALT, COST))",
        REPORT: "return 13848",
    }, tmp_path / "fitted.ipynb")
    by_part = outcomes_by_part(path)
    assert by_part["ex01.offload_hash"].passed
    logins = by_part["ex01.many_logins"].message
    assert not by_part["ex01.many_logins"].passed
    assert "user 0's login returned user 3's hash" in logins, logins
    counting = by_part["ex01.offload_primes"].message
    assert not by_part["ex01.offload_primes"].passed
    assert "returned the right count, but no process counted" in counting, counting
    for message in (logins, counting):
        assert_teaches_without_the_answer(message)


ALTERNATIVES = {
    "to_thread": {
        LOGIN: "return await asyncio.to_thread(labkit.hash_password, password, SALT, COST)",
    },
    "wrap_future": {
        LOGIN: "return await asyncio.wrap_future(threads.submit(labkit.hash_password, password, SALT, COST))",
        REPORT: "return await asyncio.wrap_future(processes.submit(labkit.count_primes, limit))",
    },
    "default_executor_and_partial": {
        LOGIN: "import functools\n"
               "    hashing = functools.partial(labkit.hash_password, password, SALT, COST)\n"
               "    return await loop.run_in_executor(None, hashing)",
        REPORT: "import functools\n"
                "    return await loop.run_in_executor(processes, functools.partial(labkit.count_primes, limit))",
    },
}


@pytest.mark.parametrize("alternative", sorted(ALTERNATIVES))
def test_other_correct_ways_to_offload_pass_every_part(tmp_path, alternative):
    path = edited_notebook(SOLUTION_01, ALTERNATIVES[alternative], tmp_path / f"{alternative}.ipynb")
    by_part = outcomes_by_part(path)
    assert {part: o.passed for part, o in by_part.items()} == {
        "ex01.offload_hash": True, "ex01.offload_primes": True, "ex01.many_logins": True}, by_part


def test_a_check_that_never_finds_the_kernel_quiet_says_what_kept_it_busy(monkeypatch):
    monkeypatch.setattr(ex01, "QUIET_SECONDS", 0.5)  # this test's own process, not a student's kernel
    stop = threading.Event()

    def spin():  # work some earlier cell left running in a thread
        while not stop.is_set():
            time.perf_counter()

    busy = threading.Thread(target=spin)
    busy.start()
    try:
        with pytest.raises(Fail, match="kept .* cores busy") as failed:
            asyncio.run(ex01._wait_until_quiet())
    finally:
        stop.set()
        busy.join()
    assert "in this kernel's threads" in str(failed.value) and "nobody awaited" in str(failed.value)
    asyncio.run(ex01._wait_until_quiet())  # and once it ended, the kernel is quiet again
