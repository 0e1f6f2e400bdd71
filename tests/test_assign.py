"""The exercise authoring format and ``labkit assign``: solutions in, student notebooks out."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell

import labkit.grading
from labkit.cli import COMMANDS, main
from labkit.errors import LabkitError
from labkit.grading import AssignError, Part, assign, exercise_id, make_exercise, outdated, parse_parts

PASSED = [new_output("stream", name="stdout", text="ex01.offload passed: 3/3 points\n")]


def code(source: str, cell_id: str, *, outputs=None, count=None, **labkit_meta):
    """A code cell; keyword arguments become its ``labkit`` metadata (a check cell)."""
    cell = new_code_cell(source, id=cell_id, outputs=list(outputs or []), execution_count=count)
    if labkit_meta:
        cell.metadata["labkit"] = labkit_meta
    return cell


def markdown(source: str, cell_id: str):
    return new_markdown_cell(source, id=cell_id)


def notebook(*cells, exercise: str | None = "ex01"):
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if exercise is not None:
        nb.metadata["labkit"] = {"exercise": exercise, "lab": "01_event_loop_blocking"}
    return nb


def save(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    return path


def exercise_of(*cells):
    return make_exercise(notebook(*cells), source="solutions/01_x.ipynb")


SOLVED = "result = 1 + 1\n"


def region(body: str = SOLVED, header: str = "### BEGIN SOLUTION") -> str:
    return f"{header}\n{body}### END SOLUTION\n"


def a_solutions_notebook(exercise: str = "ex01"):
    """One of everything: a stubbed cell, an answered question, a visible and a hidden check."""
    return notebook(
        markdown("# Offload the hash\n", "intro"),
        code("import asyncio\n", "setup", outputs=[new_output("stream", text="noise\n")], count=1),
        code("def handler():\n" + region("    return 42\n", "    ### BEGIN SOLUTION"), "work", count=2),
        markdown("Why does the loop stall?\n\n" + region("Because hashing holds the loop.\n"), "why"),
        code("check()\n", "visible", outputs=PASSED, count=3, check=f"{exercise}.offload", points=3),
        code("check_more()\n", "secret", outputs=PASSED, count=4, check=f"{exercise}.secret", points=2, hidden=True),
        exercise=exercise,
    )


@pytest.fixture
def course(tmp_path, monkeypatch):
    """A course directory with solutions/01_x.ipynb, as the current directory."""
    monkeypatch.chdir(tmp_path)
    save(a_solutions_notebook(), tmp_path / "solutions" / "01_x.ipynb")
    return tmp_path


# ----------------------------------------------------------------------------- stubs


def test_a_region_becomes_a_stub_with_the_default_message():
    nb = exercise_of(code(region(), "a"))
    assert nb.cells[0].source == '# YOUR CODE HERE\nraise NotImplementedError("write your solution here")\n'


def test_a_hint_on_the_begin_line_becomes_the_stubs_message():
    header = "### BEGIN SOLUTION hint: use loop.run_in_executor with a thread pool"
    nb = exercise_of(code(region(header=header), "a"))
    assert 'raise NotImplementedError("use loop.run_in_executor with a thread pool")' in nb.cells[0].source


def test_an_indented_region_keeps_its_indentation_in_the_stub():
    source = "async def handler():\n" + region("    return 1\n", "    ### BEGIN SOLUTION hint: offload")
    stub = exercise_of(code(source, "a")).cells[0].source
    assert stub == 'async def handler():\n    # YOUR CODE HERE\n    raise NotImplementedError("offload")\n'


def test_text_outside_regions_is_kept_and_every_region_is_stubbed():
    source = "x = 1\n" + region("y = 2\n") + "z = 3\n" + region("w = 4\n")
    stub = exercise_of(code(source, "a")).cells[0].source
    assert stub.count("# YOUR CODE HERE") == 2
    assert stub.startswith("x = 1\n") and "z = 3\n" in stub and "y = 2" not in stub and "w = 4" not in stub


def test_a_hint_with_quotes_still_gives_a_stub_that_runs_and_raises_it():
    header = '### BEGIN SOLUTION hint: call "run_in_executor" \\ not run()'
    stub = exercise_of(code(region(header=header), "a")).cells[0].source
    with pytest.raises(NotImplementedError, match='call "run_in_executor"'):
        exec(compile(stub, "<stub>", "exec"), {})


def test_a_markdown_region_becomes_your_answer_here():
    cell = exercise_of(markdown("Why?\n\n" + region("Because.\n"), "a")).cells[0]
    assert cell.source == "Why?\n\nYOUR ANSWER HERE\n"


def test_a_hint_in_a_markdown_region_follows_your_answer_here():
    cell = exercise_of(markdown(region("Because.\n", "### BEGIN SOLUTION hint: think of the loop"), "a")).cells[0]
    assert cell.source == "YOUR ANSWER HERE (hint: think of the loop)\n"


def test_cells_with_a_region_are_marked_as_solution_cells_and_others_are_not():
    nb = exercise_of(code(region(), "a"), markdown(region(), "b"), code("x = 1\n", "c"))
    assert [cell.metadata.get("labkit") for cell in nb.cells] == [{"solution": True}, {"solution": True}, None]


def test_the_solution_notebook_is_left_untouched():
    nb = a_solutions_notebook()
    before = nbformat.writes(nb)
    make_exercise(nb)
    assert nbformat.writes(nb) == before


# ----------------------------------------------------------------------------- cells


def test_code_outputs_are_cleared():
    nb = make_exercise(a_solutions_notebook())
    by_id = {cell.id: cell for cell in nb.cells}
    assert by_id["setup"].outputs == [] and by_id["work"].outputs == []
    assert by_id["setup"].execution_count is None and by_id["work"].execution_count is None


def test_a_check_cell_shows_not_run_yet_instead_of_the_solutions_result():
    solution = a_solutions_notebook()
    visible = next(cell for cell in make_exercise(solution).cells if cell.id == "visible")
    assert visible.execution_count is None
    [output] = visible.outputs
    text = output["data"]["text/plain"]
    assert text.startswith("◌ ex01.offload not run yet (3 points)") and "passed" not in text
    assert set(output["data"]) == {"text/plain"}  # no check record: no reader can take it for a verdict
    assert next(cell for cell in solution.cells if cell.id == "visible").outputs == PASSED  # the solution keeps its own


def test_hidden_checks_are_removed_from_the_exercise():
    nb = make_exercise(a_solutions_notebook())
    assert "secret" not in [cell.id for cell in nb.cells]


def test_check_cells_are_locked_against_editing_and_deletion():
    check = next(cell for cell in make_exercise(a_solutions_notebook()).cells if cell.id == "visible")
    assert check.metadata["editable"] is False and check.metadata["deletable"] is False
    assert check.metadata["labkit"] == {"check": "ex01.offload", "points": 3}


def test_cell_ids_and_order_are_those_of_the_solution():
    nb = make_exercise(a_solutions_notebook())
    assert [cell.id for cell in nb.cells] == ["intro", "setup", "work", "why", "visible"]


def test_parse_parts_lists_every_check_with_its_points_and_hidden_flag():
    assert parse_parts(a_solutions_notebook()) == [
        Part(id="ex01.offload", points=3, hidden=False, cell_index=4, cell_id="visible"),
        Part(id="ex01.secret", points=2, hidden=True, cell_index=5, cell_id="secret"),
    ]


def test_exercise_id_reads_the_notebook_metadata():
    assert exercise_id(a_solutions_notebook()) == "ex01"


# ----------------------------------------------------------------------------- malformed

MALFORMED_CELLS = {
    "begin_without_end": code("### BEGIN SOLUTION\nx = 1\n", "bad"),
    "end_without_begin": code("x = 1\n### END SOLUTION\n", "bad"),
    "nested_begin": code("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "bad"),
    "marker_with_one_hash": code("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "bad"),
    "text_after_begin_without_hint": code("### BEGIN SOLUTION do this\n### END SOLUTION\n", "bad"),
    "region_in_a_raw_cell": new_raw_cell(region(), id="bad"),
    "check_without_id": code("check()\n", "bad", points=1),
    "check_with_uppercase_id": code("check()\n", "bad", check="ex01.Offload", points=1),
    "check_without_a_part_name": code("check()\n", "bad", check="ex01", points=1),
    "check_of_another_exercise": code("check()\n", "bad", check="ex02.offload", points=1),
    "check_without_points": code("check()\n", "bad", check="ex01.offload"),
    "check_with_zero_points": code("check()\n", "bad", check="ex01.offload", points=0),
    "check_with_text_points": code("check()\n", "bad", check="ex01.offload", points="3"),
    "check_with_boolean_points": code("check()\n", "bad", check="ex01.offload", points=True),
    "check_with_misspelt_hidden": code("check()\n", "bad", check="ex01.offload", points=1, hiden=True),
    "check_with_non_boolean_hidden": code("check()\n", "bad", check="ex01.offload", points=1, hidden="yes"),
    "check_holding_a_solution": code(region(), "bad", check="ex01.offload", points=1),
    "check_in_a_markdown_cell": markdown("check", "bad"),
    "cell_marked_as_a_generated_solution": code("x = 1\n", "bad", solution=True),
}
MALFORMED_CELLS["check_in_a_markdown_cell"].metadata["labkit"] = {"check": "ex01.offload", "points": 1}


@pytest.mark.parametrize("case", sorted(MALFORMED_CELLS))
def test_a_malformed_cell_raises_assign_error_naming_the_notebook_and_cell(case):
    nb = notebook(markdown("intro", "intro"), MALFORMED_CELLS[case])
    with pytest.raises(AssignError, match=r"solutions/01_x\.ipynb: cell 1 \(id 'bad'"):
        make_exercise(nb, source="solutions/01_x.ipynb")


def test_two_checks_with_one_id_are_refused_naming_both_cells():
    nb = notebook(
        code("check()\n", "first", check="ex01.offload", points=1),
        code("check()\n", "second", check="ex01.offload", points=1),
    )
    with pytest.raises(AssignError, match=r"cell 1 \(id 'second'.*already used by cell 0"):
        make_exercise(nb, source="01_x.ipynb")


def test_a_notebook_without_exercise_metadata_is_refused_with_the_fix():
    with pytest.raises(AssignError, match=r"01_x\.ipynb: no labkit\.exercise.*add"):
        make_exercise(notebook(code("x = 1\n", "a"), exercise=None), source="01_x.ipynb")


def test_invalid_notebook_json_is_refused_naming_the_file(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "01_x.ipynb").write_text('{"cells": [', encoding="utf-8")
    with pytest.raises(AssignError, match=r"01_x\.ipynb: not valid notebook JSON \(line 1"):
        assign(tmp_path / "solutions", tmp_path / "exercises")


def test_a_cell_without_an_id_is_refused_instead_of_given_a_random_one(tmp_path):
    data = json.loads(nbformat.writes(a_solutions_notebook()))
    del data["cells"][2]["id"]
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "01_x.ipynb").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(AssignError, match=r"cell 2 \(no id.*has no id"):
        assign(tmp_path / "solutions", tmp_path / "exercises")


def test_two_notebooks_of_one_exercise_are_refused(course):
    save(a_solutions_notebook(), course / "solutions" / "02_y.ipynb")
    with pytest.raises(AssignError, match=r"02_y\.ipynb: labkit\.exercise 'ex01' is also"):
        assign("solutions", "exercises")


def test_assign_error_is_both_a_labkit_error_and_a_value_error():
    assert issubclass(AssignError, LabkitError) and issubclass(AssignError, ValueError)


# ----------------------------------------------------------------------------- files


def test_assign_writes_one_exercise_per_solution_and_reports_its_parts(course):
    report = assign("solutions", "exercises")
    assert [str(path) for path in report.written] == ["exercises/01_x.ipynb"]
    (only,) = report.notebooks
    assert (only.exercise, only.summary()) == ("ex01", "1 part, 3 points, 1 hidden check removed")


def test_assigning_twice_gives_byte_identical_files(course):
    assign("solutions", "exercises")
    first = (course / "exercises" / "01_x.ipynb").read_bytes()
    (course / "exercises" / "01_x.ipynb").unlink()
    assign("solutions", "exercises")
    assert (course / "exercises" / "01_x.ipynb").read_bytes() == first


def test_written_files_are_nbformat_json_with_indent_1_and_one_final_newline(course):
    assign("solutions", "exercises")
    text = (course / "exercises" / "01_x.ipynb").read_text(encoding="utf-8")
    assert text.startswith('{\n "cells": [') and text.endswith("}\n") and not text.endswith("\n\n")


def test_assigning_again_rewrites_nothing(course):
    assign("solutions", "exercises")
    report = assign("solutions", "exercises")
    assert report.written == () and report.removed == ()


def test_an_exercise_without_a_solution_is_removed_and_reported(course):
    save(notebook(code("x = 1\n", "a"), exercise="ex09"), course / "exercises" / "09_gone.ipynb")
    report = assign("solutions", "exercises")
    assert [str(path) for path in report.removed] == ["exercises/09_gone.ipynb"]
    assert not (course / "exercises" / "09_gone.ipynb").exists()


def test_checkpoints_and_temporary_files_are_not_treated_as_solutions(course):
    save(a_solutions_notebook(), course / "solutions" / ".ipynb_checkpoints" / "01_x-checkpoint.ipynb")
    save(a_solutions_notebook(), course / "solutions" / ".01_x.ipynb.abc.tmp.ipynb")
    report = assign("solutions", "exercises")
    assert [str(r.source) for r in report.notebooks] == ["solutions/01_x.ipynb"]


def test_nothing_is_written_when_one_notebook_of_several_is_malformed(course):
    save(notebook(code("x = 1\n", "a"), exercise="ex09"), course / "exercises" / "09_gone.ipynb")
    save(notebook(code("### BEGIN SOLUTION\n", "a"), exercise="ex02"), course / "solutions" / "02_y.ipynb")
    with pytest.raises(AssignError, match="02_y.ipynb"):
        assign("solutions", "exercises")
    assert sorted(path.name for path in (course / "exercises").iterdir()) == ["09_gone.ipynb"]


def test_an_empty_solutions_directory_is_refused_rather_than_emptying_the_exercises(tmp_path):
    (tmp_path / "solutions").mkdir()
    save(notebook(code("x = 1\n", "a")), tmp_path / "exercises" / "01_x.ipynb")
    with pytest.raises(AssignError, match="no \\*.ipynb notebooks"):
        assign(tmp_path / "solutions", tmp_path / "exercises")
    assert (tmp_path / "exercises" / "01_x.ipynb").exists()


def test_outdated_lists_missing_changed_and_orphaned_exercises(course):
    assign("solutions", "exercises")
    save(a_solutions_notebook("ex02"), course / "solutions" / "02_y.ipynb")
    save(notebook(code("x = 1\n", "a"), exercise="ex09"), course / "exercises" / "09_gone.ipynb")
    (course / "exercises" / "01_x.ipynb").write_text("{}", encoding="utf-8")
    stale = {str(item.target): item.reason for item in outdated("solutions", "exercises")}
    assert sorted(stale) == ["exercises/01_x.ipynb", "exercises/02_y.ipynb", "exercises/09_gone.ipynb"]
    assert stale["exercises/01_x.ipynb"].startswith("differs from")
    assert stale["exercises/02_y.ipynb"].startswith("missing")
    assert stale["exercises/09_gone.ipynb"].startswith("has no solutions notebook")


# ----------------------------------------------------------------------------- command line


def test_assign_is_a_labkit_subcommand():
    assert COMMANDS["assign"][0] == "labkit.cli._assign"


def test_the_command_prints_one_line_per_notebook_and_exits_0(course, capsys):
    assert main(["assign", "solutions/", "exercises/"]) == 0
    assert capsys.readouterr().out == (
        "solutions/01_x.ipynb -> exercises/01_x.ipynb: 1 part, 3 points, 1 hidden check removed\n"
    )


def test_the_command_reports_a_malformed_notebook_on_stderr_exits_1_and_writes_nothing(course, capsys):
    save(notebook(code("### END SOLUTION\n", "a"), exercise="ex02"), course / "solutions" / "02_y.ipynb")
    assert main(["assign", "solutions", "exercises"]) == 1
    assert capsys.readouterr().err.startswith("labkit assign: solutions/02_y.ipynb: cell 0 (id 'a'")
    assert not (course / "exercises").exists()


def test_check_mode_exits_1_listing_stale_files_and_writes_nothing(course, capsys):
    assert main(["assign", "--check", "solutions", "exercises"]) == 1
    assert capsys.readouterr().out.startswith("exercises/01_x.ipynb: missing")
    assert not (course / "exercises").exists()


def test_check_mode_exits_0_when_the_exercises_are_up_to_date(course):
    assert main(["assign", "solutions", "exercises"]) == 0
    assert main(["assign", "--check", "solutions", "exercises"]) == 0


# ----------------------------------------------------------------------------- package


def test_the_grading_package_exports_every_public_name_of_its_modules():
    names = ["notebook", "assign", "checks", "runner", "grade"]
    modules = [sys.modules[f"labkit.grading.{name}"] for name in names]
    assert sorted(labkit.grading.__all__) == sorted(name for module in modules for name in module.__all__)
    assert all(hasattr(labkit.grading, name) for name in labkit.grading.__all__)


def test_the_package_name_assign_is_the_function_even_after_importing_the_submodule():
    import labkit.grading.assign  # noqa: F401

    assert callable(labkit.grading.assign)


def test_importing_the_grading_package_does_not_import_nbformat():
    code = "import sys, labkit.grading, labkit.cli._assign; print('nbformat' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
