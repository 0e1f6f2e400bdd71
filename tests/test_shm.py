"""SharedArray: numpy arrays in shared memory, created once, attached by name, always unlinked."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import worker_tasks as tasks
from worker_tasks import FAST

from labkit.errors import ConfigurationError, LabkitError
from labkit.pool import WorkerPool
from labkit.shm import (
    NotOwnerError,
    SharedArray,
    SharedArrayClosedError,
    SharedArrayHandle,
    SharedArrayInUseError,
    SharedMemoryGoneError,
    leftover_segments,
    remove_leftovers,
)

SHM = Path("/dev/shm")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /dev/shm")


@pytest.fixture(scope="module", autouse=True)
def multiprocessing_helpers_running():
    """Start multiprocessing's resource tracker and fork server before the leak guard looks."""
    tasks.start_multiprocessing_helpers()


def exists(shared) -> bool:
    return (SHM / shared.name).exists()


# --------------------------------------------------------------------------------------------
# making and using


def test_create_gives_a_zero_filled_array_of_the_asked_shape_and_dtype():
    with SharedArray.create((3, 4), dtype=np.int32) as shared:
        assert shared.array.shape == (3, 4) and shared.array.dtype == np.int32
        assert not shared.array.any()
        assert shared.name.startswith("labkit_") and shared.owner


def test_from_array_copies_the_data_once_and_then_stands_alone():
    source = np.arange(6.0).reshape(2, 3)
    with SharedArray.from_array(source) as shared:
        source[:] = -1
        assert shared.array.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_the_handle_is_a_small_frozen_record_of_name_shape_and_dtype():
    with SharedArray.create(5, dtype="uint8") as shared:
        handle = shared.handle
        assert handle == SharedArrayHandle(shared.name, (5,), "|u1")
        assert len(pickle.dumps(handle)) < 200
        with pytest.raises(AttributeError):
            handle.name = "other"


def test_pickling_a_shared_array_sends_its_handle_and_attaches_on_arrival():
    with SharedArray.create(3) as shared:
        copy = pickle.loads(pickle.dumps(shared))
        try:
            assert not copy.owner
            copy.array[1] = 42.0
            assert shared.array[1] == 42.0
        finally:
            copy.close()


def test_object_dtypes_are_refused_because_pointers_mean_nothing_elsewhere():
    with pytest.raises(ConfigurationError, match="Python objects"):
        SharedArray.create(3, dtype=object)


# --------------------------------------------------------------------------------------------
# other processes


def test_workers_of_a_pool_write_into_the_array_and_the_parent_sees_it():
    with SharedArray.create((4, 3)) as shared:
        with WorkerPool("process", workers=2, start_method=FAST) as pool:
            list(pool.map(tasks.fill_row, [shared] * 4, range(4), [1.0, 2.0, 3.0, 4.0]))
        assert shared.array[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
        assert exists(shared)


def test_a_plain_spawned_process_writes_into_the_array_and_the_parent_sees_it():
    with SharedArray.create(5, dtype=np.int64) as shared:
        process = multiprocessing.get_context("spawn").Process(target=tasks.fill_by_handle,
                                                                 args=(shared.handle, 9))
        process.start()
        process.join(60)
        assert process.exitcode == 0
        assert shared.array.tolist() == [9] * 5


@linux_only
def test_workers_that_attach_and_exit_leave_the_segment_alone_and_print_no_warning(tmp_path):
    script = tmp_path / "attachers.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, os, subprocess, sys
        from labkit.pool import WorkerPool
        from labkit.shm import SharedArray

        def fill(handle):
            with SharedArray.attach(handle) as shared:
                shared.array[:] = 7

        def mark(shared, i):
            shared.array[i] += 1

        OTHER = '''
        import sys
        from labkit.shm import SharedArray, SharedArrayHandle
        shared = SharedArray.attach(SharedArrayHandle(sys.argv[1], (4,), "<i8"))
        shared.array[0] += 100
        '''

        if __name__ == "__main__":
            shared = SharedArray.create(4, dtype="int64")
            worker = multiprocessing.get_context("spawn").Process(target=fill, args=(shared.handle,))
            worker.start(); worker.join()
            with WorkerPool("process", workers=2, start_method="spawn") as pool:
                list(pool.map(mark, [shared] * 4, range(4)))
            # an unrelated interpreter, with a resource tracker of its own, attaches and exits
            subprocess.run([sys.executable, "-c", OTHER, shared.name], check=True)
            print(shared.array.tolist(), os.path.exists("/dev/shm/" + shared.name))
            shared.close()
            print(os.path.exists("/dev/shm/" + shared.name))
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[108, 8, 8, 8] True", "False"]
    assert result.stderr == ""  # no "leaked shared_memory objects", no tracker tracebacks


# --------------------------------------------------------------------------------------------
# letting go


@linux_only
def test_after_the_owner_closes_no_segment_remains():
    shared = SharedArray.create(10)
    assert exists(shared)
    shared.close()
    assert not exists(shared) and shared.closed


def test_closing_twice_is_harmless():
    shared = SharedArray.create(2)
    shared.close()
    shared.close()
    assert shared.closed


def test_an_attached_copy_closes_without_unlinking_and_may_not_unlink():
    with SharedArray.create(2) as shared:
        attached = SharedArray.attach(shared.handle)
        with pytest.raises(NotOwnerError, match="only the process that created"):
            attached.unlink()
        attached.close()
        assert SharedArray.attach(shared.handle).array.shape == (2,)


def test_closing_while_a_view_is_alive_explains_how_to_let_go_and_can_be_retried():
    shared = SharedArray.create(4)
    view = shared.array[1:]
    with pytest.raises(SharedArrayInUseError, match=r"del arr") as caught:
        shared.close()
    assert isinstance(caught.value, BufferError) and isinstance(caught.value, LabkitError)
    del view
    shared.close()
    assert shared.closed


def test_a_closed_shared_array_refuses_to_hand_out_its_array():
    shared = SharedArray.create(2)
    shared.close()
    with pytest.raises(SharedArrayClosedError):
        shared.array


def test_attaching_to_a_missing_segment_says_the_owner_probably_closed_it():
    shared = SharedArray.create(2)
    handle = shared.handle
    shared.close()
    with pytest.raises(SharedMemoryGoneError, match="owner has probably closed") as caught:
        SharedArray.attach(handle)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, LabkitError)


@linux_only
def test_an_owner_dropped_without_close_still_unlinks_its_segment():
    shared = SharedArray.create(3)
    path = SHM / shared.name
    del shared
    gc.collect()
    assert not path.exists()


@linux_only
def test_leftover_segments_are_those_whose_creator_is_gone_and_can_be_removed():
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout)
    dead = SHM / f"labkit_{dead_pid}_deadbeef"
    dead.write_bytes(b"\0" * 16)
    with SharedArray.create(2) as alive:
        try:
            found = leftover_segments()
            assert dead.name in found and alive.name not in found
            assert dead.name in remove_leftovers()
            assert not dead.exists() and exists(alive)
        finally:
            dead.unlink(missing_ok=True)


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


@linux_only
def test_a_segment_name_carries_its_creators_pid_and_pid_namespace():
    namespace = format(os.stat("/proc/self/ns/pid").st_ino, "x")
    with SharedArray.create(2) as shared:
        assert shared.name.startswith(f"labkit_{os.getpid()}_{namespace}_")


@linux_only
def test_creating_an_array_sweeps_dead_creators_of_its_namespace_but_never_another_namespaces():
    namespace = format(os.stat("/proc/self/ns/pid").st_ino, "x")
    dead_pid = _dead_pid()
    mine = SHM / f"labkit_{dead_pid}_{namespace}_deadbeef"
    # The same pid in another PID namespace (another container) may well be alive: not ours to judge.
    elsewhere = SHM / f"labkit_{dead_pid}_{int(namespace, 16) + 1:x}_deadbeef"
    for path in (mine, elsewhere):
        path.write_bytes(b"\0" * 16)
    try:
        with SharedArray.create(2) as alive:
            assert not mine.exists()
            assert elsewhere.exists() and exists(alive)
            assert elsewhere.name not in leftover_segments()
    finally:
        mine.unlink(missing_ok=True)
        elsewhere.unlink(missing_ok=True)
