"""Cluster under faults: a hung-worker check that can be off, a cluster that gives up, a hung worker skipped.

Real processes and sockets throughout; claims are phrased so that a slow machine cannot flip them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import psutil
import pytest
from helpers import wait_until

from labkit.cluster import Cluster, WorkerState

DEMO = "labkit.demo:demo_app"


@pytest.fixture(scope="module", autouse=True)
def resource_tracker_started_up_front():
    """Start multiprocessing's resource tracker before any leak snapshot (see test_cluster.py)."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def answering_pid(url: str, timeout: float = 30) -> int:
    with urllib.request.urlopen(url + "/pid", timeout=timeout) as response:
        return int(response.headers["X-Worker-Pid"])


def test_heartbeat_timeout_zero_switches_the_hung_worker_check_off():
    with Cluster(DEMO, workers=1, start_method="fork", heartbeat_timeout=0) as cluster:
        pid = cluster.pids[1]
        os.kill(pid, signal.SIGSTOP)  # silent for far longer than a heartbeat interval
        try:
            time.sleep(3.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert answering_pid(cluster.url) == pid
        assert not any(e.kind == "hung" for e in cluster.events)
        assert cluster.stats().workers[0].state is WorkerState.READY


def test_a_cluster_imports_its_app_from_app_dir_under_spawn(tmp_path):
    (tmp_path / "app_in_its_folder.py").write_text(
        "from labkit.demo import demo_app\n\ndef app():\n    return demo_app()\n")
    with Cluster("app_in_its_folder:app", workers=1, start_method="spawn", app_dir=str(tmp_path)) as cluster:
        assert answering_pid(cluster.url) == cluster.pids[1]
    assert "app_in_its_folder" not in __import__("sys").modules  # the workers imported it, not us


@pytest.mark.parametrize("balance", ["os", "round-robin"])
def test_connections_that_stay_silent_or_stop_mid_header_are_closed_after_idle_timeout(balance):
    with Cluster(DEMO, workers=1, start_method="fork", balance=balance, idle_timeout=0.5) as cluster:
        port = cluster.port
        silent = socket.create_connection(("127.0.0.1", port), timeout=30)
        partial = socket.create_connection(("127.0.0.1", port), timeout=30)
        with silent, partial:
            partial.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            # Both are closed by the server long before the 30 s the client would wait (tornado's
            # default would keep them an hour): recv sees end of file, not a timeout.
            assert silent.recv(1024) == b""
            assert partial.recv(1024) == b""
        assert answering_pid(cluster.url) == cluster.pids[1]  # the worker itself is fine


# --------------------------------------------------------------- a cluster that gives up


def crash_until_given_up(url: str, gave_up, limit: int = 60) -> int:
    """Send /crash requests, one at a time, until ``gave_up()``; at most ``limit``. Returns how many."""
    sent = 0
    while sent < limit and not gave_up():
        sent += 1
        try:
            urllib.request.urlopen(url + "/crash?code=1", timeout=10).close()
        except OSError:
            pass  # the worker died with our request: that is the point
    return sent


def test_a_cluster_whose_every_worker_gave_up_closes_its_port_reports_it_and_reload_starts_over():
    from labkit.widgets import _worker_table

    with Cluster(DEMO, workers=1, start_method="fork", min_uptime=30, max_restarts=2,
                 restart_delay=0.05, max_restart_delay=0.1) as cluster:
        url, port = cluster.url, cluster.port
        crash_until_given_up(url, lambda: cluster.stats().gave_up)
        stats = cluster.stats()
        assert stats.gave_up and "crashed and is not restarted" in stats.gave_up
        assert "min_uptime=30" in stats.gave_up and "reload()" in stats.gave_up
        assert any(e.kind == "gave-up" for e in cluster.events)
        assert "gave up" in stats.table() and "gave up" in _worker_table(stats) and "gave up" in repr(cluster)
        with pytest.raises(ConnectionRefusedError):  # refused at once, not left hanging
            socket.create_connection(("127.0.0.1", port), timeout=30).close()
        cluster.reload()
        assert cluster.stats().gave_up is None and cluster.port == port
        assert answering_pid(url) == cluster.pids[1]


def test_crashes_after_min_uptime_never_make_a_cluster_give_up():
    with Cluster(DEMO, workers=1, start_method="fork", min_uptime=0.2, max_restarts=1,
                 restart_delay=0.05, max_restart_delay=0.1) as cluster:
        for _ in range(4):
            cluster.wait_ready(30)
            time.sleep(0.5)  # older than min_uptime: this crash is bad luck, not a broken app
            crash_until_given_up(cluster.url, lambda: False, limit=1)
        assert cluster.wait_ready(30).ready == 1
        assert cluster.stats().gave_up is None


# ------------------------------------------------------------ a hung worker under round-robin


def pids_of(url: str, count: int, timeout: float = 10) -> list[int]:
    """``count`` requests for /pid, each on a fresh connection; raises if one fails."""
    return [answering_pid(url, timeout) for _ in range(count)]


def events_of(cluster: Cluster, kind: str, pid: int) -> list:
    return [e for e in cluster.events if e.kind == kind and e.pid == pid]


@pytest.fixture
def round_robin_pair():
    with Cluster(DEMO, workers=2, balance="round-robin", start_method="fork") as cluster:
        yield cluster


def test_round_robin_passes_over_a_stopped_worker_and_takes_it_back_when_it_beats_again(round_robin_pair):
    cluster = round_robin_pair
    hung, healthy = cluster.pids[1], cluster.pids[2]
    os.kill(hung, signal.SIGSTOP)
    try:
        assert wait_until(lambda: events_of(cluster, "stalled", hung), 30)
        # Every probe now reaches the healthy worker; before, every second one waited on the hung one.
        assert set(pids_of(cluster.url, 10)) == {healthy}
    finally:
        os.kill(hung, signal.SIGCONT)
    assert wait_until(lambda: events_of(cluster, "recovered", hung), 30)
    assert hung in set(pids_of(cluster.url, 10))
    assert cluster.pids == {1: hung, 2: healthy}  # passed over, never killed


def test_a_worker_busy_with_a_heavy_request_keeps_its_turn(round_robin_pair):
    cluster = round_robin_pair
    # Seconds of pure-Python work on one worker's loop: its beats stop, but its CPU time runs.
    with urllib.request.urlopen(cluster.url + "/primes?n=1000000&mode=sync", timeout=120) as response:
        busy = int(response.headers["X-Worker-Pid"])
    assert busy in cluster.pids.values()
    judged = [e for e in cluster.events if e.pid == busy and e.kind in ("stalled", "hung")]
    assert not judged, judged


def test_when_every_worker_is_stalled_a_connection_still_waits_its_turn_instead_of_being_refused(round_robin_pair):
    cluster = round_robin_pair
    pids = list(cluster.pids.values())
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: all(events_of(cluster, "stalled", pid) for pid in pids), 30)
        client = socket.create_connection(("127.0.0.1", cluster.port), timeout=30)
        client.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    with client:  # handed to a stopped worker, it is answered once that worker runs again
        assert client.recv(1024).startswith(b"HTTP/1.1 200")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_under_wrk_load_no_connection_waits_on_a_worker_once_it_is_passed_over(round_robin_pair):
    cluster = round_robin_pair
    hung = cluster.pids[1]
    os.kill(hung, signal.SIGSTOP)
    try:
        assert wait_until(lambda: events_of(cluster, "stalled", hung), 30)
        # Bounded: 8 connections for 2 s to 127.0.0.1; a request unanswered for 1 s counts as a timeout.
        out = subprocess.run(["wrk", "-t1", "-c8", "-d2s", "--timeout", "1s", cluster.url + "/fast"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    finally:
        os.kill(hung, signal.SIGCONT)
    served = int(re.search(r"(\d+) requests in", out).group(1))
    assert served > 0, out
    assert "Socket errors" not in out and "Non-2xx" not in out, out  # no timeout, no reset, no error


def test_round_robin_keeps_connections_queued_while_its_only_worker_restarts():
    with Cluster(DEMO, workers=1, balance="round-robin", start_method="fork", restart_delay=0.5,
                 max_restart_delay=0.5) as cluster:
        victim = cluster.pids[1]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: any(e.kind == "exited" and e.pid == victim for e in cluster.events), 30)
        # Nobody to hand it to for half a second: the connection waits in the queue, is not closed.
        pid = answering_pid(cluster.url)
        assert pid != victim and pid == cluster.pids[1]
