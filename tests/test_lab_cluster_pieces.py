"""The pieces of labs 02 and 03: the cluster monitor, their plots, the faulty demo apps, the checks.

Real clusters, processes and crashes throughout. The checks are run as a student's kernel would
run them, minus the kernel: ``labkit.check`` prints its verdict and raises ``CheckFailed``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from helpers import wait_until_async

from labkit.demo.faulty import CORRUPT_DOC, BrokenDeployError, crashing_app, is_corrupt, render_document
from labkit.cluster import Cluster, WorkerState
from labkit.grading.checks import CheckFailed, check
from labkit.grading.ex02 import judge_speedup
from labkit.load import ERROR_KINDS, LoadReport
from labkit.plots import machine_label, plot_answers_timeline, plot_throughput, plot_worker_split
from labkit.pool import WorkerCrashedError, WorkerPool
from labkit.widgets import ClusterMonitor

DEMO = "labkit.demo:demo_app"

@pytest.fixture(scope="module", autouse=True)
def resource_tracker_started_up_front():
    """Start multiprocessing's resource tracker before any leak snapshot (see test_cluster.py)."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def report(per_pid: dict[int, int], seconds: float = 1.0) -> LoadReport:
    ok = sum(per_pid.values())
    return LoadReport(url="http://127.0.0.1:1/x", concurrency=4, requests=ok, ok=ok, duration=seconds,
                      p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, max_ms=4.0,
                      errors=dict.fromkeys(ERROR_KINDS, 0), per_pid=per_pid)


def run_check(part: str, *args) -> str:
    """Run a self-check outside a kernel: the verdict line it printed, passed or not."""
    async def main():
        try:
            await check(part, *args)
        except CheckFailed as failed:
            return failed.result.line()
        return "passed"

    return asyncio.run(main())


# ---------------------------------------------------------------------------- ClusterMonitor


def test_the_monitor_shows_every_worker_of_a_real_cluster_its_restarts_and_stops_with_it():
    async def main():
        with Cluster(DEMO, workers=2, start_method="fork") as cluster:
            monitor = ClusterMonitor(cluster, refresh=0.05).start()
            first = set(cluster.pids.values())
            await asyncio.to_thread(lambda: [urllib.request.urlopen(cluster.url + "/fast").read() for _ in range(4)])
            victim = cluster.pids[1]
            os.kill(victim, signal.SIGKILL)
            replaced = await wait_until_async(lambda: any(w.id == 1 and w.pid != victim and w.state is WorkerState.READY
                                                          for w in cluster.stats().workers), 20)
            await asyncio.sleep(0.2)
            seen = (set(monitor.pids), monitor._table.value, monitor._log.value, monitor.running, repr(monitor))
            bundle = monitor._repr_mimebundle_()
            newcomer = cluster.pids[1]
        await asyncio.sleep(0.3)  # one more refresh: the monitor sees the cluster has stopped
        return first, replaced, newcomer, seen, bundle, monitor.running, monitor.last

    first, replaced, newcomer, seen, bundle, still_running, last = asyncio.run(main())
    pids, table, log, running, text = seen
    assert replaced
    assert first | {newcomer} <= pids  # the killed worker, its replacement and the survivor
    assert str(newcomer) in table and "ready" in table and "restarts" in table
    assert "killed by SIGKILL" in log
    assert running and "running" in text
    assert bundle["text/plain"] == "ClusterMonitor: a live view (open the notebook in JupyterLab to see it)"
    assert not still_running, "the monitor should stop by itself once its cluster has stopped"
    assert last is not None and last.url is None


def test_the_monitor_needs_a_sane_event_count():
    with pytest.raises(ValueError):
        ClusterMonitor(Cluster(DEMO, workers=1), events=-1)


# ---------------------------------------------------------------------------------- plots


def test_the_worker_split_draws_one_panel_per_run_with_shares_and_throughput():
    fig = plot_worker_split({"os": {11: 90, 12: 10}, "round-robin": report({21: 50, 22: 50}, seconds=2.0)},
                            labels={11: "worker 1"})
    assert len(fig.axes) == 2
    assert fig.axes[0].get_ylabel() == "share of answers (%)"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["worker 1", "pid 12"]
    assert "50 answers/s" in fig.axes[1].get_title()
    assert machine_label() in [t.get_text() for t in fig.texts]
    fig._repr_png_()  # it draws


def test_the_worker_split_shows_a_worker_that_answered_nothing_as_an_empty_bar():
    fig = plot_worker_split({"os": {11: 100}}, workers=2)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["pid 11", "idle worker"]
    assert [round(bar.get_height()) for bar in fig.axes[0].patches] == [100, 0]


def test_the_throughput_plot_labels_each_bar_with_its_ratio_to_the_first():
    fig = plot_throughput({"/primes": {"1 worker": 50.0, "2 workers": report({1: 100})}}, note="delivered 2.00 cores")
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert any("x2.00" in label for label in labels)
    assert fig.axes[0].get_ylabel() == "answers per second"
    assert any("delivered 2.00 cores" in t.get_text() for t in fig.texts)
    fig._repr_png_()


def test_the_answers_timeline_puts_each_pid_on_a_row_and_counts_the_unanswered():
    samples = [(0.0, 7), (0.1, 8), (0.2, None), (0.3, 8), (0.4, 9)]
    fig = plot_answers_timeline(samples, labels={7: "killed"}, marks={"kill": 0.15})
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows == ["killed", "pid 8", "pid 9", "no answer (1)"]
    assert any(t.get_text() == "kill" for t in fig.axes[0].texts)
    fig._repr_png_()


# ------------------------------------------------------------------------------ faulty demos


def test_a_corrupt_document_segfaults_its_process_and_only_it():
    code = "from labkit.demo.faulty import render_document; render_document(13); print('survived')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGSEGV and "survived" not in result.stdout
    assert render_document(12) == render_document(12) != render_document(14)
    assert [doc for doc in range(40) if is_corrupt(doc)] == [CORRUPT_DOC, 26, 39]


def test_a_process_pool_turns_the_crash_into_one_failed_task():
    with WorkerPool("process", workers=2) as pool:
        results = list(pool.map(render_document, [1, CORRUPT_DOC, 2], return_exceptions=True))
    assert results[0] == render_document(1) and results[2] == render_document(2)
    assert isinstance(results[1], WorkerCrashedError) and "SIGSEGV" in str(results[1])


def test_the_crashing_app_boots_until_its_marker_exists(tmp_path):
    marker = tmp_path / "BROKEN"
    assert crashing_app(str(marker)) is not None
    marker.touch()
    with pytest.raises(BrokenDeployError, match="BROKEN exists"):
        crashing_app(str(marker))


# ---------------------------------------------------------------------------------- checks


def test_a_speedup_is_judged_against_the_delivered_parallelism():
    assert judge_speedup(1.0, 1.05)  # nothing to gain on a machine that delivered one core
    assert judge_speedup(1.6, 2.0)
    assert not judge_speedup(1.1, 2.0)  # two cores delivered, one used


@pytest.mark.parametrize("settings, message", [
    ({"workers": 1, "balance": "round-robin"}, "1 of the usable cores stays idle"),
    ({"workers": "max", "balance": "os"}, "balance='os' leaves the choice of worker to the kernel"),
    ({"workers": "max", "balance": "round-robin", "port": 8080}, "sets port"),
    ({"balance": "round-robin"}, "does not say how many workers"),
    ({"workers": "many"}, "is refused"),
])
def test_the_cpu_service_check_names_a_wrong_choice_before_measuring(settings, message, monkeypatch):
    monkeypatch.setattr("labkit.grading.ex02.usable_cores", lambda: type("C", (), {"usable": 2})())
    assert message in run_check("ex02.cpu_service", lambda: settings)


def test_the_io_service_check_passes_one_worker_and_fails_three():
    assert run_check("ex02.io_service", lambda: {"workers": 1}) == "passed"
    line = run_check("ex02.io_service", lambda: {"workers": 3})
    assert "one worker already answers" in line and "cost memory" in line
