"""labkit grade against submissions that attack the grader itself (issue 15, holes 3 to 7).

One real batch (``labkit grade --jobs 2``) holds a correct submission and the hostile ones of
tests/grading_corpus.py; each test reads one fact off that run: the cheat scores 0 on the parts it
cheats, the correct one full marks, and nothing survives: no process, no shared-memory segment,
no file in ``--out`` or the solutions that the grader did not write.
"""

from __future__ import annotations

import contextlib
import csv
import io
import secrets
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
import pytest

import grading_corpus
from conftest import _someone_elses
from grading_corpus import SOLUTION_01
from labkit.cli import main
from labkit.grading._sandbox import detect

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None or not sys.platform.startswith("linux"),
                                 reason="bubblewrap (Debian package 'bubblewrap') is not installed")


@dataclass(frozen=True)
class HostileRun:
    code: int
    stdout: str
    stderr: str
    points: dict[str, float]
    rows: list[dict[str, str]]
    out: Path
    solutions: Path
    marker: str
    loot: Path
    accepted: list[bytes]
    shm_before: set[str]
    shm_after: set[str]


def _shm() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.iterdir() if not p.name.startswith("sem.")} if shm.is_dir() else set()


def _marked(marker: str) -> list[int]:
    return [process.pid for process in psutil.process_iter(["cmdline"])
            if marker in " ".join(process.info["cmdline"] or [])]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> HostileRun:
    assert detect().enabled or shutil.which("bwrap") is None, detect().reason
    root = tmp_path_factory.mktemp("hostile")
    solutions, submissions, out = root / "solutions", root / "submissions", root / "grades"
    solutions.mkdir()
    nbformat.write(grading_corpus.solution(), solutions / SOLUTION_01.name)
    marker = f"labkit-escape-{secrets.token_hex(6)}"
    loot = Path(f"/tmp/labkit-loot-{secrets.token_hex(6)}")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    notebooks = {
        "alice": grading_corpus.solution(),
        "kim": grading_corpus.key_thief(str(loot)),
        "eve": grading_corpus.escaper(marker, listener.getsockname()[1]),
        "leo": grading_corpus.shm_leaker(),
        "tess": grading_corpus.trespasser(out, solutions),
        "flo": grading_corpus.flooder(),
        "cole": grading_corpus.copycat(submissions / "alice.ipynb"),
    }
    submissions.mkdir()
    for student, nb in notebooks.items():
        nbformat.write(nb, submissions / f"{student}.ipynb")
    stdout, stderr = io.StringIO(), io.StringIO()
    shm_before = _shm()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["grade", str(submissions), "--solutions", str(solutions), "--jobs", "2",
                         "--timeout", "30", "--out", str(out)])
        accepted = []
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.settimeout(1)
                    accepted.append(connection.recv(100))
    finally:
        listener.close()
    time.sleep(0.5)
    with open(out / "gradebook.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    points: dict[str, float] = {}
    for row in rows:
        points[row["student"]] = points.get(row["student"], 0.0) + float(row["points"])
    run = HostileRun(code, stdout.getvalue(), stderr.getvalue(), points, rows, out, solutions, marker, loot,
                     accepted, shm_before, _shm())
    yield run
    for pid in _marked(marker):  # only if a test below failed: leave the machine clean anyway
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    shutil.rmtree(loot, ignore_errors=True)
    (Path("/dev/shm") / "zz_leaked_by_a_student").unlink(missing_ok=True)


def test_the_batch_finishes_and_the_correct_submission_gets_full_marks(hostile):
    assert hostile.code == 0, hostile.stderr
    assert hostile.points["alice"] == 7


@needs_bwrap
def test_a_key_thief_finds_no_key_and_scores_nothing_for_its_blocking_code(hostile):
    assert hostile.points["kim"] == 0
    assert not any(hostile.loot.glob("*.json")) if hostile.loot.exists() else True
    kim = [row for row in hostile.rows if row["student"] == "kim"]
    assert all(row["status"] != "passed" for row in kim), kim


@needs_bwrap
def test_no_process_a_submission_started_survives_its_grading(hostile):
    assert hostile.points["eve"] == 7
    assert _marked(hostile.marker) == []


@needs_bwrap
def test_a_kernel_cannot_reach_a_server_on_the_graders_loopback(hostile):
    assert hostile.accepted == []


@needs_bwrap
def test_no_shared_memory_segment_outlives_a_kernel_killed_with_sigkill(hostile):
    assert hostile.points["leo"] == 7
    # Segments of live processes elsewhere (other test runs on this machine) are not this batch's.
    new = {name for name in hostile.shm_after - hostile.shm_before if not _someone_elses(name, psutil.Process())}
    assert "zz_leaked_by_a_student" not in hostile.shm_after
    assert new == set()


@needs_bwrap
def test_a_submission_cannot_write_into_the_gradebook_or_the_solutions(hostile):
    assert hostile.points["tess"] == 0
    assert [p.name for p in hostile.solutions.iterdir()] == [SOLUTION_01.name]
    written = sorted(str(p.relative_to(hostile.out)) for p in hostile.out.rglob("*"))
    assert not [name for name in written if "zz_" in name], written
    assert sorted(p.stem for p in (hostile.out / "feedback").glob("*.md")) == sorted(hostile.points)


def test_a_flood_of_seal_records_is_capped_and_scores_nothing(hostile):
    assert hostile.points["flo"] == 0
    flo = [row for row in hostile.rows if row["student"] == "flo"]
    assert all(len(row["message"]) < 5_000 for row in flo)


def test_every_submission_of_the_batch_is_reported(hostile):
    assert "[7/7]" in hostile.stderr


@needs_bwrap
def test_a_submission_cannot_run_another_students_code_read_from_the_submissions_folder(hostile):
    assert hostile.points["cole"] == 0


def test_the_gradebook_is_written_from_a_fresh_folder_so_injected_results_do_not_survive(tmp_path):
    from labkit.grading._gradebook import write_gradebook
    from labkit.grading.grade import GradeReport, Submission, SubmissionResult, SubmissionStatus

    out = tmp_path / "grades"
    for folder in ("results", "feedback"):
        (out / folder).mkdir(parents=True)
    (out / "results" / "zz_injected.ex01.json").write_text('{"score": 7}', encoding="utf-8")
    (out / "feedback" / "zz_injected.md").write_text("7/7", encoding="utf-8")
    result = SubmissionResult(Submission(tmp_path / "amy.ipynb", "amy"), None, SubmissionStatus.REJECTED,
                              message="the file is empty")
    files = write_gradebook(GradeReport((result,), seconds=1.0, jobs=1), out)
    assert sorted(p.name for p in (out / "results").iterdir()) == ["amy.unknown.json"]
    assert sorted(p.name for p in (out / "feedback").iterdir()) == ["amy.md"]
    assert files.gradebook == out / "gradebook.csv" and files.gradebook.exists()
    assert files.results == (out / "results" / "amy.unknown.json",)
    assert sorted(p.name for p in out.iterdir()) == ["feedback", "gradebook.csv", "results"]
