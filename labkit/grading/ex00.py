"""Checks of exercise 00: how many cores may a process use? (lab 00, your machine)

The student writes ``usable_cores_of(logical, affinity, cpu_max)``: the usable cores of a process
on a machine described by three facts, the machine's logical CPU count, the set of CPUs the
process may run on (its affinity) and the text of its cgroup's ``cpu.max`` (``"<quota> <period>"``
in microseconds, or ``"max <period>"`` for no quota). The rule is labkit's
(:func:`labkit.cores.usable_cores`), stated in the exercise: the CPUs of the affinity, capped by
``quota / period`` rounded **up**, never less than one.

Nothing here runs anything or measures time: the function is pure, so the checks call it on
described machines and compare with :func:`expected_usable`.

- ``ex00.three_machines``: the exercise's laptop, container (``150000 100000``) and pinned process.
- ``ex00.more_machines`` (hidden): machines the exercise does not show, chosen so that an answer
  fitted to the three fails: a quota below one core, a quota of exactly two cores, a quota
  of 2.5 cores (Python's ``round`` gives 2), a period that is not 100 ms, a pinned process without
  a quota.

No failure message says which number to return: each one describes the machine, echoes the
student's answer and names the idea that was missed.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

from ._values import plain
from .checks import Fail, register

__all__ = ["Machine", "MACHINES", "MORE_MACHINES", "expected_usable", "quota_cores"]


@dataclass(frozen=True)
class Machine:
    """A described machine: what ``usable_cores_of`` is called with, and a name for messages."""

    name: str
    logical: int
    affinity: frozenset[int]
    cpu_max: str


#: The three machines of the exercise, as its notebook describes them.
MACHINES = (
    Machine("the laptop", 8, frozenset(range(8)), "max 100000"),
    Machine("the container", 32, frozenset(range(32)), "150000 100000"),
    Machine("the pinned process", 16, frozenset({2, 3, 5}), "400000 100000"),
)

#: The hidden check's machines.
MORE_MACHINES = (
    Machine("a container with a quota below one core", 4, frozenset(range(4)), "50000 100000"),
    Machine("a container with a quota of exactly two cores", 8, frozenset(range(8)), "200000 100000"),
    Machine("a container with a quota of two and a half cores", 4, frozenset(range(4)), "250000 100000"),
    Machine("a container whose period is 200 ms", 8, frozenset(range(8)), "300000 200000"),
    Machine("a process pinned to one CPU, with no quota", 64, frozenset({7}), "max 100000"),
)


def quota_cores(cpu_max: str) -> float | None:
    """Cores' worth of CPU time that ``cpu_max`` (``"<quota> <period>"``) allows; ``None`` for ``max``."""
    quota, period = cpu_max.split()
    if quota == "max":
        return None
    return int(quota) / int(period)


def expected_usable(machine: Machine) -> int:
    """labkit's rule: the affinity's CPUs (of the logical ones), capped by the quota rounded up, at least 1."""
    cpus = min(machine.logical, len(machine.affinity))
    quota = quota_cores(machine.cpu_max)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _explain(machine: Machine, value: int) -> str:
    """Why ``value`` is not the usable cores of ``machine``: the facts, the answer, the idea missed."""
    allowed = min(machine.logical, len(machine.affinity))
    quota = quota_cores(machine.cpu_max)
    facts = (f"For {machine.name} ({machine.logical} logical CPUs, an affinity of {len(machine.affinity)} "
             f"CPU{'s' if len(machine.affinity) != 1 else ''}, cpu.max {machine.cpu_max!r}), "
             f"usable_cores_of returned {value}.")
    if value < 1:
        return f"{facts} A process always gets some CPU time, however small its quota: the answer is never below one."
    if value > allowed and allowed < machine.logical:
        return (f"{facts} That counts CPUs outside the affinity: a pinned process may run only on the CPUs its "
                "affinity lists, whatever the machine has (os.cpu_count() counts the machine).")
    if value > allowed:
        return f"{facts} That is more CPUs than the process may run on."
    if quota is None:
        return (f"{facts} 'max' in cpu.max means there is no quota, so only the CPUs the process may run on "
                "limit it.")
    period = int(machine.cpu_max.split()[1])
    if period != 100_000 and value == expected_usable(
            Machine(machine.name, machine.logical, machine.affinity, f"{machine.cpu_max.split()[0]} 100000")):
        return (f"{facts} That divides the quota by 100000, but this cpu.max has another period: divide the "
                "quota by the period the file gives.")
    if value == allowed and math.ceil(quota) < allowed:
        return (f"{facts} That is what the affinity alone allows, and the quota allows less: quota / period is "
                "how many cores' worth of CPU time the cgroup gets per period, however many CPUs it sees.")
    if value < quota:
        return (f"{facts} That rounds a quota of {quota:g} cores' worth of time down. This exercise rounds a "
                "fractional quota up, as labkit.usable_cores does (lab 00): one more worker uses the fraction "
                "of a core that fewer workers would leave idle.")
    if value > quota and quota == int(quota):
        return (f"{facts} The quota is a whole {quota:g} cores here: nothing to round, so no extra worker. "
                "Round up only a fractional quota (math.ceil does both right).")
    return (f"{facts} The rule: the number of CPUs in the affinity, capped by quota / period rounded up, and "
            "never below one.")


def _require_function(function) -> None:
    if not callable(function):
        raise Fail(f"pass your usable_cores_of function itself to the check, not {type(function).__name__}")
    if inspect.iscoroutinefunction(function):
        raise Fail("usable_cores_of should be a plain function (def usable_cores_of(...)), not async: it only "
                   "does arithmetic")


def _check(function, machines: tuple[Machine, ...]) -> None:
    _require_function(function)
    for machine in machines:
        # A fresh set each call, so a function that changes its argument cannot change the next case.
        answer = function(machine.logical, set(machine.affinity), machine.cpu_max)
        value = plain(answer, f"usable_cores_of for {machine.name}")
        if type(value) is not int:
            raise Fail(f"for {machine.name}, usable_cores_of returned {value!r}; return a whole number of cores "
                       "(an int: math.ceil gives one)")
        if value != expected_usable(machine):
            raise Fail(_explain(machine, value))


@register("ex00.three_machines")
async def check_three_machines(usable_cores_of) -> str:
    """The laptop, the container and the pinned process of the exercise."""
    _check(usable_cores_of, MACHINES)
    return ("usable_cores_of() gives the usable cores of the laptop, the container and the pinned process: "
            "affinity, quota, rounding up.")


@register("ex00.more_machines")
async def check_more_machines(usable_cores_of) -> str:
    """Hidden: machines the exercise does not describe (quota below one core, whole quotas, other periods)."""
    _check(usable_cores_of, MORE_MACHINES)
    return "usable_cores_of() is right on machines it had not seen."
