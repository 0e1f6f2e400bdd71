"""Checks of exercise 02: choose workers and balancing for a given app (lab 02, cluster mode).

The student writes functions that return keyword arguments for :class:`~labkit.cluster.Cluster`.
Each check starts the cluster they describe, drives real load at it from a separate process, and
judges what it measured, never the core count printed on the box:

- ``ex02.cpu_service``: a CPU-heavy endpoint whose clients keep their connections open. The
  workers must cover every usable core without oversubscribing them, the balancing mode must
  spread kept-alive connections by design, and the measured speedup over a one-worker reference
  must reach 60% of the extra parallelism the machine delivered just before (minus a little for
  noise). A disturbed trial is repeated, three trials at most.
- ``ex02.io_service``: an endpoint that mostly waits. The cluster must reach most of the ideal
  rate (clients divided by the wait); and if it runs more than one worker, a one-worker cluster
  is measured too, and the answer fails if that single worker already reaches the same rate.
"""

from __future__ import annotations

import asyncio
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

from ._settings import settings_from
from .checks import Fail, register

__all__ = ["CPU_PATH", "IO_PATH", "IO_CLIENTS", "IO_WAIT", "SPEEDUP_SHARE", "IDEAL_SHARE", "judge_speedup"]

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

# Seconds of load per measurement: long enough for a stable rate, short enough for a quick check.
LOAD_SECONDS = 1.5

# Keyword arguments of Cluster that a settings function may not choose: the check decides what
# runs and where.
_FIXED = ("app", "host", "port", "options", "on_change")


def judge_speedup(speedup: float, delivered: float) -> bool:
    """Whether ``speedup`` over one worker is fair for ``delivered`` cores of parallelism."""
    return speedup >= 1 + SPEEDUP_SHARE * (delivered - 1) - NOISE


def _settings(function: Callable[[], dict], name: str) -> dict:
    settings = settings_from(function, name, example="{'workers': 2, 'balance': 'os'}", fixed=_FIXED,
                             yours="settings like workers and balance")
    if "workers" not in settings:
        raise Fail(f"{name}() does not say how many workers to run: add a 'workers' entry "
                   "('max', -1 or a number)")
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


@register("ex02.cpu_service")
async def check_cpu_service(cpu_service_settings) -> str:
    """The settings run one worker per usable core, spread kept-alive connections, and scale."""
    settings = _settings(cpu_service_settings, "cpu_service_settings")
    usable = usable_cores().usable
    workers = resolve_workers(settings["workers"])
    if workers < usable:
        raise Fail(f"{workers} worker{'s' if workers != 1 else ''} leave{'s' if workers == 1 else ''} "
                   f"{usable - workers} of this machine's {usable} usable cores idle, and every request of this "
                   "service keeps a core busy. Run one worker per usable core ('max').")
    if workers > 2 * usable:
        raise Fail(f"{workers} workers on {usable} usable cores: CPU-bound workers beyond one per core only "
                   "take turns on the same cores (and cost memory each). Run one per usable core ('max').")
    balance = settings.get("balance", DEFAULT_BALANCE)
    if balance == "os":
        raise Fail("balance='os' leaves the choice of worker to the kernel, which may hand every kept-alive "
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
    return ("cpu_service_settings() runs one worker per core and spreads the connections: the speedup over one "
            "worker matches the parallelism this machine delivered.")


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
