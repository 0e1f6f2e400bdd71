"""One vocabulary for pools and clusters: worker counts, start methods, states, remote tracebacks."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

import labkit.cluster
import labkit.cores
from labkit import ConfigurationError, usable_cores
from labkit.cores import START_METHOD_ENV, check_start_method, resolve_workers, safe_start_method

# A subprocess, so that the variable is read the way a real run reads it: set before Python starts.
SHOW_DEFAULTS = (
    "from labkit import Cluster\n"
    "from labkit.pool import WorkerPool\n"
    "pool = WorkerPool('process', workers=1)\n"
    "cluster = Cluster('labkit.demo:demo_app', workers=1)\n"
    "print(pool.start_method, cluster.start_method)\n"
    "pool.shutdown()\n"
)


def run_with_start_method_env(value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != START_METHOD_ENV}
    if value is not None:
        env[START_METHOD_ENV] = value
    return subprocess.run([sys.executable, "-c", SHOW_DEFAULTS], capture_output=True, text=True,
                          timeout=60, env=env)


# --------------------------------------------------------------------------------------------
# resolve_workers


def test_the_cluster_pool_and_cores_share_one_resolve_workers():
    from labkit.pool import _executor

    assert labkit.cluster.resolve_workers is resolve_workers
    assert _executor.resolve_workers is resolve_workers


def test_max_minus_one_and_counts_resolve_the_same_from_numbers_and_strings():
    usable = usable_cores().usable
    assert resolve_workers("max") == resolve_workers(" MAX ") == usable
    assert resolve_workers(-1) == resolve_workers("-1") == max(1, usable - 1)
    assert resolve_workers(5) == resolve_workers("5") == 5


@pytest.mark.parametrize("wrong", [0, -2, 1.5, True, None, "all", "", "2.5"])
def test_anything_else_is_refused_with_one_message_that_lists_the_choices(wrong):
    with pytest.raises(ConfigurationError, match=r"workers must be 'max', -1 or a positive integer") as caught:
        resolve_workers(wrong)
    assert repr(wrong) in str(caught.value)


# --------------------------------------------------------------------------------------------
# start methods


def test_an_explicit_start_method_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(START_METHOD_ENV, "spawn")
    assert check_start_method("fork") == "fork"


def test_without_argument_or_environment_the_safe_default_is_used(monkeypatch):
    monkeypatch.delenv(START_METHOD_ENV, raising=False)
    assert check_start_method() == safe_start_method() != "fork"
    monkeypatch.setenv(START_METHOD_ENV, "  ")
    assert check_start_method() == safe_start_method()


def test_an_unknown_start_method_argument_names_what_the_platform_offers():
    with pytest.raises(ConfigurationError, match="this platform offers") as caught:
        check_start_method("teleport")
    assert all(repr(m) in str(caught.value) for m in multiprocessing.get_all_start_methods())


def test_a_bad_environment_value_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(START_METHOD_ENV, "teleport")
    with pytest.raises(ConfigurationError, match=f"{START_METHOD_ENV}='teleport'.*this platform offers"):
        check_start_method()


def test_a_start_method_this_platform_lacks_is_refused_from_the_environment(monkeypatch):
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setenv(START_METHOD_ENV, "fork")
    with pytest.raises(ConfigurationError, match="LABKIT_START_METHOD='fork'"):
        check_start_method()


def test_the_environment_variable_is_documented_where_readers_look():
    assert START_METHOD_ENV in labkit.cores.__doc__
    assert START_METHOD_ENV in check_start_method.__doc__


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_the_environment_sets_the_default_of_pools_and_clusters_for_a_whole_run(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available on this platform")
    result = run_with_start_method_env(method)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [method, method]


def test_without_the_environment_pools_and_clusters_default_to_the_safe_method():
    result = run_with_start_method_env(None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [safe_start_method()] * 2


def test_a_run_with_a_bad_environment_value_fails_when_a_pool_is_made():
    result = run_with_start_method_env("teleport")
    assert result.returncode != 0
    assert "ConfigurationError" in result.stderr and "LABKIT_START_METHOD='teleport'" in result.stderr



# --------------------------------------------------------------------------------------------
# remote tracebacks


def test_pools_and_clusters_chain_one_remote_traceback_type():
    from labkit.cluster import _cluster
    from labkit.pool import RemoteTraceback

    assert _cluster.RemoteTraceback is RemoteTraceback
    assert RemoteTraceback.__module__ == "labkit.pool"
    assert str(RemoteTraceback("Traceback ...\nValueError: x\n")) == "\n\nTraceback ...\nValueError: x"


def test_a_worker_that_cannot_boot_sends_its_traceback_home_as_a_remote_traceback():
    from labkit import Cluster, ServerStartError
    from labkit.pool import RemoteTraceback

    cluster = Cluster("no_such_module:app", workers=1, start_method="fork")
    with pytest.raises(ServerStartError) as caught:
        cluster.start()
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "ModuleNotFoundError" in caught.value.__cause__.text


# --------------------------------------------------------------------------------------------
# lifecycles


def test_pools_and_clusters_check_their_workers_moves_with_one_helper():
    from labkit._exits import Lifecycle
    from labkit.cluster import _state
    from labkit.pool import _base

    assert isinstance(_base.LIFECYCLE, Lifecycle) and isinstance(_state.LIFECYCLE, Lifecycle)


def test_an_illegal_move_is_a_labkit_error_and_a_runtime_error_in_both():
    from labkit._exits import IllegalMoveError
    from labkit.cluster import WorkerState as ClusterState
    from labkit.cluster._state import LIFECYCLE as CLUSTER
    from labkit.errors import LabkitError
    from labkit.pool import WorkerState as PoolState
    from labkit.pool._process import _Slot

    assert issubclass(IllegalMoveError, LabkitError) and issubclass(IllegalMoveError, RuntimeError)
    slot = _Slot(4)
    with pytest.raises(IllegalMoveError, match="worker slot 4: new -> busy is not a legal move"):
        slot.move(PoolState.BUSY)
    slot.move(PoolState.STARTING)
    assert slot.state is PoolState.STARTING
    with pytest.raises(IllegalMoveError, match="worker 2: ready -> starting"):
        CLUSTER.move(ClusterState.READY, ClusterState.STARTING, "worker 2")
    assert CLUSTER.move(ClusterState.READY, ClusterState.STOPPING, "worker 2") is ClusterState.STOPPING


def test_a_lifecycle_that_forgets_a_state_is_refused():
    import enum

    from labkit._exits import Lifecycle

    class Light(enum.Enum):
        RED = "red"
        GREEN = "green"
        AMBER = "amber"

    with pytest.raises(ValueError, match="AMBER"):
        Lifecycle({Light.RED: {Light.GREEN}, Light.GREEN: {Light.RED}})
    lights = Lifecycle({Light.RED: {Light.GREEN}, Light.GREEN: {Light.AMBER}, Light.AMBER: {Light.RED}})
    assert lights.allows(Light.RED, Light.GREEN) and not lights.allows(Light.RED, Light.AMBER)


def test_thread_and_process_slots_count_tasks_the_same_way():
    from labkit.pool import WorkerPool

    for kind in ("thread", "process"):
        with WorkerPool(kind, workers=1) as pool:
            assert list(pool.map(abs, [-1, -2, -3])) == [1, 2, 3]
            (worker,) = pool.stats().workers
        assert worker.tasks == 3 and worker.busy_seconds > 0 and worker.slot == 0


# --------------------------------------------------------------------------------------------
# backends and admission


def test_both_backends_are_pool_backends():
    from labkit.pool import WorkerPool
    from labkit.pool._base import PoolBackend

    for kind in ("thread", "process"):
        pool = WorkerPool(kind, workers=1)
        assert isinstance(pool._backend, PoolBackend), kind
        pool.shutdown()


def test_a_closed_pool_refuses_work_in_the_same_words_whatever_its_kind():
    from labkit.pool import PoolClosedError, WorkerPool

    messages = set()
    for kind in ("thread", "process"):
        pool = WorkerPool(kind, workers=1)
        pool.shutdown()
        with pytest.raises(PoolClosedError) as caught:
            pool.submit(abs, -1)
        messages.add(str(caught.value))
    assert len(messages) == 1


class _Queue:
    """The smallest backend-like object over QueueLimit: a list as its queue."""

    def __init__(self, max_queue: int | None) -> None:
        import threading

        from labkit.pool._base import QueueLimit

        class Limited(QueueLimit):
            closed = False

            def __init__(self) -> None:
                self.lock = threading.Lock()
                self._room = threading.Condition(self.lock)
                self._max_queue = max_queue
                self.items: list[int] = []
                self.own_thread: threading.Thread | None = None

            def _pending_count(self) -> int:
                return len(self.items)

            def _in_pool_thread(self) -> bool:
                return threading.current_thread() is self.own_thread

        self.limited = Limited()

    def add(self, item: int, block: bool) -> None:
        with self.limited.lock:
            self.limited._admit(block)
            self.limited.items.append(item)

    def take(self) -> None:
        with self.limited.lock:
            self.limited.items.pop(0)
            self.limited._room.notify_all()


def test_a_full_queue_refuses_when_told_not_to_wait():
    from labkit.pool import QueueFullError

    queue = _Queue(max_queue=1)
    queue.add(1, block=False)
    with pytest.raises(QueueFullError, match=r"1 tasks wait for a worker \(max_queue=1\)"):
        queue.add(2, block=False)


def test_a_full_queue_makes_a_waiting_submitter_wait_until_there_is_room():
    import threading

    queue = _Queue(max_queue=1)
    queue.add(1, block=True)
    added = threading.Event()
    submitter = threading.Thread(target=lambda: (queue.add(2, block=True), added.set()))
    submitter.start()
    assert not added.wait(0.2)  # still waiting for room
    queue.take()
    assert added.wait(10)
    submitter.join(10)
    assert queue.limited.items == [2]


def test_the_pools_own_thread_is_never_made_to_wait_for_room():
    import threading

    queue = _Queue(max_queue=1)
    queue.add(1, block=True)

    def from_inside() -> None:
        queue.limited.own_thread = threading.current_thread()
        queue.add(2, block=True)

    inside = threading.Thread(target=from_inside)
    inside.start()
    inside.join(10)
    assert not inside.is_alive() and queue.limited.items == [1, 2]
