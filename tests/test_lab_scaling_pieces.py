"""The pieces labs 06 and 07 stand on: sweeps that never leave a worker behind, sweeps that honour
the caller's CPU affinity, and the combined cluster-plus-pool demo app."""

from __future__ import annotations

import signal
import threading
import time

import psutil
import pytest
from helpers import is_interpreter_helper, wait_until
from tornado.httpclient import HTTPClient

from labkit.demo.combined import combined_app
from labkit._sweep import _pool_processes, _share_affinity, sweep
from labkit.cluster import Cluster
from labkit.pool import WorkerPool
from labkit.workloads import spin


def live_children() -> list[psutil.Process]:
    """This process's children, minus multiprocessing's own helpers (resource tracker, fork server)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE or is_interpreter_helper(child):
                continue
        except psutil.Error:
            continue
        found.append(child)
    return found


def wait_for_no_children(timeout: float = 5.0) -> list[psutil.Process]:
    """Wait up to ``timeout`` for this process's children to end; those still alive."""
    wait_until(lambda: not live_children(), timeout, interval=0.05)
    return live_children()


def fail_on_third_call(counter=[0]):  # noqa: B006 - runs in a worker: each worker counts its own calls
    counter[0] += 1
    if counter[0] == 3:
        raise RuntimeError("task failed on purpose")
    return spin(0.05)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_a_sweep_interrupted_mid_way_leaves_no_worker_behind():
    # A real SIGINT to the main thread, as Ctrl-C or the notebook's stop button sends, with Python's
    # own handler in place whatever an earlier test left: a simulated interrupt (interrupt_main)
    # is silently dropped when the handler is SIG_IGN, and cannot wake a blocking call.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep(spin, (0.2,), tasks=40, workers=[2, 4], repeats=3)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert wait_for_no_children() == []


def test_a_sweep_whose_task_fails_reraises_and_leaves_no_worker_behind():
    with pytest.raises(RuntimeError, match="on purpose"):
        sweep(fail_on_third_call, tasks=8, workers=[1, 2], repeats=2)
    assert wait_for_no_children() == []


def worker_affinity(_: int) -> list[int]:
    return sorted(psutil.Process().cpu_affinity())


@pytest.mark.skipif(not hasattr(psutil.Process(), "cpu_affinity"), reason="no CPU affinity on this platform")
def test_sweep_gives_its_workers_the_callers_affinity_even_under_forkserver():
    me = psutil.Process()
    before = me.cpu_affinity()
    if len(before) < 2:
        pytest.skip("one CPU: pinning shows nothing")
    with WorkerPool("process", workers=2) as warm:  # the fork server starts before the pin
        list(warm.map(worker_affinity, range(2)))
    me.cpu_affinity(before[:1])
    try:
        with WorkerPool("process", workers=2) as pool:
            list(pool.map(time.sleep, [0.01, 0.01]))
            _share_affinity(_pool_processes(pool))
            seen = list(pool.map(worker_affinity, range(2)))
    finally:
        me.cpu_affinity(before)
    assert seen == [before[:1], before[:1]]


def test_the_combined_app_rejects_a_pool_of_no_workers():
    with pytest.raises(ValueError, match="pool_workers"):
        combined_app(pool_workers=0)


def test_the_combined_app_serves_fast_on_the_loop_and_primes_on_its_pool():
    with Cluster("labkit.demo.combined:combined_app", workers=1, options={"pool_workers": 2}) as cluster:
        client = HTTPClient()
        try:
            assert client.fetch(cluster.url + "/fast").body == b"ok\n"
            assert b'"primes": 1229' in client.fetch(cluster.url + "/primes?n=10000").body
            pids = client.fetch(cluster.url + "/pid").body.decode()
            memory = client.fetch(cluster.url + "/memory").body.decode()
        finally:
            client.close()
        loop_pid = next(iter(cluster.pids.values()))
    import json

    assert json.loads(pids)["pid"] == loop_pid
    assert len(json.loads(pids)["pool_pids"]) == 2
    assert len(json.loads(memory)["pool_processes"]) == 2
    assert wait_for_no_children() == []
