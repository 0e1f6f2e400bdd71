"""The supervisor's timing, driven by a fake clock: backoff, hang detection, overdue stops.

The workers are real processes on a real port; only the arbiter's clock is fake, so a 30-second
heartbeat timeout is crossed by moving the clock, not by waiting. The loop is kept polling
(``max_wait`` of a few milliseconds), so it notices the moved clock at once. A worker is made
silent or stubborn with SIGSTOP, which freezes its event loop the way a long computation would.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from labkit.cluster import WorkerState
from labkit.cluster._arbiter import Arbiter, ArbiterConfig
from labkit.cluster._by_value import pickled_app
from labkit.cluster._settings import ClusterSettings
from labkit.cores import safe_start_method

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP to freeze a worker")

# Real seconds to wait for something the arbiter does on its own (a reap, a worker's boot).
PATIENCE = 60.0


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def supervise(clock: FakeClock) -> Iterator:
    """Start an arbiter with one worker of the demo app under ``clock``; stop everything afterwards."""
    started: list[Arbiter] = []

    def start(app: str = "labkit.demo:demo_app", options: dict | None = None, **settings) -> Arbiter:
        config = ArbiterConfig(
            app=app, name="demo", options=options or {},
            settings=ClusterSettings(max_wait=0.01, **settings),
            context=multiprocessing.get_context(safe_start_method()),
        )
        arbiter = Arbiter(config, clock=clock)
        arbiter.open()
        started.append(arbiter)
        [slot_id] = arbiter.call(arbiter.add_slots, 1).result(PATIENCE)
        assert arbiter.wait_until(lambda: arbiter.settled([slot_id]), PATIENCE), list(arbiter.events)
        return arbiter

    yield start
    for arbiter in started:
        if not arbiter.finished:
            arbiter.call(arbiter.shutdown, 0.0)
            # Frozen workers cannot stop by themselves: move past their kill deadline.
            for _ in range(20):
                clock.advance(60)
                if arbiter.wait_until(lambda: arbiter.finished, 0.5):
                    break
        arbiter.join(PATIENCE)


def settle(arbiter: Arbiter) -> None:
    """Return once the loop has made a full pass (its clock checks included) since this call."""
    for _ in range(2):  # a command runs at the start of a pass: the second one waits for the first pass's end
        arbiter.call(lambda: None).result(PATIENCE)


def kinds(arbiter: Arbiter, kind: str) -> list[str]:
    with arbiter.lock:
        return [event.message for event in arbiter.events if event.kind == kind]


def the_worker(arbiter: Arbiter):
    with arbiter.lock:
        [worker] = [w for w in arbiter.workers if w.state.alive]
        return worker


def wait_for_event(arbiter: Arbiter, kind: str, count: int = 1) -> list[str]:
    assert arbiter.wait_until(lambda: len(kinds(arbiter, kind)) >= count, PATIENCE), list(arbiter.events)
    return kinds(arbiter, kind)


def test_a_crashed_worker_is_restarted_exactly_when_its_backoff_runs_out(supervise, clock):
    arbiter = supervise(restart_delay=5.0, backoff_factor=2.0, max_restart_delay=60.0, max_restarts=10)
    os.kill(the_worker(arbiter).pid, signal.SIGKILL)
    assert "restarting in 5.00 s" in wait_for_event(arbiter, "exited")[0]

    clock.advance(4.99)
    settle(arbiter)
    assert len(kinds(arbiter, "starting")) == 1, "restarted before its delay ran out"
    clock.advance(0.01)
    wait_for_event(arbiter, "ready", count=2)

    # A second crash in a row waits backoff_factor times longer.
    os.kill(the_worker(arbiter).pid, signal.SIGKILL)
    assert "restarting in 10.00 s" in wait_for_event(arbiter, "exited", count=2)[1]
    clock.advance(9.99)
    settle(arbiter)
    assert len(kinds(arbiter, "starting")) == 2
    clock.advance(0.01)
    wait_for_event(arbiter, "starting", count=3)


def test_a_silent_worker_is_killed_only_once_the_heartbeat_timeout_has_passed(supervise, clock):
    arbiter = supervise(heartbeat_timeout=30.0, max_restarts=10, restart_delay=1000.0)
    worker = the_worker(arbiter)
    os.kill(worker.pid, signal.SIGSTOP)  # its event loop stops beating, as if blocked
    settle(arbiter)  # beats already on their way are read at the current time

    clock.advance(29.9)
    settle(arbiter)
    assert kinds(arbiter, "hung") == [] and worker.state is WorkerState.READY
    clock.advance(0.2)
    [reason] = wait_for_event(arbiter, "hung")
    assert "no heartbeat for 30.1 s (heartbeat_timeout=30 s)" in reason
    assert arbiter.wait_until(lambda: worker.state is WorkerState.EXITED, PATIENCE)


def test_a_worker_that_overstays_its_graceful_stop_is_killed_at_the_deadline(supervise, clock):
    arbiter = supervise(graceful_timeout=10.0)
    worker = the_worker(arbiter)
    os.kill(worker.pid, signal.SIGSTOP)  # it cannot finish, so it cannot exit by itself
    arbiter.call(arbiter.retire_slots, [worker.slot.id]).result(PATIENCE)
    assert worker.state is WorkerState.STOPPING

    margin = arbiter.settings.kill_margin
    clock.advance(10.0 + margin - 0.01)
    settle(arbiter)
    assert worker.kill_reason is None and worker.state is WorkerState.STOPPING
    clock.advance(0.02)
    assert arbiter.wait_until(lambda: worker.state is WorkerState.EXITED, PATIENCE)
    assert "graceful stop timed out" in kinds(arbiter, "exited")[-1]


def test_a_reload_gives_up_on_a_new_worker_that_is_not_ready_by_its_deadline(supervise, clock, tmp_path):
    def stuck_while(marker: str):  # nested, so cloudpickle sends it by value
        import os
        import time

        from labkit.demo import demo_app

        while os.path.exists(marker):
            time.sleep(0.05)
        return demo_app()

    marker = tmp_path / "stuck"
    app, options = pickled_app(stuck_while, {"marker": str(marker)})
    arbiter = supervise(app, options, startup_timeout=1000.0)
    old = the_worker(arbiter)
    marker.touch()  # from now on, a new worker never gets ready
    reload = arbiter.perform(arbiter.reload, 20.0)
    assert arbiter.wait_until(lambda: len(kinds(arbiter, "starting")) == 2, PATIENCE)
    settle(arbiter)
    clock.advance(19.9)
    settle(arbiter)
    assert not reload.done()
    clock.advance(0.2)
    with pytest.raises(Exception, match="reload stopped at worker 1"):
        reload.result(PATIENCE)
    assert old.state is WorkerState.READY  # the old worker keeps serving


def test_with_heartbeat_timeout_zero_a_silent_worker_is_never_killed(supervise, clock):
    arbiter = supervise(heartbeat_timeout=0.0, balance="os")
    worker = the_worker(arbiter)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        settle(arbiter)
        clock.advance(7 * 24 * 3600.0)  # a week of silence
        settle(arbiter)
        assert kinds(arbiter, "hung") == [] and worker.state is WorkerState.READY
    finally:
        os.kill(worker.pid, signal.SIGCONT)


def test_round_robin_passes_over_a_worker_two_beats_late_without_cpu_and_takes_it_back(supervise, clock):
    arbiter = supervise(heartbeat_timeout=30.0, balance="round-robin")
    worker = the_worker(arbiter)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        settle(arbiter)  # beats already on their way are read at the current time
        clock.advance(1.9)  # under two intervals (1 s each) late: still in the rotation
        settle(arbiter)
        assert kinds(arbiter, "stalled") == [] and not worker.stalled
        clock.advance(0.2)  # first look: its CPU time is the baseline or already still
        settle(arbiter)
        clock.advance(1.1)  # second look, an interval later: no CPU used since
        [reason] = wait_for_event(arbiter, "stalled")
        assert "no CPU used" in reason and worker.stalled
        assert kinds(arbiter, "hung") == [] and worker.state is WorkerState.READY
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    wait_for_event(arbiter, "recovered")  # its next beat
    assert not worker.stalled
