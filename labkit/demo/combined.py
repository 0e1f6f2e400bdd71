"""A demo app for lab 07: a cluster for requests, a worker pool inside each process for heavy work.

::

    Cluster (K processes, one event loop each)       inside each cluster process
    ──────────────────────────────────────────       ───────────────────────────────────────
    worker 1 ── /fast, /pid, /memory: on the loop    WorkerPool("process", workers=M)
             └─ /primes, /hash: awaited from ──────▶ pool worker 1 .. M: the heavy part
    worker 2 ── same                                 its own M pool workers
    ...
    K x M pool processes in all, plus the K loops: more than the cores is oversubscription.

Start it with ``Cluster("labkit.demo.combined:combined_app", workers=K, options={"pool_workers": M})``.
The pool starts (and warms) when the worker's loop starts, so the first heavy request pays no
process start-up; it stops when the worker stops, so no pool process outlives its cluster.
"""

from __future__ import annotations

import asyncio
import os

import psutil
import tornado.web

from ..pool import WorkerPool
from ..workloads import count_primes, hash_password
from . import WorkerHandler

__all__ = ["combined_app", "CombinedApp"]

# Largest sizes the heavy endpoints accept, so a typo cannot tie up a pool for minutes.
MAX_PRIMES_LIMIT = 2_000_000
MAX_HASH_COST = 18


def _memory_of(pid: int) -> int:
    """Private memory (USS) of one process in bytes, or its RSS where USS is not available."""
    proc = psutil.Process(pid)
    try:
        return proc.memory_full_info().uss
    except (psutil.AccessDenied, AttributeError):
        return proc.memory_info().rss


class _Base(WorkerHandler):
    application: CombinedApp  # tornado sets it; these handlers are only routed by CombinedApp

    async def offload(self, function, *args):
        """Run ``function(*args)`` on this process's worker pool; the loop only awaits."""
        pool = self.application.pool
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)


class _Fast(_Base):
    def get(self) -> None:
        self.write("ok\n")


class _Primes(_Base):
    async def get(self) -> None:
        limit = self.int_argument("n", 30_000, 0, MAX_PRIMES_LIMIT)
        self.write({"n": limit, "primes": await self.offload(count_primes, limit)})


class _Hash(_Base):
    async def get(self) -> None:
        cost = self.int_argument("cost", 14, 1, MAX_HASH_COST)
        self.write({"cost": cost, "hash": await self.offload(hash_password, b"demo", b"labkit", cost)})


class _Pid(_Base):
    def get(self) -> None:
        self.write({"pid": os.getpid(), "pool_pids": self.application.pool_pids()})


class _Memory(_Base):
    def get(self) -> None:
        """Private memory of this process and of each of its pool's workers, in bytes."""
        app = self.application
        self.write({"loop_process": _memory_of(os.getpid()),
                    "pool_processes": [_memory_of(pid) for pid in app.pool_pids()]})


class CombinedApp(tornado.web.Application):
    """Endpoints ``/fast``, ``/primes?n=``, ``/hash?cost=``, ``/pid``, ``/memory``; heavy work on a pool."""

    def __init__(self, pool_workers: int = 1) -> None:
        if isinstance(pool_workers, bool) or not isinstance(pool_workers, int) or pool_workers < 1:
            raise ValueError(f"pool_workers must be a positive integer, got {pool_workers!r}")
        super().__init__(
            [(r"/fast", _Fast), (r"/primes", _Primes), (r"/hash", _Hash), (r"/pid", _Pid), (r"/memory", _Memory)],
            log_function=lambda handler: None,  # no access log: a child's output never reaches a cell
        )
        self.pool_workers = pool_workers
        self.pool: WorkerPool | None = None

    def pool_pids(self) -> list[int]:
        """The pids of this worker's pool processes (none before the pool starts)."""
        if self.pool is None:
            return []
        return [w.pid for w in self.pool.stats().workers if w.pid is not None]

    def labkit_start(self) -> None:
        """Start the pool and every one of its workers before the first request."""
        self.pool = WorkerPool("process", workers=self.pool_workers)
        list(self.pool.map(count_primes, [10] * self.pool_workers))

    def labkit_close(self) -> None:
        """Stop the pool: running heavy requests are cut off, no pool process survives."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None


def combined_app(pool_workers: int = 1) -> CombinedApp:
    """Make the lab 07 app with a process pool of ``pool_workers`` workers in each cluster process."""
    return CombinedApp(pool_workers=pool_workers)
