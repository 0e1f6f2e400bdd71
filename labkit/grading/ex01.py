"""Checks of exercise 01: unblock a login service (lab 01, the event loop).

Each check runs the student's coroutine on the kernel's loop under a :class:`~labkit.LoopProbe`
and judges what it did to the loop, relative to how long the work took, so that a slow or busy
machine stretches both sides of the comparison alike. A run spoiled by another program is retried
(at most three runs in all) before a verdict is given.

Where the work ran is told by CPU time, never by wall time: hashing a password or counting primes
costs about the same CPU time on an idle machine and a busy one, and it shows up in the account of
the thread or process that did it. Each trial reads three accounts::

    the loop's own thread   time.thread_time()           the work ran on the loop (it blocked)
    this whole process      time.process_time()          the work ran in a thread of this kernel
    its child processes     psutil, live and reaped      the work ran in another process

and compares them with a reference: the same work timed with ``time.thread_time()`` in the check's
own thread, so that nothing else running in the kernel can inflate it. Before measuring, a check
waits until the kernel and its children are quiet (see :func:`_wait_until_quiet`): a hash an earlier
cell started and never awaited would otherwise be counted as the student's work.

- ``ex01.offload_hash``: ``login(password)`` returns the right scrypt hash, leaves the loop free,
  and hashes in this process: scrypt releases the GIL, so another process only adds costs.
- ``ex01.offload_primes``: ``count_report(limit)`` returns the right count, leaves the loop free,
  and computes in another process (a thread would share the GIL and one core with the loop).
- ``ex01.many_logins`` (hidden): several logins at once, each the right user's hash, the loop
  free throughout, the hashing in this process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import psutil

from labkit.measure import best_of
from labkit.probe import LoopProbe
from labkit.workloads import count_primes, hash_password

from ._values import plain
from .checks import Fail, register

__all__ = ["BLOCKED_SHARE", "BLOCKED_FLOOR", "IN_PROCESS_SHARE", "QUIET_CORES", "QUIET_SECONDS"]

#: The loop counts as blocked when its worst lag exceeds this share of the work's duration.
#: A blocked loop shows nearly 100%; a free one a few percent, even on a busy machine.
BLOCKED_SHARE = 0.25

#: ... and exceeds this many seconds: a lag this short is a busy machine's noise, not a block, and
#: without a floor an answer that returns at once (in microseconds) would count as blocking.
BLOCKED_FLOOR = 0.05

#: A thread, a process or a set of child processes counts as having done the work when it spent at
#: least this share of the CPU time the reference run needs. The one that did it spends about 100%
#: (a little more for a process that also unpickles), the others a few percent.
IN_PROCESS_SHARE = 0.5

#: The kernel counts as quiet when it and its children use less than this many cores while the
#: check sleeps. An idle kernel uses a few hundredths of a core (its heartbeat and output threads).
QUIET_CORES = 0.3

#: How long a check waits for the kernel to go quiet before it says what kept it busy. Work left
#: running by an earlier cell (a few un-awaited hashes) ends within seconds.
QUIET_SECONDS = 15.0

# Each look at the kernel's CPU use lasts this long: long enough to average over the scheduler's
# time slices, short enough that a quiet kernel costs the check a fifth of a second.
_QUIET_WINDOW = 0.2

# How often a look samples which threads are runnable: often enough that a thread that computes
# throughout is told from one that woke up once (a heartbeat), cheap enough to be unnoticed.
_QUIET_SAMPLES = 8

SALT = b"labkit-course-salt"

T = TypeVar("T")


# ------------------------------------------------------------------------------ measuring


def _children_cpu() -> tuple[float, dict[int, float]]:
    """CPU seconds used by this process's descendants: (total, per live descendant).

    The total adds the children this process has already reaped (the kernel keeps their account)
    to every live descendant's own time and that of the children it reaped, so a pool worker that
    exits during a measurement moves from one term to the other without being lost.
    """
    me = psutil.Process()
    own = me.cpu_times()
    total = own.children_user + own.children_system
    each: dict[int, float] = {}
    try:
        descendants = me.children(recursive=True)
    except psutil.Error:
        descendants = []
    for proc in descendants:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue  # ended meanwhile: its parent's account has it once it is reaped
        each[proc.pid] = times.user + times.system
        total += times.user + times.system + times.children_user + times.children_system
    return total, each


def _rss_mb(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None


def _runnable_threads(pids: list[int]) -> set[tuple[int, int]]:
    """The threads of ``pids`` that are running or waiting for a core right now, except this one.

    Read from ``/proc/PID/task/TID/stat`` (Linux): a thread that computes is in state ``R`` whether
    it holds a core or waits for one, so, unlike its CPU rate, this does not drop when other
    programs load the machine. Elsewhere the set is empty and the CPU rate decides alone.
    """
    me, found = (os.getpid(), threading.get_native_id()), set()
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/stat", encoding="ascii", errors="replace") as stat:
                    state = stat.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state == "R" and (pid, int(task)) != me:
                found.add((pid, int(task)))
    return found


async def _wait_until_quiet() -> None:
    """Return once this kernel and its children are quiet; fail if they stay busy too long.

    Work that an earlier cell started and never awaited (a hash in a thread, a count in a pool)
    goes on running in the background. Its CPU time would be counted as the student's, or inflate
    a reference, so the check lets it finish first, and says so when it does not. Quiet means: less
    than :data:`QUIET_CORES` of CPU used, and no other thread runnable in most of the samples taken
    meanwhile (on a loaded machine a busy thread gets little CPU, but it stays runnable).
    """
    deadline = time.monotonic() + QUIET_SECONDS
    while True:
        children_before, each = _children_cpu()
        pids = [os.getpid(), *each]
        here_before, start = time.process_time(), time.perf_counter()
        runnable: dict[tuple[int, int], int] = {}
        for _ in range(_QUIET_SAMPLES):
            await asyncio.sleep(_QUIET_WINDOW / _QUIET_SAMPLES)
            for thread in _runnable_threads(pids):
                runnable[thread] = runnable.get(thread, 0) + 1
        here, wall = time.process_time() - here_before, time.perf_counter() - start
        children = _children_cpu()[0] - children_before
        busy = sum(1 for seen in runnable.values() if seen > _QUIET_SAMPLES // 2)
        if here + children < QUIET_CORES * wall and not busy:
            return
        if time.monotonic() > deadline:
            raise Fail(
                f"before measuring, the check waited {QUIET_SECONDS:.0f} s for this kernel to go quiet, but work "
                f"started earlier kept {(here + children) / wall:.1f} cores busy ({here / wall:.1f} in this "
                f"kernel's threads, {children / wall:.1f} in its child processes; {busy} threads kept computing). "
                "Something an earlier cell or call started is still computing, perhaps a hash or a count whose "
                "result nobody awaited. Let it finish (or restart the kernel and run the cells again), then run "
                "this check again."
            )


def _reference(work: Callable[[], T]) -> tuple[T, float]:
    """Run ``work()`` in this thread: (its result, the CPU seconds this thread spent on it)."""
    cpu = time.thread_time()
    result = work()
    return result, time.thread_time() - cpu


@dataclass(frozen=True)
class _Run:
    """What one trial of the student's coroutine measured (times in seconds)."""

    result: object
    seconds: float  # wall time from the call to its result
    worst: float  # the loop's worst lag meanwhile
    loop_cpu: float  # CPU time of the loop's own thread
    here_cpu: float  # CPU time of this whole process, every thread
    children_cpu: float  # CPU time of its child processes
    busiest_child: int | None  # the child process that gained the most CPU time

    @property
    def free(self) -> bool:
        """Whether the loop kept running its timers while the work went on."""
        return self.worst < max(BLOCKED_SHARE * self.seconds, BLOCKED_FLOOR)


async def _under_probe(work: Callable[[], Awaitable[object]]) -> _Run:
    """Run ``work()`` under a probe, after the kernel went quiet, and read every CPU account."""
    await _wait_until_quiet()
    async with LoopProbe() as probe:
        await asyncio.sleep(0.03)
        children_before, each_before = _children_cpu()  # before the probe's window: it takes a moment
        probe.reset()
        loop_cpu, here_cpu, start = time.thread_time(), time.process_time(), time.perf_counter()
        result = await work()
        seconds = time.perf_counter() - start
        here_cpu, loop_cpu = time.process_time() - here_cpu, time.thread_time() - loop_cpu
        await asyncio.sleep(0.03)  # one more tick, so a block that just ended is recorded
        worst = max((lag for _, lag in probe.timeline()), default=0.0) / 1e3
    children_after, each_after = _children_cpu()
    gained = {pid: cpu - each_before.get(pid, 0.0) for pid, cpu in each_after.items()}
    busiest = max(gained, key=gained.__getitem__) if gained and max(gained.values()) > 0 else None
    return _Run(result, seconds, worst, loop_cpu, here_cpu, children_after - children_before, busiest)


async def _measure(work: Callable[[], Awaitable[object]]) -> _Run:
    """The best of up to three trials: the first one whose loop stayed free, or the last one."""
    run, _ = await best_of(lambda: _under_probe(work), lambda run: run.free)
    return run


# ------------------------------------------------------------------------------ judging


def _require_coroutine_function(function, name: str) -> None:
    if not callable(function):
        raise Fail(f"pass your {name} function itself to the check, not {type(function).__name__}")
    if not inspect.iscoroutinefunction(function):
        raise Fail(f"{name} must be an async function (async def {name}(...)), so the loop can await it")


def _unawaited(value: object) -> str | None:
    """What a forgotten ``await`` left in ``value`` (a future or a coroutine), said for a student."""
    if type(value) is types.CoroutineType:
        value.close()  # never started; closing it spares the student a "never awaited" warning
        return ("a coroutine: a coroutine (such as the one asyncio.to_thread() gives) does nothing until it is "
                "awaited, so no work was done at all")
    if asyncio.isfuture(value):
        return ("an asyncio Future: the work was handed over and started, but nothing awaited its result, so "
                "the call returned at once while the work went on in the background, its result unread")
    if isinstance(value, concurrent.futures.Future):
        return ("a concurrent.futures Future (what executor.submit() gives): the work started, but nothing waited "
                "for its result. The event loop cannot await that kind of future as it is, and .result() would "
                "block the loop; it has to become an asyncio future first")
    return None


def _check_awaited(value: object, what: str) -> None:
    left = _unawaited(value)
    if left is None and type(value) is list:
        left = next((found for found in map(_unawaited, list.__iter__(value)) if found), None)
    if left is not None:
        raise Fail(f"{what} returned {left}. Await it, so the coroutine returns the value the work computes.")


def _blocked_message(name: str, run: _Run, reference_cpu: float) -> str:
    """Why the loop was blocked: the work ran on the loop's thread, or the loop sat waiting for it."""
    head = (f"{name} still blocks the event loop: the loop's worst lag was {run.worst * 1e3:.0f} ms while {name} "
            f"took {run.seconds * 1e3:.0f} ms, and the loop's own thread spent {run.loop_cpu * 1e3:.0f} ms of CPU "
            f"time meanwhile (the work takes {reference_cpu * 1e3:.0f} ms). ")
    if run.loop_cpu >= IN_PROCESS_SHARE * reference_cpu:
        return head + ("The work ran on the loop's thread, so no other request could run until it ended. Hand it "
                       "to an executor and await the result, so the loop serves others meanwhile.")
    return head + ("So the work ran elsewhere, and the loop sat waiting for it without awaiting: a call such as "
                   "future.result(), time.sleep() or join() holds the whole loop until it returns. Await the "
                   "result instead, so the loop serves others while it waits.")


def _hashed_here(name: str, run: _Run, reference_cpu: float) -> None:
    """Fail unless the hashing's CPU time was spent in this process (scrypt releases the GIL)."""
    if run.here_cpu >= IN_PROCESS_SHARE * reference_cpu:
        return
    numbers = (f"this kernel spent {run.here_cpu * 1e3:.0f} ms of CPU time during {name} and its child processes "
               f"{run.children_cpu * 1e3:.0f} ms, for hashing that takes {reference_cpu * 1e3:.0f} ms")
    if run.children_cpu < IN_PROCESS_SHARE * reference_cpu:
        raise Fail(f"{name} returned the right hash, but no process computed it: {numbers}. A stored or cached "
                   "answer shows nothing; compute the hash on every call.")
    memory = _rss_mb(run.busiest_child) if run.busiest_child is not None else None
    worker = f" ({memory:.0f} MB for the one that hashed)" if memory is not None else ""
    raise Fail(
        f"{name} keeps the loop free, but the hashing ran in another process: {numbers}. scrypt runs in "
        "native code that releases the GIL, so it can use another core without leaving this process. Another "
        "process only adds costs: the arguments and the result are pickled and copied between processes, and "
        f"each worker holds a whole interpreter of its own{worker}."
    )


def _gil_idea() -> str:
    if getattr(sys, "_is_gil_enabled", lambda: True)():
        return ("On this Python (a build with a GIL, the default) counting primes is Python bytecode, which holds "
                "the GIL the whole time: in a thread of this process it takes turns with the event loop on one "
                "core. Pure-Python work gains a core only where it has a GIL of its own.")
    return ("This Python runs without a GIL, so a thread could count on another core here; on the default build, "
            "with a GIL, it would take turns with the event loop on one core, and the exercise asks for code that "
            "gains a core on both. Pure-Python work gains a core everywhere only where it has a GIL of its own.")


@register("ex01.offload_hash")
async def check_offload_hash(login, cost: int = 16) -> str:
    """login(password) returns hash_password(password, SALT, cost), keeps the loop free, hashes here."""
    _require_coroutine_function(login, "login")
    password = "correct horse battery staple"
    await _wait_until_quiet()
    expected, reference_cpu = _reference(lambda: hash_password(password, SALT, cost))

    run = await _measure(lambda: login(password))
    _check_awaited(run.result, "login(password)")
    result = plain(run.result, "login(password)")
    if expected != result:
        raise Fail(f"login(password) returned {str(result)[:40]!r}, which is not the hash of that password: it "
                   "must return what today's version returns (the scrypt hash with the exercise's SALT and "
                   "COST), only without blocking the loop")
    if not run.free:
        raise Fail(_blocked_message("login", run, reference_cpu))
    _hashed_here("login", run, reference_cpu)
    return "login() returns the right hash and the event loop stays free while it hashes."


@register("ex01.offload_primes")
async def check_offload_primes(count_report, limit: int = 150_000) -> str:
    """count_report(limit) returns count_primes(limit), keeps the loop free, runs in another process."""
    _require_coroutine_function(count_report, "count_report")
    await _wait_until_quiet()
    expected, reference_cpu = _reference(lambda: count_primes(limit))

    run = await _measure(lambda: count_report(limit))
    what = f"count_report({limit})"
    _check_awaited(run.result, what)
    result = plain(run.result, what)
    if expected != result:
        raise Fail(f"{what} returned {result!r}; there are {expected} primes below {limit}")
    if not run.free:
        raise Fail(_blocked_message("count_report", run, reference_cpu))
    if run.here_cpu >= IN_PROCESS_SHARE * reference_cpu:
        raise Fail(
            f"count_report keeps the loop free, but computed in this process: this kernel spent "
            f"{run.here_cpu * 1e3:.0f} ms of CPU time during the call (its child processes "
            f"{run.children_cpu * 1e3:.0f} ms), and counting the primes takes {reference_cpu * 1e3:.0f} ms. "
            + _gil_idea()
        )
    if run.children_cpu < IN_PROCESS_SHARE * reference_cpu:
        raise Fail(
            f"{what} returned the right count, but no process counted: this kernel spent {run.here_cpu * 1e3:.0f} ms "
            f"of CPU time during the call and its child processes {run.children_cpu * 1e3:.0f} ms, and counting "
            f"takes {reference_cpu * 1e3:.0f} ms. A stored or cached answer shows nothing; count on every call."
        )
    return "count_report() returns the right count, computed in another process, and the event loop stays free."


def _which_user(result: object, expected: list[str], users: int) -> str:
    """Why the list of concurrent logins is wrong, in words: whose hash each login returned."""
    if type(result) is not list or len(result) != users:
        return f"returned {result!r:.80}, not {users} hashes"
    wrong = []
    for i, got in enumerate(result):
        if got == expected[i]:
            continue
        if got in expected:
            wrong.append(f"user {i}'s login returned user {expected.index(got)}'s hash")
        else:
            wrong.append(f"user {i}'s login returned {str(got)[:20]!r}, no user's hash")
    return "; ".join(wrong)


@register("ex01.many_logins")
async def check_many_logins(login, cost: int = 16, users: int = 4) -> str:
    """Several concurrent logins all return their own hash while the loop stays free."""
    _require_coroutine_function(login, "login")
    passwords = [f"user-{i}-secret" for i in range(users)]
    await _wait_until_quiet()
    expected, reference_cpu = _reference(lambda: [hash_password(p, SALT, cost) for p in passwords])

    run = await _measure(lambda: asyncio.gather(*(login(p) for p in passwords)))
    what = f"login(...) for {users} users at once"
    _check_awaited(run.result, what)
    results = plain(run.result, what)
    if expected != results:
        raise Fail(f"with {users} logins running at once, {_which_user(results, expected, users)}. Each call must "
                   "hash its own password, whatever the other calls running beside it do: keep each call's "
                   "data in its own local variables and arguments, not in names the calls share.")
    if not run.free:
        raise Fail(_blocked_message(f"login ({users} calls at once)", run, reference_cpu))
    _hashed_here(f"login ({users} calls at once)", run, reference_cpu)
    return f"{users} logins at once all return the right hash, and the event loop stays free."
