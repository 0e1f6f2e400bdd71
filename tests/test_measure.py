"""Sweeps, speedup verdicts and CPU timelines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from labkit import ConfigurationError
from labkit.measure import cpu_timeline, default_worker_counts, judge_speedup, speedup, sweep
from labkit.workloads import count_primes, io_wait
from labkit.plots import plot_cpu_timeline, plot_scaling, plot_switches


def test_default_worker_counts_go_from_one_to_four_times_the_cores():
    assert default_worker_counts(2) == [1, 2, 4, 6, 8]
    assert default_worker_counts(1) == [1, 2, 3, 4]


def test_a_process_sweep_measures_every_point_and_leaves_no_worker():
    result = sweep(count_primes, (15_000,), tasks=4, workers=[1, 2], repeats=2)
    assert [p.workers for p in result.points] == [1, 2]
    for point in result.points:
        assert point.throughput == pytest.approx(4 / point.seconds)
        assert len(point.runs) == 2
        assert point.cpu_seconds > 0  # the workers' CPU time was counted, not the parent's
    assert set(speedup(result)) == {1, 2}
    assert speedup(result)[1] == 1.0
    assert "count_primes" in result.table()


def test_a_thread_sweep_of_waits_keeps_scaling_past_the_cores():
    # Waiting costs no core: 8 threads finish 8 sleeps in about one sleep. Behaviour, not speed:
    # even on a busy machine 8 overlapping sleeps beat 8 sleeps one after another.
    result = sweep(io_wait, (0.05,), tasks=8, workers=[1, 8], kind="thread", repeats=1)
    assert speedup(result)[8] > 2


def test_sweep_rejects_nonsense():
    with pytest.raises(ConfigurationError):
        sweep(count_primes, (10,), workers=[0])
    with pytest.raises(ConfigurationError):
        sweep(count_primes, (10,), tasks=0)


@pytest.mark.parametrize("measured, delivered, shown, decidable", [
    (1.9, 2.0, True, True),
    (1.1, 2.0, False, True),
    (1.0, 1.1, True, False),  # nothing can be shown on a machine that delivered one core
    (3.0, 8.0, False, True),
])
def test_speedups_are_judged_against_delivered_parallelism(measured, delivered, shown, decidable):
    verdict = judge_speedup(measured, delivered)
    assert (verdict.shown, verdict.decidable) == (shown, decidable)
    assert not any(ch.isdigit() for ch in verdict.text)  # safe to store in a compared output


def test_judging_respects_the_worker_count():
    assert judge_speedup(1.9, 8.0, workers=2).shown


def test_cpu_timeline_sees_a_busy_core():
    with cpu_timeline(interval=0.05) as recording:
        subprocess.run([sys.executable, "-c", "import labkit; labkit.spin(0.6)"], check=True)
    timeline = recording.result
    assert len(timeline.times) >= 5
    assert timeline.cores >= 1
    assert max(max(sample) for sample in timeline.loads) > 50


def test_scaling_plots_draw():
    result = sweep(count_primes, (1000,), tasks=2, workers=[1, 2], repeats=1)
    assert plot_scaling(result).axes[0].get_ylabel().startswith("speedup")
    assert plot_switches(result).axes[0].get_xlabel().startswith("workers")
    with cpu_timeline(interval=0.05) as recording:
        count_primes(20000)
    assert plot_cpu_timeline(recording.result).axes[0].get_title() == "Which cores did the work?"


def test_watch_answers_names_the_answering_process_and_marks_no_answer_as_none():
    import asyncio
    import socket

    from labkit.apps import AppServer
    from labkit.measure import watch_answers, who_answers

    with AppServer("labkit.demo:demo_app") as server:
        answers = asyncio.run(watch_answers(server.url + "/pid", seconds=0.3, interval=0.05))
        pid = server.pid
    assert len(answers) >= 3
    assert {who for _, who in answers} == {pid}
    assert [sent for sent, _ in answers] == sorted(sent for sent, _ in answers)
    with socket.socket() as closed:  # a port nobody listens on: refused, so no answer
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert asyncio.run(who_answers(f"http://127.0.0.1:{port}/pid", timeout=5)) is None
