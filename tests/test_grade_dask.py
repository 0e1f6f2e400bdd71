"""labkit grade --scheduler: the same grades from a real Dask cluster as from this machine alone.

A module-scoped fixture starts a real ``dask scheduler`` and two ``dask worker`` processes (one
thread each, on 127.0.0.1, ports chosen by the system) and kills their process groups at the end.
The corpus of tests/grading_corpus.py (a subset: the solution, the untouched exercise, three
cheats, the tiny exercise, a rejected file) plus a notebook that tries to reach the scheduler from
its kernel is graded locally and through the cluster, and every part's points and status must
agree. Tests that kill workers get a cluster of their own, so that the workers a nanny restarts
never outlive the test.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
import pytest

import grading_corpus
from labkit.cli import main
from labkit.grading import _dask
from labkit.grading._sandbox import detect

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not detect().enabled,
                                reason="the Dask route grades in bubblewrap sandboxes only (Linux, bwrap)")

LABKIT = str(Path(sys.executable).with_name("labkit"))
STARTUP_SECONDS = 60
GRACE_SECONDS = 20  # for a nanny to stop its worker and a tracker to unlink its semaphores


@dataclass
class DaskProcesses:
    """A scheduler and its workers, started as subprocesses, each the leader of its own group."""

    address: str
    processes: list[subprocess.Popen]
    folder: Path

    def stop(self) -> None:
        """Stop every process group (nannies, workers, their kernels), as :func:`_stop_group` does."""
        _stop_groups(self.processes)

    def workers(self) -> list[psutil.Process]:
        """The live worker processes (the nannies' children that run tasks)."""
        found = []
        for leader in self.processes[1:]:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(leader.pid).children():
                    if "multiprocessing.resource_tracker" not in " ".join(child.cmdline()):
                        found.append(child)
        return found


def _stop_groups(leaders: list[subprocess.Popen]) -> None:
    """Stop process groups the way an operator would: SIGTERM, then SIGKILL what is left.

    A nanny asked to stop (SIGTERM) closes its worker and exits; its ``multiprocessing`` resource
    tracker, which ignores SIGTERM, then unlinks the nanny's named semaphores (six per nanny, in
    /dev/shm) and exits too. SIGKILL to the whole group at once would kill the tracker with the
    nanny and leave those semaphores behind for good, so it only comes after a grace period.
    """
    for leader in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for leader in leaders:
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=max(0.1, deadline - time.monotonic()))
    while time.monotonic() < deadline and any(_group_alive(leader.pid) for leader in leaders):
        time.sleep(0.1)  # the trackers finish unlinking once their nanny has gone
    for leader in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader.pid, signal.SIGKILL)
    for leader in leaders:
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=10)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _start(folder: Path, workers: int, env: dict[str, str] | None = None) -> DaskProcesses:
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "start_new_session": True, "cwd": folder}
    with open(folder / "scheduler.log", "wb") as log:  # the child keeps its own copy of the descriptor
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(scheduler_file)], stderr=log, **quiet)
    started = DaskProcesses("", [scheduler], folder)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert scheduler.poll() is None and time.monotonic() < deadline, (folder / "scheduler.log").read_text()
            time.sleep(0.1)
        started.address = json.loads(scheduler_file.read_text())["address"]
        for number in range(workers):
            started.processes.append(_start_worker(started, f"worker{number}", env))
        if workers:
            from distributed import Client

            with Client(started.address, set_as_default=False, timeout=STARTUP_SECONDS) as client:
                client.wait_for_workers(workers, timeout=STARTUP_SECONDS)
    except BaseException:
        started.stop()
        raise
    return started


def _start_worker(cluster: DaskProcesses, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(cluster.folder / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.address, "--nthreads", "1",
             "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard", "--local-directory",
             str(cluster.folder / name), "--name", name],
            stderr=log, stdout=subprocess.DEVNULL, start_new_session=True, env=env,
            cwd=cluster.folder)  # not the project's folder, whose labkit/ would come first on sys.path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[DaskProcesses]:
    folder = tmp_path_factory.mktemp("dask")
    # The workers' machine has a checks lock of its own, where this grader's machine has another.
    machine = {**os.environ, "LABKIT_CHECK_LOCK": str(folder / "this-machines-checks.lock")}
    started = _start(folder, workers=2, env=machine)
    yield started
    started.stop()


@pytest.fixture
def own_cluster(tmp_path) -> Iterator[DaskProcesses]:
    """Two workers of a scheduler of its own, for a test that kills workers (their nannies restart them)."""
    # A checks lock of its own: other graders on this machine do not make its checks wait.
    machine = {**os.environ, "LABKIT_CHECK_LOCK": str(tmp_path / "this-machines-checks.lock")}
    started = _start(tmp_path / "dask", workers=2, env=machine)
    yield started
    started.stop()


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "gradebook.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _grade(*args: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["grade", *args])
    return code, stdout.getvalue(), stderr.getvalue()


# ============================================================================ the corpus, both ways


def scheduler_reacher(address: str, marker: Path) -> nbformat.NotebookNode:
    """The tiny exercise's solution, plus a cell that tries to reach the scheduler at ``address``
    (a plain connection, then a Dask client that would run code on every worker and on the
    scheduler and write ``marker``); anything reached makes its answer wrong."""
    nb = grading_corpus.exercise_90()
    host, port = address.rpartition("://")[2].rsplit(":", 1)
    write = f"lambda *args, **kwargs: open({str(marker)!r}, 'a').write('reached\\n')"
    nb.cells.insert(2, nbformat.v4.new_code_cell(
        "import socket\n"
        "reached = []\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
        "    reached.append('socket')\n"
        "except OSError:\n"
        "    pass\n"
        "try:\n"
        "    from distributed import Client\n"
        f"    client = Client({address!r}, timeout=5, set_as_default=False)\n"
        f"    client.run({write})\n"
        f"    client.run_on_scheduler({write})\n"
        "    reached.append('client')\n"
        "except Exception:\n"
        "    pass\n"
        "if reached:\n"
        "    answer = 'reached ' + ', '.join(reached)\n"))
    return nb


NANNY_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
                   "PYTHONHASHSEED")


def environment_reader() -> nbformat.NotebookNode:
    """The tiny exercise, whose answer is right only if the kernel's environment has, for the
    variables a Dask nanny sets for its worker, the values of the grader's own environment."""
    nb = grading_corpus.exercise_90()
    grader = {name: os.environ.get(name) for name in NANNY_VARIABLES}
    nb.cells[1].source = (
        "import os\n"
        f"differ = [name for name, value in {grader!r}.items() if os.environ.get(name) != value]\n"
        "answer = 42 if not differ else 'the kernel got ' + ', '.join(differ)")
    return nb


@dataclass(frozen=True)
class BothRuns:
    local: tuple[int, str, str, list[dict[str, str]]]
    dask: tuple[int, str, str, list[dict[str, str]]]
    marker: Path
    expected: dict[str, grading_corpus.Expected]


SUBSET = {"alice": "alice/01_event_loop_blocking.ipynb", "bob": "bob.ipynb", "frank": "frank.ipynb",
          "ivan": "ivan.ipynb", "mallory": "mallory.ipynb", "dave": "dave/01_event_loop_blocking.ipynb",
          "trent": "trent.ipynb"}


@pytest.fixture(scope="module")
def both(cluster, tmp_path_factory) -> BothRuns:
    root = tmp_path_factory.mktemp("corpus")
    solutions, submissions, expected = grading_corpus.build(root)
    marker = root / "reached-by-a-kernel"
    nbformat.write(scheduler_reacher(cluster.address, marker), submissions / "rita.ipynb")
    expected["rita"] = grading_corpus.Expected("ex90", 2, 2, parts=(("ex90.answer", "passed", ""),))
    nbformat.write(environment_reader(), submissions / "omar.ipynb")
    expected["omar"] = grading_corpus.Expected("ex90", 2, 2, parts=(("ex90.answer", "passed", ""),))
    paths = [str(submissions / name) for name in [*SUBSET.values(), "rita.ipynb", "omar.ipynb"]]
    runs = {}
    for route, extra in (("local", ["--jobs", "2"]), ("dask", ["--scheduler", cluster.address])):
        out = root / f"grades-{route}"
        code, stdout, stderr = _grade(*paths, "--solutions", str(solutions), "--timeout", "30", "--out", str(out),
                                      *extra)
        runs[route] = (code, stdout, stderr, _rows(out) if (out / "gradebook.csv").exists() else [])
    return BothRuns(runs["local"], runs["dask"], marker, expected)


def _scores(rows: list[dict[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(row["student"], row["part"]): (row["points"], row["status"]) for row in rows}


def test_the_dask_route_exits_0_and_names_the_cluster(both):
    code, _, stderr, _ = both.dask
    assert code == 0, stderr
    assert "on the Dask cluster at tcp://127.0.0.1:" in stderr and "2 workers" in stderr
    assert "sandbox: bubblewrap" in stderr


def test_points_and_statuses_equal_the_local_runs(both):
    assert both.local[0] == 0, both.local[2]
    local, dask = _scores(both.local[3]), _scores(both.dask[3])
    assert set(local) == set(dask)
    assert local == dask


@pytest.mark.parametrize("student", [*SUBSET, "rita", "omar"])
def test_each_student_gets_the_score_the_corpus_expects(both, student):
    due = both.expected[student]
    rows = [row for row in both.dask[3] if row["student"] == student]
    assert sum(float(row["points"]) for row in rows) == due.points, rows
    for part, status, phrase in due.parts:
        row = next(row for row in rows if row["part"] == part)
        assert row["status"] == status and phrase in row["message"], row


def test_a_kernel_cannot_reach_the_scheduler_or_run_code_on_the_workers(both):
    assert not both.marker.exists(), both.marker.read_text()
    rita = [row for row in both.dask[3] if row["student"] == "rita"]
    assert [row["status"] for row in rita] == ["passed"], rita


def test_the_workers_are_idle_and_hold_no_kernel_after_the_batch(both, cluster):
    assert cluster.workers(), "the workers should still be running"
    for worker in cluster.workers():
        assert [child.name() for child in worker.children(recursive=True) if child.name() == "bwrap"] == []


# ============================================================================ speed checks take turns


def timed_exercise() -> nbformat.NotebookNode:
    """A tiny exercise whose check says when it measured (for two seconds) and under which lock."""
    nb = grading_corpus.exercise_90()
    nb.cells[0].source = (
        "import asyncio, os, time\n"
        "import labkit\n"
        "from labkit.grading.checks import register\n\n"
        '@register("ex91.timed")\n'
        "async def _timed():\n"
        "    start = time.time()\n"
        "    await asyncio.sleep(2)\n"
        "    return f\"measured from {start!r} to {time.time()!r} under {os.environ.get('LABKIT_CHECK_LOCK')}\""
    )
    nb.cells[2].source = 'await labkit.check("ex91.timed")'
    nb.cells[2].metadata["labkit"] = {"check": "ex91.timed", "points": 1}
    nb.metadata["labkit"] = {"exercise": "ex91", "lab": "91_timed"}
    return nb


def test_checks_on_one_machine_measure_in_turn_under_that_machines_lock(cluster, tmp_path):
    solutions, submissions, out = tmp_path / "solutions", tmp_path / "submissions", tmp_path / "grades"
    solutions.mkdir()
    submissions.mkdir()
    nbformat.write(timed_exercise(), solutions / "91_timed.ipynb")
    for student in ("pat", "quin"):
        nbformat.write(timed_exercise(), submissions / f"{student}.ipynb")
    code, _, stderr = _grade(str(submissions), "--solutions", str(solutions), "--scheduler", cluster.address,
                             "--out", str(out))
    assert code == 0, stderr
    rows = _rows(out)
    assert [row["status"] for row in rows] == ["passed", "passed"], rows
    words = [row["message"].split() for row in rows]
    (_, first_end), (second_start, _) = sorted((float(said[2]), float(said[4])) for said in words)
    assert first_end <= second_start, rows
    assert {said[6] for said in words} == {str(cluster.folder / "this-machines-checks.lock")}, rows


# ============================================================================ workers that die


def _kernels(cluster: DaskProcesses) -> list[tuple[psutil.Process, psutil.Process, Path]]:
    """(worker, bwrap, kernel working folder) for each kernel running on a worker of ``cluster``."""
    found = []
    for worker in cluster.workers():
        with contextlib.suppress(psutil.Error):
            for child in worker.children():
                with contextlib.suppress(psutil.Error):
                    if child.name() == "bwrap":
                        found.append((worker, child, Path(child.cwd())))
    return found


def sleeper(name: str, seconds: float) -> nbformat.NotebookNode:
    """The tiny exercise's solution, with a first cell that leaves ``name`` in its working folder
    (for the test to find its kernel) and then sleeps."""
    nb = grading_corpus.exercise_90()
    nb.cells.insert(1, nbformat.v4.new_code_cell(f"import time\nopen({name!r}, 'w').close()\ntime.sleep({seconds})"))
    return nb


def test_a_worker_killed_mid_submission_is_graded_again_once_and_a_second_death_is_reported(own_cluster, tmp_path):
    solutions, submissions, out = tmp_path / "solutions", tmp_path / "submissions", tmp_path / "grades"
    solutions.mkdir()
    submissions.mkdir()
    nbformat.write(grading_corpus.exercise_90(), solutions / "90_tiny.ipynb")
    nbformat.write(sleeper("sam-is-here", 6), submissions / "sam.ipynb")  # its worker is killed once
    nbformat.write(sleeper("tom-is-here", 6), submissions / "tom.ipynb")  # its worker is killed twice
    nbformat.write(grading_corpus.exercise_90(), submissions / "amy.ipynb")
    wanted = {"sam-is-here": 1, "tom-is-here": 2}
    killed: dict[str, list[int]] = {name: [] for name in wanted}
    scratch: set[Path] = set()
    grader = subprocess.Popen(
        [LABKIT, "grade", str(submissions), "--solutions", str(solutions), "--scheduler", own_cluster.address,
         "--timeout", "30", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs: list[str] = []
    reader = threading.Thread(target=lambda: outputs.extend(grader.communicate()))
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while grader.poll() is None and time.monotonic() < deadline:
            for worker, bwrap, work in _kernels(own_cluster):
                for name, times in wanted.items():
                    if (work / name).exists() and bwrap.pid not in killed[name] and len(killed[name]) < times:
                        killed[name].append(bwrap.pid)
                        scratch.add(next(p for p in work.parents if p.name.startswith("labkit-grade-")))
                        with contextlib.suppress(psutil.Error):
                            worker.kill()
            time.sleep(0.1)
    finally:
        if grader.poll() is None:
            grader.kill()
        reader.join()
        for folder in scratch:  # what the killed workers could not remove
            shutil.rmtree(folder, ignore_errors=True)
    stdout, stderr = outputs
    assert {name: len(pids) for name, pids in killed.items()} == wanted, stderr
    assert grader.returncode == 1, stderr  # tom could not be graded: the run says so
    rows = {row["student"]: row for row in _rows(out)}
    assert (rows["amy"]["points"], rows["amy"]["status"]) == ("2", "passed"), rows["amy"]
    assert (rows["sam"]["points"], rows["sam"]["status"]) == ("2", "passed"), rows["sam"]
    assert rows["tom"]["status"] == "error" and "died 2 times" in rows["tom"]["message"], rows["tom"]
    notes = [line for line in stderr.splitlines() if "note:" in line]
    assert [line for line in notes if "sam:" in line and "graded again on tcp://" in line], notes
    assert [line for line in notes if "tom:" in line and "died twice" in line], notes
    assert len(notes) == 2, notes
    assert _kernels(own_cluster) == []


def test_an_interrupted_grader_leaves_no_kernel_running_on_the_workers(cluster, tmp_path):
    solutions, submissions, out = tmp_path / "solutions", tmp_path / "submissions", tmp_path / "grades"
    solutions.mkdir()
    submissions.mkdir()
    nbformat.write(grading_corpus.exercise_90(), solutions / "90_tiny.ipynb")
    nbformat.write(sleeper("una-is-here", 120), submissions / "una.ipynb")
    grader = subprocess.Popen(
        [LABKIT, "grade", str(submissions), "--solutions", str(solutions), "--scheduler", cluster.address,
         "--timeout", "300", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any((work / "una-is-here").exists() for _, _, work in _kernels(cluster)):
            assert grader.poll() is None and time.monotonic() < deadline, grader.stderr.read()
            time.sleep(0.1)
        grader.send_signal(signal.SIGINT)
        _, stderr = grader.communicate(timeout=60)
    finally:
        if grader.poll() is None:
            grader.kill()
            grader.communicate()
    assert grader.returncode == 130, stderr
    assert "labkit: interrupted" in stderr
    deadline = time.monotonic() + 30  # the task sees it was cancelled within a second, then stops the kernel
    while _kernels(cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _kernels(cluster) == []
    assert not (out / "gradebook.csv").exists()
    from distributed import Client

    with Client(cluster.address, set_as_default=False) as client:  # and the task has ended, its folder removed
        while client.call_stack() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.call_stack() == {}


# ============================================================================ bad input, one line each


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def corpus_files(tmp_path) -> tuple[Path, Path, Path]:
    solutions, submissions = tmp_path / "solutions", tmp_path / "submissions"
    solutions.mkdir()
    submissions.mkdir()
    nbformat.write(grading_corpus.exercise_90(), solutions / "90_tiny.ipynb")
    nbformat.write(grading_corpus.exercise_90(), submissions / "amy.ipynb")
    return solutions, submissions, tmp_path / "grades"


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("labkit grade: ") and "warning:" not in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_an_unreachable_scheduler_is_one_line_and_exit_1(corpus_files, monkeypatch):
    monkeypatch.setattr(_dask, "CONNECT_SECONDS", 2.0)
    solutions, submissions, out = corpus_files
    address = f"tcp://127.0.0.1:{_free_port()}"
    code, stdout, stderr = _grade(str(submissions), "--solutions", str(solutions), "--scheduler", address,
                                  "--out", str(out))
    assert code == 1
    assert f"cannot reach the Dask scheduler at {address}" in _one_line(stderr)
    assert not out.exists()


@pytest.fixture(scope="module")
def bare_scheduler(tmp_path_factory) -> Iterator[DaskProcesses]:
    started = _start(tmp_path_factory.mktemp("bare"), workers=0)
    yield started
    started.stop()


def test_a_scheduler_without_workers_is_one_line_after_a_bounded_wait(bare_scheduler, corpus_files, monkeypatch):
    monkeypatch.setattr(_dask, "WORKER_WAIT_SECONDS", 2.0)
    solutions, submissions, out = corpus_files
    started = time.monotonic()
    code, _, stderr = _grade(str(submissions), "--solutions", str(solutions), "--scheduler",
                             bare_scheduler.address, "--out", str(out))
    assert code == 1
    assert "has no workers (waited 2 s)" in _one_line(stderr)
    assert time.monotonic() - started < 30
    assert not out.exists()


def test_a_worker_without_labkit_is_one_line_naming_it(bare_scheduler, corpus_files, tmp_path):
    shadow = tmp_path / "shadow" / "labkit"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no labkit on this worker')\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    worker = _start_worker(bare_scheduler, "without-labkit", env)
    try:
        solutions, submissions, out = corpus_files
        code, _, stderr = _grade(str(submissions), "--solutions", str(solutions), "--scheduler",
                                 bare_scheduler.address, "--out", str(out))
    finally:
        _stop_groups([worker])
    assert code == 1
    line = _one_line(stderr)
    assert "the Dask worker tcp://127.0.0.1:" in line and "cannot import labkit" in line, line
    assert "no labkit on this worker" in line
    assert not out.exists()


def test_a_worker_with_another_labkit_version_is_one_line_naming_both(bare_scheduler, corpus_files, tmp_path):
    shadow = tmp_path / "shadow" / "labkit"
    (shadow / "grading").mkdir(parents=True)
    (shadow / "__init__.py").write_text("__version__ = '0.0.1'\n", encoding="utf-8")
    (shadow / "grading" / "__init__.py").write_text("", encoding="utf-8")
    (shadow / "grading" / "_dask.py").write_text(
        "def worker_facts():\n    return {'version': '0.0.1', 'sandboxed': True, 'sandbox': 'sandbox: bubblewrap'}\n",
        encoding="utf-8")
    worker = _start_worker(bare_scheduler, "old-labkit", {**os.environ, "PYTHONPATH": str(shadow.parent)})
    try:
        solutions, submissions, out = corpus_files
        code, _, stderr = _grade(str(submissions), "--solutions", str(solutions), "--scheduler",
                                 bare_scheduler.address, "--out", str(out))
    finally:
        _stop_groups([worker])
    import labkit

    assert code == 1
    line = _one_line(stderr)
    assert f"has labkit 0.0.1, but this grader runs labkit {labkit.__version__}" in line, line
    assert not out.exists()


def test_a_bad_scheduler_address_is_a_usage_error(corpus_files, capsys):
    solutions, submissions, out = corpus_files
    with pytest.raises(SystemExit) as exit_info:
        main(["grade", str(submissions), "--solutions", str(solutions), "--scheduler", "no-port-here"])
    assert exit_info.value.code == 2
    assert "expected a Dask scheduler's address" in capsys.readouterr().err
