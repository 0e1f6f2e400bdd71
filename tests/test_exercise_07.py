"""Exercise 07, the capstone: its checks pass the right service and name what is wrong with others.

The right answer passes under nbval (solutions/07). Here: the layout facts, judged before anything
runs; then real clusters of wrong apps under real load, which must fail for the right reason; and
the untouched exercise. The apps are built inside functions, so they travel to the workers by
value, as a notebook's do.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers import EXERCISES

import labkit
from labkit.cli import main
from labkit.grading.checks import Fail
from labkit.grading.ex07 import check_answers, check_every_core, check_responsive

EXERCISE_07 = EXERCISES / "07_cluster_plus_workers.ipynb"


def service(primes: str = "process", hashes: str = "thread", wrong_answer: bool = False, shared_result: bool = False):
    """A capstone app factory. ``primes`` and ``hashes`` say where each endpoint's work runs: in a
    "process" pool, a "thread" pool, the "same" pool as /primes', on the "loop", or still the
    exercise's "stub"."""
    import tornado.web

    from labkit.workloads import count_primes, hash_password

    last = {}  # shared_result: every request's answer lands here, where the others read it

    async def run(pool, where, fn, *args):
        if where == "stub":
            raise NotImplementedError("count_primes(n) runs in self.application.primes_pool (lab 01)")
        if where == "loop":
            return fn(*args)  # the mistake: the loop computes
        if not shared_result:
            return await asyncio.wrap_future(pool.submit(fn, *args))
        future = pool.submit(fn, *args)
        last["answer"] = await asyncio.wrap_future(future)
        await asyncio.sleep(0.05)  # meanwhile another request may overwrite it
        return last["answer"]

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
            digest = await run(self.application.hash_pool, hashes, hash_password, b"capstone", b"labkit-course-salt", cost)
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
                self.hash_pool = labkit.WorkerPool({"thread": "thread"}.get(hashes, "process"), workers=self.pool_workers)

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
    (layout_of(USABLE, 2), "oversubscribed: .* = {} heavy workers for {} usable cores".format(2 * USABLE, USABLE)),
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
    with pytest.raises(Fail, match="cores idle: 1 cluster worker x 1 pool worker = 1 heavy worker"):
        run(check_every_core(service(), layout_of(1, 1)))


def test_computing_on_the_loop_is_a_blocked_loop():
    with pytest.raises(Fail, match="the loop is blocked: while heavy requests ran, /fast took up to"):
        run(check_responsive(service("loop")))


@pytest.mark.skipif(USABLE < 2, reason="with one usable core, one process computing is the whole machine")
def test_pure_python_in_a_thread_pool_is_caught_by_the_gil():
    with pytest.raises(Fail, match="Only one process computed|only 1 process of the cluster computed"):
        run(check_responsive(service("thread")))


def test_a_wrong_answer_fails_the_hidden_check_with_the_case():
    with pytest.raises(Fail, match=r"/primes\?n=0 answered primes=1, expected 0"):
        run(check_answers(service(wrong_answer=True)))


def test_a_handler_still_a_stub_is_not_done_yet_with_its_whole_hint():
    with pytest.raises(NotImplementedError) as stub:
        run(check_answers(service("stub")))
    assert str(stub.value) == "await asyncio.wrap_future(pool.submit(fn, *args)) (the pool's answer)"


def test_a_factory_that_is_not_an_app_is_told_what_to_return():
    with pytest.raises(Fail, match="returned dict; return a tornado.web.Application"):
        run(check_responsive(lambda pool_workers=1: {}))


def test_the_untouched_exercise_fails_every_part_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_07)]) == 1
    out = capsys.readouterr().out
    assert "0/8 points" in out
    assert out.count("not done yet") == 2
    assert "labkit.WorkerPool of self.pool_workers processes" in out
