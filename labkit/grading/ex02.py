"""Checks of exercise 02: choose workers and balancing for a given app (lab 02, cluster mode).

The student writes functions that return keyword arguments for :class:`~labkit.cluster.Cluster`.
Each check starts the cluster they describe, drives real load at it from a separate process, and
judges what it measured, never the core count printed on the box:

- ``ex02.cpu_service``: a CPU-heavy endpoint whose clients keep their connections open. The
  workers must match the usable cores exactly (fewer leave cores idle; more only take turns on
  the same cores), the balancing mode must spread kept-alive connections by design (round-robin
  or reuseport, not the kernel's choice), and the measured speedup over a one-worker reference
  must reach 60% of the extra parallelism the machine delivered just before (minus a little for
  noise). A disturbed trial is repeated, three trials at most. Too many workers are measured
  too, once, so the failure can show what they bought.
- ``ex02.io_service``: an endpoint that mostly waits. The cluster must reach most of the ideal
  rate (clients divided by the wait); and if it runs more than one worker, a one-worker cluster
  is measured too, and the answer fails if that single worker already reaches the same rate.
- ``ex02.other_machine`` (hidden): the same CPU service on another machine shape. The check calls
  ``cpu_service_settings()`` in a process pinned to one CPU (``os.sched_setaffinity``), where
  the usable cores are fewer, and the workers it asks for there must match the cores usable
  there. A count typed in from this machine, or read from the logical cores, does not follow.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from labkit.cluster import (
    DEFAULT_BALANCE,  # what a missing 'balance' means
    Cluster,
    resolve_workers,
)
from labkit.cores import measure_parallelism, usable_cores
from labkit.errors import ConfigurationError, ServerStartError
from labkit.load import LoadReport, run_load_async
from labkit.measure import best_of
from labkit.pool import WorkerPool

from ._settings import settings_from
from .checks import Fail, register

__all__ = ["CPU_PATH", "IO_PATH", "IO_CLIENTS", "IO_WAIT", "SPEEDUP_SHARE", "IDEAL_SHARE", "OVERSUBSCRIBED_MEASURED",
           "judge_speedup"]

APP = "labkit.demo:demo_app"

#: The CPU-heavy request: tens of milliseconds of pure Python on the worker's own loop.
CPU_PATH = "/primes?n=20000"

#: The waiting request, how many clients send it at once, and how long each waits (seconds).
IO_PATH, IO_CLIENTS, IO_WAIT = "/sleep?ms=100", 32, 0.1

#: Share of the *extra* delivered parallelism a cluster's speedup must reach (the course's 60%).
SPEEDUP_SHARE = 0.6

#: Slack for run-to-run noise in a throughput ratio, which is a few percent on a quiet machine.
NOISE = 0.05

#: Share of the ideal rate of waiting requests that counts as "served them all".
IDEAL_SHARE = 0.6

#: Up to this many workers per usable core, too many workers are started and measured before the
#: check fails them, so the message can show what they bought; beyond it they are refused unstarted
#: (a hundred interpreters "to be safe" would only fill the memory).
OVERSUBSCRIBED_MEASURED = 4

# Seconds of load per measurement: long enough for a stable rate, short enough for a quick check.
LOAD_SECONDS = 1.5

# Keyword arguments of Cluster that a settings function may not choose: the check decides what
# runs and where.
_FIXED = ("app", "host", "port", "options", "on_change")


def judge_speedup(speedup: float, delivered: float) -> bool:
    """Whether ``speedup`` over one worker is fair for ``delivered`` cores of parallelism."""
    return speedup >= 1 + SPEEDUP_SHARE * (delivered - 1) - NOISE


def _settings(function: Callable[[], dict], name: str) -> dict:
    settings = settings_from(function, name, example="{'workers': 3, 'balance': 'os'}", fixed=_FIXED,
                             yours="settings like workers and balance")
    if "workers" not in settings:
        raise Fail(f"{name}() does not say how many workers to run: add a 'workers' entry, in one of the forms "
                   "the exercise's introduction lists")
    try:
        resolve_workers(settings["workers"])
        Cluster(APP, **settings)
    except (ConfigurationError, TypeError) as exc:
        raise Fail(f"Cluster(**{name}()) is refused: {exc}") from None
    return settings


def _start(settings: dict) -> Cluster:
    try:
        return Cluster(APP, **settings).start()
    except ServerStartError as exc:
        raise Fail(f"the cluster did not start with your settings: {exc}") from None


def _shares(report: LoadReport) -> list[float]:
    total = sum(report.per_pid.values())
    return sorted((count / total for count in report.per_pid.values()), reverse=True) if total else []


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _idle_message(workers: int, usable: int) -> str:
    return (f"{_count(workers, 'worker')} on a machine where this process may use {_count(usable, 'core')}: every "
            "request of this service keeps a core busy for its whole duration, and a worker computes one request "
            f"at a time, so {usable - workers} of the usable cores "
            f"{'stays' if usable - workers == 1 else 'stay'} idle while requests wait in line")


def _oversubscribed_message(workers: int, usable: int, measured: tuple[float, LoadReport, LoadReport, int] | None
                            ) -> str:
    head = (f"{workers} workers on a machine where this process may use {_count(usable, 'core')}: every request of "
            "this service keeps a core busy for its whole duration, so workers beyond the cores take turns on them "
            "rather than compute at once. ")
    idea = ("A CPU-bound service gains at most one worker's rate per core that computes, however many workers "
            "wait; each worker beyond that holds a whole interpreter's memory and makes the cores switch between "
            "processes.")
    if measured is None:
        return head + idea
    delivered, one, many, rss = measured
    speedup = many.throughput / one.throughput if one.throughput else 0.0
    return head + (f"Measured: your cluster answered {many.throughput:.0f} requests/s, x{speedup:.2f} the "
                   f"{one.throughput:.0f}/s of one worker, while the machine delivered {delivered:.2f} cores, and its "
                   f"workers held {rss / 2**20:.0f} MB. ") + idea


@register("ex02.cpu_service")
async def check_cpu_service(cpu_service_settings) -> str:
    """The settings run one worker per usable core, spread kept-alive connections, and scale."""
    settings = _settings(cpu_service_settings, "cpu_service_settings")
    usable = usable_cores().usable
    workers = resolve_workers(settings["workers"])
    if workers < usable:
        raise Fail(_idle_message(workers, usable) + ".")
    if workers > OVERSUBSCRIBED_MEASURED * usable:
        raise Fail(_oversubscribed_message(workers, usable, None))
    balance = settings.get("balance", DEFAULT_BALANCE)
    if balance == "os":
        given = "" if "balance" in settings else " (what a missing 'balance' means on this system)"
        raise Fail(f"balance='os'{given} leaves the choice of worker to the kernel, which may hand every kept-alive "
                   "connection of a burst to one worker (lab 02, section 4): this service's clients keep their "
                   "connections open, so one core could do all the work. Choose a mode that spreads "
                   "connections by design.")
    connections = 4 * usable  # several per worker, so no worker waits for work

    with Cluster(APP, workers=1, balance="round-robin") as reference, _start(settings) as cluster:
        async def trial():
            delivered = (await asyncio.to_thread(measure_parallelism)).delivered
            one = await run_load_async(reference.url + CPU_PATH, concurrency=connections, duration=LOAD_SECONDS)
            many = await run_load_async(cluster.url + CPU_PATH, concurrency=connections, duration=LOAD_SECONDS)
            return delivered, one, many

        def fair(run) -> bool:
            delivered, one, many = run
            return one.throughput > 0 and many.failed == 0 and judge_speedup(many.throughput / one.throughput,
                                                                            delivered)

        if workers > usable:  # the verdict is known; one trial shows what the extra workers bought
            delivered, one, many = await trial()
            raise Fail(_oversubscribed_message(workers, usable, (delivered, one, many, cluster.stats().rss)))
        (delivered, one, many), passed = await best_of(trial, fair)
    if many.failed:
        raise Fail(f"{many.failed} of {many.requests} requests to your cluster failed ({many.errors}); "
                   "a cluster under steady load should answer every request")
    if not passed:
        speedup = many.throughput / one.throughput if one.throughput else 0.0
        split = ", ".join(f"{100 * share:.0f}%" for share in _shares(many))
        raise Fail(
            f"your cluster answered {many.throughput:.0f} requests/s, x{speedup:.2f} the {one.throughput:.0f}/s of one "
            f"worker, while the machine delivered {delivered:.2f} cores (three tries). The workers' shares of the "
            f"answers were {split}. A CPU-bound service should gain about one worker's rate per delivered core: "
            "check that every worker gets connections, and that nothing else was busy."
        )
    return ("cpu_service_settings() runs one worker per usable core and spreads the connections: the speedup over "
            "one worker matches the parallelism this machine delivered.")


def _workers_on_one_cpu(settings_function: Callable[[], object]) -> tuple[int, int, int, str]:
    """In a fresh process: pin it to one CPU, then (CPUs before, usable cores, workers asked, problem).

    Runs in the hidden check's worker process, never in the kernel: the pinning is that process's
    alone. ``problem`` is empty, or says why the settings could not be read there.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) > 1:
        os.sched_setaffinity(0, cpus[:1])
    usable = usable_cores().usable
    try:
        settings = _settings(settings_function, "cpu_service_settings")  # type: ignore[arg-type]
        return len(cpus), usable, resolve_workers(settings["workers"]), ""
    except Fail as exc:
        return len(cpus), usable, 0, str(exc)


@register("ex02.other_machine")
async def check_other_machine(cpu_service_settings) -> str:
    """On a machine shape with fewer usable cores, the CPU service's workers follow those cores."""
    _settings(cpu_service_settings, "cpu_service_settings")  # what is wrong here, the visible check says
    with WorkerPool("process", 1, start_method="spawn", timeout=60) as pool:
        cpus, usable, workers, problem = await asyncio.wrap_future(pool.submit(_workers_on_one_cpu,
                                                                               cpu_service_settings))
    shape = (f"on another machine shape (a process pinned to one of this machine's {_count(cpus, 'CPU')})" if cpus > 1
             else "on this machine (a smaller shape could not be made here)")
    if problem:
        raise Fail(f"{shape}, cpu_service_settings() failed: {problem}")
    if workers != usable:
        raise Fail(f"{shape}, cpu_service_settings() asked for {_count(workers, 'worker')}. The count must follow "
                   "the cores a cluster may use on the machine where it starts, not those of the machine it was "
                   "written on: " + (_idle_message(workers, usable) + "." if workers < usable
                                     else _oversubscribed_message(workers, usable, None)))
    return "cpu_service_settings() follows the usable cores of the machine it runs on."


@register("ex02.io_service")
async def check_io_service(io_service_settings) -> str:
    """The settings reach most of the ideal rate of waiting requests, with no worker to spare."""
    settings = _settings(io_service_settings, "io_service_settings")
    ideal = IO_CLIENTS / IO_WAIT
    with _start(settings) as cluster:
        report = await run_load_async(cluster.url + IO_PATH, concurrency=IO_CLIENTS, duration=LOAD_SECONDS)
        memory = cluster.stats().rss
        workers = cluster.workers
    if report.throughput < IDEAL_SHARE * ideal:
        raise Fail(f"your cluster answered {report.throughput:.0f} requests/s; {IO_CLIENTS} clients that each wait "
                   f"{1e3 * IO_WAIT:.0f} ms can ask for {ideal:.0f}/s. Make sure the workers start and serve "
                   f"({report.failed} requests failed).")
    if workers > 1:
        with Cluster(APP, workers=1) as single:
            alone = await run_load_async(single.url + IO_PATH, concurrency=IO_CLIENTS, duration=LOAD_SECONDS)
            memory_one = single.stats().rss
        if alone.throughput >= IDEAL_SHARE * ideal:
            raise Fail(
                f"one worker already answers {alone.throughput:.0f} requests/s ({100 * alone.throughput / ideal:.0f}% "
                f"of the ideal {ideal:.0f}/s), as your {workers} workers do ({report.throughput:.0f}/s): waiting "
                "requests overlap on one event loop. The extra workers only cost memory "
                f"({memory / 2**20:.0f} MB instead of {memory_one / 2**20:.0f} MB). Use the fewest that reach the rate."
            )
    return ("io_service_settings() serves the waiting requests at close to the ideal rate, without paying for "
            "workers it does not need.")
