"""The demo web app of the course, and the faulty and combined variants the labs import.

The demo app is a small tornado application (tornado ships with Jupyter) whose endpoints are the
experiments of the labs:

==============================  ==========================================================
``/fast``                       answers at once: the request whose latency shows the loop's health
``/primes?n=100000&mode=sync``  pure-Python CPU work (:func:`~labkit.workloads.count_primes`)
``/hash?cost=15&mode=sync``     GIL-releasing CPU work (:func:`~labkit.workloads.hash_password`)
``/sleep?ms=100``               an I/O wait that never blocks the loop
``/pid``                        which process answered
``/crash?code=1``               the process exits at once, as a crashing worker would
``/stats``                      requests served and the app's own loop-lag probe (``?reset=1``)
==============================  ==========================================================

``mode`` chooses where the heavy endpoints compute: ``sync`` right on the event loop (blocking it),
``thread`` in a thread pool, ``process`` in a process pool. Every response carries an
``X-Worker-Pid`` header.

Serve it with ``Cluster("labkit.demo:demo_app")``, ``labkit serve labkit.demo:demo_app`` or
``AppServer("labkit.demo:demo_app")``. Two variants live beside it:

- :mod:`labkit.demo.faulty` (lab 03): an app that crashes on purpose, and one that cannot boot;
- :mod:`labkit.demo.combined` (lab 07): a cluster worker with a process pool inside.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
from dataclasses import asdict

import tornado.web

from .. import _lifeline
from ..cores import usable_cores
from ..probe import LoopProbe
from ..workloads import DEFAULT_HASH_COST, DEFAULT_PRIMES_LIMIT, count_primes, hash_password

__all__ = ["demo_app", "DemoApp", "WorkerHandler"]

MODES = ("sync", "thread", "process")

# Largest sizes the demo endpoints accept, so a typo cannot tie up a worker for an hour.
MAX_PRIMES_LIMIT = 5_000_000
MAX_HASH_COST = 18
MAX_SLEEP_MS = 60_000


class WorkerHandler(tornado.web.RequestHandler):
    """What every labkit demo endpoint does: name its process, and read bounded integer arguments."""

    def set_default_headers(self) -> None:
        """Name the answering process in an ``X-Worker-Pid`` header."""
        self.set_header("X-Worker-Pid", str(os.getpid()))

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        """The query argument ``name`` as an integer in ``[low, high]``; a 400 answer otherwise."""
        raw = self.get_argument(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise tornado.web.HTTPError(400, reason=f"{name} must be an integer") from None
        if not low <= value <= high:
            raise tornado.web.HTTPError(400, reason=f"{name} must be between {low} and {high}")
        return value


class _Base(WorkerHandler):
    def prepare(self) -> None:
        self.application.settings["labkit_state"].requests += 1

    async def compute(self, function, *args):
        """Run ``function(*args)`` where ``?mode=`` says: on the loop, in a thread or a process."""
        mode = self.get_argument("mode", "sync")
        if mode not in MODES:
            raise tornado.web.HTTPError(400, reason=f"mode must be one of {', '.join(MODES)}")
        if mode == "sync":
            return function(*args)
        state = self.application.settings["labkit_state"]
        executor = state.threads() if mode == "thread" else state.processes()
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)


class _Fast(_Base):
    def get(self) -> None:
        self.write("ok\n")


class _Primes(_Base):
    async def get(self) -> None:
        limit = self.int_argument("n", DEFAULT_PRIMES_LIMIT, 0, MAX_PRIMES_LIMIT)
        self.write({"n": limit, "primes": await self.compute(count_primes, limit)})


class _Hash(_Base):
    async def get(self) -> None:
        cost = self.int_argument("cost", DEFAULT_HASH_COST, 1, MAX_HASH_COST)
        self.write({"cost": cost, "hash": await self.compute(hash_password, b"demo", b"labkit", cost)})


class _Sleep(_Base):
    async def get(self) -> None:
        ms = self.int_argument("ms", 100, 0, MAX_SLEEP_MS)
        await asyncio.sleep(ms / 1000)
        self.write({"slept_ms": ms})


class _Pid(_Base):
    def get(self) -> None:
        self.write({"pid": os.getpid()})


class _Crash(_Base):
    def get(self) -> None:
        code = self.int_argument("code", 1, 0, 255)
        os._exit(code)  # no response, no cleanup: exactly what a crash looks like to clients


class _Stats(_Base):
    def get(self) -> None:
        state = self.application.settings["labkit_state"]
        stats = state.probe.stats() if state.probe.running else None
        if self.get_argument("reset", "0") == "1" and state.probe.running:
            state.probe.reset()
        self.write({"pid": os.getpid(), "requests": state.requests, "lag": asdict(stats) if stats else None})


class _AppState:
    """What one demo app owns: its counters, its probe and its lazily made pools."""

    def __init__(self) -> None:
        self.requests = 0
        self.probe = LoopProbe()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None
        self.workers = usable_cores().usable

    def threads(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(4, self.workers), thread_name_prefix="demo-app"
            )
        return self._threads

    def processes(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._processes is None:
            # spawn everywhere: the server has threads, and fork with threads is unsafe (and
            # deprecated from Python 3.12). Pool workers watch this process and exit if it dies.
            self._processes = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lifeline.watch_parent,
                initargs=(os.getpid(),),
            )
        return self._processes

    def close(self) -> None:
        if self.probe.running:
            self.probe.stop()
        for pool in (self._threads, self._processes):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._threads = self._processes = None


class DemoApp(tornado.web.Application):
    """The course's demo application; see the module docstring for its endpoints.

    Besides tornado's ``Application`` it has the two hooks labkit's servers call on any app that
    defines them: ``labkit_start()`` once the loop runs, ``labkit_close()`` when serving ends.
    """

    def __init__(self, *, warm_processes: bool = False) -> None:
        super().__init__(
            [
                (r"/fast", _Fast),
                (r"/primes", _Primes),
                (r"/hash", _Hash),
                (r"/sleep", _Sleep),
                (r"/pid", _Pid),
                (r"/crash", _Crash),
                (r"/stats", _Stats),
            ],
            labkit_state=_AppState(),
            log_function=lambda handler: None,  # no access log: a child's output never reaches a cell
        )
        self.warm_processes = warm_processes

    @property
    def state(self) -> _AppState:
        """The app's counters, probe and pools."""
        return self.settings["labkit_state"]

    def labkit_start(self) -> None:
        """Start the app's loop probe (and warm its process pool, if asked)."""
        self.state.probe.start()
        if self.warm_processes:
            pool = self.state.processes()
            concurrent.futures.wait([pool.submit(count_primes, 10) for _ in range(self.state.workers)])

    def labkit_close(self) -> None:
        """Stop the probe and shut the pools down."""
        self.state.close()


def demo_app(warm_processes: bool = False) -> DemoApp:
    """Make the demo app. ``warm_processes`` starts its process pool before the first request."""
    return DemoApp(warm_processes=warm_processes)
