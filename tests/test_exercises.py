"""What holds for every exercise at once; each exercise's own checks are in test_exercise_NN.py.

The solutions themselves pass under nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

from helpers import EXERCISES, SOLUTIONS

from labkit.grading.assign import outdated


def test_exercises_are_exactly_what_assign_makes_from_the_solutions():
    stale = outdated(SOLUTIONS, EXERCISES)
    assert not stale, f"exercises/ is stale; run: labkit assign solutions exercises ({stale})"
