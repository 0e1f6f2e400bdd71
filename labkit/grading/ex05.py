"""Checks of exercise 05: a parallel image filter on a shared array (lab 05, shared memory).

The student writes ``parallel_blur(image, radius, pool)``: the same result as
``labkit.blur(image, radius)``, computed by the pool's worker processes, each on a band of rows,
with the image and the result in shared memory. The checks hand it a real process pool wrapped in
a meter, :class:`MeteredPool`, which counts what every task and every result would pickle on its
way between processes. That makes "attached rather than copied" a measurement: a task that
carries the image weighs megabytes, a task that carries a :class:`~labkit.shm.SharedArray`
weighs about a hundred bytes (it pickles as its handle).

The test images hold whole numbers (an 8-bit photo, 0 to 255), so every sum the box blur makes is
exact in floating point, and a correct banded blur equals the serial one bit for bit.

- ``ex05.exact``: the output equals the serial blur exactly, on an image whose height does not
  divide evenly between the workers.
- ``ex05.shared``: the work went through the pool, in at least one task per worker, and the image
  and the result crossed between processes as handles, not as copies.
- ``ex05.tidy``: no shared-memory segment of this process is left once ``parallel_blur`` returns.
- ``ex05.any_size`` (hidden): tiny images (fewer rows than workers) and radius 0 are right too.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cloudpickle

from labkit.pool import WorkerPool
from labkit.shm import NAME_PREFIX, SHM_DIR
from labkit.workloads import blur, make_image

from .checks import Fail, register

__all__ = ["MeteredPool", "photo", "CHECK_WORKERS", "COPY_SHARE"]

#: Workers of the pool the checks lend to ``parallel_blur``. Three, whatever the machine: these
#: checks judge correctness and traffic, not speed, and three bands give two seams to get right.
CHECK_WORKERS = 3

#: Tasks (and results) together may pickle to at most this share of the image's bytes. A task
#: with handles pickles to a few kilobytes (the function travels by value); a copy of the image
#: is 100% of it.
COPY_SHARE = 0.01

# The check image: a height that no small worker count divides, and a width that is not square.
_HEIGHT, _WIDTH = 1021, 768
# The hidden check's images: fewer rows than workers, a radius wider than a band, radius 0.
_SMALL_CASES = ((2, 9, 3), (5, 7, 3), (64, 48, 0), (31, 16, 12))


def photo(height: int = _HEIGHT, width: int = _WIDTH, seed: int = 5) -> Any:
    """A test photo of whole numbers 0 to 255 (float64), so that box-blur sums are exact."""
    import numpy as np

    return np.round(255 * make_image(height, width, seed=seed))


class MeteredPool:
    """A process pool lent to the student's code, counting the bytes that cross to and from it.

    It offers what ``parallel_blur`` needs from a :class:`~labkit.pool.WorkerPool`: ``workers``,
    ``kind``, ``submit`` and ``map``. Each task is pickled once more here, exactly as the pool
    pickles it (cloudpickle of function, arguments and keyword arguments), to weigh it; each
    result is weighed the same way when it arrives. The check owns the pool: ``shutdown`` and
    ``with`` do not stop it.
    """

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self.tasks = 0
        self.sent_bytes = 0
        self.returned_bytes = 0
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
        future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(self._weigh_result)
        self.futures.append(future)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, progress: bool = False, **_: Any) -> Iterator[Any]:
        """Submit one weighed task per item at once; yield the results in order (options are accepted and ignored)."""
        futures = [self.submit(fn, *args) for args in zip(*iterables)]
        return (future.result(timeout) for future in futures)

    def _weigh_result(self, future: Future) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        size = len(cloudpickle.dumps(future.result()))
        with self._lock:
            self.returned_bytes += size

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Does nothing: the check that lent this pool stops it."""

    def __enter__(self) -> MeteredPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"<MeteredPool of {self._pool!r}: {self.tasks} tasks>"


def _my_segments() -> set[str]:
    """Names of this process's labkit segments in /dev/shm (empty where there is no /dev/shm)."""
    if not sys.platform.startswith("linux") or not SHM_DIR.is_dir():
        return set()
    prefix = f"{NAME_PREFIX}{os.getpid()}_"
    return {p.name for p in Path(SHM_DIR).iterdir() if p.name.startswith(prefix)}


async def _run(parallel_blur, cases: list[tuple[Any, int]]) -> list[tuple[Any, MeteredPool, set[str]]]:
    """Call ``parallel_blur(image, radius, pool)`` for each case, lending it one metered pool.

    Waits for every task a call started (even those it never waited for), then stops the pool.
    Returns, per case, the output, that call's meter, and the segments of this process it left.
    """
    if not callable(parallel_blur):
        raise Fail(f"pass your parallel_blur function itself to the check, not {type(parallel_blur).__name__}")
    pool = WorkerPool("process", CHECK_WORKERS)
    runs = []
    try:
        for image, radius in cases:
            before = _my_segments()
            metered = MeteredPool(pool)
            output = await asyncio.to_thread(parallel_blur, image, radius, metered)
            for future in metered.futures:
                try:
                    await asyncio.wrap_future(future)
                except Exception:  # noqa: BLE001 - the student's error; the verdict reports its effect
                    pass
            runs.append((output, metered, _my_segments() - before))
    finally:
        await asyncio.to_thread(pool.shutdown)
    return runs


def _compare(output, expected, radius: int) -> str | None:
    """None if ``output`` equals ``expected`` exactly, else what is wrong, in the student's terms."""
    import numpy as np

    if output is None:
        return "parallel_blur returned None: return the blurred image (a copy of the shared output: dst.array.copy())"
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
        return ("every row differs from labkit.blur(image, radius): blur with labkit.blur and the same radius, "
                "and write each worker's rows to the same rows of the output")
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
    """The work went through the pool, and the image travelled as a handle, not as a copy."""
    image = photo()
    [(_, metered, _)] = await _run(parallel_blur, [(image, radius)])
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
    return "the image and the result crossed to the workers as small handles: the workers attached, nothing was copied."


@register("ex05.tidy")
async def check_tidy(parallel_blur, radius: int = 4) -> str:
    """No shared-memory segment of this process is left once parallel_blur returns."""
    [(_, _, left)] = await _run(parallel_blur, [(photo(), radius)])
    if left:
        raise Fail(
            f"parallel_blur left {len(left)} shared-memory segment(s) behind ({', '.join(sorted(left))}): "
            "close every SharedArray you create, after the pool's work is done and after copying the "
            "result out. A `with SharedArray.from_array(image) as src, SharedArray.create(...) as dst:` "
            "block does it, even when something fails."
        )
    return "parallel_blur leaves no shared memory behind."


@register("ex05.any_size")
async def check_any_size(parallel_blur) -> str:
    """Tiny images (fewer rows than workers), a wide radius, and radius 0 are right too."""
    cases = [(photo(height, width, seed=height), radius) for height, width, radius in _SMALL_CASES]
    runs = await _run(parallel_blur, [(image.copy(), radius) for image, radius in cases])
    for (image, radius), (output, _, _) in zip(cases, runs):
        problem = _compare(output, blur(image, radius), radius)
        if problem:
            height, width = image.shape
            raise Fail(f"for a {height}x{width} image and radius {radius}: {problem}")
    return "parallel_blur is exact for tiny images, wide radii and radius 0 too."
