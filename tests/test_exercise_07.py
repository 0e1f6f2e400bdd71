"""Exercise 07, the capstone: its checks pass the right service and name what is wrong with others.

The right answer passes under nbval (solutions/07: a process pool for /primes, a thread pool for
/hash). Here: the layout facts, judged before anything runs; then real clusters of right and wrong
apps under real load, which must pass, or fail for the right reason with a message that teaches
without giving the answer; the hidden checks; and the untouched exercise. The apps are built inside
functions, so they travel to the workers by value, as a notebook's do.
"""

from __future__ import annotations

import asyncio
import os
import re

import nbformat
import pytest
from helpers import EXERCISES

import labkit
from labkit.cli import main
from labkit.grading.checks import Fail
from labkit.grading.ex07 import check_answers, check_any_machine, check_every_core, check_responsive, gil_enabled

EXERCISE_07 = EXERCISES / "07_cluster_plus_workers.ipynb"

# What a message or a hint must never say: the pool kind, the balancing mode or the sizes to write.
ANSWERS = [r"WorkerPool\(", r"process pool", r"thread pool", r"['\"]process['\"]", r"['\"]thread['\"]",
           r"processes\b(?! of the cluster)", r"round-robin", r"reuseport", r"K x M =", r"= usable",
           r"workers=\d", r"['\"](pool_)?workers['\"]:\s*(\d|['\"]max)", r"wrap_future",
           r"run_in_executor", r"\.submit\("]


def teaches_without_the_answer(message: str) -> str:
    """``message``, once asserted to name none of :data:`ANSWERS`."""
    for answer in ANSWERS:
        assert not re.search(answer, message), f"{answer!r} gives the answer away in: {message}"
    return message


def service(primes: str = "process", hashes: str = "thread", wrong_answer: bool = False, shared_result: bool = False):
    """A capstone app factory. ``primes`` and ``hashes`` say where each endpoint's work runs: in a
    "process" pool, a "thread" pool, the "same" pool as /primes', on the "loop", or still the
    exercise's "stub"."""
    import tornado.web

    from labkit.workloads import count_primes, hash_password

    last = {}  # shared_result: each endpoint's answers land here, where its other requests read them

    async def run(pool, where, fn, *args):
        if where == "stub":
            raise NotImplementedError("count_primes(n) runs in self.application.primes_pool (lab 01)")
        if where == "loop":
            return fn(*args)  # the mistake: the loop computes
        if not shared_result:
            return await asyncio.wrap_future(pool.submit(fn, *args))
        future = pool.submit(fn, *args)
        last[fn] = await asyncio.wrap_future(future)
        await asyncio.sleep(0.05)  # meanwhile another request of the same endpoint may overwrite it
        return last[fn]

    class Fast(tornado.web.RequestHandler):
        def get(self):
            self.write("ok\n")

    class Primes(tornado.web.RequestHandler):
        async def get(self):
            n = int(self.get_argument("n"))
            counted = await run(self.application.primes_pool, primes, count_primes, n)
            self.write({"n": n, "primes": counted + (1 if wrong_answer and n == 0 else 0)})

    class Hash(tornado.web.RequestHandler):
        async def get(self):
            cost = int(self.get_argument("cost"))
            digest = await run(self.application.hash_pool, hashes, hash_password, b"capstone", b"labkit-course-salt",
                               cost)
            self.write({"cost": cost, "hash": digest})

    class App(tornado.web.Application):
        def __init__(self, pool_workers):
            super().__init__([(r"/fast", Fast), (r"/primes", Primes), (r"/hash", Hash)])
            self.pool_workers, self.primes_pool, self.hash_pool = pool_workers, None, None

        def labkit_start(self):
            kind = {"thread": "thread"}.get(primes, "process")
            self.primes_pool = labkit.WorkerPool(kind, workers=self.pool_workers)
            if hashes == "same":
                self.hash_pool = self.primes_pool
            else:
                kind = {"thread": "thread"}.get(hashes, "process")
                self.hash_pool = labkit.WorkerPool(kind, workers=self.pool_workers)

        def labkit_close(self):
            for pool in (self.primes_pool, self.hash_pool):
                pool.shutdown(cancel_futures=True)

    def make_app(pool_workers=1):
        return App(pool_workers)

    return make_app


def layout_of(workers, pool_workers, balance="round-robin"):
    return lambda: {"workers": workers, "balance": balance, "options": {"pool_workers": pool_workers}}


def run(coroutine):
    return asyncio.run(coroutine)


USABLE = labkit.usable_cores().usable


@pytest.mark.parametrize("layout, message", [
    (layout_of(USABLE, 2), f"oversubscribed: .* = {2 * USABLE} heavy workers for {USABLE} usable cores"),
    (layout_of(2 * USABLE, 1), "oversubscribed"),
    (layout_of(USABLE, USABLE), "oversubscribed"),
    (lambda: {"workers": 2, "balance": "os", "options": {"pool_workers": 1}}, "spreads connections by design"),
    (lambda: {"workers": 1}, "options': {'pool_workers': M}"),
    (lambda: {"workers": 1, "options": {"pool_workers": 0}}, "positive integer"),
    (lambda: {"workers": 1, "port": 80, "options": {"pool_workers": 1}}, "sets port"),
    (lambda: [1, 1], "returned list"),
], ids=["two pool workers in each of one worker per core", "two workers per core", "a pool per core in each worker",
        "os balancing", "no pool size", "a pool of none", "a fixed port", "not a dict"])
def test_layouts_are_judged_on_their_facts_before_anything_runs(layout, message):
    if "spreads" in message and USABLE != 2:
        pytest.skip("a two-worker layout fits the budget only on two usable cores")
    with pytest.raises(Fail, match=message):
        run(check_every_core(service(), layout))


@pytest.mark.skipif(USABLE < 2, reason="one pool worker is the whole budget on one usable core")
def test_a_layout_that_leaves_cores_idle_is_told_so():
    with pytest.raises(Fail, match="cores idle: 1 cluster worker x 1 pool worker = 1 heavy worker") as failed:
        run(check_every_core(service(), layout_of(1, 1)))
    teaches_without_the_answer(str(failed.value))


def test_no_layout_message_states_the_layout_to_write():
    for layout in (layout_of(USABLE, 2), layout_of(2 * USABLE, 1), layout_of(1, 1),
                   lambda: {"workers": 2, "balance": "os", "options": {"pool_workers": 1}}, lambda: [1, 1]):
        try:
            run(check_every_core(service(), layout))
        except Fail as exc:
            teaches_without_the_answer(str(exc))


# ------------------------------------------------------------------------------ right services pass


def test_a_thread_pool_for_hash_passes_beside_a_process_pool_for_primes():
    # scrypt releases the GIL: lab 07's table puts it on threads. (This is the solution's shape.)
    run(check_responsive(service(primes="process", hashes="thread")))


def test_one_process_pool_for_both_endpoints_passes_too():
    run(check_responsive(service(primes="process", hashes="same")))


# ------------------------------------------------------------------------------ wrong services fail


def test_computing_on_the_loop_is_a_blocked_loop():
    with pytest.raises(Fail, match="the loop is blocked: while /primes requests loaded the app, /fast took up to"
                       ) as failed:
        run(check_responsive(service(primes="loop")))
    teaches_without_the_answer(str(failed.value))


def test_hashing_on_the_loop_is_a_blocked_loop_even_though_scrypt_releases_the_gil():
    with pytest.raises(Fail, match="the loop is blocked: while /hash requests loaded the app") as failed:
        run(check_responsive(service(hashes="loop")))
    teaches_without_the_answer(str(failed.value))


@pytest.mark.skipif(USABLE < 2, reason="with one usable core, one process computing is the whole machine")
@pytest.mark.skipif(not gil_enabled(), reason="without a GIL, threads may compute pure Python in parallel")
def test_pure_python_in_a_thread_pool_passes_nothing_without_understanding_the_gil():
    # The attempt that "passes without understanding": a pool, awaited, the loop free, /fast fast,
    # and every endpoint on threads because lab 07's table says threads for /hash.
    with pytest.raises(Fail) as failed:
        run(check_responsive(service(primes="thread", hashes="thread")))
    message = teaches_without_the_answer(str(failed.value))
    # Two true verdicts, depending on how the GIL was shared: usually the loop stays free and the
    # cores sit idle; on a busy machine the pool's threads may also hold the GIL long enough to block
    # the loop. Both must name the one computing process and the GIL.
    idle = re.search(r"while only /primes requests loaded the app, 1 process of the cluster computed, "
                     rf"for {USABLE} usable cores \(the cluster used \d+\.\d\d cores\)", message)
    blocked = ("the loop is blocked: while /primes requests loaded the app" in message
               and "Only 1 process of the cluster computed meanwhile" in message)
    assert idle or blocked, message
    assert "pure Python" in message and "runs with a GIL" in message


@pytest.mark.skipif(USABLE < 2, reason="with one usable core, one process computing is the whole machine")
@pytest.mark.skipif(not gil_enabled(), reason="without a GIL, threads may compute pure Python in parallel")
def test_pure_python_in_threads_fails_the_layout_check_too_however_the_layout_is_sized():
    with pytest.raises(Fail, match="1 process of the cluster computed") as failed:
        run(check_every_core(service(primes="thread", hashes="process"), layout_of(1, USABLE)))
    teaches_without_the_answer(str(failed.value))


def measured(busy: int, cores: float, gil: bool, delivered: float = 2.0, fast: float = 0.01):
    """A trial as the checks see it: /primes computed in ``busy`` processes using ``cores`` cores."""
    from types import SimpleNamespace

    from labkit.grading.ex07 import _Phase, _Run

    report = SimpleNamespace(p50_ms=1000.0, ok=10, failed=0, requests=10, errors={})
    cpu = {pid: cores / busy for pid in range(busy)}
    phase = _Phase("/primes", report, [fast] * 50, 1.0, cpu)
    return _Run(phase, _Phase("/hash", report, [0.01] * 50, 1.0, cpu), delivered, gil)


def test_what_counts_as_pure_python_on_every_core_depends_on_the_build():
    # With a GIL, one process computing is one core, whatever its CPU time says; without one (a
    # free-threaded build running without its GIL), threads of one process may use every core,
    # so the CPU the cluster used is the measure.
    assert not measured(busy=1, cores=2.0, gil=True).primes_spread(2)
    assert measured(busy=2, cores=0.3, gil=True).primes_spread(2)  # busy machine: the count still shows it
    assert measured(busy=1, cores=1.9, gil=False).primes_spread(2)
    assert not measured(busy=1, cores=1.0, gil=False).primes_spread(2)


def test_a_loop_slowed_by_pure_python_threads_is_told_about_the_gil():
    from labkit.grading.ex07 import _verdict

    with pytest.raises(Fail) as failed:
        _verdict(measured(busy=1, cores=1.0, gil=True, fast=0.6), 2, judge_cpu=False)
    message = teaches_without_the_answer(str(failed.value))
    assert "the loop is blocked: while /primes requests loaded the app, /fast took up to 600 ms" in message
    assert "Only 1 process of the cluster computed meanwhile" in message and "hold the GIL the loop needs" in message


def test_the_check_asks_the_cluster_worker_itself_whether_it_runs_with_a_gil():
    import json
    import urllib.request

    from labkit.grading.ex07 import GIL_PATH, _start

    with _start(service(), {"workers": 1, "options": {"pool_workers": 1}}) as cluster:
        with urllib.request.urlopen(cluster.url + GIL_PATH, timeout=30) as answer:
            assert json.loads(answer.read()) == {"gil": gil_enabled()}


def test_the_gil_message_says_which_build_and_what_was_measured():
    from labkit.grading.ex07 import _gil_message

    message = teaches_without_the_answer(_gil_message(measured(busy=1, cores=0.98, gil=True), 2))
    assert "1 process of the cluster computed, for 2 usable cores (the cluster used 0.98 cores)" in message
    assert "runs with a GIL" in message


# ------------------------------------------------------------------------------ hidden checks


def test_a_wrong_answer_fails_the_hidden_check_with_the_case():
    with pytest.raises(Fail, match=r"/primes\?n=0 answered primes=1, expected 0"):
        run(check_answers(service(wrong_answer=True)))


def test_an_answer_kept_where_other_requests_overwrite_it_fails_the_hidden_mix():
    # Right one request at a time, as every visible check asks for answers; wrong when they overlap.
    with pytest.raises(Fail, match="while .* other requests were in flight"):
        run(check_answers(service(shared_result=True)))


def test_the_solution_shape_passes_the_hidden_answers():
    run(check_answers(service()))


needs_a_smaller_machine = pytest.mark.skipif(
    USABLE < 2 or not hasattr(os, "sched_setaffinity"), reason="needs two usable cores and CPU affinity")


@needs_a_smaller_machine
def test_a_layout_fitted_to_this_machine_fails_on_a_smaller_one():
    fitted = layout_of(USABLE, 1)  # this machine's numbers, written in: passes the visible check here
    with pytest.raises(Fail, match=r"on a machine with \d+ usable cores? \(a process pinned to fewer CPUs") as failed:
        run(check_any_machine(fitted))
    message = teaches_without_the_answer(str(failed.value))
    assert "oversubscribed" in message and "from the cores it may use" in message


@pytest.mark.parametrize("layout", [
    lambda: {"workers": labkit.usable_cores().usable, "balance": "round-robin", "options": {"pool_workers": 1}},
    lambda: {"workers": "max", "balance": "round-robin", "options": {"pool_workers": 1}},
    lambda: {"workers": 1, "options": {"pool_workers": labkit.usable_cores().usable}},
], ids=["K = usable", "K = 'max'", "M = usable"])
def test_a_layout_computed_from_the_usable_cores_passes_on_a_smaller_machine(layout):
    run(check_any_machine(layout))


@needs_a_smaller_machine
def test_a_layout_that_reads_the_notebooks_info_and_prints_passes_on_a_smaller_machine():
    # As a notebook's cell would define it: `info` read at the top, then used (by value) in layout().
    cells = {"__name__": "__main__", "labkit": labkit}
    exec("info = labkit.usable_cores()\n"
         "def layout():\n"
         "    print('choosing for', info.usable, 'cores')\n"
         "    return {'workers': info.usable, 'balance': 'round-robin', 'options': {'pool_workers': 1}}\n", cells)
    run(check_any_machine(cells["layout"]))


# ------------------------------------------------------------------------------ the exercise


def test_a_handler_still_a_stub_is_not_done_yet_with_its_whole_hint():
    with pytest.raises(NotImplementedError) as stub:
        run(check_answers(service("stub")))
    assert str(stub.value) == "count_primes(n) runs in self.application.primes_pool (lab 01)"


def test_a_factory_that_is_not_an_app_is_told_what_to_return():
    with pytest.raises(Fail, match="returned dict; return a tornado.web.Application"):
        run(check_responsive(lambda pool_workers=1: {}))


def test_the_exercises_hints_guide_without_giving_the_code():
    stubs = "".join(cell.source for cell in nbformat.read(EXERCISE_07, as_version=4).cells if cell.cell_type == "code")
    hints = re.findall(r'raise NotImplementedError\((".*")\)', stubs)
    assert len(hints) == 4, hints
    for hint in hints:
        teaches_without_the_answer(hint)


def test_the_untouched_exercise_fails_every_part_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_07)]) == 1
    out = capsys.readouterr().out
    assert "0/8 points" in out
    assert out.count("not done yet") == 2
    assert "which kind of worker lets each endpoint's work compute beside the loop" in " ".join(out.split())
