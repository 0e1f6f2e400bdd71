"""labkit.record: what counts as evidence, where records are found, and when a notebook is written back."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest

import labkit
from labkit.record import (
    COULD_NOT_SHOW,
    EVIDENCE_KEY,
    MIN_DELIVERED_SHARE,
    Evidence,
    could_not_show,
    evidence,
    record_notebook,
    records_in,
    stored_problems,
    stored_records,
)

USABLE = labkit.usable_cores().usable


def record(value: float = 1.8, *, low: float | None = 1.5, high: float | None = None,
           delivered: float = 2.0, usable: int = 2) -> Evidence:
    return Evidence("C10 pure Python on processes", "speedup over serial (x)", value, low, high, delivered, usable)


# Evidence.problem, case by case


def test_a_value_in_its_band_on_a_free_machine_has_no_problem():
    assert record().problem() is None
    assert record().shows_claim


def test_a_machine_that_delivered_less_than_the_share_of_its_usable_cores_is_the_problem():
    busy = record(delivered=MIN_DELIVERED_SHARE * 2 - 0.01)
    assert not busy.machine_was_free and not busy.shows_claim
    assert "delivered 1.79 of 2 usable cores" in busy.problem()


def test_exactly_the_share_of_the_usable_cores_counts_as_free():
    assert record(delivered=MIN_DELIVERED_SHARE * 2).problem() is None


def test_a_busy_machine_is_reported_first_and_a_value_out_of_band_after_it():
    problem = record(value=0.5, delivered=0.4).problem()
    assert problem.startswith("C10 pure Python on processes: the machine delivered 0.40 of 2 usable cores")
    assert problem.endswith("record on an idle machine; and speedup over serial (x) was 0.5, outside [1.5, inf]")


def test_a_busy_machine_with_a_value_in_band_names_only_the_machine():
    assert record(delivered=0.4).problem().endswith("record on an idle machine")


def test_a_value_below_its_band_names_the_value_and_the_band():
    problem = record(value=1.2).problem()
    assert problem == "C10 pure Python on processes: speedup over serial (x) was 1.2, outside [1.5, inf]"


def test_a_value_above_a_ceiling_is_out_of_band():
    threads = record(value=1.6, low=None, high=1.2)
    assert not threads.in_band
    assert "outside [-inf, 1.2]" in threads.problem()


def test_the_ends_of_a_band_belong_to_it():
    assert record(value=1.5, low=1.5, high=2.0).in_band and record(value=2.0, low=1.5, high=2.0).in_band


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_value_that_is_not_finite_never_shows_a_claim(value):
    assert not record(value=value, low=None, high=None).in_band


def test_a_record_survives_the_trip_through_json():
    original = record(high=2.5)
    assert Evidence.from_dict(asdict(original)) == original


def test_outside_a_notebook_evidence_only_returns_the_record():
    made = evidence("C0 test", "a number", 3, delivered=1.5, low=1)
    assert made == Evidence("C0 test", "a number", 3.0, 1, None, 1.5, USABLE)


def test_evidence_refuses_a_band_that_is_upside_down():
    with pytest.raises(labkit.ConfigurationError, match=r"low end \(2\) is above its high end \(1\)"):
        evidence("C0 test", "a number", 1, delivered=2, low=2, high=1)


# Records and admissions in hand-made cells


def evidence_output(data: Evidence) -> dict:
    return {"output_type": "display_data", "data": {"text/plain": ""}, "metadata": {EVIDENCE_KEY: asdict(data)}}


def stream(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def test_records_in_finds_every_record_of_a_cell_in_order_and_ignores_other_outputs():
    first, second = record(), record(value=1.1, low=None, high=1.2)
    cell = {"cell_type": "code", "outputs": [stream("x\n"), evidence_output(first), evidence_output(second),
                                             {"output_type": "display_data", "data": {"text/plain": "plot"},
                                              "metadata": {}}]}
    assert records_in(cell) == [first, second]
    assert records_in({"cell_type": "code", "outputs": [stream("nothing here\n")]}) == []


def test_stored_records_reads_the_cell_metadata_not_the_outputs():
    kept = record()
    cell = {"cell_type": "code", "metadata": {"labkit": {"evidence": [asdict(kept)], "other": 1}},
            "outputs": [evidence_output(record(value=0.1))]}
    assert stored_records(cell) == [kept]
    assert stored_records({"cell_type": "code", "metadata": {}, "outputs": []}) == []


@pytest.mark.parametrize("phrase", COULD_NOT_SHOW)
def test_could_not_show_finds_an_admission_in_a_stream_in_any_case(phrase):
    cell = {"outputs": [stream("all fine\n"), stream(f"The speedups above {phrase.upper()} much.\nnext\n")]}
    assert could_not_show(cell) == f"The speedups above {phrase.upper()} much."


def test_could_not_show_reads_text_given_as_a_list_of_lines_and_plain_text_results():
    lines = {"outputs": [{"output_type": "stream", "name": "stdout", "text": ["ok\n", "it could not show a gain\n"]}]}
    result = {"outputs": [{"output_type": "execute_result", "data": {"text/plain": "'cannot show it'"},
                           "metadata": {}, "execution_count": 1}]}
    assert could_not_show(lines) == "it could not show a gain"
    assert could_not_show(result) == "'cannot show it'"


def test_could_not_show_is_none_for_a_run_that_admits_nothing():
    assert could_not_show({"outputs": [stream("it ran faster in proportion to the cores\n")]}) is None


def test_stored_problems_lists_each_failing_record_and_each_admission_by_cell():
    notebook = {"cells": [
        {"cell_type": "markdown", "source": "could not show (prose is not an output)", "metadata": {}},
        {"cell_type": "code", "metadata": {"labkit": {"evidence": [asdict(record()), asdict(record(value=1.0))]}},
         "outputs": []},
        {"cell_type": "code", "metadata": {}, "outputs": [stream("the speedups above cannot show much\n")]},
        {"cell_type": "code", "metadata": {"labkit": {"evidence": [asdict(record(delivered=1.0))]}}, "outputs": []},
    ]}
    problems = stored_problems(notebook)
    assert len(problems) == 3
    assert problems[0].startswith("cell 1: ") and "was 1, outside" in problems[0]
    assert problems[1].startswith("cell 2: ") and "cannot show" in problems[1]
    assert problems[2].startswith("cell 3: ") and "record on an idle machine" in problems[2]


def test_stored_problems_is_empty_for_good_records_and_for_no_records():
    good = {"cells": [{"cell_type": "code", "metadata": {"labkit": {"evidence": [asdict(record())]}}, "outputs": []}]}
    assert stored_problems(good) == [] and stored_problems({"cells": []}) == []


# record_notebook on tiny notebooks, run in a real kernel


def tiny_notebook(path: Path, value: float, *, low: float, delivered: str = "float(USABLE)") -> Path:
    """A notebook whose cell ends by recording `value` against [low, inf), and a cell with labkit metadata."""
    measure = nbformat.v4.new_code_cell(
        "import labkit\n"
        "from labkit.record import evidence\n"
        "USABLE = labkit.usable_cores().usable  # usable cores, as labkit counts them\n"
        "print('measured')\n"
        f"evidence('C0 tiny', 'a measured number', {value!r}, delivered={delivered}, low={low!r})"
    )
    kept = nbformat.v4.new_code_cell("print('no claim here')")
    kept.metadata["labkit"] = {"grading": "kept"}
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Tiny"), measure, kept])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_a_notebook_whose_record_holds_is_written_back_with_the_record_in_its_cell_metadata(tmp_path):
    path = tiny_notebook(tmp_path / "good.ipynb", 2.0, low=1.5)
    assert record_notebook(path, timeout=120) == []
    written = nbformat.read(path, as_version=4)
    measure, kept = written.cells[1], written.cells[2]
    assert stored_records(measure) == [Evidence("C0 tiny", "a measured number", 2.0, 1.5, None, float(USABLE), USABLE)]
    assert records_in(measure) == stored_records(measure)  # the output carries it too
    assert [o.output_type for o in measure.outputs] == ["stream", "display_data"]  # the record shows no repr
    assert measure.outputs[0].text == "measured\n" and measure.outputs[1].data == {"text/plain": ""}
    assert kept.metadata["labkit"] == {"grading": "kept"}  # other labkit metadata survives
    assert not any("execution" in cell.metadata for cell in written.cells)  # no timestamps to churn the diff
    assert stored_problems(written) == []


def test_a_notebook_with_a_record_out_of_its_band_is_refused_and_left_untouched(tmp_path):
    path = tiny_notebook(tmp_path / "bad.ipynb", 1.0, low=1.5)
    before = path.read_bytes()
    problems = record_notebook(path, timeout=120)
    assert len(problems) == 1 and problems[0].startswith("cell 1: C0 tiny: a measured number was 1, outside [1.5, inf]")
    assert path.read_bytes() == before


def test_a_notebook_run_on_a_machine_that_delivered_too_little_is_refused(tmp_path):
    path = tiny_notebook(tmp_path / "busy.ipynb", 2.0, low=1.5, delivered="0.5 * USABLE")
    before = path.read_bytes()
    problems = record_notebook(path, timeout=120)
    assert len(problems) == 1 and "record on an idle machine" in problems[0]
    assert path.read_bytes() == before


def test_a_notebook_whose_run_fails_is_refused_with_the_error_and_left_untouched(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('broken lab')")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "broken.ipynb"
    nbformat.write(notebook, path)
    before = path.read_bytes()
    assert record_notebook(path, timeout=120) == ["the run failed, a cell raised ValueError: broken lab"]
    assert path.read_bytes() == before
