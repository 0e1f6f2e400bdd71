"""DaskCluster: Dask's scheduler and workers as separate processes started with `dask ...`, tied to us.

Real processes and sockets throughout; one cluster is shared by the tests that only look at it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import wait_until

from labkit.dask_cluster import ClusterClosedError, DaskCluster, remove_stale_folders
from labkit.errors import ConfigurationError

pytest.importorskip("distributed")

from dask_fixtures import client, cluster  # noqa: E402, F401  (module-scoped fixtures)


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections() if c.status == psutil.CONN_LISTEN}


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"workers": True}, {"workers": "2"}, {"workers": 1.5},
                                    {"threads_per_worker": 0}, {"start_timeout": -1}])
def test_bad_arguments_are_refused_before_anything_starts(kwargs):
    before = psutil.Process().children(recursive=True)
    with pytest.raises(ConfigurationError, match="must be"):
        DaskCluster(**kwargs)
    assert psutil.Process().children(recursive=True) == before


def test_the_commands_are_dasks_own_scheduler_and_worker_commands(cluster):
    scheduler, *workers = cluster.commands
    assert scheduler.startswith("dask scheduler --host 127.0.0.1 --port 0")
    assert len(workers) == 2
    for line in workers:
        assert line.startswith(f"dask worker {cluster.address} --nthreads 1 ")
    assert cluster.address.startswith("tcp://127.0.0.1:")
    assert cluster.dashboard_link.startswith("http://127.0.0.1:") and cluster.dashboard_link.endswith("/status")


def test_scheduler_nannies_and_workers_are_separate_processes_listening_on_localhost_only(cluster):
    me = os.getpid()
    workers = cluster.workers()
    assert [w.index for w in workers] == [0, 1]
    assert psutil.Process(cluster.scheduler_pid).ppid() == me
    for worker in workers:
        assert psutil.Process(worker.nanny_pid).ppid() == me
        assert psutil.Process(worker.pid).ppid() == worker.nanny_pid  # the nanny started the worker
    pids = [cluster.scheduler_pid, *cluster.nanny_pids, *cluster.pids]
    assert len(set(pids)) == 5
    for pid in pids:
        ports = _listening_ports(pid)
        assert ports, f"process {pid} listens on nothing"
        assert {ip for ip, _ in ports} == {"127.0.0.1"}
    scheduler_port = int(cluster.address.rsplit(":", 1)[1])
    dashboard_port = int(cluster.dashboard_link.split(":")[2].split("/")[0])
    assert {scheduler_port, dashboard_port} <= {port for _, port in _listening_ports(cluster.scheduler_pid)}


def test_tasks_run_in_the_worker_processes(cluster, client):
    ran_in = set(client.gather(client.map(lambda _: os.getpid(), range(20), pure=False)))
    assert ran_in <= set(cluster.pids)
    assert os.getpid() not in ran_in


@pytest.mark.parametrize("index", [-1, 7, True, "0", 0.0])
def test_kill_worker_refuses_an_index_that_names_no_worker(cluster, index):
    pids = cluster.pids
    with pytest.raises(ConfigurationError, match="worker"):
        cluster.kill_worker(index)
    assert cluster.pids == pids


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_worker_is_replaced_by_its_nanny_and_a_new_worker_joins():
    with DaskCluster(2) as cluster:
        old = cluster.workers()
        killed = cluster.kill_worker(0)
        assert killed == old[0].pid
        # dead once it is gone or a zombie its nanny has yet to reap (a busy machine delays that)
        assert wait_until(lambda: _gone(killed), timeout=30)
        new = cluster.wait_for_workers()
        assert [w.index for w in new] == [0, 1]
        assert new[0].pid != killed and new[0].nanny_pid == old[0].nanny_pid  # same nanny, new worker
        assert new[1] == old[1]
        assert cluster.add_worker() == 2
        assert [w.index for w in cluster.workers()] == [0, 1, 2]
        assert len(cluster.commands) == 4


def test_close_stops_every_process_and_later_use_says_the_cluster_is_closed():
    cluster = DaskCluster(1)
    pids = [cluster.scheduler_pid, *cluster.nanny_pids, *cluster.pids]
    folder = Path(cluster._folder)
    cluster.close()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    assert not folder.exists()
    cluster.close()  # idempotent
    assert "closed" in repr(cluster)
    with pytest.raises(ClusterClosedError, match="start a new one"):
        cluster.workers()
    with pytest.raises(ClusterClosedError):
        cluster.add_worker()


KILLED_PARENT = textwrap.dedent("""
    import json, sys, time
    from labkit.dask_cluster import DaskCluster
    cluster = DaskCluster(2)
    workers = cluster.workers()
    print(json.dumps([cluster.scheduler_pid, *cluster.nanny_pids, *(w.pid for w in workers)]), flush=True)
    print(cluster._folder, flush=True)
    time.sleep(120)
""")


def test_sigkilling_the_process_that_started_the_cluster_leaves_no_server_behind():
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(parent.stdout.readline())
        folder = Path(parent.stdout.readline().strip())
        assert len(pids) == 5 and all(psutil.pid_exists(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()

    def all_gone() -> bool:
        return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)

    try:
        assert wait_until(all_gone, timeout=20), "servers outlived the process that started them"
        assert folder.is_dir()  # nobody closed the cluster: its logs are still there
        assert folder in remove_stale_folders()  # what the next DaskCluster() does first
        assert not folder.exists()
    finally:
        for pid in pids:  # do not leave them running on this machine when the test fails
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
