"""Exercise 02 from the student's side: untouched, it fails both parts with a next step; a wrong
layout fails the part it gets wrong, with a message that is true, teaches the idea and does not give
the answer away; the other correct ways to write it pass, here and on a machine of another shape.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it. The solution itself passes under
nbval (plain ``pytest`` replays solutions/). Notebooks that test one part keep only that part's
cells, since every cluster check starts clusters and drives load for seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part

import labkit
from labkit.cli import main

SOLUTION_02 = SOLUTIONS / "02_cluster_mode.ipynb"
EXERCISE_02 = EXERCISES / "02_cluster_mode.ipynb"

CPU_SETTINGS = 'return {"workers": "max", "balance": "round-robin"}'
IO_SETTINGS = 'return {"workers": 1}'
CPU_CHECK = 'await labkit.check("ex02.cpu_service", cpu_service_settings)'
HIDDEN_CHECK = 'await labkit.check("ex02.other_machine", cpu_service_settings)'

# What the solution regions write, and the library calls that compute it: a failure message may
# echo the student's own choice, never name the one to make.
ANSWERS = ("'max'", '"max"', "round-robin", "reuseport", "usable_cores", "sched_getaffinity", "process_cpu_count",
           "one worker per usable core", "'workers': 1", '"workers": 1', "workers=1")


def assert_teaches_without_the_answer(message: str) -> None:
    given = [answer for answer in ANSWERS if answer.lower() in message.lower()]
    assert not given, f"the message gives the answer away ({given}): {message}"


def cpu_part_only(path: Path, *, keep: tuple[str, ...] = (CPU_CHECK, HIDDEN_CHECK)) -> Path:
    """Cut the notebook at ``path`` down to its set-up, the CPU service's settings and ``keep``'s checks."""
    nb = nbformat.read(path, as_version=4)
    nb.cells = [cell for cell in nb.cells if cell.cell_type == "code" and (
        "import labkit" in cell.source or "def cpu_service_settings" in cell.source
        or any(check in cell.source for check in keep))]
    nbformat.write(nb, path)
    return path


def test_the_untouched_exercise_fails_both_parts_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_02)]) == 1
    out = capsys.readouterr().out
    assert "0/5 points" in out
    assert out.count("not done yet") == 2
    assert "Replace the `# YOUR CODE HERE` stub" in out


def test_one_worker_for_the_cpu_service_and_several_for_the_gateway_fail_the_right_parts(tmp_path):
    wrong = edited_notebook(SOLUTION_02, {
        CPU_SETTINGS: 'return {"workers": 1, "balance": "round-robin"}',
        IO_SETTINGS: 'return {"workers": 3}',
    }, tmp_path / "wrong.ipynb")
    by_part = outcomes_by_part(wrong)
    assert "of the usable cores stay" in by_part["ex02.cpu_service"].message
    assert "one worker already answers" in by_part["ex02.io_service"].message
    assert by_part["ex02.cpu_service"].points == by_part["ex02.io_service"].points == 0
    for part in ("ex02.cpu_service", "ex02.io_service"):
        assert_teaches_without_the_answer(by_part[part].message)


def test_letting_the_kernel_balance_kept_alive_connections_is_told_why_without_the_mode_to_choose(tmp_path):
    wrong = cpu_part_only(edited_notebook(SOLUTION_02, {CPU_SETTINGS: 'return {"workers": "max", "balance": "os"}'},
                                          tmp_path / "os_balance.ipynb"), keep=(CPU_CHECK,))
    message = outcomes_by_part(wrong)["ex02.cpu_service"].message
    assert "balance='os' leaves the choice of worker to the kernel" in message
    assert_teaches_without_the_answer(message)


def test_oversubscribing_to_be_safe_fails_with_what_the_extra_workers_bought(tmp_path):
    # Passes without understanding under the old bound (up to twice the cores were accepted).
    wrong = cpu_part_only(edited_notebook(SOLUTION_02, {
        CPU_SETTINGS: 'return {"workers": 2 * labkit.usable_cores().usable, "balance": "round-robin"}',
    }, tmp_path / "oversubscribed.ipynb"))
    by_part = outcomes_by_part(wrong)
    usable = labkit.usable_cores().usable
    for part in ("ex02.cpu_service", "ex02.other_machine"):
        message = by_part[part].message
        assert not by_part[part].passed, message
        assert "take turns on them rather than compute at once" in message
        assert "holds a whole interpreter's memory" in message
        assert_teaches_without_the_answer(message)
    visible = by_part["ex02.cpu_service"].message
    assert f"{2 * usable} workers on a machine where this process may use {usable} cores" in visible
    assert "Measured: your cluster answered" in visible and "requests/s" in visible and " MB." in visible


ALTERNATIVES = {
    "the_usable_core_count_as_a_number": 'return {"workers": labkit.usable_cores().usable, "balance": "round-robin"}',
    "reuseport": 'return {"workers": "max", "balance": "reuseport"}',
}


@pytest.mark.parametrize("alternative", sorted(ALTERNATIVES))
def test_other_correct_settings_for_the_cpu_service_pass_here_and_on_one_cpu(tmp_path, alternative):
    right = cpu_part_only(edited_notebook(SOLUTION_02, {CPU_SETTINGS: ALTERNATIVES[alternative]},
                                          tmp_path / f"{alternative}.ipynb"))
    by_part = outcomes_by_part(right)
    assert {part: o.passed for part, o in by_part.items()} == {"ex02.cpu_service": True, "ex02.other_machine": True}, \
        by_part


FITTED = {
    # The count of this machine, typed in: right here, wrong wherever the cores differ.
    "typed_in": f'return {{"workers": {labkit.usable_cores().usable}, "balance": "round-robin"}}',
    # The logical cores: the CPUs on the box, not those this process may use.
    "logical_cores": 'import os\n    return {"workers": os.cpu_count(), "balance": "round-robin"}',
}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or labkit.usable_cores().usable < 2,
                    reason="the hidden check makes a smaller machine by pinning a process to one of several CPUs")
@pytest.mark.parametrize("fitted", sorted(FITTED))
def test_settings_fitted_to_this_machine_fail_the_hidden_check_on_one_cpu(tmp_path, fitted):
    wrong = cpu_part_only(edited_notebook(SOLUTION_02, {CPU_SETTINGS: FITTED[fitted]}, tmp_path / f"{fitted}.ipynb"),
                          keep=(HIDDEN_CHECK,))
    outcome = outcomes_by_part(wrong)["ex02.other_machine"]
    assert not outcome.passed
    assert "on another machine shape (a process pinned to one of this machine's" in outcome.message
    assert "may use 1 core:" in outcome.message and "not those of the machine it was written on" in outcome.message
    assert_teaches_without_the_answer(outcome.message)
