"""Checks of exercise 06: choose the worker count from the machine (lab 06, one core one worker).

Part 1 asks the student to read the machine, not to copy a formula: ``usable_cores_from(root)``
takes the root of a file tree (``/`` for the real machine, a temporary folder for a fake one),
reads this process's CPU affinity for real and the cgroup v2 ``cpu.max`` files under ``root``, and
returns the usable cores: the CPUs the process may run on, capped by the tightest quota on its
cgroup path, a fractional quota rounded up (labkit's rule, :mod:`labkit.cores`).

The check builds the machine shapes it wants. A quota is a fake tree (:func:`fake_tree`): the
files ``usable_cores(root=...)`` reads. An affinity is real: the check starts a process of its own
(a one-worker :class:`~labkit.pool.WorkerPool`), pins that process with ``os.sched_setaffinity``
and calls the student's function there. Nothing of labkit is patched, so the grader's tamper
evidence has nothing to flag, and the expected answer comes from labkit's own reader of the same
tree and the pinned process's own affinity.

Part 2 asks for a choice, not a rule of thumb: the student runs a CPU-bound sweep (processes) and
an I/O-bound sweep (threads that wait) and writes ``workers_for(sweep, kind)``, which picks a
worker count for each job *from what its sweep measured*. The check judges each choice against
that same sweep (it does not measure again), so a busy machine, which bends the curves, moves the
right answer and the check together:

- too few: the choice reaches less than :data:`ENOUGH` of the sweep's best throughput;
- too many: a smaller measured count already reached :data:`NEAR_BEST` of the best.

A count between two measured ones is credited with the throughput of the measured count below it
(the sweep showed no more than that), so gunicorn's ``2 x cores + 1`` for the I/O-bound job is
judged by what the sweep measured around it. The CPU-bound choice has one more rule, the lab's:
never more workers than usable cores, and one per usable core is always sound; only a smaller
count is judged against the sweep's points up to the usable cores. A shared machine can make a
CPU-bound sweep climb past the cores (the extra workers take CPU from other programs) or stay
flat from one worker on; neither then fails a sound choice (:func:`judge_cpu_choice`).

- ``ex06.usable_cores``: fake trees with quotas of 1.2 and 1 core, and a process pinned to one CPU.
- ``ex06.from_the_sweep``: ``workers_for(sweep, kind)`` on the student's own two sweeps, each count
  judged against the sweep it came from.
- ``ex06.other_machines`` (hidden): ``max 100000`` in a process pinned elsewhere, a quota below
  one core, a limit on a parent cgroup, a period that is not 100 ms.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labkit.cores import cgroup_cpu_quota
from labkit.measure import SweepResult

from ._values import plain
from .checks import Fail, register

__all__ = ["ENOUGH", "NEAR_BEST", "Shape", "VISIBLE", "HIDDEN", "fake_tree", "expected_usable", "judge_choice",
           "judge_cpu_choice"]

#: A worker count is "as good as the best" when its throughput is at least this share of the best:
#: a sweep on a busy machine wobbles by a few percent, so the last few percent are noise, not gain.
NEAR_BEST = 0.9

#: A choice that reaches less than this share of the sweep's best throughput leaves real
#: throughput on the table. Wider than :data:`NEAR_BEST`, so a frugal choice just below the
#: student's own 10% line still passes: the check asks for a sound reading, not one formula.
ENOUGH = 0.8


@dataclass(frozen=True)
class Shape:
    """One machine shape: a cgroup tree (``{path under the root: text}``) and a pinning.

    ``pin`` is ``None`` (the process keeps its affinity), ``"first"`` or ``"last"`` (pinned to
    that one of its CPUs).
    """

    name: str
    files: tuple[tuple[str, str], ...]
    pin: str | None = None

    def cpu_max(self) -> str:
        """The ``cpu.max`` files of the tree, as a student would read them."""
        found = [f"{path.removeprefix('sys/fs/cgroup/')} says {text.strip()!r}"
                 for path, text in self.files if path.endswith("cpu.max")]
        return "; ".join(found) if found else "no cpu.max file anywhere (no quota)"


def _top(cpu_max: str) -> tuple[tuple[str, str], ...]:
    return (("proc/self/cgroup", "0::/\n"), ("sys/fs/cgroup/cpu.max", f"{cpu_max}\n"))


#: The shapes the visible check tries.
VISIBLE = (
    Shape("a container whose quota is 1.2 cores", _top("120000 100000")),
    Shape("a process pinned to one CPU, without a quota", (("proc/self/cgroup", "0::/\n"),), pin="first"),
    Shape("a container whose quota is 1 core", _top("100000 100000")),
)

#: The hidden check's shapes: what a reader fitted to the visible ones gets wrong.
HIDDEN = (
    Shape("a process pinned to another CPU, in a cgroup whose cpu.max says there is no quota",
          _top("max 100000"), pin="last"),
    Shape("a container whose quota is below one core", _top("50000 100000")),
    Shape("a process whose limit sits on a parent cgroup, not on its own",
          (("proc/self/cgroup", "0::/batch.slice/job.scope\n"),
           ("sys/fs/cgroup/batch.slice/cpu.max", "100000 100000\n"),
           ("sys/fs/cgroup/batch.slice/job.scope/cpu.max", "max 100000\n"))),
    Shape("a container whose period is 50 ms, not 100 ms", _top("60000 50000")),
)


@contextlib.contextmanager
def fake_tree(files: tuple[tuple[str, str], ...]) -> Iterator[Path]:
    """A temporary root holding ``files`` (``(path under the root, text)`` pairs)."""
    with tempfile.TemporaryDirectory(prefix="labkit-ex06-") as tmp:
        root = Path(tmp)
        for relative, text in files:
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        yield root


def expected_usable(cpus: int, quota: float | None) -> int:
    """The usable cores of a process that may run on ``cpus`` CPUs under ``quota`` cores (or none)."""
    if quota is None:
        return max(1, cpus)
    return max(1, min(cpus, math.ceil(quota)))


# Names whose use means the function asks labkit for the answer this part asks the student to find.
_LABKIT_ANSWERS = frozenset({"usable_cores", "cgroup_cpu_quota", "resolve_workers"})


def _names_used(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def _asks_labkit(function) -> bool:
    """Whether ``function``'s code names one of labkit's answers and reaches it through labkit.

    A student's own helper that happens to be called ``usable_cores`` is not labkit's.
    """
    code = getattr(function, "__code__", None)
    namespace = getattr(function, "__globals__", None)
    if not isinstance(code, types.CodeType) or type(namespace) is not dict:
        return False
    names = _names_used(code)
    if not names & _LABKIT_ANSWERS:
        return False
    for name in names:
        value = dict.get(namespace, name)
        if isinstance(value, types.ModuleType) and value.__name__.partition(".")[0] == "labkit":
            return True
        if isinstance(value, types.FunctionType) and value.__module__.partition(".")[0] == "labkit":
            return True
    return False


def _require_reader(function) -> None:
    if not callable(function):
        raise Fail(f"pass your usable_cores_from function itself to the check, not {type(function).__name__}")
    if inspect.iscoroutinefunction(function):
        raise Fail("usable_cores_from should be a plain function (def usable_cores_from(root): ...), not async")
    if _asks_labkit(function):
        raise Fail("usable_cores_from asks labkit for the answer (usable_cores or cgroup_cpu_quota); this "
                   "part is about reading the facts yourself: the process's affinity and the cpu.max files under root")


def _call_pinned(function, pin: str | None, root: str) -> tuple[object, int, int]:
    """In the check's own worker process: pin it as asked, call the student's function, report.

    Returns the answer, the CPUs this process may run on while it ran, and the machine's CPUs.
    The worker's affinity is put back afterwards, so the next shape starts from the same CPUs.
    """
    before = os.sched_getaffinity(0)
    if pin is not None:
        cpus = sorted(before)
        os.sched_setaffinity(0, {cpus[0] if pin == "first" else cpus[-1]})
    try:
        allowed = len(os.sched_getaffinity(0))
        answer = function(root)
    finally:
        os.sched_setaffinity(0, before)
    return answer, allowed, os.cpu_count() or 1


def _run_shape(function, shape: Shape, pool) -> None:
    with fake_tree(shape.files) as root:
        quota = cgroup_cpu_quota(root=root)
        if shape.pin is None:
            answer = function(str(root))
            allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            logical = os.cpu_count() or 1
        else:
            answer, allowed, logical = pool.submit(_call_pinned, function, shape.pin, str(root)).result(timeout=60)
    value = plain(answer, "usable_cores_from(root)")
    if type(value) is not int:
        raise Fail(f"in {shape.name}, usable_cores_from(root) returned {value!r}; "
                   "return a whole number of cores (an int)")
    want = expected_usable(allowed, quota)
    if value != want:
        raise Fail(_explain(shape, value, allowed, logical, quota))


def _explain(shape: Shape, value: int, allowed: int, logical: int, quota: float | None) -> str:
    """Why ``value`` is not the usable cores of ``shape``: what was measured, which idea applies."""
    facts = (f"In {shape.name} (this process may run on {allowed} of the machine's {logical} CPUs; "
             f"{shape.cpu_max()}), usable_cores_from(root) returned {value}.")
    if value < 1:
        return (f"{facts} A process always has at least one core's worth of time to run on, however small "
                "its quota: never answer fewer than one worker.")
    if value > allowed and allowed < logical:
        return (f"{facts} That counts CPUs this process is not allowed to run on: os.cpu_count() counts the "
                "machine, while the affinity (os.sched_getaffinity(0)) lists the CPUs this process may use.")
    if value > allowed:
        return f"{facts} That is more than the CPUs this process may run on."
    if quota is None:
        return (f"{facts} No cpu.max on this process's cgroup path sets a number (a missing file or 'max' means "
                "no quota), so only the affinity limits it.")
    misread = _period_misread(shape, allowed)
    if misread is not None and value == misread:
        return (f"{facts} That reads the period as 100000: cpu.max gives '<quota> <period>', and the period is "
                "whatever the second number says (here it is not 100 ms). Divide by the period you read.")
    if value == allowed and math.ceil(quota) < allowed:
        if shape.files[0][1].strip() != "0::/":
            return (f"{facts} The quota was missed: /proc/self/cgroup names this process's cgroup, and a "
                    "cpu.max on that cgroup or on any cgroup above it (up to sys/fs/cgroup) limits the process; "
                    "the tightest one wins.")
        return (f"{facts} That is what the affinity alone allows, and the quota allows less: cpu.max gives "
                "'<quota> <period>' in microseconds, the CPU time the whole cgroup may use per period, so "
                "quota / period is how many cores' worth of time the process gets, however many CPUs it sees.")
    if value < quota:
        return (f"{facts} That rounds the quota down. The quota is {quota:g} cores' worth of time per period; "
                "this course rounds a fractional quota up, as labkit.usable_cores does: one more worker uses "
                "the fraction of a core that fewer workers would leave idle (lab 06, section 4).")
    return (f"{facts} Usable cores are the CPUs the process may run on, capped by quota / period from cpu.max "
            "rounded up; check how your function reads the period and the quota.")


def _period_misread(shape: Shape, allowed: int) -> int | None:
    """What a reader that divides by 100000 whatever the file says would answer, if that differs."""
    for path, text in shape.files:
        if path == "sys/fs/cgroup/cpu.max":
            quota, _, period = text.strip().partition(" ")
            if quota.isdigit() and period.isdigit() and int(period) != 100_000:
                return expected_usable(allowed, int(quota) / 100_000)
    return None


@register("ex06.usable_cores")
async def check_usable_cores(usable_cores_from) -> str:
    """The affinity read for real, the quota read from cpu.max and rounded up, on several shapes."""
    await _check_shapes(usable_cores_from, VISIBLE)
    return ("usable_cores_from() reads the process's affinity and the container's cpu.max, and rounds a "
            "fractional quota up.")


@register("ex06.other_machines")
async def check_other_machines(usable_cores_from) -> str:
    """Hidden: shapes the visible check does not try (no quota, under one core, a parent's limit)."""
    await _check_shapes(usable_cores_from, HIDDEN)
    return "usable_cores_from() is right on machine shapes it had not seen."


async def _check_shapes(function, shapes: tuple[Shape, ...]) -> None:
    import asyncio

    _require_reader(function)
    if "root" not in inspect.signature(function).parameters:
        raise Fail("usable_cores_from needs a `root` parameter: the check passes the folder of a fake machine "
                   "there, and your function reads root/proc/self/cgroup and root/sys/fs/cgroup below it")
    pinnable = hasattr(os, "sched_setaffinity")  # not on macOS: there the pinned shapes are skipped
    todo = [shape for shape in shapes if shape.pin is None or pinnable]

    def run_all() -> None:
        from labkit.pool import WorkerPool

        with contextlib.ExitStack() as stack:
            pool = None
            for shape in todo:
                if shape.pin is not None and pool is None:  # started on first need, stopped at the end
                    pool = stack.enter_context(WorkerPool("process", workers=1))
                _run_shape(function, shape, pool)

    await asyncio.to_thread(run_all)  # the kernel's loop stays free while a worker starts


# ------------------------------------------------------------------------------------ part 2


def _throughputs(result: object, what: str) -> tuple[dict[int, float], int, str]:
    if type(result) is not SweepResult:
        raise Fail(f"pass the {what} sweep itself (what labkit.measure.sweep returned), not "
                   f"{type(result).__name__}")
    points = plain([(p.workers, p.throughput) for p in result.points], f"the {what} sweep")
    table = {int(workers): float(rate) for workers, rate in points}
    return table, int(plain(result.usable, "the sweep's usable cores")), str(plain(result.kind, "the sweep's kind"))


def _rows(table: dict[int, float]) -> str:
    return ", ".join(f"{n}: {rate:.1f}" for n, rate in sorted(table.items()))


def judge_choice(table: dict[int, float], chosen: int, job: str) -> None:
    """Fail unless ``chosen`` workers is a sound reading of the sweep ``table`` ({workers: tasks/s})."""
    best = max(table.values())
    below = [n for n in table if n <= chosen]
    if not below:
        raise Fail(f"for the {job} job you chose {chosen} workers, fewer than any count your sweep measured "
                   f"({_rows(table)} tasks/s): choose from what the sweep showed")
    reached = table[max(below)]
    if reached < ENOUGH * best:
        measured = "" if chosen in table else f" (your sweep measured no more than that up to {chosen})"
        raise Fail(f"for the {job} job you chose {chosen} workers, which reach {reached:.1f} tasks/s{measured}: "
                   f"{reached / best:.0%} of the best your sweep measured ({_rows(table)} tasks/s). Read where "
                   "this curve stops climbing; a rule about cores does not say where that is for every kind of work.")
    smaller = [n for n in table if n < chosen and table[n] >= NEAR_BEST * best]
    if smaller:
        raise Fail(f"for the {job} job you chose {chosen} workers, but a smaller count your sweep measured "
                   f"already reached {max(table[n] for n in smaller) / best:.0%} of the best ({_rows(table)} "
                   "tasks/s). The last few percent are within a busy machine's noise, and every extra worker "
                   "costs memory and context switches: take the fewest workers that come close to the best.")


def judge_cpu_choice(table: dict[int, float], chosen: int, usable: int) -> None:
    """Fail unless ``chosen`` is a sound worker count for CPU-bound work, given its sweep ``table``.

    More workers than usable cores is never sound for work that computes: past them the workers take
    turns, and where a shared machine's sweep shows a gain there, that CPU time was taken from other
    programs (lab 06). One worker per usable core always is. Fewer are judged against the sweep's
    points up to the usable cores: a machine too busy to show any gain from a second worker makes
    one worker a sound reading too.
    """
    if chosen > usable:
        raise Fail(f"for the CPU-bound job you chose {chosen} workers, more than the usable cores. Past them, "
                   "processes that compute only take turns on the same cores; where a sweep on a shared machine "
                   "shows a gain there, that CPU time was taken from other programs, not added (lab 06, section 1).")
    if chosen < usable:
        judge_choice({n: rate for n, rate in table.items() if n <= usable}, chosen, "CPU-bound")


def _count(value: object, job: str) -> int:
    kind = "cpu" if job == "CPU-bound" else "io"
    chosen = plain(value, f"workers_for(sweep, {kind!r})")
    if type(chosen) is not int or chosen < 1:
        raise Fail(f"workers_for(sweep, {kind!r}) returned {chosen!r}; return a whole number of workers, at least 1")
    return chosen


@register("ex06.from_the_sweep")
async def check_from_the_sweep(workers_for, cpu_sweep, io_sweep) -> str:
    """``workers_for(sweep, kind)`` gives each job a worker count that is a sound reading of its sweep."""
    if not callable(workers_for) or inspect.iscoroutinefunction(workers_for):
        raise Fail("pass your workers_for function itself to the check: a plain function "
                   "def workers_for(result, kind) that returns a whole number")
    cpu, usable, cpu_kind = _throughputs(cpu_sweep, "CPU-bound")
    io, _, io_kind = _throughputs(io_sweep, "I/O-bound")
    if cpu_kind != "process":
        raise Fail(f"the CPU-bound sweep ran on {cpu_kind} pools; run it on processes (kind='process'), which "
                   "can compute on several cores at once")
    if io_kind != "thread":
        raise Fail(f"the I/O-bound sweep ran on {io_kind} pools; run it on threads (kind='thread'), which wait cheaply")
    if max(cpu) <= usable:
        raise Fail("the CPU-bound sweep stops at the usable cores; measure past them too, or you cannot see "
                   "where the curve flattens")
    if max(io) < 4 * usable:
        raise Fail("the I/O-bound sweep stops below four times the usable cores; measure further to see "
                   "whether waiting work cares about cores at all")
    judge_cpu_choice(cpu, _count(workers_for(cpu_sweep, "cpu"), "CPU-bound"), usable)
    judge_choice(io, _count(workers_for(io_sweep, "io"), "I/O-bound"), "I/O-bound")
    return ("workers_for() reads each job's own sweep: the CPU-bound count where that curve flattened, the "
            "I/O-bound one where waiting work stopped gaining.")
