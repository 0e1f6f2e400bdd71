"""Exercise 08, a batch job on a Dask cluster: right batches pass, wrong ones fail the part they get wrong.

The solution passes under nbval (solutions/08). Here: the checks run in this process against
batches written as a student would, right and wrong, each on a real cluster the check starts; the
messages teach without naming the call or the count to write; the hidden check; the untouched
exercise; and `labkit grade` in its sandbox. The batches are built inside functions, so that their
helpers travel to the workers by value, as a notebook's do (this module is not importable there).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import shutil
import threading
from pathlib import Path

import psutil
import pytest
from helpers import EXERCISES, SOLUTIONS

from labkit.cli import main
from labkit.grading.checks import Fail
from labkit.grading.ex08 import (
    check_grain,
    check_right,
    check_send_once,
    check_survives,
    check_three_workers,
)

SOLUTION_08 = SOLUTIONS / "08_beyond_one_machine.ipynb"
EXERCISE_08 = EXERCISES / "08_beyond_one_machine.ipynb"

# What a message must never say: the call, the keyword or the count that is the answer.
ANSWERS = [r"scatter", r"broadcast", r"pure\s*=", r"get_executor", r"client\.map", r"\.submit\(",
           r"\b\d+ tasks per worker", r"\b\d+ items per task", r"per_worker"]


def teaches_without_the_answer(message: str) -> str:
    """``message``, once asserted to name none of :data:`ANSWERS`."""
    for answer in ANSWERS:
        assert not re.search(answer, message), f"{answer!r} gives the answer away in: {message}"
    return message


def run(coroutine):
    return asyncio.run(coroutine)


def batch(send: str = "scatter", tasks: str = "few", via: str = "map", pure: bool = False):
    """A run_batch as a student may write it.

    ``send``: how the array travels: "scatter" (broadcast), "scatter_one" (to one worker), "inline"
    (an argument of every task), "closure" (inside each task's function), or "worker_global" (an
    attribute of each worker, set with client.run, which the scheduler knows nothing of).
    ``tasks``: "few" (four per worker), "per_item" (one per item) or "one" (a single task).
    ``via``: "map" (client.map), "executor" (client.get_executor().map), "submit" or "delayed".
    """

    def run_chunk(fn, data, chunk):
        return [fn(data, item) for item in chunk]

    def keep(data, dask_worker):
        dask_worker.kept_array = data  # client.run hands the function its worker by this name

    def run_chunk_kept(fn, chunk):
        from distributed import get_worker

        return [fn(get_worker().kept_array, item) for item in chunk]

    def run_batch(client, fn, data, items):
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        count = {"few": 4 * workers, "per_item": len(items), "one": 1}[tasks]
        count = max(1, min(len(items), count))
        bounds = [len(items) * i // count for i in range(count + 1)]
        chunks = [items[a:b] for a, b in zip(bounds, bounds[1:])]
        if send == "worker_global":
            client.run(keep, data)
            futures = client.map(run_chunk_kept, [fn] * count, chunks, pure=False)
            return [r for part in client.gather(futures) for r in part]
        if send == "closure":
            def work(chunk):
                return [fn(data, item) for item in chunk]

            return [r for part in client.gather(client.map(work, chunks, pure=False)) for r in part]
        if send == "scatter":
            [shared] = client.scatter([data], broadcast=True)
        elif send == "scatter_one":
            shared = client.scatter(data)
        else:
            shared = data
        if via == "map":
            futures = client.map(run_chunk, [fn] * count, [shared] * count, chunks, pure=pure)
        elif via == "executor":
            executor = client.get_executor(pure=pure)
            return [r for part in executor.map(run_chunk, [fn] * count, [shared] * count, chunks) for r in part]
        elif via == "submit":
            futures = [client.submit(run_chunk, fn, shared, chunk, pure=pure) for chunk in chunks]
        else:
            import dask

            parts = [dask.delayed(run_chunk, pure=pure)(fn, shared, chunk) for chunk in chunks]
            futures = client.compute(parts)
        return [r for part in client.gather(futures) for r in part]

    return run_batch


# ------------------------------------------------------------------------------ wrong batches fail


def test_the_array_inside_every_task_fails_sending_once():
    run(check_right(batch(send="inline")))  # the results are right: only the traffic is wrong
    with pytest.raises(Fail, match=r"the 16 MB array entered the cluster 8\.\d times: 128 MB inside your 8 task"
                       ) as failed:
        run(check_send_once(batch(send="inline")))
    teaches_without_the_answer(str(failed.value))


def test_a_function_that_uses_the_array_carries_it_too():
    with pytest.raises(Fail, match=r"entered the cluster 8\.\d times") as failed:
        run(check_send_once(batch(send="closure")))
    assert "in a function that uses it" in teaches_without_the_answer(str(failed.value))


def test_one_task_per_item_fails_the_granularity_rule():
    with pytest.raises(Fail, match=r"your 960 tasks computed for \d+\.\d ms each \(median\), while handing over one "
                       r"task costs about \d+\.\d ms") as failed:
        run(check_grain(batch(tasks="per_item")))
    assert "granularity rule" in teaches_without_the_answer(str(failed.value))


def test_one_task_for_everything_leaves_a_worker_idle():
    with pytest.raises(Fail, match="your batch ran as 1 task on a cluster of 2 workers, so 1 worker had nothing"
                       ) as failed:
        run(check_grain(batch(tasks="one")))
    teaches_without_the_answer(str(failed.value))


def test_data_kept_in_a_workers_memory_is_lost_with_the_worker():
    # The attempt that "passes without understanding": the array reaches each worker once (client.run),
    # the tasks are coarse, the results right; but the scheduler does not know the data exists.
    good = batch(send="worker_global")
    run(check_send_once(good))
    run(check_grain(good))
    with SemaphoreWatch() as watch, pytest.raises(
            Fail, match="after worker 0 was killed mid-batch, run_batch raised AttributeError") as failed:
        run(check_survives(good))
    message = teaches_without_the_answer(str(failed.value))
    assert "its replacement starts empty" in message and "from its arguments" in message
    assert not watch.orphans(), "a cluster with a killed worker left its nannies' semaphores behind"


# ------------------------------------------------------------------------------ right batches pass


@pytest.mark.parametrize("send, via", [
    ("scatter_one", "map"),
    ("scatter", "executor"),
    ("scatter_one", "submit"),
    ("scatter", "delayed"),
], ids=["scatter to one worker", "get_executor(pure=False).map", "submit per chunk", "delayed with a future"])
def test_other_right_batches_send_once_and_survive_a_kill(send, via):
    right = batch(send=send, via=via)
    run(check_send_once(right))
    run(check_survives(right))


def test_pure_default_is_harmless_for_distinct_chunks_of_a_pure_function():
    # Dask collapses identical calls under pure=True; no two chunks are identical here, and fn is
    # pure, so the default changes nothing, and the checks say nothing against it.
    run(check_grain(batch(pure=True)))


# ------------------------------------------------------------------------------ hidden check


def test_the_hidden_check_catches_a_batch_fitted_to_two_workers():
    def fitted():
        def halves(fn, data, part):
            return [fn(data, item) for item in part]

        def run_batch(client, fn, data, items):
            half = len(items) // 2  # two tasks: one per worker of the visible checks' cluster
            [shared] = client.scatter([data], broadcast=True)
            futures = [client.submit(halves, fn, shared, part, pure=False) for part in (items[:half], items[half:])]
            return [r for part in client.gather(futures) for r in part]

        return run_batch

    run(check_grain(fitted()))  # the visible checks cannot tell
    with pytest.raises(Fail, match="on a cluster of 3 workers your batch ran as 2 tasks") as failed:
        run(check_three_workers(fitted()))
    teaches_without_the_answer(str(failed.value))
    run(check_three_workers(batch()))


# ------------------------------------------------------------------------------ notebooks


class SemaphoreWatch:
    """Named semaphores (``/dev/shm/sem.mp-*``) that this test's own processes left behind.

    /dev/shm is shared with every program on the machine, and other programs' Dask nannies leave
    orphans there too, so a semaphore counts as ours only if one of our processes (this one and
    its descendants: the clusters' nannies and workers) was seen mapping it while the test ran.
    A process maps a named semaphore under a temporary name, so mappings are matched by inode.
    """

    def __init__(self) -> None:
        self.before = self._names()
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _names() -> set[str]:
        shm = Path("/dev/shm")
        return {p.name for p in shm.glob("sem.mp-*")} if shm.is_dir() else set()

    @staticmethod
    def _mapped(pids) -> set[int]:
        inodes = set()
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                lines = Path(f"/proc/{pid}/maps").read_text(errors="replace").splitlines()
                inodes.update(int(line.split()[4]) for line in lines if "/dev/shm/" in line)
        return inodes

    def _ours(self) -> list[int]:
        me = psutil.Process()
        try:
            return [me.pid, *(child.pid for child in me.children(recursive=True))]
        except psutil.Error:
            return [me.pid]

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.seen |= self._mapped(self._ours())

    def __enter__(self) -> SemaphoreWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def orphans(self) -> set[str]:
        """Our semaphores that still exist although no live process maps them."""
        live = self._mapped(int(p.name) for p in Path("/proc").glob("[0-9]*"))
        left = set()
        for name in self._names() - self.before:
            with contextlib.suppress(OSError):
                inode = (Path("/dev/shm") / name).stat().st_ino
                if inode in self.seen and inode not in live:
                    left.add(name)
        return left


def test_the_untouched_exercise_fails_every_part_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_08)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "0/8 points" in out
    assert out.count("not done yet") == 4
    assert "how big should a task be, and how should the array travel?" in out


def test_labkit_grade_gives_the_solution_full_marks_and_the_untouched_exercise_zero(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    shutil.copy(SOLUTION_08, solutions)
    submissions = tmp_path / "submissions"
    for student, notebook in (("ada", SOLUTION_08), ("bob", EXERCISE_08)):
        (submissions / student).mkdir(parents=True)
        shutil.copy(notebook, submissions / student)
    out = tmp_path / "grades"
    with SemaphoreWatch() as watch, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        assert main(["grade", str(submissions), "--solutions", str(solutions), "--jobs", "2",
                     "--timeout", "120", "--out", str(out)]) == 0
    with open(out / "gradebook.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    score = {student: sum(float(r["points"]) for r in rows if r["student"] == student) for student in ("ada", "bob")}
    assert score == {"ada": 9, "bob": 0}, [(r["student"], r["part"], r["points"], r["message"]) for r in rows]
    assert not watch.orphans(), "a Dask nanny's semaphores were left behind"
