"""Grading on a Dask cluster: what ``labkit grade --scheduler tcp://HOST:PORT`` runs.

The instructor's machine reads the submissions and writes the grades; the Dask workers run the
kernels. Each submission is one task that carries everything its grading needs, the solution's
cells included, so no worker needs the solutions folder or the submissions::

    instructor's machine                     scheduler                 worker (one per core, one thread)
    --------------------                     ---------                 ---------------------------------
    connect: reach it, wait for a worker,
      ask every worker (client.run) for its
      labkit version and sandboxing ----------> ---------------------> worker_facts()
    read each submission (rejects stay here)
    submit one task per submission:
      the student's cells, the exercise
      (solutions), the settings, the
      grader's labkit version  ------------->  assigns it  ----------> grade_on_worker(task):
                                                                         versions differ? say so
                                                                         attempt += 1 (a Variable)
                                                                         third start? report, no run
                                                                         the local engine: kernel in
                                                                         bubblewrap, this machine's
                                                                         checks lock and turn file
      SubmissionResult  <-------------------------------------------------'
    write the gradebook, results, feedback (here)

Speed checks stay fair per machine: a worker takes this machine's turn file (beside the checks'
lock file, at this machine's own :func:`~labkit.grading.grade.default_lock_path`) before a check
cell runs, so the workers of one machine measure one at a time, while other machines measure
their own checks at the same moment.

A worker that dies mid-submission: the scheduler gives the task to another worker, and the task
counts its starts in a Dask ``Variable`` named for it. The second start grades it again; a third
start (a second death) does not run the notebook but reports it, for that submission alone. How
often the scheduler retries (``distributed.scheduler.allowed-failures``) is the cluster's setting;
a scheduler that gives up sooner makes the same line from the client's side.

A submission must not reach the scheduler: whoever does can run code on every worker
(``client.run``). The sandbox's network namespace (loopback only) is what prevents it, so a worker
whose kernels would run without the sandbox is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import labkit

from ._engine import run_sync
from ._plan import Exercise
from ._results import GradeError, GradeReport, SubmissionResult, SubmissionStatus
from ._sandbox import describe_sandbox, detect
from ._submissions import StudentNotebook, Submission

if TYPE_CHECKING:
    from .grade import GradeSettings, ProgressCallback

__all__ = ["DaskCluster", "connect", "grade_on_cluster", "grade_on_worker", "worker_facts",
           "CONNECT_SECONDS", "WORKER_WAIT_SECONDS", "ATTEMPTS"]

#: Seconds spent trying to reach the scheduler before saying it cannot be reached. A scheduler on
#: the local network answers in milliseconds; this covers a slow start, not a wrong address.
CONNECT_SECONDS = 10.0
#: Seconds to wait for a first worker to join a scheduler that has none (workers started at the
#: same moment as the command need a few), and for one to come back if all leave mid-batch.
WORKER_WAIT_SECONDS = 30.0
#: Starts of one submission's task: the first, and one more after a worker died under it. A
#: notebook that takes down two workers is reported rather than sent to a third.
ATTEMPTS = 2
#: How often a running task looks whether the client still wants it (an interrupted client
#: cancels its tasks; the kernel is then stopped within this time, not at the end of the notebook).
CANCEL_POLL_SECONDS = 0.5
#: Seconds a task waits for its attempts counter, which the client set before submitting it; a
#: counter that is not there means the client left, and the task ends instead of holding the worker.
VARIABLE_SECONDS = 10.0
#: How often the client looks at the batch while no task finishes (workers all gone?).
WATCH_SECONDS = 2.0
#: How often a worker waiting for this machine's turn tries the turn file again.
TURN_RETRY_SECONDS = 0.05

# Evaluated on each worker by ``client.run(eval, ...)``: builtins travel by reference and need
# nothing on the worker, so a worker without labkit answers with its ImportError instead of
# failing to unpickle a probe.
_FACTS = "__import__('labkit.grading._dask', fromlist=['worker_facts']).worker_facts()"


def _version() -> str:
    return labkit.__version__


def worker_facts() -> dict[str, Any]:
    """What the client needs to know of the worker this runs on: labkit's version and the sandbox."""
    sandbox = detect()
    return {"version": _version(), "sandboxed": sandbox.enabled, "sandbox": describe_sandbox(sandbox)}


@dataclass(frozen=True)
class _Task:
    """One submission's grading, as it travels to a worker (pickled; labkit's classes by reference)."""

    submission: Submission
    notebook: StudentNotebook
    exercise: Exercise
    settings: GradeSettings  # the client's, without its lock path (each machine uses its own)
    threads_by_host: Mapping[str, int]
    hidden: tuple[Path, ...]
    version: str
    attempts: str  # the name of the Variable that counts this task's starts


@dataclass(frozen=True)
class _Done:
    """What a task returns: the result, and the workers that started it, in order."""

    result: SubmissionResult
    workers: tuple[str, ...]


class _MachineTurn(asyncio.Lock):
    """The engine's turn for check cells, held across every worker of this machine.

    An asyncio lock (for the tasks of this worker) that also holds ``path`` with ``flock`` while
    it is held. The engine stops a check's clocks while it waits for its turn, as in a local run;
    the check itself then takes the checks' lock file as usual, which is free unless a grader that
    is not part of this cluster measures on the machine.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = None

    async def acquire(self) -> Literal[True]:
        import fcntl

        await super().acquire()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(TURN_RETRY_SECONDS)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            super().release()
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the open file releases its flock
        super().release()


def _error(task: _Task, message: str) -> SubmissionResult:
    return SubmissionResult(task.submission, task.exercise.id, SubmissionStatus.ERROR,
                            max_points=task.exercise.points, message=message)


def grade_on_worker(task: _Task) -> _Done:
    """Grade one submission on the Dask worker this runs on (the task's function)."""
    from distributed import Variable, get_worker

    worker = get_worker()
    here = str(worker.address)
    if task.version != _version():
        return _Done(_error(task, f"the Dask worker {here} has labkit {_version()}, but the grader runs labkit "
                                  f"{task.version}; install the grader's version on every worker and grade "
                                  f"this notebook again"), (here,))
    attempts = Variable(task.attempts)
    try:
        started = (*attempts.get(timeout=VARIABLE_SECONDS), here)
    except TimeoutError:  # the client set it before submitting: it is gone, and so is the client
        return _Done(_error(task, "the grader was interrupted"), (here,))
    attempts.set(list(started))
    if len(started) > ATTEMPTS:
        died = ", ".join(started[:-1])
        return _Done(_error(task, f"the Dask workers grading this notebook died {len(started) - 1} times ({died}), "
                                  f"so it was not sent to another; this is not the student's doing unless the "
                                  f"notebook brings workers down: look at those workers' logs, then grade it "
                                  f"again"), started)
    if not detect().enabled:
        return _Done(_error(task, f"the Dask worker {here} cannot sandbox kernels ({detect().reason}); a notebook "
                                  f"there could reach the scheduler, so it was not run"), started)
    _forget_nanny_environment()
    key = worker.get_current_task()

    def cancelled() -> bool:
        state = worker.state.tasks.get(key)
        return state is None or state.state not in ("executing", "long-running")

    host = here.rpartition("://")[2].rpartition(":")[0]
    result = run_sync(lambda: _grade_here(task, task.threads_by_host.get(host, 1), cancelled))
    return _Done(result, started)


#: What a Dask nanny puts in its worker's environment (``distributed.nanny.pre-spawn-environ``,
#: and the hash seed it fixes), which kernels would inherit: BLAS libraries on one thread, a fixed
#: ``hash()``. A kernel gets the environment a local run's kernel would have, without them.
_NANNY_HASH_SEED = "6640"


def _forget_nanny_environment() -> None:
    """Remove from this worker's environment the variables its nanny set for the worker itself.

    They served the worker process when it started; kernels started from it should not inherit
    them. A variable whose value differs from the nanny's (set by someone else) is kept.
    """
    import dask

    spawned = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    spawned.setdefault("PYTHONHASHSEED", _NANNY_HASH_SEED)
    for name, value in spawned.items():
        if os.environ.get(name) == str(value):
            os.environ.pop(name, None)


async def _grade_here(task: _Task, threads: int, cancelled: Callable[[], bool]) -> SubmissionResult:
    """The local engine on this worker's machine, stopped early if the client gives the task up."""
    from .grade import _Grader, default_lock_path

    lock_path = default_lock_path()  # this machine's: its checks measure in turn with each other
    with contextlib.suppress(OSError):  # a lock file that cannot be made never fails a check
        os.close(os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644))
    settings = replace(task.settings, jobs=max(1, threads), lock_path=lock_path, scheduler=None)
    with tempfile.TemporaryDirectory(prefix="labkit-grade-", ignore_cleanup_errors=True) as scratch:
        grader = _Grader({task.exercise.id: task.exercise}, settings, Path(scratch), detect(), task.hidden,
                         (task.submission,))
        grader.turn = _MachineTurn(Path(f"{lock_path}.turn"))
        job = asyncio.ensure_future(grader.grade_read(task.submission, task.notebook, task.exercise))
        while not job.done():
            await asyncio.wait({job}, timeout=CANCEL_POLL_SECONDS)
            if not job.done() and cancelled():
                job.cancel()  # the engine stops the kernel and its group on the way out
                with contextlib.suppress(asyncio.CancelledError):
                    await job
                return _error(task, "the grader was interrupted")
        return job.result()


@dataclass
class DaskCluster:
    """A connection to a Dask scheduler whose workers are ready to grade (see :func:`connect`)."""

    address: str
    client: Any
    facts: dict[str, dict[str, Any]]

    def threads_by_host(self) -> dict[str, int]:
        """Worker threads per machine (by host address): the jobs that share a machine's memory."""
        counts: Counter[str] = Counter()
        for address, worker in self.client.scheduler_info(n_workers=-1)["workers"].items():
            counts[address.rpartition("://")[2].rpartition(":")[0]] += int(worker.get("nthreads", 1))
        return dict(counts)

    def describe(self) -> str:
        """One line: the workers, their machines and their sandbox."""
        hosts = self.threads_by_host()
        threads = sum(hosts.values())
        sandboxes = sorted({facts["sandbox"] for facts in self.facts.values()})
        return (f"the Dask cluster at {self.address}: {len(self.facts)} worker{'s' if len(self.facts) != 1 else ''} "
                f"({threads} thread{'s' if threads != 1 else ''}) on {len(hosts)} "
                f"machine{'s' if len(hosts) != 1 else ''}; {' / '.join(sandboxes)}")

    def close(self) -> None:
        """Disconnect from the scheduler (the cluster itself keeps running)."""
        self.client.close()

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DaskCluster {self.address}, {len(self.facts)} workers>"


def connect(address: str, *, connect_seconds: float | None = None,
            worker_wait: float | None = None) -> DaskCluster:
    """Reach the scheduler at ``address``, wait for a worker, and check every worker's labkit.

    Raises :class:`GradeError` with one line saying what to do: the scheduler cannot be reached,
    it has no worker after ``worker_wait`` seconds, or a worker lacks labkit, runs another
    version of it, or cannot sandbox kernels.
    """
    try:
        from distributed import Client
    except ImportError as exc:
        raise GradeError("grading on a Dask cluster needs the 'distributed' package: "
                         "pip install 'distributed>=2026.1'") from exc
    connect_seconds = CONNECT_SECONDS if connect_seconds is None else connect_seconds
    worker_wait = WORKER_WAIT_SECONDS if worker_wait is None else worker_wait
    try:
        client = Client(address, timeout=connect_seconds, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise GradeError(f"cannot reach the Dask scheduler at {address} within {connect_seconds:g} s ("
                         f"{type(exc).__name__}); check that `dask scheduler` runs there and that this "
                         f"machine may connect to its port") from exc
    try:
        try:
            client.wait_for_workers(1, timeout=worker_wait)
        except TimeoutError:
            raise GradeError(f"the Dask scheduler at {address} has no workers (waited {worker_wait:g} s); start "
                             f"them on each grading machine with `dask worker {address} --nworkers N "
                             f"--nthreads 1`, N its cores") from None
        answers = client.run(eval, _FACTS, on_error="return")
        facts = {}
        for worker, answer in sorted(answers.items()):
            if isinstance(answer, ImportError):
                raise GradeError(f"the Dask worker {worker} cannot import labkit ({type(answer).__name__}: "
                                 f"{str(answer)[:200]}); install this course (labkit {_version()}) in that "
                                 f"worker's Python")
            if isinstance(answer, BaseException):
                raise GradeError(f"the Dask worker {worker} could not say which labkit it has ("
                                 f"{type(answer).__name__}: {str(answer)[:200]}); check that it runs, with "
                                 f"labkit {_version()} installed, and grade again")
            if answer.get("version") != _version():
                raise GradeError(f"the Dask worker {worker} has labkit {answer.get('version')}, but this grader "
                                 f"runs labkit {_version()}; install the same version on every worker")
            if not answer.get("sandboxed"):
                raise GradeError(f"the Dask worker {worker} cannot sandbox kernels ({answer.get('sandbox')}); a "
                                 f"submission graded there could reach the scheduler and run code on every "
                                 f"worker, so install bubblewrap there first")
            facts[worker] = answer
    except BaseException:
        client.close()
        raise
    return DaskCluster(address, client, facts)


def grade_on_cluster(cluster: DaskCluster, submissions: Sequence[Submission], exercises: Mapping[str, Exercise],
                     settings: GradeSettings, progress: ProgressCallback | None, hidden: Sequence[Path],
                     notice: Callable[[str], None] | None = None) -> GradeReport:
    """Grade ``submissions`` on ``cluster``'s workers; one result each, in the order given.

    Submissions are read here: a rejected one never leaves this machine. ``notice(line)`` hears of
    workers that died under a submission.
    """
    from distributed import Variable, wait

    from .grade import read_for_grading

    started = time.monotonic()
    client = cluster.client
    results: list[SubmissionResult | None] = [None] * len(submissions)
    done = 0
    running: dict[int, str] = {}

    def report(finished: SubmissionResult | None) -> None:
        if progress is not None:
            threads = sum(cluster.threads_by_host().values()) if finished is None else 0
            shown = tuple(running.values())[: max(threads, 1)] if finished is None else tuple(running.values())
            progress(done, len(submissions), shown, finished)

    # The same hidden folders as a local run's: on a worker that shares this machine's files, its
    # kernels see neither the solutions, the gradebook, nor the submissions.
    hidden_here = tuple(dict.fromkeys([*(e.path.parent.resolve() for e in exercises.values()),
                                       *(Path(p).resolve() for p in hidden),
                                       *(s.path.resolve().parent for s in submissions)]))
    token = secrets.token_hex(8)
    threads_by_host = cluster.threads_by_host()
    travelling = replace(settings, lock_path=None, scheduler=None)
    futures: dict[Any, int] = {}
    exercise_of: dict[int, Exercise] = {}
    variables: list[Any] = []
    try:
        for position, submission in enumerate(submissions):
            read = read_for_grading(submission, exercises)
            if isinstance(read, SubmissionResult):
                results[position] = read
                done += 1
                report(read)
                continue
            notebook, exercise = read
            exercise_of[position] = exercise
            name = f"labkit-grade-{token}-{position}"
            variable = Variable(name, client=client)
            variable.set([])
            variables.append(variable)
            task = _Task(submission, notebook, exercise, travelling, threads_by_host, hidden_here, _version(), name)
            future = client.submit(grade_on_worker, task, key=name, pure=False)
            futures[future] = position
            running[position] = submission.student
        if running:
            report(None)
        pending = set(futures)
        alone_since: float | None = None
        while pending:
            try:
                with client.as_current():  # wait() asks for the current client, not the futures'
                    finished, pending = wait(pending, timeout=WATCH_SECONDS, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            for future in finished:
                position = futures[future]
                results[position] = _collect(future, submissions[position], exercise_of[position], notice)
                running.pop(position, None)
                done += 1
                report(results[position])
            if finished:
                alone_since = None
                continue
            if client.scheduler_info(n_workers=-1)["workers"]:
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > WORKER_WAIT_SECONDS:
                for future in pending:
                    position = futures[future]
                    exercise = exercise_of[position]
                    results[position] = SubmissionResult(
                        submissions[position], exercise.id, SubmissionStatus.ERROR, max_points=exercise.points,
                        message=f"every Dask worker left the scheduler at {cluster.address} and none came back "
                                f"within {WORKER_WAIT_SECONDS:g} s; grade this notebook again")
                    done += 1
                    report(results[position])
                client.cancel(list(pending))
                pending = set()
    finally:
        leftover = [future for future in futures if not future.done()]
        if leftover:  # interrupted: the tasks stop their kernels when they see they are cancelled
            client.cancel(leftover)
        for variable in variables:
            with contextlib.suppress(Exception):
                variable.delete()
    threads = sum(threads_by_host.values())
    sandboxes = " / ".join(sorted({facts["sandbox"] for facts in cluster.facts.values()}))
    return GradeReport(tuple(r for r in results if r is not None), time.monotonic() - started, threads,
                       sandbox=f"{sandboxes} (on every Dask worker)")


def _collect(future: Any, submission: Submission, exercise: Exercise,
             notice: Callable[[str], None] | None) -> SubmissionResult:
    """The result of one task, whatever became of it."""
    from distributed.scheduler import KilledWorker

    try:
        done: _Done = future.result()
    except KilledWorker as exc:
        message = (f"the Dask workers grading this notebook died, and the scheduler gave up on it ({exc}); look "
                   f"at the workers' logs, then grade it again")
    except Exception as exc:  # noqa: BLE001 - a worker's failure: this submission's line, the batch goes on
        message = (f"a Dask worker could not grade this notebook ({type(exc).__name__}: {str(exc)[:300]}); is "
                   f"labkit installed on every worker? Grade it again once fixed")
    else:
        if len(done.workers) > 1 and notice is not None:
            died = ", ".join(done.workers[:-1])
            if done.result.status is SubmissionStatus.ERROR and len(done.workers) > ATTEMPTS:
                notice(f"{submission.student}: the Dask workers grading it died twice ({died}); not graded")
            else:
                notice(f"{submission.student}: the Dask worker grading it died ({died}); graded again on "
                       f"{done.workers[-1]}")
        return done.result
    return SubmissionResult(submission, exercise.id, SubmissionStatus.ERROR, max_points=exercise.points,
                            message=message)
