"""sweep(executor=...): any concurrent.futures executor, or a factory of them, in place of a WorkerPool.

Lab 08 runs lab 04's batch through Dask's ``client.get_executor(pure=False)``; these tests pin down
what sweep does with an executor it did not build.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import pytest

from labkit.errors import ConfigurationError
from labkit.measure import sweep
from labkit.workloads import io_wait


class MemoizingExecutor(Executor):
    """Runs each distinct call once and hands the same future back for a repeat (as a pure Dask executor does)."""

    def __init__(self) -> None:
        self.calls = 0
        self._futures: dict = {}
        self._inner = ThreadPoolExecutor(1)

    def submit(self, fn, /, *args, **kwargs):
        key = (fn, args)
        if key not in self._futures:
            self.calls += 1
            self._futures[key] = self._inner.submit(fn, *args, **kwargs)
        return self._futures[key]

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._inner.shutdown(wait=wait, cancel_futures=cancel_futures)


def test_an_executor_is_measured_at_its_own_size_and_left_open_for_its_owner():
    with ThreadPoolExecutor(3) as pool:
        result = sweep(io_wait, (0.02,), tasks=6, executor=pool, repeats=1)
        assert [p.workers for p in result.points] == [3]
        assert result.kind == "ThreadPoolExecutor"
        assert pool.submit(lambda: 42).result() == 42  # still usable: sweep did not shut it down
    point = result.points[0]
    assert point.task_p50_ms >= 15  # each call waited 20 ms, timed around the call itself
    assert point.throughput == pytest.approx(6 / point.seconds)


def test_a_factory_builds_one_executor_per_worker_count_and_each_is_shut_down():
    made: list[ThreadPoolExecutor] = []

    def factory(n: int) -> ThreadPoolExecutor:
        made.append(ThreadPoolExecutor(n))
        return made[-1]

    result = sweep(io_wait, (0.05,), tasks=4, workers=[1, 4], executor=factory, repeats=1)
    assert [p.workers for p in result.points] == [1, 4]
    assert [pool._max_workers for pool in made] == [1, 4]
    assert all(pool._shutdown for pool in made)
    # four 50 ms waits: one at a time on one thread, together on four
    assert result.point(1).seconds > 2 * result.point(4).seconds


def test_a_factory_may_return_a_context_manager_that_yields_the_executor():
    log = []

    @contextlib.contextmanager
    def cluster_of(n: int):
        log.append(f"start {n}")
        with ThreadPoolExecutor(n) as pool:
            yield pool
        log.append(f"stop {n}")

    sweep(io_wait, (0.01,), tasks=2, workers=[1, 2], executor=cluster_of, repeats=1)
    assert log == ["start 1", "stop 1", "start 2", "stop 2"]


def test_an_executor_that_collapses_identical_calls_is_refused_with_the_dask_fix():
    executor = MemoizingExecutor()
    try:
        with pytest.raises(ConfigurationError, match=r"pure=False"):
            sweep(io_wait, (0.01,), tasks=5, workers=[1], executor=executor, repeats=1)
        assert executor.calls < 5  # the wrong thing did happen: fewer tasks than calls
    finally:
        executor.shutdown()


@pytest.mark.parametrize(("executor", "workers", "message"), [
    ("threads", None, "must be a concurrent.futures.Executor"),
    (lambda n: "not an executor", [1], "must return a concurrent.futures.Executor"),
    (lambda n: contextlib.nullcontext("x"), [1], "yielded 'x'"),
])
def test_sweep_names_what_it_needs_when_the_executor_is_wrong(executor, workers, message):
    with pytest.raises(ConfigurationError, match=message):
        sweep(io_wait, (0.01,), tasks=1, workers=workers, executor=executor, repeats=1)


def test_an_executor_of_unknown_size_asks_for_it_and_takes_one_count_only():
    class Opaque(Executor):
        def submit(self, fn, /, *args, **kwargs):
            future: Future = Future()
            future.set_result(fn(*args, **kwargs))
            return future

    with pytest.raises(ConfigurationError, match=r"workers=\[n\]"):
        sweep(io_wait, (0.0,), tasks=1, executor=Opaque(), repeats=1)
    with pytest.raises(ConfigurationError, match="one count"):
        sweep(io_wait, (0.0,), tasks=1, workers=[1, 2], executor=Opaque(), repeats=1)
    assert sweep(io_wait, (0.0,), tasks=2, workers=[5], executor=Opaque(), repeats=1).points[0].workers == 5


def test_a_dask_executor_must_be_impure_and_then_runs_every_task_on_the_cluster():
    pytest.importorskip("distributed")
    from distributed import Client

    from labkit.dask_cluster import DaskCluster

    with DaskCluster(1) as cluster, Client(cluster.address, set_as_default=False) as client:
        with pytest.raises(ConfigurationError, match=r"get_executor\(pure=False\)"):
            sweep(io_wait, (0.01,), tasks=4, executor=client.get_executor(), repeats=1)
        result = sweep(io_wait, (0.01,), tasks=4, executor=client.get_executor(pure=False), repeats=1)
        assert [p.workers for p in result.points] == [1]  # one worker with one thread
        assert result.kind == "ClientExecutor"
        assert result.points[0].task_p50_ms >= 5
