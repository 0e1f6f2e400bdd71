"""Exercises 04 and 05, as students get them: untouched they fail every part with a next step, and
deliberately wrong answers fail the part they get wrong, with the message that says why.

The solutions themselves pass under nbval (plain `pytest` replays solutions/). Here each notebook
runs in a fresh kernel, as `labkit check` runs it for a student.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from labkit.cli import main
from labkit.grading.runner import run_notebook

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_04 = ROOT / "solutions" / "04_worker_pools_and_the_gil.ipynb"
EXERCISE_04 = ROOT / "exercises" / "04_worker_pools_and_the_gil.ipynb"
SOLUTION_05 = ROOT / "solutions" / "05_shared_memory.ipynb"
EXERCISE_05 = ROOT / "exercises" / "05_shared_memory.ipynb"


def edited(solution: Path, replacements: dict[str, str], tmp_path: Path, name: str, extra_cells=()) -> Path:
    """The solution with each `old` replaced by `new` (each must be found), saved under tmp_path."""
    nb = nbformat.read(solution, as_version=4)
    found = dict.fromkeys(replacements, False)
    for cell in nb.cells:
        for old, new in replacements.items():
            if old in cell.source:
                cell.source = cell.source.replace(old, new)
                found[old] = True
    assert all(found.values()), f"the solution changed; update this test: {[k for k, v in found.items() if not v]}"
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in extra_cells)
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def by_part(path: Path) -> dict:
    _, outcomes = run_notebook(path)
    return {outcome.part: outcome for outcome in outcomes}


# --------------------------------------------------------------------------------------------
# exercise 04


def test_the_untouched_exercise_04_fails_both_parts_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_04)]) == 1
    out = " ".join(capsys.readouterr().out.split())  # the report wraps long lines
    assert "0/6 points" in out
    assert out.count("not done yet") == 2
    assert "one pool call hands over the whole batch" in out  # part 1's hint
    assert "primes_pool.map(primes_between" in out  # part 2's hint


def test_swapped_pool_kinds_fail_each_part_with_the_kind_it_should_have_been(tmp_path):
    path = edited(SOLUTION_04, {
        'hash_pool = WorkerPool("thread", workers="max")': 'hash_pool = WorkerPool("process", workers="max")',
        'primes_pool = WorkerPool("process", workers="max")': 'primes_pool = WorkerPool("thread", workers="max")',
    }, tmp_path, "swapped.ipynb")
    parts = by_part(path)
    hashing, counting = parts["ex04.hash_batch"], parts["ex04.count_batch"]
    assert not hashing.passed and "hashed in other processes" in hashing.message
    assert "use WorkerPool('thread', ...)" in hashing.message
    assert not counting.passed and "counted in this process" in counting.message
    assert "use WorkerPool('process', ...)" in counting.message
    assert parts["ex04.edges"].passed  # the counts are right; only the kinds are wrong
    assert sum(o.points for o in parts.values()) == 1


def test_pieces_that_miss_the_last_number_fail_the_count_and_the_hidden_edges(tmp_path):
    path = edited(SOLUTION_04, {
        "bounds = [limit * i // pieces for i in range(pieces + 1)]":
            "bounds = [limit * i // pieces for i in range(pieces + 1)]\n    bounds[-1] -= 1",
    }, tmp_path, "short.ipynb")
    parts = by_part(path)
    assert parts["ex04.hash_batch"].passed
    assert not parts["ex04.count_batch"].passed
    assert "there are 17984 primes below 200000" in parts["ex04.count_batch"].message
    assert not parts["ex04.edges"].passed and "Check the ends of your pieces" in parts["ex04.edges"].message


# --------------------------------------------------------------------------------------------
# exercise 05


def test_the_untouched_exercise_05_fails_every_part_with_a_next_step(capsys):
    assert main(["check", str(EXERCISE_05)]) == 1
    out = " ".join(capsys.readouterr().out.split())  # the report wraps long lines
    assert "0/7 points" in out
    assert out.count("not done yet") == 3
    assert "SharedArray.from_array and SharedArray.create in a with block" in out  # parallel_blur's hint


def test_bands_without_their_halo_fail_exactness_only(tmp_path):
    path = edited(SOLUTION_05, {
        "lo, hi = max(0, start - radius), min(len(whole), stop + radius)": "lo, hi = start, stop",
    }, tmp_path, "no_halo.ipynb")
    parts = by_part(path)
    exact = parts["ex05.exact"]
    assert not exact.passed and "rows near the edges of your bands" in exact.message and "(the halo)" in exact.message
    assert parts["ex05.shared"].passed and parts["ex05.tidy"].passed
    assert not parts["ex05.any_size"].passed


def test_copying_the_image_and_leaving_the_output_open_fail_sharing_and_tidiness(tmp_path):
    path = edited(SOLUTION_05, {
        "    whole = src.array\n": "    whole = src if isinstance(src, np.ndarray) else src.array\n",
        "with SharedArray.from_array(image) as src, SharedArray.create(image.shape) as dst:":
            "dst = SharedArray.create(image.shape, unlink_on_close=False)\n    LEFT.append(dst)\n"
            "    src = image\n    if True:",
    }, tmp_path, "copying.ipynb")
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
    parts = by_part(path)
    assert parts["ex05.exact"].passed
    shared, tidy = parts["ex05.shared"], parts["ex05.tidy"]
    assert not shared.passed and "the image itself travelled to the workers, copied" in shared.message
    assert not tidy.passed and "left 1 shared-memory segment(s) behind" in tidy.message
