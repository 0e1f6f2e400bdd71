"""One sandbox per grading kernel: what a submission's code may see, write, reach and leave behind.

A kernel that grades a submission runs inside bubblewrap (``bwrap``) when the machine has it and
the kernel allows namespaces; the grader then says ``sandbox: bubblewrap`` in its first line.
Think of a hotel room rented for one guest: the guest may move the furniture of that room, sees
the corridor through a locked glass door, and everything left behind is cleared when they leave.

::

    grader (host)                                   sandbox of one kernel (bwrap)
    -------------                                   -----------------------------
    room/work   --bind (rw)------------------------> same path: the kernel's working folder
    room/ipc    --bind (rw)------------------------> same path: connection file + ZeroMQ ipc sockets
    room/state  --bind (rw)------------------------> same path: IPYTHONDIR, MPLCONFIGDIR, caches
    room/arm    --bind (rw), 0700, one key file ---> same path: read once by the grader's first cell
    checks' lock file --ro-bind------------------------> same path (flock works on a read-only fd)
    /  --ro-bind (read-only) ; /tmp, /dev/shm: fresh tmpfs ; /proc of its own PID namespace
    a venv or labkit that lives in /tmp --ro-bind--> same path (labkit's folder, not its checkout)
    solutions, --out and submissions' folders: hidden under an empty read-only tmpfs (a folder
    that holds Python or labkit itself cannot be hidden: its submission files are blanked instead)

What each option buys:

- ``--unshare-pid --proc /proc``: the kernel and everything it starts live in a PID namespace of
  their own, with a ``/proc`` that lists only them, so ``os.getpid()``, psutil and the per-process
  CPU measurements of the checks see the same processes. When the kernel ends, bwrap's init (PID 1
  inside) ends, and the kernel takes every process of the namespace with it: daemons and
  ``start_new_session`` children included. ``--die-with-parent`` does the same if the grader dies.
- ``--unshare-net``: loopback only; no route to the grader, another submission's servers or a
  scheduler on the host. The kernel's channels therefore use ZeroMQ's ``ipc`` transport (Unix
  sockets in ``room/ipc``) instead of TCP.
- ``--cap-drop ALL``: the kernel runs as root in CI, but without capabilities it cannot remount
  what it was given read-only, nor mount anything.
- ``--tmpfs /tmp``, ``--tmpfs /dev/shm``: private, and gone with the sandbox (no shared-memory
  segment can outlive its grading); each holds at most the kernel's memory limit. Other
  submissions' folders, which live in the grader's own temporary folder, are not in it.

Where bwrap is missing or namespaces are refused (a container without user namespaces, macOS),
:func:`detect` says so, and the kernel runs as before: in a session of its own, ended with its
process group, with its key in a 0700 folder of its own. The grader prints that in its first line.

The kernel process itself is PID 2 inside the namespace (bwrap's init is PID 1). A timeout's
SIGINT is sent to its pid *on the host*, found as the first process below bwrap's two.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SANDBOX_ENV", "SandboxInfo", "Room", "detect", "sandbox_command", "kernel_process",
           "describe_sandbox"]

#: Environment variable that turns the sandbox off (``0``) for a run, for debugging a check.
SANDBOX_ENV = "LABKIT_GRADE_SANDBOX"
#: Seconds the probe run of bwrap may take before bwrap is called unusable.
_PROBE_SECONDS = 10


@dataclass(frozen=True)
class SandboxInfo:
    """Whether kernels run sandboxed on this machine: ``tool`` (a path to bwrap, or ``None``) and why."""

    tool: str | None
    reason: str

    @property
    def enabled(self) -> bool:
        """True when each kernel runs in a bubblewrap sandbox of its own."""
        return self.tool is not None


@functools.cache
def _probe(tool: str) -> str | None:
    """Why ``tool`` cannot make a sandbox here, or ``None`` when it can (one short trial run)."""
    try:
        done = subprocess.run(
            [tool, *_base_options(), "--", "/bin/true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=_PROBE_SECONDS, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{tool} could not run ({exc})"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        return f"{tool} failed ({detail[-1] if detail else f'status {done.returncode}'})"
    return None


def detect() -> SandboxInfo:
    """Whether kernels can be sandboxed here, and if not, why (for the grader's first line)."""
    if os.environ.get(SANDBOX_ENV, "").strip() == "0":
        return SandboxInfo(None, f"turned off by {SANDBOX_ENV}=0")
    if not os.path.isdir("/proc/self/ns"):
        return SandboxInfo(None, "this system has no Linux namespaces")
    tool = shutil.which("bwrap")
    if tool is None:
        return SandboxInfo(None, "bubblewrap (bwrap) is not installed; install the Debian package 'bubblewrap'")
    problem = _probe(tool)
    if problem is not None:
        return SandboxInfo(None, f"namespaces are not available: {problem}")
    return SandboxInfo(tool, "one PID, network, IPC and mount namespace per kernel, no capabilities")


def describe_sandbox(info: SandboxInfo) -> str:
    """One line for the grader's output: the sandbox in use, or the fallback and its reason."""
    if info.enabled:
        return f"sandbox: bubblewrap ({info.reason})"
    return (f"sandbox: NONE, {info.reason}; kernels run in sessions of their own, which a submission "
            f"can leave, and can see this user's files")


#: The folders that the sandbox replaces with empty, private ones of its own (``_base_options``).
_PRIVATE_FOLDERS = (Path("/dev/shm"), Path("/tmp"))


def _base_options(tmpfs_bytes: int | None = None) -> list[str]:
    size = ["--size", str(tmpfs_bytes)] if tmpfs_bytes else []
    private = [option for folder in _PRIVATE_FOLDERS for option in (*size, "--tmpfs", str(folder))]
    return ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *private, "--unshare-pid", "--unshare-net",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--cap-drop", "ALL", "--die-with-parent"]


@dataclass(frozen=True)
class Room:
    """The private folders of one kernel, on the host (the sandbox sees them at the same paths).

    ``work``: its working folder. ``ipc``: its connection file and sockets. ``state``: IPython's,
    matplotlib's and Jupyter's folders. ``arm``: mode 0700, holds the key file until the grader's
    first cell has read it.
    """

    root: Path
    work: Path
    ipc: Path
    state: Path
    arm: Path

    @classmethod
    def make(cls, parent: Path, name: str) -> Room:
        """Create the folders of a new room ``parent/name``, each private to this user (0700)."""
        root = Path(tempfile.mkdtemp(dir=parent, prefix=f"{name}-"))
        folders = {}
        for part in ("work", "ipc", "state", "arm"):
            folders[part] = root / part
            folders[part].mkdir(mode=0o700)
        return cls(root, **folders)

    def env(self) -> dict[str, str]:
        """Environment variables that point the kernel's writable state into this room."""
        state = self.state
        return {"IPYTHONDIR": str(state / "ipython"), "MPLCONFIGDIR": str(state / "matplotlib"),
                "JUPYTER_RUNTIME_DIR": str(self.ipc), "JUPYTER_DATA_DIR": str(state / "jupyter"),
                "XDG_CACHE_HOME": str(state / "cache"), "TMPDIR": "/tmp"}

    def remove(self) -> None:
        """Delete the room; what a student made unremovable is left for the scratch folder's cleanup."""
        shutil.rmtree(self.root, ignore_errors=True)


def sandbox_command(tool: str, command: Sequence[str], room: Room, *, read_only: Iterable[Path] = (),
                    hidden: Iterable[Path] = (), blanked: Iterable[Path] = (),
                    tmpfs_bytes: int | None = None) -> list[str]:
    """``command`` wrapped in bwrap for ``room``.

    ``read_only``: extra files or folders bound read-only at their own path (the checks' lock file,
    which lives in the hidden /tmp). ``hidden``: folders covered by an empty read-only tmpfs (the
    solutions, the gradebook's folder, the submissions' folders); a folder that holds the
    interpreter or labkit cannot be covered, so each file of ``blanked`` in it reads as empty.
    ``tmpfs_bytes``: the most each of its private ``/tmp`` and ``/dev/shm`` may hold (they live in
    memory, which the memory watch does not see there); the grader gives the kernel's memory limit.
    """
    options = [tool, *_base_options(tmpfs_bytes)]
    for folder in _python_under_private_folders():  # an interpreter or labkit that lives in /tmp
        options += ["--ro-bind", str(folder), str(folder)]
    for folder in (room.work, room.ipc, room.state, room.arm):
        options += ["--bind", str(folder), str(folder)]
    read_only = [Path(path) for path in read_only]
    for path in read_only:
        if Path(path).exists():
            options += ["--ro-bind", str(path), str(path)]
    covered: list[Path] = []
    for folder in sorted({Path(folder).resolve() for folder in hidden}, key=lambda path: len(path.parts)):
        needed = [room.root.resolve(), *(Path(path).resolve() for path in read_only)]
        if any(path == folder or folder in path.parents for path in needed):
            continue  # it holds this kernel's own room, or the lock file: blank its files instead
        if folder.is_dir() and not _holds_python(folder) and not any(c in folder.parents for c in covered):
            covered.append(folder)
            options += ["--tmpfs", str(folder), "--remount-ro", str(folder)]
    for path in {Path(path).resolve() for path in blanked}:
        if path.is_file() and not any(c in path.parents for c in covered):
            options += ["--ro-bind", "/dev/null", str(path)]
    # ipykernel quits when its parent is PID 1, which bwrap's init is inside; the value 1 turns
    # that watch off, and --die-with-parent does its job instead.
    options += ["--setenv", "JPY_PARENT_PID", "1", "--chdir", str(room.work), "--"]
    return options + list(command)


def _python_folders() -> set[Path]:
    """What a kernel needs to see to start: the interpreter's prefixes and labkit's package folder."""
    import sys

    return {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.exec_prefix).resolve(),
            Path(sys.executable).resolve().parent, Path(__file__).resolve().parents[1]}


def _python_under_private_folders() -> list[Path]:
    """The folders of :func:`_python_folders` that lie in ``/tmp`` or ``/dev/shm``.

    A virtual environment or a checkout made in ``/tmp`` (as a CI job may make it) would vanish
    under the sandbox's fresh ``/tmp``, and the kernel could not start; these are bound back,
    read-only. Only labkit's own package folder is, not the checkout around it, so a solutions
    folder beside it stays out of sight.
    """
    private = [folder.resolve() for folder in _PRIVATE_FOLDERS if folder.exists()]
    under = [path for path in _python_folders() if any(top in path.parents for top in private)]
    return [path for path in under if not any(other in path.parents for other in under)]


def _holds_python(folder: Path) -> bool:
    """Whether hiding ``folder`` would hide the interpreter or labkit itself (never hidden)."""
    return any(path == folder or folder in path.parents for path in _python_folders())


def kernel_process(launcher_pid: int) -> int | None:
    """The host pid of the kernel below a bwrap launcher (bwrap, then its init, then the kernel)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        process = psutil.Process(launcher_pid)
        for _ in range(3):
            if process.name() != "bwrap":
                return process.pid
            children = process.children()
            if not children:
                return None
            process = min(children, key=lambda child: child.create_time())
    return None
