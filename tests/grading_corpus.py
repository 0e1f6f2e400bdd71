"""A corpus of exercise-01 submissions for ``labkit grade``, made from the real solution.

Each entry is a student who did something a grader must survive or see through, and the score the
grader must give. Notebooks are written from ``solutions/01_event_loop_blocking.ipynb`` and
``exercises/01_event_loop_blocking.ipynb`` by exact text replacements that fail loudly when the
solution changes, so the corpus always follows the real exercise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_01 = ROOT / "solutions" / "01_event_loop_blocking.ipynb"
EXERCISE_01 = ROOT / "exercises" / "01_event_loop_blocking.ipynb"

# The solution lines the corpus rewrites.
LOGIN = "return await loop.run_in_executor(threads, labkit.hash_password, password, SALT, COST)"
REPORT = "return await loop.run_in_executor(processes, labkit.count_primes, limit)"
REPORT_DEF = "async def count_report(limit: int) -> int:"
LOGIN_DEF = "async def login(password: str) -> str:"
CHECK_HASH = 'await labkit.check("ex01.offload_hash", login, cost=COST)'
CHECK_PRIMES = 'await labkit.check("ex01.offload_primes", count_report)'

RESULT_MIME = "application/vnd.labkit.check+json"

#: Every student of the corpus, so tests can be parametrized before the corpus is written.
STUDENTS = ("alice", "bob", "carol", "dan", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
            "mallory", "oscar", "peggy", "sybil", "trent", "walter")


@dataclass(frozen=True)
class Expected:
    """What the grader must give one student: exercise, points, and per-part statuses or phrases."""

    exercise: str
    points: float
    max_points: float
    status: str = "graded"
    parts: tuple[tuple[str, str, str], ...] = ()  # (part, status, phrase in the message)


def _replace(nb, old: str, new: str):
    """Replace ``old`` by ``new`` in the one code cell that holds it."""
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    hits = sum(cell.source.count(old) for cell in code)
    assert hits == 1, f"expected one {old!r} in the code cells, found {hits}: update tests/grading_corpus.py"
    for cell in code:
        cell.source = cell.source.replace(old, new)
    return nb


def _cell_index(nb, text: str) -> int:
    found = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and text in cell.source]
    assert len(found) == 1, f"expected one cell with {text!r}: update tests/grading_corpus.py"
    return found[0]


def solution():
    return nbformat.read(SOLUTION_01, as_version=4)


def exercise():
    return nbformat.read(EXERCISE_01, as_version=4)


def partly_right():
    """Login right; the report in a thread (no second core): part 1 and the hidden check pass."""
    return _replace(solution(), REPORT, "return await loop.run_in_executor(threads, labkit.count_primes, limit)")


def wrong_answers():
    """Hashing on the loop, counting in a thread: every part fails."""
    nb = _replace(solution(), LOGIN, "return labkit.hash_password(password, SALT, COST)")
    return _replace(nb, REPORT, "return await loop.run_in_executor(threads, labkit.count_primes, limit)")


def infinite_loop():
    """The report's cell loops forever before defining anything."""
    return _replace(solution(), REPORT_DEF, "while True:\n    pass\n\n" + REPORT_DEF)


def exit_in_check():
    """count_report ends the kernel with os._exit(1) when the check calls it."""
    return _replace(solution(), REPORT, "import os\n    os._exit(1)")


def segfault():
    """The login cell crashes the kernel (a NULL read through ctypes) before defining login."""
    return _replace(solution(), LOGIN_DEF, "import ctypes\nctypes.string_at(0)\n\n" + LOGIN_DEF)


def edited_check():
    """Login blocks the loop; its check cell is edited to print a pass and show a passing record."""
    nb = _replace(solution(), LOGIN, "return labkit.hash_password(password, SALT, COST)")
    fake = (
        'from IPython.display import display\n'
        'print("✔ ex01.offload_hash passed: login() returns the right hash and the event loop stays free.")\n'
        f'display({{"{RESULT_MIME}": {{"part": "ex01.offload_hash", "passed": True, "message": "ok"}}}}, raw=True)'
    )
    return _replace(nb, CHECK_HASH, fake)


def deleted_check():
    """The solution with the first check cell deleted: the grader puts it back."""
    nb = solution()
    del nb.cells[_cell_index(nb, CHECK_HASH)]
    return nb


def redefined_names():
    """Partly right, then `labkit` and `check` rebound to fakes that display passing records."""
    nb = partly_right()
    fake = nbformat.v4.new_code_cell(
        "import labkit as _real\n"
        "from IPython.display import display\n\n"
        "async def check(part, *args, **kwargs):\n"
        f"    display({{'{RESULT_MIME}': {{'part': part, 'passed': True, 'message': 'fake'}},\n"
        "             'text/plain': f'✔ {part} passed: fake'}, raw=True)\n\n"
        "class _Fake:\n"
        "    check = staticmethod(check)\n"
        "    def __getattr__(self, name):\n"
        "        return getattr(_real, name)\n\n"
        "labkit = _Fake()"
    )
    nb.cells.insert(_cell_index(nb, LOGIN_DEF) + 1, fake)
    return nb


def fake_records():
    """The untouched exercise with fakes everywhere: a printed pass line, displayed check records
    (in a cell of its own and from inside login, while the check runs), and a forged grader seal."""
    nb = exercise()
    forge = (
        "from IPython.display import display\n"
        "for part in ('ex01.offload_hash', 'ex01.offload_primes', 'ex01.many_logins'):\n"
        "    print(f'✔ {part} passed: looks right')\n"
        f"    display({{'{RESULT_MIME}': {{'part': part, 'passed': True, 'message': 'fake'}}}}, raw=True)"
    )
    nb.cells.insert(2, nbformat.v4.new_code_cell(forge))
    login = _cell_index(nb, LOGIN_DEF)
    nb.cells[login].source = (
        "from IPython.display import display\n\n"
        f"{LOGIN_DEF}\n"
        f"    display({{'{RESULT_MIME}': {{'part': 'ex01.offload_hash', 'passed': True,\n"
        "             'message': 'fake'}}, raw=True)\n"
        "    display({'application/vnd.labkit.grade-seal+json': {'part': 'ex01.offload_hash', 'passed': True,\n"
        "             'message': '', 'token': '0' * 64}}, raw=True)\n"
        "    return 'not a hash'\n"
    )
    return nb


def agreeable_answers():
    """No work at all: every function returns an object that says it equals whatever it is compared
    with (its __eq__ answers True, its __ne__ False, also as an int subclass)."""
    nb = exercise()
    login = _cell_index(nb, LOGIN_DEF)
    nb.cells[login].source = (
        "class Agreeable(int):\n"
        "    def __eq__(self, other):\n"
        "        return True\n\n"
        "    def __ne__(self, other):\n"
        "        return False\n\n"
        "    __hash__ = int.__hash__\n\n"
        "class AgreeableList(list):\n"
        "    __eq__ = Agreeable.__eq__\n"
        "    __ne__ = Agreeable.__ne__\n\n"
        f"{LOGIN_DEF}\n"
        "    return Agreeable(0)\n"
    )
    report = _cell_index(nb, REPORT_DEF)
    nb.cells[report].source = f"{REPORT_DEF}\n    return Agreeable(0)\n"
    return nb


def extra_cells():
    """The solution with the student's own cells added between and after the parts."""
    nb = solution()
    login = _cell_index(nb, LOGIN_DEF)
    nb.cells.insert(login + 1, nbformat.v4.new_code_cell("# trying things out\nattempts = []"))
    nb.cells.insert(login + 2, nbformat.v4.new_markdown_cell("My notes: a thread suits scrypt."))
    nb.cells.append(nbformat.v4.new_code_cell("print('done, attempts:', attempts)"))
    return nb


def exercise_90() -> nbformat.NotebookNode:
    """A tiny second exercise, with a check registered by its own first cell."""
    setup = (
        "import labkit\n"
        "from labkit.grading.checks import Fail, register\n\n"
        '@register("ex90.answer")\n'
        "async def _check_answer(answer):\n"
        "    if answer != 42:\n"
        '        raise Fail(f"the answer is 42, not {answer}")\n'
        '    return "the answer is 42."'
    )
    answer = nbformat.v4.new_code_cell("### BEGIN SOLUTION\nanswer = 6 * 7\n### END SOLUTION")
    check = nbformat.v4.new_code_cell('await labkit.check("ex90.answer", answer)',
                                      metadata={"labkit": {"check": "ex90.answer", "points": 2}})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup), answer, check])
    nb.metadata = copy.deepcopy(solution().metadata)
    nb.metadata["labkit"] = {"exercise": "ex90", "lab": "90_tiny"}
    return nb


def _write(path: Path, nb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def build(root: Path) -> tuple[Path, Path, dict[str, Expected]]:
    """Write the solutions folder (ex01 and ex90) and the submissions; return them and the scores due."""
    solutions = root / "solutions"
    submissions = root / "submissions"
    _write(solutions / SOLUTION_01.name, solution())
    _write(solutions / "90_tiny.ipynb", exercise_90())
    full = (("ex01.offload_hash", "passed", ""), ("ex01.offload_primes", "passed", ""),
            ("ex01.many_logins", "passed", ""))
    corpus = {
        "alice": (solution(), Expected("ex01", 7, 7, parts=full)),
        "bob": (exercise(), Expected("ex01", 0, 7, parts=(
            ("ex01.offload_hash", "failed", "not done yet"), ("ex01.offload_primes", "failed", "not done yet"),
            ("ex01.many_logins", "failed", "not done yet")))),
        "carol": (wrong_answers(), Expected("ex01", 0, 7, parts=(
            ("ex01.offload_hash", "failed", "still blocks the event loop"),
            ("ex01.offload_primes", "failed", "computed in this process")))),
        "dan": (partly_right(), Expected("ex01", 4, 7, parts=(
            ("ex01.offload_hash", "passed", ""), ("ex01.offload_primes", "failed", "use the process pool"),
            ("ex01.many_logins", "passed", "")))),
        "erin": (infinite_loop(), Expected("ex01", 4, 7, parts=(
            ("ex01.offload_primes", "failed", "ran longer than"), ("ex01.many_logins", "passed", "")))),
        "frank": (exit_in_check(), Expected("ex01", 4, 7, parts=(
            ("ex01.offload_primes", "crashed", "exited with status 1"), ("ex01.many_logins", "passed", "")))),
        "grace": (segfault(), Expected("ex01", 3, 7, parts=(
            ("ex01.offload_hash", "failed", "segmentation fault"), ("ex01.offload_primes", "passed", "")))),
        "ivan": (edited_check(), Expected("ex01", 3, 7, parts=(
            ("ex01.offload_hash", "failed", "still blocks the event loop"),
            ("ex01.offload_primes", "passed", "")))),
        "judy": (deleted_check(), Expected("ex01", 7, 7, parts=full)),
        "mallory": (redefined_names(), Expected("ex01", 4, 7, parts=(
            ("ex01.offload_primes", "failed", "use the process pool"),))),
        "oscar": (fake_records(), Expected("ex01", 0, 7, parts=(
            ("ex01.offload_hash", "failed", "The grader ignored"),))),
        "peggy": (extra_cells(), Expected("ex01", 7, 7, parts=full)),
        "sybil": (agreeable_answers(), Expected("ex01", 0, 7, parts=(
            ("ex01.offload_hash", "failed", "which the check does not compare"),
            ("ex01.offload_primes", "failed", "which the check does not compare"),
            ("ex01.many_logins", "failed", "which the check does not compare")))),
    }
    expected = {}
    for student, (nb, due) in corpus.items():
        _write(submissions / f"{student}.ipynb", nb)
        expected[student] = due
    # One folder per student, and a file named like exercise 01 that is exercise 02 inside.
    (submissions / "alice.ipynb").rename(_folder(submissions / "alice") / SOLUTION_01.name)
    _write(submissions / "dave" / SOLUTION_01.name, exercise_90())
    expected["dave"] = Expected("ex90", 2, 2, parts=(("ex90.answer", "passed", ""),))
    text = nbformat.writes(solution())  # cut off mid-upload, in a folder named for the student
    (_folder(submissions / "heidi") / SOLUTION_01.name).write_text(text[: len(text) // 2], encoding="utf-8")
    expected["heidi"] = Expected("ex01", 0, 7, status="rejected",
                                 parts=(("", "rejected", "not valid notebook JSON"),))
    (submissions / "trent.ipynb").write_bytes(b"")
    expected["trent"] = Expected("", 0, 0, status="rejected", parts=(("", "rejected", "the file is empty"),))
    # JSON nested deeper than Python's recursion limit: one rejected line, and the batch goes on.
    (submissions / "walter.ipynb").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    expected["walter"] = Expected("", 0, 0, status="rejected", parts=(("", "rejected", "nests JSON"),))
    assert sorted(expected) == sorted(STUDENTS)
    return solutions, submissions, expected


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
