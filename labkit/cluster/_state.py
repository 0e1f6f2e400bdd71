"""What the cluster supervisor knows, as plain values: states, records, events, restart policy.

Nothing in here starts a process or opens a socket, so all of it can be tested with plain numbers.
The public names are re-exported by :mod:`labkit.cluster`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .._exits import Lifecycle, ending
from .._format import format_bytes, format_uptime

__all__ = [
    "WorkerState",
    "WorkerStats",
    "ClusterStats",
    "ClusterEvent",
    "RestartPolicy",
    "RestartDecision",
    "diagnose",
    "BOOT_ERROR_EXIT",
]

#: Exit status of a worker that could not import or build its app, or bind its socket (the same
#: number gunicorn uses for a worker boot error). It has already told the primary why.
BOOT_ERROR_EXIT = 3


class WorkerState(enum.Enum):
    """Where one worker process is in its life.

    A worker is like a shop assistant on a shift: they arrive (``STARTING``), open their till
    (``READY``), are told to close up and serve the customers already queueing (``STOPPING``), and
    go home (``EXITED``). An assistant who keeps fainting on arrival is sent home for good
    (``ERRORED``) until someone fixes the problem and calls :meth:`~labkit.cluster.Cluster.reload`.

    Only the moves in :meth:`can_become` are allowed; a restart is a *new* worker process in the
    same slot (same id, new pid), not a move back to ``STARTING``.
    """

    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    EXITED = "exited"
    ERRORED = "errored"

    def can_become(self, other: WorkerState) -> bool:
        """Whether a worker in this state may move to ``other``."""
        return LIFECYCLE.allows(self, other)

    @property
    def alive(self) -> bool:
        """Whether a process is (or may still be) running in this state."""
        return self in (WorkerState.STARTING, WorkerState.READY, WorkerState.STOPPING)


#: The legal moves between states; an illegal move raises :class:`labkit._exits.IllegalMoveError`
#: (the pool's worker slots use the same helper).
LIFECYCLE: Lifecycle[WorkerState] = Lifecycle({
    WorkerState.STARTING: {WorkerState.READY, WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.READY: {WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.STOPPING: {WorkerState.EXITED},
    WorkerState.EXITED: {WorkerState.ERRORED},
    WorkerState.ERRORED: set(),
})


@dataclass(frozen=True)
class WorkerStats:
    """One worker as :meth:`Cluster.stats() <labkit.cluster.Cluster.stats>` saw it.

    Attributes:
        id: the worker's slot number, 1, 2, ...; a restarted worker keeps its id and gets a new pid.
        pid: its process id (the last one, for a worker that has exited).
        state: a :class:`WorkerState`.
        uptime: seconds since this process started; 0 once it has exited.
        restarts: how many times this slot was restarted after an unplanned exit.
        requests: requests this process has finished (reported with each heartbeat).
        in_flight: requests it was working on at its last heartbeat.
        cpu_percent: its CPU use over the last two seconds or so (100 = one full core), the same
            whoever else asks for stats meanwhile.
        rss: resident memory in bytes.
        last_exit: why the slot's previous process ended unplanned, or ``None``.
    """

    id: int
    pid: int | None
    state: WorkerState
    uptime: float
    restarts: int
    requests: int
    in_flight: int
    cpu_percent: float
    rss: int
    last_exit: str | None = None


@dataclass(frozen=True)
class ClusterStats:
    """A snapshot of a whole cluster: one :class:`WorkerStats` per worker, and totals.

    ``print(stats)`` or :meth:`table` gives the ``pm2 ls``-style table ``labkit serve`` shows.

    Attributes:
        app: the app's import string.
        url: where the cluster serves, or ``None`` once stopped.
        balance: the balancing mode.
        wanted: how many workers the cluster is asked to run.
        workers: one record per worker, ordered by id.
        requests: requests finished by every worker process, including ones that have exited.
        gave_up: why the cluster gave up (every worker errored, none will be restarted, the port
            is closed until :meth:`~labkit.cluster.Cluster.reload`), or ``None`` while it has not.
    """

    app: str
    url: str | None
    balance: str
    wanted: int
    workers: tuple[WorkerStats, ...]
    requests: int
    gave_up: str | None = None

    @property
    def ready(self) -> int:
        """How many workers are ready to serve."""
        return sum(w.state is WorkerState.READY for w in self.workers)

    @property
    def restarts(self) -> int:
        """Restarts over all slots (a slot shown twice during a reload counts once)."""
        return sum({w.id: w.restarts for w in self.workers}.values())

    @property
    def cpu_percent(self) -> float:
        """CPU use of all workers together (200 = two full cores)."""
        return sum(w.cpu_percent for w in self.workers)

    @property
    def rss(self) -> int:
        """Resident memory of all workers, in bytes."""
        return sum(w.rss for w in self.workers)

    def table(self) -> str:
        """The workers as a text table, one line each, like ``pm2 ls``."""
        header = ("id", "pid", "state", "uptime", "restarts", "requests", "cpu", "memory")
        rows = [header]
        for w in self.workers:
            rows.append((
                str(w.id), str(w.pid or "-"), w.state.value, format_uptime(w.uptime), str(w.restarts),
                str(w.requests), f"{w.cpu_percent:.0f}%", format_bytes(w.rss),
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        rule = "+".join("-" * (width + 2) for width in widths)
        lines = [f"+{rule}+"]
        for index, row in enumerate(rows):
            lines.append("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |")
            if index == 0:
                lines.append(f"+{rule}+")
        lines.append(f"+{rule}+")
        where = f"at {self.url}" if self.url else "(not running)"
        lines.append(
            f"{self.app} {where}: {self.ready}/{self.wanted} ready, balance {self.balance}, "
            f"{self.requests} requests, {format_bytes(self.rss)}"
        )
        errored = [w for w in self.workers if w.state is WorkerState.ERRORED]
        for w in errored:
            lines.append(f"worker {w.id} errored: {w.last_exit}")
        if self.gave_up:
            lines.append(f"gave up: {self.gave_up}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class ClusterEvent:
    """Something that happened to a cluster, for a log line or a live view.

    ``kind`` is one of ``"starting"``, ``"ready"``, ``"stopping"``, ``"exited"``, ``"hung"``,
    ``"boot-error"``, ``"errored"``, ``"gave-up"`` (every worker errored: the port is closed),
    ``"listening"`` (listening again after giving up), ``"stalled"`` and ``"recovered"``
    (round-robin passes over a worker that seems hung, then takes it back), ``"scaled"``, ``"reloaded"``, ``"stopped"``,
    ``"error"``.
    """

    kind: str
    message: str
    worker: int | None = None
    pid: int | None = None
    time: float = field(default_factory=time.time)

    def __str__(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.time))
        who = ""
        if self.worker is not None:
            who = f"worker {self.worker}" + (f" (pid {self.pid})" if self.pid else "") + ": "
        return f"{clock} {who}{self.message}"


@dataclass(frozen=True)
class RestartDecision:
    """What to do after an unplanned exit: restart after ``delay`` seconds, or give up (``None``).

    ``backoff`` and ``young_deaths`` are the slot's counters to keep for next time.
    """

    delay: float | None
    backoff: int
    young_deaths: int


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a worker that died, and when to stop trying.

    Think of a kettle's thermal fuse. One trip is bad luck: reset it and go on (restart after
    ``base`` seconds). Trips in quick succession make each wait longer (times ``factor``, up to
    ``cap``), so a broken worker cannot eat the machine restarting. A worker that has stayed up
    for ``stable_uptime`` has proved itself, and its waits start small again. But a worker that
    dies within ``min_uptime`` of starting more than ``max_restarts`` times in a row is not
    unlucky, it is broken: give up and say so.
    """

    base: float
    factor: float
    cap: float
    stable_uptime: float
    min_uptime: float
    max_restarts: int

    def delay(self, backoff: int) -> float:
        """The wait before restart number ``backoff`` (1 for the first in a row)."""
        return min(self.base * self.factor ** max(backoff - 1, 0), self.cap)

    def after_exit(self, uptime: float, backoff: int, young_deaths: int) -> RestartDecision:
        """Decide for a worker that lived ``uptime`` seconds, given the slot's counters."""
        backoff = 1 if uptime >= self.stable_uptime else backoff + 1
        young_deaths = young_deaths + 1 if uptime < self.min_uptime else 0
        if young_deaths > self.max_restarts:
            return RestartDecision(None, backoff, young_deaths)
        return RestartDecision(self.delay(backoff), backoff, young_deaths)


# The cluster's own words where they differ from labkit._exits: tests/test_cluster.py expects a
# segmentation fault to be blamed on "C code", while notebook 03's saved output shows the pool's
# wording of the same signal.
_CLUSTER_CAUSES = {
    "SIGSEGV": "a crash in C code (an extension module, or a bug in Python itself)",
}


def diagnose(exitcode: int | None, *, boot_error: str | None = None) -> str:
    """Turn a worker's exit status into a sentence that suggests a cause.

    ``exitcode`` follows :attr:`multiprocessing.Process.exitcode`: negative means killed by that
    signal. ``boot_error`` is what the worker reported before exiting, if anything. What signals
    and statuses mean is known in :mod:`labkit._exits`; this phrases it for a cluster's event log.
    """
    if boot_error:
        return f"failed to boot: {boot_error}"
    end = ending(exitcode)
    if end.exitcode is None:
        return "still running"
    if end.signal is not None:
        name = end.signal.name
        return f"killed by {name}: {_CLUSTER_CAUSES.get(name, end.signal.cause)}"
    if exitcode == 0:
        return "exited with status 0 without being asked to (did the app stop its own loop?)"
    if exitcode == BOOT_ERROR_EXIT:
        return f"exited with status {exitcode}: it could not boot (import, factory or bind failed)"
    if end.orphaned:
        return f"exited with status {exitcode}: it lost its primary process"
    if exitcode == 1:
        return "exited with status 1: an uncaught exception (its traceback is on the worker's stderr)"
    return f"exited with status {exitcode}: the app called sys.exit({exitcode}) or os._exit({exitcode})?"
