"""Shared test fixtures, and the guard that nothing is left behind.

Every unit test runs under :func:`leak_guard`: after the test, any child process, new
``/dev/shm`` segment or listening socket it left behind fails the test (and is cleaned up, so one
leak does not fail every test after it). Notebooks replayed by nbval get the same treatment at
notebook granularity: when a notebook's last cell has run, its kernel must have no children, no
new shared-memory segments and no listening sockets beyond the ones it started with.
"""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest
from helpers import is_interpreter_helper, wait_until

# A shell starts a background job (`bash .ci/run &`, nohup) with SIGINT ignored, and that carries
# over to every process the tests start: a grader sent SIGINT, as Ctrl-C in a terminal would, then
# ignores it and the test waits in vain (seen in a CI rehearsal started that way). Give the run the
# Ctrl-C of a terminal; a child that installs no handler of its own then gets the default one.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHM = Path("/dev/shm")

# Processes can take a moment to be reaped after a clean stop; this is how long the guard waits
# for stragglers before it calls them leaked.
GRACE_SECONDS = 5.0


def _shm_names() -> set[str]:
    if not SHM.is_dir():
        return set()
    # POSIX semaphores (sem.*) belong to multiprocessing's own bookkeeping and are reaped by it.
    return {p.name for p in SHM.iterdir() if not p.name.startswith("sem.")}


def _someone_elses(segment: str, root: psutil.Process) -> bool:
    """Whether a labkit segment (``labkit_<pid>_...``) belongs to a live process outside ``root``'s tree.

    Segments name their creator, so a test is not blamed for what another program on the same
    machine (another test run, a notebook) created meanwhile. Other names cannot be attributed
    and always count.
    """
    parts = segment.split("_")
    if len(parts) < 3 or parts[0] != "labkit" or not parts[1].isdigit():
        return False
    creator = int(parts[1])
    try:
        ours = {root.pid} | {c.pid for c in root.children(recursive=True)}
    except psutil.Error:
        return False
    return creator not in ours and psutil.pid_exists(creator)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [
            c for c in proc.children(recursive=True)
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE and not is_interpreter_helper(c)
        ]
    except psutil.Error:
        return []


def _listening(pids: set[int]) -> set[tuple[int, str, int]]:
    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.add((conn.pid, conn.laddr.ip, conn.laddr.port))
    return found


def leftovers(root: psutil.Process, shm_before: set[str], listening_before: set, children_before: frozenset[int] = frozenset()) -> list[str]:
    """Describe what ``root`` left behind since the snapshot; wait a little for clean exits."""
    problems: list[str] = []

    def new_children() -> list[psutil.Process]:
        # What a pre-existing child (say, a module-scoped server) starts is that child's business.
        owned = set(children_before)
        for pid in children_before:
            try:
                owned |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
            except psutil.Error:
                pass
        return [c for c in _children(root) if c.pid not in owned]

    if not wait_until(lambda: not new_children(), GRACE_SECONDS, interval=0.05):
        for child in new_children():
            try:
                problems.append(f"child process {child.pid} ({' '.join(child.cmdline())[:120]})")
                child.kill()
            except psutil.Error:
                pass
    def new_segments() -> list[str]:
        return sorted(name for name in _shm_names() - shm_before if not _someone_elses(name, root))

    if not wait_until(lambda: not new_segments(), GRACE_SECONDS, interval=0.05):
        for name in new_segments():
            problems.append(f"shared-memory segment /dev/shm/{name}")
            try:
                (SHM / name).unlink()
            except OSError:
                pass
    pids = {root.pid} | {c.pid for c in _children(root)}
    new_sockets = _listening(pids) - listening_before
    problems += [f"listening socket {ip}:{port} (pid {pid})" for pid, ip, port in sorted(new_sockets)]
    return problems


@pytest.fixture(autouse=True)
def leak_guard():
    """Fail the test if it leaves a child process, a /dev/shm segment or a listening socket."""
    me = psutil.Process()
    children_before = frozenset(c.pid for c in _children(me))  # e.g. a module-scoped server
    shm_before = _shm_names()
    listening_before = _listening({me.pid} | children_before)
    yield
    problems = leftovers(me, shm_before, listening_before, children_before)
    if problems:
        pytest.fail("test left behind: " + "; ".join(problems), pytrace=False)


# --------------------------------------------------------------------------------------------
# The same guard, per notebook, for nbval's kernels.
#
# Hooks written in this conftest would only see items under tests/, and the notebooks live in
# notebooks/ and solutions/. A plugin object registered at configure time sees every item.


class NotebookGuard:
    """Fail a notebook's last cell if the notebook left processes, segments or sockets behind."""

    def __init__(self):
        self.state: dict[str, tuple] = {}
        self.last_cells: set[int] = set()

    @staticmethod
    def is_cell(item) -> bool:
        return str(getattr(item, "path", "")).endswith(".ipynb")

    @staticmethod
    def kernel_process(item) -> psutil.Process | None:
        kernel = getattr(item.parent, "kernel", None)
        manager = getattr(kernel, "km", None)
        provisioner = getattr(manager, "provisioner", None)
        pid = getattr(getattr(provisioner, "process", None), "pid", None)
        try:
            return psutil.Process(pid) if pid else None
        except psutil.Error:
            return None

    def pytest_collection_modifyitems(self, items):
        for current, following in zip(items, [*items[1:], None]):
            if self.is_cell(current) and (following is None or following.path != current.path):
                self.last_cells.add(id(current))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        if self.is_cell(item) and str(item.path) not in self.state:
            kernel = self.kernel_process(item)
            if kernel is not None:
                self.state[str(item.path)] = (kernel, _shm_names(), _listening({kernel.pid}))
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        if call.when != "call" or id(item) not in self.last_cells:
            return
        state = self.state.pop(str(item.path), None)
        report = outcome.get_result()
        if state is None or report.failed:
            return  # a failing cell says more than a leak report would
        kernel, shm_before, listening_before = state
        problems = leftovers(kernel, shm_before, listening_before)
        if problems:
            report.outcome = "failed"
            report.longrepr = f"{item.path.name} left behind when it ended: " + "; ".join(problems)


def pytest_configure(config):
    config.pluginmanager.register(NotebookGuard(), "labkit-notebook-guard")


@pytest.fixture
def sys_root(tmp_path):
    """An empty fake filesystem root for code that reads /proc and /sys."""
    return tmp_path



# --------------------------------------------------------------------------------------------
# Markers for the Python matrix (noxfile.py): `unit` tests run on every supported Python, `slow`
# ones on one Python only. Chosen here by file name, so a test file never has to remember to mark
# itself; a new file under tests/ is a unit test unless its name matches one of the patterns below.
# Notebook cells (nbval, from notebooks/ and solutions/) are also marked `notebook`.

# Relative to tests/. What they have in common: each test starts kernels, graders, browsers or
# external programs, so one run costs minutes, and what it checks does not change between Pythons.
SLOW_TEST_FILES = (
    "e2e/*",                     # JupyterLab in Chromium
    "test_exercise*.py",         # student notebooks in fresh kernels
    "test_grade.py",             # `labkit grade` over a corpus of submissions
    "test_grade_hostile.py",     # a batch of hostile submissions, graded for real
    "test_grade_dask.py",        # labkit grade through a real Dask scheduler and workers
    "test_sandbox.py",           # kernels in bubblewrap sandboxes
    "test_external_clients.py",  # wrk and hey, from Debian's packages
    "*contract*",                # the contract suite
    "test_dask_cluster.py",      # real Dask schedulers and workers
    "test_lab08_*.py",           # lab 08's pieces, on real Dask clusters
)
TESTS_DIR = Path(__file__).resolve().parent


def _is_slow_test_file(path: Path) -> bool:
    from fnmatch import fnmatch  # here, not at the top: this block is appended to a shared file

    try:
        relative = path.resolve().relative_to(TESTS_DIR).as_posix()
    except ValueError:
        return False
    return any(fnmatch(relative, pattern) for pattern in SLOW_TEST_FILES)  # `*` also crosses `/`


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every collected item `unit`, or `slow` (and `notebook` for nbval's cells)."""
    for item in items:
        path = Path(str(item.path))
        if path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
            item.add_marker(pytest.mark.slow)
        elif _is_slow_test_file(path):
            item.add_marker(pytest.mark.slow)
        else:
            item.add_marker(pytest.mark.unit)
