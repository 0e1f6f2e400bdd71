"""WorkerPool: one Executor over processes and threads that survives its workers' deaths."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError

import psutil
import pytest
import contract_tasks
import worker_tasks as tasks
from helpers import wait_until
from worker_tasks import FAST, START_METHODS

from labkit.errors import ConfigurationError, LabkitError
from labkit.pool import (
    PoolClosedError,
    QueueFullError,
    RemoteTraceback,
    TaskExitError,
    TaskFuture,
    TaskSerializationError,
    TaskTimeoutError,
    TaskUnpicklingError,
    WorkerCrashedError,
    WorkerPool,
    WorkerStartError,
    WorkerState,
    describe_exit,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="signals are POSIX")


@pytest.fixture(scope="module", autouse=True)
def multiprocessing_helpers_running():
    """Start multiprocessing's resource tracker and fork server before the leak guard looks."""
    tasks.start_multiprocessing_helpers()


def started(future, timeout=10.0):
    assert wait_until(future.running, timeout), "the task never started"


class Gate:
    """A file that tasks wait for (``tasks.wait_for_gate(gate.path)``) until the test opens it."""

    def __init__(self, path):
        self.path = str(path)

    def open(self):
        open(self.path, "w").close()


@pytest.fixture
def gate(tmp_path):
    gate = Gate(tmp_path / "gate")
    yield gate
    gate.open()  # never leave a task waiting


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --------------------------------------------------------------------------------------------
# functions from a notebook


@pytest.mark.parametrize("method", START_METHODS)
def test_functions_and_lambdas_defined_in_a_notebook_run_under_every_start_method(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available on this platform")
    cell = tasks.notebook_namespace()
    with WorkerPool("process", workers=2, start_method=method) as pool:
        assert list(pool.map(cell["hypotenuse"], [3, 5], [4, 12])) == [15.0, 23.0]
        assert pool.submit(cell["shout"], "hi").result(timeout=30) == "HI!"
        point = pool.submit(cell["make_point"], 2).result(timeout=30)
        assert (point.x, point.y) == (2, -2)


def test_a_script_run_as_main_uses_lambdas_in_a_spawn_pool(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        from labkit.pool import WorkerPool

        double = lambda x: 2 * x

        if __name__ == "__main__":
            with WorkerPool("process", workers=2, start_method="spawn") as pool:
                print(sum(pool.map(double, range(10))))
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "90"


# --------------------------------------------------------------------------------------------
# crashes


def test_a_task_that_exits_its_worker_fails_alone_while_the_rest_of_the_map_completes():
    with WorkerPool("process", workers=2, start_method=FAST) as pool:
        results = list(pool.map(tasks.exit_abruptly_on, range(8), [3] * 8, return_exceptions=True))
    assert [r for i, r in enumerate(results) if i != 3] == [0, 10, 20, 40, 50, 60, 70]
    crash = results[3]
    assert isinstance(crash, WorkerCrashedError)
    assert isinstance(crash, LabkitError) and isinstance(crash, RuntimeError)
    assert crash.exitcode == 3
    assert "exited with code 3" in str(crash) and "os._exit" in str(crash)


@posix_only
def test_a_task_killed_by_sigkill_fails_with_the_signal_and_a_likely_cause():
    with WorkerPool("process", workers=2, start_method=FAST) as pool:
        results = list(pool.map(tasks.kill_myself_on, range(6), [2] * 6, return_exceptions=True))
    assert results[:2] + results[3:] == [0, 10, 30, 40, 50]
    assert isinstance(results[2], WorkerCrashedError)
    assert "SIGKILL (signal 9)" in str(results[2]) and "out of memory" in str(results[2])


def test_the_pool_replaces_a_crashed_worker_and_keeps_serving():
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        first_pid = pool.submit(tasks.pid_after).result(timeout=30)
        with pytest.raises(WorkerCrashedError):
            pool.submit(tasks.exit_abruptly_on, 1, 1).result(timeout=30)
        second_pid = pool.submit(tasks.pid_after).result(timeout=30)
        stats = pool.stats()
    assert second_pid != first_pid
    assert stats.crashed == 1 and stats.workers[0].restarts == 1


def test_a_map_without_return_exceptions_raises_the_crash_at_its_position():
    with WorkerPool("process", workers=2, start_method=FAST) as pool:
        seen = []
        with pytest.raises(WorkerCrashedError):
            for value in pool.map(tasks.exit_abruptly_on, range(4), [2] * 4):
                seen.append(value)
    assert seen == [0, 10]


def test_describe_exit_reads_exit_codes_and_signals_aloud():
    assert describe_exit(-9).startswith("killed by SIGKILL (signal 9)")
    assert "segmentation fault (SIGSEGV" in describe_exit(-11)
    assert "a bug in native code" in describe_exit(-11)
    assert describe_exit(3) == "exited with code 3 via os._exit or sys.exit in a C extension"


# --------------------------------------------------------------------------------------------
# timeouts and cancel


def test_a_running_task_past_the_pool_timeout_is_stopped_and_the_pool_serves_the_next_task():
    with WorkerPool("process", workers=1, start_method=FAST, timeout=0.5) as pool:
        slow = pool.submit(tasks.sleep_then_return, 60)
        after = pool.submit(tasks.square, 7)
        with pytest.raises(TaskTimeoutError, match="timeout of 0.5 s") as caught:
            slow.result(timeout=30)
        assert after.result(timeout=30) == 49
        stats = pool.stats()
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, LabkitError)
    assert stats.timed_out == 1 and stats.workers[0].restarts == 1


def test_submit_with_gives_one_task_its_own_timeout():
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        limited = pool.submit_with(tasks.sleep_then_return, (60,), timeout=0.3)
        unlimited = pool.submit_with(tasks.sleep_then_return, (0.6, "done"))
        with pytest.raises(TaskTimeoutError):
            limited.result(timeout=30)
        assert unlimited.result(timeout=30) == "done"


def test_cancel_on_a_running_task_returns_false_and_leaves_it_running():
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        running = pool.submit(tasks.sleep_then_return, 0.5, "finished")
        started(running)
        assert running.cancel() is False
        assert not running.cancelled()
        assert running.result(timeout=30) == "finished"
        assert pool.stats().cancelled == 0


def test_kill_task_on_a_running_task_kills_its_worker_and_cancels_the_future():
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        running = pool.submit(tasks.sleep_then_return, 60)
        assert isinstance(running, TaskFuture)
        started(running)
        pid = pool.stats().workers[0].pid
        assert pool.kill_task(running) is True
        assert running.cancelled()
        with pytest.raises(CancelledError):
            running.result(timeout=1)
        assert wait_until(lambda: not alive(pid))
        assert pool.submit(tasks.square, 3).result(timeout=30) == 9
        assert pool.stats().cancelled == 1


def test_kill_task_cannot_stop_a_running_thread_and_says_so(gate):
    with WorkerPool("thread", workers=1) as pool:
        running = pool.submit(tasks.wait_for_gate, gate.path, "done")
        started(running)
        assert pool.kill_task(running) is False
        gate.open()
        assert running.result(timeout=30) == "done"


def test_abandoning_a_map_iterator_stops_its_running_tasks(gate, tmp_path):
    already_open = tmp_path / "open"
    already_open.touch()
    with WorkerPool("process", workers=2, start_method=FAST) as pool:
        results = pool.map(tasks.wait_for_gate, [str(already_open)] + [gate.path] * 4, [1] * 5)
        assert next(results) == 1
        assert wait_until(lambda: pool.stats().running == 2)
        results.close()  # what a `for` loop left by `break`, then garbage-collected, does
        assert wait_until(lambda: pool.stats().running == 0 and pool.stats().pending == 0)
        assert pool.stats().cancelled == 4


def test_a_result_whose_unpickling_exits_fails_alone_and_the_pool_still_terminates_cleanly():
    pool = WorkerPool("process", workers=1, start_method=FAST)
    try:
        with pytest.raises(TaskUnpicklingError) as caught:
            pool.submit(contract_tasks.make, contract_tasks.ExitAtUnpickle).result(timeout=30)
        assert isinstance(caught.value.__cause__, SystemExit)
        assert pool.submit(tasks.square, 6).result(timeout=30) == 36
    finally:
        pool.terminate()  # once raised "stopping -> stopping is not a legal move"
    assert pool.closed


def test_a_crashed_worker_is_catchable_as_broken_process_pool_yet_the_pool_heals():
    from concurrent.futures.process import BrokenProcessPool

    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        with pytest.raises(BrokenProcessPool):
            pool.submit(tasks.kill_myself_on, 1, 1).result(timeout=30)
        assert pool.submit(tasks.square, 5).result(timeout=30) == 25


def test_cancelling_a_pending_task_means_it_never_runs(gate):
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        busy = pool.submit(tasks.wait_for_gate, gate.path)
        waiting = pool.submit(tasks.square, 4)
        assert waiting.cancel() is True
        gate.open()
        busy.result(timeout=30)
        stats = pool.stats()
    assert waiting.cancelled()
    assert (stats.succeeded, stats.cancelled) == (1, 1)


def test_cancel_after_the_task_finished_returns_false():
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        done = pool.submit(tasks.square, 5)
        assert done.result(timeout=30) == 25
        assert done.cancel() is False


# --------------------------------------------------------------------------------------------
# queue limit


def test_a_full_queue_raises_queue_full_error_when_told_to_raise(gate):
    with WorkerPool("process", workers=1, start_method=FAST, max_queue=1, on_full="raise") as pool:
        started(pool.submit(tasks.wait_for_gate, gate.path))
        pool.submit(tasks.square, 1)  # waits in the queue
        with pytest.raises(QueueFullError, match="max_queue=1") as caught:
            pool.submit(tasks.square, 2)
        gate.open()
    assert "on_full='wait'" in str(caught.value)


def test_a_full_queue_makes_submit_wait_until_a_worker_takes_a_task(gate):
    with WorkerPool("process", workers=1, start_method=FAST, max_queue=1) as pool:
        started(pool.submit(tasks.wait_for_gate, gate.path))
        pool.submit(tasks.square, 1)
        submitted = threading.Event()

        def submit_third():
            pool.submit(tasks.square, 2)
            submitted.set()

        thread = threading.Thread(target=submit_third)
        thread.start()
        assert not submitted.wait(0.2), "submit should wait while the queue is full"
        gate.open()
        assert submitted.wait(30), "submit should go through once the worker is free"
        thread.join()


def test_cancelling_a_queued_task_makes_room_in_a_full_queue(gate):
    with WorkerPool("process", workers=1, start_method=FAST, max_queue=1, on_full="raise") as pool:
        started(pool.submit(tasks.wait_for_gate, gate.path))
        queued = pool.submit(tasks.square, 1)
        queued.cancel()
        last = pool.submit(tasks.square, 2)
        gate.open()
        assert last.result(timeout=30) == 4


# --------------------------------------------------------------------------------------------
# errors in tasks


def test_an_exception_in_a_task_is_reraised_with_the_worker_traceback_as_its_cause():
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        with pytest.raises(ValueError, match="bad input") as caught:
            pool.submit(tasks.raise_value_error, "bad input").result(timeout=30)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in raise_value_error" in str(cause) and "in _deeper" in str(cause)
    assert "ValueError: bad input" in str(cause)


def test_a_notebook_function_traceback_shows_its_source_lines():
    cell = tasks.notebook_namespace()
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        with pytest.raises(TypeError) as caught:
            pool.submit(cell["hypotenuse"], "a", 1).result(timeout=30)
    assert "in hypotenuse" in str(caught.value.__cause__)


def test_sys_exit_in_a_task_fails_that_task_and_not_the_parent():
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        with pytest.raises(TaskExitError, match="SystemExit"):
            pool.submit(tasks.call_sys_exit, 4).result(timeout=30)
        assert pool.stats().crashed == 0


def test_arguments_that_cannot_be_pickled_fail_at_submit_with_a_clear_error():
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        with pytest.raises(TaskSerializationError, match="cannot send square"):
            pool.submit(tasks.square, threading.Lock())


# --------------------------------------------------------------------------------------------
# map, stats, repr


def test_map_keeps_the_order_of_its_inputs_with_and_without_chunks():
    with WorkerPool("process", workers=2, start_method=FAST) as pool:
        assert list(pool.map(tasks.add, range(20), range(20))) == list(range(0, 40, 2))
        assert list(pool.map(tasks.square, range(23), chunksize=5)) == [x * x for x in range(23)]


def test_map_with_progress_draws_a_text_bar_on_stderr_outside_jupyter(capsys):
    with WorkerPool("process", workers=2, start_method=FAST) as pool:
        assert list(pool.map(tasks.square, range(6), progress=True)) == [0, 1, 4, 9, 16, 25]
    err = capsys.readouterr().err
    assert "map [" in err and "6/6" in err


def test_stats_count_each_workers_tasks_and_report_time_percentiles():
    with WorkerPool("process", workers=2, start_method=FAST) as pool:
        list(pool.map(tasks.sleep_then_return, [0.01] * 10))
        stats = pool.stats()
    assert stats.kind == "process" and len(stats.workers) == 2
    assert sum(w.tasks for w in stats.workers) == 10 == stats.succeeded == stats.completed
    assert all(w.pid is not None and w.busy_seconds > 0 for w in stats.workers if w.tasks)
    assert stats.run.count == stats.wait.count == 10
    assert 0.01 <= stats.run.p50 <= stats.run.p90 <= stats.run.p99 <= stats.run.max
    assert (stats.pending, stats.running, stats.crashed, stats.restarts) == (0, 0, 0, 0)
    with pytest.raises(AttributeError):
        stats.succeeded = 0  # frozen


def test_repr_shows_kind_workers_pending_and_running(gate):
    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        started(pool.submit(tasks.wait_for_gate, gate.path))
        pool.submit(tasks.square, 2)
        text = repr(pool)
        gate.open()
    assert "kind='process'" in text and "workers=1" in text
    assert "pending=1" in text and "running=1" in text


def test_initializer_runs_once_in_each_worker_before_its_tasks():
    with WorkerPool("process", workers=2, start_method=FAST, initializer=tasks.remember,
                    initargs=("ready",)) as pool:
        assert list(pool.map(tasks.remembered, range(4))) == ["ready"] * 4


def test_an_initializer_that_raises_fails_the_pool_with_a_clear_error():
    pool = WorkerPool("process", workers=1, start_method=FAST, initializer=tasks.fail_to_initialize)
    try:
        future = pool.submit(tasks.square, 2)
        with pytest.raises(WorkerStartError, match="initializer raised RuntimeError") as caught:
            future.result(timeout=30)
        assert "no database here" in str(caught.value.__cause__)
        with pytest.raises(WorkerStartError):
            pool.submit(tasks.square, 3)
    finally:
        pool.shutdown()


# --------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize("workers", [0, -2, 1.5, "all", True, None])
def test_workers_must_be_max_minus_one_or_a_positive_int(workers):
    with pytest.raises(ConfigurationError, match="workers must be 'max'"):
        WorkerPool("thread", workers)


def test_workers_max_and_minus_one_follow_the_usable_cores():
    from labkit.cores import usable_cores

    usable = usable_cores().usable
    assert WorkerPool("thread", "max").workers == usable
    assert WorkerPool("thread", -1).workers == max(1, usable - 1)


def test_an_unknown_start_method_is_refused_with_the_available_ones():
    with pytest.raises(ConfigurationError, match="this platform offers"):
        WorkerPool("process", 1, start_method="teleport")


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="interpreters exist on 3.14+")
def test_the_interpreter_kind_names_the_python_version_it_needs():
    with pytest.raises(ConfigurationError, match="Python 3.14 or newer"):
        WorkerPool("interpreter")


# --------------------------------------------------------------------------------------------
# threads


def test_the_thread_kind_runs_tasks_in_this_process_and_counts_them():
    with WorkerPool("thread", workers=2) as pool:
        assert list(pool.map(tasks.pid_after, [0.01] * 4)) == [os.getpid()] * 4
        stats = pool.stats()
    assert stats.kind == "thread" and stats.succeeded == 4
    assert sum(w.tasks for w in stats.workers) == 4 and stats.run.count == 4


def test_the_thread_kind_refuses_timeouts_because_threads_cannot_be_stopped():
    with pytest.raises(ConfigurationError, match="cannot be stopped from outside"):
        WorkerPool("thread", 2, timeout=1.0)
    with WorkerPool("thread", 1) as pool:
        with pytest.raises(ConfigurationError, match="kind='process'|'process'"):
            pool.submit_with(tasks.square, (2,), timeout=1.0)


def test_the_thread_kind_applies_the_queue_limit(gate):
    with WorkerPool("thread", 1, max_queue=1, on_full="raise") as pool:
        started(pool.submit(tasks.wait_for_gate, gate.path))
        pool.submit(tasks.square, 1)
        with pytest.raises(QueueFullError):
            pool.submit(tasks.square, 2)
        gate.open()


# --------------------------------------------------------------------------------------------
# the end of a pool


def test_shutdown_stops_every_worker_process():
    pool = WorkerPool("process", workers=2, start_method=FAST)
    list(pool.map(tasks.square, range(4)))
    pids = [w.pid for w in pool.stats().workers]
    pool.shutdown()
    assert not any(alive(pid) for pid in pids)
    assert all(w.state is WorkerState.EXITED for w in pool.stats().workers)


def test_submit_after_shutdown_raises_pool_closed_error():
    pool = WorkerPool("process", workers=1, start_method=FAST)
    pool.shutdown()
    with pytest.raises(PoolClosedError, match="shut down"):
        pool.submit(tasks.square, 2)


def test_shutdown_with_cancel_futures_cancels_what_has_not_started():
    pool = WorkerPool("process", workers=1, start_method=FAST)
    running = pool.submit(tasks.sleep_then_return, 0.3, "finished")
    started(running)
    queued = [pool.submit(tasks.square, i) for i in range(3)]
    pool.shutdown(cancel_futures=True)
    assert running.result() == "finished"
    assert all(f.cancelled() for f in queued)


def test_terminate_stops_running_tasks_at_once():
    pool = WorkerPool("process", workers=2, start_method=FAST)
    running = [pool.submit(tasks.sleep_then_return, 60) for _ in range(2)]
    for future in running:
        started(future)
    began = time.monotonic()
    pool.terminate()
    assert time.monotonic() - began < 10
    assert all(f.cancelled() for f in running)


@pytest.mark.parametrize("method_name", ["terminate_workers", "kill_workers"])
def test_python_3_14_names_for_stopping_the_workers_stop_them_at_once(method_name):
    pool = WorkerPool("process", workers=1, start_method=FAST)
    running = pool.submit(tasks.sleep_then_return, 60)
    started(running)
    began = time.monotonic()
    getattr(pool, method_name)()
    assert time.monotonic() - began < 10
    assert running.cancelled() and pool.closed


def test_an_interrupt_during_map_cancels_its_tasks_and_is_reraised():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    pool = WorkerPool("process", workers=2, start_method=FAST)
    try:
        results = pool.map(tasks.sleep_then_return, [60] * 5)
        main = threading.main_thread().ident
        timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            list(results)
        timer.join()
        assert wait_until(lambda: pool.stats().running == 0)
        stats = pool.stats()
        assert stats.cancelled == 5 and stats.pending == 0
        assert pool.submit(tasks.square, 6).result(timeout=30) == 36
    finally:
        signal.signal(signal.SIGINT, previous)
        pool.shutdown()


def test_a_pool_collected_without_shutdown_stops_its_workers():
    pool = WorkerPool("process", workers=2, start_method=FAST)
    list(pool.map(tasks.square, range(4)))
    pids = [w.pid for w in pool.stats().workers]
    del pool
    gc.collect()
    assert wait_until(lambda: not any(alive(pid) for pid in pids))


@posix_only
def test_workers_exit_when_the_process_that_owns_the_pool_dies(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys
        from labkit.pool import WorkerPool

        if __name__ == "__main__":
            pool = WorkerPool("process", workers=2, start_method="fork")
            list(pool.map(abs, range(4)))
            print(" ".join(str(w.pid) for w in pool.stats().workers), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2, result.stderr
    try:
        assert wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# big results


@pytest.mark.parametrize("method", START_METHODS)
def test_big_arrays_and_bytes_come_back_whole_and_arrays_stay_writable(method):
    np = pytest.importorskip("numpy")
    with WorkerPool("process", workers=1, start_method=method) as pool:
        array = pool.submit(np.arange, 600_000, dtype=np.float64).result(timeout=60)  # 4.8 MB
        data = pool.submit(contract_tasks.big_bytes, 3_000_001).result(timeout=60)
        several = list(pool.map(np.full, [(2, 300_000)] * 3, [1.5, 2.5, 3.5], chunksize=3))
    assert array.shape == (600_000,) and array[-1] == 599_999.0
    array[0] = -1.0  # writable, as an unpickled array always is
    assert type(data) is bytes and len(data) == 3_000_001 and data.count(7) == len(data)
    assert [a[1, -1] for a in several] == [1.5, 2.5, 3.5]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak RSS reset")
def test_receiving_a_big_result_adds_about_its_own_size_to_the_parent():
    size = 64 * 1024 * 1024

    def peak_added(receive):
        before = psutil.Process().memory_info().rss
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        result = receive()
        with open("/proc/self/status") as status:
            peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
        assert len(result) == size
        return peak - before

    with WorkerPool("process", workers=1, start_method=FAST) as pool:
        pool.submit(tasks.square, 1).result(timeout=30)
        added = peak_added(lambda: pool.submit(contract_tasks.big_bytes, size).result(timeout=60))
    assert added < 1.5 * size, f"receiving {size} bytes raised the peak by {added} bytes"


# --------------------------------------------------------------------------------------------
# interpreter exit


def test_a_notebook_kernel_shuts_down_at_once_with_a_task_running_and_leaves_no_worker():
    jupyter_client = pytest.importorskip("jupyter_client")
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    printed: list[str] = []
    try:
        client.start_channels()
        client.wait_for_ready(timeout=60)
        code = textwrap.dedent("""
            import time
            from labkit.pool import WorkerPool
            pool = WorkerPool("process", workers=1, start_method="fork")
            future = pool.submit(time.sleep, 120)
            while not future.running():
                time.sleep(0.02)
            print(pool.stats().workers[0].pid)
        """)

        def keep_output(message):
            if message["msg_type"] == "stream":
                printed.append(message["content"]["text"])

        client.execute_interactive(code, output_hook=keep_output, timeout=60)
    finally:
        client.stop_channels()
        began = time.monotonic()
        manager.shutdown_kernel(now=False)  # a polite shutdown_request, as a restart sends
        took = time.monotonic() - began
    pid = int("".join(printed).split()[0])
    assert wait_until(lambda: not alive(pid), timeout=5), "the kernel's worker outlived it"
    # Jupyter waits up to 5 s for a polite shutdown before it kills the kernel. ipykernel ends
    # the kernel's children first; the pool's exit hook must then see its task as lost and let
    # the kernel go, not wait for the two-minute task or keep restarting workers.
    assert took < 4.5, f"the kernel took {took:.1f} s to shut down"
