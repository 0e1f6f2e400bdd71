"""Tasks and troublesome objects for tests/test_pool_contract.py.

They live in an importable module, free of heavy imports, so that every executor (labkit's and
the standard library's) sends them by reference under every start method, and a spawned worker
imports only this.

The troublesome objects fail at one chosen moment of a task's trip: while being pickled
(``__reduce__`` itself raises, exits, or kills the process) or while being unpickled
(``__reduce__`` names a function that raises, exits, or kills the process when called).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from pathlib import Path


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def identity(value):
    return value


def pid() -> int:
    return os.getpid()


def pid_of(_: object) -> int:
    return os.getpid()


def sleep_then_return(seconds: float, value=None):
    time.sleep(seconds)
    return value


def wait_for_file(path: str, value=None, timeout: float = 30.0):
    """Block until ``path`` exists (the test's gate), then return ``value``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody created {path}")
        time.sleep(0.01)
    return value


def touch(path: str) -> str:
    Path(path).touch()
    return path


def raise_value_error(message: str = "bad value") -> None:
    raise ValueError(message)


def call_sys_exit(code: int = 3) -> None:
    sys.exit(code)


def die_hard() -> None:
    """End this process at once, as a crash in native code would (SIGKILL, no cleanup)."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # never reached: the signal is synchronous for the calling process


def raise_unpickling_error() -> None:
    raise pickle.UnpicklingError("this object refuses to be unpickled")


def make(cls: type):
    """Return a new ``cls()`` (so that the *result* is the troublesome object)."""
    return cls()


class Box:
    """A result that can be watched with a weak reference."""

    def __init__(self, value: int = 0) -> None:
        self.value = value


def make_box(value: int) -> Box:
    return Box(value)


class Holder:
    """An object whose bound method is a task: the executor must not keep it alive."""

    def method(self) -> str:
        return "called"


# --------------------------------------------------------------------------------------------
# objects that fail while being pickled


class ErrorAtPickle:
    def __reduce__(self):
        raise pickle.PicklingError("this object refuses to be pickled")


class ExitAtPickle:
    def __reduce__(self):
        sys.exit(7)


class CrashAtPickle:
    def __reduce__(self):
        die_hard()


# --------------------------------------------------------------------------------------------
# objects that fail while being unpickled


class ErrorAtUnpickle:
    def __reduce__(self):
        return raise_unpickling_error, ()


class ExitAtUnpickle:
    def __reduce__(self):
        return call_sys_exit, (7,)


class CrashAtUnpickle:
    def __reduce__(self):
        return die_hard, ()


# --------------------------------------------------------------------------------------------
# initializers

_inherited: dict = {}


def failing_initializer() -> None:
    raise RuntimeError("the initializer cannot find its database")


def keep_primitives(queue, lock, value, event) -> None:
    """Initializer: count this worker in ``value`` under ``lock``, signal ``event``, keep ``queue``."""
    with lock:
        value.value += 1
    event.set()
    _inherited["queue"] = queue


def put_in_inherited_queue(item: int) -> int:
    _inherited["queue"].put(item)
    return item


# --------------------------------------------------------------------------------------------
# a script that exits with work still pending

EXIT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import contract_tasks as tasks
from contract_tasks import make_executor

if __name__ == "__main__":
    executor = make_executor({factory!r}, workers=1)
    for path in {paths!r}:
        executor.submit(tasks.sleep_then_touch, 0.2, path)
    if {shutdown_without_wait!r}:
        executor.shutdown(wait=False)
    # and the script ends here, with tasks still running and pending
"""


def sleep_then_touch(seconds: float, path: str) -> str:
    time.sleep(seconds)
    return touch(path)


def make_executor(factory: tuple, workers: int = 1, **options):
    """Build one executor from a picklable description: ``(library, kind, start method)``.

    ``library`` is ``"labkit"`` or ``"stdlib"``; ``kind`` is ``"process"`` or ``"thread"``. The
    options (``initializer``, ``initargs``, ``max_tasks_per_child``) have the same names in both.
    """
    library, kind, method = factory
    if library == "labkit":
        from labkit.pool import WorkerPool

        if kind == "process":
            return WorkerPool("process", workers, start_method=method, **options)
        return WorkerPool("thread", workers, **options)
    if kind == "process":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), **options)
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, **options)


def big_bytes(nbytes: int) -> bytes:
    return b"\x07" * nbytes


# --------------------------------------------------------------------------------------------
# exceptions that fail on their way back


class TwoPartError(Exception):
    """Pickles, but cannot be rebuilt: unpickling calls ``TwoPartError(what)`` without ``why``."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(what)
        self.why = why


def raise_two_part_error() -> None:
    raise TwoPartError("broken", "on purpose")


class LockedError(Exception):
    """Holds a lock, so it cannot be pickled at all."""

    def __init__(self) -> None:
        import threading

        super().__init__("I hold a lock")
        self.lock = threading.Lock()


def raise_locked_error() -> None:
    raise LockedError()
