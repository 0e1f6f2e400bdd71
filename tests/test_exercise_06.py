"""Exercise 06: its checks accept the rule the lab measured and explain every way of missing it.

The checks time nothing, so they are tested directly (fast) and once through real kernels: the
untouched exercise and a solution with the classic mistakes must fail with a next step."""

from __future__ import annotations

import asyncio
import os

import pytest
from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part

import labkit
from labkit.cli import main
from labkit.grading.checks import Fail
from labkit.grading.ex06 import TABLES, check_bad_kind, check_choose_workers, check_pick_workers, expected_pick

SOLUTION_06 = SOLUTIONS / "06_cores_equals_workers.ipynb"
EXERCISE_06 = EXERCISES / "06_cores_equals_workers.ipynb"


def right(kind: str, root: str = "/") -> int:
    usable = labkit.usable_cores(root=root).usable
    if kind == "cpu":
        return usable
    if kind == "io":
        return 2 * usable + 1
    raise ValueError(kind)


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_rule_picks_the_smallest_count_within_ten_percent_of_the_best():
    assert [expected_pick(t) for t in TABLES.values()] == [2, 16, 3, 2]


def test_the_right_answers_pass_every_check():
    assert "usable cores" in run(check_choose_workers(right))
    assert "10%" in run(check_pick_workers(lambda t: expected_pick(t), {1: 1.0, 2: 2.0}))
    assert "ValueError" in run(check_bad_kind(right))


@pytest.mark.skipif(labkit.usable_cores().logical < 2, reason="a 1-CPU machine cannot tell a quota of 1 from no quota")
def test_counting_the_machines_cpus_fails_inside_the_fake_container():
    def by_cpu_count(kind, root="/"):
        return os.cpu_count() if kind == "cpu" else 2 * os.cpu_count() + 1

    with pytest.raises(Fail, match="quota of 1 core.*os.cpu_count"):
        run(check_choose_workers(by_cpu_count))


def test_a_function_without_root_is_told_how_the_check_works():
    with pytest.raises(Fail, match="needs a `root` parameter"):
        run(check_choose_workers(lambda kind: 1))


def test_too_few_io_workers_are_explained_with_gunicorns_rule():
    def cores_for_all(kind, root="/"):
        return labkit.usable_cores(root=root).usable

    with pytest.raises(Fail, match=r"2 x cores \+ 1"):
        run(check_choose_workers(cores_for_all))


@pytest.mark.parametrize("picker, message", [
    (lambda t: max(t, key=t.get), "last few percent are within a busy machine's noise"),
    (lambda t: min(t), "give only"),
    (lambda t: 3, "not one of the measured worker counts"),
], ids=["the fastest count", "the smallest count", "a count never measured"])
def test_each_wrong_pick_is_explained(picker, message):
    with pytest.raises(Fail, match=message):
        run(check_pick_workers(picker, {1: 12.4, 2: 23.9, 4: 24.6, 8: 23.1}))


def test_guessing_an_unknown_kind_fails_the_hidden_check():
    with pytest.raises(Fail, match="raise ValueError"):
        run(check_bad_kind(lambda kind, root="/": 1))


def test_the_untouched_exercise_fails_every_part_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_06)]) == 1
    out = capsys.readouterr().out
    assert "0/6 points" in out
    assert out.count("not done yet") == 2


def test_counting_the_machines_cpus_and_taking_the_fastest_count_fail_the_right_parts_in_a_real_kernel(tmp_path):
    path = edited_notebook(SOLUTION_06, {
        "usable = labkit.usable_cores(root=root).usable": "usable = os.cpu_count()",
        "return min(workers for workers, rate in throughput.items() if rate >= 0.9 * best)":
            "return max(throughput, key=throughput.get)",
        "import labkit\n": "import os\n\nimport labkit\n",
    }, tmp_path / "wrong.ipynb")
    by_part = outcomes_by_part(path)
    assert by_part["ex06.bad_kind"].passed
    assert not by_part["ex06.pick_workers"].passed
    assert "the rule picks 2" in by_part["ex06.pick_workers"].message
    if labkit.usable_cores().logical >= 2:
        assert not by_part["ex06.choose_workers"].passed
        assert "quota of 1 core" in by_part["ex06.choose_workers"].message
