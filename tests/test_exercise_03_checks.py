"""Exercise 03's checks, run as a student's kernel runs them, minus the kernel: real clusters, real
crashes, real processes. Each wrong answer fails the part it gets wrong with a message that says
what was measured; each correct alternative a student may write passes.
"""

from __future__ import annotations

import asyncio
import os
import sys

import cloudpickle
import pytest
from test_exercise_03 import assert_no_answer_given

from labkit.cluster import ClusterSettings
from labkit.demo.faulty import is_corrupt, render_document
from labkit.grading.checks import CheckFailed, check
from labkit.grading.ex03 import HIDDEN_LIFETIME, LIFETIME, LONGEST_WAIT, VISIBLE, _project, page
from labkit.pool import WorkerPool

# The render checks run a function in a fresh interpreter, where this test module is not
# importable: send its functions by value, as a notebook's are.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", autouse=True)
def resource_tracker_started_up_front():
    """Start multiprocessing's resource tracker before any leak snapshot (see test_cluster.py)."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def run_check(part: str, *args) -> str:
    """Run a self-check outside a kernel: the verdict line it printed, passed or not.

    A failure's line must not give away a value the solution writes (see test_exercise_03.py).
    """
    async def main():
        try:
            await check(part, *args)
        except CheckFailed as failed:
            assert_no_answer_given(failed.result.message)
            return failed.result.line()
        return "passed"

    return asyncio.run(main())


# ------------------------------------------------------------------------ part 1: the cluster


def test_a_backoff_capped_low_instead_of_reset_passes_with_more_workers():
    assert run_check("ex03.survive_crashes", lambda: {"workers": 3, "max_restart_delay": 0.3}) == "passed"


def test_a_crash_loop_guard_that_counts_serving_workers_as_broken_gives_up_and_fails():
    line = run_check("ex03.survive_crashes",
                     lambda: {"workers": 2, "min_uptime": 60, "max_restarts": 2, "stable_uptime": 1.0})
    assert "the supervisor gave up" in line and "requests were answered" in line
    assert "it was not crashing at boot" in line


def test_a_backoff_that_grows_too_slowly_to_show_in_six_crashes_fails_the_hidden_check():
    slow_growth = {"workers": 2, "backoff_factor": 1.3}
    assert run_check("ex03.survive_crashes", lambda: slow_growth) == "passed"  # 0.1 s x 1.3**5 = 0.37 s
    line = run_check("ex03.faster_crashes", lambda: slow_growth)
    assert "each crash made the next wait longer" in line and "killed once it had served for 1.2 s" in line


@pytest.mark.parametrize("settings, lifetime, verdict", [
    ({}, LIFETIME, "waits"),  # labkit's defaults: the backoff never resets for a 2 s life
    ({"stable_uptime": 1.0}, LIFETIME, None),
    ({"stable_uptime": 1.0}, HIDDEN_LIFETIME, None),
    ({"backoff_factor": 1}, HIDDEN_LIFETIME, None),
    ({"min_uptime": 3, "max_restarts": 3}, LIFETIME, "gives up"),  # lab 03, section 2
    ({"backoff_factor": 1.3}, LIFETIME, None),
    ({"backoff_factor": 1.3}, HIDDEN_LIFETIME, "waits"),
])
def test_a_round_too_slow_to_finish_is_judged_by_the_supervisors_own_rule(settings, lifetime, verdict):
    crashes = 6 if lifetime == LIFETIME else 12
    projected = _project(ClusterSettings(**settings).policy, lifetime, crashes)
    found = ("gives up" if projected.gave_up else
             "waits" if any(wait > LONGEST_WAIT for *_, wait in projected.waits) else None)
    assert found == verdict


# ------------------------------------------------------------------------ part 2: the batch


def render_with_map(docs, render=render_document):
    with WorkerPool("process", workers=3) as pool:
        results = pool.map(render, docs, task_timeout=3, return_exceptions=True)
        return {doc: None if isinstance(result, Exception) else result for doc, result in zip(docs, results)}


def render_waiting_with_a_limit(docs, render=render_document):
    rendered = {}
    with WorkerPool("process", workers=2) as pool:
        futures = {doc: pool.submit(render, doc) for doc in docs}
        for doc, future in futures.items():
            try:
                rendered[doc] = future.result(timeout=2)
            except Exception:  # noqa: BLE001 - the wrong answer under test catches everything
                rendered[doc] = None
    return rendered


def render_in_threads(docs, render=render_document):
    with WorkerPool("thread", workers=2) as pool:
        return dict(zip(docs, pool.map(render, docs, return_exceptions=True)))


def render_without_catching(docs, render=render_document):
    with WorkerPool("process", workers=2, timeout=3) as pool:
        return dict(zip(docs, pool.map(render, docs)))


def render_known_corrupt_as_none(docs, render=render_document):
    with WorkerPool("process", workers=2, timeout=3) as pool:
        results = pool.map(render, docs, return_exceptions=True)
        return {doc: None if is_corrupt(doc) or isinstance(r, Exception) else r for doc, r in zip(docs, results)}


def render_again_at_home(docs, render=render_document):
    """Try each document in a pool, then render the ones that survived here, in this process."""
    with WorkerPool("process", workers=2, timeout=3) as pool:
        tried = list(pool.map(render, docs, return_exceptions=True))
    return {doc: None if isinstance(result, Exception) else render(doc) for doc, result in zip(docs, tried)}


def test_the_checks_renderer_signs_pages_with_its_pid_and_fails_where_it_chooses():
    renderer, docs = VISIBLE
    assert renderer(3) == f"{page(3)}<!-- pid {os.getpid()} -->"
    assert renderer(13).startswith(page(13))  # a multiple of 13 renders fine here
    assert [doc for doc in docs if renderer.bad(doc)] != [doc for doc in docs if is_corrupt(doc)]


def test_pool_map_with_a_task_timeout_passes_both_render_checks():
    assert run_check("ex03.isolate_render", render_with_map) == "passed"
    assert run_check("ex03.many_crashes", render_with_map) == "passed"


def test_waiting_with_a_time_limit_does_not_stop_a_stuck_render():
    line = run_check("ex03.isolate_render", render_waiting_with_a_limit)
    assert "had not returned after 30 s" in line and "stop the stuck render itself" in line


def test_threads_take_the_batch_down_without_losing_this_process():
    line = run_check("ex03.isolate_render", render_in_threads)
    assert "took its whole process down" in line and "SIGSEGV" in line


def test_a_pool_that_lets_a_crash_through_is_told_it_should_cost_one_document():
    line = run_check("ex03.isolate_render", render_without_catching)
    assert "raised WorkerCrashedError" in line and "should cost that one document" in line


def test_a_batch_that_trusts_is_corrupt_gets_a_good_multiple_of_13_wrong():
    line = run_check("ex03.isolate_render", render_known_corrupt_as_none)
    assert "returned None for documents [13]" in line



def test_pages_rendered_in_the_batchs_own_process_are_noticed_by_their_signature():
    line = run_check("ex03.isolate_render", render_again_at_home)
    assert "rendered documents [3, 13, 21] in render_batch's own process" in line
