"""Task functions and fixtures shared by test_pool.py and test_shm.py.

The functions live in a small importable module (not in the test files) so that a worker started
with spawn or forkserver imports only this, not pytest and the test module; keep it free of
heavy imports. For functions that
are *not* importable, as in a notebook, see :func:`notebook_namespace`.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

START_METHODS = ["fork", "spawn", "forkserver"]

# The cheapest start method here, for tests whose point is not the start method.
_AVAILABLE = multiprocessing.get_all_start_methods()
FAST = "fork" if "fork" in _AVAILABLE else _AVAILABLE[0]

# What a notebook cell defines: module __main__, so pickle cannot find these by name and
# cloudpickle must send them by value.
NOTEBOOK_CELL = """
import math

OFFSET = 10

def hypotenuse(a, b):
    return round(math.hypot(a, b), 6) + OFFSET

shout = lambda word: word.upper() + "!"

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

def make_point(x):
    return Point(x, -x)
"""


def notebook_namespace() -> dict:
    """Run NOTEBOOK_CELL as a notebook kernel would: in a namespace called ``__main__``."""
    namespace = {"__name__": "__main__"}
    exec(compile(NOTEBOOK_CELL, "<notebook cell>", "exec"), namespace)
    return namespace


def start_multiprocessing_helpers() -> None:
    """Start multiprocessing's long-lived helper processes, if they are not running yet.

    Spawn and forkserver start a resource tracker (and forkserver its server) on first use, and
    keep them for the life of the process. Started inside a test, the leak guard would see them as
    that test's leftovers; started by a module fixture, they are part of the furniture.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    if "forkserver" in _AVAILABLE:
        from multiprocessing import forkserver

        forkserver.ensure_running()


# --------------------------------------------------------------------------------------------
# tasks


def square(x):
    return x * x


def add(a, b):
    return a + b


def pid_after(seconds=0.0):
    time.sleep(seconds)
    return os.getpid()


def sleep_then_return(seconds, value=None):
    time.sleep(seconds)
    return value


def wait_for_gate(gate, value=None, timeout=30.0):
    """Block until the file ``gate`` exists (the test opens it), then return ``value``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody opened {gate}")
        time.sleep(0.01)
    return value


def exit_abruptly_on(x, bad, code=3):
    if x == bad:
        os._exit(code)
    return x * 10


def kill_myself_on(x, bad):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(5)
    return x * 10


def raise_value_error(message):
    return _deeper(message)


def _deeper(message):
    raise ValueError(message)


def call_sys_exit(code):
    sys.exit(code)


_initialized_with = None


def remember(value):
    global _initialized_with
    _initialized_with = value


def remembered(_=None):
    return _initialized_with


def fail_to_initialize():
    raise RuntimeError("no database here")


def fill_row(shared, row, value):
    """Write ``value`` into row ``row`` of a SharedArray that arrived pickled (so attached)."""
    shared.array[row] = value
    return os.getpid()


def fill_by_handle(handle, value):
    """Attach by handle, fill, close: what a plain Process target does."""
    from labkit.shm import SharedArray

    with SharedArray.attach(handle) as shared:
        shared.array[:] = value
