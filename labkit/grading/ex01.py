"""Checks of exercise 01: unblock a login service (lab 01, the event loop).

Each check runs the student's coroutine on the kernel's loop under a :class:`~labkit.LoopProbe`
and judges what it did to the loop, relative to how long the work took, so that a slow or busy
machine stretches both sides of the comparison alike. A run spoiled by another program is retried
(at most three runs in all) before a verdict is given.

- ``ex01.offload_hash``: ``login(password)`` returns the right scrypt hash and leaves the loop free.
- ``ex01.offload_primes``: ``count_report(limit)`` returns the right count, leaves the loop free,
  and computes outside this process (a thread would share the GIL and one core with the loop).
  Which process did the work is told by CPU time, not by wall time: counting primes costs the same
  CPU time on an idle machine and a busy one, and it shows up in this process's account only if
  it ran here.
- ``ex01.many_logins`` (hidden): several logins at once, all right, the loop free throughout.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from labkit.measure import best_of
from labkit.probe import LoopProbe
from labkit.workloads import count_primes, hash_password

from ._values import plain
from .checks import Fail, register

__all__ = ["BLOCKED_SHARE", "IN_PROCESS_SHARE"]

#: The loop counts as blocked when its worst lag exceeds this share of the work's duration.
#: A blocked loop shows nearly 100%; a free one a few percent, even on a busy machine.
BLOCKED_SHARE = 0.25

#: The work counts as done in this process when this process spent at least this share of the
#: CPU time a reference run needs. A thread spends about 100%, a process pool a few percent.
IN_PROCESS_SHARE = 0.5

SALT = b"labkit-course-salt"


async def _under_probe(work: Callable[[], Awaitable[object]]) -> tuple[object, float, float, float]:
    """Run ``work()`` under a probe: (result, seconds, worst lag seconds, CPU seconds here)."""
    async with LoopProbe() as probe:
        await asyncio.sleep(0.03)
        probe.reset()
        cpu, start = time.process_time(), time.perf_counter()
        result = await work()
        seconds, cpu_here = time.perf_counter() - start, time.process_time() - cpu
        await asyncio.sleep(0.03)  # one more tick, so a block that just ended is recorded
        worst = max((lag for _, lag in probe.timeline()), default=0.0) / 1e3
    return result, seconds, worst, cpu_here


def _require_coroutine_function(function, name: str) -> None:
    if not callable(function):
        raise Fail(f"pass your {name} function itself to the check, not {type(function).__name__}")
    if not inspect.iscoroutinefunction(function):
        raise Fail(f"{name} must be an async function (async def {name}(...)), so the loop can await it")


def _blocked_message(name: str, worst: float, seconds: float) -> str:
    return (
        f"{name} still blocks the event loop: the loop's worst lag was {worst * 1e3:.0f} ms while "
        f"{name} took {seconds * 1e3:.0f} ms. Await the work in an executor "
        "(loop.run_in_executor) instead of calling it directly."
    )


@register("ex01.offload_hash")
async def check_offload_hash(login, cost: int = 16) -> str:
    """login(password) returns hash_password(password, SALT, cost) and keeps the loop free."""
    _require_coroutine_function(login, "login")
    password = "correct horse battery staple"
    expected = hash_password(password, SALT, cost)

    async def trial():
        return await _under_probe(lambda: login(password))

    (result, seconds, worst, _), free = await best_of(trial, lambda run: run[2] < BLOCKED_SHARE * run[1])
    result = plain(result, "login(password)")
    if expected != result:
        raise Fail(f"login returned {str(result)[:40]!r}, not the hash of the password: return "
                   f"labkit.hash_password(password, {SALT!r}, COST)")
    if not free:
        raise Fail(_blocked_message("login", worst, seconds))
    return "login() returns the right hash and the event loop stays free while it hashes."


@register("ex01.offload_primes")
async def check_offload_primes(count_report, limit: int = 150_000) -> str:
    """count_report(limit) returns count_primes(limit), keeps the loop free, runs in another process."""
    _require_coroutine_function(count_report, "count_report")
    cpu = time.process_time()
    expected = count_primes(limit)
    reference_cpu = time.process_time() - cpu

    async def trial():
        return await _under_probe(lambda: count_report(limit))

    (result, seconds, worst, cpu_here), free = await best_of(trial, lambda run: run[2] < BLOCKED_SHARE * run[1])
    result = plain(result, f"count_report({limit})")
    if expected != result:
        raise Fail(f"count_report({limit}) returned {result!r}; there are {expected} primes below {limit}")
    if not free:
        raise Fail(_blocked_message("count_report", worst, seconds))
    if cpu_here >= IN_PROCESS_SHARE * reference_cpu:
        raise Fail(
            f"count_report computed in this process: it used {cpu_here * 1e3:.0f} ms of this kernel's CPU "
            f"time, and counting the primes takes {reference_cpu * 1e3:.0f} ms. On this Python (a build with "
            "a GIL, the default) a thread shares the GIL with the loop, so pure-Python work gains no core: "
            "use the process pool."
        )
    return "count_report() returns the right count, in another process, and the event loop stays free."


@register("ex01.many_logins")
async def check_many_logins(login, cost: int = 16, users: int = 4) -> str:
    """Several concurrent logins all return their own hash while the loop stays free."""
    _require_coroutine_function(login, "login")
    passwords = [f"user-{i}-secret" for i in range(users)]
    expected = [hash_password(p, SALT, cost) for p in passwords]

    async def trial():
        return await _under_probe(lambda: asyncio.gather(*(login(p) for p in passwords)))

    (results, seconds, worst, _), free = await best_of(trial, lambda run: run[2] < BLOCKED_SHARE * run[1])
    if expected != plain(results, "asyncio.gather(login(...), ...)"):
        raise Fail("with several logins at once, some login returned another user's hash or a wrong one")
    if not free:
        raise Fail(_blocked_message(f"{users} concurrent logins", worst, seconds))
    return f"{users} logins at once all return the right hash, and the event loop stays free."
