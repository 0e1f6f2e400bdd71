"""WorkerPool and SharedArray: speedup, throughput next to the standard library and loky, hand-off.

Four measurements, each side by side in one run, every pool started and warmed before timing:

Each comparison times its contenders in turns (see ``_interleaved_medians``).

1. Speedup: a CPU-bound batch (pure-Python ``count_primes``, four tasks per worker) on a process
   WorkerPool with one worker per usable core, against the same batch run serially.
   Target on an idle machine: at least 0.9 x usable cores.
2. Throughput on that batch: WorkerPool vs ``concurrent.futures.ProcessPoolExecutor`` vs loky's
   ``ProcessPoolExecutor``, same worker count, same start method where there is a choice.
   Target: WorkerPool at least 0.95 x the faster of the two.
3. Throughput on 10,000 tiny tasks (``tiny(x) = x * x``), every executor with the same chunksize
   (one chunk per worker and round of four), and, for information, with chunksize 1.
   Target: WorkerPool (chunked) at least the standard library's (chunked) throughput.
4. Hand-off of a 200 MB float64 array to every worker: pickled as an argument, and as a
   SharedArray (which travels as its handle). Time until every worker has it (the task reads one
   value), and each worker's extra private memory (USS, psutil) once it has read all of it.
   Targets: sharing at least 50x faster; extra memory per worker under 5% of the array.

5. Big results: one task returns a 1 GB numpy array, then 1 GB of ``bytes``; the parent's peak
   resident memory while it receives the result, over the result's size (Linux: the peak is
   read from ``VmHWM`` after resetting it through ``/proc/self/clear_refs``). WorkerPool and
   ``ProcessPoolExecutor`` side by side, one worker each. Target: WorkerPool below 2x for both.
   Memory, not time: it is safe to run alone on a busy machine,
   ``python benchmarks/bench_pool.py big`` (``BIG_RESULT_BYTES=200000000`` for a smaller one).

Task functions live at module level here, so the standard library's and loky's workers (which
pickle functions by name) can import them; ``benchmarks/run.py`` puts this folder on ``sys.path``.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import statistics
import time

import numpy as np
import psutil

from labkit import WorkerPool, count_primes, usable_cores
from labkit.cores import safe_start_method
from labkit.shm import SharedArray

REPEATS = 5  # timed runs per configuration; medians are reported
BATCH_REPEATS = 15  # rounds of the CPU-bound batch, whose ratios drift most on a shared machine
TASKS_PER_WORKER = 8  # enough tasks that one slow start does not decide the batch
HANDOFF_REPEATS = 3  # pickling 200 MB to every worker takes a second or more each time
PRIMES_LIMIT = 60_000  # one task: about 0.15 s of pure Python on a current core
TINY_TASKS = 10_000
HANDOFF_BYTES = 200_000_000
BIG_RESULT_BYTES = int(os.environ.get("BIG_RESULT_BYTES", 1_000_000_000))  # the 1 GB


# --------------------------------------------------------------------------------------------
# tasks (importable: the standard library and loky send functions by name)


def tiny(x: int) -> int:
    return x * x


def last_value(values) -> float:
    """Receive the array (pickled or shared) and read one value: what is timed is the trip."""
    if isinstance(values, SharedArray):
        values = values.array
    return float(values[-1])


def read_all_and_measure(values) -> tuple[int, float, int]:
    """Read every value, then report (pid, sum, private memory in bytes)."""
    if isinstance(values, SharedArray):
        values = values.array
    return os.getpid(), float(values.sum()), psutil.Process().memory_full_info().uss


def big_array(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8, dtype=np.float64)


def big_bytes(nbytes: int) -> bytes:
    return b"\x01" * nbytes


def idle_memory(_=None) -> tuple[int, int]:
    np.zeros(1).sum()  # numpy loaded, as in read_all_and_measure
    return os.getpid(), psutil.Process().memory_full_info().uss


# --------------------------------------------------------------------------------------------
# helpers


def _median_seconds(run, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _interleaved(runs: dict[str, object], repeats: int = REPEATS) -> dict[str, list[float]]:
    """Seconds of each run per round, timed in turns (a, b, c, then b, c, a, ...) so that a drift in
    the machine's load, or whoever goes first, touches every contender alike."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _interleaved_medians(runs: dict[str, object], repeats: int = REPEATS) -> dict[str, float]:
    """Median seconds of each run, timed as :func:`_interleaved` does."""
    return {name: statistics.median(values) for name, values in _interleaved(runs, repeats).items()}


def _paired_ratio(times: dict[str, list[float]], slower: str, faster: str) -> float:
    """Median over rounds of ``slower``'s time / ``faster``'s: a throughput ratio that the machine's
    drift from round to round cancels out of, since both ran in the same round."""
    return statistics.median(a / b for a, b in zip(times[slower], times[faster]))


def _executors(workers: int) -> tuple[dict[str, concurrent.futures.Executor], str]:
    """WorkerPool, the standard library's pool and loky's, or a note on why loky is missing."""
    method = safe_start_method()
    found: dict[str, concurrent.futures.Executor] = {
        "labkit WorkerPool": WorkerPool("process", workers, start_method=method),
        "concurrent.futures": concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(method)),
    }
    note = ""
    try:
        import loky
    except ImportError:
        note = "loky is not installed here (`pip install loky`), so its column is missing."
    else:
        found["loky"] = loky.ProcessPoolExecutor(max_workers=workers)
    for executor in found.values():  # start every worker and load every import before timing
        list(executor.map(count_primes, [20_000] * 4 * workers))
        list(executor.map(tiny, range(1000), chunksize=50))
    return found, note


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


# --------------------------------------------------------------------------------------------
# the measurements


def _speedup_and_throughput(executors, workers: int) -> list[str]:
    limits = [PRIMES_LIMIT] * (TASKS_PER_WORKER * workers)
    runs = {"serial": lambda: [count_primes(n) for n in limits]}
    runs |= {name: (lambda ex=ex: list(ex.map(count_primes, limits))) for name, ex in executors.items()}
    times = _interleaved(runs, BATCH_REPEATS)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    serial = seconds.pop("serial")
    speedup = _paired_ratio(times, "serial", "labkit WorkerPool")
    peers = [name for name in seconds if name != "labkit WorkerPool"]
    fastest_peer = min(peers, key=seconds.get)
    ratio = _paired_ratio(times, fastest_peer, "labkit WorkerPool")  # throughput: ours relative to the peer
    lines = [
        f"### CPU-bound batch: {len(limits)} x `count_primes({PRIMES_LIMIT:,})` on {workers} workers "
        f"(median of {BATCH_REPEATS} rounds, contenders timed in turns)",
        "",
        "| run | seconds | tasks/s | vs serial |",
        "|---|---|---|---|",
        f"| serial, one core | {serial:.3f} | {len(limits) / serial:.1f} | x1.00 |",
    ]
    lines += [f"| {name} | {s:.3f} | {len(limits) / s:.1f} | x{_paired_ratio(times, 'serial', name):.2f} |"
              for name, s in seconds.items()]
    lines += [
        "",
        f"- WorkerPool speedup x{speedup:.2f} with {workers} usable cores: target >= "
        f"x{0.9 * workers:.2f} (0.9 x usable cores): {_verdict(speedup >= 0.9 * workers)}",
        f"- WorkerPool throughput {ratio:.2f} x the faster peer's ({fastest_peer}): target >= 0.95: "
        f"{_verdict(ratio >= 0.95)}",
        "- Ratios are medians of the per-round ratios (each round ran every contender once), which cancels "
        "most of a shared machine's drift; the seconds are medians over the rounds.",
    ]
    return lines


def _tiny_tasks(executors, workers: int) -> list[str]:
    items = range(TINY_TASKS)
    chunk = max(1, math.ceil(TINY_TASKS / (4 * workers)))  # four chunks per worker
    chunked = _interleaved_medians({name: (lambda ex=ex: list(ex.map(tiny, items, chunksize=chunk)))
                                    for name, ex in executors.items()})
    single = _interleaved_medians({name: (lambda ex=ex: list(ex.map(tiny, items))) for name, ex in executors.items()},
                                  repeats=3)
    ours, stdlib = chunked["labkit WorkerPool"], chunked["concurrent.futures"]
    lines = [
        f"### {TINY_TASKS:,} tiny tasks (`x * x`) on {workers} workers",
        "",
        f"| executor | chunksize {chunk}: tasks/s (median of {REPEATS}) | chunksize 1: tasks/s (median of 3) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {TINY_TASKS / chunked[name]:,.0f} | {TINY_TASKS / single[name]:,.0f} |" for name in executors]
    lines += [
        "",
        f"- WorkerPool (chunked) at {stdlib / ours:.2f} x the standard library's throughput: target >= 1.0: "
        f"{_verdict(ours <= stdlib)}",
        f"- With chunksize 1 every task is its own trip through a pipe. WorkerPool keeps one task in flight "
        f"per worker (so a crash or a timeout fails exactly one task) and reached "
        f"{single['concurrent.futures'] / single['labkit WorkerPool']:.2f} x the standard library's rate there.",
    ]
    return lines


def _hand_over(pool: WorkerPool, argument, workers: int) -> tuple[float, list[int]]:
    """Median seconds for every worker to receive `argument`; each worker's extra USS once it read all."""
    seconds = _median_seconds(lambda: list(pool.map(last_value, [argument] * workers)), repeats=HANDOFF_REPEATS)
    before = dict(pool.map(idle_memory, range(2 * workers)))
    answers = list(pool.map(read_all_and_measure, [argument] * workers))
    extra = [uss - before.get(pid, min(before.values())) for pid, _, uss in answers]
    return seconds, extra


def _handoff(workers: int) -> list[str]:
    available = psutil.virtual_memory().available
    size = int(min(HANDOFF_BYTES, available / 4 / (2 + 3 * workers))) // 8 * 8
    data = np.arange(size // 8, dtype=np.float64)
    with WorkerPool("process", workers) as pool:
        list(pool.map(idle_memory, range(2 * workers)))  # warm: numpy and psutil loaded everywhere
        pickled_seconds, pickled_extra = _hand_over(pool, data, workers)
        start = time.perf_counter()
        with SharedArray.from_array(data) as shared:
            copy_in = time.perf_counter() - start
            shared_seconds, shared_extra = _hand_over(pool, shared, workers)
    mb = 1e6
    speedup = pickled_seconds / shared_seconds
    worst_share = max(shared_extra) / data.nbytes
    lines = [
        f"### Hand-off of a {data.nbytes / mb:,.0f} MB array to {workers} workers",
        "",
        "| way | seconds until every worker has it (median of 3) | extra private memory per worker (USS) |",
        "|---|---|---|",
        f"| pickled argument | {pickled_seconds:.3f} | " + ", ".join(f"{e / mb:,.1f} MB" for e in pickled_extra) + " |",
        f"| SharedArray | {shared_seconds:.4f} | " + ", ".join(f"{e / mb:,.2f} MB" for e in shared_extra) + " |",
        "",
        f"- sharing {speedup:,.0f}x faster than pickling: target >= 50x: {_verdict(speedup >= 50)} "
        f"(plus {copy_in:.3f} s, once, for `SharedArray.from_array` to fill the segment)",
        f"- extra memory per worker with sharing: at most {100 * worst_share:.2f}% of the array: "
        f"target < 5%: {_verdict(worst_share < 0.05)}",
    ]
    if size < HANDOFF_BYTES:
        lines.append(f"- the array was cut to {data.nbytes / mb:,.0f} MB to fit this machine's free memory")
    return lines


def _resident_bytes() -> int:
    return psutil.Process().memory_info().rss


def _reset_peak() -> bool:
    """Reset this process's peak resident size (VmHWM); ``False`` where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _peak_while(receive) -> int:
    """Peak resident bytes above the start while ``receive()`` runs (its result is dropped)."""
    import gc

    gc.collect()
    before = _resident_bytes()
    if not _reset_peak():
        raise RuntimeError("cannot reset the peak resident size here (needs Linux /proc/self/clear_refs)")
    result = receive()
    peak = _peak_bytes()
    del result
    gc.collect()
    return peak - before


def _big_results() -> list[str]:
    size = int(min(BIG_RESULT_BYTES, psutil.virtual_memory().available / 6)) // 8 * 8
    method = safe_start_method()
    contenders = {
        "labkit WorkerPool": lambda: WorkerPool("process", 1, start_method=method),
        "concurrent.futures": lambda: concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context(method)),
    }
    rows, ratios = [], {}
    for name, make in contenders.items():
        with make() as executor:
            executor.submit(big_array, 8).result()  # started, numpy imported
            for kind, task in (("numpy array", big_array), ("bytes", big_bytes)):
                ratio = _peak_while(lambda: executor.submit(task, size).result()) / size
                ratios[name, kind] = ratio
                rows.append(f"| {name} | {kind} | {ratio:.2f} x |")
    gb = size / 1e9
    ours = [ratios["labkit WorkerPool", kind] for kind in ("numpy array", "bytes")]
    return [
        f"### A big result ({gb:,.2f} GB) from one task: the parent's peak memory while it arrives",
        "",
        "| executor | result | peak resident memory added, over the result's size |",
        "|---|---|---|",
        *rows,
        "",
        f"- WorkerPool at most {max(ours):.2f} x the result: target < 2 x: {_verdict(max(ours) < 2)}",
        "- 1 x is the result itself; anything above is copies made on the way in.",
    ]


def run() -> str:
    """Measure everything; return the Markdown section for RESULTS.md."""
    workers = usable_cores().usable
    executors, note = _executors(workers)
    try:
        lines = ["## Worker pools and shared memory (`WorkerPool`, `SharedArray`)", ""]
        lines += _speedup_and_throughput(executors, workers) + [""]
        lines += _tiny_tasks(executors, workers) + [""]
    finally:
        for executor in executors.values():
            executor.shutdown(wait=True)
    lines += _handoff(workers) + [""]
    lines += _big_results()
    if note:
        lines += ["", f"_{note}_"]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["big"]:  # memory only: safe on a busy machine
        print("\n".join(_big_results()))
    else:
        print(run())
