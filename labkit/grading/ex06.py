"""Checks of exercise 06: choose the worker count from the machine (lab 06, one core one worker).

Nothing here is timed: the checks put the student's code on machines of known shape and compare
its answers with the rule the lab measured.

- ``ex06.choose_workers``: ``choose_workers(kind, root="/")`` gives one worker per usable core for
  ``"cpu"`` work and ``2 x usable + 1`` (gunicorn's advice for blocking workers) for ``"io"`` work.
  "Usable" is checked on three machines: this one as it is; this one with the process pinned to a
  single CPU (affinity, where the platform has it); and a fake container, a temporary folder
  holding the two files ``usable_cores(root=...)`` reads, with a CPU quota of one core.
- ``ex06.pick_workers``: ``pick_workers(throughput)`` picks, from a sweep's ``{workers: tasks per
  second}``, the smallest worker count within 10% of the best throughput. Checked on the
  exercise's table and on other shapes of curve (an I/O-bound one, a late plateau, unsorted).
- ``ex06.bad_kind`` (hidden): an unknown kind is refused with ``ValueError``, not guessed.
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

from labkit.cores import usable_cores

from ._values import plain
from .checks import Fail, register

__all__ = ["NEAR_BEST", "TABLES", "fake_container", "expected_pick"]

#: A worker count is "as good as the best" when its throughput is at least this share of the best:
#: sweeps on a busy machine wobble by a few percent, so the last few percent are noise, not gain.
NEAR_BEST = 0.9

#: Sweeps to read, as {workers: tasks per second}, with what each one teaches.
TABLES: dict[str, dict[int, float]] = {
    "the exercise's CPU-bound sweep": {1: 12.4, 2: 23.9, 4: 24.6, 8: 23.1},
    "an I/O-bound sweep (threads that wait)": {1: 19.8, 2: 39.7, 4: 79.4, 8: 157.9, 16: 312.5},
    "a 4-core machine whose curve bends early": {1: 10.0, 2: 19.0, 3: 27.5, 4: 30.0, 8: 30.5, 16: 29.0},
    "a sweep listed out of order": {8: 20.0, 1: 10.0, 4: 21.0, 2: 19.5},
}


def expected_pick(throughput: dict[int, float]) -> int:
    """The smallest worker count within :data:`NEAR_BEST` of the best throughput."""
    best = max(throughput.values())
    return min(n for n, rate in throughput.items() if rate >= NEAR_BEST * best)


@contextlib.contextmanager
def fake_container(quota_cores: float) -> Iterator[Path]:
    """A temporary root holding a cgroup v2 tree with a CPU quota of ``quota_cores``."""
    with tempfile.TemporaryDirectory(prefix="labkit-ex06-") as tmp:
        root = Path(tmp)
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/self/cgroup").write_text("0::/\n")
        (root / "sys/fs/cgroup").mkdir(parents=True)
        (root / "sys/fs/cgroup/cpu.max").write_text(f"{int(quota_cores * 100_000)} 100000\n")
        yield root


@contextlib.contextmanager
def _pinned_to_one_cpu() -> Iterator[bool]:
    """Pin this process to its first allowed CPU (yields False where that is impossible)."""
    me = psutil.Process()
    if not hasattr(me, "cpu_affinity"):
        yield False  # macOS
        return
    before = me.cpu_affinity()
    if len(before) < 2:
        yield False  # already one CPU: pinning would show nothing
        return
    me.cpu_affinity(before[:1])
    try:
        yield True
    finally:
        me.cpu_affinity(before)


def _require_function(function, name: str) -> None:
    if not callable(function):
        raise Fail(f"pass your {name} function itself to the check, not {type(function).__name__}")
    if inspect.iscoroutinefunction(function):
        raise Fail(f"{name} should be a plain function (def {name}(...)), not async: it only reads the machine")


def _answer(function, *args, **kwargs) -> int:
    value = plain(function(*args, **kwargs), f"choose_workers{args!r}")
    if type(value) is not int:
        raise Fail(f"choose_workers{args!r} returned {value!r}; return a whole number of workers (an int)")
    return value


def _compare(where: str, function, usable: int, **kwargs) -> None:
    """Both kinds on one machine shape: ``usable`` cores there."""
    cpu, io = _answer(function, "cpu", **kwargs), _answer(function, "io", **kwargs)
    if cpu != usable:
        hint = (" It looks like os.cpu_count(), which sees neither the quota nor the affinity: ask "
                "labkit.usable_cores(root=root).usable." if cpu == psutil.cpu_count() else "")
        raise Fail(f"{where}, {usable} cores are usable, but choose_workers('cpu') returned {cpu}: "
                   f"CPU-bound work wants one worker per usable core.{hint}")
    if io != 2 * usable + 1:
        raise Fail(f"{where}, {usable} cores are usable, and choose_workers('io') returned {io}; blocking "
                   f"workers spend most of their time waiting, so use gunicorn's 2 x cores + 1 = {2 * usable + 1}.")


@register("ex06.choose_workers")
async def check_choose_workers(choose_workers) -> str:
    """One worker per usable core for CPU work, 2 x usable + 1 for I/O; affinity and quota respected."""
    _require_function(choose_workers, "choose_workers")
    if "root" not in inspect.signature(choose_workers).parameters:
        raise Fail("choose_workers needs a `root` parameter (default \"/\") and must pass it on to "
                   "labkit.usable_cores(root=root): that is how the check builds a fake container")
    _compare("On this machine", choose_workers, usable_cores().usable)
    with fake_container(1.0) as root:
        _compare("In a container with a CPU quota of 1 core (cpu.max = '100000 100000')",
                 choose_workers, usable_cores(root=root).usable, root=str(root))
    with _pinned_to_one_cpu() as pinned:
        if pinned:
            _compare("With this process pinned to one CPU (its affinity)", choose_workers, usable_cores().usable)
    return "choose_workers() follows the usable cores: affinity and the container's quota included."


@register("ex06.pick_workers")
async def check_pick_workers(pick_workers, table: dict[int, float] | None = None) -> str:
    """The smallest worker count within 10% of the best throughput, on several sweeps."""
    if not callable(pick_workers):
        raise Fail(f"pass your pick_workers function itself to the check, not {type(pick_workers).__name__}")
    tables = dict(TABLES)
    if table is not None:
        tables = {"the table in this notebook": dict(table), **tables}
    for name, throughput in tables.items():
        chosen = plain(pick_workers(dict(throughput)), "pick_workers(table)")
        want = expected_pick(throughput)
        if want == chosen:
            continue
        best = max(throughput, key=lambda workers: throughput[workers])
        rows = ", ".join(f"{n}: {rate}" for n, rate in sorted(throughput.items()))
        if chosen not in throughput:
            raise Fail(f"for {name} ({rows} tasks/s) you returned {chosen!r}, which is not one of the measured "
                       "worker counts: return a key of the table")
        if chosen == best:
            reason = (f"{want} workers already reach {throughput[want] / throughput[best]:.0%} of the best; "
                      "the last few percent are within a busy machine's noise, and every extra worker costs "
                      "memory and context switches")
        elif throughput[chosen] < NEAR_BEST * throughput[best]:
            reason = (f"{chosen} workers give only {throughput[chosen] / throughput[best]:.0%} of the best "
                      f"({best} workers); choose among the counts within 10% of it")
        else:
            reason = f"{want} is a smaller count that is also within 10% of the best"
        raise Fail(f"for {name} ({rows} tasks/s) you picked {chosen}, the rule picks {want}: {reason}.")
    return "pick_workers() picks the smallest worker count within 10% of the best, on every sweep tried."


@register("ex06.bad_kind")
async def check_bad_kind(choose_workers) -> str:
    """An unknown kind of work raises ValueError instead of returning a guess."""
    _require_function(choose_workers, "choose_workers")
    try:
        value = choose_workers("gpu")
    except ValueError:
        return "choose_workers() refuses a kind of work it does not know, with ValueError."
    raise Fail(f"choose_workers('gpu') returned {value!r}; raise ValueError for a kind other than 'cpu' or 'io', "
               "so a typo cannot silently size a pool")
