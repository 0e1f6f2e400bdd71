"""What lab 08 relies on from Dask, pinned down on a real DaskCluster, so an upgrade that changes it fails here.

The lab compares only facts like these (counts, identities, answers), never timings.
"""

from __future__ import annotations

import os
import time

import psutil
import pytest

from labkit.workloads import count_primes

pytest.importorskip("distributed")

from dask_fixtures import client, cluster  # noqa: E402, F401  (module-scoped fixtures)


def test_identical_submissions_are_one_task_unless_marked_impure(client):
    pure = [client.submit(count_primes, 1_000) for _ in range(4)]
    impure = [client.submit(count_primes, 1_000, pure=False) for _ in range(4)]
    assert len({f.key for f in pure}) == 1
    assert len({f.key for f in impure}) == 4
    assert client.gather(impure) == [168] * 4


def test_a_worker_killed_mid_batch_loses_no_answer_and_its_nanny_replaces_it():
    from distributed import Client

    from labkit.dask_cluster import DaskCluster

    # Local functions: the workers cannot import this test module, so Dask sends these by value.
    def count_where(limit: int) -> tuple[int, int]:
        return count_primes(limit), os.getpid()

    def suspicious_tasks(dask_scheduler) -> int:
        return sum(ts.suspicious > 0 for ts in dask_scheduler.tasks.values())

    # A cluster of its own: the replacement worker must be gone when the test ends.
    with DaskCluster(2) as cluster, Client(cluster.address, set_as_default=False) as client:
        executor = client.get_executor(pure=False)
        doomed = cluster.workers()[0]
        futures = [executor.submit(count_where, 40_000) for _ in range(16)]
        deadline = time.monotonic() + 60
        while sum(f.done() for f in futures) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        killed = cluster.kill_worker(0)
        results = [f.result(timeout=120) for f in futures]
        assert [count for count, _ in results] == [count_primes(40_000)] * 16
        assert client.run_on_scheduler(suspicious_tasks) >= 1  # a running task was lost, and run again
        replacement = cluster.wait_for_workers()[0]
        assert replacement.pid != killed and replacement.nanny_pid == doomed.nanny_pid
        assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE


def test_the_transfer_counters_miss_data_sent_inside_tasks(client):
    import numpy as np

    def sent_mb() -> float:
        return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values()) / 1e6

    array = np.ones(2_000_000)  # 16 MB
    before = sent_mb()
    with pytest.warns(UserWarning, match="large graph"):  # Dask itself says it is wasteful
        answers = client.gather([client.submit(np.sum, array, pure=False) for _ in range(3)])
    assert answers == [2_000_000.0] * 3
    assert sent_mb() - before < 1.0  # 48 MB travelled in the tasks; the counters saw none of it
