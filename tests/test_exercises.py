"""Exercises: generated from the solutions, failing helpfully when untouched or wrong.

The solutions themselves pass under nbval (plain `pytest` replays solutions/). Here the student's
side is run for real: the untouched exercise, and a solution with deliberately wrong answers, each
in a fresh kernel, and every part must fail with the message a student can act on.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from labkit.cli import main
from labkit.grading.assign import outdated
from labkit.grading.runner import run_notebook

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_01 = ROOT / "solutions" / "01_event_loop_blocking.ipynb"
EXERCISE_01 = ROOT / "exercises" / "01_event_loop_blocking.ipynb"


def test_exercises_are_exactly_what_assign_makes_from_the_solutions():
    stale = outdated(ROOT / "solutions", ROOT / "exercises")
    assert not stale, f"exercises/ is stale; run: labkit assign solutions exercises ({stale})"


def test_the_untouched_exercise_fails_every_part_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_01)]) == 1
    out = capsys.readouterr().out
    assert "0/6 points" in out
    assert out.count("not done yet") == 2
    assert "Replace the `# YOUR CODE HERE` stub" in out


def wrong_answers(tmp_path: Path) -> Path:
    """Solution 01 with the two classic mistakes: hashing on the loop, counting in a thread."""
    nb = nbformat.read(SOLUTION_01, as_version=4)
    replacements = {
        "return await loop.run_in_executor(threads, labkit.hash_password, password, SALT, COST)":
            "return labkit.hash_password(password, SALT, COST)",
        "return await loop.run_in_executor(processes, labkit.count_primes, limit)":
            "return await loop.run_in_executor(threads, labkit.count_primes, limit)",
    }
    for cell in nb.cells:
        for old, new in replacements.items():
            if old in cell.source:
                cell.source = cell.source.replace(old, new)
                replacements[old] = None
    assert all(v is None for v in replacements.values()), "the solution changed; update this test"
    path = tmp_path / "wrong.ipynb"
    nbformat.write(nb, path)
    return path


def test_wrong_answers_fail_the_right_parts_with_the_right_messages(tmp_path):
    _, outcomes = run_notebook(wrong_answers(tmp_path))
    by_part = {o.part: o for o in outcomes}
    assert not by_part["ex01.offload_hash"].passed
    assert "login still blocks the event loop" in by_part["ex01.offload_hash"].message
    assert not by_part["ex01.offload_primes"].passed
    assert "computed in this process" in by_part["ex01.offload_primes"].message
    assert "use the process pool" in by_part["ex01.offload_primes"].message
    assert not by_part["ex01.many_logins"].passed  # hidden check: same blocking login
    assert sum(o.points for o in outcomes) == 0


@pytest.mark.parametrize("mistake, message", [
    ("return 'not a hash'", "not the hash of the password"),
])
def test_a_wrong_result_is_named(tmp_path, mistake, message):
    nb = nbformat.read(SOLUTION_01, as_version=4)
    keep = [c for c in nb.cells if "offload_hash" in c.source or "def login" in c.source or "import labkit" in c.source]
    for cell in keep:
        if "def login" in cell.source:
            cell.source = cell.source.replace(
                "return await loop.run_in_executor(threads, labkit.hash_password, password, SALT, COST)", mistake)
        cell.source = cell.source.replace("processes.submit(labkit.count_primes, 10).result() == 4", "True")
    keep.append(nbformat.v4.new_code_cell("threads.shutdown(); processes.shutdown()"))
    nb.cells = keep
    path = tmp_path / "wrong_result.ipynb"
    nbformat.write(nb, path)
    _, outcomes = run_notebook(path)
    assert [o.part for o in outcomes] == ["ex01.offload_hash"]
    assert message in outcomes[0].message
