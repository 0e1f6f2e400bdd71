"""Helpers shared by the tests: waiting for a condition, telling Python's own helper processes from
a test's, and editing a course notebook.

A plain module rather than fixtures, so that conftest.py, the test modules and the grading corpus
import the same functions. Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
import psutil

if TYPE_CHECKING:
    from labkit.grading.runner import PartOutcome

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
EXERCISES = ROOT / "exercises"


def wait_until(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds have passed; return its last verdict.

    The condition is asked once more after the deadline, so a slow machine that gets there just in
    time is not failed by the last sleep.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


async def wait_until_async(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """:func:`wait_until` for code that runs in an event loop: it sleeps without blocking the loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(interval)
    return bool(condition())


# multiprocessing's own helpers: one resource tracker (and one fork server) per interpreter, started
# on first use and ended by the interpreter that started them when it exits. They are Python's
# bookkeeping, not something a test or a notebook left running. Careful: processes the fork
# server forks (pool and cluster workers) inherit its command line, and those do count.
RESOURCE_TRACKER = "multiprocessing.resource_tracker"
FORK_SERVER = "multiprocessing.forkserver"


def _command(proc: psutil.Process | None) -> str:
    try:
        return " ".join(proc.cmdline()) if proc is not None else ""
    except psutil.Error:
        return ""


def is_interpreter_helper(proc: psutil.Process) -> bool:
    """Whether ``proc`` is multiprocessing's resource tracker or fork server (not a worker)."""
    command = _command(proc)
    if RESOURCE_TRACKER in command:
        return True
    if FORK_SERVER in command:
        try:
            parent = proc.parent()
        except psutil.Error:
            return False
        return FORK_SERVER not in _command(parent)  # the server itself, not one of its forks
    return False


def replace_once(nb: nbformat.NotebookNode, old: str, new: str) -> nbformat.NotebookNode:
    """Replace ``old`` by ``new`` in ``nb``'s code cells, where it must occur exactly once.

    Loud on purpose: when a solution changes, the tests that rewrite it fail here with the text they
    looked for, instead of quietly testing an unedited notebook.
    """
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    hits = sum(cell.source.count(old) for cell in code)
    assert hits == 1, f"expected {old!r} once in the code cells, found it {hits} times: the notebook changed, update this test"
    for cell in code:
        cell.source = cell.source.replace(old, new)
    return nb


def edited_notebook(source: Path, replacements: dict[str, str], path: Path,
                    extra_cells: Iterable[str] = ()) -> Path:
    """Write to ``path`` a copy of the notebook ``source`` with each ``old: new`` replacement made.

    Each ``old`` must occur exactly once (see :func:`replace_once`); ``extra_cells`` are appended as
    code cells. Returns ``path``.
    """
    nb = nbformat.read(source, as_version=4)
    for old, new in replacements.items():
        replace_once(nb, old, new)
    nb.cells.extend(nbformat.v4.new_code_cell(cell) for cell in extra_cells)
    nbformat.write(nb, path)
    return path


def outcomes_by_part(path: Path) -> dict[str, PartOutcome]:
    """Run the notebook at ``path`` in a fresh kernel, as ``labkit check`` does; its outcomes by part id."""
    from labkit.grading.runner import run_notebook  # imported on use: conftest imports this module too

    _, outcomes = run_notebook(path)
    by_part = {outcome.part: outcome for outcome in outcomes}
    assert len(by_part) == len(outcomes), f"a part was checked twice: {[o.part for o in outcomes]}"
    return by_part
