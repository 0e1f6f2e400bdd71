"""Checks of exercise 08: a batch job on a Dask cluster (lab 08, beyond one machine).

The student writes ``run_batch(client, fn, data, items)``: the list ``[fn(data, item) for item in
items]``, computed by the workers of the Dask cluster behind ``client``. ``data`` is one large
array (16 MB); each item reads a stretch of it that the item picks, so every task needs all of it,
and one item computes for about a millisecond (:func:`near`). Each check starts a cluster of its own (a
:class:`~labkit.dask_cluster.DaskCluster`, so it controls every process), hands the student a
client of it, and judges by measurement what the batch did there::

    kernel: run_batch(client, fn, data, items) ── tasks, data ──▶ scheduler ──▶ workers
                                                                  │
                                   the meter, a scheduler plugin: ┘
                                   - the bytes inside each task as it arrives (update_graph)
                                   - the bytes of every scatter (the scheduler's handlers)
                                   - each finished task's compute time (transition)

The meter lives in the scheduler process, which the check started: the student's code in the
kernel never touches it, and what it weighs does not depend on how fast anything ran.

Dask's ``pure=True`` default (identical calls computed once) needs no check here: ``fn`` is pure
and no two chunks of distinct items are identical, so collapsing could only skip repeated work.
Data a batch puts in the workers' memory behind the scheduler's back (``client.run``) is not
weighed by the meter; ``ex08.survives`` shows what it costs: the replacement of a killed worker
starts without it.

- ``ex08.right``: the results equal the serial ones (``fn`` called in this kernel), in order.
- ``ex08.send_once``: the array entered the cluster once. Every copy that travels inside a task
  (an argument, or a function that uses it) and every copy sent as data is weighed; together
  they may come to at most :data:`COPIES_ALLOWED` times the array's bytes.
- ``ex08.grain``: every worker had a task to run (at least one task per worker), and the tasks
  are coarse enough to beat their own overhead: their median compute time, measured by the
  workers, is at least :data:`GRAIN` times what handing over an empty task costs on the same
  cluster, measured just before (lab 08's granularity rule). Both are measured under the same load,
  so the ratio holds on a busy machine; the trial is repeated up to three times
  (:func:`labkit.measure.best_of`).
- ``ex08.survives``: once the batch's first task has finished, worker 0 is killed (SIGKILL), and
  worker 1 is held (SIGSTOP) until worker 0's replacement has joined, so that the newcomer takes
  part of the batch whatever the timing. The results must still be the serial ones.
- ``ex08.three_workers`` (hidden): another array size, another item count and three workers:
  right results, the array sent once, and a task for every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from labkit.dask_cluster import DaskCluster
from labkit.measure import best_of

from ._values import plain
from .checks import Fail, register

__all__ = ["near", "make_data", "make_items", "CHECK_WORKERS", "COPIES_ALLOWED", "GRAIN", "WINDOW"]

#: Workers of the cluster the visible checks start: two "machines", as in lab 08.
CHECK_WORKERS = 2

#: How many times the array's bytes may enter the cluster in all (in tasks and as data). Once is
#: what it takes; the half leaves room for everything else a batch sends. Two tasks that each
#: carry the array already come to two.
COPIES_ALLOWED = 1.5

#: A task must compute for at least this many times the overhead of handing one over. Lab 08's
#: rule says ten for 90% efficiency; five (over 80%) leaves room for a machine whose load inflates
#: the overhead measurement more than the tasks.
GRAIN = 5

#: Values of the array one item reads (1 MB of float64).
WINDOW = 125_000

# The check's array: 2,000,000 float64 values (16 MB), and the items of the visible checks. One
# item takes about a millisecond, less than handing over a task costs (a few milliseconds): a
# task per item is mostly overhead, while a batch of 960 items is about a second of work.
_VALUES, _ITEMS = 2_000_000, 960
# The hidden check's array and items: other sizes, a count no worker number divides.
_HIDDEN_VALUES, _HIDDEN_ITEMS = 1_500_000, 397

# Empty tasks per overhead measurement, and how many measurements (the best counts).
_EMPTY_TASKS, _EMPTY_TRIES = 60, 2

# Longest wait for the batch's first finished task, and for a killed worker's replacement.
_FIRST_TASK_SECONDS, _REPLACEMENT_SECONDS = 60.0, 60.0

_METER = "labkit-ex08-meter"


def near(data: Any, item: float) -> int:
    """How many values of the stretch of ``data`` that ``item`` picks lie within 0.01 of it: one item's work.

    The stretch (:data:`WINDOW` values) starts at the fraction ``item`` of the array, so the items
    of a batch read all of it, and one item takes about a millisecond on a laptop core.
    """
    import numpy as np

    start = int(item * (len(data) - WINDOW)) if len(data) > WINDOW else 0
    stretch = data[start:start + WINDOW]
    return int(np.count_nonzero(np.abs(stretch - item) < 0.01))


def make_data(values: int = _VALUES, seed: int = 8) -> Any:
    """The check's large shared input: ``values`` random float64 numbers in [0, 1)."""
    import numpy as np

    return np.random.default_rng(seed).random(values)


def make_items(count: int = _ITEMS) -> list[float]:
    """The batch's items: ``count`` distinct floats spread over [0, 1)."""
    return [round((i + 0.5) / count, 6) for i in range(count)]


# ------------------------------------------------------------------------------ the meter


def _weigh(value: Any) -> int:
    """Bytes ``value`` pickles to, large buffers (numpy arrays) counted without being copied."""
    import cloudpickle

    buffers: list[int] = []
    head = cloudpickle.dumps(value, protocol=5, buffer_callback=lambda b: buffers.append(b.raw().nbytes))
    return len(head) + sum(buffers)


def _weigh_data(value: Any) -> int:
    """Bytes of one value of a scatter as the scheduler receives it (serialized frames, or the object)."""
    frames = getattr(value, "frames", None)
    if frames is not None:
        return sum(memoryview(frame).nbytes for frame in frames)
    from dask.sizeof import sizeof

    return int(sizeof(value))


def _make_meter() -> Any:
    """The scheduler plugin that weighs what a batch sends (built on use: distributed loads then)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Meter(SchedulerPlugin):
        """Weighs tasks and scattered data as they reach the scheduler; times finished tasks."""

        name = _METER

        def __init__(self) -> None:
            self.reset()

        def reset(self) -> None:
            self.task_bytes = 0
            self.tasks = 0
            self.data_bytes = 0
            self.computes: list[float] = []

        async def start(self, scheduler: Any) -> None:
            # Scattered data never enters a graph: it reaches the scheduler through these two
            # handlers (through the scheduler, or straight to workers and then announced).
            for op in ("scatter", "update_data"):
                scheduler.handlers[op] = self._counting(op, scheduler.handlers[op])

        def _counting(self, op: str, handler: Callable[..., Any]) -> Callable[..., Any]:
            def counted(*args: Any, **kwargs: Any) -> Any:
                if op == "scatter":
                    self.data_bytes += sum(_weigh_data(v) for v in (kwargs.get("data") or {}).values())
                elif kwargs.get("client"):  # announced by a client, not by a task that scattered
                    self.data_bytes += sum(max(0, int(n)) for n in (kwargs.get("nbytes") or {}).values())
                return handler(*args, **kwargs)

            return counted

        def update_graph(self, scheduler: Any, *, tasks: Sequence[Any] = (), **kwargs: Any) -> None:
            for key in tasks:
                state = scheduler.tasks.get(key)
                spec = getattr(state, "run_spec", None)
                if spec is not None:
                    self.tasks += 1
                    self.task_bytes += _weigh(spec)

        def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
            if start == "processing" and finish == "memory":
                for part in kwargs.get("startstops") or ():
                    if part.get("action") == "compute":
                        self.computes.append(float(part["stop"]) - float(part["start"]))

    return Meter()


def _meter_reset(dask_scheduler: Any) -> None:
    dask_scheduler.plugins[_METER].reset()


def _meter_read(dask_scheduler: Any) -> dict[str, Any]:
    meter = dask_scheduler.plugins[_METER]
    return {"task_bytes": meter.task_bytes, "tasks": meter.tasks, "data_bytes": meter.data_bytes,
            "computes": list(meter.computes)}


def _nothing(_: Any) -> None:
    return None


# ------------------------------------------------------------------------------ running a batch


class _Bench:
    """A cluster the check started, a metered scheduler, and a client to lend the student."""

    def __init__(self, workers: int) -> None:
        from distributed import Client

        self.cluster = DaskCluster(workers=workers)
        try:
            self.watcher = self.cluster.client()  # the check's own client
            self.watcher.register_plugin(_make_meter())
            self.client = Client(self.cluster.address, set_as_default=False)  # the student's
        except BaseException:
            self.cluster.close()
            raise

    def meter(self) -> dict[str, Any]:
        return self.watcher.run_on_scheduler(_meter_read)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=5)
        self.cluster.close()


@contextlib.asynccontextmanager
async def _bench(workers: int):
    bench = await asyncio.to_thread(_Bench, workers)
    try:
        yield bench
    finally:
        await asyncio.to_thread(bench.close)



def _preflight(run_batch: Any) -> None:
    if not callable(run_batch) or asyncio.iscoroutinefunction(run_batch):
        raise Fail("pass your run_batch function itself (a plain def) to the check")


async def _batch(bench: _Bench, run_batch: Callable[..., Any], data: Any, items: list[float]) -> list[int]:
    """Run the student's batch on the bench's client; its answer, as plain values."""
    await asyncio.to_thread(bench.watcher.run_on_scheduler, _meter_reset)
    answer = await asyncio.to_thread(run_batch, bench.client, near, data, list(items))
    return plain(answer, "run_batch(client, fn, data, items)")


def _compare(answer: Any, expected: list[int], when: str = "") -> None:
    if type(answer) not in (list, tuple):
        raise Fail(f"run_batch returned {type(answer).__name__}{when}; return a list with one result per item, "
                   "in the items' order")
    answer = list(answer)
    if len(answer) != len(expected):
        raise Fail(f"run_batch returned {len(answer)} results for {len(expected)} items{when}: one result per item, "
                   "in the items' order")
    wrong = [i for i, (got, want) in enumerate(zip(answer, expected)) if got != want]
    if wrong:
        first = wrong[0]
        if sorted(map(repr, answer)) == sorted(map(repr, expected)):
            raise Fail(f"run_batch returned the right results in the wrong order{when} (item {first} got another "
                       "item's result): keep the items' order")
        raise Fail(f"{len(wrong)} of {len(expected)} results differ from fn(data, item){when}; the first is item "
                   f"{first}: expected {expected[first]!r}, got {answer[first]!r}")


def _serial(data: Any, items: list[float]) -> list[int]:
    return [near(data, item) for item in items]


def _reference(data: Any, items: list[float]) -> asyncio.Future:
    """The serial results, computed in a thread while the check starts its cluster."""
    return asyncio.ensure_future(asyncio.to_thread(_serial, data, items))


def _copies_message(meter: dict[str, Any], nbytes: int) -> str | None:
    sent = meter["task_bytes"] + meter["data_bytes"]
    copies = sent / nbytes
    if copies <= COPIES_ALLOWED:
        return None
    mb = 1e6
    return (f"the {nbytes / mb:.0f} MB array entered the cluster {copies:.1f} times: {meter['task_bytes'] / mb:.0f} MB "
            f"inside your {meter['tasks']} task(s) and {meter['data_bytes'] / mb:.0f} MB sent as data. Each task "
            "that carries the array (as an argument, or in a function that uses it) takes a copy of its own "
            "through the scheduler, and so does each sending of it (lab 08, section 5). How can the workers get "
            "it once, and the tasks only a small reference to it?")


# ------------------------------------------------------------------------------ right


@register("ex08.right")
async def check_right(run_batch) -> str:
    """run_batch(client, fn, data, items) gives fn(data, item) for every item, in order."""
    _preflight(run_batch)
    data, items = make_data(), make_items()
    reference = _reference(data, items)
    async with _bench(CHECK_WORKERS) as bench:
        answer = await _batch(bench, run_batch, data, items)
    _compare(answer, await reference)
    return "run_batch gives fn(data, item) for every item, in the items' order."


# ------------------------------------------------------------------------------ send_once


@register("ex08.send_once")
async def check_send_once(run_batch) -> str:
    """The large array entered the cluster once, not once per task."""
    _preflight(run_batch)
    data, items = make_data(), make_items()
    reference = _reference(data, items)
    async with _bench(CHECK_WORKERS) as bench:
        answer = await _batch(bench, run_batch, data, items)
        meter = await asyncio.to_thread(bench.meter)
    _compare(answer, await reference)
    problem = _copies_message(meter, data.nbytes)
    if problem:
        raise Fail(problem)
    return "the array entered the cluster once; the tasks carried only a reference to it."


# ------------------------------------------------------------------------------ grain


def _overhead(bench: _Bench, workers: int) -> float:
    """Seconds one worker spends handing over one empty task on this cluster (best of a few batches)."""
    best = float("inf")
    for _ in range(_EMPTY_TRIES):
        start = time.perf_counter()
        bench.watcher.gather(bench.watcher.map(_nothing, range(_EMPTY_TASKS), pure=False))
        best = min(best, time.perf_counter() - start)
    return best * workers / _EMPTY_TASKS


class _Grain:
    """One trial: the overhead of an empty task, and the student's tasks' compute times."""

    def __init__(self, overhead: float, computes: list[float], answer: Any) -> None:
        self.overhead, self.computes, self.answer = overhead, computes, answer
        self.median = statistics.median(computes) if computes else 0.0

    @property
    def coarse(self) -> bool:
        return self.median >= GRAIN * self.overhead


@register("ex08.grain")
async def check_grain(run_batch) -> str:
    """A task for every worker, each computing for several times what handing it over costs."""
    _preflight(run_batch)
    data, items = make_data(), make_items()
    reference = _reference(data, items)
    async with _bench(CHECK_WORKERS) as bench:
        expected = await reference

        async def trial() -> _Grain:
            overhead = await asyncio.to_thread(_overhead, bench, CHECK_WORKERS)
            answer = await _batch(bench, run_batch, data, items)
            meter = await asyncio.to_thread(bench.meter)
            return _Grain(overhead, meter["computes"], answer)

        first = await trial()
        _compare(first.answer, expected)
        tasks = len(first.computes)
        if tasks < CHECK_WORKERS:
            raise Fail(f"your batch ran as {tasks} task{'s' if tasks != 1 else ''} on a cluster of {CHECK_WORKERS} "
                       f"workers, so {CHECK_WORKERS - tasks} worker{'s' if CHECK_WORKERS - tasks != 1 else ''} had "
                       "nothing to compute: the scheduler spreads tasks, never the inside of one (lab 08, "
                       "section 2). How many tasks does it take for every worker to get a share?")
        run = first
        if not first.coarse:
            run, _ = await best_of(trial, lambda r: r.coarse, tries=2)
            _compare(run.answer, expected)
    if not run.coarse:
        share = run.overhead / (run.overhead + run.median) if run.median + run.overhead > 0 else 1.0
        raise Fail(f"your {len(run.computes)} tasks computed for {1e3 * run.median:.1f} ms each (median), while "
                   f"handing over one task costs about {1e3 * run.overhead:.1f} ms on this cluster (measured with "
                   f"empty tasks): about {share:.0%} of the workers' time went to overhead. Lab 08's granularity "
                   f"rule (section 3) asks for tasks that compute at least {GRAIN} times that long here. How many "
                   "items should one task handle?")
    return "every worker got tasks, and each task computed for many times what handing it over costs."


# ------------------------------------------------------------------------------ survives


def _wait_for_first_task(bench: _Bench, batch: asyncio.Future) -> bool:
    """Wait until a task of the batch has finished; False if the batch ended (or never sent one) first."""
    deadline = time.monotonic() + _FIRST_TASK_SECONDS
    while time.monotonic() < deadline and not batch.done():
        if bench.meter()["computes"]:
            return True
        time.sleep(0.02)
    return False


def _replacement_joined(bench: _Bench, old_address: str) -> bool:
    info = bench.watcher.scheduler_info(n_workers=-1)["workers"]
    return any(str(w.get("name")) == "worker-0" and address != old_address for address, w in info.items())


def _kill_and_hold(bench: _Bench) -> str:
    """SIGKILL worker 0; hold worker 1 stopped until worker 0's replacement has joined. What happened."""
    workers = {w.index: w for w in bench.cluster.workers()}
    bench.cluster.kill_worker(0)
    stop = getattr(signal, "SIGSTOP", None)  # POSIX only: elsewhere the newcomer joins when it can
    if stop is None:
        return "killed"
    held = workers[1].pid
    os.kill(held, stop)
    try:
        deadline = time.monotonic() + _REPLACEMENT_SECONDS
        while not _replacement_joined(bench, workers[0].address):
            if time.monotonic() > deadline:
                return "killed (no replacement in time)"
            time.sleep(0.05)
        time.sleep(0.5)  # let the newcomer take queued tasks before worker 1 competes again
    finally:
        os.kill(held, signal.SIGCONT)  # type: ignore[attr-defined,unused-ignore]  # POSIX, as SIGSTOP
    return "killed and replaced"


@register("ex08.survives")
async def check_survives(run_batch) -> str:
    """A worker SIGKILLed mid-batch (and its replacement given work): the results are still right."""
    _preflight(run_batch)
    data, items = make_data(), make_items()
    reference = _reference(data, items)
    async with _bench(CHECK_WORKERS) as bench:
        expected = await reference
        await asyncio.to_thread(bench.watcher.run_on_scheduler, _meter_reset)
        batch = asyncio.ensure_future(asyncio.to_thread(run_batch, bench.client, near, data, list(items)))
        try:
            started = await asyncio.to_thread(_wait_for_first_task, bench, batch)
            if started:
                await asyncio.to_thread(_kill_and_hold, bench)
            answer = await batch
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - the student's batch failed: say so in their terms
            raise Fail(f"after worker 0 was killed mid-batch, run_batch raised {type(exc).__name__}: "
                       f"{str(exc)[:300]}. " + _LOST_HINT) from None
        finally:
            if not batch.done():
                with contextlib.suppress(Exception):
                    await batch
    answer = plain(answer, "run_batch(client, fn, data, items)")
    try:
        _compare(answer, expected, when=" after worker 0 was killed mid-batch")
    except Fail as exc:
        raise Fail(f"{exc}. {_LOST_HINT}") from None
    if not started:
        raise Fail("no task of your batch finished on the cluster, so no worker could be killed in the middle of "
                   "it: run the batch's work as tasks on the client's workers")
    return "a worker was killed mid-batch, and the batch still gave every right result."


_LOST_HINT = ("A killed worker loses its memory, and its replacement starts empty; the scheduler reruns the lost "
              "tasks, and copies again only the data it knows about (lab 08, section 4). Does every task get "
              "what it needs from its arguments?")


# ------------------------------------------------------------------------------ three_workers (hidden)


@register("ex08.three_workers")
async def check_three_workers(run_batch) -> str:
    """Another array, another item count, three workers: right, sent once, a task for every worker."""
    _preflight(run_batch)
    workers = CHECK_WORKERS + 1
    data, items = make_data(_HIDDEN_VALUES, seed=3), make_items(_HIDDEN_ITEMS)
    reference = _reference(data, items)
    async with _bench(workers) as bench:
        answer = await _batch(bench, run_batch, data, items)
        meter = await asyncio.to_thread(bench.meter)
    _compare(answer, await reference, when=f" ({_HIDDEN_ITEMS} items on {workers} workers)")
    problem = _copies_message(meter, data.nbytes)
    if problem:
        raise Fail(f"on {workers} workers, {problem}")
    tasks = len(meter["computes"])
    if tasks < workers:
        raise Fail(f"on a cluster of {workers} workers your batch ran as {tasks} task{'s' if tasks != 1 else ''}: "
                   "does run_batch ask the client how many workers it has?")
    return "run_batch fits another array, another batch and another cluster size."
