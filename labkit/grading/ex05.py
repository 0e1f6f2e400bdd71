"""Checks of exercise 05: a parallel image filter on a shared array (lab 05, shared memory).

The student writes ``parallel_blur(image, radius, pool)``: the same result as
``labkit.blur(image, radius)``, computed by the pool's worker processes, each on a band of rows,
with the image and the result in shared memory. The checks hand it a real process pool wrapped in
a meter, :class:`MeteredPool`, which counts what every task and every result would pickle on its
way between processes. That makes "attached rather than copied" a measurement: a task that
carries the image weighs megabytes, a task that carries a :class:`~labkit.shm.SharedArray`
weighs about a hundred bytes (it pickles as its handle).

The meter also reads the CPU time each task spent in its worker, which makes "each worker blurs
its own band" a measurement too. All the tasks of one call together should do about the work of
one serial blur (plus a few halo rows per band), so a typical task does a fraction of one;
workers that each blur the whole image do a whole blur per task. The serial blur is timed in the
same tasks: right after the student's function returns,
the task blurs a whole reference photo of the same size and times that too, so both sides of the
comparison are measured in the same process, moments apart, under the same load (a busy machine
makes a blur's CPU time vary by half or more from one second to the next). Every worker blurs the
reference photo once first, as a warm-up.

The test images hold whole numbers (an 8-bit photo, 0 to 255), so every sum the box blur makes is
exact in floating point, and a correct banded blur equals the serial one bit for bit.

- ``ex05.exact``: the output equals the serial blur exactly, on an image whose height does not
  divide evenly between the workers.
- ``ex05.shared``: the work went through the pool, in at least one task per worker; the image
  and the result crossed between processes as handles, not as copies; and each task did its
  share of one blur's work: a typical task spent well under a whole serial blur's CPU time
  (:data:`MAX_TASK_WORK`), and no one task did nearly all of it (:data:`MAX_TASK_SHARE`).
- ``ex05.tidy``: no shared-memory segment of this process is left once ``parallel_blur`` returns.
- ``ex05.any_size`` (hidden): tiny images (fewer rows than workers), a radius wider than a band and
  radius 0 are right too, on a pool of :data:`HIDDEN_WORKERS` workers, more than any visible check
  lends, which a solution fitted to the visible checks does not expect: a mid-sized image must
  still reach every worker.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cloudpickle

from labkit.pool import WorkerPool
from labkit.shm import NAME_PREFIX, SHM_DIR
from labkit.workloads import blur, make_image

from .checks import Fail, register

__all__ = ["MeteredPool", "photo", "CHECK_WORKERS", "COPY_SHARE", "HIDDEN_WORKERS", "MAX_TASK_SHARE", "MAX_TASK_WORK",
           "SHARED_WORKERS"]

#: Workers of the pool the checks lend to ``parallel_blur``. Three, whatever the machine: these
#: checks judge correctness and traffic, not speed, and three bands give two seams to get right.
CHECK_WORKERS = 3

#: Workers of the pool ``ex05.shared`` lends. More than three, because it measures work: tasks
#: that each blur the whole image do one blur per task, so the more tasks, the clearer the excess
#: stands out of the noise of CPU time (see :data:`MAX_TASK_WORK`).
SHARED_WORKERS = 6

#: Workers of the pool the hidden check lends: more than any visible check's, so that a band count
#: fitted to the visible checks shows.
HIDDEN_WORKERS = 7

#: Tasks (and results) together may pickle to at most this share of the image's bytes. A task
#: with handles pickles to a few kilobytes (the function travels by value); a copy of the image
#: is 100% of it.
COPY_SHARE = 0.01

#: A typical task (the median) may spend at most this share of the CPU time of a serial blur of
#: the whole image, timed right after it in the same worker. With :data:`SHARED_WORKERS` bands or
#: more, a band's task spends about a sixth or less (a little more for the halo, and for attaching
#: the shared memory); a task that blurs the whole image spends about one whole blur. Seen on a busy
#: 2-core machine (load 8 to 11): medians of 0.16 for six bands and 0.04 for 48; 0.79 for six
#: whole-image tasks (single tasks from 0.49 to 1.03: the median tames that). 0.4 sits between them,
#: twice as far from each. Judging each task rather than the sum keeps the fixed cost of many thin
#: bands (about 0.5 ms each) from adding up to a false verdict: 48 bands summed to 1.75 serial blurs.
MAX_TASK_WORK = 0.4

#: No one task may spend more than this share of all the tasks' CPU time: a task that blurs
#: (nearly) everything leaves the other workers waiting. With six bands each spends about a sixth
#: (seen with three bands: up to 0.48 on a busy machine); a task that does all the blurring
#: spends over 0.9 (seen: 1.00).
MAX_TASK_SHARE = 0.8

# How many tasks of one call also time a serial blur of the reference photo (the first ones
# submitted); their median counts. Eight bound the extra work when a call cuts many thin bands.
_REFERENCE_TASKS = 8

# In a worker: the reference photos made there, by shape (made once, outside any timing).
_reference_photos: dict[tuple[int, int], Any] = {}

# The check image: a height that no small worker count divides, and a width that is not square.
_HEIGHT, _WIDTH = 1021, 768
# The hidden check's images: fewer rows than workers, a radius wider than a band, radius 0, and one
# mid-sized image with rows enough for every worker (its tasks are counted).
_SMALL_CASES = ((2, 9, 3), (5, 7, 3), (64, 48, 0), (31, 16, 12))
_MID_CASE = (203, 64, 5)


def photo(height: int = _HEIGHT, width: int = _WIDTH, seed: int = 5) -> Any:
    """A test photo of whole numbers 0 to 255 (float64), so that box-blur sums are exact."""
    import numpy as np

    return np.round(255 * make_image(height, width, seed=seed))


class MeteredPool:
    """A process pool lent to the student's code, counting the bytes that cross to and from it.

    It offers what ``parallel_blur`` needs from a :class:`~labkit.pool.WorkerPool`: ``workers``,
    ``kind``, ``submit`` and ``map``. Each task is pickled once more here, exactly as the pool
    pickles it (cloudpickle of function, arguments and keyword arguments), to weigh it; each
    result is weighed the same way when it arrives. Each task runs wrapped in ``_Timed``, which
    also reports the CPU seconds it spent in its worker (``task_cpu``); given ``reference`` (an
    image shape and a radius), the first tasks also time a serial blur of a reference photo of
    that shape right after (``reference_cpu``; ``task_shares`` holds each such task's CPU time as a
    share of its serial blur's). The check owns the pool: ``shutdown`` and
    ``with`` do not stop it.
    """

    def __init__(self, pool: WorkerPool, reference: tuple[tuple[int, int], int] | None = None) -> None:
        self._pool = pool
        self._reference = reference
        self.reference_cpu: list[float] = []
        self.task_shares: list[float] = []
        self._lock = threading.Lock()
        self.tasks = 0
        self.sent_bytes = 0
        self.returned_bytes = 0
        self.task_cpu: list[float] = []
        self.futures: list[Future] = []

    @property
    def workers(self) -> int:
        """How many workers the lent pool runs: cut the work into at least this many tasks."""
        return self._pool.workers

    @property
    def kind(self) -> str:
        """The lent pool's kind (``"process"``)."""
        return self._pool.kind

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Weigh the task as the pool will pickle it, then submit it to the pool."""
        size = len(cloudpickle.dumps((fn, args, kwargs)))
        with self._lock:
            self.tasks += 1
            self.sent_bytes += size
            reference = self._reference if self.tasks <= _REFERENCE_TASKS else None
        inner = self._pool.submit(_Timed(fn, reference), *args, **kwargs)
        self.futures.append(inner)
        outer: Future = Future()
        outer.add_done_callback(lambda done: inner.cancel() if done.cancelled() else None)
        inner.add_done_callback(lambda done: self._relay(done, outer))
        return outer

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, progress: bool = False, **_: Any) -> Iterator[Any]:
        """Submit one weighed task per item at once; yield the results in order (options are accepted and ignored)."""
        futures = [self.submit(fn, *args) for args in zip(*iterables)]
        return (future.result(timeout) for future in futures)

    @property
    def work(self) -> float:
        """CPU seconds the finished tasks spent in their workers, all together."""
        with self._lock:
            return sum(self.task_cpu)

    @property
    def heaviest(self) -> float:
        """CPU seconds of the finished task that spent the most (0.0 before any finished)."""
        with self._lock:
            return max(self.task_cpu, default=0.0)

    def _relay(self, inner: Future, outer: Future) -> None:
        """Hand the task's own result (or error) to the student's future; keep its weight and CPU time."""
        if inner.cancelled():
            outer.cancel()
            return
        if not outer.set_running_or_notify_cancel():
            return  # the student cancelled it while it ran
        error = inner.exception()
        if error is not None:
            outer.set_exception(error)
            return
        result, cpu, reference_cpu = inner.result()
        size = len(cloudpickle.dumps(result))
        with self._lock:
            self.returned_bytes += size
            self.task_cpu.append(cpu)
            if reference_cpu is not None:
                self.reference_cpu.append(reference_cpu)
                if reference_cpu > 0:
                    self.task_shares.append(cpu / reference_cpu)
        outer.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Does nothing: the check that lent this pool stops it."""

    def __enter__(self) -> MeteredPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"<MeteredPool of {self._pool!r}: {self.tasks} tasks>"


class _Timed:
    """A task that returns, with its result, the CPU seconds its worker spent on it.

    It carries the task's own name, so that the pool's messages (a crash, a timeout, an error that
    cannot be pickled) name the student's function, not this wrapper.
    """

    def __init__(self, fn: Callable[..., Any], reference: tuple[tuple[int, int], int] | None = None) -> None:
        self.fn = fn
        self.reference = reference
        self.__qualname__ = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, float, float | None]:
        start = time.process_time()
        result = self.fn(*args, **kwargs)
        cpu = time.process_time() - start
        reference_cpu = _reference_blur_cpu(*self.reference) if self.reference is not None else None
        return result, cpu, reference_cpu


def _reference_blur_cpu(shape: tuple[int, int], radius: int) -> float:
    """In a worker: the CPU seconds one serial blur of a whole reference photo of ``shape`` takes there."""
    image = _reference_photos.get(shape)
    if image is None:
        image = _reference_photos[shape] = photo(*shape)
    start = time.process_time()
    blur(image, radius)
    return time.process_time() - start


def _my_segments() -> set[str]:
    """Names of this process's labkit segments in /dev/shm (empty where there is no /dev/shm)."""
    if not sys.platform.startswith("linux") or not SHM_DIR.is_dir():
        return set()
    prefix = f"{NAME_PREFIX}{os.getpid()}_"
    return {p.name for p in Path(SHM_DIR).iterdir() if p.name.startswith(prefix)}


async def _run(parallel_blur, cases: list[tuple[Any, int]], *, timed: bool = False,
               workers: int = CHECK_WORKERS) -> list[tuple[Any, MeteredPool, set[str]]]:
    """Call ``parallel_blur(image, radius, pool)`` for each case, lending it one metered pool.

    Waits for every task a call started (even those it never waited for), then stops the pool.
    Returns, per case, the output, that call's meter, and the segments of this process it left.
    The pool has ``workers`` workers. ``timed``: the meters also time a serial blur of a reference
    photo in the first tasks of each call, after one warm-up blur of it per worker.
    """
    if not callable(parallel_blur):
        raise Fail(f"pass your parallel_blur function itself to the check, not {type(parallel_blur).__name__}")
    pool = WorkerPool("process", workers)
    runs = []
    try:
        if timed:
            image, radius = cases[0]
            warm_ups = [pool.submit(_reference_blur_cpu, image.shape, radius) for _ in range(workers)]
            for future in warm_ups:  # makes each worker's photo and blur scratch, imports numpy
                await asyncio.wrap_future(future)
        for image, radius in cases:
            before = _my_segments()
            metered = MeteredPool(pool, (image.shape, radius) if timed else None)
            try:
                output = await asyncio.to_thread(parallel_blur, image, radius, metered)
            except (Fail, NotImplementedError):
                raise
            except Exception as exc:  # the student's code crashed: say on which image, and why
                raise Fail(_crash_message(exc, image, radius)) from exc
            finally:
                for future in metered.futures:
                    try:
                        await asyncio.wrap_future(future)
                    except Exception:  # noqa: BLE001 - the student's error; the verdict reports its effect
                        pass
            runs.append((output, metered, _my_segments() - before))
    finally:
        await asyncio.to_thread(pool.shutdown)
    return runs


def _crash_message(exc: BaseException, image: Any, radius: int) -> str:
    """What a crash in ``parallel_blur`` means, with the image it happened on."""
    height, width = image.shape
    text = str(exc)
    said = f"for a {height}x{width} image and radius {radius}, parallel_blur raised {type(exc).__name__}: {text}"
    if "empty axis" in text:
        return (f"{said}. blur was handed a slice with no rows. Either a band is empty (more bands than "
                "rows, or two equal bounds), and there is nothing to blur in it; or a slice starts "
                "below zero: at the top of the image, start - radius is negative, and a negative index "
                "counts from the bottom.")
    if "broadcast" in text:
        return (f"{said}. A band's blurred rows did not fit the rows it writes into the output: the slice "
                "of dst you write and the rows you keep from the blurred slice must be the same rows, "
                "at the top and bottom of the image too, where the halo is cut short.")
    return f"{said}."


def _compare(output, expected, radius: int) -> str | None:
    """None if ``output`` equals ``expected`` exactly, else what is wrong, in the student's terms."""
    import numpy as np

    if output is None:
        return ("parallel_blur returned None: return the blurred image, as a copy of the shared output "
                "(a view of it would point into a segment that is gone once parallel_blur returns)")
    if not issubclass(type(output), np.ndarray):
        return f"parallel_blur returned a {type(output).__name__}, not a numpy array"
    output = np.ndarray.view(output, np.ndarray)  # the data alone: a subclass's methods never judge it
    if output.shape != expected.shape:
        return f"parallel_blur returned an array of shape {output.shape}; the image's shape is {expected.shape}"
    if np.array_equal(output, expected):
        return None
    bad_rows = np.flatnonzero(~np.all(output == expected, axis=1))
    empty_rows = np.flatnonzero(np.all(output == 0, axis=1))
    if len(empty_rows):
        return (f"{len(empty_rows)} rows of the output are still all zeros (the first is row {empty_rows[0]}): "
                "no task wrote them. Do the bands cover every row, from 0 to the image's height? "
                "Did every task finish before you copied the result (list(pool.map(...)))?")
    if len(bad_rows) == len(expected):
        return ("every row differs from labkit.blur(image, radius). Blur with labkit.blur and the same radius, "
                "and write each worker's rows to the same rows of the output. And when a band is no taller "
                f"than the radius ({radius} here), all its rows are near its edges: each needs rows from the "
                "neighbouring bands, up to `radius` rows above and below (the halo).")
    return (f"{len(bad_rows)} of {len(expected)} rows differ from the serial blur, the first at row "
            f"{bad_rows[0]}: these are rows near the edges of your bands. A pixel's blur reads {radius} rows "
            "above and below it, so blur a slice that reaches `radius` rows into the neighbouring bands "
            "(the halo), then write only your own rows.")


@register("ex05.exact")
async def check_exact(parallel_blur, radius: int = 4) -> str:
    """parallel_blur(image, radius, pool) equals blur(image, radius) exactly."""
    image = photo()
    [(output, _, _)] = await _run(parallel_blur, [(image.copy(), radius)])
    problem = _compare(output, blur(image, radius), radius)
    if problem:
        raise Fail(problem)
    return "parallel_blur gives exactly the serial blur, seams between the bands included."


@register("ex05.shared")
async def check_shared(parallel_blur, radius: int = 4) -> str:
    """The work went through the pool, the image travelled as a handle, and each task did its share."""
    image = photo()
    # Two calls: the first warms the workers up as the student's code uses them; the lighter counts.
    runs = await _run(parallel_blur, [(image, radius), (image, radius)], timed=True, workers=SHARED_WORKERS)
    metered = min((meter for _, meter, _ in runs), key=_task_share)
    limit = COPY_SHARE * image.nbytes
    mb = 1e6
    if metered.tasks < metered.workers:
        raise Fail(f"parallel_blur sent {metered.tasks} task(s) to the pool of {metered.workers} workers: "
                   "cut the image into (at least) one band of rows per worker (pool.workers) and hand "
                   "every band to the pool, so that every worker helps")
    if metered.sent_bytes > limit:
        raise Fail(
            f"the {metered.tasks} tasks pickled to {metered.sent_bytes / mb:.1f} MB for a {image.nbytes / mb:.1f} MB "
            "image: the image itself travelled to the workers, copied. Put it in a SharedArray "
            "(SharedArray.from_array(image)) and pass that: it travels as a handle of about a hundred "
            "bytes, and each worker attaches to the same memory. (A function that uses a global array "
            "carries it along, too.)"
        )
    if metered.returned_bytes > limit:
        raise Fail(
            f"the workers sent {metered.returned_bytes / mb:.1f} MB back as results: each band came back as a "
            "copy. Let each worker write its rows into a shared output (SharedArray.create(image.shape)) "
            "and return nothing."
        )
    _judge_work(metered)
    return ("the image and the result crossed to the workers as small handles, and the workers shared "
            "one blur's work between them.")


def _serial_cpu(metered: MeteredPool) -> float:
    """The median CPU seconds of the serial blurs timed in ``metered``'s tasks (0.0 if none)."""
    return statistics.median(metered.reference_cpu) if metered.reference_cpu else 0.0


def _task_share(metered: MeteredPool) -> float:
    """The median task's CPU time as a share of the serial blur timed beside it (0.0 if unknown)."""
    return statistics.median(metered.task_shares) if metered.task_shares else 0.0


def _judge_work(metered: MeteredPool) -> None:
    """Fail unless each task did about its share of one blur (see :data:`MAX_TASK_WORK`), not all of it."""
    serial_cpu, task_share = _serial_cpu(metered), _task_share(metered)
    if serial_cpu <= 0 or task_share <= 0:
        return  # a clock too coarse to see one blur: nothing can be judged
    work, ms = metered.work, 1e3
    if task_share > MAX_TASK_WORK:
        raise Fail(
            f"a typical one of the {metered.tasks} tasks spent {task_share:.1f} times the CPU time of a serial "
            f"blur of the whole image, timed right after it in the same worker ({serial_cpu * ms:.0f} ms); "
            f"together the tasks spent {work * ms:.0f} ms, about {work / serial_cpu:.0f} blurs' worth. So each "
            "task blurred (about) the whole image: the output is right, but the work was done once per task "
            "instead of being shared out. Each task should blur only its own band of rows and the halo "
            "around it that its pixels read."
        )
    heaviest = metered.heaviest
    if metered.tasks > 1 and work > 0 and heaviest > MAX_TASK_SHARE * work:
        raise Fail(f"one of the {metered.tasks} tasks spent {heaviest * ms:.0f} ms of the {work * ms:.0f} ms of "
                   f"CPU time all of them spent ({heaviest / work:.0%}): that task did nearly all the blurring "
                   "while the other workers had almost nothing to do. Give every task a band of about the "
                   "same number of rows.")



@register("ex05.tidy")
async def check_tidy(parallel_blur, radius: int = 4) -> str:
    """No shared-memory segment of this process is left once parallel_blur returns."""
    [(_, _, left)] = await _run(parallel_blur, [(photo(), radius)])
    if left:
        raise Fail(
            f"parallel_blur left {len(left)} shared-memory segment(s) behind ({', '.join(sorted(left))}): "
            "close every SharedArray you create, after the pool's work is done and after copying the "
            "result out. A with block around the SharedArrays does it, even when something fails."
        )
    return "parallel_blur leaves no shared memory behind."


@register("ex05.any_size")
async def check_any_size(parallel_blur) -> str:
    """Tiny images (fewer rows than workers), a wide radius, radius 0, and another pool size are right too."""
    cases = [(photo(height, width, seed=height), radius) for height, width, radius in (*_SMALL_CASES, _MID_CASE)]
    runs = await _run(parallel_blur, [(image.copy(), radius) for image, radius in cases], workers=HIDDEN_WORKERS)
    for (image, radius), (output, _, _) in zip(cases, runs):
        problem = _compare(output, blur(image, radius), radius)
        if problem:
            height, width = image.shape
            raise Fail(f"for a {height}x{width} image and radius {radius}: {problem}")
    (image, _), (_, metered, _) = cases[-1], runs[-1]
    if metered.tasks < metered.workers:
        height, width = image.shape
        raise Fail(f"for a {height}x{width} image, parallel_blur sent {metered.tasks} task(s) to a pool of "
                   f"{metered.workers} workers, so some workers had nothing to do: count the bands from the "
                   "pool you are given (pool.workers), not from the pool you tried it on.")
    return "parallel_blur is exact for tiny images, wide radii, radius 0 and another pool size too."
