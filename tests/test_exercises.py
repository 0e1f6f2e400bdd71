"""What holds for every exercise at once; each exercise's own checks are in test_exercise_NN.py.

The solutions themselves pass under nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

import pytest
from helpers import EXERCISES, SOLUTIONS

from labkit.grading import RESULT_MIME, parse_parts, read_notebook
from labkit.grading.assign import outdated


def test_exercises_are_exactly_what_assign_makes_from_the_solutions():
    stale = outdated(SOLUTIONS, EXERCISES)
    assert not stale, f"exercises/ is stale; run: labkit assign solutions exercises ({stale})"


@pytest.mark.parametrize("solution", sorted(SOLUTIONS.glob("*.ipynb")), ids=lambda path: path.stem)
def test_an_exercises_check_cells_say_not_run_yet_while_the_solutions_show_their_result(solution):
    solved = read_notebook(solution)
    exercise = read_notebook(EXERCISES / solution.name)
    shown = {part.id: exercise.cells[part.cell_index] for part in parse_parts(exercise)}
    assert shown, "an exercise without a check cell"
    for part in parse_parts(solved):
        record = [output["data"][RESULT_MIME] for output in solved.cells[part.cell_index].outputs
                  if RESULT_MIME in output.get("data", {})]
        assert record and record[-1]["passed"] is True, f"{part.id}: the solution's stored result is not a pass"
        if part.hidden:
            assert part.id not in shown
            continue
        text = "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                       for output in shown[part.id].outputs)
        assert f"{part.id} not run yet" in text and "passed" not in text, text
        assert not any(RESULT_MIME in output.get("data", {}) for output in shown[part.id].outputs)
