"""How many cores this process may really use, and how many it gets right now.

``os.cpu_count()`` answers a different question: how many logical CPUs the machine has. A process
may be allowed fewer. Three things narrow it down, and :func:`usable_cores` reads all of them:

    logical CPUs of the machine        os.cpu_count()                      e.g. 16
      └─ CPU affinity of this process  os.sched_getaffinity / psutil       e.g. {0, 1, 2, 3}
          └─ cgroup CPU quota          cpu.max (v2), cfs_quota_us (v1)     e.g. 2.5 cores
                                                                      usable = 3 (ceil of 2.5)

Node.js has the same trap: ``os.cpus().length`` counts the machine while
``os.availableParallelism()`` respects affinity (but, like ``os.cpu_count()``, not the quota).

Even the usable count is a promise, not a delivery: on a shared machine other programs take their
share. :func:`measure_parallelism` asks the operating system for real, by spinning one process per
usable core for a fraction of a second and adding up the CPU time they were given. That number is
the yardstick every speed verdict of the course is judged against.

The same module answers the two questions every pool and cluster asks before it starts a process:
how many workers :func:`resolve_workers` makes of ``"max"``, ``-1`` or ``N``, and which
``multiprocessing`` start method :func:`check_start_method` picks. Both have one answer for the
whole library, so a pool and a cluster given the same words start the same processes.

Environment:
    ``LABKIT_START_METHOD``: ``fork``, ``spawn`` or ``forkserver``. When set, it is the start
    method of every pool and cluster of the run that is not given ``start_method=`` explicitly
    (an explicit argument still wins). A value that is not a start method, or one this platform
    lacks (``fork`` on Windows), raises :class:`~labkit.errors.ConfigurationError` when a pool or
    cluster is created. Unset or empty: labkit's safe default (:func:`safe_start_method`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from .errors import ConfigurationError, LabkitError

__all__ = [
    "CoreInfo",
    "Parallelism",
    "usable_cores",
    "measure_parallelism",
    "cgroup_cpu_quota",
    "default_start_method",
    "safe_start_method",
    "check_start_method",
    "resolve_workers",
    "START_METHOD_ENV",
]

#: The environment variable that sets the default start method of a whole run (see the module
#: docstring): handy to replay a notebook or a test suite under ``spawn`` without editing it.
START_METHOD_ENV = "LABKIT_START_METHOD"


@dataclass(frozen=True)
class CoreInfo:
    """What this process may use, as :func:`usable_cores` found it.

    Attributes:
        logical: logical CPUs of the machine (hyper-threads count), ``os.cpu_count()``.
        physical: physical cores, or ``None`` where the platform does not say.
        affinity: the CPUs this process may be scheduled on, or ``None`` where the platform has no
            affinity (macOS).
        quota: the cgroup CPU quota in cores (``2.5`` = two and a half cores' worth of time per
            period), or ``None`` when no quota applies.
        usable: the least of the above, rounded up for a fractional quota: the worker count that
            makes "one core, one worker" true here.
        start_method: the default ``multiprocessing`` start method of this Python.
    """

    logical: int
    physical: int | None
    affinity: frozenset[int] | None
    quota: float | None
    usable: int
    start_method: str

    def limited_by(self) -> str:
        """Name what sets ``usable``: ``"quota"``, ``"affinity"`` or ``"logical CPUs"``."""
        allowed = len(self.affinity) if self.affinity else self.logical
        if self.quota is not None and math.ceil(self.quota) < allowed:
            return "quota"
        if allowed < self.logical:
            return "affinity"
        return "logical CPUs"


def usable_cores(*, root: str | os.PathLike[str] = "/") -> CoreInfo:
    """Return a :class:`CoreInfo` for this process: logical, physical, affinity, quota, usable.

    ``root`` is where ``/proc`` and ``/sys/fs/cgroup`` are looked up; tests point it at a fake tree.
    """
    logical = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False)
    affinity = _affinity()
    quota = cgroup_cpu_quota(root=root)
    candidates = [logical]
    if affinity:
        candidates.append(len(affinity))
    if quota is not None:
        candidates.append(max(1, math.ceil(quota)))
    return CoreInfo(
        logical=logical,
        physical=physical,
        affinity=affinity,
        quota=quota,
        usable=max(1, min(candidates)),
        start_method=default_start_method(),
    )


def default_start_method() -> str:
    """The start method ``multiprocessing`` uses unless told otherwise, without fixing it.

    ``multiprocessing.get_start_method()`` would set the default as a side effect; the first entry
    of ``get_all_start_methods()`` is documented to be the default and changes nothing.
    """
    chosen = multiprocessing.get_start_method(allow_none=True)
    return chosen or multiprocessing.get_all_start_methods()[0]


def safe_start_method() -> str:
    """The start method labkit's pools and clusters use unless told otherwise: never ``fork``.

    "Told otherwise" is a ``start_method=`` argument or ``LABKIT_START_METHOD`` (see
    :func:`check_start_method`).

    ``forkserver`` where the platform has it, else ``spawn``. A forked child is a copy of a parent
    that runs threads (every Jupyter kernel does, and so do labkit's own supervisors), and a copy
    can deadlock on a lock one of those threads held at the moment of the fork; Python 3.12 warns
    about it and 3.14 stopped defaulting to fork on Linux. labkit sends notebook functions by
    value, so a clean worker loses nothing by not being a copy.
    """
    available = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in available else "spawn"


def check_start_method(start_method: str | None = None) -> str:
    """The start method to use: ``start_method`` if given, else ``$LABKIT_START_METHOD``, else safe.

    Every pool and cluster of labkit asks this one function, so they agree on what is allowed and
    on what the default is:

    - an explicit ``start_method`` (``"fork"``, ``"spawn"`` or ``"forkserver"``) must be one this
      platform offers;
    - ``None`` reads the environment variable ``LABKIT_START_METHOD`` (:data:`START_METHOD_ENV`),
      checked the same way, so a whole run can be switched to another start method from outside;
    - unset or empty, the answer is :func:`safe_start_method` (never ``fork``).

    Raises :class:`~labkit.errors.ConfigurationError` naming the methods this platform offers.
    """
    available = multiprocessing.get_all_start_methods()
    offered = ", ".join(map(repr, available))
    if start_method is not None:
        if start_method not in available:
            raise ConfigurationError(
                f"start_method {start_method!r} is not available here; this platform offers {offered}")
        return start_method
    from_env = os.environ.get(START_METHOD_ENV, "").strip()
    if not from_env:
        return safe_start_method()
    if from_env not in available:
        raise ConfigurationError(
            f"{START_METHOD_ENV}={from_env!r} is not a start method available here; this platform "
            f"offers {offered}. Set it to one of them, or unset it for labkit's default "
            f"({safe_start_method()!r})")
    return from_env


def resolve_workers(workers: int | str) -> int:
    """Turn ``"max"``, ``-1`` or a positive count into a number of workers.

    ``"max"`` is one worker per usable core (:func:`usable_cores`), like PM2's ``-i max``; ``-1``
    leaves one usable core for everything else (the notebook, a load generator) but never goes
    below one; a positive integer is taken as it is. Strings from a command line (``"max"``,
    ``"-1"``, ``"4"``, any case and spacing) mean the same. Anything else (``0``, ``-2``,
    ``1.5``, ``True``, ``"all"``) raises :class:`~labkit.errors.ConfigurationError`.
    """
    given = workers
    if isinstance(workers, str):
        text = workers.strip().lower()
        if text == "max":
            return usable_cores().usable
        try:
            workers = int(text)
        except ValueError:
            raise ConfigurationError(_workers_message(given)) from None
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise ConfigurationError(_workers_message(given))
    if workers == -1:
        return max(1, usable_cores().usable - 1)
    if workers < 1:
        raise ConfigurationError(_workers_message(given))
    return workers


def _workers_message(workers: object) -> str:
    return (f"workers must be 'max', -1 or a positive integer ('max': one per usable core, -1: all "
            f"usable cores but one); got {workers!r}")


def _affinity() -> frozenset[int] | None:
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    try:
        cpus = psutil.Process().cpu_affinity()
    except (AttributeError, psutil.Error, OSError):
        return None  # macOS has no affinity API
    return frozenset(cpus) if cpus else None


# --------------------------------------------------------------------------------------------
# cgroup quota


def cgroup_cpu_quota(*, root: str | os.PathLike[str] = "/") -> float | None:
    """The tightest cgroup CPU quota on this process's cgroup path, in cores, or ``None``.

    cgroup v2 keeps ``"<quota> <period>"`` (or ``"max <period>"``) in ``cpu.max`` at every level of
    the hierarchy; cgroup v1 keeps ``cpu.cfs_quota_us`` (``-1`` for none) and
    ``cpu.cfs_period_us`` under the ``cpu`` controller's mount. A limit on any ancestor binds too,
    so every level from the process's own cgroup up to the root is read and the least one wins.
    In a container the process's cgroup path is often the mount's root itself, so the mount root
    is always read as well.
    """
    base = Path(root)
    try:
        lines = (base / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None  # not Linux, or /proc is hidden
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            quotas += _levels(base / "sys/fs/cgroup", path, _read_v2)
        elif "cpu" in controllers.split(","):
            for mount in _v1_mounts(base, controllers):
                quotas += _levels(mount, path, _read_v1)
    return min(quotas) if quotas else None


def _levels(mount: Path, cgroup_path: str, read) -> list[float]:
    """Read a quota at every level of ``cgroup_path`` below ``mount``, and at the mount root."""
    found = []
    relative = Path(cgroup_path.lstrip("/"))
    for level in [relative, *relative.parents]:
        quota = read(mount / level)
        if quota is not None:
            found.append(quota)
    return found


def _read_v2(directory: Path) -> float | None:
    try:
        fields = (directory / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _read_v1(directory: Path) -> float | None:
    try:
        quota = (directory / "cpu.cfs_quota_us").read_text().strip()
        period = (directory / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None  # -1 means "no limit" in v1
    return q / p


def _v1_mounts(base: Path, controllers: str) -> list[Path]:
    """Where the v1 ``cpu`` controller is mounted: the usual names, then whatever exists."""
    cgroup = base / "sys/fs/cgroup"
    names = [controllers, "cpu,cpuacct", "cpuacct,cpu", "cpu"]
    seen: list[Path] = []
    for name in names:
        path = cgroup / name
        if path.is_dir() and path not in seen:
            seen.append(path)
    return seen


# --------------------------------------------------------------------------------------------
# measured parallelism

# How long each spinner burns CPU. Long enough that process start-up noise is small against it,
# short enough that a notebook cell or a check pays well under a second for it.
DEFAULT_SPIN_SECONDS = 0.3

# The spinner is a separate interpreter started with -S (no site): it starts in a few tens of
# milliseconds, needs no fork of a (possibly threaded) parent, and works the same on every OS.
# It says "ready", waits for "go" so that all spinners overlap, spins, and reports its CPU time.
_SPINNER = r"""
import sys, time
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
seconds = float(sys.argv[1])
cpu0 = time.process_time(); wall0 = time.perf_counter()
while time.perf_counter() - wall0 < seconds:
    for _ in range(2000):
        pass
sys.stdout.write("%r %r\n" % (time.process_time() - cpu0, time.perf_counter() - wall0))
sys.stdout.flush()
"""


@dataclass(frozen=True)
class Parallelism:
    """How many cores' worth of CPU time the machine delivered during one measurement.

    Attributes:
        asked: how many spinning processes ran (one per usable core).
        delivered: the sum of their CPU time divided by the spin time: ``2.0`` means two whole
            cores, ``1.1`` on a 2-core machine means someone else is using most of one.
        per_worker: each spinner's share of one core, 0 to 1.
        seconds: how long each spinner spun.
    """

    asked: int
    delivered: float
    per_worker: tuple[float, ...]
    seconds: float

    @property
    def fraction(self) -> float:
        """``delivered / asked``: 1.0 on an idle machine, less when others compete."""
        return self.delivered / self.asked


def measure_parallelism(workers: int | None = None, seconds: float = DEFAULT_SPIN_SECONDS) -> Parallelism:
    """Spin ``workers`` processes (default: usable cores) at once and report what was delivered.

    This is the basis of every contention-aware verdict: a speedup is judged against the
    parallelism the machine gives *now*, not against the number of cores printed on the box.
    """
    if workers is None:
        workers = usable_cores().usable
    if workers < 1:
        raise ConfigurationError(f"workers must be at least 1, got {workers}")
    if not 0 < seconds <= 10:
        raise ConfigurationError(f"seconds must be in (0, 10], got {seconds}")
    procs = [
        subprocess.Popen(
            [sys.executable, "-S", "-c", _SPINNER, repr(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None  # both asked for as pipes
            if proc.stdout.readline().strip() != "ready":
                raise LabkitError("a spinner process failed to start: is this Python able to run subprocesses?")
        for proc in procs:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        shares = []
        for proc in procs:
            cpu, wall = (float(x) for x in proc.stdout.readline().split())  # type: ignore[union-attr]
            shares.append(min(1.0, cpu / wall))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
    # Spinners that start late overlap less; time.sleep-free busy loops on an idle core give
    # ~0.99, so the sum is a slight underestimate, which keeps verdicts on the safe side.
    return Parallelism(
        asked=workers, delivered=sum(shares), per_worker=tuple(shares), seconds=seconds
    )
