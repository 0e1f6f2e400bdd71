"""Exercise 05, as students get it: untouched it fails every part with a next step, deliberately
wrong answers fail the part they get wrong with the message that says why, and the other correct
ways to cut the bands pass.

Each notebook runs in a fresh kernel, as ``labkit check`` runs it for a student. The solution itself
passes under nbval (plain ``pytest`` replays solutions/).
"""

from __future__ import annotations

import nbformat
import pytest
from helpers import EXERCISES, SOLUTIONS, edited_notebook, outcomes_by_part

from labkit.cli import main

SOLUTION_05 = SOLUTIONS / "05_shared_memory.ipynb"
EXERCISE_05 = EXERCISES / "05_shared_memory.ipynb"

HALO = "    lo, hi = max(0, start - radius), min(len(whole), stop + radius)  # the band and its halo\n"
WRITE = "    dst.array[start:stop] = blur(whole[lo:hi], radius)[start - lo:stop - lo]\n"
GUARD = "    if start >= stop:\n        return  # an empty band (more workers than rows)\n"
BOUNDS = "    bounds = [len(image) * i // bands for i in range(bands + 1)]\n"
MAP = "        list(pool.map(blur_band, [src] * bands, [dst] * bands, bounds[:-1], bounds[1:], [radius] * bands))\n"


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


def test_every_worker_blurring_the_whole_image_fails_sharing_with_the_work_measured(tmp_path):
    # "Passes without understanding": the output is exact, the image travels as a handle, nothing is
    # left behind; but every task blurs the whole image and keeps its own rows of the result.
    path = edited_notebook(SOLUTION_05, {
        WRITE: "    dst.array[start:stop] = blur(whole, radius)[start:stop]\n",
    }, tmp_path / "whole_image.ipynb")
    parts = outcomes_by_part(path)
    assert parts["ex05.exact"].passed and parts["ex05.tidy"].passed and parts["ex05.any_size"].passed
    shared = parts["ex05.shared"]
    assert not shared.passed
    assert "times the CPU time of a serial blur of the whole image" in shared.message
    assert "each task blurred (about) the whole image" in shared.message


def test_one_task_blurring_everything_fails_sharing_with_its_share_of_the_work(tmp_path):
    # Every band is a task, so the pool gets one per worker; but the first does all the blurring.
    path = edited_notebook(SOLUTION_05, {
        WRITE: "    if start == 0:\n        dst.array[:] = blur(whole, radius)\n",
    }, tmp_path / "lopsided.ipynb")
    parts = outcomes_by_part(path)
    assert parts["ex05.exact"].passed and parts["ex05.tidy"].passed
    shared = parts["ex05.shared"]
    assert not shared.passed and "that task did nearly all the blurring" in shared.message


def test_a_crash_in_the_bands_names_the_image_and_what_went_wrong(tmp_path):
    # The halo not clamped at the top: whole[-4:hi] is an empty slice, and blur's own error alone
    # ("an empty axis") would say nothing about which image or why.
    path = edited_notebook(SOLUTION_05, {
        HALO: "    lo, hi = start - radius, min(len(whole), stop + radius)\n",
    }, tmp_path / "unclamped.ipynb")
    parts = outcomes_by_part(path)
    exact = parts["ex05.exact"]
    assert not exact.passed
    assert "for a 1021x768 image and radius 4, parallel_blur raised ConfigurationError" in exact.message
    assert "a negative index counts from the bottom" in exact.message


def test_bands_counted_for_the_visible_pools_pass_the_visible_checks_and_fail_the_hidden_one(tmp_path):
    # Fitted to the visible checks, whose pools have three and six workers.
    path = edited_notebook(SOLUTION_05, {"    bands = pool.workers\n": "    bands = 6\n"},
                           tmp_path / "six.ipynb")
    parts = outcomes_by_part(path)
    assert all(parts[part].passed for part in ("ex05.exact", "ex05.shared", "ex05.tidy"))
    hidden = parts["ex05.any_size"]
    assert not hidden.passed and "sent 6 task(s) to a pool of 7 workers" in hidden.message


def test_a_halo_fitted_to_the_visible_radius_fails_the_hidden_check(tmp_path):
    path = edited_notebook(SOLUTION_05, {
        HALO: "    lo, hi = max(0, start - 4), min(len(whole), stop + 4)\n",
    }, tmp_path / "halo_of_four.ipynb")
    parts = outcomes_by_part(path)
    assert parts["ex05.exact"].passed
    hidden = parts["ex05.any_size"]
    assert not hidden.passed and "radius 12" in hidden.message and "(the halo)" in hidden.message


ALTERNATIVES = {
    "array_split": {
        BOUNDS: "    rows = [r for r in np.array_split(np.arange(len(image)), bands) if len(r)]\n"
                "    starts, stops = [int(r[0]) for r in rows], [int(r[-1]) + 1 for r in rows]\n",
        MAP: "        list(pool.map(blur_band, [src] * len(rows), [dst] * len(rows), starts, stops,"
             " [radius] * len(rows)))\n",
    },
    "divmod": {
        BOUNDS: "    size, extra = divmod(len(image), bands)\n"
                "    bounds = [i * size + min(i, extra) for i in range(bands + 1)]\n",
    },
    "match": {
        GUARD: "    match stop - start:\n"
               "        case 0:\n"
               "            return  # an empty band\n"
               "        case _:\n"
               "            pass\n",
    },
}


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_other_correct_ways_to_cut_the_bands_pass_every_part(tmp_path, name):
    path = edited_notebook(SOLUTION_05, ALTERNATIVES[name], tmp_path / f"{name}.ipynb")
    parts = outcomes_by_part(path)
    failed = {part: outcome.message for part, outcome in parts.items() if not outcome.passed}
    assert not failed


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
