"""Exercise 05, as students get it: untouched it fails every part with a next step, and deliberately
wrong answers fail the part they get wrong, with the message that says why.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it for a student. The solution itself
passes under nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

import nbformat
from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part

from labkit.cli import main

SOLUTION_05 = SOLUTIONS / "05_shared_memory.ipynb"
EXERCISE_05 = EXERCISES / "05_shared_memory.ipynb"


def test_the_untouched_exercise_fails_every_part_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_05)]) == 1
    out = " ".join(capsys.readouterr().out.split())  # the report wraps long lines
    assert "0/7 points" in out
    assert out.count("not done yet") == 3
    assert "SharedArray.from_array and SharedArray.create in a with block" in out  # parallel_blur's hint


def test_bands_without_their_halo_fail_exactness_only(tmp_path):
    path = edited_notebook(SOLUTION_05, {
        "lo, hi = max(0, start - radius), min(len(whole), stop + radius)": "lo, hi = start, stop",
    }, tmp_path / "no_halo.ipynb")
    parts = outcomes_by_part(path)
    exact = parts["ex05.exact"]
    assert not exact.passed and "rows near the edges of your bands" in exact.message and "(the halo)" in exact.message
    assert parts["ex05.shared"].passed and parts["ex05.tidy"].passed
    assert not parts["ex05.any_size"].passed


def test_copying_the_image_and_leaving_the_output_open_fail_sharing_and_tidiness(tmp_path):
    path = edited_notebook(SOLUTION_05, {
        "    whole = src.array\n": "    whole = src if isinstance(src, np.ndarray) else src.array\n",
        "with SharedArray.from_array(image) as src, SharedArray.create(image.shape) as dst:":
            "dst = SharedArray.create(image.shape, unlink_on_close=False)\n    LEFT.append(dst)\n"
            "    src = image\n    if True:",
    }, tmp_path / "copying.ipynb")
    # The segments this wrong answer leaves are removed right after each cell that made them: /dev/shm
    # is shared with every process on the machine, and other test runs' leak guards sweep it.
    nb = nbformat.read(path, as_version=4)
    cleanup = "for shared in LEFT:\n    shared.unlink()\n    shared.close()\nLEFT.clear()"
    cells = [nbformat.v4.new_code_cell("LEFT = []  # the output arrays this wrong answer never closes")]
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type == "code" and "parallel_blur" in cell.source and "def parallel_blur" not in cell.source:
            cells.append(nbformat.v4.new_code_cell(cleanup))
    nb.cells = cells
    nbformat.write(nb, path)
    parts = outcomes_by_part(path)
    assert parts["ex05.exact"].passed
    shared, tidy = parts["ex05.shared"], parts["ex05.tidy"]
    assert not shared.passed and "the image itself travelled to the workers, copied" in shared.message
    assert not tidy.passed and "left 1 shared-memory segment(s) behind" in tidy.message
