"""A Dask cluster on this machine, started with Dask's own command line, one process per server.

On real machines a Dask cluster is a few commands typed on different hosts::

    host A$ dask scheduler                          # listens on 8786, dashboard on 8787
    host B$ dask worker tcp://A:8786 --nthreads 1   # a nanny, which starts and restarts a worker
    host C$ dask worker tcp://A:8786 --nthreads 1

:class:`DaskCluster` runs exactly those commands here, bound to 127.0.0.1 on free ports, so a lab
can watch what they do. The processes share nothing but the network::

    kernel ── Client ──tcp──▶ scheduler ◀──tcp── nanny ── worker      (one per `dask worker`)
                                   ▲      ◀──tcp── nanny ── worker
                                   └── dashboard (bokeh, http)

What labkit adds, and why:

- ``--scheduler-file``: the scheduler binds port 0 and writes the address it got, so no free port
  is guessed and raced for.
- ``--preload labkit._dask_lifeline`` (scheduler) and ``--preload-nanny labkit._dask_lifeline``
  (each worker command): Dask's servers outlive a client that dies, by design. These preloads watch
  the kernel and exit with it, however it ends (``kill -9`` included); a worker dies with its
  nanny. On real machines you leave them out and let systemd or Kubernetes own the servers.
- ``--name worker-N``: worker N keeps its name when its nanny restarts it, so ``kill_worker(0)``
  and ``workers()`` mean the same worker before and after a restart.
- Everything a server prints goes to a log file in the cluster's folder, never to the cell; the
  last lines are quoted when a server fails to start. Their scratch space goes there too
  (``DASK_TEMPORARY_DIRECTORY``), and :meth:`DaskCluster.close` removes the folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ._dask_lifeline import PARENT_ENV
from .errors import ConfigurationError, LabkitError, ServerStartError

__all__ = ["DaskCluster", "DaskWorker", "ClusterClosedError", "remove_stale_folders"]

# How long servers get to start. A loaded two-core laptop starts a scheduler in 1-3 s and a
# worker (nanny, then a spawned worker process) in 2-5 s; a minute leaves room for a busy CI box.
START_TIMEOUT = 60.0

# How often the launcher looks at the scheduler while it waits for workers: a tenth of a second
# reacts quickly and costs the scheduler almost nothing.
POLL_SECONDS = 0.1

# After SIGTERM, how long a server gets to close (a nanny stops its worker first) before SIGKILL.
STOP_GRACE = 5.0

# How many lines of a failed server's log an error quotes.
LOG_TAIL_LINES = 15

# The cluster's folder in the temporary dir: logs and the workers' scratch space. The pid of the
# process that started the cluster follows, so a later cluster can clean up after a killed kernel.
FOLDER_PREFIX = "labkit-dask-"

_INSTALL_HINT = "pip install 'distributed>=2026.1' 'bokeh>=3.1'"


class ClusterClosedError(LabkitError, RuntimeError):
    """The :class:`DaskCluster` was already closed; start a new one."""


@dataclass(frozen=True)
class DaskWorker:
    """One worker as the scheduler knows it right now.

    Attributes:
        index: its number in this cluster (0 for the first ``dask worker`` command).
        name: the name it registered with (``worker-<index>``), kept across restarts.
        address: where it listens for tasks and data (``tcp://127.0.0.1:PORT``); new after a restart.
        pid: the worker process, which runs the tasks; new after a restart.
        nanny_pid: the nanny, the process the ``dask worker`` command started; it stays.
    """

    index: int
    name: str
    address: str
    pid: int
    nanny_pid: int


def _dask_command() -> list[str]:
    """How to run ``dask``: the script beside this Python (a venv's bin), else ``python -m dask``."""
    if importlib.util.find_spec("distributed") is None:
        raise ServerStartError(f"Dask's distributed package is not installed in this Python. "
                               f"Install it with: {_INSTALL_HINT}")
    script = Path(sys.executable).with_name("dask.exe" if os.name == "nt" else "dask")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "dask"]


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(the log is empty)"


def remove_stale_folders() -> list[Path]:
    """Delete the folders (logs, scratch space) of clusters whose kernel died without closing them.

    A folder is named after the process that started the cluster (``labkit-dask-<pid>-...``); when
    that process is gone, its servers are gone too (the lifeline), and nobody will read the logs.
    Returns the folders removed.
    """
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        owner = path.name[len(FOLDER_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a whole number of at least 1, got {value!r}")
    return value


class DaskCluster:
    """A Dask scheduler and ``workers`` workers, each a process started with ``dask ...`` on 127.0.0.1.

    Like three machines on one desk: ``dask scheduler`` in one process, and one ``dask worker
    ADDRESS --nthreads 1`` per worker (a nanny process that starts the worker process and restarts
    it if it dies). Connect with ``distributed.Client(cluster.address)``; the servers die with this
    process, however it ends, and :meth:`close` (or leaving the ``with`` block) stops them.

    Args:
        workers: how many ``dask worker`` commands to run at the start (at least 1).
        threads_per_worker: ``--nthreads`` of each worker; 1 runs pure-Python tasks one per process.
        start_timeout: seconds to wait for the scheduler and the workers to come up.
    """

    def __init__(self, workers: int = 2, *, threads_per_worker: int = 1, start_timeout: float = START_TIMEOUT) -> None:
        _positive_int(workers, "workers")
        self._threads = _positive_int(threads_per_worker, "threads_per_worker")
        if not isinstance(start_timeout, (int, float)) or start_timeout <= 0:
            raise ConfigurationError(f"start_timeout must be a positive number of seconds, got {start_timeout!r}")
        self._timeout = float(start_timeout)
        self._dask = _dask_command()
        remove_stale_folders()
        self._folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
        # DASK_TEMPORARY_DIRECTORY: the scheduler's and workers' scratch space goes to our folder too.
        self._env = {**os.environ, PARENT_ENV: str(os.getpid()), "DASK_TEMPORARY_DIRECTORY": str(self._folder)}
        self._nannies: list[subprocess.Popen] = []
        self._commands: list[list[str]] = []
        self._scheduler: subprocess.Popen | None = None
        self._client: Any = None
        self._closed = False
        self.address = ""
        self.dashboard_link = ""
        try:
            self._start_scheduler()
            for _ in range(workers):
                self._spawn_worker()
            self.wait_for_workers()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------- starting

    def _popen(self, argv: list[str], log_name: str) -> subprocess.Popen:
        self._commands.append(argv)
        with open(self._folder / log_name, "wb") as log:
            # A session of its own: a Ctrl-C in the terminal that runs the kernel reaches the kernel,
            # which then closes the cluster in order, instead of every server at once.
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=self._env, cwd=self._folder, start_new_session=True)

    def _start_scheduler(self) -> None:
        info_file = self._folder / "scheduler.json"
        argv = [*self._dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info_file),
                "--preload", "labkit._dask_lifeline"]
        self._scheduler = self._popen(argv, "scheduler.log")
        deadline = time.monotonic() + self._timeout
        while True:
            info = self._read_json(info_file)
            if info and info.get("address"):
                break
            if self._scheduler.poll() is not None:
                raise ServerStartError(f"dask scheduler exited with status {self._scheduler.returncode} before it "
                                       f"listened. Its last lines:\n{_tail(self._folder / 'scheduler.log')}")
            if time.monotonic() > deadline:
                log = _tail(self._folder / "scheduler.log")
                raise ServerStartError(f"dask scheduler did not start within {self._timeout:g} s (a very busy "
                                       f"machine? try start_timeout=). Its last lines:\n{log}")
            time.sleep(POLL_SECONDS)
        self.address = info["address"]
        port = info.get("services", {}).get("dashboard")
        self.dashboard_link = f"http://127.0.0.1:{port}/status" if port else ""

    @staticmethod
    def _read_json(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # not written yet, or half written

    def _spawn_worker(self) -> int:
        index = len(self._nannies)
        argv = [*self._dask, "worker", self.address, "--nthreads", str(self._threads), "--name", f"worker-{index}",
                "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--preload-nanny", "labkit._dask_lifeline"]
        self._nannies.append(self._popen(argv, f"worker-{index}.log"))
        return index

    # ----------------------------------------------------------------------------- the public API

    @property
    def commands(self) -> list[str]:
        """The shell commands this cluster ran, scheduler first, as you would type them on each machine."""
        lines = []
        for argv in self._commands:
            shown = list(argv)
            if Path(shown[0]).name.startswith("dask"):
                shown[0] = "dask"
            lines.append(shlex.join(shown))
        return lines

    @property
    def scheduler_pid(self) -> int:
        """The scheduler's process id."""
        self._check_open()
        assert self._scheduler is not None
        return self._scheduler.pid

    @property
    def nanny_pids(self) -> list[int]:
        """The nannies' process ids, in worker order (the processes ``dask worker`` started)."""
        self._check_open()
        return [p.pid for p in self._nannies]

    @property
    def addresses(self) -> list[str]:
        """The workers' addresses, in worker order (a worker that is restarting is left out)."""
        return [w.address for w in self.workers()]

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, in worker order (a worker that is restarting is left out)."""
        return [w.pid for w in self.workers()]

    def client(self) -> Any:
        """A ``distributed.Client`` connected to this cluster, for labkit's own questions (shared, not default)."""
        self._check_open()
        if self._client is None:
            from distributed import Client

            self._client = Client(self.address, set_as_default=False, timeout=f"{self._timeout}s")
        return self._client

    def workers(self) -> list[DaskWorker]:
        """The workers the scheduler knows right now, in order of their index."""
        self._check_open()
        client = self.client()
        # The scheduler knows names and addresses; each worker tells its own pid (run on its event
        # loop, so a busy worker answers too). One that died meanwhile is left out.
        pids = client.run(os.getpid, on_error="ignore")
        found = []
        for address, info in client.scheduler_info(n_workers=-1)["workers"].items():
            name = str(info.get("name", ""))
            if not name.startswith("worker-") or not name[7:].isdigit() or int(name[7:]) >= len(self._nannies):
                continue  # a worker someone else connected: not ours to number
            pid = pids.get(address)
            if isinstance(pid, int) and pid > 1:
                found.append(DaskWorker(int(name[7:]), name, address, pid, self._nannies[int(name[7:])].pid))
        return sorted(found, key=lambda w: w.index)

    def wait_for_workers(self, timeout: float | None = None) -> list[DaskWorker]:
        """Wait until every worker this cluster started is registered with the scheduler; return them.

        Use it after :meth:`kill_worker` to wait for the nanny's replacement. Raises
        :class:`~labkit.errors.ServerStartError`, quoting the log, when a ``dask worker`` command exits.
        """
        self._check_open()
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            for index, nanny in enumerate(self._nannies):
                if nanny.poll() is not None:
                    raise ServerStartError(f"`dask worker` number {index} exited with status {nanny.returncode}. "
                                           f"Its last lines:\n{_tail(self._folder / f'worker-{index}.log')}")
            current = self.workers()
            if len(current) == len(self._nannies):
                return current
            if time.monotonic() > deadline:
                missing = sorted(set(range(len(self._nannies))) - {w.index for w in current})
                log = _tail(self._folder / f"worker-{missing[0]}.log")
                raise ServerStartError(f"workers {missing} did not register with the scheduler within {limit:g} s "
                                       f"(a very busy machine? pass a longer timeout). "
                                       f"Last lines of worker {missing[0]}:\n{log}")
            time.sleep(POLL_SECONDS)

    def add_worker(self, wait: bool = True) -> int:
        """Run one more ``dask worker`` command (scaling out); return its index.

        With ``wait=True`` return once it has registered; with ``False`` at once (the scheduler
        hands it work as soon as it registers).
        """
        self._check_open()
        index = self._spawn_worker()
        if wait:
            self.wait_for_workers()
        return index

    def kill_worker(self, index: int) -> int:
        """SIGKILL worker ``index``'s worker process (not its nanny), as a crash would; return its pid.

        Its running tasks are lost; the scheduler reruns them on the other workers, and the nanny
        starts a replacement with the same name (:meth:`wait_for_workers` waits for it).
        """
        self._check_open()
        last = len(self._nannies) - 1
        if isinstance(index, bool) or not isinstance(index, int):
            raise ConfigurationError(f"kill_worker takes a worker's index (0 to {last}), got {index!r}")
        if not 0 <= index <= last:
            raise ConfigurationError(f"there is no worker {index}: this cluster has workers 0 to {last}")
        for worker in self.workers():
            if worker.index == index and worker.pid > 1:  # never 0 or -1: those would signal a whole group
                os.kill(worker.pid, signal.SIGKILL)
                return worker.pid
        raise ConfigurationError(f"worker {index} is not running right now (its nanny may be restarting it); "
                                 f"call wait_for_workers() first")

    def close(self) -> None:
        """Stop every server: SIGTERM (nannies stop their workers), SIGKILL what is left. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            with contextlib.suppress(Exception):  # a client of a dying cluster may complain: nothing to save
                self._client.close(timeout=2)
            self._client = None
        family: list[psutil.Process] = []
        for popen in [*self._nannies, *([self._scheduler] if self._scheduler is not None else [])]:
            with contextlib.suppress(psutil.Error):
                family.extend(psutil.Process(popen.pid).children(recursive=True))
        # Workers first, while the scheduler can still take their goodbyes; then the scheduler.
        self._stop(self._nannies)
        self._stop([self._scheduler] if self._scheduler is not None else [])
        for proc in family:  # a worker process whose nanny was killed before it could stop it
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(family, timeout=STOP_GRACE)
        shutil.rmtree(self._folder, ignore_errors=True)

    @staticmethod
    def _stop(servers: list[subprocess.Popen]) -> None:
        """SIGTERM ``servers`` at once, wait up to :data:`STOP_GRACE` for them all, SIGKILL the rest."""
        for popen in servers:
            with contextlib.suppress(OSError):
                popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for popen in servers:
            try:
                popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    def _check_open(self) -> None:
        if self._closed:
            raise ClusterClosedError("this DaskCluster was closed; start a new one with DaskCluster(workers=...)")

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return "<DaskCluster closed>"
        return (f"<DaskCluster {self.address or 'starting'} workers={len(self._nannies)} "
                f"threads_per_worker={self._threads} dashboard={self.dashboard_link or '-'}>")
