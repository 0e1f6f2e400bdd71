"""The grading sandbox: one bubblewrap sandbox per kernel, seen from inside a real kernel.

One notebook runs in a sandboxed kernel through the real engine; each test reads one fact off
that run. Where bwrap is installed these tests run (and fail loudly if namespaces are refused);
only a machine without bwrap skips them, and then the fallback's test below still runs.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
import pytest

from labkit.grading._engine import CellFate, EngineSettings, NotebookRun, run_sync
from labkit.grading._kernel import ASIDE_RECORDS
from labkit.grading._sandbox import SANDBOX_ENV, Room, SandboxInfo, describe_sandbox, detect

ROOT = Path(__file__).resolve().parent.parent
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None or not sys.platform.startswith("linux"),
                                 reason="bubblewrap (Debian package 'bubblewrap') is not installed")
SEAL = "application/vnd.labkit.test-seal+json"


@dataclass
class SandboxRun:
    nb: object
    runs: list
    rooms: list[Room]
    arm_modes: list[int]
    marker: str
    listener_port: int
    accepted: bool
    host_shm_before: set[str]
    host_shm_after: set[str]
    readonly_target: Path


def _shm() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.iterdir()} if shm.is_dir() else set()


def _output(run: SandboxRun, index: int) -> dict:
    texts = [out.get("text", "") for out in run.nb.cells[index].outputs if out.get("output_type") == "stream"]
    return json.loads("".join(texts).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory) -> SandboxRun:
    info = detect()
    assert info.enabled, f"bwrap is installed but the sandbox cannot start: {info.reason}"
    marker = f"labkit-escape-{secrets.token_hex(6)}"
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0)
    port = listener.getsockname()[1]
    # labkit's own folder: visible read-only in every sandbox, even when the checkout lives in /tmp
    readonly_target = ROOT / "labkit" / f".sandbox-write-{secrets.token_hex(4)}"
    sleeper = f"import time; time.sleep(120)  # {marker}"
    sources = [
        # 0: what the kernel sees of processes, its key folder, the network and the file system
        "import json, os, socket, psutil\n"
        "facts = {'pid': os.getpid(), 'pids': sorted(psutil.pids()), 'cwd': os.getcwd()}\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close(); facts['reached'] = True\n"
        "except OSError as exc:\n"
        "    facts['reached'] = False\n"
        "try:\n"
        f"    open({str(readonly_target)!r}, 'w').close(); facts['wrote'] = True\n"
        "except OSError as exc:\n"
        "    facts['wrote'] = exc.errno\n"
        "open('here.txt', 'w').write('mine')\n"
        "open('/tmp/scratch.txt', 'w').write('mine')\n"
        "open('/dev/shm/labkit_sandbox_test', 'wb').write(b'x' * 4096)\n"
        "facts['remount'] = os.system('mount -o remount,rw / 2>/dev/null')\n"
        "print(json.dumps(facts))",
        # 1: processes that try to outlive the kernel: a new session, and a double-fork daemon
        "import subprocess, sys, os\n"
        f"subprocess.Popen([sys.executable, '-c', {sleeper!r}], start_new_session=True,\n"
        "                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', {sleeper!r}])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "print('started')",
        # 2: a loop that a timeout must interrupt inside the sandbox
        "while True:\n    pass",
        # 3: the kernel still answers after the interrupt
        "print(json.dumps({'after': os.getpid()}))",
        # 4: far more set-aside records than the grader keeps
        "from IPython.display import display\n"
        f"for i in range(600):\n    display({{{SEAL!r}: {{'n': i, 'pad': 'x' * 1000}}}}, raw=True)",
        # 5: the kernel dies; the replacement gets a room (and a key folder) of its own
        "os._exit(3)",
        "print(json.dumps({'cwd': os.getcwd()}))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    rooms: list[Room] = []
    modes: list[int] = []

    def kernel_env(room: Room | None) -> dict[str, str]:
        assert room is not None
        rooms.append(room)
        modes.append(stat.S_IMODE(room.arm.stat().st_mode))
        return {}

    before = _shm()
    engine = NotebookRun(nb, EngineSettings(timeout=4, max_kernels=3), workdir=tmp_path_factory.mktemp("sandbox"),
                         fresh_dirs=True, aside_mime=SEAL, kernel_env=kernel_env, sandbox=info)
    try:
        runs = run_sync(engine.run)
        try:
            listener.accept()[0].close()
            accepted = True
        except OSError:
            accepted = False
    finally:
        listener.close()
        Path(readonly_target).unlink(missing_ok=True)
    return SandboxRun(nb, runs, rooms, modes, marker, port, accepted, before, _shm(), readonly_target)


def _marked(marker: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or []):
            found.append(process.pid)
    return found


@needs_bwrap
def test_the_kernel_lives_in_a_pid_namespace_of_its_own_with_its_own_proc(sandboxed):
    facts = _output(sandboxed, 0)
    assert facts["pid"] == 2  # bwrap's init is 1
    assert set(facts["pids"]) <= set(range(1, 50))


@needs_bwrap
def test_the_kernel_cannot_reach_a_server_on_the_hosts_loopback(sandboxed):
    assert _output(sandboxed, 0)["reached"] is False
    assert not sandboxed.accepted


@needs_bwrap
def test_the_file_system_is_read_only_outside_the_kernels_own_folders_and_cannot_be_remounted(sandboxed):
    facts = _output(sandboxed, 0)
    assert facts["wrote"] == 30  # EROFS
    assert not sandboxed.readonly_target.exists()
    assert facts["remount"] != 0


@needs_bwrap
def test_the_kernel_works_in_its_rooms_folder_and_tmp_and_dev_shm_are_private(sandboxed):
    facts = _output(sandboxed, 0)
    assert facts["cwd"] == str(sandboxed.rooms[0].work)
    assert "labkit_sandbox_test" not in sandboxed.host_shm_after


@needs_bwrap
def test_processes_in_a_new_session_or_double_forked_die_with_the_kernel(sandboxed):
    assert sandboxed.runs[1].fate is CellFate.OK
    deadline = time.monotonic() + 5
    while _marked(sandboxed.marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked(sandboxed.marker) == []


@needs_bwrap
def test_a_timeout_interrupts_the_kernel_inside_the_sandbox(sandboxed):
    assert sandboxed.runs[2].fate is CellFate.TIMEOUT
    assert "was stopped" in sandboxed.runs[2].reason and "restarted" not in sandboxed.runs[2].reason
    assert _output(sandboxed, 3)["after"] == 2


@needs_bwrap
def test_set_aside_records_are_capped_per_cell(sandboxed):
    assert len(sandboxed.runs[4].aside) == ASIDE_RECORDS


@needs_bwrap
def test_a_replacement_kernel_gets_a_fresh_private_room_and_the_old_one_is_removed(sandboxed):
    assert sandboxed.runs[5].fate is CellFate.DIED and "status 3" in sandboxed.runs[5].reason
    assert len(sandboxed.rooms) == 2 and sandboxed.rooms[0].root != sandboxed.rooms[1].root
    assert sandboxed.arm_modes == [0o700, 0o700]
    assert _output(sandboxed, 6)["cwd"] == str(sandboxed.rooms[1].work)
    assert sandboxed.runs[6].kernel == 2 and sandboxed.runs[0].kernel == 1
    assert not any(room.root.exists() for room in sandboxed.rooms)


@needs_bwrap
def test_a_kernel_killed_by_a_signal_is_described_by_the_signal_not_bwraps_status(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")])
    engine = NotebookRun(nb, EngineSettings(timeout=10, max_kernels=1), workdir=tmp_path, fresh_dirs=True,
                         sandbox=detect())
    (run,) = run_sync(engine.run)
    assert run.fate is CellFate.DIED and "SIGKILL" in run.reason


@needs_bwrap
def test_where_bwrap_works_the_graders_status_line_names_it():
    from labkit.grading.grade import sandbox_status

    assert sandbox_status().startswith("sandbox: bubblewrap (one PID, network, IPC and mount namespace")


def test_the_sandbox_can_be_turned_off_and_the_status_line_says_so(monkeypatch):
    monkeypatch.setenv(SANDBOX_ENV, "0")
    info = detect()
    assert not info.enabled
    assert describe_sandbox(info).startswith("sandbox: NONE, turned off by LABKIT_GRADE_SANDBOX=0")
    assert describe_sandbox(SandboxInfo("/usr/bin/bwrap", "x")).startswith("sandbox: bubblewrap")


def test_without_the_sandbox_a_kernel_still_gets_a_private_room(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os; print(os.getcwd())")])
    rooms: list[Room] = []
    engine = NotebookRun(nb, EngineSettings(timeout=20, max_kernels=1), workdir=tmp_path, fresh_dirs=True,
                         kernel_env=lambda room: rooms.append(room) or {}, sandbox=SandboxInfo(None, "off"))
    (run,) = run_sync(engine.run)
    assert run.fate is CellFate.OK
    assert nb.cells[0].outputs[0]["text"].strip() == str(rooms[0].work)
    assert not rooms[0].root.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/environ")
def test_without_the_sandbox_processes_that_left_the_kernels_group_are_found_by_their_mark(tmp_path):
    marker = f"labkit-escape-{secrets.token_hex(6)}"
    sleeper = f"import time; time.sleep(120)  # {marker}"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {sleeper!r}], start_new_session=True,\n"
        "                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "os.environ.clear()  # too late: /proc keeps the environment the process started with\n")])
    engine = NotebookRun(nb, EngineSettings(timeout=20, max_kernels=1), workdir=tmp_path, fresh_dirs=True,
                         sandbox=SandboxInfo(None, "off"))
    (run,) = run_sync(engine.run)
    assert run.fate is CellFate.OK
    deadline = time.monotonic() + 5
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked(marker) == []


@needs_bwrap
def test_the_private_tmp_and_dev_shm_hold_no_more_than_the_kernels_memory_limit(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\n"
        "print(os.statvfs('/tmp').f_blocks * os.statvfs('/tmp').f_frsize,\n"
        "      os.statvfs('/dev/shm').f_blocks * os.statvfs('/dev/shm').f_frsize)")])
    limit = 300 * 2**20
    engine = NotebookRun(nb, EngineSettings(timeout=20, max_kernels=1, memory_limit=limit), workdir=tmp_path,
                         fresh_dirs=True, sandbox=detect())
    (run,) = run_sync(engine.run)
    assert run.fate is CellFate.OK
    assert nb.cells[0].outputs[0]["text"].split() == [str(limit), str(limit)]


@needs_bwrap
def test_an_interpreter_and_labkit_that_live_in_tmp_are_seen_by_the_kernel_and_their_checkout_is_not(
        tmp_path, monkeypatch):
    # A CI job may clone the course and make its venv in /tmp, which the sandbox replaces with an
    # empty tmpfs: a checkout there, with a venv inside, labkit and a solutions folder beside it.
    import subprocess
    import venv

    from labkit.grading import _sandbox

    info = detect()
    if not info.enabled:
        pytest.skip(info.reason)
    checkout = Path(tempfile.mkdtemp(dir="/tmp", prefix="labkit-checkout-"))
    try:
        shutil.copytree(ROOT / "labkit", checkout / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
        (checkout / "solutions").mkdir()
        (checkout / "solutions" / "secret.ipynb").write_text("{}")
        venv.create(checkout / "venv", with_pip=False)
        python = checkout / "venv" / "bin" / "python"
        site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        Path(site, "course.pth").write_text(f"{checkout}\n")  # as an editable install of the checkout
        monkeypatch.setattr(sys, "prefix", str(checkout / "venv"))
        monkeypatch.setattr(sys, "exec_prefix", str(checkout / "venv"))
        monkeypatch.setattr(sys, "executable", str(python))
        monkeypatch.setattr(_sandbox, "__file__", str(checkout / "labkit" / "grading" / "_sandbox.py"))
        room = Room.make(tmp_path, "room")
        # find_spec locates labkit without running it (its dependencies live in this venv, not that one)
        probe = ("import importlib.util, os; print(importlib.util.find_spec('labkit').origin); "
                 f"print(os.path.exists({str(checkout / 'solutions' / 'secret.ipynb')!r}))")
        done = subprocess.run(_sandbox.sandbox_command(info.tool, [str(python), "-c", probe], room),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        where, solutions_seen = done.stdout.split()
        assert Path(where).is_relative_to(checkout / "labkit")  # the kernel finds the checkout's labkit
        assert solutions_seen == "False"  # but only labkit's folder is bound back, not the checkout
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
